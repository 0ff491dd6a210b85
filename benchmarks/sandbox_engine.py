"""Throughput of one simulated engine under concurrent streaming chat requests.

The sandbox must never be what limits `glmdeploy bench`. This drives one ``SimulatedEngine`` (ttft and
tpot 0) with N concurrent streaming requests from an httpx async client and prints requests/s, streamed
chunks/s, and the engine's own CPU time per chunk.

By default the engine runs in a child process (its own core, like the sandbox process) and the client in
this one; ``--in-process`` puts both in one event loop on one core, the worst case.

    uv run python benchmarks/sandbox_engine.py [--kind vllm] [--requests 400] [--concurrency 32] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import httpx

from glmdeploy.sandbox.engines import EngineTiming, SimulatedEngine, launch_spec_from

KEY = "bench-key"
SCRIPTS = {
    "sglang": (
        "lmsysorg/sglang:latest",
        "python3 -m sglang.launch_server --model-path zai-org/GLM-4.7-Flash --served-model-name glm "
        '--reasoning-parser glm45 --tool-call-parser glm47 --api-key "$GLM_API_KEY"',
    ),
    "vllm": (
        "vllm/vllm-openai:latest",
        'export VLLM_API_KEY="$GLM_API_KEY"\nvllm serve zai-org/GLM-4.7-Flash --served-model-name glm '
        "--reasoning-parser glm45 --tool-call-parser glm47 --enable-auto-tool-choice",
    ),
    "lightllm": (
        "ghcr.io/modeltc/lightllm:latest",
        "python -m lightllm.server.api_server --model_dir /m/glm --reasoning_parser glm45 --tool_call_parser glm47",
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def serve(kind: str, port: int, ready: Any, done: Any) -> float:
    """Run the engine until ``done`` is set; returns its process CPU seconds spent serving."""
    image, script = SCRIPTS[kind]
    spec = launch_spec_from(image, script, {"GLM_API_KEY": KEY})
    assert spec is not None
    engine = SimulatedEngine(spec, port=port, log=lambda _line: None, timing=EngineTiming(time_scale=0.0), faults={})
    task = asyncio.create_task(engine.run())
    while engine.state != "serving":
        await asyncio.sleep(0.01)
    cpu0 = sum(os.times()[:2])
    ready()
    await done()
    cpu = sum(os.times()[:2]) - cpu0
    await engine.stop()
    await task
    return cpu


def child(kind: str, port: int, pipe: Connection) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def wait_parent() -> None:
            pipe.recv()
            loop.call_soon_threadsafe(stop.set)

        loop.run_in_executor(None, wait_parent)
        return await serve(kind, port, lambda: pipe.send("ready"), stop.wait)

    pipe.send(asyncio.run(main()))


async def drive(port: int, kind: str, requests: int, concurrency: int, max_tokens: int) -> tuple[int, int, float]:
    chunks = 0
    completed = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {
        "model": "glm",
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, headers=headers) as client:

        async def one() -> None:
            nonlocal chunks, completed
            async with semaphore, client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        chunks += 1
                completed += 1

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return completed, chunks, time.perf_counter() - started


async def in_process(args: argparse.Namespace) -> tuple[int, int, float, float]:
    port = free_port()
    ready = asyncio.Event()
    done = asyncio.Event()
    server = asyncio.create_task(serve(args.kind, port, ready.set, done.wait))
    await ready.wait()
    completed, chunks, elapsed = await drive(port, args.kind, args.requests, args.concurrency, args.max_tokens)
    done.set()
    return completed, chunks, elapsed, await server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(SCRIPTS), default="vllm")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--in-process", action="store_true", help="engine and client in one event loop (one core)")
    args = parser.parse_args()

    if args.in_process:
        completed, chunks, elapsed, cpu = asyncio.run(in_process(args))
        mode = "engine and client in one process"
    else:
        port = free_port()
        ours, theirs = multiprocessing.Pipe()
        process = multiprocessing.Process(target=child, args=(args.kind, port, theirs))
        process.start()
        assert ours.poll(30) and ours.recv() == "ready"
        completed, chunks, elapsed = asyncio.run(
            drive(port, args.kind, args.requests, args.concurrency, args.max_tokens)
        )
        ours.send("stop")
        cpu = float(ours.recv())
        process.join(10)
        mode = "engine in a child process"
    print(
        f"{args.kind}: {mode}; {args.requests} streaming requests, concurrency {args.concurrency}, "
        f"{args.max_tokens} tokens each (ignore_eos)"
    )
    print(f"  completed          {completed}")
    print(f"  wall time          {elapsed:.2f} s")
    print(f"  requests/s         {completed / elapsed:,.1f}")
    print(f"  streamed chunks/s  {chunks / elapsed:,.0f}")
    per_cpu = chunks / cpu if cpu else float("inf")
    what = "process CPU (engine + client)" if args.in_process else "engine CPU"
    print(f"  {what:<18} {cpu:.2f} s = {per_cpu:,.0f} chunks per CPU second")


if __name__ == "__main__":
    main()
