"""Pages served by the service itself (no separate front-end server, no CDN): the inspectors'
review page and the live line page. The pages hold no data; they call the API with the key the user signs in with."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)

#: pages run only the service's own scripts and styles, and are never framed
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@router.get("/review")
def review_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "review.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/line")
def line_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "line.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/review")


class PageHeaders(BaseHTTPMiddleware):
    """Security headers: nosniff on every response, the page policy on pages and static assets."""

    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        # no response is ever sniffed into another type (a stored image served back stays an image)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        path = request.url.path
        if path in ("/review", "/line") or path.startswith("/static/"):
            for k, v in PAGE_HEADERS.items():
                response.headers.setdefault(k, v)
        return response


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)
