"""The sandbox's HTTP face: Vast's REST paths, status codes and error bodies (vast-api.md), plus
``/sandbox-logs/`` (the stand-in for the S3 log uploads) and ``/_sandbox/`` admin endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmdeploy.sandbox.faults import FaultSpecError
from glmdeploy.sandbox.world import ApiError, RequestRecord, World

# vast-api.md §2.3: the per-endpoint thresholds the server quotes in its 429 messages.
THRESHOLDS = {"search": 2.0, "create": 4.5, "show": 2.0, "list": 1.0, "logs": 2.0, "destroy": 3.0, "manage": 1.0}
LIST_LIMIT_MAX = 25
LIST_LIMIT_NONPOSITIVE = 5

Handler = Callable[[Request], Awaitable[Response]]


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account (instance_id None) or one instance's own key."""

    instance_id: int | None


class DroppedConnection(Exception):
    """The sandbox closed the connection without answering (a fault)."""


async def drop_connection(request: Request) -> None:
    """Abort the TCP connection under ``request`` so the client sees a reset, not a response.

    Starlette does not expose the transport; uvicorn's ``receive`` is a bound method of its
    per-request cycle object, which holds it.
    """
    receive = request.receive
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("cannot drop the connection: not running under uvicorn")
    transport.abort()
    request.scope["sandbox.dropped"] = True
    # connection_lost runs on the next loop iteration; after it, uvicorn ignores our sends.
    for _ in range(5):
        await asyncio.sleep(0)


class RequestLog:
    """ASGI middleware recording every Vast-side URL the sandbox received (for audits).

    ``in_flight`` holds the requests being served right now, so a test can wait for "the create has
    arrived" or "nothing is being served any more" as an event instead of sleeping.
    """

    def __init__(self, app: ASGIApp, world: World, in_flight: dict[int, RequestRecord]) -> None:
        self.app = app
        self.world = world
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox/"):
            await self.app(scope, receive, send)
            return
        status = {"code": 0}
        query = scope.get("query_string", b"").decode("latin-1")
        self.in_flight[id(scope)] = RequestRecord(
            method=scope["method"], path=scope["path"], query=query, status=0, at=self.world.clock())

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            del self.in_flight[id(scope)]
            self.world.record(RequestRecord(
                method=scope["method"], path=scope["path"], query=query,
                status=0 if scope.get("sandbox.dropped") else status["code"], at=self.world.clock()))


