"""create_app(settings): the HTTP server on top of the process's components (server/components.py: store, locks,
catalog, Redis, built once), with the finalizer, the tus handler and the routes, each built once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from modeldrop.cli import __version__
from modeldrop.server import errors
from modeldrop.server.admission import Admission
from modeldrop.server.api import lookup
from modeldrop.server.api.llama import LlamaApi
from modeldrop.server.api.uploads import upload_status
from modeldrop.server.components import Components, build
from modeldrop.server.dedupe import MATCH_HEADER, Dedupe
from modeldrop.server.directories import probe_writable
from modeldrop.server.finalizer import Finalizer, make_finalizer, requeue_stuck
from modeldrop.server.locks.locker import AsyncLocker
from modeldrop.server.metrics import Metrics, method_label
from modeldrop.server.origins import BrowserGuard, BrowserPolicy, answer_error
from modeldrop.server.rufh import handler as rufh
from modeldrop.server.settings import Settings
from modeldrop.server.store import sets
from modeldrop.server.store.concat import copy_parts
from modeldrop.server.store.errors import StoreError
from modeldrop.server.tus import headers as tus
from modeldrop.server.tus.handler import BASE_PATH, STATUS_HEADER, TusHandler

log = logging.getLogger("modeldrop.app")

EXPOSED_HEADERS = ["Location", "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires",
                   "Upload-Concat", "Upload-Defer-Length", "Tus-Version", "Tus-Resumable", "Tus-Extension",
                   "Tus-Max-Size", "Tus-Checksum-Algorithm", STATUS_HEADER, "Retry-After",
                   "Upload-Complete", "Upload-Incomplete", "Upload-Limit", "Upload-Draft-Interop-Version"]
# a checkout serves its own build (web/dist); an installed wheel carries the build as modeldrop/web
WEB_DIRS = (Path(__file__).resolve().parent.parent / "web" / "dist", Path(__file__).resolve().parent.parent / "web")


def default_web_dir() -> Path:
    return next((path for path in WEB_DIRS if (path / "index.html").is_file()), WEB_DIRS[0])


OVERRIDABLE_METHODS = ("PATCH", "DELETE")


class MethodOverride:
    """X-HTTP-Method-Override: for clients behind proxies that only pass GET and POST (tus core).

    Only a POST becomes a PATCH or a DELETE: those are what such proxies stop; anything else is refused
    rather than passed on as a method name nobody expects.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-http-method-override":
                    method = value.decode("latin-1").strip().upper()
                    if scope["method"] != "POST" or method not in OVERRIDABLE_METHODS:
                        shown = value.decode("latin-1")[:40]
                        await answer_error(scope, send, errors.BadRequest(
                            f"X-HTTP-Method-Override turns a POST into {' or '.join(OVERRIDABLE_METHODS)} only, "
                            f"not a {scope['method']} into {shown!r}"))
                        return
                    scope = dict(scope, method=method)
                    break
        await self.app(scope, receive, send)


class AppParts:
    """Everything the app is made of, reachable from the app state for tests and the lifespan: the process's
    components, and what create_app builds on them."""

    def __init__(self, components: Components) -> None:
        settings = components.settings
        self.components = components
        self.settings = settings
        self.store = components.store
        self.redis = components.redis
        self.locks = components.locks
        self.catalog = components.catalog
        self.locker = AsyncLocker(self.locks, settings.lock_timeout)
        self.admission = Admission(settings, self.store, self.locks)
        self.metrics = Metrics()
        self.finalizer: Finalizer | None = None
        self.tus: TusHandler | None = None
        self.rufh: rufh.RufhHandler | None = None


