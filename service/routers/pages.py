"""Pages served by the service itself (no separate front-end server, no CDN): the inspectors'
review page and the live line page. The pages hold no data; they call the API with the key the user signs in with."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


#: /docs runs Swagger UI's own inline start-up script; everything else it loads comes from this service
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

DOCS_ASSETS = "/docs-assets"


def add_docs(app) -> None:
    """The interactive API docs at /docs, with Swagger UI's scripts and styles served from the
    installed swagger-ui-bundle package: the service needs nothing from outside the packhouse
    network, and no third-party script runs on the origin of /review."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    # the page reads its app from the request: an endpoint closing over ``app`` would keep a stopped
    # app (and its models) alive in FastAPI's cache of endpoint signatures
    @app.get("/docs", include_in_schema=False)
    def docs(request: Request):
        return get_swagger_ui_html(
            openapi_url=request.app.openapi_url,
            title=f"{request.app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


@router.get("/review")
def review_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "review.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/line")
def line_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "line.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/review")


class PageHeaders:
    """Security headers: nosniff on every response, the page policy on pages and static assets.
    A plain ASGI middleware: it only edits the response head, so the request body (a camera's
    upload) passes through untouched, without the streams a BaseHTTPMiddleware puts around it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in ("/review", "/line") or path.startswith("/static/"):
            extra = PAGE_HEADERS
        elif path == "/docs" or path.startswith(DOCS_ASSETS + "/"):
            extra = {**DOCS_HEADERS, "X-Content-Type-Options": "nosniff"}
        else:
            extra = {"X-Content-Type-Options": "nosniff"}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in extra.items():
                    if k not in headers:
                        headers.append(k, v)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)
