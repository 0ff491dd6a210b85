"""Simulated engines over real sockets: startup logs, port and /health timing, auth, models, chat, faults.

Each test runs a ``SimulatedEngine`` in a background event loop on a free 127.0.0.1 port and talks to
it with httpx, as a client of the real engine would.
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
from typing import Any

import httpx
import pytest

from glmdeploy.onstart import OnstartOptions, render
from glmdeploy.profiles import load_profile
from glmdeploy.sandbox.engines import EngineTiming, LaunchSpec, SimulatedEngine, launch_spec_from
from listeners import listening_here
from waits import HANG_S

# These in-process tests speak plain http to the simulated engine; TLS has its own tests (test_tls_*).
PLAIN_HTTP = OnstartOptions(tls=False)

SCALE = 0.0005
KEY = "k-test"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
PARIS = [{"role": "user", "content": "What's the weather in Paris?"}]
HELLO = [{"role": "user", "content": "Say hello and tell me about the sea."}]

SCRIPTS = {
    "sglang": (
        "lmsysorg/sglang:v0.5.10-cu129",  # 0.5.10: the first stock image that loads glm4_moe_lite
        "#!/bin/bash\nset -u\nexec python3 -m sglang.launch_server --model-path zai-org/GLM-4.7-Flash "
        "--served-model-name glm-4.7-flash --tool-call-parser glm47 --reasoning-parser glm45 "
        '--host 0.0.0.0 --port 8000 --api-key "${GLM_API_KEY}"\n',
    ),
    "vllm": (
        "vllm/vllm-openai:v0.33.0",
        '#!/bin/bash\nset -u\nexport VLLM_API_KEY="${GLM_API_KEY}"\nexec vllm serve zai-org/GLM-4.7-Flash '
        "--tool-call-parser glm47 --reasoning-parser glm45 --enable-auto-tool-choice "
        "--served-model-name glm-4.7-flash --host 0.0.0.0 --port 8000\n",
    ),
    # The stock 0.15 image cannot load GLM-4.7-Flash (transformers<5); its dialect is served with GLM-4.5-Air.
    "vllm-0.15": (
        "vllm/vllm-openai:v0.15.0",
        '#!/bin/bash\nexport VLLM_API_KEY="${GLM_API_KEY}"\nexec vllm serve zai-org/GLM-4.5-Air '
        "--tool-call-parser glm47 --reasoning-parser glm45 --enable-auto-tool-choice "
        "--served-model-name glm-4.7-flash --port 8000\n",
    ),
    "lightllm": (
        "ghcr.io/modeltc/lightllm:v1.2.0",
        "#!/bin/bash\nexec python -m lightllm.server.api_server --model_dir /workspace/models/GLM-4.7-Flash "
        "--tool_call_parser glm47 --reasoning_parser glm45 --host 0.0.0.0 --port 8000\n",
    ),
}
KINDS = ("sglang", "vllm", "lightllm")
BANNER = "== CUDA =="
KV_LINE = {
    "sglang": re.compile(r"KV Cache is allocated\. #tokens: \d+, KV size: [\d.]+ GB"),
    "vllm": re.compile(r"GPU KV cache size: [\d,]+ tokens"),
    "lightllm": re.compile(r"\d+ is the profiled max_total_token_num with the mem_fraction [\d.]+"),
}
READY_LINE = {
    "sglang": "The server is fired up and ready to roll!",
    "vllm": "Application startup complete.",
    "lightllm": "server start up ok, loop use is",
}
REASONING_FIELD = {"sglang": "reasoning_content", "vllm": "reasoning", "lightllm": "reasoning"}
TOOL_ID = {
    "sglang": re.compile(r"call_[0-9a-f]{24}"),
    "vllm": re.compile(r"chatcmpl-tool-[0-9a-f]{32}"),
    "lightllm": re.compile(r"call_[0-9a-f]{24}"),
}


def spec_for(name: str, env: dict[str, str] | None = None) -> LaunchSpec:
    image, script = SCRIPTS[name]
    spec = launch_spec_from(image, script, {"GLM_API_KEY": KEY} if env is None else env)
    assert spec is not None
    return spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Running:
    engine: SimulatedEngine
    port: int
    loop: asyncio.AbstractEventLoop
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, predicate: Callable[[], bool], timeout: float = HANG_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; state={self.engine.state}; log tail={self.lines[-5:]}"
            time.sleep(0.002)

    def wait_serving(self) -> None:
        self.wait(lambda: self.engine.state == "serving")

    def wait_paused(self, point: str) -> None:
        """Until the startup waits at ``point`` (one of ``running(pause_at=...)``)."""
        self.wait(lambda: self.engine.paused_at == point)

    def resume(self) -> None:
        self.loop.call_soon_threadsafe(self.engine.resume)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def client(self, key: str | None = KEY, timeout: float = 5.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.engine.stop(), self.loop).result(5)


@contextmanager
def running(spec: LaunchSpec, faults: dict[str, str | None] | None = None, pause_at: frozenset[str] = frozenset(),
            **timing: Any) -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = free_port()
    lines: list[str] = []
    timing.setdefault("time_scale", SCALE)
    engine = SimulatedEngine(spec, port=port, log=lines.append, timing=EngineTiming(**timing), faults=faults or {})
    engine.pause_at = set(pause_at)
    task = asyncio.run_coroutine_threadsafe(engine.run(), loop)
    try:
        yield Running(engine, port, loop, lines)
    finally:
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(5)
        task.result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def refused(port: int) -> bool:
    """Nothing of this process listens there (a connect could reach another xdist worker's listener)."""
    return not listening_here(port)


def sse(response: httpx.Response) -> tuple[list[dict[str, Any]], bool]:
    """The JSON events of an SSE body and whether it ended with [DONE]."""
    events: list[dict[str, Any]] = []
    done = False
    assert response.text.endswith("\n\n")
    for block in response.text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        assert not done, "data after [DONE]"
        if payload == "[DONE]":
            done = True
        else:
            events.append(json.loads(payload))
    return events, done


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", "glm-4.7-flash")
    body.setdefault("messages", HELLO)
    return client.post("/v1/chat/completions", json=body)


def joined(events: list[dict[str, Any]], key: str) -> str:
    return "".join(e["choices"][0]["delta"].get(key) or "" for e in events if e["choices"])


def streamed_tool_calls(events: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for event in events:
        for call in (event["choices"][0]["delta"].get("tool_calls") or []) if event["choices"] else []:
            slot = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            if call.get("id"):
                slot["id"] = call["id"]
            fn = call.get("function") or {}
            if fn.get("name"):
                slot["name"] = fn["name"]
            slot["arguments"] += fn.get("arguments") or ""
    return calls


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, Running]]:
    """One serving engine per kind, shared by the read-only tests of this module."""
    with running(spec_for("sglang")) as s, running(spec_for("vllm")) as v, running(spec_for("lightllm")) as ll:
        for r in (s, v, ll):
            r.wait_serving()
        yield {"sglang": s, "vllm": v, "lightllm": ll}


# ---------------------------------------------------------------------------------------- startup


@pytest.mark.parametrize("kind", KINDS)
def test_startup_log_banner_kv_line_ready_marker_in_order(kind: str) -> None:
    with running(spec_for(kind), time_scale=0.003) as r:
        r.wait(lambda: r.logged(BANNER))
        # The engine is still loading: the port is not open yet.
        assert not r.logged(READY_LINE[kind])
        assert refused(r.port)
        assert not r.logged(READY_LINE[kind]), "startup too fast for this check"
        r.wait_serving()
        text = "\n".join(r.lines)
        banner = text.index(BANNER)
        kv = KV_LINE[kind].search(text)
        assert kv is not None
        ready = text.index(READY_LINE[kind])
        assert banner < kv.start() < ready
        assert not refused(r.port)
        with r.client() as c:
            assert c.get("/health").status_code == 200


def test_log_prefixes_follow_each_engine_format(served: dict[str, Running]) -> None:
    sglang, vllm, lightllm = served["sglang"].lines, served["vllm"].lines, served["lightllm"].lines
    assert any(re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d TP0\] max_total_num_tokens=\d+, ", ln) for ln in sglang)
    assert any(
        re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] INFO:     Uvicorn running on http://", ln) for ln in sglang
    )
    assert any(
        re.match(r"\(EngineCore_DP0 pid=\d+\) INFO \d\d-\d\d \d\d:\d\d:\d\d \[kv_cache_utils\.py", ln) for ln in vllm
    )
    assert any(
        ln.startswith("(APIServer pid=") and ln.endswith("INFO:     Application startup complete.") for ln in vllm
    )
    assert not any("Uvicorn running on" in ln for ln in vllm)
    assert any(
        re.match(r"INFO \d\d-\d\d \d\d:\d\d:\d\d \[mem_manager\.py:\d+\] \d+ is the profiled", ln) for ln in lightllm
    )
    assert any(re.match(r"\[.* \+0000\] \[\d+\] \[INFO\] Running on http://0\.0\.0\.0:8000", ln) for ln in lightllm)


def _health(c: httpx.Client, r: Running) -> str:
    try:
        return str(c.get(f"{r.url}/health").status_code)
    except httpx.ConnectError:
        return "refused"


def test_sglang_port_opens_with_health_503_until_warmup_then_200() -> None:
    # The startup is held at each point the test looks at (the warmup window is 48 ms of real time at
    # this scale): what /health answers there is then certain, not a matter of sampling fast enough.
    with (
        running(spec_for("sglang"), pause_at=frozenset({"start", "listen"}), time_scale=0.006) as r,
        httpx.Client(timeout=5.0) as c,
    ):
        r.wait_paused("start")
        assert _health(c, r) == "refused"
        r.resume()
        r.wait_paused("listen")
        assert _health(c, r) == "503"  # the port is open, the warmup has not gone through
        assert r.engine.state == "starting"
        r.resume()
        outcomes = ["503"]
        while outcomes[-1] != "200":
            status = _health(c, r)
            if status != outcomes[-1]:
                outcomes.append(status)
            assert r.engine.state != "crashed"
        assert outcomes == ["503", "200"] and r.engine.state == "serving"


