"""Domain errors (grader/errors.py, grader/errors.py) and the service's own refusals (who
asks, how often, how busy: defined here) -> HTTP status codes, in one place: STATUS. Every error body
names the problem: {"error": {"code": ..., "message": ..., "field": ...}}."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from grader.errors import (
    AlreadyExamined,
    CalibrationFailed,
    CommodityMismatch,
    ControlCharacters,
    FruitClaimed,
    GraderError,
    IdempotencyKeyReused,
    InvalidCommodity,
    InvalidField,
    InvalidFrame,
    InvalidGrade,
    InvalidImage,
    InvalidMeasurementInput,
    InvalidModelArtifact,
    InvalidReading,
    InvalidStandard,
    InvalidVideo,
    LotClosed,
    LotExists,
    MissingImage,
    ModelExists,
    ModelIsServing,
    ModelNotPromotable,
    NoCalibration,
    NoPreviousModel,
    OutOfRange,
    TextTooLong,
    Uncalibrated,
    UnknownCommodity,
    UnknownFruit,
    UnknownLot,
    UnknownModel,
    UnknownResult,
    UnknownStandard,
    UnknownVerdict,
    UploadTooLarge,
    VideoFrameTooLarge,
    VideoTooLong,
    VideoTooSlow,
)


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_image, unknown_lot, overloaded")
    message: str = Field(description="what is wrong, in words a person can act on")
    field: str | None = Field(default=None, description="the request field it is about, if any")
    problems: list[dict[str, Any]] | None = Field(default=None, description="every invalid field, for validation errors")


class ErrorBody(BaseModel):
    error: ErrorDetail


#: the error answers every /v1 route may give, documented once in the OpenAPI schema
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not the JSON or multipart form the route takes"},
    401: {"model": ErrorBody, "description": "missing or unknown X-API-Key"},
    403: {"model": ErrorBody, "description": "the key's role may not do this"},
    404: {"model": ErrorBody, "description": "no such result, lot, fruit, model or standard"},
    409: {"model": ErrorBody, "description": "conflicts with the current state (closed lot, claimed fruit, verdict exists)"},
    408: {"model": ErrorBody, "description": "the client stopped sending the body (GRADER_BODY_READ_TIMEOUT_S)"},
    413: {"model": ErrorBody, "description": "body or upload over the route's byte limit (refused from Content-Length, before reading)"},
    422: {"model": ErrorBody, "description": "a field is invalid; the body names it"},
    429: {"model": ErrorBody, "description": "the key is over its rate limit; see Retry-After"},
    503: {"model": ErrorBody, "description": "overloaded or database/storage unavailable; see Retry-After"},
    507: {"model": ErrorBody, "description": "the image store or the database's disk is full; nothing was stored"},
}


#: an overloaded process's answer: retry in a second, on a new connection. With `grader serve
#: --workers N` each camera's keep-alive connection stays with the process that accepted it; closing
#: a refused camera's connection lets the kernel hash its retry to any process, so cameras that
#: crowded onto one process spread out instead of being refused there again and again.
OVERLOADED_HEADERS = {"Retry-After": "1", "Connection": "close"}


class Refused(GraderError):
    """A refusal of the service's own, about who asks and how often or how busy it is, not about
    the domain: shaped like a domain error (message, field, a finer ``code``), its status given in
    STATUS like theirs, and ``headers`` sent with the answer."""

    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, field=field, code=code)
        base = headers if headers is not None else type(self).headers
        self.headers = dict(base) if base is not None else None


class Unauthenticated(Refused):
    """No X-API-Key header, or a key the service does not know."""

    field = "X-API-Key"
    headers = {"WWW-Authenticate": "APIKey"}


class Forbidden(Refused):
    """The key's role may not do this."""


class RateLimited(Refused):
    """The key is over its requests a minute (``headers``: its Retry-After)."""

    field = "X-API-Key"


class TooManyFailedKeys(Refused):
    """The client's address sent too many unknown keys lately (``headers``: its Retry-After)."""

    field = "X-API-Key"


