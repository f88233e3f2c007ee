"""Persistence: SQLAlchemy 2 tables for results and images, and a content-addressed image store.

A result is acknowledged only after its transaction commits; the image file is written, fsynced,
renamed into place and its directory fsynced before the row that references it, and SQLite runs
with synchronous=FULL: what was acknowledged survives a power failure.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, String, UniqueConstraint, bindparam, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.types import TypeDecorator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamps stored as UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: store UTC-aware timestamps")
        return None if value is None else value.astimezone(dt.timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(512))
    media_type: Mapped[str] = mapped_column(String(32))
    width_px: Mapped[int] = mapped_column(Integer)
    height_px: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ResultRow(Base):
    __tablename__ = "results"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    #: "<key fingerprint>|<Idempotency-Key>": a key is scoped to the API key that made it
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    #: the fingerprint of the API key that made the result (a camera key sees only its own results)
    api_key_id: Mapped[str | None] = mapped_column(String(20), index=True, nullable=True)
    #: SHA-256 of what was asked (image bytes and fields): a reused idempotency key must ask the same
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    camera_id: Mapped[str | None] = mapped_column(String(100), index=True)
    lot_id: Mapped[str | None] = mapped_column(String(100), index=True)
    fruit_id: Mapped[str | None] = mapped_column(String(100))
    lane: Mapped[str | None] = mapped_column(String(50))
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    mm_per_px: Mapped[float | None] = mapped_column(Float)
    brix: Mapped[float | None] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    standard_id: Mapped[str] = mapped_column(String(100))
    standard_version: Mapped[str] = mapped_column(String(50))
    n_fruits: Mapped[int] = mapped_column(Integer)
    flagged: Mapped[bool] = mapped_column(Boolean, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    fruits: Mapped[list["FruitRow"]] = relationship(back_populates="result", order_by="FruitRow.index", cascade="all, delete-orphan")


class FruitRow(Base):
    """One graded fruit of a result: what the review queue and lot reports query."""

    __tablename__ = "fruits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[str] = mapped_column(ForeignKey("results.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    lot_id: Mapped[str | None] = mapped_column(String(100), index=True)
    fruit_id: Mapped[str | None] = mapped_column(String(100), index=True)
    grade: Mapped[str | None] = mapped_column(String(50), index=True)
    flagged: Mapped[bool] = mapped_column(Boolean, index=True)
    diameter_mm: Mapped[float | None] = mapped_column(Float)
    defect_label: Mapped[str | None] = mapped_column(String(50))
    defect_score: Mapped[float | None] = mapped_column(Float)
    brix: Mapped[float | None] = mapped_column(Float)
    brix_source: Mapped[str | None] = mapped_column(String(30))
    #: the most urgent flag's priority (lower = examined first); None when not flagged
    priority: Mapped[int | None] = mapped_column(Integer, index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    result: Mapped[ResultRow] = relationship(back_populates="fruits")


class VerdictRow(Base):
    """An inspector's verdict on one fruit. The model's output in the result is never changed:
    the verdict sits beside it, with who, when and what the model said."""

    __tablename__ = "verdicts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fruit_row_id: Mapped[int] = mapped_column(ForeignKey("fruits.id"), index=True)
    result_id: Mapped[str] = mapped_column(ForeignKey("results.id"), index=True)
    inspector: Mapped[str] = mapped_column(String(100))
    decision: Mapped[str] = mapped_column(String(20))  # confirm | correct
    model_grade: Mapped[str | None] = mapped_column(String(50))
    grade: Mapped[str | None] = mapped_column(String(50))
    model_defect_label: Mapped[str | None] = mapped_column(String(50))
    defect_label: Mapped[str | None] = mapped_column(String(50))
    flags: Mapped[list[str]] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(String(1000))
    retracted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LotRow(Base):
    __tablename__ = "lots"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    grower: Mapped[str | None] = mapped_column(String(200))
    orchard_block: Mapped[str | None] = mapped_column(String(200))
    variety: Mapped[str | None] = mapped_column(String(100))
    commodity: Mapped[str] = mapped_column(String(50))
    standard_id: Mapped[str] = mapped_column(String(100))
    harvest_date: Mapped[dt.date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), default="open")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class BrixReadingRow(Base):
    """Every reading is kept, used or not; `status` says which and `note` why."""

    __tablename__ = "brix_readings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lot_id: Mapped[str | None] = mapped_column(String(100), index=True)
    fruit_id: Mapped[str | None] = mapped_column(String(100), index=True)
    source: Mapped[str] = mapped_column(String(30))
    brix_reading: Mapped[float] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    brix_20c: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20))  # accepted | flagged
    note: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GradeChangeRow(Base):
    """A fruit re-graded after its result was stored (e.g. a late Brix reading): old and new."""

    __tablename__ = "grade_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[str] = mapped_column(ForeignKey("results.id"), index=True)
    fruit_index: Mapped[int] = mapped_column(Integer)
    old_grade: Mapped[str | None] = mapped_column(String(50))
    new_grade: Mapped[str | None] = mapped_column(String(50))
    old_brix: Mapped[float | None] = mapped_column(Float)
    new_brix: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CalibrationRow(Base):
    """Every calibration of a camera is kept; the latest one is in force."""

    __tablename__ = "calibrations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(100), index=True)
    mm_per_px: Mapped[float] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(50))
    reference_diameter_mm: Mapped[float | None] = mapped_column(Float)
    reference_diameter_px: Mapped[float | None] = mapped_column(Float)
    image_sha256: Mapped[str | None] = mapped_column(ForeignKey("images.sha256"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FruitEventRow(Base):
    """One stage of a fruit's journey (captured, measured, graded, flagged, outlet, examined),
    written in the same transaction as the data of that stage."""

    __tablename__ = "fruit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fruit_row_id: Mapped[int] = mapped_column(ForeignKey("fruits.id"), index=True)
    result_id: Mapped[str] = mapped_column(ForeignKey("results.id"), index=True)
    stage: Mapped[str] = mapped_column(String(30))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


_IMAGE_EXISTS = select(ImageRow.__table__.c.sha256).where(ImageRow.__table__.c.sha256 == bindparam("sha"))
_INSERT_FRUIT = FruitRow.__table__.insert().returning(FruitRow.__table__.c.id)


def _row_values(row: Base, skip: tuple[str, ...] = (), **override: Any) -> dict[str, Any]:
    """A mapped object's column values, for a Core insert."""
    values = {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key not in skip}
    values.update(override)
    return values


