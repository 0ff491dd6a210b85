"""How fast and how exact is `glmdeploy bench`'s client? Prints figures; not a test.

1. Throughput: a simulated vLLM engine (sandbox, ttft = tpot = 0, in a child process so it has its own
   core) is driven by ``glmdeploy.bench.run_bench_async`` at several concurrencies. Prints the client's
   streamed chunks/s (long answers) and requests/s (short answers), the best of each, and the chunks per
   client CPU second (steadier than wall-clock on a shared machine).
2. guidellm, if importable, against the same engine in the same run, and the ratio of the two
   (target: glmdeploy >= 2x). guidellm is not a dependency; without it: "guidellm not installed: ratio skipped".
3. Accuracy: the engine set to a known TTFT and TPOT (default 50 ms / 10 ms, no reasoning parser so every
   token is one chunk). Prints the median absolute error of the measured TTFT (per request) and ITL (per
   gap) against the configured values (target <= 1 ms). That error includes the engine's own time: request
   parsing and generation before its TTFT sleep starts, and asyncio sleeps that wake late.
4. The client's own error, apart from any server's: a minimal reference streamer (child process, TCP_NODELAY)
   stamps when it received each request and when it wrote each chunk with ``time.perf_counter`` (CLOCK_MONOTONIC,
   shared by all processes on Linux). Client TTFT error = measured TTFT - (first write - request received);
   client ITL error = measured gap - gap between the two writes. Median absolute values are printed.

    uv run python benchmarks/bench_client.py [--requests 400] [--output-len 256] [--concurrency 16,64,256]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

from glmdeploy.bench import BenchOptions, RequestOutcome, run_bench_async
from glmdeploy.sandbox.engines import EngineTiming, SimulatedEngine, launch_spec_from

KEY = "bench-key"
MODEL = "glm"
IMAGE = "vllm/vllm-openai:latest"
# No reasoning parser: the thinking is plain content, so every generated token is exactly one chunk.
SCRIPT = 'export VLLM_API_KEY="$GLM_API_KEY"\nvllm serve zai-org/GLM-4.7-Flash --served-model-name glm\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": [choice]}).encode() + b"\n\n"


def _reference_child(port: int, ttft_s: float, tpot_s: float, pipe: Connection) -> None:
    """Streams max_tokens one-word chunks: ttft_s, then tpot_s apart; sends [received, write times] per request."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next(int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length"))
                body = json.loads(await reader.readexactly(length))
                received = time.perf_counter()
                start = loop.time()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + _chunked(_event({"role": "assistant", "content": ""}))
                )
                stamps = [received]
                for i in range(body["max_tokens"]):
                    delay = start + ttft_s + i * tpot_s - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    stamps.append(time.perf_counter())
                    writer.write(_chunked(_event({"content": " w"})))
                usage = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": body["max_tokens"]}}
                tail = _event({}, "length") + b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
                writer.write(_chunked(tail) + b"0\r\n\r\n")
                await writer.drain()
                pipe.send(stamps)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        pipe.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        server.close()

    asyncio.run(main())


@contextmanager
def reference_process(ttft_s: float, tpot_s: float) -> Iterator[tuple[str, Connection]]:
    port = free_port()
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_reference_child, args=(port, ttft_s, tpot_s, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30) or parent.recv() != "ready":
            raise RuntimeError("the reference streamer did not start")
        yield f"http://127.0.0.1:{port}/v1", parent
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def _engine_child(port: int, ttft_s: float, tpot_s: float, pipe: Connection) -> None:
    async def main() -> None:
        spec = launch_spec_from(IMAGE, SCRIPT, {"GLM_API_KEY": KEY})
        assert spec is not None
        timing = EngineTiming(time_scale=0.0, ttft_s=ttft_s, tpot_s=tpot_s)
        engine = SimulatedEngine(spec, port=port, log=lambda _line: None, timing=timing, faults={})
        task = asyncio.create_task(engine.run())
        while engine.state != "serving":
            await asyncio.sleep(0.01)
        pipe.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        await engine.stop()
        await task

    asyncio.run(main())


@contextmanager
def engine_process(ttft_s: float = 0.0, tpot_s: float = 0.0) -> Iterator[str]:
    """A simulated engine in its own process; yields its OpenAI base URL."""
    port = free_port()
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_engine_child, args=(port, ttft_s, tpot_s, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30) or parent.recv() != "ready":
            raise RuntimeError("the simulated engine did not start")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


async def drive(url: str, options: BenchOptions) -> tuple[list[RequestOutcome], float, float]:
    """(outcomes, duration s, client CPU s)."""
    outcomes: list[RequestOutcome] = []
    cpu0 = sum(os.times()[:2])
    result = await run_bench_async(url, KEY, MODEL, options, on_done=outcomes.append)
    cpu = sum(os.times()[:2]) - cpu0
    if result.failed:
        print(f"  warning: {result.failed} failed: {result.errors[:2]}")
    return outcomes, result.duration, cpu


def chunks_of(outcomes: list[RequestOutcome]) -> int:
    return sum(len(o.itl) + 1 for o in outcomes if o.success)