def create_app(settings: Settings, components: Components | None = None) -> Starlette:
    """components: the process's (server/main.py builds them), or built here from settings. The app owns them from
    here on: in embedded mode its finalizer runs the job with them, and its lifespan closes them."""
    if components is not None and components.settings != settings:
        raise ValueError("create_app: the components were built from other settings")
    parts = AppParts(build(settings) if components is None else components)
    parts.finalizer = make_finalizer(parts.components)
    dedupe = Dedupe(parts.components, parts.admission)  # creations of a file the server already has
    handler = TusHandler(settings, parts.store, parts.locker, parts.admission, parts.finalizer, parts.metrics,
                         dedupe)
    parts.tus = handler
    parts.rufh = rufh.RufhHandler(handler)
    endpoint = rufh.Dispatch(handler, parts.rufh)  # /files/ takes creations of both protocols
    llama = LlamaApi(settings, parts.catalog, stopping=lambda: handler.shutting_down)
    parts.metrics.watch_store(parts.store, parts.finalizer.queue_depth)
    parts.metrics.lock_releases.set_function(lambda: parts.locker.release_requests)
    parts.metrics.active_requests.set_function(lambda: len(handler.active))

    def authed(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            parts.admission.check_auth(request.headers)
            return await endpoint(request)
        return guarded

    async def api_config(request: Request) -> Response:
        return JSONResponse({"auth_required": parts.admission.auth_required, "max_size": settings.max_size,
                             "tus_endpoint": BASE_PATH, "rufh_endpoint": rufh.UPLOADS_PATH,
                             "max_append_size": settings.max_append_size, "version": __version__,
                             "checksum_algorithms": list(tus.CHECKSUM_ALGORITHMS)})

    async def api_upload(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(upload_status, parts.store, request.path_params["upload_id"]))

    async def api_models(request: Request) -> Response:
        return JSONResponse(await llama.listing(await asyncio.to_thread(parts.catalog.listing)))

    async def api_model(request: Request) -> Response:
        return JSONResponse(await llama.describe(
            await asyncio.to_thread(parts.catalog.describe, request.path_params["name"])))

    async def api_verify(request: Request) -> Response:
        with_sha256 = request.query_params.get("sha256", "") in ("1", "true", "yes")
        return JSONResponse(await asyncio.to_thread(parts.catalog.verify, request.path_params["name"], with_sha256))

    async def api_delete_model(request: Request) -> Response:
        removed = await asyncio.to_thread(parts.catalog.delete, request.path_params["name"])
        log.info("deleted model=%s", removed)
        return JSONResponse({"deleted": removed})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems = await asyncio.to_thread(readiness_problems, parts)
        body = {"status": "ready" if not problems else "not ready", "problems": problems}
        return JSONResponse(body, status_code=200 if not problems else 503)

    async def metrics(request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, parts.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    routes: list[Route | Mount] = [
        Route("/files", endpoint.post, methods=["POST"]),
        Route("/files", endpoint.options, methods=["OPTIONS"]),
        Route(BASE_PATH, endpoint.post, methods=["POST"]),
        Route(BASE_PATH, endpoint.options, methods=["OPTIONS"]),
        Route(BASE_PATH + "{upload_id}", handler.head, methods=["HEAD"]),
        Route(BASE_PATH + "{upload_id}", handler.patch, methods=["PATCH"]),
        Route(BASE_PATH + "{upload_id}", handler.delete, methods=["DELETE"]),
        Route(BASE_PATH + "{upload_id}", handler.options, methods=["OPTIONS"]),
        *(Route(path, route, methods=methods) for path, route, methods in rufh.routes(parts.rufh)),
        Route("/api/config", api_config, methods=["GET"]),
        Route("/api/uploads/{upload_id}", authed(api_upload), methods=["GET"]),
        Route("/api/models", authed(api_models), methods=["GET"]),
        Route("/api/models/{name:path}", authed(api_model), methods=["GET"]),
        Route("/api/models/{name:path}", authed(api_delete_model), methods=["DELETE"]),
        Route("/api/verify/{name:path}", authed(api_verify), methods=["GET"]),
        *llama.routes(authed),
        *lookup.routes(settings, dedupe, authed),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    web_dir = Path(settings.web_dir or default_web_dir())
    if (web_dir / "index.html").exists():
        routes.append(Mount("/", app=StaticFiles(directory=web_dir, html=True), name="web"))
    else:
        routes.append(Route("/", web_missing(web_dir), methods=["GET"]))

    policy = BrowserPolicy.from_settings(settings)
    middleware = [
        Middleware(BrowserGuard, policy=policy),
        Middleware(MethodOverride),
        Middleware(CORSMiddleware, allow_origins=policy.cors_origins, allow_methods=["*"],
                   allow_headers=["*"], expose_headers=[*EXPOSED_HEADERS, MATCH_HEADER],
                   max_age=86400),
        Middleware(RequestMetrics, metrics=parts.metrics),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        io_pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="modeldrop-io")
        loop.set_default_executor(io_pool)
        await recover(parts)
        maintenance = loop.create_task(maintain(parts))
        log.info("ready: %s", settings.describe())
        try:
            yield
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            if parts.finalizer is not None:
                parts.finalizer.close()
            handler.close()
            dedupe.close()
            await llama.close()
            parts.components.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={errors.HTTPError: http_error, StoreError: store_error,
                                        HTTPException: routing_error, Exception: internal_error})
    app.state.parts = parts
    return app


def web_missing(web_dir: Path) -> Callable[[Request], Awaitable[Response]]:
    # where the server is installed is for its operator (the log), not for whoever opens the page
    log.warning("the web UI is not built (%s has no index.html): / shows a note instead", web_dir)

    async def page(request: Request) -> Response:
        return HTMLResponse("<h1>modeldrop</h1><p>The web UI is not built. Run <code>scripts/setup.sh run</code>, "
                            "which builds it, or point <code>--web-dir</code> at a build. The tus endpoint is "
                            f"<code>{BASE_PATH}</code>.</p>", status_code=200)
    return page


def error_response(request: Request, status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    if request.url.path.startswith("/files"):
        headers = {"Tus-Resumable": tus.TUS_VERSION, **headers}
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.HTTPError)
    return error_response(request, exc.status, exc.code, exc.message, exc.headers)


async def store_error(request: Request, exc: Exception) -> Response:
    """What the store refused, answered by the one table of server/errors.py, on the tus and API routes alike."""
    assert isinstance(exc, StoreError)
    return await http_error(request, errors.from_store(exc))


async def routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the same JSON shape as every other error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        code, message = "not_found", "there is nothing at this address (the README lists the HTTP API)"
    elif exc.status_code == 405:
        code, message = "method_not_allowed", f"{request.method[:20]} is not allowed at this address"
    else:
        code, message = "bad_request", str(exc.detail)
    return error_response(request, exc.status_code, code, message, dict(exc.headers or {}))


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    plain = errors.InternalError()
    return error_response(request, plain.status, plain.code, plain.message, {})


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def recording_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.requests.labels(method_label(scope["method"]), str(status["code"])).inc()


async def recover(parts: AppParts) -> None:
    """At start: reconcile what a crash left, resume interrupted assemblies, resubmit finished uploads."""
    report = await asyncio.to_thread(parts.store.reconcile)
    log.info("reconciled staging: %s", report.summary())
    for upload_id in report.to_assemble:
        info = await asyncio.to_thread(parts.store.load, upload_id)  # reconcile has just read it
        try:
            part_infos = [await asyncio.to_thread(parts.store.load, part) for part in info.parts]
            await asyncio.to_thread(copy_parts, parts.store, info, part_infos)
            report.to_finalize.append(upload_id)
        except Exception as exc:
            log.warning("upload=%s: could not resume concatenation: %s", upload_id, exc)
            await asyncio.to_thread(parts.store.mark_failed, info, f"the concatenation could not be finished: {exc}")
    if report.to_finalize and parts.finalizer is not None:
        await asyncio.to_thread(requeue_stuck, parts.store, parts.finalizer, parts.locks, report.to_finalize)


async def maintain(parts: AppParts) -> None:
    """Every so often: expire abandoned uploads, requeue finished ones nobody is finalizing."""
    while True:
        await asyncio.sleep(parts.settings.maintenance_interval)
        try:
            swept = await asyncio.to_thread(parts.store.sweep, parts.settings.expire_after)
            if swept:
                log.info("expired %d uploads: %s", len(swept), " ".join(swept))
            expired_sets = await asyncio.to_thread(sets.expire_waiting, parts.store, parts.locks,
                                                   parts.settings.expire_after)
            if expired_sets:
                log.info("expired incomplete split sets: %s", " ".join(expired_sets))
            if parts.finalizer is not None:
                requeued = await asyncio.to_thread(requeue_stuck, parts.store, parts.finalizer, parts.locks,
                                                   stale_after=parts.settings.stale_after)
                if requeued:
                    log.info("requeued for finalize: %s", " ".join(requeued))
        except Exception:
            log.exception("maintenance pass failed; trying again later")


def readiness_problems(parts: AppParts) -> list[str]:
    problems = []
    # by role, not path: /readyz is open, and where the data lives is the operator's business
    for role, directory in (("staging", parts.settings.staging_dir), ("models", parts.settings.models_dir)):
        try:
            probe_writable(directory)
        except OSError as exc:
            problems.append(f"the {role} directory is not writable: {exc.strerror} (see --{role}-dir)")
    stat = os.statvfs(parts.settings.staging_dir)
    free = stat.f_bavail * stat.f_frsize
    if free < parts.settings.disk_headroom:
        problems.append(f"only {free} bytes free on the staging filesystem (headroom {parts.settings.disk_headroom})")
    if parts.redis is not None:
        try:
            parts.redis.ping()
        except Exception as exc:
            problems.append(f"Redis is unreachable: {exc}")
    return problems