def journey_events(result: ResultRow, fruit: "FruitRow", at: dt.datetime) -> list[FruitEventRow]:
    """The events of grading one fruit of a result, from its stored payload."""
    f = result.payload["fruits"][fruit.index]
    video = result.payload.get("video") or {}
    captured = {"camera_id": result.camera_id, "lane": result.lane, "image_sha256": result.image_sha256}
    if video:
        captured.update({"clip_id": video.get("clip_id"), "first_seen_s": video.get("first_seen_s"), "frames": len(video.get("frames", []))})
    ev = [
        ("captured", captured),
        ("measured", {k: f.get(k) for k in ("diameter_mm", "blemish_area_cm2", "colour_coverage", "mm_per_px")}),
        ("graded", {"grade": f.get("grade"), "defect": (f.get("defect") or {}).get("label"), "model_version": result.model_version,
                    "standard": result.standard_id, "provisional": f.get("provisional")}),
    ]
    if f.get("flagged"):
        ev.append(("flagged", {"flags": f.get("flags", [])}))
    if f.get("outlet"):
        ev.append(("outlet", {"outlet": f.get("outlet")}))
    return [FruitEventRow(fruit_row_id=fruit.id, result_id=result.id, stage=stage, at=at, detail=detail) for stage, detail in ev]


class ShadowResultRow(Base):
    """A candidate model's opinion on a fruit the serving model graded (shadow mode): kept beside
    the result, never changing it."""

    __tablename__ = "shadow_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[str] = mapped_column(ForeignKey("results.id"), index=True)
    fruit_index: Mapped[int] = mapped_column(Integer)
    shadow_model_id: Mapped[str] = mapped_column(String(200), index=True)
    serving_model_id: Mapped[str] = mapped_column(String(200))
    shadow_label: Mapped[str] = mapped_column(String(50))
    shadow_score: Mapped[float] = mapped_column(Float)
    serving_label: Mapped[str | None] = mapped_column(String(50))
    serving_score: Mapped[float | None] = mapped_column(Float)
    disagree: Mapped[bool] = mapped_column(Boolean, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelVersionRow(Base):
    """A model artifact the service knows; `status` is serving for exactly one at a time."""

    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # "<name>@<version>"
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    path: Mapped[str] = mapped_column(String(512))
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), index=True)  # available | serving | shadow
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    promoted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


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
    with _sqlite_file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7412093)")  # released at commit
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def _sqlite_file_lock(engine: Engine, purpose: str = "migrate") -> Iterator[None]:
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