def create_app(world: World) -> Starlette:
    """The Starlette app serving ``world``."""
    in_flight: dict[int, RequestRecord] = {}
    # The create answers create_timeout is holding back; POST /_sandbox/release lets them all go.
    held: set[asyncio.Event] = set()

    def authenticate(request: Request) -> Principal:
        key = None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            key = header[7:].strip()
        if not key:
            key = request.query_params.get("api_key") or None
        if key and key == world.api_key:
            return Principal(None)
        if key and key in world.instance_keys:
            return Principal(world.instance_keys[key])
        raise ApiError(401, "auth_error", "Invalid user key")

    def account_only(principal: Principal) -> None:
        if principal.instance_id is not None:
            raise ApiError(403, "not_authorized", "This key may only show, manage or destroy its own instance.")

    def own_instance(principal: Principal, instance_id: int) -> None:
        if principal.instance_id is not None and principal.instance_id != instance_id:
            raise ApiError(403, "not_authorized", "This key may only show, manage or destroy its own instance.")

    async def gate(request: Request, endpoint: str) -> Response | None:
        """Request-level faults for ``endpoint``: a dropped connection, a 5xx or a 429."""
        if world.faults.take("drop", endpoint):
            await drop_connection(request)
            raise DroppedConnection
        fault = world.faults.take("http5xx", endpoint)
        if fault:
            status = int(fault.params.get("status", "502"))
            if status == 500:
                return JSONResponse({"success": False, "error": "server_error", "msg": "Internal server error."},
                                    status_code=500)
            reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}[status]
            page = f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n" \
                   f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
            return Response(page, status_code=status, media_type="text/html")
        fault = world.faults.take("http429", endpoint)
        if fault:
            threshold = THRESHOLDS.get(endpoint, 2.0)
            headers: dict[str, str] = {}
            if "retry_after" in fault.params:
                wait = fault.params["retry_after"]
                headers = {"Retry-After": wait, "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                           "X-RateLimit-Reset": str(int(world.clock() + float(wait)) + 1)}
            text = f"API requests too frequent endpoint threshold={threshold}"
            # vast-api.md §2.2: the server has answered 429s in all three shapes.
            shape = fault.params.get("body", "json")
            if shape == "text":
                return PlainTextResponse(text, status_code=429, headers=headers)
            if shape == "detail":
                return JSONResponse({"detail": text}, status_code=429, headers=headers)
            return JSONResponse({"success": False, "error": "rate_limit_exceeded", "msg": text},
                                status_code=429, headers=headers)
        return None

    def endpoint(name: str | None, *, auth: bool = True) -> Callable[[Callable[..., Awaitable[Response]]], Handler]:
        """Wrap a handler: faults first, then auth, and ``ApiError`` -> the Vast error body."""

        def wrap(func: Callable[..., Awaitable[Response]]) -> Handler:
            async def handler(request: Request) -> Response:
                try:
                    if name is not None:
                        faulted = await gate(request, name)
                        if faulted is not None:
                            return faulted
                    if auth:
                        return await func(request, authenticate(request))
                    return await func(request)
                except ApiError as exc:
                    return error_response(exc)
                except DroppedConnection:
                    return Response(status_code=499)  # never reaches the client

            return handler

        return wrap

    async def json_body(request: Request, *, required: bool = True) -> Any:
        raw = await request.body()
        if not raw.strip():
            if required:
                raise ApiError(400, "invalid_args", "Request body must be JSON.")
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "invalid_args", "Request body is not valid JSON.") from None

    def path_id(request: Request, what: str = "id") -> int:
        raw = request.path_params["id"]
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, "invalid_args", f"'{what}' is required and must be a valid id.") from None
        if value <= 0:
            raise ApiError(400, "invalid_args", f"'{what}' is required and must be a valid id.")
        return value

    # ---------------- offers ----------------

    @endpoint("search", auth=False)
    async def search_post(request: Request) -> Response:
        query = await json_body(request)
        return JSONResponse({"offers": world.search(query)})

    @endpoint("search", auth=False)
    async def search_get(request: Request) -> Response:
        raw = request.query_params.get("q", "{}")
        try:
            query = json.loads(raw)
        except ValueError:
            raise ApiError(400, "invalid_args", "q must be a JSON object.") from None
        return JSONResponse({"offers": world.search(query)})

    @endpoint("search", auth=False)
    async def search_asks(request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("q", {}), dict):
            raise ApiError(400, "invalid_args", "Body must be {\"q\": {...}, \"select_cols\": [...]}.")
        return JSONResponse({"offers": world.search(body.get("q", {}))})

    # ---------------- create ----------------

    @endpoint("create")
    async def create(request: Request, principal: Principal) -> Response:
        account_only(principal)
        try:
            offer_id = path_id(request)
        except ApiError:
            raise ApiError(400, "invalid_args", "'id' is required and must be a valid offer ID") from None
        body = await json_body(request)
        status, payload = world.create(offer_id, body)
        timeout = world.faults.take("create_timeout")
        if timeout:
            # The instance exists and bills, but the client never hears about it: after `delay`
            # seconds, or as soon as a test says so (POST /_sandbox/release), the connection drops.
            release = asyncio.Event()
            held.add(release)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(release.wait(), float(timeout.params.get("delay", "0")))
            finally:
                held.discard(release)
            await drop_connection(request)
            raise DroppedConnection
        return JSONResponse(payload, status_code=status)

    # ---------------- instances ----------------

    @endpoint("show")
    async def show(request: Request, principal: Principal) -> Response:
        instance_id = path_id(request)
        own_instance(principal, instance_id)
        instance = world.get(instance_id)
        return JSONResponse({"instances": instance.row(world.clock()) if instance else None})

    @endpoint("destroy")
    async def destroy(request: Request, principal: Principal) -> Response:
        instance_id = path_id(request)
        own_instance(principal, instance_id)
        await world.destroy(instance_id)
        return JSONResponse({"success": True})

    @endpoint("manage")
    async def manage(request: Request, principal: Principal) -> Response:
        instance_id = path_id(request)
        own_instance(principal, instance_id)
        body = await json_body(request)
        if not isinstance(body, dict) or not ({"label", "state"} & body.keys()):
            raise ApiError(400, "invalid_args", "Body must set 'label' or 'state'.")
        result: dict[str, Any] = {"success": True}
        if "label" in body:
            result = world.set_label(instance_id, body["label"])
        if "state" in body:
            result = await world.set_state(instance_id, body["state"])
        return JSONResponse(result)

    @endpoint("list")
    async def list_v0(request: Request, principal: Principal) -> Response:
        raise ApiError(410, "deprecated_endpoint",
                       "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.")

    @endpoint("destroy")
    async def destroy_many(request: Request, principal: Principal) -> Response:
        account_only(principal)
        body = await json_body(request)
        ids = body.get("instance_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ApiError(400, "invalid_args", "instance_ids must be a list of instance ids.")
        found = [i for i in ids if world.get(i) is not None]
        if not found:
            raise ApiError(404, "instances_not_found", "No instances found for the given ids.")
        for instance_id in found:
            await world.destroy(instance_id)
        return JSONResponse({"success": True})

    @endpoint("list")
    async def instance_filters(request: Request, principal: Principal) -> Response:
        account_only(principal)
        combos = sorted({(i.actual_status or "", i.offer["verification"], i.offer["gpu_name"]) for i in world.live()})
        return JSONResponse({"filters": [{"actual_status": a or None, "verification": v, "gpu_name": g}
                                         for a, v, g in combos]})

    @endpoint("list")
    async def list_v1(request: Request, principal: Principal) -> Response:
        account_only(principal)
        params = request.query_params

        def parsed(name: str, default: Any) -> Any:
            raw = params.get(name)
            if raw is None or raw == "":
                return default
            try:
                return json.loads(raw)
            except ValueError:
                raise ApiError(400, "invalid_request", f"Error in query parameters: {name} is not valid JSON") from None

        select_filters = parsed("select_filters", {})
        order_by = parsed("order_by", [{"col": "id", "dir": "asc"}])
        select_cols = parsed("select_cols", None)
        try:
            limit = int(params.get("limit", LIST_LIMIT_MAX))
        except ValueError:
            raise ApiError(400, "invalid_request", "Error in query parameters: limit must be an integer") from None
        limit = LIST_LIMIT_NONPOSITIVE if limit <= 0 else min(limit, LIST_LIMIT_MAX)
        rows = world.list_rows(select_filters, order_by)
        digest = hashlib.sha256(json.dumps([select_filters, order_by], sort_keys=True).encode()).hexdigest()[:16]
        offset = 0
        token = params.get("after_token")
        if token:
            offset, last_id = _read_token(token, digest)
            # Resume after the last row seen when it still exists, so destroying instances between
            # pages neither skips nor repeats rows.
            positions = [index for index, row in enumerate(rows) if row["id"] == last_id]
            if positions:
                offset = positions[0] + 1
        page = rows[offset:offset + limit]
        next_offset = offset + len(page)
        next_token = _make_token(next_offset, page[-1]["id"], digest) if page and next_offset < len(rows) else None
        if isinstance(select_cols, list) and select_cols and select_cols != ["*"]:
            page = [{col: row.get(col) for col in select_cols if isinstance(col, str)} for row in page]
        label_counts: dict[str, int] = {}
        for row in rows:
            key = row.get("label") or ""
            label_counts[key] = label_counts.get(key, 0) + 1
        return JSONResponse({"success": True, "instances": page, "instances_found": len(page),
                             "total_instances": len(rows), "label_counts": label_counts, "next_token": next_token})

    @endpoint("logs")
    async def request_logs(request: Request, principal: Principal) -> Response:
        account_only(principal)
        instance_id = path_id(request)
        body = await json_body(request, required=False)
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_args", "Body must be a JSON object.")
        name = world.request_logs(instance_id, body)
        url = str(request.base_url).rstrip("/") + f"/sandbox-logs/{name}.log"
        return JSONResponse({"success": True, "result_url": url,
                             "msg": "Logs requested; they will be available at result_url shortly."})

    async def log_file(request: Request) -> Response:
        name = request.path_params["name"].removesuffix(".log")
        snapshot = world.log_snapshots.get(name)
        if snapshot is None:
            return Response(_no_such_key(name), status_code=404, media_type="application/xml")
        if snapshot.pending > 0:
            snapshot.pending -= 1
            return Response(_no_such_key(name), status_code=404, media_type="application/xml")
        return PlainTextResponse(snapshot.text)

    # ---------------- admin ----------------

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "pid": os.getpid(), "token": world.token, "seed": world.seed,
                             "time_scale": world.time_scale})

    async def ledger(request: Request) -> Response:
        return JSONResponse(world.ledger())

    async def requests_log(request: Request) -> Response:
        return JSONResponse({
            "requests": [
                {"method": r.method, "path": r.path, "query": r.query, "url": r.url(), "status": r.status, "at": r.at}
                for r in world.requests],
            "in_flight": [
                {"method": r.method, "path": r.path, "query": r.query, "url": r.url(), "since": r.at}
                for r in list(in_flight.values())],
        })

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("spec", ""), str):
                return JSONResponse({"success": False, "error": "invalid_args",
                                     "msg": "Body must be {\"spec\": \"...\", \"mode\": \"replace\"|\"add\"}."},
                                    status_code=400)
            try:
                if body.get("mode", "replace") == "add":
                    world.faults.add(body.get("spec", ""))
                else:
                    world.faults.replace(body.get("spec", ""))
            except FaultSpecError as exc:
                return JSONResponse({"success": False, "error": "invalid_args", "msg": str(exc)}, status_code=400)
        return JSONResponse({"success": True, "spec": world.faults.spec, "faults": world.faults.describe()})

    def live_engines() -> list[Any]:
        return [i.engine.app for i in world.instances.values() if getattr(i, "engine", None) is not None]

    async def release(request: Request) -> Response:
        """End every create_timeout delay and every held generation request now, so a test holds a
        create (or keeps an engine busy) exactly as long as it needs."""
        count = len(held)
        for event in list(held):
            event.set()
        count += sum(app.release_held() for app in live_engines())
        return JSONResponse({"success": True, "released": count})

    async def hold(request: Request) -> Response:
        """POST: from now on every engine keeps each generation request running (it counts in /metrics)
        until POST /_sandbox/release. GET: how many requests the engines are holding."""
        engines = live_engines()
        if request.method == "POST":
            for app in engines:
                app.hold_generation = True
        return JSONResponse({"success": True, "engines": len(engines), "held": sum(app.held for app in engines)})

    async def container_env(request: Request) -> Response:
        """What the container of an instance sees in its environment (CONTAINER_API_KEY included).

        For tests that run on-host snippets (the TTL watchdog) as the container would. It holds
        secrets, so unlike the other admin endpoints it needs the sandbox's own key.
        """
        header = request.headers.get("authorization", "")
        if not hmac.compare_digest(header.encode(), f"Bearer {world.api_key}".encode()):
            return JSONResponse({"success": False, "error": "auth_error", "msg": "Invalid user key"}, status_code=401)
        try:
            instance = world.instances[int(request.path_params["id"])]
        except (KeyError, ValueError):
            return JSONResponse({"success": False, "error": "no_such_instance", "msg": "Instance not found."},
                                status_code=404)
        return JSONResponse({"env": instance.container_env()})

    routes = [
        Route("/api/v0/bundles/", search_post, methods=["POST"]),
        Route("/api/v0/bundles/", search_get, methods=["GET"]),
        Route("/api/v0/search/asks/", search_asks, methods=["PUT"]),
        Route("/api/v0/asks/{id}/", create, methods=["PUT"]),
        Route("/api/v0/instances/", list_v0, methods=["GET"]),
        Route("/api/v0/instances/", destroy_many, methods=["DELETE"]),
        Route("/api/v0/instances/filters/", instance_filters, methods=["GET"]),
        Route("/api/v0/instances/request_logs/{id}/", request_logs, methods=["PUT"]),
        Route("/api/v0/instances/{id}/", show, methods=["GET"]),
        Route("/api/v0/instances/{id}/", destroy, methods=["DELETE"]),
        Route("/api/v0/instances/{id}/", manage, methods=["PUT"]),
        Route("/api/v1/instances/", list_v1, methods=["GET"]),
        Route("/sandbox-logs/{name}", log_file, methods=["GET"]),
        Route("/_sandbox/health", health, methods=["GET"]),
        Route("/_sandbox/ledger", ledger, methods=["GET"]),
        Route("/_sandbox/requests", requests_log, methods=["GET"]),
        Route("/_sandbox/faults", faults, methods=["GET", "POST"]),
        Route("/_sandbox/release", release, methods=["POST"]),
        Route("/_sandbox/hold", hold, methods=["GET", "POST"]),
        Route("/_sandbox/instances/{id}/container-env", container_env, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await world.shutdown()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: _not_found_handler})
    app.add_middleware(RequestLog, world=world, in_flight=in_flight)
    app.state.world = world
    return app


async def _not_found_handler(request: Request, exc: Exception) -> Response:
    return JSONResponse({"success": False, "error": "not_found", "msg": f"No endpoint {request.url.path}"},
                        status_code=404)


def _no_such_key(name: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
            f"<Message>The specified key does not exist.</Message><Key>instance_logs/{name}.log</Key></Error>")


def _make_token(offset: int, last_id: int, digest: str) -> str:
    payload = json.dumps({"o": offset, "i": last_id, "d": digest}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _read_token(token: str, digest: str) -> tuple[int, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, last_id = data["o"], data["i"]
        ok = isinstance(offset, int) and offset >= 0 and isinstance(last_id, int) and data["d"] == digest
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ApiError(400, "invalid_token", "Invalid or expired pagination token.")
    return int(offset), int(last_id)
