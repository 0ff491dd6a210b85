"""Startup log sequences of the three engines, line for line as engines.md §2.3, §3.3, §4.3 and §8 give them.

A sequence is a list of ``Step``s: wait some simulated seconds, then print lines and/or reach a
milestone (the port opens, the engine is ready, it crashed, it stalls). Lines are rendered when
they are printed, with the simulated clock's timestamp in each engine's own prefix format.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from glmdeploy.sandbox.engines.config import GIB, EngineConfig

DOWNLOAD_BYTES_PER_S = 500e6
LOAD_BYTES_PER_S = 2e9


class Milestone(Enum):
    LISTEN = "listen"  # the HTTP port accepts connections from here on
    READY = "ready"  # the engine serves requests and reports healthy
    CRASH = "crash"  # the process tree exited
    STALL = "stall"  # nothing more happens until the engine is stopped


Render = Callable[[datetime], list[str]]


@dataclass(frozen=True)
class Step:
    after_s: float  # simulated seconds to wait before this step
    render: Render | None = None
    milestone: Milestone | None = None


# The nvidia/cuda base images print this banner before anything else (engines.md §2.2).
def cuda_banner(cuda: str) -> list[str]:
    return [
        "",
        "==========",
        "== CUDA ==",
        "==========",
        "",
        f"CUDA Version {cuda}",
        "",
        "Container image Copyright (c) 2016-2023, NVIDIA CORPORATION & AFFILIATES. All rights reserved.",
        "",
        "This container image and its contents are governed by the NVIDIA Deep Learning Container License.",
        "By pulling and using the container, you accept the terms and conditions of this license:",
        "https://developer.nvidia.com/ngc/nvidia-deep-learning-container-license",
        "",
        "A copy of this license is made available in this container at /NGC-DL-CONTAINER-LICENSE for your convenience.",
        "",
    ]


def _oom_text(cfg: EngineConfig, rng: random.Random) -> str:
    tried = rng.choice((1.0, 2.0, 3.5, 4.0))
    free_mib = rng.randint(180, 900)
    return (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {tried:.2f} GiB. "
        f"GPU 0 has a total capacity of {cfg.gpu_total_gib:.2f} GiB of which {free_mib:.2f} MiB is free."
    )


def _bar(done: int, total: int, elapsed: float) -> str:
    pct = 100 * done // total
    filled = pct // 10
    rate = done / elapsed if elapsed > 0 else 0.0
    return f"{pct:3d}% Completed | {done}/{total} [{'█' * filled}{' ' * (10 - filled)}] {rate:.2f}it/s"


def _shard_line(done: int, total: int, elapsed: float) -> Callable[[datetime], str]:
    text = f"Loading safetensors checkpoint shards: {_bar(done, total, elapsed)}"
    return lambda _ts: text


class _Plan:
    """Builder for a step list."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._pending = 0.0

    def wait(self, seconds: float) -> None:
        self._pending += seconds

    def lines(self, render: Render) -> None:
        self.steps.append(Step(self._pending, render))
        self._pending = 0.0

    def line(self, render: Callable[[datetime], str]) -> None:
        self.lines(lambda ts: [render(ts)])

    def milestone(self, milestone: Milestone) -> None:
        self.steps.append(Step(self._pending, None, milestone))
        self._pending = 0.0