class Busy(Refused):
    """Past ``max_in_flight`` concurrent grades: retry at once, on a new connection."""

    headers = OVERLOADED_HEADERS


class InvalidCursor(Refused):
    """A page cursor this service did not give out."""

    field = "cursor"


#: every domain error's HTTP status and error code (an error that carries a finer code of its own,
#: GraderError.code, keeps it): the one place a status is given to a domain error
STATUS: dict[type[GraderError], tuple[int, str]] = {
    InvalidImage: (422, "invalid_image"),
    InvalidMeasurementInput: (422, "invalid_value"),
    InvalidField: (422, "invalid_field"),
    Uncalibrated: (422, "uncalibrated"),
    UnknownStandard: (404, "unknown_standard"),
    InvalidStandard: (422, "invalid_standard"),
    InvalidModelArtifact: (422, "invalid_model_artifact"),
    CalibrationFailed: (422, "calibration_failed"),
    UnknownCommodity: (404, "unknown_commodity"),
    InvalidReading: (422, "invalid_reading"),
    # requests
    OutOfRange: (422, "out_of_range"),
    TextTooLong: (422, "too_long"),
    ControlCharacters: (422, "invalid_characters"),
    UploadTooLarge: (413, "too_large"),
    IdempotencyKeyReused: (422, "idempotency_key_reused"),
    # lots and commodities
    UnknownLot: (404, "unknown_lot"),
    LotClosed: (409, "lot_closed"),
    InvalidCommodity: (422, "unknown_commodity"),
    CommodityMismatch: (422, "commodity_mismatch"),
    # models
    UnknownModel: (404, "not_found"),
    ModelExists: (409, "model_exists"),
    ModelNotPromotable: (422, "model_not_promotable"),
    ModelIsServing: (409, "is_serving"),
    NoPreviousModel: (409, "no_previous_model"),
    # line video
    InvalidVideo: (422, "invalid_video"),
    InvalidFrame: (422, "invalid_frame"),
    VideoFrameTooLarge: (422, "video_frame_too_large"),
    VideoTooLong: (422, "video_too_long"),
    VideoTooSlow: (422, "video_too_slow"),
    # stored records (grader/errors.py)
    UnknownResult: (404, "not_found"),
    MissingImage: (404, "not_found"),
    UnknownFruit: (404, "not_found"),
    UnknownVerdict: (404, "not_found"),
    NoCalibration: (404, "not_found"),
    LotExists: (409, "lot_exists"),
    FruitClaimed: (409, "claimed"),
    AlreadyExamined: (409, "already_examined"),
    InvalidGrade: (422, "invalid_grade"),
    # the service's own refusals
    Unauthenticated: (401, "unauthenticated"),
    Forbidden: (403, "forbidden"),
    RateLimited: (429, "rate_limited"),
    TooManyFailedKeys: (429, "too_many_failed_keys"),
    Busy: (503, "overloaded"),
    InvalidCursor: (422, "invalid_cursor"),
}


def status_and_code(exc: GraderError) -> tuple[int, str]:
    """A domain error's HTTP status and error code, from STATUS."""
    status, code = next((v for k, v in STATUS.items() if isinstance(exc, k)), (422, "invalid_request"))
    return status, exc.code or code


def _is_connection_error(exc) -> bool:
    """An OperationalError / InterfaceError from the driver means the connection path failed
    (server gone, refused, timed out), not a bad statement."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


def validation_code(pydantic_type: str) -> str:
    """The error code of a field pydantic refused, naming what kind of problem it is."""
    if pydantic_type in ("missing", "missing_argument"):
        return "missing_field"
    if pydantic_type == "finite_number":
        return "invalid_number"
    if pydantic_type.startswith(("greater_than", "less_than")):
        return "out_of_range"
    if pydantic_type.endswith(("_too_long", "_too_short")):
        return "invalid_length"
    if pydantic_type.endswith(("_type", "_parsing")):
        return "invalid_type"
    if pydantic_type in ("literal_error", "enum"):
        return "invalid_choice"
    if pydantic_type == "extra_forbidden":
        return "unknown_field"
    return "invalid_request"


def is_storage_full(exc: BaseException) -> bool:
    """The database refused a write because its disk (or its size limit) is full: SQLite's
    SQLITE_FULL, PostgreSQL's disk_full (SQLSTATE 53100)."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlite_errorname", None) == "SQLITE_FULL" or "database or disk is full" in str(orig):
        return True
    return getattr(orig, "sqlstate", None) == "53100" or getattr(orig, "pgcode", None) == "53100"


