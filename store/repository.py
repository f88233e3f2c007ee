"""The service's unit of work over results and images (store.tables): results committed in groups,
each with its fruit and their journeys, before the reply; the sorter's messages in the same
transaction.

A result is acknowledged only after its transaction commits; the image file is written, fsynced,
renamed into place and its directory fsynced before the row that references it, and SQLite runs
with synchronous=FULL: what was acknowledged survives a power failure.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from store.engine import sqlite_file_lock
from store.tables import Base, CalibrationRow, FruitEventRow, FruitRow, ImageRow, LotRow, ResultRow, utcnow

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
        captured.update(
            {"clip_id": video.get("clip_id"), "first_seen_s": video.get("first_seen_s"), "frames": len(video.get("frames", []))}
        )
    ev = [
        ("captured", captured),
        ("measured", {k: f.get(k) for k in ("diameter_mm", "blemish_area_cm2", "colour_coverage", "mm_per_px")}),
        (
            "graded",
            {
                "grade": f.get("grade"),
                "defect": (f.get("defect") or {}).get("label"),
                "model_version": result.model_version,
                "standard": result.standard_id,
                "provisional": f.get("provisional"),
            },
        ),
    ]
    if f.get("flagged"):
        ev.append(("flagged", {"flags": f.get("flags", [])}))
    if f.get("outlet"):
        ev.append(("outlet", {"outlet": f.get("outlet")}))
    return [FruitEventRow(fruit_row_id=fruit.id, result_id=result.id, stage=stage, at=at, detail=detail) for stage, detail in ev]


def latest_calibration(s: Session, camera_id: str) -> CalibrationRow | None:
    """The calibration in force for a camera: its latest."""
    return s.scalar(
        select(CalibrationRow)
        .where(CalibrationRow.camera_id == camera_id)
        .order_by(CalibrationRow.created_at.desc(), CalibrationRow.id.desc())
        .limit(1)
    )


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
        with sqlite_file_lock(self.engine, "write"), self.engine.begin() as conn:
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
