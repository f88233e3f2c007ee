"""uvicorn's options from the settings, for `grader serve` with one process or several
(service/workers.py)."""

from __future__ import annotations

from service.http_protocol import NoDelayHttpProtocol
from service.settings import Settings


def server_options(settings: Settings) -> dict:
    """uvicorn's options from the settings: the HTTP protocol with its head deadline, websockets
    (the live camera stream), connection limits and timeouts."""
    NoDelayHttpProtocol.head_timeout_s = settings.body_read_timeout_s
    return {
        "factory": True,
        "http": NoDelayHttpProtocol,
        # the websockets package, through uvicorn's sans-I/O protocol for it (its older `websockets`
        # protocol is deprecated and will point at this one)
        "ws": "websockets-sansio",
        # a live frame is an image: the same byte limit
        "ws_max_size": settings.max_image_bytes + 1024,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
        "timeout_graceful_shutdown": 10,
    }
