"""The database engine and its schema: SQLite (WAL, synchronous=FULL) or PostgreSQL, brought to
the newest schema by the Alembic migrations (store/migrations/) at every start."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine


def make_engine(url: str, sqlite_synchronous: str = "FULL") -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # WAL: readers never block the writer
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: the write-ahead log is synced at every commit, so an acknowledged result survives
            # a power failure (NORMAL syncs only at checkpoints). Group commit (Repository.save_result)
            # pays one sync for every result waiting at that moment.
            cur.execute(f"PRAGMA synchronous={'NORMAL' if sqlite_synchronous == 'NORMAL' else 'FULL'}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # a database that went away is noticed on checkout (pre-ping), a new connection gives up after
    # connect_timeout, and a request waits at most pool_timeout for a connection: the service
    # answers 503 quickly instead of hanging, and recovers by itself when the database returns
    args = {"connect_timeout": 3} if url.startswith("postgresql") else {}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, pool_timeout=5, connect_args=args)


MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def init_db(engine: Engine) -> None:
    """Bring the database to the newest schema with the Alembic migrations (on every start; a
    no-op when it is current). Processes starting together take turns, so only one of them
    migrates: on PostgreSQL on an advisory lock, on a SQLite file on a lock file next to it (uvicorn
    workers of one host)."""
    from alembic import command

    cfg = alembic_config(engine)
    with sqlite_file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7412093)")  # released at commit
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def sqlite_file_lock(engine: Engine, purpose: str = "migrate") -> Iterator[None]:
    """An exclusive lock on ``<database>.<purpose>.lock`` for a SQLite file database; nothing
    otherwise. Each call opens the file anew, so the lock excludes other threads of this process as
    well as other processes, and a waiter is woken by the kernel the moment it is released."""
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    if not db or db == ":memory:":
        yield
        return
    import fcntl

    with open(f"{db}.{purpose}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield
