"""The web app at ``/`` and Swagger UI at ``/docs``: static files served by Graft itself.

No build step and no CDN: the pages are one HTML file, plain JavaScript modules and a
stylesheet under ``app/api/web/static``; Swagger UI 5 is vendored there too (version 4 cannot
render OpenAPI 3.1, which FastAPI emits).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "SWAGGER_UI", "install_web"]

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
SWAGGER_UI = "/web/vendor/swagger-ui-5.35.0"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """The web app's one page; the JavaScript routes by the URL's fragment."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


BACK_LINK = (
    '<p style="margin:8px 20px;font:15px system-ui,sans-serif">'
    '<a id="back-to-app" href="/">&larr; Graft web app</a></p>'
)


@router.get("/docs")
def docs() -> HTMLResponse:
    """Swagger UI from the vendored files, never a CDN, with a link back to the web app."""
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Graft API",
        swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
        # No online validator badge: it would ask a host on the internet.
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode("utf-8").replace("<body>", "<body>\n" + BACK_LINK, 1)
    return HTMLResponse(html)


def install_web(app: FastAPI) -> None:
    """Mount the pages, their assets under ``/web/``, and ``/docs``."""
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=STATIC), name="web")