def _shard_points(total: int) -> list[int]:
    """At most ~8 progress lines however many shards (tqdm refreshes, docker keeps some)."""
    step = max(1, total // 8)
    points = list(range(step, total, step))
    return [0, *points, total]


def _download_s(cfg: EngineConfig, faults: Mapping[str, str | None]) -> float:
    """Simulated seconds the weights take to download; ``slow_download=MBPS`` sets the speed in Mbit/s."""
    speed = DOWNLOAD_BYTES_PER_S
    if "slow_download" in faults:
        try:
            mbps = float(faults["slow_download"] or 0)
        except ValueError:
            mbps = 0.0
        if mbps > 0:
            speed = mbps * 1e6 / 8
    return cfg.weights_gb * 1e9 / speed


def _load_s(cfg: EngineConfig) -> float:
    return cfg.weights_gib_per_rank * GIB / LOAD_BYTES_PER_S


def _cuda_version(cfg: EngineConfig) -> str:
    return "13.0.0" if cfg.kind == "lightllm" else "12.9.1"


# ---------------------------------------------------------------- SGLang (engines.md §2.3, §2.4)


def sglang_plan(cfg: EngineConfig, faults: Mapping[str, str | None], rng: random.Random, pid: int) -> list[Step]:
    p = _Plan()

    def main(msg: str) -> Callable[[datetime], str]:
        return lambda ts: f"[{ts:%Y-%m-%d %H:%M:%S}] {msg}"

    def tp0(msg: str) -> Callable[[datetime], str]:
        return lambda ts: f"[{ts:%Y-%m-%d %H:%M:%S} TP0] {msg}"

    def uv(msg: str) -> Callable[[datetime], str]:
        return lambda ts: f"[{ts:%Y-%m-%d %H:%M:%S}] INFO:     {msg}"

    total = cfg.gpu_total_gib
    avail = total - 0.6
    p.lines(lambda _ts: cuda_banner(_cuda_version(cfg)))
    p.wait(4)
    if cfg.speculative:
        p.line(main("Max running requests is reset to 48 for speculative decoding"))
    p.wait(3)
    p.line(tp0("Init torch distributed begin."))
    p.wait(2.5)
    p.line(tp0("Init torch distributed ends. elapsed=2.48 s, mem usage=0.41 GB"))
    p.line(tp0(f"Load weight begin. avail mem={avail:.2f} GB"))
    p.line(tp0("Using model weights format ['*.safetensors']"))
    # snapshot_download runs with tqdm disabled: silence for the whole download (engines.md §2.3 step 1).
    p.wait(_download_s(cfg, faults))
    load = _load_s(cfg)
    points = _shard_points(cfg.num_shards)
    for prev, done in zip([0, *points], points, strict=False):
        p.wait(load * (done - prev) / cfg.num_shards)
        elapsed = max(load * done / cfg.num_shards, 0.01)
        p.line(_shard_line(done, cfg.num_shards, elapsed))
    after_weights = avail - cfg.weights_gib_per_rank
    p.line(
        tp0(
            f"Load weight end. elapsed={load:.2f} s, type={cfg.architecture_name}, dtype={cfg.dtype_name}, "
            f"avail mem={after_weights:.2f} GB, mem usage={cfg.weights_gib_per_rank:.2f} GB."
        )
    )
    p.wait(1.5)
    if "engine_oom" in faults:
        p.lines(lambda ts: _sglang_crash(cfg, rng, ts, pid))
        p.milestone(Milestone.CRASH)
        return p.steps
    kv_gb = cfg.kv_tokens * cfg.kv_bytes_per_token / GIB
    p.line(tp0(f"KV Cache is allocated. #tokens: {cfg.kv_tokens}, KV size: {kv_gb:.2f} GB"))
    after_kv = after_weights - kv_gb
    p.line(tp0(f"Memory pool end. avail mem={after_kv:.2f} GB"))
    graph_mem = 0.0
    if cfg.cuda_graphs:
        p.line(tp0(f"Capture cuda graph begin. This can take up to several minutes. avail mem={after_kv:.2f} GB"))
        p.wait(25)
        graph_mem = 0.84
        p.line(
            tp0(
                f"Capture cuda graph end. Time elapsed: 25.13 s. mem usage={graph_mem:.2f} GB. "
                f"avail mem={after_kv - graph_mem:.2f} GB."
            )
        )
    p.line(
        tp0(
            f"max_total_num_tokens={cfg.kv_tokens}, chunked_prefill_size={cfg.chunked_prefill_size}, "
            f"max_prefill_tokens=16384, max_running_requests={cfg.max_running_requests}, "
            f"context_len={cfg.context_len}, available_gpu_mem={after_kv - graph_mem:.2f} GB"
        )
    )
    p.wait(1.5)
    p.line(uv(f"Started server process [{pid}]"))
    p.line(uv("Waiting for application startup."))
    p.line(uv("Application startup complete."))
    # The HTTP port opens here, but /health stays 503 until the warmup request went through (§2.5).
    p.milestone(Milestone.LISTEN)
    p.line(uv(f"Uvicorn running on http://{cfg.host}:{cfg.port} (Press CTRL+C to quit)"))
    if "never_ready" in faults or "models_before_health" in faults:
        p.wait(1)
        p.line(uv('127.0.0.1:41542 - "GET /model_info HTTP/1.1" 200 OK'))
        p.milestone(Milestone.STALL)  # the warmup POST /generate never returns
        return p.steps
    p.wait(2)
    p.line(uv('127.0.0.1:41542 - "GET /model_info HTTP/1.1" 200 OK'))
    p.wait(5)  # the first real request: kernels warm up
    prefill = "Prefill batch, #new-seq: 1, #new-token: 7, #cached-token: 0, token usage: 0.00, "
    p.line(tp0(prefill + "#running-req: 0, #queue-req: 0, "))
    p.wait(1)
    p.line(uv('127.0.0.1:41550 - "POST /generate HTTP/1.1" 200 OK'))
    p.line(main("The server is fired up and ready to roll!"))
    p.milestone(Milestone.READY)
    return p.steps


def _sglang_crash(cfg: EngineConfig, rng: random.Random, ts: datetime, pid: int) -> list[str]:
    stamp = f"[{ts:%Y-%m-%d %H:%M:%S}"
    return [
        f"{stamp} TP0] Scheduler hit an exception: Traceback (most recent call last):",
        '  File "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py", line 3188, in run_scheduler_process',
        "    scheduler = Scheduler(",
        '  File "/sgl-workspace/sglang/python/sglang/srt/model_executor/model_runner.py", line 2150, '
        "in init_device_graphs",
        "    self.graph_runner = graph_runners[self.device](self)",
        _oom_text(cfg, rng),
        "",
        f"{stamp}] Received sigquit from a child process. It usually means the child failed.",
    ]


# ---------------------------------------------------------------- vLLM (engines.md §3.3, §3.4)


def vllm_plan(cfg: EngineConfig, faults: Mapping[str, str | None], rng: random.Random, pid: int) -> list[Step]:
    p = _Plan()
    api_pid = pid
    core_pid = api_pid + rng.randint(60, 200)
    v15 = cfg.version < (0, 16)
    # vLLM 0.24.x: the recorded run (real-vllm-0.24.0/startup-default.log). Where it disagrees with
    # engines.md (written from the 0.15 and 0.33 sources) the recording wins for this version:
    # "(EngineCore pid=N)" without _DP0, the banner, file:line references, two KV lines (not 0.33's
    # one), "took X s (compilation: Y s)", and the route list.
    rec24 = (0, 24) <= cfg.version < (0, 33)
    W = _VLLM_024_WHERE if rec24 else _VLLM_WHERE_V15 if v15 else _VLLM_WHERE

    def api(msg: str, where: str, level: str = "INFO") -> Callable[[datetime], str]:
        return lambda ts: f"(APIServer pid={api_pid}) {level} {ts:%m-%d %H:%M:%S} [{where}] {msg}"

    def core(msg: str, where: str, level: str = "INFO") -> Callable[[datetime], str]:
        proc = "EngineCore" if rec24 else "EngineCore_DP0"
        return lambda ts: f"({proc} pid={core_pid}) {level} {ts:%m-%d %H:%M:%S} [{where}] {msg}"

    def uv(msg: str) -> Callable[[datetime], str]:
        return lambda _ts: f"(APIServer pid={api_pid}) INFO:     {msg}"

    if "rocm" not in cfg.spec.image:
        p.lines(lambda _ts: cuda_banner(_cuda_version(cfg)))
    p.wait(6)
    if rec24:
        # 0.24's banner: the logo with version and model, six lines from api_utils.py:339 (recorded).
        for text in _vllm_banner(cfg):
            p.line(api(text, W["banner"]))
    else:
        p.line(api(f"vLLM API server version {cfg.version_text}", W["banner"]))
    p.line(api(f"non-default args: {_vllm_non_default(cfg)}", W["args"]))
    p.wait(4)
    if rec24:
        p.line(api(f"Resolved architecture: {cfg.architecture_name}", "model.py:598"))
    p.line(api(f"Using max model len {cfg.context_len}", W["max_len"]))
    p.wait(3)
    if rec24:
        # Recorded (startup-default.log): the engine core says so before it downloads and loads the weights.
        p.line(core(f"Starting to load model {cfg.model_path}...", "gpu_model_runner.py:5160"))
    # tqdm is disabled for the download; one line once it is done (engines.md §3.3 step 3).
    download = _download_s(cfg, faults)
    p.wait(download)
    p.line(core(f"Time spent downloading weights for {cfg.model_path}: {download:.6f} seconds", "weight_utils.py:514"))
    load = _load_s(cfg)
    points = _shard_points(cfg.num_shards)
    for prev, done in zip([0, *points], points, strict=False):
        p.wait(load * (done - prev) / cfg.num_shards)
        elapsed = max(load * done / cfg.num_shards, 0.01)
        p.line(_shard_line(done, cfg.num_shards, elapsed))
    p.line(core(f"Loading weights took {load:.2f} seconds", "default_loader.py:292"))
    gib = f"{cfg.weights_gib_per_rank:.2f}" if rec24 else f"{cfg.weights_gib_per_rank:.4f}"
    p.line(core(f"Model loading took {gib} GiB memory and {load + 1.7:.6f} seconds", W["model_loading"]))
    p.wait(8)
    if "engine_oom" in faults:
        p.lines(lambda ts: _vllm_crash(cfg, rng, ts, api_pid, core_pid))
        p.milestone(Milestone.CRASH)
        return p.steps
    p.line(core(f"Available KV cache memory: {cfg.kv_pool_gib:.2f} GiB", W["kv_memory"]))
    tokens = f"{cfg.kv_tokens:,}"
    ctx = f"{cfg.context_len:,}"
    if v15 or rec24:
        # Two lines in 0.15 and in 0.24 (recorded: kv-mla-bf16-eager.txt); one in 0.33 (engines.md §3.3).
        p.line(core(f"GPU KV cache size: {tokens} tokens", W["kv_size"]))
        p.line(
            core(
                f"Maximum concurrency for {ctx} tokens per request: {cfg.max_concurrency:.2f}x",
                W["kv_concurrency"],
            )
        )
    else:
        p.line(
            core(
                f"GPU KV cache size: {tokens} tokens, Maximum concurrency for {ctx} tokens per request: "
                f"{cfg.max_concurrency:.2f}x",
                "kv_cache_utils.py:1136",
            )
        )
    graph_s = 0.0
    if cfg.cuda_graphs:
        if "never_ready" in faults:
            p.wait(5)
            p.line(lambda _ts: "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE):  37%|███▋      | 25/67")
            p.milestone(Milestone.STALL)
            return p.steps
        graph_s = 22.0
        p.wait(graph_s)
        p.line(lambda _ts: "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|██████████| 67/67")
        p.line(core(f"Graph capturing finished in {graph_s:.0f} secs, took 0.62 GiB", W["graphs"]))
    elif "never_ready" in faults:
        p.milestone(Milestone.STALL)
        return p.steps
    p.wait(2)
    init_s = graph_s + 12.4
    took = f"{init_s:.2f} s (compilation: {init_s / 2:.2f} s)" if rec24 else f"{init_s:.2f} seconds"
    p.line(core(f"init engine (profile, create kv cache, warmup model) took {took}", W["init"]))
    p.wait(2)
    url = f"http://{cfg.host}:{cfg.port}"
    if v15:
        p.line(api(f"Starting vLLM API server 0 on {url}", W["starting"]))
    else:
        p.line(api(f"Starting vLLM server on {url}", W["starting"]))
    p.line(api("Available routes are:", W["routes"]))
    for route, methods in _VLLM_024_ROUTES if rec24 else _VLLM_ROUTES:
        p.line(api(f"Route: {route}, Methods: {methods}", W["route"]))
    p.wait(0.5)
    p.line(uv(f"Started server process [{api_pid}]"))
    p.line(uv("Waiting for application startup."))
    if "models_before_health" in faults:
        p.milestone(Milestone.LISTEN)
        p.milestone(Milestone.STALL)
        return p.steps
    # vLLM passes uvicorn a pre-bound socket: no "Uvicorn running on" line (engines.md §3.3 step 11).
    p.line(uv("Application startup complete."))
    p.milestone(Milestone.LISTEN)
    p.milestone(Milestone.READY)
    return p.steps


_VLLM_ROUTES = (
    ("/openapi.json", "GET, HEAD"),
    ("/docs", "GET, HEAD"),
    ("/health", "GET"),
    ("/load", "GET"),
    ("/ping", "GET"),
    ("/ping", "POST"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
    ("/version", "GET"),
    ("/v1/models", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/metrics", "GET"),
)


# Where each line comes from ([file.py:line] of the log prefix): engines.md §3.3 for 0.15 and 0.33, the
# recording for 0.24.
_VLLM_WHERE_V15 = {
    "banner": "api_server.py:1896", "args": "utils.py:253", "max_len": "model.py:1561",
    "model_loading": "gpu_model_runner.py:4119", "kv_memory": "gpu_worker.py:357",
    "kv_size": "kv_cache_utils.py:1307", "kv_concurrency": "kv_cache_utils.py:1313",
    "graphs": "gpu_model_runner.py:5088", "init": "core.py:273", "starting": "api_server.py:947",
    "routes": "launcher.py:188", "route": "launcher.py:196",
}
_VLLM_WHERE = {**_VLLM_WHERE_V15, "kv_size": "kv_cache_utils.py:1136", "starting": "entry.py:139"}
_VLLM_024_WHERE = {
    "banner": "api_utils.py:339", "args": "api_utils.py:273", "max_len": "model.py:1725",
    "model_loading": "gpu_model_runner.py:5255", "kv_memory": "gpu_worker.py:508",
    "kv_size": "kv_cache_utils.py:2146", "kv_concurrency": "kv_cache_utils.py:2147",
    "graphs": "gpu_model_runner.py:6656", "init": "core.py:337", "starting": "api_server.py:581",
    "routes": "launcher.py:37", "route": "launcher.py:46",
}
# The routes vLLM 0.24.0 listed (startup-default.log), in its order.
_VLLM_024_ROUTES = tuple(
    (route, "HEAD, GET" if route in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc") else methods)
    for route, methods in (
        ("/openapi.json", ""), ("/docs", ""), ("/docs/oauth2-redirect", ""), ("/redoc", ""), ("/load", "GET"),
        ("/version", "GET"), ("/health", "GET"), ("/metrics", "GET"), ("/tokenize", "POST"),
        ("/detokenize", "POST"), ("/v1/models", "GET"), ("/ping", "GET"), ("/ping", "POST"),
        ("/invocations", "POST"), ("/v1/chat/completions", "POST"), ("/v1/chat/completions/batch", "POST"),
        ("/v1/responses", "POST"), ("/v1/responses/{response_id}", "GET"),
        ("/v1/responses/{response_id}/cancel", "POST"), ("/v1/completions", "POST"), ("/v1/messages", "POST"),
        ("/v1/messages/count_tokens", "POST"), ("/generative_scoring", "POST"), ("/inference/v1/generate", "POST"),
        ("/scale_elastic_ep", "POST"), ("/is_scaling_elastic_ep", "POST"), ("/v1/chat/completions/render", "POST"),
        ("/v1/completions/render", "POST"), ("/v1/chat/completions/derender", "POST"),
        ("/v1/completions/derender", "POST"),
    )
)


def _vllm_banner(cfg: EngineConfig) -> list[str]:
    return [
        "",
        "       █     █     █▄   ▄█",
        f" ▄▄ ▄█ █     █     █ ▀▄▀ █  version {cfg.version_text}",
        f"  █▄█▀ █     █     █     █  model   {cfg.model_path}",
        "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀",
        "",
    ]


def _vllm_non_default(cfg: EngineConfig) -> str:
    args: dict[str, object] = {"model_tag": cfg.model_path, "model": cfg.model_path}
    if cfg.host != "0.0.0.0" or "--host" in cfg.spec.argv:
        args["host"] = cfg.host
    if cfg.tp != 1:
        args["tensor_parallel_size"] = cfg.tp
    if cfg.spec.context_length:
        args["max_model_len"] = cfg.spec.context_length
    if cfg.spec.served_model != cfg.model_path:
        args["served_model_name"] = [cfg.spec.served_model]
    if cfg.reasoning_parser:
        args["reasoning_parser"] = cfg.reasoning_parser
    if cfg.tool_call_parser:
        args["tool_call_parser"] = cfg.tool_call_parser
    if cfg.auto_tool_choice:
        args["enable_auto_tool_choice"] = True
    return repr(args)


def _vllm_crash(cfg: EngineConfig, rng: random.Random, ts: datetime, api_pid: int, core_pid: int) -> list[str]:
    core = f"(EngineCore_DP0 pid={core_pid})"
    stamp = f"{ts:%m-%d %H:%M:%S}"
    return [
        f"{core} ERROR {stamp} [core.py:946] EngineCore failed to start.",
        f"{core} ERROR {stamp} [core.py:946] Traceback (most recent call last):",
        f'{core} ERROR {stamp} [core.py:946]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", '
        "line 937, in run_engine_core",
        f"{core} ERROR {stamp} [core.py:946]     engine_core = EngineCoreProc(*args, **kwargs)",
        f'{core} ERROR {stamp} [core.py:946]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/worker/'
        'gpu_worker.py", line 357, in determine_available_memory',
        f"{core} ERROR {stamp} [core.py:946]     self.model_runner.profile_run()",
        f"{core} ERROR {stamp} [core.py:946] {_oom_text(cfg, rng)}",
        f"(APIServer pid={api_pid}) Traceback (most recent call last):",
        f'(APIServer pid={api_pid})   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/utils.py", '
        "line 993, in wait_for_engine_startup",
        f"(APIServer pid={api_pid}) RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {'EngineCore_DP0': 1}",
    ]


# ---------------------------------------------------------------- LightLLM (engines.md §4.3, §4.4)


def lightllm_plan(cfg: EngineConfig, faults: Mapping[str, str | None], rng: random.Random, pid: int) -> list[Step]:
    p = _Plan()

    def info(msg: str, where: str, level: str = "INFO") -> Callable[[datetime], str]:
        return lambda ts: f"{level} {ts:%m-%d %H:%M:%S} [{where}] {msg}"

    p.lines(lambda _ts: cuda_banner(_cuda_version(cfg)))
    if cfg.spec.download:
        # The onstart downloads the weights first (LightLLM reads a local directory only, §4.1).
        files = cfg.num_shards + 8
        download = _download_s(cfg, faults)
        p.wait(download)
        local_dir = _hf_local_dir(cfg.spec.download)
        p.line(lambda _ts: f"Fetching {files} files: 100%|██████████| {files}/{files} [{_mmss(download)}<00:00]")
        p.line(lambda _ts: local_dir)
    p.wait(3)
    ports = [cfg.port, *sorted(rng.sample(range(10000, 60000), 6))]
    p.line(info(f"validated ports: {ports}", "api_start.py:321"))
    p.line(info(f"all start args:{_lightllm_args(cfg)}", "api_start.py:330"))
    load = _load_s(cfg)
    workers = 1
    p.wait(load)
    p.line(
        lambda _ts: (
            f"pid {pid + 40} Loading model weights with {workers} workers: 100%|██████████| "
            f"{cfg.num_shards}/{cfg.num_shards} [{_mmss(load)}<00:00]"
        )
    )
    p.wait(2)
    after_weights = cfg.gpu_total_gib * 1024**3 / 1e9 - cfg.weights_gib_per_rank * 1024**3 / 1e9 - 0.6
    cell_mb = cfg.kv_bytes_per_token / 1024**2
    p.line(info(f"{after_weights:.2f} GB space is available after load the model weight", "mem_manager.py:61"))
    p.line(info(f"{cell_mb:.4f} MB is the size of one token kv cache", "mem_manager.py:63"))
    p.line(
        info(
            f"{cfg.kv_tokens} is the profiled max_total_token_num with the mem_fraction {cfg.mem_fraction}",
            "mem_manager.py:79",
        )
    )
    p.wait(2)
    p.line(info("begin check max_len infer", "basemodel.py:1052"))
    p.wait(3)
    if "engine_oom" in faults:
        p.lines(lambda ts: _lightllm_crash(cfg, rng, ts))
        p.milestone(Milestone.CRASH)
        return p.steps
    p.line(info(f"check max_len {cfg.context_len} infer ok", "basemodel.py:1088"))
    if cfg.cuda_graphs:
        if "never_ready" in faults:
            p.wait(4)
            p.line(lambda _ts: "warming up:  41%|████      | 212/512")
            p.milestone(Milestone.STALL)
            return p.steps
        p.wait(20)
        p.line(lambda _ts: "warming up: 100%|██████████| 512/512 [00:20<00:00, 25.12it/s]")
    elif "never_ready" in faults:
        p.milestone(Milestone.STALL)
        return p.steps
    p.wait(1)
    p.line(info("init func start_router_process : init ok", "start_utils.py:42"))
    p.line(info("init func start_detokenization_process : init ok", "start_utils.py:42"))
    p.wait(2)
    p.line(info("server start up", "api_http.py:564"))
    if "models_before_health" in faults:
        p.milestone(Milestone.LISTEN)
        p.milestone(Milestone.STALL)
        return p.steps
    p.line(
        info("server start up ok, loop use is <uvloop.Loop running=True closed=False debug=False>", "api_http.py:571")
    )
    # Hypercorn binds after the lifespan startup, so this line means the port is open (§4.3 step 6).
    p.milestone(Milestone.LISTEN)
    p.line(
        lambda ts: (
            f"[{ts:%Y-%m-%d %H:%M:%S} +0000] [{pid}] [INFO] Running on http://{cfg.host}:{cfg.port} (CTRL + C to quit)"
        )
    )
    p.milestone(Milestone.READY)
    return p.steps


def _hf_local_dir(download: tuple[str, ...]) -> str:
    for i, arg in enumerate(download):
        if arg == "--local-dir" and i + 1 < len(download):
            return download[i + 1]
    return download[2] if len(download) > 2 else ""


def _mmss(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60:02d}:{s % 60:02d}"


def _lightllm_args(cfg: EngineConfig) -> str:
    return (
        f"{{'host': '{cfg.host}', 'port': {cfg.port}, 'model_name': '{cfg.spec.served_model}', "
        f"'model_dir': '{cfg.model_path}', 'tp': {cfg.tp}, 'max_req_total_len': {cfg.context_len}, "
        f"'mem_fraction': {cfg.mem_fraction}, 'tool_call_parser': {cfg.tool_call_parser!r}, "
        f"'reasoning_parser': {cfg.reasoning_parser!r}}}"
    )


def _lightllm_crash(cfg: EngineConfig, rng: random.Random, ts: datetime) -> list[str]:
    stamp = f"{ts:%m-%d %H:%M:%S}"
    traceback = [
        "Traceback (most recent call last):",
        '  File "/lightllm/lightllm/server/router/manager.py", line 498, in start_router_process',
        "    router.wait_to_model_ready()",
        '  File "/lightllm/lightllm/common/basemodel/basemodel.py", line 1060, in _check_max_len_infer',
        "    logits = self.forward(model_input)",
        _oom_text(cfg, rng),
    ]
    advice = (
        "check max len infer fail, you can try:1.Set the --mem_fraction or --max_total_token_num startup "
        "parameter to a smaller value.2.Set the --max_req_total_len to a smaller value.3.Set the "
        "--batch_max_tokens startup parameter to a smaller value."
    )
    return [
        f"ERROR {stamp} [basemodel.py:1089] {advice}",
        f"ERROR {stamp} [manager.py:498] " + traceback[0],
        *traceback[1:],
        f"ERROR {stamp} [start_utils.py:37] init func start_router_process : " + traceback[0],
        *traceback[1:],
    ]


PLANS: dict[str, Callable[[EngineConfig, Mapping[str, str | None], random.Random, int], list[Step]]] = {
    "sglang": sglang_plan,
    "vllm": vllm_plan,
    "lightllm": lightllm_plan,
}


def startup_plan(cfg: EngineConfig, faults: Mapping[str, str | None], rng: random.Random, pid: int) -> list[Step]:
    """The engine's startup; ``pid`` is the server process id its log lines name."""
    from glmdeploy.sandbox.engines import argv

    refused = argv.parse_error(cfg.kind, cfg.spec.image, cfg.spec.argv)
    if refused is not None:
        return _argparse_exit(cfg, refused)
    unsupported = argv.model_error(cfg.kind, cfg.arch.key, cfg.spec.image)
    if unsupported is not None:
        return _cannot_load(cfg, unsupported, pid)
    return PLANS[cfg.kind](cfg, faults, rng, pid)


def _banner(cfg: EngineConfig) -> Render:
    return (lambda _ts: []) if "rocm" in cfg.spec.image else (lambda _ts: cuda_banner(_cuda_version(cfg)))


def _argparse_exit(cfg: EngineConfig, lines: list[str]) -> list[Step]:
    """argparse's refusal after the imports, then the process is gone: no port, no more log lines."""
    from glmdeploy.sandbox.engines.argv import PARSE_AFTER_S

    p = _Plan()
    p.lines(_banner(cfg))
    p.wait(PARSE_AFTER_S[cfg.kind])
    p.lines(lambda _ts: list(lines))
    p.milestone(Milestone.CRASH)
    return p.steps


def _cannot_load(cfg: EngineConfig, error: str, pid: int) -> list[Step]:
    """An engine build too old for the model: it reads the model's config and stops there."""
    p = _Plan()
    p.lines(_banner(cfg))
    if cfg.kind == "vllm":
        # vLLM validates the model config in the API server, right after the argument summary (engines.md §1).
        def api(msg: str, where: str) -> Callable[[datetime], str]:
            return lambda ts: f"(APIServer pid={pid}) INFO {ts:%m-%d %H:%M:%S} [{where}] {msg}"

        p.wait(6)
        p.line(api(f"vLLM API server version {cfg.version_text}", "api_server.py:1896"))
        p.line(api(f"non-default args: {_vllm_non_default(cfg)}", "utils.py:253"))
        p.wait(2)
        tail = [
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
            f"  Value error, {error}",
        ]
    else:
        p.wait(5)
        tail = [error if error.startswith("ValueError: ") else f"ValueError: {error}"]
    p.lines(lambda _ts: ["Traceback (most recent call last):", *tail])
    p.milestone(Milestone.CRASH)
    return p.steps
