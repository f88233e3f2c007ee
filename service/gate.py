"""The gate in front of the app: a request's key and its body's size are checked from its
headers, before a byte of its body is read.

Without it FastAPI parses a route's body (a 50 MB multipart upload spooled to disk, a JSON body
held in memory) before the route's dependencies look at the key. The gate finds the route a
request is for, takes the roles that route admits from its ``require(...)`` dependency, and
answers at once:

* 429 when the client's address is over its failed-authentication budget (AuthFailureLimiter),
* 401 without a known key, 403 when the key's role is not admitted, 429 over the key's rate,
* 413 when ``Content-Length`` is over the route's body limit (BODY_LIMITS).

Those answers carry ``Connection: close``: the body that was announced is never read. A body
without ``Content-Length`` (chunked) is counted as it arrives and stopped at the limit (413), and a
client that stops sending its body for ``body_read_timeout_s`` is answered 408. Both close the
connection too. A plain ASGI middleware: what passes goes through untouched.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException  # FastAPI passes its own HTTPException on while parsing a body (others become 400)
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import PRINCIPAL_SCOPE_KEY
from .errors import Forbidden, RateLimited, TooManyFailedKeys, Unauthenticated, error_response
from .metrics import REGISTRY

#: room for a multipart form's boundaries, part headers and its small text fields
FORM_OVERHEAD = 64 * 1024

#: (method, route) -> the largest body it accepts, from the settings; every other route takes
#: ``max_json_bytes``
BODY_LIMITS: dict[tuple[str, str], Callable[[Any], int]] = {
    ("POST", "/v1/grade"): lambda s: s.max_image_bytes + FORM_OVERHEAD,
    ("POST", "/v1/grade/batch"): lambda s: s.max_batch_bytes + FORM_OVERHEAD,
    ("POST", "/v1/cameras/{camera_id}/calibration"): lambda s: s.max_image_bytes + FORM_OVERHEAD,
    ("POST", "/v1/cameras/{camera_id}/video"): lambda s: s.max_video_bytes + FORM_OVERHEAD,
    ("POST", "/v1/models"): lambda s: s.max_model_bytes + s.max_metadata_bytes + FORM_OVERHEAD,
}

REFUSED = Counter(
    "grader_gate_refusals_total", "requests answered by the gate before their body was read, by reason", ["reason"], registry=REGISTRY
)


class BodyTooLarge(HTTPException):
    """A body (sent without Content-Length) grew past its route's limit while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this route's limit of {limit} bytes", headers={"Connection": "close"})
        self.code, self.field = "body_too_large", None


class BodyTimeout(HTTPException):
    """The client stopped sending its body, or sends it slower than the service accepts."""

    def __init__(self, message: str) -> None:
        super().__init__(408, message, headers={"Connection": "close"})
        self.code, self.field = "body_timeout", None


def roles_of(route: Any) -> frozenset[str] | None:
    """The roles a route admits (its ``require(...)`` dependency's, or its endpoint's
    ``grader_roles``); None for a public route."""
    cached = getattr(route, "_grader_roles", False)
    if cached is not False:
        return cached
    found = getattr(getattr(route, "endpoint", None), "grader_roles", None)
    stack = [getattr(route, "dependant", None)]
    while found is None and stack:
        dep = stack.pop()
        if dep is None:
            continue
        for sub in dep.dependencies:
            if hasattr(sub.call, "roles"):
                found = frozenset(sub.call.roles)
                break
            stack.append(sub)
    try:
        route._grader_roles = found
    except AttributeError:
        pass
    return found


def flat_routes(app: Any) -> list[Any]:
    """Every route of the app, routers included with include_router flattened (FastAPI keeps
    them nested), in the order the app tries them."""
    cached = getattr(app.state, "_grader_flat_routes", None)
    if cached is not None and cached[0] == len(app.router.routes):
        return cached[1]

    def walk(routes) -> list[Any]:
        out = []
        for route in routes:
            contexts = getattr(route, "effective_route_contexts", None)
            if contexts is not None:
                out.extend(c.original_route for c in contexts())
            elif hasattr(route, "original_router"):
                out.extend(walk(route.original_router.routes))
            else:
                out.append(route)
        return out

    flat = walk(app.router.routes)
    app.state._grader_flat_routes = (len(app.router.routes), flat)
    return flat


def match_route(app: Any, scope: Scope) -> Any | None:
    """The route the app will hand the request to (or, for a path whose method differs, the route
    of that path: it answers 405), without calling anything."""
    partial = None
    for route in flat_routes(app):
        m, _ = route.matches(scope)
        if m == Match.FULL:
            return route
        if m == Match.PARTIAL and partial is None:
            partial = route
    return partial


def _error(status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status_code=status, headers=headers)