class StorageUnavailable(Exception):
    """The image store cannot take a write (disk full, read-only or missing data dir). Nothing of
    the request is committed; the camera should retry once an operator has fixed the disk."""

    FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

    def __init__(self, root: Path, exc: OSError) -> None:
        self.full = exc.errno in self.FULL
        self.code = "storage_full" if self.full else "storage_unavailable"
        super().__init__(f"cannot store the image under {root}: {exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, 'error')}); "
                         "nothing was stored")


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file renamed or created in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageStore:
    """Images stored once, named by their SHA-256, under root/ab/cd/<sha>.<ext>."""

    EXT = {"image/jpeg": ".jpg", "image/png": ".png"}

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha: str, media_type: str) -> Path:
        return self.root / sha[:2] / sha[2:4] / f"{sha}{self.EXT.get(media_type, '.bin')}"

    def put(self, data: bytes, media_type: str) -> tuple[str, Path]:
        sha, path, _ = self.put_new(data, media_type)
        return sha, path

    def put_new(self, data: bytes, media_type: str) -> tuple[str, Path, bool]:
        """(sha, path, whether this call wrote the file): the file is durable when this returns."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, media_type)
        if path.exists() and path.stat().st_size == len(data):
            return sha, path, False
        tmp = None
        try:
            made = [d for d in (path.parent.parent, path.parent) if not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: a reader never sees half an image
            tmp = None
            # the rename (and any directory made for it) is on disk only once the directories are synced
            for d in [path.parent, *(x.parent for x in reversed(made))]:
                fsync_dir(d)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise StorageUnavailable(self.root, exc) from exc
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise
        return sha, path, True

    def discard(self, path: Path) -> None:
        """Remove an image this request wrote when its result could not be stored (no orphan files)."""
        try:
            Path(path).unlink(missing_ok=True)
            fsync_dir(Path(path).parent)
        except OSError:
            pass

    def free_bytes(self) -> int:
        import shutil

        return shutil.disk_usage(self.root).free

    def probe(self) -> None:
        """Raise StorageUnavailable unless a file can be written and removed under root now."""
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as exc:
            raise StorageUnavailable(self.root, exc) from exc


def latest_calibration(s: Session, camera_id: str) -> CalibrationRow | None:
    """The calibration in force for a camera: its latest."""
    return s.scalar(select(CalibrationRow).where(CalibrationRow.camera_id == camera_id)
                    .order_by(CalibrationRow.created_at.desc(), CalibrationRow.id.desc()).limit(1))


@dataclass
class _SaveJob:
    """One result waiting to be committed by save_result."""

    image: "ImageRow"
    result: "ResultRow"
    fruits: list["FruitRow"]
    done: bool = False
    saved: "ResultRow | None" = None
    error: Exception | None = None


class Repository:
    """The service's unit of work over results and images."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._writer = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_SaveJob] = []
        #: service.sorter.Outbox when decisions go to the sorter (GRADER_MQTT_URL): its messages are
        #: written in each result's transaction, and its publisher woken once that commits
        self.outbox: Any = None

    def find_by_idempotency_key(self, key: str) -> ResultRow | None:
        with self.sessions() as s:
            return s.scalar(select(ResultRow).where(ResultRow.idempotency_key == key))

    def save_result(self, image: ImageRow, result: ResultRow, fruits: list[FruitRow]) -> ResultRow:
        """Commit image row, result, fruits and their journeys in one transaction; return only once
        committed. A concurrent retry with the same idempotency key loses the race and gets the
        first result back.

        Results that arrive together are committed together (group commit): the thread that gets to
        write takes every result waiting at that moment into one transaction, so a busy line pays
        for one lock hand-over and one commit per group instead of one per fruit, and the writes
        keep up when the CPU is saturated instead of queueing behind one another. Rows go in with
        Core inserts on cached statements rather than the ORM's unit of work (less CPU on the
        camera's critical path; bench/stages.py times this store stage)."""
        result.id = result.id or str(uuid.uuid4())
        result.created_at = result.created_at or utcnow()
        result.fruits = fruits
        job = _SaveJob(image, result, fruits)
        with self._pending_lock:
            self._pending.append(job)
        with self._writer:  # one writing thread per process; the others wait here, woken at once
            if not job.done:
                with self._pending_lock:
                    group, self._pending = self._pending, []
                self._write_group(group)
        if job.error is not None:
            raise job.error
        return job.saved

    def _write_group(self, group: list["_SaveJob"]) -> None:
        """Write every job of ``group`` in one transaction; if that fails (a retried request racing
        its first attempt breaks a constraint, say), each job again in its own transaction, so
        every request learns its own outcome."""
        if len(group) > 1:
            try:
                with self._write_transaction() as conn:
                    for job in group:
                        self._insert(conn, job)
                    self._enqueue(conn, group)
            except Exception:  # noqa: BLE001 - a constraint (a retry racing its first attempt) or worse: each alone says which
                pass
            else:
                for job in group:
                    job.saved, job.done = job.result, True
                self._committed()
                return
        for job in group:
            try:
                job.saved = self._save_alone(job)
            except Exception as exc:  # the job's own request reports it
                job.error = exc
            job.done = True

    def _save_alone(self, job: "_SaveJob") -> ResultRow:
        for attempt in range(3):
            try:
                with self._write_transaction() as conn:
                    self._insert(conn, job)
                    self._enqueue(conn, [job])
                self._committed()
                return job.result
            except IntegrityError:
                if job.result.idempotency_key:
                    existing = self.find_by_idempotency_key(job.result.idempotency_key)
                    if existing is not None:
                        return existing
                if attempt == 2:
                    raise
                # the same image was stored by a concurrent request: retry with it present
        raise RuntimeError("unreachable")

    @contextmanager
    def _write_transaction(self) -> Iterator[Any]:
        # SQLite has one writer at a time, and writers that wait on its busy handler sleep in growing
        # steps (1, 2, 5, 10 ... 100 ms) however soon the database is free: worker processes take
        # turns on a file lock first, which hands the database over the moment it is released.
        with _sqlite_file_lock(self.engine, "write"), self.engine.begin() as conn:
            yield conn

    def _enqueue(self, conn: Any, jobs: list["_SaveJob"]) -> None:
        if self.outbox is not None:  # the sorter's messages for these results, in their transaction
            self.outbox.enqueue(conn, [job.result for job in jobs])

    def _committed(self) -> None:
        if self.outbox is not None:
            self.outbox.committed()

    @staticmethod
    def _insert(conn: Any, job: "_SaveJob") -> None:
        image, result, fruits = job.image, job.result, job.fruits
        if conn.execute(_IMAGE_EXISTS, {"sha": image.sha256}).first() is None:
            conn.execute(ImageRow.__table__.insert(), _row_values(image, created_at=image.created_at or utcnow()))
        conn.execute(ResultRow.__table__.insert(), _row_values(result))
        for f in fruits:  # fruit ids for their journeys, written in this same transaction
            f.result_id = result.id
            f.id = conn.execute(_INSERT_FRUIT, _row_values(f, skip=("id",))).scalar_one()
        events = [_row_values(ev, skip=("id",)) for f in fruits for ev in journey_events(result, f, result.created_at)]
        if events:
            conn.execute(FruitEventRow.__table__.insert(), events)

    def get_result(self, result_id: str) -> ResultRow | None:
        with self.sessions() as s:
            return s.get(ResultRow, result_id)

    def get_image(self, sha: str) -> ImageRow | None:
        with self.sessions() as s:
            return s.get(ImageRow, sha)

    def get_lot(self, lot_id: str) -> "LotRow | None":
        with self.sessions() as s:
            return s.get(LotRow, lot_id)

    def add_calibration(self, image: ImageRow | None, row: CalibrationRow) -> CalibrationRow:
        with self.sessions() as s, s.begin():
            if image is not None and s.get(ImageRow, image.sha256) is None:
                s.add(image)
                s.flush()
            s.add(row)
        return row

    def latest_calibration(self, camera_id: str) -> CalibrationRow | None:
        with self.sessions() as s:
            return latest_calibration(s, camera_id)

    def ping(self) -> bool:
        with self.engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
        return True