def throughput(url: str, args: argparse.Namespace) -> tuple[float, float]:
    print(f"== client throughput: simulated vLLM, ttft = tpot = 0, engine in its own process ({os.cpu_count()} CPUs)")
    best_chunks = best_requests = 0.0
    for c in args.concurrency:
        options = BenchOptions(num_prompts=args.requests, input_len=32, output_len=args.output_len, max_concurrency=c)
        outcomes, duration, cpu = asyncio.run(drive(url, options))
        chunks = chunks_of(outcomes)
        rate = chunks / duration
        best_chunks = max(best_chunks, rate)
        print(
            f"  {args.requests} req x {args.output_len} tok, concurrency {c:>4}: {rate:>9,.0f} chunks/s, "
            f"{len(outcomes) / duration:>7,.1f} req/s, {chunks / cpu:>9,.0f} chunks per client CPU s"
        )
    short = max(args.requests * 2, 200)
    for c in args.concurrency:
        options = BenchOptions(num_prompts=short, input_len=32, output_len=4, max_concurrency=c)
        outcomes, duration, cpu = asyncio.run(drive(url, options))
        rate = len(outcomes) / duration
        best_requests = max(best_requests, rate)
        print(
            f"  {short} req x 4 tok, concurrency {c:>4}: {rate:>9,.1f} req/s, "
            f"{len(outcomes) / cpu:>7,.1f} req per client CPU s"
        )
    print(f"  max sustained: {best_chunks:,.0f} streamed chunks/s, {best_requests:,.1f} requests/s")
    return best_chunks, best_requests


def guidellm_rate(url: str, args: argparse.Namespace, concurrency: int) -> float | None:
    """guidellm's output tokens/s against the same engine, or None (reason printed)."""
    if importlib.util.find_spec("guidellm") is None:
        print("guidellm not installed: ratio skipped")
        return None
    exe = shutil.which("guidellm")
    cmd = [exe] if exe else [sys.executable, "-m", "guidellm"]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "guidellm.json")
        cmd += [
            "benchmark", "--target", url.removesuffix("/v1"), "--model", MODEL,
            "--rate-type", "concurrent", "--rate", str(concurrency), "--max-requests", str(args.requests),
            "--data", f"prompt_tokens=32,output_tokens={args.output_len}", "--output-path", out,
        ]  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": KEY, "GUIDELLM__OPENAI__API_KEY": KEY}
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(f"guidellm failed (exit {done.returncode}): {done.stderr.strip()[-300:]}; ratio skipped")
            return None
        try:
            with open(out) as f:
                data: Any = json.load(f)
            rate = float(data["benchmarks"][0]["metrics"]["output_tokens_per_second"]["successful"]["mean"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            rate = args.requests * args.output_len / wall
            print("  (guidellm's JSON not understood: using its wall-clock time, which includes its start-up)")
    print(f"  guidellm, concurrency {concurrency}: {rate:,.0f} output tokens/s")
    return rate


def accuracy(args: argparse.Namespace) -> None:
    ttft, tpot = args.ttft_ms / 1000, args.tpot_ms / 1000
    print(f"== accuracy: engine set to TTFT {args.ttft_ms:g} ms, TPOT {args.tpot_ms:g} ms")
    with engine_process(ttft, tpot) as url:
        for c in (1, 8):
            options = BenchOptions(num_prompts=args.accuracy_requests, input_len=32, output_len=24, max_concurrency=c)
            outcomes, _, _ = asyncio.run(drive(url, options))
            ok = [o for o in outcomes if o.success]
            ttft_err = statistics.median(abs(o.ttft - ttft) for o in ok) * 1000
            itl_err = statistics.median(abs(g - tpot) for o in ok for g in o.itl) * 1000
            ttft_med = statistics.median(o.ttft for o in ok) * 1000
            itl_med = statistics.median(g for o in ok for g in o.itl) * 1000
            print(
                f"  concurrency {c}: TTFT median {ttft_med:.2f} ms (median abs error {ttft_err:.2f} ms), "
                f"ITL median {itl_med:.2f} ms (median abs error {itl_err:.2f} ms)"
            )


def client_error(args: argparse.Namespace) -> None:
    ttft, tpot = args.ttft_ms / 1000, args.tpot_ms / 1000
    print("== the client's own error, against a reference streamer that stamps its writes (concurrency 1)")
    with reference_process(ttft, tpot) as (url, pipe):
        options = BenchOptions(num_prompts=args.accuracy_requests, input_len=32, output_len=24, max_concurrency=1)
        outcomes, _, _ = asyncio.run(drive(url, options))
        stamps = [pipe.recv() for _ in outcomes]  # concurrency 1: the server's order is the client's
    ttft_err: list[float] = []
    itl_err: list[float] = []
    for o, (received, *writes) in zip(outcomes, stamps, strict=True):
        if not o.success or len(o.itl) != len(writes) - 1:
            continue
        ttft_err.append(abs(o.ttft - (writes[0] - received)))
        itl_err.extend(abs(gap - (b - a)) for gap, a, b in zip(o.itl, writes, writes[1:], strict=False))
    if not ttft_err:
        print("  no usable requests")
        return
    pairs = list(zip(outcomes, stamps, strict=True))
    up = statistics.median(w[0] - o.start_time for o, w in pairs) * 1000
    down = statistics.median(o.start_time + o.ttft - w[1] for o, w in pairs) * 1000
    print(
        f"  client TTFT error median {statistics.median(ttft_err) * 1000:.3f} ms "
        f"(send -> server has read the request: median {up:.3f} ms; first chunk written -> timestamped: "
        f"median {down:.3f} ms), client ITL error median {statistics.median(itl_err) * 1000:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 256])
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--tpot-ms", type=float, default=10.0)
    parser.add_argument("--accuracy-requests", type=int, default=24)
    args = parser.parse_args()
    with engine_process() as url:
        best_chunks, _ = throughput(url, args)
        theirs = guidellm_rate(url, args, max(args.concurrency))
        if theirs:
            print(f"  ratio glmdeploy / guidellm: {best_chunks / theirs:.2f}x (target >= 2x)")
    accuracy(args)
    client_error(args)


if __name__ == "__main__":
    main()
