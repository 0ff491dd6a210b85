"""The simulated vLLM 0.24.0 against the recordings of the real one (../shared/reference/real-vllm-0.24.0/).

Each test reads a recording and replays it against a ``SimulatedEngine`` launched with the recorded
default command on the image the ``2x5090`` profile pins (``vllm/vllm-openai:v0.24.0``). Where the
recording and engines.md disagree, the recording wins; the sandbox's code says so where it follows
the recording (sandbox/engines/logs.py ``rec24``, server.py, death.py).

What is compared: status codes; bodies exactly where the recording's body carries no run-specific
value (401, /version, the 404 and 400 errors), else the shape (the keys); open and keyed paths; the
reasoning field; the order of the startup log's markers; the port refusing connections until ready
with no 503 phase; the argparse rejection; and the death sequence.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from glmdeploy.sandbox.engines import EngineTiming, LaunchSpec, SimulatedEngine, launch_spec_from
from glmdeploy.sandbox.engines.death import VLLM_EXIT_AFTER_S

pytestmark = pytest.mark.e2e

RECORDED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "real-vllm-0.24.0"
IMAGE = "vllm/vllm-openai:v0.24.0"
KEY = "conformance-key"
# The recorded default command (README.md "How it was run"), with the Hugging Face repo as the model
# (the run used a local directory holding its config) and without --load-format dummy.
COMMAND = (
    "vllm serve zai-org/GLM-4.7-Flash --served-model-name glm-4.7-flash --tool-call-parser glm47 "
    "--reasoning-parser glm45 --enable-auto-tool-choice --host 127.0.0.1 --port 8000 --api-key "
    '"${GLM_API_KEY}" --max-model-len 202752 --gpu-memory-utilization 0.9'
)
SCALE = 0.0005
HELLO = [{"role": "user", "content": "Say hello and tell me about the sea."}]


def recorded(name: str) -> str:
    path = RECORDED / name
    if not path.exists():
        pytest.skip(f"recording {path} is not here (shared/ sits beside the checkout)")
    return path.read_text()


@dataclass
class Exchange:
    """One request of http-transcript.txt: its title, status, headers and body."""

    title: str
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def transcript() -> dict[str, Exchange]:
    out: dict[str, Exchange] = {}
    for block in recorded("http-transcript.txt").split("== ")[1:]:
        title, _, rest = block.partition("\n")
        head, _, body = rest.partition("\n\n")
        lines = head.splitlines()
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        out[title.strip()] = Exchange(title.strip(), status, headers, body.strip())
    return out


# ---------------------------------------------------------------------------------------------- harness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Engine:
    engine: SimulatedEngine
    port: int
    loop: asyncio.AbstractEventLoop
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; state={self.engine.state}; log tail={self.lines[-5:]}"
            time.sleep(0.002)

    def client(self, key: str | None = KEY, scheme: str = "Bearer") -> httpx.Client:
        headers = {"Authorization": f"{scheme} {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=5.0, trust_env=False)


def spec(command: str = COMMAND) -> LaunchSpec:
    launched = launch_spec_from(IMAGE, f"#!/bin/bash\nset -u\nexec {command}\n", {"GLM_API_KEY": KEY})
    assert launched is not None
    return launched


@contextmanager
def running(faults: dict[str, str | None] | None = None, command: str = COMMAND) -> Iterator[Engine]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = free_port()
    lines: list[str] = []
    engine = SimulatedEngine(spec(command), port=port, log=lines.append, timing=EngineTiming(time_scale=SCALE),
                             faults=faults or {})
    task = asyncio.run_coroutine_threadsafe(engine.run(), loop)
    try:
        yield Engine(engine, port, loop, lines)
    finally:
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(5)
        task.result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def code(client: httpx.Client, method: str, path: str, **kwargs: Any) -> str:
    """The status as the recordings write it: ``000`` when the connection is refused."""
    try:
        return str(client.request(method, path, **kwargs).status_code)
    except httpx.TransportError:
        # curl writes 000 for no answer at all: refused, or a kept-alive connection reset as the process died.
        return "000"


@pytest.fixture(scope="module")
def serving() -> Iterator[Engine]:
    with running() as e:
        e.wait(lambda: e.engine.state == "serving")
        yield e


# ---------------------------------------------------------------------------------------------- HTTP


def test_health_ping_version_metrics_answer_without_a_key(serving: Engine) -> None:
    rec = transcript()
    with serving.client(key=None) as anonymous:
        for title, path in (("GET /health", "/health"), ("GET /ping", "/ping"), ("GET /version", "/version"),
                            ("GET /metrics (head) no key", "/metrics")):
            want = rec[title]
            got = anonymous.get(path)
            assert got.status_code == want.status, title
            assert got.headers.get("server") == want.headers["server"] == "uvicorn", title
            if path in ("/health", "/ping"):
                assert got.content == b"" and got.headers["content-length"] == "0", title
            if path == "/version":
                assert got.json() == want.json() == {"version": "0.24.0"}
            if path == "/metrics":
                assert got.headers["content-type"] == want.headers["content-type"]


def test_v1_is_keyed_with_the_recorded_401(serving: Engine) -> None:
    rec = transcript()
    for title, client in (("GET /v1/models no key", serving.client(key=None)),
                          ("GET /v1/models wrong key", serving.client(key="wrong")),
                          ("GET /v1/models lowercase bearer", serving.client(scheme="bearer")),
                          ("GET /v1/models", serving.client())):
        with client:
            got = client.get("/v1/models")
            want = rec[title]
            assert got.status_code == want.status, title
            if want.status == 401:
                assert got.content == want.body.encode() == b'{"error":"Unauthorized"}', title
                assert got.headers["content-type"] == want.headers["content-type"]
            else:
                card, recorded_card = got.json()["data"][0], want.json()["data"][0]
                assert set(card) == set(recorded_card), title
                assert set(card["permission"][0]) == set(recorded_card["permission"][0])
                assert (card["id"], card["owned_by"], card["max_model_len"]) == ("glm-4.7-flash", "vllm", 202752)
    with serving.client(key=None) as anonymous:
        chat = anonymous.post("/v1/chat/completions", json={"model": "glm-4.7-flash", "messages": HELLO})
        assert chat.status_code == 401


def test_errors_match_the_recording(serving: Engine) -> None:
    rec = transcript()
    with serving.client() as c:
        wrong = c.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO})
        assert wrong.status_code == rec["POST chat wrong model"].status == 404
        assert wrong.json() == rec["POST chat wrong model"].json()
        too_long = c.post("/v1/chat/completions",
                          json={"model": "glm-4.7-flash", "messages": HELLO, "max_tokens": 300000})
        assert too_long.status_code == rec["POST chat too long"].status == 400
        assert too_long.json() == rec["POST chat too long"].json()


def test_reasoning_field_non_streamed_and_streamed(serving: Engine) -> None:
    rec = transcript()
    with serving.client() as c:
        # A short answer that stops inside the thinking, as the recorded requests did (finish "length").
        got = c.post("/v1/chat/completions", json={"model": "glm-4.7-flash", "messages": HELLO, "max_tokens": 8})
        want = rec["POST /v1/chat/completions"].json()
        assert got.status_code == 200
        message, recorded_message = got.json()["choices"][0]["message"], want["choices"][0]["message"]
        assert set(message) == set(recorded_message)
        assert recorded_message["content"] is None and isinstance(recorded_message["reasoning"], str)
        assert message["content"] is None and isinstance(message["reasoning"], str) and message["reasoning"]
        assert got.json()["choices"][0]["finish_reason"] == "length"

        stream = c.post("/v1/chat/completions", json={"model": "glm-4.7-flash", "messages": HELLO, "max_tokens": 8,
                                                      "stream": True, "stream_options": {"include_usage": True}})
        assert stream.status_code == rec["POST chat stream"].status
        assert stream.headers["content-type"] == rec["POST chat stream"].headers["content-type"]
        events = _events(stream.text)
        recorded_events = _events(rec["POST chat stream"].body + "\n\n")
        assert events[-1] == recorded_events[-1] == "[DONE]"
        first, recorded_first = events[0], recorded_events[0]
        assert isinstance(first, dict) and isinstance(recorded_first, dict)
        assert first["choices"][0]["delta"] == recorded_first["choices"][0]["delta"] == {"role": "assistant",
                                                                                         "content": ""}
        deltas = [e["choices"][0]["delta"] for e in events[1:-1] if isinstance(e, dict) and e["choices"]]
        assert deltas and all(set(d) == {"reasoning"} for d in deltas if d), deltas
        assert isinstance(events[-2], dict) and events[-2]["choices"] == [] and "usage" in events[-2]


def _events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_legacy_completions_shape(serving: Engine) -> None:
    want = transcript()["POST /v1/completions"].json()
    with serving.client() as c:
        got = c.post("/v1/completions", json={"model": "glm-4.7-flash", "prompt": "Hi", "max_tokens": 5})
    assert got.status_code == 200
    assert got.json()["object"] == want["object"] == "text_completion"
    assert got.json()["id"].startswith("cmpl-") and want["id"].startswith("cmpl-")


# ---------------------------------------------------------------------------------------------- startup

# The recorded markers, in the recorded order (startup-default.log); each a regex on the line's text.
MARKERS = (
    r"\(APIServer pid=\d+\) INFO .* \[api_utils\.py:\d+\] .*version 0\.24\.0",
    r"\(APIServer pid=\d+\) INFO .* \[api_utils\.py:\d+\] non-default args: \{",
    r"\(EngineCore pid=\d+\) INFO .* Model loading took [\d.]+ GiB memory and [\d.]+ seconds",
    r"\(EngineCore pid=\d+\) INFO .* init engine \(profile, create kv cache, warmup model\) took [\d.]+ s "
    r"\(compilation: [\d.]+ s\)",
    r"\(APIServer pid=\d+\) INFO .* \[api_server\.py:\d+\] Starting vLLM server on http://127\.0\.0\.1:8000$",
    r"\(APIServer pid=\d+\) INFO .* \[launcher\.py:\d+\] Available routes are:$",
    r"\(APIServer pid=\d+\) INFO .* \[launcher\.py:\d+\] Route: /health, Methods: GET$",
    r"\(APIServer pid=\d+\) INFO:     Started server process \[\d+\]$",
    r"\(APIServer pid=\d+\) INFO:     Waiting for application startup\.$",
    r"\(APIServer pid=\d+\) INFO:     Application startup complete\.$",
)


def _order(lines: list[str]) -> list[int]:
    return [next(i for i, line in enumerate(lines) if re.search(m, line)) for m in MARKERS]


def test_log_markers_in_the_recorded_order(serving: Engine) -> None:
    real = [line.split(" ", 1)[1] if line.strip() else line for line in
            (raw.strip() for raw in recorded("startup-default.log").splitlines())]
    recorded_order = _order(real)
    assert recorded_order == sorted(recorded_order), "the recording itself has them in this order"
    simulated_order = _order(serving.lines)
    assert simulated_order == sorted(simulated_order), [serving.lines[i] for i in simulated_order]
    # The route list: the recorded routes, in the recorded order.
    def routes(lines: list[str]) -> list[str]:
        return [m.group(1) for line in lines if (m := re.search(r"\] Route: (.*)$", line))]

    assert routes(serving.lines) == routes(real)


def test_health_refuses_connections_until_ready_then_200_without_a_503_phase() -> None:
    timeline = [line.split()[1] for line in recorded("health-timeline-default.txt").splitlines() if line.strip()]
    assert timeline[:2] == ["health=000", "health=200"]
    seen: list[str] = []
    with running() as e, e.client(key=None) as anonymous:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = code(anonymous, "GET", "/health")
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "200":
                break
            time.sleep(0.001)
        assert seen == ["000", "200"], seen
        assert any("Application startup complete." in line for line in e.lines)


# ---------------------------------------------------------------------------------------------- failures


def test_argparse_rejection_prints_the_recorded_lines_and_exits() -> None:
    recorded_lines = [line.strip().split(" ", 1)[1] for line in recorded("argv-acceptance.txt").split("== ")[2]
                      .splitlines()[1:] if line.strip()]
    assert recorded_lines == ["usage: main.py [-h] [-v]", "main.py: error: unrecognized arguments: --swap-space 16"]
    with running(faults={"argparse_error": "--swap-space 16"}) as e:
        e.wait(lambda: e.engine.state == "crashed")
        assert [line for line in e.lines if "main.py" in line] == recorded_lines
        with e.client() as c:
            assert code(c, "GET", "/health") == "000"


def test_death_sequence_matches_the_recording() -> None:
    """engine-death.txt: the chat right after the core died is 500 while /health and /v1/models still
    answer 200 and the process is alive; about a second later everything refuses, for good."""
    rows = [dict(kv.split("=") for kv in line.split()[1:]) for line in recorded("engine-death.txt").splitlines()]
    assert rows[0] == {"health": "200", "models": "200", "chat": "500", "alive": "y"}
    assert all(r == {"health": "000", "models": "000", "chat": "000", "alive": "n"} for r in rows[1:])
    died_by = float(recorded("engine-death.txt").splitlines()[1].split()[0])  # 1.02 s
    # The pace: the sandbox's exit delay (simulated seconds) is the recording's, give or take its 0.1 s rows.
    assert died_by - 0.2 < VLLM_EXIT_AFTER_S <= died_by
    with running(faults={"engine_death": "1"}) as e:
        e.wait(lambda: e.engine.state == "serving")
        assert e.engine.death is not None
        # Held between the 500 and the exit, however slow this machine is, until the checks have run.
        gate = e.engine.death.exit_gate = asyncio.Event()
        body = {"model": "glm-4.7-flash", "messages": HELLO, "max_tokens": 4}
        with e.client() as c:
            assert code(c, "POST", "/v1/chat/completions", json=body) == "500"
            assert code(c, "GET", "/health") == "200"
            assert code(c, "GET", "/v1/models") == "200"
            assert e.engine.state != "crashed"
            e.loop.call_soon_threadsafe(gate.set)
            e.wait(lambda: code(c, "GET", "/health") == "000", timeout=5)
            for _ in range(3):
                assert [code(c, "GET", "/health"), code(c, "GET", "/v1/models"),
                        code(c, "POST", "/v1/chat/completions", json=body)] == ["000", "000", "000"]
                time.sleep(0.1)
        assert e.engine.state == "crashed"