# --- the sorter link (service/sorter.py): decisions and alerts out over MQTT, ejections back


class OutboxRow(Base):
    """A message for the sorter's controller, written in the transaction of what it reports (a
    graded fruit's outlet decision, an alert starting or clearing), marked sent only once the
    broker acknowledged it (PUBACK). A decision's row then keeps where the sorter ejected the fruit."""

    __tablename__ = "outbox"
    #: unsent rows in order straight from the index, however many sent ones are kept beside them
    __table_args__ = (UniqueConstraint("result_id", "fruit_index", name="uq_outbox_result_fruit"),
                      Index("ix_outbox_pending", "sent_at", "id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: the ordered stream the message belongs to ("<line>/<camera>" or "<line>/alerts") and its place in it
    stream: Mapped[str] = mapped_column(String(250))
    seq: Mapped[int] = mapped_column(Integer)
    topic: Mapped[str] = mapped_column(String(500))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    retain: Mapped[bool] = mapped_column(Boolean, default=False)
    result_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    fruit_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fruit_row_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outlet: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: a publisher's claim: no two publishers (workers, replicas) send a row at the same time
    claimed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ejected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    ejected_outlet: Mapped[str | None] = mapped_column(String(100), nullable=True)


class SorterStreamRow(Base):
    """The last ``seq`` given in each stream of messages (one per camera of a line, one for a line's
    alerts): a controller sees gaps and duplicates."""

    __tablename__ = "sorter_streams"
    stream: Mapped[str] = mapped_column(String(250), primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)


class LineAlertRow(Base):
    """A line alert in force (one row per alert, e.g. ``camera_silent:cam-2``): its start and its
    clearing are published once, whichever service process sees them first."""

    __tablename__ = "line_alerts"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    line: Mapped[str] = mapped_column(String(100))
    alert: Mapped[dict[str, Any]] = mapped_column(JSON)
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