def test_vllm_and_lightllm_refuse_until_ready_without_a_503_phase() -> None:
    for kind in ("vllm", "lightllm"):
        with (
            running(spec_for(kind), pause_at=frozenset({"start"}), time_scale=0.002) as r,
            httpx.Client(timeout=5.0) as c,
        ):
            r.wait_paused("start")
            outcomes = [_health(c, r)]
            r.resume()
            while outcomes[-1] != "200":
                status = _health(c, r)
                if status != outcomes[-1]:
                    outcomes.append(status)
                assert r.engine.state != "crashed"
        assert outcomes == ["refused", "200"], kind


def test_stop_closes_the_port_and_is_idempotent() -> None:
    with running(spec_for("vllm")) as r:
        r.wait_serving()
        r.stop()
        r.stop()
        assert r.engine.state == "stopped"
        assert refused(r.port)


def test_stop_ends_a_stream_in_flight() -> None:
    with running(spec_for("sglang"), tpot_s=0.05) as r:
        r.wait_serving()
        with (
            r.client() as c,
            c.stream("POST", "/v1/chat/completions", json={"messages": HELLO, "stream": True}) as resp,
        ):
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
            r.stop()
            with pytest.raises(httpx.HTTPError):
                for _ in lines:
                    pass


# ---------------------------------------------------------------------------------------- auth, health, models


def test_sglang_auth_guards_everything_but_health_and_metrics(served: dict[str, Running]) -> None:
    r = served["sglang"]
    with r.client(key=None) as anon, r.client(key="wrong") as wrong, r.client() as ok:
        for path in ("/v1/models", "/model_info", "/ping", "/no/such/path"):
            response = anon.get(path)
            assert response.status_code == 401, path
            assert response.json() == {"error": "Unauthorized"}
        assert wrong.get("/v1/models").status_code == 401
        assert anon.post("/v1/chat/completions", json={"messages": HELLO}).status_code == 401
        health = anon.get("/health")
        assert (health.status_code, health.content) == (200, b"")
        assert anon.get("/health_generate").status_code == 200
        assert anon.get("/metrics").status_code != 401  # exempt (404: metrics are not enabled)
        assert ok.get("/v1/models").status_code == 200
        assert ok.get("/model_info").json()["architectures"] == ["Glm4MoeLiteForCausalLM"]
        lower = anon.get("/v1/models", headers={"Authorization": f"bearer {KEY}"})
        assert lower.status_code == 200


def test_vllm_auth_guards_only_v1(served: dict[str, Running]) -> None:
    r = served["vllm"]
    with r.client(key=None) as anon, r.client(key="wrong") as wrong, r.client() as ok:
        for path in ("/health", "/version", "/metrics", "/ping"):
            assert anon.get(path).status_code == 200, path
        health = anon.get("/health")
        assert health.content == b""
        assert anon.get("/version").json() == {"version": "0.33.0"}
        unauthorized = anon.get("/v1/models")
        assert (unauthorized.status_code, unauthorized.json()) == (401, {"error": "Unauthorized"})
        assert wrong.get("/v1/models").status_code == 401
        assert anon.get("/v1/anything").status_code == 401
        assert ok.get("/v1/models").status_code == 200


def test_lightllm_has_no_auth_and_ok_health_body(served: dict[str, Running]) -> None:
    r = served["lightllm"]
    assert r.engine.spec.api_key is None
    with r.client(key=None) as anon:
        assert anon.get("/v1/models").status_code == 200
        health = anon.get("/health")
        assert (health.status_code, health.json()) == (200, {"message": "Ok"})
        assert anon.post("/v1/chat/completions", json={"messages": HELLO}).status_code == 200


def test_lightllm_behind_the_onstart_nginx_proxy() -> None:
    profile = load_profile("h200")
    script = render(profile, PLAIN_HTTP)
    spec = launch_spec_from(profile.engine.image, script, {"GLM_API_KEY": KEY})
    assert spec is not None and spec.proxy is not None
    with running(spec, time_scale=0.002) as r, r.client(key=None) as anon, r.client() as ok:
        # nginx is up before LightLLM: the port is open, the upstream is not.
        r.wait(lambda: not refused(r.port))
        assert not r.logged(READY_LINE["lightllm"])
        assert anon.get("/v1/models").status_code == 401
        assert ok.get("/v1/models").status_code == 502
        assert anon.get("/health").status_code == 502
        r.wait_serving()
        assert anon.get("/health").json() == {"message": "Ok"}
        unauthorized = anon.get("/v1/models")
        assert (unauthorized.status_code, unauthorized.json()) == (401, {"error": "Unauthorized"})
        assert anon.get("/healthz").status_code == 401  # only `location = /health` is open
        assert ok.get("/v1/models").json()["data"][0]["id"] == "GLM-4.7-Flash"
    # What nginx answers itself (401, 502) never reaches LightLLM's access log.
    assert any(line.endswith("GET /v1/models 200") for line in r.lines)
    assert not any(line.endswith((" 401", " 502")) for line in r.lines)