def _body(code: str, message: str, field: str | None = None, **extra) -> dict:
    return {"error": {"code": code, "message": message, "field": field, **extra}}


def error_response(exc: GraderError) -> JSONResponse:
    """The answer to a domain error or a refusal: its status and code from STATUS, its body, and
    its headers (a refusal's)."""
    status, code = status_and_code(exc)
    return JSONResponse(_body(code, exc.message, exc.field), status_code=status, headers=getattr(exc, "headers", None))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RefuseControlCharacters:
    """Paths and query values with control characters (NUL, newlines...) are refused with 422
    before any route sees them: identifiers never carry them into the database, a file name or a log.
    A plain ASGI middleware: the request body (a camera's upload) passes through untouched, without
    the task and streams a BaseHTTPMiddleware puts around every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_control_characters(scope):
            body = _body("invalid_characters", "the path or query contains control characters", "path")
            await JSONResponse(body, status_code=422)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _has_control_characters(scope: Scope) -> bool:
    if _CONTROL.search(scope.get("path", "")):
        return True
    query = scope.get("query_string", b"")
    if not query:
        return False
    return any(_CONTROL.search(k) or _CONTROL.search(v) for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True))


def install(app: FastAPI) -> None:
    app.add_middleware(RefuseControlCharacters)

    from .batcher import Overloaded

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse(_body("overloaded", f"{exc}; retry shortly"), status_code=503, headers=OVERLOADED_HEADERS)

    @app.exception_handler(GraderError)
    async def _domain(_: Request, exc: GraderError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "header", "form")]
            problems.append(
                {"field": ".".join(loc) or None, "message": e.get("msg", "invalid"), "code": validation_code(e.get("type", ""))}
            )
        first = problems[0] if problems else {"field": None, "message": "invalid request", "code": "invalid_request"}
        msg = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return JSONResponse(_body(first["code"], msg, first["field"], problems=problems), status_code=422)

    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from store.images import StorageUnavailable

    @app.exception_handler(StorageUnavailable)
    async def _storage(_: Request, exc: StorageUnavailable) -> JSONResponse:
        return JSONResponse(_body(exc.code, str(exc)), status_code=507 if exc.full else 503, headers={"Retry-After": "30"})

    from sqlalchemy.exc import DataError

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        # the last line of defence: a value the database cannot store (fields are checked before)
        return JSONResponse(
            _body("invalid_value", "a value of the request cannot be stored (out of range or invalid characters)"), status_code=422
        )

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        if is_storage_full(exc):
            return JSONResponse(
                _body("storage_full", "the database's disk is full; nothing was stored; retry once an operator has made room"),
                status_code=507,
                headers={"Retry-After": "30"},
            )
        from sqlalchemy.exc import IntegrityError

        if isinstance(exc, IntegrityError):  # a concurrent request created the same thing first
            return JSONResponse(_body("conflict", "a concurrent request changed the same record; retry"), status_code=409)
        if not (exc.connection_invalidated or _is_connection_error(exc)):
            raise exc
        return JSONResponse(
            _body("database_unavailable", "the database is unreachable; nothing was stored; retry shortly"),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(PoolTimeout)
    async def _pool(_: Request, exc: PoolTimeout) -> JSONResponse:
        return JSONResponse(
            _body("database_unavailable", "no database connection became free in time; retry shortly"),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or f"http_{exc.status_code}"
        return JSONResponse(
            _body(code, str(exc.detail), getattr(exc, "field", None)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )
