"""The web app at ``/`` and Swagger UI at ``/docs``: static files served by Graft itself.

No build step and no CDN: the pages are one HTML file, plain JavaScript modules and a
stylesheet under ``app/api/web/static``; Swagger UI 5 is vendored there too (version 4 cannot
render OpenAPI 3.1, which FastAPI emits).

Both pages are sent with a Content-Security-Policy that admits only this server's own scripts,
styles and connections (the web app has no inline script or style attribute; Swagger UI's one
inline start-up script is admitted by its hash), and may not be framed by any site
(``frame-ancestors 'none'``, ``X-Frame-Options: DENY``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["APP_CSP", "STATIC", "SWAGGER_UI", "install_web"]

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
SWAGGER_UI = "/web/vendor/swagger-ui-5.35.0"

router = APIRouter(include_in_schema=False)

_COMMON_CSP = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
APP_CSP = f"{_COMMON_CSP}; script-src 'self'; style-src 'self'"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _page_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _docs_csp(html: str) -> str:
    """The docs page's policy: its inline start-up script by hash; Swagger UI sets inline
    styles as it renders, so styles may be inline there (scripts may not)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    return f"{_COMMON_CSP}; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'"


@router.get("/")
def index() -> FileResponse:
    """The web app's one page; the JavaScript routes by the URL's fragment."""
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html; charset=utf-8",
        headers=_page_headers(APP_CSP),
    )


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
    return HTMLResponse(html, headers=_page_headers(_docs_csp(html)))


def install_web(app: FastAPI) -> None:
    """Mount the pages, their assets under ``/web/``, and ``/docs``."""
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=STATIC), name="web")
