"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from store.engine import init_db, make_engine
from store.tables import Base


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


@pytest.mark.postgres
def test_replicas_migrating_at_once_take_turns(pg_url):
    """Two processes' worth of start-up migrations racing on one fresh database both succeed."""
    import threading
    import uuid

    import sqlalchemy

    from tests.conftest import PG_ADMIN_URL

    name = f"grader_race_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = pg_url.rsplit("/", 1)[0] + "/" + name
    errors = []

    def start():
        try:
            e = make_engine(url)
            init_db(e)
            e.dispose()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
    assert errors == []