class Gate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        ctx = app.state.ctx
        route = match_route(app, scope)
        roles = None if route is None else roles_of(route)
        headers = Headers(scope=scope)
        if scope["type"] == "websocket":
            if roles is not None:
                refusal = self.authenticate(ctx, scope, headers, roles)
                if refusal is not None:
                    status = refusal.status_code
                    await send({"type": "websocket.close", "code": 4000 + status, "reason": status_reason(refusal)})
                    return
            await self.app(scope, receive, send)
            return

        settings = ctx.settings
        limit_of = BODY_LIMITS.get((scope["method"], getattr(route, "path", "")))
        limit = limit_of(settings) if limit_of is not None else settings.max_json_bytes
        raw_length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length: int | None = None
        if raw_length is not None:
            if not raw_length.strip().isdigit():
                await self.refuse(
                    scope,
                    receive,
                    send,
                    "bad_length",
                    _error(400, "invalid_content_length", "Content-Length is not a number", headers={"Connection": "close"}),
                )
                return
            length = int(raw_length)
        has_body = chunked or bool(length)
        if roles is not None:
            refusal = self.authenticate(ctx, scope, headers, roles)
            if refusal is not None:
                if has_body:
                    refusal.headers["Connection"] = "close"
                await self.refuse(scope, receive, send, f"http_{refusal.status_code}", refusal)
                return
        if length is not None and length > limit:
            await self.refuse(
                scope,
                receive,
                send,
                "too_large",
                _error(
                    413,
                    "body_too_large",
                    f"the request body is {length} bytes, over this route's limit of {limit} bytes (see the GRADER_MAX_*_BYTES settings)",
                    headers={"Connection": "close"},
                ),
            )
            return
        if not has_body:
            await self.app(scope, receive, send)
            return
        await self.guarded(scope, receive, send, limit, settings.body_read_timeout_s, settings.min_body_rate_bytes_s)

    @staticmethod
    def authenticate(ctx: Any, scope: Scope, headers: Headers, roles: frozenset[str]) -> JSONResponse | None:
        """None when the request's key admits it to a route for ``roles`` (its principal is then
        left in the scope for the route), else the answer that refuses it."""
        client = scope.get("client")
        address = client[0] if client else "unknown"
        wait = ctx.auth_failures.blocked_for(address)
        if wait > 0:
            return error_response(
                TooManyFailedKeys(
                    f"too many requests with unknown keys from {address}; retry in {math.ceil(wait)} s",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            )
        key = headers.get("x-api-key")
        if not key:
            return error_response(Unauthenticated("missing X-API-Key header"))
        principal = ctx.api_keys.lookup(key)
        if principal is None:
            ctx.auth_failures.failed(address)
            return error_response(Unauthenticated("unknown API key"))
        wait = ctx.rate_limiter.take(principal.key_id)
        if wait > 0:
            return error_response(
                RateLimited(
                    f"key {principal.key_id} is over its limit of {ctx.settings.rate_limit_per_min} requests a minute; retry in {wait:.1f} s",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            )
        if principal.role not in roles:
            return error_response(Forbidden(f"role {principal.role!r} may not do this (needs one of {sorted(roles)})"))
        scope[PRINCIPAL_SCOPE_KEY] = principal
        return None

    @staticmethod
    async def refuse(scope: Scope, receive: Receive, send: Send, reason: str, response: JSONResponse) -> None:
        REFUSED.labels(reason).inc()
        await response(scope, receive, send)

    async def guarded(self, scope: Scope, receive: Receive, send: Send, limit: int, timeout_s: float, min_rate: float) -> None:
        """Run the app with a receive that counts the body against ``limit`` and gives up on a
        client that stops sending it for ``timeout_s``, or that, past ``timeout_s``, has sent less
        than ``min_rate`` bytes a second on average (a body dripped a byte at a time)."""
        received = 0
        body_done = False
        started = False
        t0 = time.monotonic()

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout_s)
            except asyncio.TimeoutError:
                body_done = True
                raise BodyTimeout(f"no byte of the request body arrived for {timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    body_done = True
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
                elapsed = time.monotonic() - t0
                if not body_done and elapsed > timeout_s and received < min_rate * elapsed:
                    body_done = True
                    raise BodyTimeout(f"the body arrives at {received / elapsed:.0f} bytes/s, under the minimum of {min_rate:g}")
            else:
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised outside a route's error handling
            if started:
                raise
            await self.refuse(scope, receive, send, exc.code, _error(exc.status_code, exc.code, str(exc.detail), headers=exc.headers))


def status_reason(response: JSONResponse) -> str:
    """A short close reason for a refused websocket (at most 123 bytes)."""
    import json

    return json.loads(response.body)["error"]["message"][:120]
