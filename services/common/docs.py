"""The interactive API pages, /docs (Swagger UI) and /redoc (ReDoc), with their scripts and styles served by the
service itself: FastAPI's own pages load them from a CDN, so they stay blank on a host without internet.

The assets are the swagger-ui-dist and ReDoc bundles that the ``fastapi-offline`` package ships (the files FastAPI's
pages would fetch); only its static folder is used. They live under /docs/static, so the API-key middleware treats
them as it treats /docs (open without keys; with keys, they need one like every other path but the health probes).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse
from starlette.routing import Route

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs/static"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
# The pages may load nothing from elsewhere: ReDoc's menu shows Redocly's logo from their CDN, which this keeps the
# browser from requesting (the image then hides itself). Inline scripts and styles: the pages' own set-up, and the
# styles both UIs inject; blob: ReDoc's search worker.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data: blob:; worker-src 'self' blob:")


def install_offline_docs(app: FastAPI) -> None:
    """Serve ``app``'s /docs and /redoc pages (wherever its ``docs_url`` and ``redoc_url`` put them) with local
    assets, in place of the pages FastAPI made, which load theirs from a CDN."""
    pages = {app.docs_url, app.redoc_url} - {None}
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path in pages)]
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def under_root(request: Request, path: str) -> str:  # behind a proxy that strips a prefix (root_path)
        return request.scope.get("root_path", "").rstrip("/") + path

    if app.openapi_url and app.docs_url:
        @app.get(app.docs_url, include_in_schema=False)
        async def swagger_ui(request: Request) -> HTMLResponse:
            redirect = app.swagger_ui_oauth2_redirect_url
            page = get_swagger_ui_html(
                openapi_url=under_root(request, app.openapi_url), title=f"{app.title} - Swagger UI",
                swagger_js_url=under_root(request, f"{ASSETS_URL}/{SWAGGER_JS}"),
                swagger_css_url=under_root(request, f"{ASSETS_URL}/{SWAGGER_CSS}"),
                swagger_favicon_url=under_root(request, f"{ASSETS_URL}/{FAVICON}"),
                oauth2_redirect_url=under_root(request, redirect) if redirect else None,
                init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters)
            return same_origin_only(page)

    if app.openapi_url and app.redoc_url:
        @app.get(app.redoc_url, include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            page = get_redoc_html(
                openapi_url=under_root(request, app.openapi_url), title=f"{app.title} - ReDoc",
                redoc_js_url=under_root(request, f"{ASSETS_URL}/{REDOC_JS}"),
                redoc_favicon_url=under_root(request, f"{ASSETS_URL}/{FAVICON}"), with_google_fonts=False)
            return same_origin_only(page)


def same_origin_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page
