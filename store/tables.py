"""The service's tables (SQLAlchemy 2, declarative): results and their fruit, images, verdicts, lots,
Brix readings, calibrations, the fruit's journey, shadow results, model versions and the sorter
link's outbox. Timestamps are stored as UTC and read back timezone-aware."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


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
    #: set when the reference stood at a known distance from the camera (orchard perspective correction)
    focal_px: Mapped[float | None] = mapped_column(Float, nullable=True)
    reference_distance_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
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


# --- the sorter link (service/sorter/): decisions and alerts out over MQTT, ejections back


class OutboxRow(Base):
    """A message for the sorter's controller, written in the transaction of what it reports (a
    graded fruit's outlet decision, an alert starting or clearing), marked sent only once the
    broker acknowledged it (PUBACK). A decision's row then keeps where the sorter ejected the fruit."""

    __tablename__ = "outbox"
    #: unsent rows in order straight from the index, however many sent ones are kept beside them
    __table_args__ = (
        UniqueConstraint("result_id", "fruit_index", name="uq_outbox_result_fruit"),
        Index("ix_outbox_pending", "sent_at", "id"),
    )
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