@pytest.mark.parametrize("kind", KINDS)
def test_models_lists_the_served_name(served: dict[str, Running], kind: str) -> None:
    r = served[kind]
    with r.client() as c:
        body = c.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    expected = "GLM-4.7-Flash" if kind == "lightllm" else "glm-4.7-flash"
    assert (card["id"], card["object"], card["owned_by"]) == (expected, "model", kind)


def test_model_name_is_checked_by_vllm_and_echoed_by_the_others(served: dict[str, Running]) -> None:
    with served["vllm"].client() as c:
        wrong = chat(c, model="gpt-4")
        assert wrong.status_code == 404
        assert wrong.json()["error"]["message"] == "The model `gpt-4` does not exist."
    for kind in ("sglang", "lightllm"):
        with served[kind].client() as c:
            response = chat(c, model="anything", max_tokens=4)
            assert response.status_code == 200
            assert response.json()["model"] == "anything"


# ---------------------------------------------------------------------------------------- chat


@pytest.mark.parametrize("kind", KINDS)
def test_chat_non_stream_reasoning_field_and_usage(served: dict[str, Running], kind: str) -> None:
    with served[kind].client() as c:
        body = chat(c).json()
    (choice,) = body["choices"]
    message = choice["message"]
    field_name = REASONING_FIELD[kind]
    assert message["role"] == "assistant"
    assert message[field_name].startswith("The user asks: Say hello")
    assert message["content"] and "</think>" not in message["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if kind == "sglang":
        assert "reasoning" not in message
    if kind == "vllm":
        assert "reasoning_content" not in message  # gone since vLLM 0.16


def test_prompt_tokens_grow_with_the_prompt(served: dict[str, Running]) -> None:
    with served["vllm"].client() as c:
        short = chat(c, messages=[{"role": "user", "content": "Hi"}], max_tokens=1).json()["usage"]
        longer = chat(c, messages=[{"role": "user", "content": "Hi " * 100}], max_tokens=1).json()["usage"]
    assert longer["prompt_tokens"] == short["prompt_tokens"] + 99


@pytest.mark.parametrize("kind", KINDS)
def test_enable_thinking_false_turns_reasoning_off(served: dict[str, Running], kind: str) -> None:
    with served[kind].client() as c:
        message = chat(c, chat_template_kwargs={"enable_thinking": False}).json()["choices"][0]["message"]
    assert not message[REASONING_FIELD[kind]]
    assert message["content"]


@pytest.mark.parametrize("kind", KINDS)
def test_max_tokens_inside_reasoning_gives_length_and_no_content(served: dict[str, Running], kind: str) -> None:
    with served[kind].client() as c:
        body = chat(c, max_tokens=5).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert not choice["message"]["content"]
    assert choice["message"][REASONING_FIELD[kind]]


@pytest.mark.parametrize("kind", KINDS)
def test_ignore_eos_generates_exactly_max_tokens_streamed(served: dict[str, Running], kind: str) -> None:
    with served[kind].client() as c:
        response = chat(
            c,
            max_tokens=300,
            ignore_eos=True,
            stream=True,
            stream_options={"include_usage": True},
            chat_template_kwargs={"enable_thinking": False},
        )
    events, done = sse(response)
    assert done
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 300
    content_chunks = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content_chunks) == 300  # one chunk per token
    assert [e for e in events if e["choices"]][-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("kind", KINDS)
def test_stream_matches_non_stream(served: dict[str, Running], kind: str) -> None:
    with served[kind].client() as c:
        whole = chat(c).json()
        response = chat(c, stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    events, done = sse(response)
    assert done
    first = events[0]["choices"][0]["delta"]
    assert first["role"] == "assistant"
    with_choices = [e for e in events if e["choices"]]
    assert with_choices[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(e["choices"][0]["finish_reason"] is None for e in with_choices[:-1])
    message = whole["choices"][0]["message"]
    assert joined(events, "content") == message["content"]
    assert joined(events, REASONING_FIELD[kind]) == message[REASONING_FIELD[kind]]
    usage_chunks = [e for e in events if not e["choices"]]
    # Without stream_options only LightLLM (HEAD) sends a usage chunk.
    assert len(usage_chunks) == (1 if kind == "lightllm" else 0)


@pytest.mark.parametrize("kind", KINDS)
def test_stream_usage_chunk_with_include_usage(served: dict[str, Running], kind: str) -> None:
    with served[kind].client() as c:
        events, done = sse(chat(c, stream=True, stream_options={"include_usage": True}))
    assert done
    last = events[-1]
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    text_chunks = [e for e in events[1:-2]]
    assert last["usage"]["completion_tokens"] >= len(text_chunks) - 1


def test_lightllm_sends_reasoning_in_one_chunk_sglang_streams_it(served: dict[str, Running]) -> None:
    with served["lightllm"].client() as c:
        events, _ = sse(chat(c, stream=True))
    reasoning = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("reasoning")]
    assert len(reasoning) == 1
    with served["sglang"].client() as c:
        events, _ = sse(chat(c, stream=True))
    reasoning = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("reasoning_content")]
    assert len(reasoning) > 5


# ---------------------------------------------------------------------------------------- tools


@pytest.mark.parametrize("kind", KINDS)
def test_tool_call_non_stream(served: dict[str, Running], kind: str) -> None:
    with served[kind].client() as c:
        body = chat(c, messages=PARIS, tools=[WEATHER_TOOL]).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert TOOL_ID[kind].fullmatch(call["id"])
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("kind", KINDS)
def test_tool_call_stream_fragments_reassemble(served: dict[str, Running], kind: str) -> None:
    with served[kind].client() as c:
        events, done = sse(chat(c, messages=PARIS, tools=[WEATHER_TOOL], stream=True))
    assert done
    calls = streamed_tool_calls(events)
    assert list(calls) == [0]
    assert TOOL_ID[kind].fullmatch(calls[0]["id"])
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    tool_events = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("tool_calls")]
    first = tool_events[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["id"] and first["function"]["name"] == "get_weather"
    assert len(tool_events) > 2  # incremental: name first, then argument fragments
    assert all(not (e["choices"][0]["delta"]["tool_calls"][0].get("id")) for e in tool_events[1:])
    assert [e for e in events if e["choices"]][-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_vllm_015_streams_each_call_in_one_delta_and_copies_reasoning_content() -> None:
    with running(spec_for("vllm-0.15")) as r:
        r.wait_serving()
        with r.client() as c:
            events, _ = sse(chat(c, messages=PARIS, tools=[WEATHER_TOOL], stream=True, stream_options={}))
            message = chat(c).json()["choices"][0]["message"]
    tool_events = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("tool_calls")]
    assert len(tool_events) == 1
    call = tool_events[0]["choices"][0]["delta"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert message["reasoning"] and message["reasoning_content"] == message["reasoning"]
    assert any("GPU KV cache size:" in ln and ln.endswith(" tokens") for ln in r.lines)  # 0.15: two lines
    assert not events[-1]["choices"] and events[-1]["usage"]  # stream_options sent: usage on by default


def test_vllm_015_usage_defaults_on_once_stream_options_is_sent() -> None:
    with running(spec_for("vllm-0.15")) as r:
        r.wait_serving()
        with r.client() as c:
            with_options, _ = sse(chat(c, stream=True, stream_options={}))
            without, _ = sse(chat(c, stream=True))
    assert with_options[-1]["choices"] == [] and with_options[-1]["usage"]["completion_tokens"] > 0
    assert without[-1]["choices"] != []


def test_no_tool_call_when_not_relevant_or_tool_choice_none(served: dict[str, Running]) -> None:
    with served["sglang"].client() as c:
        unrelated = chat(c, messages=HELLO, tools=[WEATHER_TOOL]).json()["choices"][0]
        none = chat(c, messages=PARIS, tools=[WEATHER_TOOL], tool_choice="none").json()["choices"][0]
        required = chat(c, messages=HELLO, tools=[WEATHER_TOOL], tool_choice="required").json()["choices"][0]
    assert unrelated["finish_reason"] == "stop" and not unrelated["message"]["tool_calls"]
    assert none["finish_reason"] == "stop" and not none["message"]["tool_calls"]
    assert required["finish_reason"] == "tool_calls"


def test_vllm_rejects_auto_tool_choice_without_the_flags() -> None:
    script = 'export VLLM_API_KEY="${GLM_API_KEY}"\nexec vllm serve zai-org/GLM-4.7-Flash\n'
    spec = launch_spec_from("vllm/vllm-openai:v0.33.0", script, {"GLM_API_KEY": KEY})
    assert spec is not None
    with running(spec) as r:
        r.wait_serving()
        with r.client() as c:
            response = chat(c, model="zai-org/GLM-4.7-Flash", messages=PARIS, tools=[WEATHER_TOOL])
    assert response.status_code == 400
    assert "--enable-auto-tool-choice" in response.json()["error"]["message"]


def test_without_a_reasoning_parser_the_thinking_stays_in_content() -> None:
    profile = load_profile("4x3090")  # SGLang, no --reasoning-parser
    spec = launch_spec_from(profile.engine.image, render(profile, PLAIN_HTTP), {"GLM_API_KEY": KEY})
    assert spec is not None
    with running(spec) as r:
        r.wait_serving()
        with r.client() as c:
            message = chat(c).json()["choices"][0]["message"]
    assert message["reasoning_content"] is None
    assert "</think>" in message["content"]


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_same_text_other_seed_other_text() -> None:
    def answer(seed: int) -> tuple[str, str]:
        with running(spec_for("vllm"), seed=seed) as r:
            r.wait_serving()
            with r.client() as c:
                message = chat(c).json()["choices"][0]["message"]
        return message["reasoning"], message["content"]

    assert answer(1) == answer(1)
    assert answer(1) != answer(2)


def test_completions_endpoint(served: dict[str, Running]) -> None:
    with served["vllm"].client() as c:
        body = c.post("/v1/completions", json={"model": "glm-4.7-flash", "prompt": "Once upon", "max_tokens": 7}).json()
        events, done = sse(c.post("/v1/completions", json={"prompt": "Once upon", "max_tokens": 7, "stream": True}))
    assert body["object"] == "text_completion"
    assert body["usage"]["completion_tokens"] == 7 and body["choices"][0]["finish_reason"] == "length"
    assert done and "".join(e["choices"][0]["text"] for e in events) == body["choices"][0]["text"]


# ---------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "failure"),
    [
        ("sglang", "Received sigquit from a child process. It usually means the child failed."),
        ("vllm", "RuntimeError: Engine core initialization failed. See root cause above."),
        ("lightllm", "init func start_router_process : Traceback (most recent call last):"),
    ],
)
def test_engine_oom_crashes_with_the_cuda_oom_text(kind: str, failure: str) -> None:
    with running(spec_for(kind), {"engine_oom": None}) as r:
        r.wait(lambda: r.engine.state == "crashed")
        text = "\n".join(r.lines)
        assert re.search(r"torch\.OutOfMemoryError: CUDA out of memory\. Tried to allocate [\d.]+ GiB\.", text)
        assert failure in text
        assert text.index("CUDA out of memory") < text.index(failure)
        assert not r.logged(READY_LINE[kind])
        assert refused(r.port)


def test_never_ready_sglang_holds_503_and_vllm_stays_refused() -> None:
    with running(spec_for("sglang"), {"never_ready": None}) as s, running(spec_for("vllm"), {"never_ready": None}) as v:
        s.wait(lambda: s.logged("Uvicorn running on"))
        v.wait(lambda: v.logged("Capturing CUDA graphs"))
        time.sleep(0.3)  # ~600 simulated seconds: nothing more happens
        with s.client() as c:
            assert c.get("/health").status_code == 503
            assert c.get("/v1/models").status_code == 200
        assert refused(v.port)
        assert s.engine.state == v.engine.state == "starting"
        assert not s.logged(READY_LINE["sglang"]) and not v.logged(READY_LINE["vllm"])


def test_health_flap_alternates() -> None:
    with running(spec_for("vllm"), {"health_flap": None}) as r:
        r.wait_serving()
        with r.client() as c:
            statuses = [c.get("/health").status_code for _ in range(6)]
    assert statuses == [200, 503, 200, 503, 200, 503]


def test_slow_first_token_delays_the_first_token_only() -> None:
    with running(spec_for("sglang"), {"slow_first_token": "0.3"}) as r:
        r.wait_serving()
        started = time.monotonic()  # before the request: the headers may be read late under load
        with (
            r.client() as c,
            c.stream("POST", "/v1/chat/completions", json={"messages": HELLO, "stream": True}) as resp,
        ):
            first_token_at = None
            for line in resp.iter_lines():
                if line.startswith("data: {") and '"reasoning_content": "' in line:
                    first_token_at = time.monotonic()
                    break
            assert first_token_at is not None
            assert first_token_at - started >= 0.3


def test_broken_tool_parser_returns_invalid_json_arguments() -> None:
    with running(spec_for("vllm"), {"broken_tool_parser": None}) as r:
        r.wait_serving()
        with r.client() as c:
            call = chat(c, messages=PARIS, tools=[WEATHER_TOOL]).json()["choices"][0]["message"]["tool_calls"][0]
            events, _ = sse(chat(c, messages=PARIS, tools=[WEATHER_TOOL], stream=True))
    for arguments in (call["function"]["arguments"], streamed_tool_calls(events)[0]["arguments"]):
        with pytest.raises(json.JSONDecodeError):
            json.loads(arguments)


def test_named_tool_choice_and_zero_argument_calls_also_break_under_the_fault() -> None:
    clock = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    choice = {"type": "function", "function": {"name": "now"}}
    for faults, valid in (({}, True), ({"broken_tool_parser": None}, False)):
        with running(spec_for("sglang"), faults) as r:
            r.wait_serving()
            with r.client() as c:
                body = chat(c, messages=HELLO, tools=[WEATHER_TOOL, clock], tool_choice=choice).json()
                events, _ = sse(chat(c, messages=HELLO, tools=[WEATHER_TOOL, clock], tool_choice=choice, stream=True))
        call = body["choices"][0]["message"]["tool_calls"][0]
        assert call["function"]["name"] == "now"
        for arguments in (call["function"]["arguments"], streamed_tool_calls(events)[0]["arguments"]):
            if valid:
                assert json.loads(arguments) == {}
            else:
                with pytest.raises(json.JSONDecodeError):
                    json.loads(arguments)


def test_reasoning_leak_puts_reasoning_in_content() -> None:
    with running(spec_for("sglang"), {"reasoning_leak": None}) as r:
        r.wait_serving()
        with r.client() as c:
            message = chat(c).json()["choices"][0]["message"]
    assert message["reasoning_content"] is None
    assert message["content"].startswith("The user asks: Say hello")
    assert "</think>" in message["content"]


def test_no_done_ends_streams_without_done() -> None:
    with running(spec_for("lightllm"), {"no_done": None}) as r:
        r.wait_serving()
        with r.client() as c:
            events, done = sse(chat(c, stream=True))
    assert not done
    assert [e for e in events if e["choices"]][-1]["choices"][0]["finish_reason"] == "stop"


def test_no_auth_serves_without_the_key() -> None:
    with running(spec_for("sglang"), {"no_auth": None}) as r:
        r.wait_serving()
        with r.client(key=None) as anon:
            assert anon.get("/v1/models").status_code == 200
            assert chat(anon, max_tokens=2).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
def test_models_before_health(kind: str) -> None:
    with running(spec_for(kind), {"models_before_health": None}) as r:
        r.wait(lambda: not refused(r.port))
        time.sleep(0.2)
        with r.client() as c:
            assert c.get("/v1/models").status_code == 200
            assert c.get("/health").status_code == 503
        assert r.engine.state == "starting"
        assert not r.logged(READY_LINE[kind])


def test_ttft_and_tpot_pace_streaming_and_non_streaming() -> None:
    body = {"messages": HELLO, "max_tokens": 20, "ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}}
    with running(spec_for("vllm"), ttft_s=0.1, tpot_s=0.01) as r:
        r.wait_serving()
        with r.client() as c:
            started = time.monotonic()
            assert c.post("/v1/chat/completions", json=body).json()["usage"]["completion_tokens"] == 20
            assert time.monotonic() - started >= 0.1 + 19 * 0.01
            arrivals = []
            started = time.monotonic()
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
                for line in resp.iter_lines():
                    if '"content": "' in line and '"content": ""' not in line:
                        arrivals.append(time.monotonic())
    assert len(arrivals) == 20
    # Lower bounds from the request: token i cannot arrive before it was sent, however late a loaded
    # client reads (gaps between arrivals would shrink to nothing when it reads two at once).
    for i, arrived in enumerate(arrivals):
        assert arrived - started >= 0.1 + i * 0.0095, (i, [a - started for a in arrivals])


def test_traffic_shows_in_the_engine_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SimulatedEngine, "STATS_INTERVAL_S", 0.05)
    with running(spec_for("sglang")) as s, running(spec_for("vllm")) as v:
        s.wait_serving()
        v.wait_serving()
        for r in (s, v):
            with r.client() as c:
                usage = chat(c, max_tokens=8).json()["usage"]
        assert s.logged(f"Prefill batch, #new-seq: 1, #new-token: {usage['prompt_tokens']}, #cached-token: 0")
        v.wait(lambda: v.logged("Avg generation throughput: 160.0 tokens/s, Running: 0 reqs, Waiting: 0 reqs"))


@pytest.mark.parametrize(
    ("kind", "message", "after_load"),
    [
        ("vllm", "OSError: [Errno 98] Address already in use", False),
        ("lightllm", "RuntimeError: port 8000 has been used", False),
        (
            "sglang",
            "[Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already in use",
            True,
        ),
    ],
)
def test_busy_port_fails_early_or_late_per_engine(kind: str, message: str, after_load: bool) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        loop = asyncio.new_event_loop()
        try:
            lines: list[str] = []
            engine = SimulatedEngine(
                spec_for(kind), port=port, log=lines.append, timing=EngineTiming(time_scale=SCALE), faults={}
            )
            loop.run_until_complete(asyncio.wait_for(engine.run(), 10))
        finally:
            loop.close()
    assert engine.state == "crashed"
    assert message in lines[-1]
    assert any(KV_LINE[kind].search(line) for line in lines) == after_load


# ---------------------------------------------------------------------------------------- /metrics (issue 13)


def _metrics_spec(kind: str, extra: str) -> LaunchSpec:
    image, script = SCRIPTS[kind]
    spec = launch_spec_from(image, script.replace(" --port 8000", f" --port 8000 {extra}"), {"GLM_API_KEY": KEY})
    assert spec is not None
    return spec


def _load(r: Running) -> Any:
    from glmdeploy.engines.metrics import read_load

    with r.client() as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    return read_load(r.engine.spec.kind, response.text)


@pytest.mark.parametrize(("kind", "extra"), [("vllm", "--max-num-seqs 1"),
                                             ("sglang", "--enable-metrics --max-running-requests 1"),
                                             ("lightllm", "--running_max_req_size 1")])
def test_metrics_report_held_requests_under_the_engines_own_names(kind: str, extra: str) -> None:
    with running(_metrics_spec(kind, extra)) as r:
        r.wait_serving()
        idle = _load(r)
        assert (idle.running, idle.waiting) == (0, 0)
        r.engine.app.hold_generation = True
        answers: list[int] = []

        def ask() -> None:
            with r.client(timeout=HANG_S) as http:
                answers.append(chat(http, messages=HELLO, max_tokens=8).status_code)

        askers = [threading.Thread(target=ask) for _ in range(2)]
        for t in askers:
            t.start()
        r.wait(lambda: r.engine.app.held == 2)
        busy = _load(r)
        # Two in flight with a concurrency cap of 1: one runs, one waits, and the runner holds KV tokens.
        assert (busy.running, busy.waiting) == (1, 1)
        if kind == "lightllm":
            assert busy.kv_usage is None and busy.note == "LightLLM exports no KV-cache usage metric"
        else:
            assert busy.kv_usage is not None and 0 < busy.kv_usage < 1 and busy.note is None
        r.loop.call_soon_threadsafe(r.engine.app.release_held)
        for t in askers:
            t.join(HANG_S)
        assert answers == [200, 200]
        after = _load(r)
        assert (after.running, after.waiting) == (0, 0)
        assert after.kv_usage in (0, None)


def test_sglang_logs_decode_batches_while_generating_with_its_metrics_figures_and_nothing_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The twin of SGLang's scheduler log (glmdeploy.engines.sglang_log_load): a Decode batch line at its own
    pace while requests run, saying what /metrics says; silence once they are done."""
    from glmdeploy.engines.sglang_log_load import parse_batch_line, read_log_load
    from glmdeploy.sandbox.engines.server import EngineApp

    monkeypatch.setattr(SimulatedEngine, "DECODE_LOG_INTERVAL_S", 0.02)
    looks = [0]
    own_load = EngineApp.load

    def counted(self: EngineApp) -> tuple[int, int, float]:
        looks[0] += 1
        return own_load(self)

    monkeypatch.setattr(EngineApp, "load", counted)
    with running(_metrics_spec("sglang", "--enable-metrics --max-running-requests 1")) as r:
        r.wait_serving()
        r.engine.app.hold_generation = True
        answers: list[int] = []

        def ask() -> None:
            with r.client(timeout=HANG_S) as http:
                answers.append(chat(http, messages=HELLO, max_tokens=8).status_code)

        askers = [threading.Thread(target=ask) for _ in range(2)]
        for t in askers:
            t.start()
        r.wait(lambda: r.engine.app.held == 2)
        before_health = len(r.lines)
        with r.client() as http:
            assert http.get("/health").status_code == 200  # a batch runs: SGLang drops the health generation
        # The engine logs a health Prefill line before /health answers, so whatever it logged is in by now.
        # (Looking at "the last 3 lines" instead raced the decode logger: under load fewer than 3 lines
        # could follow the first request's own Prefill line.)
        held_from = len(r.lines)
        assert not any("Prefill batch" in line for line in r.lines[before_health:]), r.lines[before_health:]
        r.wait(lambda: any("Decode batch, " in line for line in r.lines[held_from:]))
        decode = next(parse_batch_line(line) for line in r.lines[held_from:] if "Decode batch, " in line)
        assert decode is not None and decode.kind == "Decode"
        metrics = _load(r)
        assert (decode.running, decode.waiting) == (metrics.running, metrics.waiting) == (1, 1)
        assert decode.kv_usage == round(metrics.kv_usage, 2)
        from_log = read_log_load("\n".join(r.lines))
        assert from_log is not None and not from_log.idle and from_log.load.running == 1
        r.loop.call_soon_threadsafe(r.engine.app.release_held)
        for t in askers:
            t.join(HANG_S)
        assert answers == [200, 200]
        done_at, seen = len(r.lines), looks[0]
        r.wait(lambda: looks[0] >= seen + 3)  # the decode logger looked at an idle engine, more than once
        assert not any("batch" in line for line in r.lines[done_at:]), r.lines[done_at:]
        with r.client() as http:  # idle: /health's one-token generation is prefilled, and logged
            assert http.get("/health").status_code == 200
        health = [parse_batch_line(line) for line in r.lines[done_at:] if "Prefill batch" in line]
        assert len(health) == 1 and health[0] is not None and health[0].health_check
        idle = read_log_load("\n".join(r.lines))
        assert idle is not None and idle.idle and (idle.load.running, idle.load.waiting) == (0, 0)


def test_sglang_without_enable_metrics_serves_no_metrics(served: dict[str, Running]) -> None:
    with served["sglang"].client() as http:
        assert http.get("/metrics").status_code == 404
