"""The sandbox's state: offers, rented instances, their lifecycle, logs and the cost ledger.

Everything here runs on the one asyncio loop of the sandbox process (or of the test thread), so
there are no locks: request handlers and lifecycle tasks interleave only at ``await``.

Lifecycle (vast-api.md §6.5): ``created`` → ``loading`` (image pull) → ``running``; faults can
hold an instance in ``loading`` or end it ``exited`` with a Docker pull error in ``status_msg``.
Simulated durations are multiplied by ``time_scale`` (real seconds per simulated second).
Billing: storage from creation, GPU from ``running`` (§6.5), in simulated hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glmdeploy.sandbox import catalogue
from glmdeploy.sandbox.faults import DEFAULT_EXIT_ERROR, DEFAULT_PULL_ERROR, FaultBook

# Simulated seconds spent in each state before the next (a cached-image host is quick to
# create; pulling a multi-GB serving image takes minutes).
CREATED_S = 5.0
LOADING_S = 120.0
# A tag the registry does not have fails the pull at once (the manifest is the first thing fetched).
PULL_FAIL_S = 5.0
DEFAULT_TIME_SCALE = 0.005
# Engine latency in real seconds. Real engines decode at ~50-200 tokens/s; the defaults keep streams
# visibly incremental (what smoke's "stream" check looks for) while a 64-token answer takes ~0.15 s.
DEFAULT_TTFT_S = 0.02
DEFAULT_TPOT_S = 0.002
# glmdeploy's TTL watchdog in an onstart script (glmdeploy.onstart.watchdog_snippet): a function that
# sleeps TTL seconds and then destroys the instance with its own key, started in the background.
WATCHDOG_SLEEP = re.compile(r"^glmdeploy_watchdog\(\) \{\n\s*sleep (\d+)\n", re.MULTILINE)
WATCHDOG_START = re.compile(r"^glmdeploy_watchdog\b[^\n]*&\s*$", re.MULTILINE)
PORT_ENV = re.compile(r"^-p\s+(?:(\d+):)?(\d+)(?:/(tcp|udp))?$")
RUNTYPE_TOKENS = frozenset({
    "ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "jupyter", "jupyter_proxy", "jupyter_direc",
    "jupyter_direct", "args",
})
LIST_FILTER_COLUMNS = frozenset({
    "id", "label", "actual_status", "intended_status", "cur_state", "gpu_name", "verification",
    "machine_id", "host_id", "image_uuid", "status_msg", "start_date", "geolocation",
})
ONSTART_LIMIT = 4096
LOG_TAIL_DEFAULT = 1000
# Bounds on what a long-running sandbox keeps in memory.
MAX_RECORDS = 20_000
MAX_LOG_SNAPSHOTS = 2_000


class ApiError(Exception):
    """An error answer of the Vast API: HTTP status plus the usual ``success/error/msg`` body."""

    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.error = error
        self.msg = msg
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.error, "msg": self.msg, **self.extra}


def reserve_port() -> socket.socket:
    """A bound (not listening) loopback socket on a free port.

    The instance keeps it until its engine takes it over, so no other sandbox or test running in
    parallel can grab the same HostPort in between; connecting to it meanwhile is refused, as a
    port nobody listens on yet should be.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A loopback port nobody listens on right now (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Instance:
    id: int
    offer: dict[str, Any]
    api_key: str
    image: str
    env: dict[str, str]
    onstart: str | None
    label: str | None
    disk: float
    runtype: str
    args: list[str] | None
    bid_price: float | None
    created_at: float
    host_ports: dict[str, int]
    ssh_port: int
    time_scale: float
    actual_status: str | None = "created"
    intended_status: str = "running"
    cur_state: str = "running"
    status_msg: str | None = None
    start_date: float | None = None
    running_since: float | None = None
    destroyed_at: float | None = None
    ports_hidden: bool = False
    stuck_loading: bool = False
    # An error status_msg while loading (a pull error): it stays loading, as on Vast.
    loading_error: str | None = None
    # Report actual_status null (provisioning) instead of "created" before loading.
    status_null: bool = False
    # Instead of running: "unknown" (no heartbeat) or "offline" (host disconnected), for good.
    lost_as: str | None = None
    # Simulated-clock time of the first sign of an injected fault a client can see (ledger: first_sign_at).
    first_sign_at: float | None = None
    # Bound sockets holding this instance's HostPorts until an engine takes one over (reserve_port).
    reserved: dict[int, socket.socket] = field(default_factory=dict, repr=False)
    exit_msg: str | None = None
    container_log: list[str] = field(default_factory=list)
    daemon_log: list[str] = field(default_factory=list)
    log_requests: int = 0
    cost: float = 0.0
    billed_until: float = 0.0
    engine: Any = None
    engine_task: asyncio.Task[None] | None = None
    # The last engine started, kept after it stops: its endpoint's request log and TLS handshakes stay readable.
    last_engine: Any = None
    lifecycle: asyncio.Task[None] | None = None
    # The onstart's TTL watchdog, once the container runs it; and who destroyed the instance.
    watchdog: asyncio.Task[None] | None = None
    watchdog_ttl_s: float | None = None
    destroyed_by: str | None = None

    @property
    def dph_total(self) -> float:
        return float(self.offer["dph_total"])

    @property
    def storage_per_hour(self) -> float:
        return float(self.offer["storage_cost"]) * self.disk / catalogue.HOURS_PER_MONTH

    def rate(self) -> float:
        """$/simulated hour right now: the whole price while running, storage otherwise."""
        if self.destroyed_at is not None:
            return 0.0
        if self.actual_status == "running":
            return self.dph_total
        return self.storage_per_hour

    def bill(self, now: float) -> None:
        elapsed_sim_h = max(0.0, now - self.billed_until) / self.time_scale / 3600.0
        self.cost += self.rate() * elapsed_sim_h
        self.billed_until = now

    def cost_at(self, now: float) -> float:
        elapsed_sim_h = max(0.0, now - self.billed_until) / self.time_scale / 3600.0
        return self.cost + self.rate() * elapsed_sim_h

    def container_env(self) -> dict[str, str]:
        """The env the container sees: the user's vars plus Vast's predefined ones (§9)."""
        env = {k: v for k, v in self.env.items() if not k.startswith("-")}
        env.update({
            "CONTAINER_ID": str(self.id),
            "CONTAINER_API_KEY": self.api_key,
            "VAST_CONTAINERLABEL": f"C.{self.id}",
            "PUBLIC_IPADDR": "127.0.0.1",
            "GPU_COUNT": str(self.offer["num_gpus"]),
        })
        for key, port in self.host_ports.items():
            number, proto = key.split("/")
            env[f"VAST_{proto.upper()}_PORT_{number}"] = str(port)
        return env

    def ports_object(self) -> dict[str, list[dict[str, str]]] | None:
        if self.actual_status != "running" or self.ports_hidden or not self.host_ports:
            return None
        if self.offer["direct_port_count"] <= 0:
            return None  # proxy-only host: nothing is mapped directly (vast-api.md §11.6)
        return {key: [{"HostIp": "0.0.0.0", "HostPort": str(port)}] for key, port in self.host_ports.items()}

    def row(self, now: float) -> dict[str, Any]:
        """The instance object of GET /api/v0/instances/{id}/ and the v1 list (vast-api.md §6.4)."""
        offer = self.offer
        running = self.actual_status == "running"
        uptime = (now - self.running_since) / 60.0 if running and self.running_since else 0.0
        direct = self.offer["direct_port_count"] > 0
        return {
            "id": self.id,
            "actual_status": self.actual_status,
            "intended_status": self.intended_status,
            "cur_state": self.cur_state,
            "next_state": self.intended_status,
            "status_msg": self.status_msg,
            "label": self.label,
            "image_uuid": self.image,
            "image_args": list(self.args or []),
            "image_runtype": self.runtype,
            "extra_env": [[k, v] for k, v in self.env.items()],
            "onstart": self.onstart,
            "jupyter_token": None,
            "template_id": None,
            "template_hash_id": None,
            "template_name": None,
            "public_ipaddr": "127.0.0.1",
            "local_ipaddrs": "127.0.0.1\n",
            "ssh_host": "127.0.0.1",
            "ssh_port": self.ssh_port,
            "ssh_idx": "0",
            "ports": self.ports_object(),
            "direct_port_start": min(self.host_ports.values()) if direct and self.host_ports else -1,
            "direct_port_end": max(self.host_ports.values()) if direct and self.host_ports else -1,
            "direct_port_count": offer["direct_port_count"],
            "machine_dir_ssh_port": -1,
            "machine_id": offer["machine_id"],
            "host_id": offer["host_id"],
            "geolocation": offer["geolocation"],
            "static_ip": offer["static_ip"],
            "verification": offer["verification"],
            "reliability2": offer["reliability2"],
            "num_gpus": offer["num_gpus"],
            "gpu_name": offer["gpu_name"],
            "gpu_ram": offer["gpu_ram"],
            "gpu_totalram": offer["gpu_total_ram"],
            "gpu_util": 0.0,
            "gpu_temp": 35.0 if running else None,
            "gpu_arch": offer["gpu_arch"],
            "cuda_max_good": offer["cuda_max_good"],
            "driver_version": offer["driver_version"],
            "compute_cap": offer["compute_cap"],
            "cpu_name": offer["cpu_name"],
            "cpu_cores": offer["cpu_cores"],
            "cpu_cores_effective": offer["cpu_cores_effective"],
            "cpu_ram": offer["cpu_ram"],
            "cpu_util": 0.0,
            "mem_usage": 0.0,
            "mem_limit": float(offer["cpu_ram"]) / 1000.0,
            "vmem_usage": 0.0,
            "disk_space": self.disk,
            "disk_usage": 0.0,
            "disk_util": 0.0,
            "inet_up": offer["inet_up"],
            "inet_down": offer["inet_down"],
            "start_date": self.start_date if self.start_date is not None else self.created_at,
            "end_date": offer["end_date"],
            "uptime_mins": round(uptime, 3),
            "duration": offer["end_date"] - now,
            "dph_total": offer["dph_total"],
            "dph_base": offer["dph_base"],
            "storage_cost": offer["storage_cost"],
            "storage_total_cost": round(self.storage_per_hour, 6),
            "is_bid": self.bid_price is not None,
            "min_bid": offer["min_bid"],
            "search": offer.get("search"),
            "instance": offer.get("instance"),
            "credit_balance": None,
            "time_remaining": "",
            "volume_info": [],
        }


@dataclass
class LogSnapshot:
    text: str
    pending: int  # GETs still answered 404 (the host has not uploaded yet)


@dataclass
class RequestRecord:
    method: str
    path: str
    query: str
    status: int
    at: float

    def url(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


class World:
    """All mutable sandbox state, plus the operations the HTTP layer exposes."""

    def __init__(self, *, seed: int = 0, time_scale: float = DEFAULT_TIME_SCALE, faults: str | None = None,
                 api_key: str | None = None, clock: Callable[[], float] = time.time,
                 ttft_s: float = DEFAULT_TTFT_S, tpot_s: float = DEFAULT_TPOT_S) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if ttft_s < 0 or tpot_s < 0:
            raise ValueError("engine latencies must not be negative")
        self.seed = seed
        self.ttft_s = ttft_s
        self.tpot_s = tpot_s
        self.time_scale = time_scale
        self.clock = clock
        self.api_key = api_key or secrets.token_hex(32)
        self.token = secrets.token_hex(16)
        self.offers: dict[int, dict[str, Any]] = {o["id"]: o for o in catalogue.build_catalogue(seed, now=clock())}
        self.faults = FaultBook(faults, seed=seed)
        self.instances: dict[int, Instance] = {}
        self.instance_keys: dict[str, int] = {}
        self.revoked_keys: set[str] = set()
        self.gone_destroys = 0  # DELETEs of instances that do not exist (any more)
        self.log_snapshots: dict[str, LogSnapshot] = {}
        self.requests: list[RequestRecord] = []
        self.rentals: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._next_id = 24_000_000 + (seed * 7_919) % 1_000_000

    def record(self, request: RequestRecord) -> None:
        self.requests.append(request)
        if len(self.requests) > MAX_RECORDS:
            del self.requests[: len(self.requests) - MAX_RECORDS]

    # ---------- offers ----------

    def search(self, query: Any) -> list[dict[str, Any]]:
        try:
            return catalogue.search(self.offers.values(), query)
        except catalogue.SearchError as exc:
            raise ApiError(400, "invalid_args", str(exc)) from None

    # ---------- create ----------

    def create(self, offer_id: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Rent ``offer_id``; returns (HTTP status, body) or raises ``ApiError``."""
        request = _validate_create(body)
        offer = self.offers.get(offer_id)
        if offer is None or offer["rented"] or not offer["rentable"]:
            raise _no_such_ask(offer_id)
        if self.faults.take("offer_taken"):
            # Someone else rented it between the caller's search and this create.
            offer["rented"] = True
            offer["rentable"] = False
            self.rentals.append({"offer_id": offer_id, "by": "someone-else", "at": self.clock()})
            raise _no_such_ask(offer_id)
        if self.faults.take("create_fail"):
            raise ApiError(400, "invalid_args", "Your account lacks credit; see the billing page.")
        if request["disk"] > offer["disk_space"]:
            raise ApiError(400, "invalid_args",
                           f"Requested disk {request['disk']:g} GB exceeds the {offer['disk_space']:g} GB available.")
        unavailable = self.faults.take("unavailable") is not None
        if unavailable and request["cancel_unavail"]:
            raise ApiError(410, "no_such_ask", f"Instance type {offer_id} is no longer available.", ask_id=offer_id)
        instance = self._rent(offer, request)
        if unavailable or request["target_state"] == "stopped":
            # vast-api.md §5.4: created stopped; success reports whether it started running.
            instance.actual_status = "stopped"
            instance.intended_status = "stopped"
            instance.cur_state = "stopped"
            instance.status_msg = ("Required resources are currently unavailable, state change queued."
                                   if unavailable else "created stopped")
            return 200, {"success": False, "new_contract": instance.id, "instance_api_key": instance.api_key,
                         "ask_id": offer_id}
        instance.lifecycle = asyncio.get_running_loop().create_task(self._lifecycle(instance))
        return 200, {"success": True, "new_contract": instance.id, "instance_api_key": instance.api_key}

    def _rent(self, offer: dict[str, Any], request: dict[str, Any]) -> Instance:
        now = self.clock()
        priced = catalogue.priced(offer, request["disk"], "bid" if request["price"] is not None else "on-demand")
        offer["rented"] = True
        offer["rentable"] = False
        instance_id = self._next_id
        self._next_id += 1 + (instance_id * 31) % 7
        env = request["env"]
        host_ports: dict[str, int] = {}
        reserved: dict[int, socket.socket] = {}

        def reserve() -> int:
            sock = reserve_port()
            port: int = sock.getsockname()[1]
            reserved[port] = sock
            return port

        for key in env:
            match = PORT_ENV.match(key.strip())
            if match:
                host_ports[f"{match.group(2)}/{match.group(3) or 'tcp'}"] = reserve()
        if any(token in request["runtype"].split() for token in ("ssh_direc", "ssh_direct", "jupyter_direc")):
            host_ports.setdefault("22/tcp", reserve())
        instance = Instance(
            id=instance_id, offer=priced, api_key=secrets.token_hex(32), image=request["image"], env=env,
            onstart=request["onstart"], label=request["label"], disk=request["disk"], runtype=request["runtype"],
            args=request["args"], bid_price=request["price"], created_at=now, host_ports=host_ports,
            ssh_port=host_ports.get("22/tcp") or free_port(), time_scale=self.time_scale, billed_until=now,
            reserved=reserved,
        )
        if self.faults.take("stuck_loading"):
            instance.stuck_loading = True
        exited = self.faults.take("exited")
        if exited:
            instance.exit_msg = exited.params.get("msg") or DEFAULT_EXIT_ERROR
        loading_error = self.faults.take("loading_error")
        if loading_error:
            default = DEFAULT_PULL_ERROR.format(image=request["image"])
            instance.loading_error = loading_error.params.get("msg") or default
        if self.faults.take("status_null") is not None:
            # vast-api.md §6.5: null = provisioning, before "created"; it then carries on as usual.
            instance.status_null = True
            instance.actual_status = None
            instance.first_sign_at = now
        for lost in ("unknown", "offline"):
            if instance.lost_as is None and self.faults.take(f"status_{lost}"):
                instance.lost_as = lost
        if self.faults.take("ports_null"):
            instance.ports_hidden = True
        self.instances[instance_id] = instance
        self.instance_keys[instance.api_key] = instance_id
        self.rentals.append({"offer_id": offer["id"], "by": instance_id, "at": now})
        instance.daemon_log.append(f"{_stamp(now)} instance {instance_id} created on machine {offer['machine_id']}")
        return instance

    async def _sleep_sim(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.time_scale)

    async def _lifecycle(self, instance: Instance) -> None:
        try:
            await self._advance(instance)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a sandbox bug must show up somewhere a test can read it
            instance.daemon_log.append(f"sandbox: lifecycle failed: {type(exc).__name__}: {exc}")
            self.errors.append(f"instance {instance.id}: {type(exc).__name__}: {exc}")

    async def _advance(self, instance: Instance) -> None:
        await self._sleep_sim(CREATED_S)
        if instance.destroyed_at is not None or instance.intended_status != "running":
            return
        self._set_status(instance, "loading", f"Pulling image {instance.image}")
        instance.daemon_log.append(f"{_stamp(self.clock())} pulling {instance.image}")
        pull_error = self._pull_error(instance)
        if pull_error is not None:
            await self._pull_fails(instance, pull_error)
            return
        if instance.stuck_loading:
            return  # stays loading until destroyed
        if instance.loading_error is not None:
            # The pull fails part way: Vast keeps actual_status "loading" with the daemon's error.
            await self._sleep_sim(LOADING_S / 4)
            if instance.destroyed_at is not None:
                return
            self._set_status(instance, "loading", instance.loading_error)
            instance.daemon_log.append(f"{_stamp(self.clock())} {instance.loading_error}")
            instance.first_sign_at = self.clock()
            return
        await self._sleep_sim(LOADING_S)
        if instance.destroyed_at is not None or instance.intended_status != "running":
            return
        if instance.exit_msg is not None:
            self._set_status(instance, "exited", instance.exit_msg)
            instance.daemon_log.append(f"{_stamp(self.clock())} {instance.exit_msg}")
            instance.first_sign_at = self.clock()
            return
        if instance.lost_as is not None:
            # The host stops answering where it would have started the container (vast-api.md §6.5).
            self._set_status(instance, instance.lost_as, None)
            instance.daemon_log.append(f"{_stamp(self.clock())} host heartbeat lost: {instance.lost_as}")
            instance.first_sign_at = self.clock()
            return
        self._set_status(instance, "running", f"success, running {instance.image}/ssh")
        instance.daemon_log.append(f"{_stamp(self.clock())} container started")
        self._arm_watchdog(instance)
        self._start_engine(instance)

    @staticmethod
    def _pull_error(instance: Instance) -> str | None:
        """The registry's answer when the image's tag does not exist (faults that decide the pull win)."""
        # A fault that decides the pull wins (main's fail-fast faults keep theirs in `loading_error`).
        if instance.exit_msg is not None or instance.stuck_loading or getattr(instance, "loading_error", None):
            return None
        try:
            check = importlib.import_module("glmdeploy.sandbox.engines").pull_error
        except (ImportError, AttributeError):
            return None
        result: str | None = check(instance.image)
        return result

    async def _pull_fails(self, instance: Instance, error: str) -> None:
        """Vast shows the daemon's error in status_msg while the instance stays ``loading`` for good."""
        await self._sleep_sim(PULL_FAIL_S)
        if instance.destroyed_at is not None or instance.intended_status != "running":
            return
        instance.status_msg = error
        instance.daemon_log.append(f"{_stamp(self.clock())} {error}")
        if hasattr(instance, "first_sign_at"):
            # When the first sign of this failure showed (the fail-fast bookkeeping, where the world keeps it).
            instance.first_sign_at = self.clock()
    def _arm_watchdog(self, instance: Instance) -> None:
        """Run the onstart's TTL watchdog as the host would: it starts with the container, sleeps its
        TTL on the sandbox's clock, then destroys the instance (the real one does it with the
        instance's own key; a destroy by the container itself, whatever code path, is what counts)."""
        ttl = watchdog_ttl(instance.onstart)
        if ttl is None or instance.watchdog is not None:
            return
        instance.watchdog_ttl_s = ttl
        instance.daemon_log.append(f"{_stamp(self.clock())} onstart: TTL watchdog armed for {ttl:g}s")

        async def fire() -> None:
            await self._sleep_sim(ttl)
            if instance.destroyed_at is None:
                instance.daemon_log.append(f"{_stamp(self.clock())} TTL watchdog: destroying instance {instance.id}")
                await self.destroy(instance.id, by="watchdog")

        instance.watchdog = asyncio.get_running_loop().create_task(fire())

    def _set_status(self, instance: Instance, status: str, msg: str | None) -> None:
        now = self.clock()
        instance.bill(now)
        instance.actual_status = status
        instance.status_msg = msg
        if status == "running":
            instance.cur_state = "running"
            instance.running_since = now
            if instance.start_date is None:
                instance.start_date = now
        elif status in ("stopped", "exited"):
            instance.running_since = None

    def _engine_faults(self, instance: Instance) -> dict[str, str | None]:
        faults = self.faults.engine_faults()
        if "slow_download" in faults and not faults["slow_download"]:
            # No speed given: the download runs at the speed the rented offer advertises.
            faults["slow_download"] = str(instance.offer.get("inet_down") or "")
        return faults

    def _start_engine(self, instance: Instance) -> None:
        try:
            engines = importlib.import_module("glmdeploy.sandbox.engines")
            launch_spec_from = engines.launch_spec_from
            simulated_engine = engines.SimulatedEngine
            engine_timing = engines.EngineTiming
        except (ImportError, AttributeError):
            # The engines package is developed alongside; without it the instance runs but nothing listens.
            instance.daemon_log.append("sandbox: simulated engines are not installed; nothing listens")
            return
        spec = launch_spec_from(instance.image, instance.onstart, instance.container_env())
        if spec is None:
            return
        # Behind an auth proxy (onstart's nginx) the mapped container port is the proxy's.
        proxy = getattr(spec, "proxy", None)
        container_port = getattr(proxy, "listen_port", None) or _argv_port(spec.argv)
        host_port = instance.host_ports.get(f"{container_port}/tcp") if container_port else None
        if host_port is None:
            tcp = [port for key, port in instance.host_ports.items() if key.endswith("/tcp") and key != "22/tcp"]
            if not tcp:
                instance.daemon_log.append("sandbox: no -p port mapped; the engine is not reachable")
                tcp = [free_port()]
            host_port = tcp[0]
        engine = simulated_engine(
            spec, port=host_port, log=instance.container_log.append,
            timing=engine_timing(time_scale=self.time_scale, seed=self.seed + instance.id, ttft_s=self.ttft_s,
                                 tpot_s=self.tpot_s),
            faults=self._engine_faults(instance),
            sock=instance.reserved.pop(host_port, None),
            gpu_name=instance.offer.get("gpu_name"),
            gpu_ram_mib=instance.offer.get("gpu_ram"),
        )
        instance.engine = engine
        instance.last_engine = engine
        instance.engine_task = asyncio.get_running_loop().create_task(engine.run())

    async def _stop_engine(self, instance: Instance) -> None:
        if instance.destroyed_at is not None:
            for sock in instance.reserved.values():
                sock.close()
            instance.reserved.clear()
        engine, task = instance.engine, instance.engine_task
        if instance.first_sign_at is None and engine is not None:
            instance.first_sign_at = getattr(engine, "first_sign_at", None)  # the ledger keeps it after the stop
        instance.engine = None
        instance.engine_task = None
        if engine is not None:
            await engine.stop()
        if task is not None:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---------- read ----------

    def get(self, instance_id: int) -> Instance | None:
        instance = self.instances.get(instance_id)
        if instance is None or instance.destroyed_at is not None:
            return None
        return instance

    def live(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.destroyed_at is None]

    def list_rows(self, select_filters: Any, order_by: Any) -> list[dict[str, Any]]:
        """Rows for GET /api/v1/instances/ after filtering and ordering (§6.1)."""
        if not isinstance(select_filters, dict):
            raise ApiError(400, "invalid_request", "Error in query parameters: select_filters must be an object")
        now = self.clock()
        rows = [i.row(now) for i in self.live()]
        for column, condition in select_filters.items():
            if column not in LIST_FILTER_COLUMNS:
                raise ApiError(400, "invalid_request",
                               f"Error in query parameters: {column} is not a valid search key")
            if not isinstance(condition, dict):
                raise ApiError(400, "invalid_request",
                               f"Error in query parameters: filter for {column} must be an object")
            for op, value in condition.items():
                if op not in catalogue.SEARCH_OPS:
                    raise ApiError(400, "invalid_request", f"Error in query parameters: unknown operator {op}")
                try:
                    rows = [r for r in rows if catalogue.matches(r, column, op, value)]
                except catalogue.SearchError as exc:
                    raise ApiError(400, "invalid_request", f"Error in query parameters: {exc}") from None
        if not isinstance(order_by, list):
            raise ApiError(400, "invalid_request", "Error in query parameters: order_by must be a list")
        keys = [o for o in order_by if isinstance(o, dict)]
        if len(keys) != len(order_by):
            raise ApiError(400, "invalid_request", "Error in query parameters: order_by entries are {col, dir}")
        if not any(o.get("col") == "id" for o in keys):
            keys.append({"col": "id", "dir": "asc"})
        for entry in reversed(keys):
            col = entry.get("col")
            direction = str(entry.get("dir", "asc")).lower()
            if col not in LIST_FILTER_COLUMNS or direction not in ("asc", "desc"):
                raise ApiError(400, "invalid_request", f"Error in query parameters: cannot order by {col}")
            present = [r for r in rows if r.get(col) is not None]
            missing = [r for r in rows if r.get(col) is None]
            present.sort(key=lambda r, c=col: r[c], reverse=direction == "desc")  # type: ignore[misc]
            rows = present + missing
        return rows

    # ---------- change ----------

    async def destroy(self, instance_id: int, *, by: str = "api") -> None:
        """``by``: "api" (a DELETE) or "watchdog" (the instance's own TTL watchdog), kept in the ledger."""
        instance = self.get(instance_id)
        if instance is None:
            # Vast documents two codes for this 404 (vast-api.md §6): alternate, so clients are
            # exercised with both, starting with the common one.
            self.gone_destroys += 1
            if self.gone_destroys % 2 == 0:
                raise ApiError(404, "not_found", f"Instance {instance_id} not found.")
            raise ApiError(404, "no_such_instance", f"Instance {instance_id} not found.")
        now = self.clock()
        instance.bill(now)
        instance.destroyed_at = now
        instance.destroyed_by = by
        watchdog = instance.watchdog
        if watchdog is not None and watchdog is not asyncio.current_task() and not watchdog.done():
            watchdog.cancel()
        instance.cur_state = "unloaded"
        instance.intended_status = "stopped"
        self.revoked_keys.add(instance.api_key)
        self.instance_keys.pop(instance.api_key, None)
        if instance.lifecycle is not None and not instance.lifecycle.done():
            instance.lifecycle.cancel()
        await self._stop_engine(instance)
        offer = self.offers.get(instance.offer["id"])
        if offer is not None:
            offer["rented"] = False
            offer["rentable"] = True

    def set_label(self, instance_id: int, label: Any) -> dict[str, Any]:
        instance = self.get(instance_id)
        if instance is None:
            raise ApiError(404, "no_such_instance", f"Instance {instance_id} not found.")
        if label is not None and not isinstance(label, str):
            raise ApiError(400, "invalid_args", "label must be a string")
        if label is not None and len(label) > 1024:
            raise ApiError(400, "label_too_long", "Label must be at most 1024 characters.")
        instance.label = label
        return {"success": True, "msg": f"label for {instance_id} set to '{label}'"}

    async def set_state(self, instance_id: int, state: Any) -> dict[str, Any]:
        instance = self.get(instance_id)
        if instance is None:
            raise ApiError(404, "no_such_instance", f"Instance {instance_id} not found.")
        if state == "stopped":
            instance.intended_status = "stopped"
            # Stopping the container ends its processes, the onstart's watchdog with them.
            for task in (instance.lifecycle, instance.watchdog):
                if task is not None and not task.done():
                    task.cancel()
            instance.watchdog = None
            await self._stop_engine(instance)
            self._set_status(instance, "stopped", "stopped by user")
            instance.cur_state = "stopped"
            return {"success": True}
        if state == "running":
            if instance.actual_status in ("running", "loading", "created"):
                return {"success": True}
            instance.intended_status = "running"
            instance.cur_state = "running"
            self._set_status(instance, "created", None)
            instance.lifecycle = asyncio.get_running_loop().create_task(self._lifecycle(instance))
            return {"success": True}
        raise ApiError(400, "invalid_args", "state must be 'running' or 'stopped'")

    # ---------- logs ----------

    def request_logs(self, instance_id: int, body: dict[str, Any]) -> str:
        """Snapshot the logs the way the host would upload them; returns the snapshot's file name."""
        instance = self.get(instance_id)
        if instance is None:
            raise ApiError(404, "invalid_id", "Invalid instance id.")
        tail_raw = body.get("tail", LOG_TAIL_DEFAULT)
        try:
            tail = int(str(tail_raw))
        except ValueError:
            raise ApiError(400, "invalid_args", "tail must be a number of lines") from None
        daemon = str(body.get("daemon_logs", "")).lower() == "true"
        lines = list(instance.daemon_log if daemon else instance.container_log)
        pattern = body.get("filter")
        if pattern:
            try:
                regex = re.compile(str(pattern))
                lines = [line for line in lines if regex.search(line)]
            except re.error:
                lines = [line for line in lines if str(pattern) in line]
        instance.log_requests += 1
        empty_budget = self.faults.count("empty_logs")
        if empty_budget and instance.log_requests <= empty_budget:
            lines = []
        if tail >= 0:
            lines = lines[-tail:] if tail else []
        name = secrets.token_hex(16)
        while len(self.log_snapshots) >= MAX_LOG_SNAPSHOTS:
            del self.log_snapshots[next(iter(self.log_snapshots))]
        self.log_snapshots[name] = LogSnapshot(
            text="".join(line + "\n" for line in lines), pending=self.faults.count("logs_pending") or 0)
        return name

    # ---------- accounting ----------

    def ledger(self) -> dict[str, Any]:
        now = self.clock()
        rows = []
        for instance in self.instances.values():
            rows.append({
                "id": instance.id,
                "label": instance.label,
                "status": "destroyed" if instance.destroyed_at is not None else instance.actual_status,
                "dph_total": instance.dph_total,
                "cost": round(instance.cost_at(now), 6),
                "created_at": instance.created_at,
                "destroyed_at": instance.destroyed_at,
                "destroyed_by": instance.destroyed_by,
                "ttl_s": instance.watchdog_ttl_s,
                "machine_id": instance.offer["machine_id"],
                "host_id": instance.offer.get("host_id"),
                "offer_id": instance.offer["id"],
                "engine": getattr(instance.engine, "state", None),
                "running_at": instance.start_date,
                "engine_ready_at": getattr(instance.engine, "ready_at", None),
                # When a client could first see an injected fault (a status change, a log line, a port
                # that closed): the fail-fast tests count the polls a client makes after it.
                "first_sign_at": instance.first_sign_at or getattr(instance.engine, "first_sign_at", None)
                or (instance.running_since if instance.ports_hidden else None),
                # What reached the endpoint: every HTTP request (did it carry the endpoint key?) and the TLS
                # handshakes begun. An interception refused at the handshake leaves requests empty.
                "endpoint_requests": [
                    {"method": m, "path": p, "carried_key": k}
                    for m, p, k in getattr(getattr(instance.last_engine, "app", None), "request_log", [])
                ],
                "tls_handshakes": getattr(instance.last_engine, "handshakes", 0),
                "tls_fingerprint": getattr(getattr(instance.last_engine, "certificate", None), "fingerprint", None),
            })
        return {
            "instances": rows,
            "running": sum(1 for i in self.live() if i.actual_status == "running"),
            "live": len(self.live()),
            "total_cost": round(sum(r["cost"] for r in rows), 6),
            "rentals": list(self.rentals),
            "errors": list(self.errors),
        }

    async def shutdown(self) -> None:
        """Stop every engine and lifecycle task (instances stay recorded)."""
        for instance in self.instances.values():
            for task in (instance.lifecycle, instance.watchdog):
                if task is not None and not task.done():
                    task.cancel()
            await self._stop_engine(instance)


def watchdog_ttl(onstart: str | None) -> float | None:
    """The TTL of the watchdog an onstart script starts in the background, if it has one."""
    if not onstart or not WATCHDOG_START.search(onstart):
        return None
    match = WATCHDOG_SLEEP.search(onstart)
    return float(match.group(1)) if match else None


def _stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def _argv_port(argv: Any) -> int | None:
    items = list(argv)
    for index, item in enumerate(items):
        if item == "--port" and index + 1 < len(items):
            with contextlib.suppress(ValueError):
                return int(items[index + 1])
        if isinstance(item, str) and item.startswith("--port="):
            with contextlib.suppress(ValueError):
                return int(item.split("=", 1)[1])
    return None


def _no_such_ask(offer_id: int) -> ApiError:
    return ApiError(404, "no_such_ask", f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available.",
                    ask_id=offer_id)


def _validate_create(body: Any) -> dict[str, Any]:
    """Check a create body like the server (vast-api.md §5.1-5.3); 400 ``invalid_args`` otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_args", "Request body must be a JSON object.")

    def bad(msg: str) -> ApiError:
        return ApiError(400, "invalid_args", msg)

    image = body.get("image")
    if body.get("template_hash_id") and not image:
        raise bad("templates are not supported by the sandbox: send 'image' and the other fields.")
    if not isinstance(image, str) or not image.strip():
        raise bad("'image' is required.")
    if not isinstance(image, str) or len(image) > 1024:
        raise bad("'image' must be a string of at most 1024 characters.")
    env_raw = body.get("env", {})
    if env_raw is None or isinstance(env_raw, str):
        # vast-api.md §5.2/§11.8: a Docker-flag string in a create body silently does nothing.
        env: dict[str, str] = {}
    elif isinstance(env_raw, dict):
        env = {}
        for key, value in env_raw.items():
            if not isinstance(value, str | int | float | bool):
                raise bad(f"env value for {key!r} must be a string.")
            env[str(key)] = value if isinstance(value, str) else str(value)
        if sum(len(k) + len(v) for k, v in env.items()) > 32768:
            raise bad("env is too long (max 32768 characters in total).")
    else:
        raise bad("'env' must be an object of variable names to values.")
    disk_raw = body.get("disk", 8)
    if isinstance(disk_raw, bool) or not isinstance(disk_raw, int | float | str):
        raise bad("'disk' must be a number of GB.")
    try:
        disk = float(disk_raw)
    except ValueError:
        raise bad("'disk' must be a number of GB.") from None
    if not disk > 0:
        raise bad("'disk' must be positive.")
    disk = max(disk, 8.0)
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > 256):
        raise bad("'label' must be a string of at most 256 characters.")
    onstart = body.get("onstart")
    if onstart is not None and not isinstance(onstart, str):
        raise bad("'onstart' must be a string.")
    args = body.get("args")
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise bad("'args' must be a list of strings.")
    args_str = body.get("args_str")
    if args_str is not None and not isinstance(args_str, str):
        raise bad("'args_str' must be a string.")
    total = len(onstart or "") + len(args_str or "") + sum(len(a) for a in args or [])
    if total > ONSTART_LIMIT:
        raise bad(f"onstart, args and args_str together exceed {ONSTART_LIMIT} characters.")
    runtype = body.get("runtype")
    if runtype is not None and body.get("use_ssh"):
        raise bad("runtype and use_ssh cannot both be set")
    if runtype is None:
        runtype = "args" if args is not None or args_str else "ssh"
    if not isinstance(runtype, str) or not runtype.split() or any(t not in RUNTYPE_TOKENS for t in runtype.split()):
        raise bad(f"unknown runtype {runtype!r}")
    price = body.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float) or not 0.001 <= price <= 128:
            raise ApiError(400, "invalid_price", "Bid price must be between 0.001 and 128 $/hour.")
        price = float(price)
    target_state = body.get("target_state", "running")
    if target_state not in ("running", "stopped"):
        raise bad("'target_state' must be 'running' or 'stopped'.")
    cancel_unavail = body.get("cancel_unavail")
    if cancel_unavail is None:
        # Server default (vast-api.md §5.1): true for on-demand creates meant to run.
        cancel_unavail = price is None and target_state == "running"
    if not isinstance(cancel_unavail, bool):
        raise bad("'cancel_unavail' must be a boolean.")
    return {
        "image": image, "env": env, "disk": disk, "label": label, "onstart": onstart,
        "args": args if args is not None else (args_str.split() if args_str else None),
        "runtype": runtype, "price": price, "cancel_unavail": cancel_unavail, "target_state": target_state,
    }
