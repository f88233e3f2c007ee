"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.storage import Base, init_db, make_engine


def _diff(engine):
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_migrations_match_the_models_on_sqlite(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    init_db(engine)
    init_db(engine)  # a second start is a no-op
    assert _diff(engine) == []


@pytest.mark.postgres
def test_migrations_match_the_models_on_postgres(pg_url):
    engine = make_engine(pg_url)
    init_db(engine)
    assert _diff(engine) == []
    engine.dispose()
