"""Smoke checks against the simulated SGLang, vLLM and LightLLM engines over real 127.0.0.1 sockets.

Each engine runs in a background event loop (as ``tests/sandbox/test_engines_http.py`` does), with a
small per-token delay so a stream really trickles in. Every fault the engines simulate must be
caught by the check named for it; the official ``openai`` SDK must see what the checks report.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from glmdeploy.onstart import OnstartOptions, render
from glmdeploy.profiles import load_profile
from glmdeploy.sandbox.engines import EngineTiming, LaunchSpec, SimulatedEngine, launch_spec_from
from glmdeploy.smoke import CHECK_NAMES, WEATHER_PROMPT, WEATHER_TOOL, SmokeReport, Target, run_smoke
from waits import HANG_S

# These in-process tests speak plain http to the simulated engine; TLS has its own tests (test_tls_*).
PLAIN_HTTP = OnstartOptions(tls=False)

KEY = "k-smoke-test"
SCALE = 0.0005
TPOT_S = 0.001  # a real gap between chunks; small enough to keep the tests fast
MODEL = "glm-4.7-flash"

SCRIPTS = {
    "sglang": (
        "lmsysorg/sglang:v0.5.10-cu129",  # 0.5.10: the first stock image that loads glm4_moe_lite
        "#!/bin/bash\nexec python3 -m sglang.launch_server --model-path zai-org/GLM-4.7-Flash "
        "--served-model-name glm-4.7-flash --tool-call-parser glm47 --reasoning-parser glm45 "
        '--host 0.0.0.0 --port 8000 --api-key "${GLM_API_KEY}"\n',
    ),
    "vllm": (
        "vllm/vllm-openai:v0.33.0",
        '#!/bin/bash\nexport VLLM_API_KEY="${GLM_API_KEY}"\nexec vllm serve zai-org/GLM-4.7-Flash '
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
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    engine: SimulatedEngine
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, predicate: Callable[[], bool], timeout: float = HANG_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"engine state {self.engine.state}"
            time.sleep(0.005)


@contextmanager
def serve(spec: LaunchSpec, faults: dict[str, str | None] | None = None, *, wait: bool = True,
          tpot_s: float = TPOT_S) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = free_port()
    engine = SimulatedEngine(spec, port=port, log=lambda _line: None,
                             timing=EngineTiming(time_scale=SCALE, tpot_s=tpot_s), faults=faults or {})
    task = asyncio.run_coroutine_threadsafe(engine.run(), loop)
    served = Served(engine, port)
    try:
        if wait:
            served.wait(lambda: engine.state == "serving")
        yield served
    finally:
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(5)
        task.result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def spec_for(kind: str) -> LaunchSpec:
    if kind == "lightllm":
        # LightLLM is always deployed behind the onstart's authenticating nginx (h200 profile).
        profile = load_profile("h200")
        spec = launch_spec_from(profile.engine.image, render(profile, PLAIN_HTTP), {"GLM_API_KEY": KEY})
    else:
        image, script = SCRIPTS[kind]
        spec = launch_spec_from(image, script, {"GLM_API_KEY": KEY})
    assert spec is not None
    return spec


def model_for(kind: str) -> str:
    return "GLM-4.7-Flash" if kind == "lightllm" else MODEL


def smoke(served: Served, kind: str, *, tell_engine: bool = True, **kwargs: Any) -> SmokeReport:
    engine = kind.split("-")[0] if tell_engine else None
    target = Target.from_url(served.url + "/v1", api_key=KEY, model=model_for(kind), engine=engine)
    return run_smoke(target, timeout=10, **kwargs)


def by_name(report: SmokeReport) -> dict[str, Any]:
    return {c.name: c for c in report.checks}


def failed(report: SmokeReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if c.status == "failed"}


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, Served]]:
    with serve(spec_for("sglang")) as s, serve(spec_for("vllm")) as v, serve(spec_for("lightllm")) as ll, \
            serve(spec_for("vllm-0.15")) as v15:
        yield {"sglang": s, "vllm": v, "lightllm": ll, "vllm-0.15": v15}


# ------------------------------------------------------------------------------------ passing


@pytest.mark.parametrize("kind", ["sglang", "vllm", "lightllm", "vllm-0.15"])
def test_every_check_passes_on_a_healthy_engine(engines: dict[str, Served], kind: str) -> None:
    report = smoke(engines[kind], kind)
    assert failed(report) == {}
    assert report.passed
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert all(c.status == "passed" and c.duration_ms >= 0 and c.detail for c in report.checks)
    stream = by_name(report)["stream"]
    assert stream.ttft_ms is not None and stream.ttft_ms >= 0
    assert f"TTFT {stream.ttft_ms:.0f} ms" in stream.detail


@pytest.mark.parametrize("kind", ["sglang", "vllm", "lightllm"])
def test_an_unknown_server_passes_too(engines: dict[str, Served], kind: str) -> None:
    """With --url and no --engine: /health is tried first, no ignore_eos is sent."""
    report = smoke(engines[kind], kind, tell_engine=False)
    assert failed(report) == {}


def test_the_server_root_and_the_v1_base_are_the_same_target(engines: dict[str, Served]) -> None:
    a = Target.from_url(engines["vllm"].url, api_key=KEY)
    b = Target.from_url(engines["vllm"].url + "/v1/", api_key=KEY)
    assert a.api_base == b.api_base == engines["vllm"].url + "/v1"


def test_without_a_model_the_first_listed_is_picked_and_used(engines: dict[str, Served]) -> None:
    target = Target.from_url(engines["vllm"].url, api_key=KEY, engine="vllm")
    report = run_smoke(target, timeout=10, only=["models", "chat"])
    assert report.passed, failed(report)
    assert report.model == MODEL
    assert "using glm-4.7-flash" in by_name(report)["models"].detail
    assert by_name(report)["chat"].info["model"] == MODEL


def test_only_chat_without_a_model_looks_the_model_up(engines: dict[str, Served]) -> None:
    target = Target.from_url(engines["vllm"].url, api_key=KEY)
    report = run_smoke(target, timeout=10, only=["chat"])
    assert report.passed, failed(report)
    assert [c.name for c in report.checks] == ["chat"]


def test_a_wrong_model_fails_models_and_vllm_refuses_the_chat(engines: dict[str, Served]) -> None:
    target = Target.from_url(engines["vllm"].url, api_key=KEY, model="nope", engine="vllm")
    report = run_smoke(target, timeout=10, only=["models", "chat"])
    bad = failed(report)
    assert "'nope' is not listed; /v1/models lists glm-4.7-flash" in bad["models"]
    assert "HTTP 404" in bad["chat"]


def test_auth_is_skipped_with_a_warning_when_no_key_is_configured(engines: dict[str, Served]) -> None:
    with serve(spec_for("sglang"), {"no_auth": None}) as s:
        report = run_smoke(Target.from_url(s.url, model=MODEL), timeout=10, only=["auth", "models"])
    check = by_name(report)["auth"]
    assert (check.status, check.passed) == ("skipped", True)
    assert "no API key" in check.detail and "warning" in check.detail
    assert report.passed


def test_a_wrong_key_fails_the_checks_that_need_it(engines: dict[str, Served]) -> None:
    target = Target.from_url(engines["sglang"].url, api_key="not-the-key", model=MODEL)
    report = run_smoke(target, timeout=10, only=["health", "models", "chat"])
    bad = failed(report)
    assert set(bad) == {"models", "chat"}  # SGLang's /health is open
    assert "401" in bad["models"]
    assert "not-the-key" not in report.model_dump_json()


# ------------------------------------------------------------------------------------- faults


def test_broken_tool_parser_fails_tools() -> None:
    with serve(spec_for("sglang"), {"broken_tool_parser": None}) as s:
        report = smoke(s, "sglang")
    assert set(failed(report)) == {"tools"}
    assert "arguments are not JSON" in failed(report)["tools"]


def test_reasoning_leak_fails_reasoning() -> None:
    with serve(spec_for("vllm"), {"reasoning_leak": None}) as s:
        report = smoke(s, "vllm", only=["chat", "reasoning"])
    assert set(failed(report)) == {"reasoning"}
    assert "content holds <think>/</think>" in failed(report)["reasoning"]


def test_no_done_fails_stream() -> None:
    with serve(spec_for("lightllm"), {"no_done": None}) as s:
        report = smoke(s, "lightllm", only=["chat", "stream"])
    assert set(failed(report)) == {"stream"}
    assert "without data: [DONE]" in failed(report)["stream"]


def test_no_auth_fails_auth() -> None:
    with serve(spec_for("vllm"), {"no_auth": None}) as s:
        report = smoke(s, "vllm", only=["auth", "models"])
    assert set(failed(report)) == {"auth"}
    detail = failed(report)["auth"]
    assert "GET /v1/models without a key: 200" in detail
    assert "POST /v1/chat/completions with a wrong key: 200" in detail


def test_no_auth_behind_the_lightllm_proxy_fails_auth() -> None:
    with serve(spec_for("lightllm"), {"no_auth": None}) as s:
        report = smoke(s, "lightllm", only=["auth"])
    assert "the key is not enforced" in failed(report)["auth"]


@pytest.mark.parametrize(("kind", "tell_engine"), [("sglang", True), ("sglang", False), ("vllm", True),
                                                   ("lightllm", True)])
def test_models_before_health_fails_health(kind: str, tell_engine: bool) -> None:
    with serve(spec_for(kind), {"models_before_health": None}, wait=False) as s:
        s.wait(lambda: _answers(s.url))
        report = smoke(s, kind, tell_engine=tell_engine, only=["health", "models"])
    assert set(failed(report)) == {"health"}
    assert failed(report)["health"] == (
        "GET /health: 503, the server is not ready (still warming up?); /v1/models answers 200"
    )


def test_an_unbuffered_stream_is_required() -> None:
    """With no delay between tokens the sandbox still writes the first chunk alone: the gap is real but tiny."""
    with serve(spec_for("sglang"), {"slow_first_token": "0.05"}, tpot_s=0.0) as s:
        report = smoke(s, "sglang", only=["stream"])
    assert report.passed, failed(report)
    assert by_name(report)["stream"].ttft_ms >= 50


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------- openai SDK


@pytest.mark.parametrize("kind", ["sglang", "vllm", "lightllm"])
def test_the_openai_sdk_sees_what_the_checks_report(engines: dict[str, Served], kind: str) -> None:
    import openai

    served = engines[kind]
    report = smoke(served, kind, only=["models", "chat", "reasoning", "tools"])
    assert report.passed, failed(report)
    checks = by_name(report)
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=10)
    try:
        models = [m.id for m in client.models.list()]
        assert models == checks["models"].info["models"]

        chat = client.chat.completions.create(
            model=model_for(kind), messages=[{"role": "user", "content": "Say hello in five words."}],
            max_tokens=256, extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        assert chat.choices[0].finish_reason == checks["chat"].info["finish_reason"]
        assert chat.usage is not None
        assert chat.usage.completion_tokens == checks["chat"].info["usage"]["completion_tokens"]
        assert chat.choices[0].message.content == checks["chat"].info["content"]

        thinking = client.chat.completions.create(
            model=model_for(kind),
            messages=[{"role": "user", "content": "What is 17 + 25? Answer with the number only."}],
            max_tokens=2048, extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        )
        extra = thinking.choices[0].message.model_extra or {}
        assert extra.get(checks["reasoning"].info["field"])
        assert "</think>" not in (thinking.choices[0].message.content or "")

        tool = client.chat.completions.create(
            model=model_for(kind), messages=[{"role": "user", "content": WEATHER_PROMPT}],
            tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=1024,  # type: ignore[list-item]
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        call = tool.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert tool.choices[0].finish_reason == checks["tools"].info["finish_reason"] == "tool_calls"
        assert call.function.name == checks["tools"].info["name"]  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == checks["tools"].info["arguments"]  # type: ignore[union-attr]

        stream = client.chat.completions.create(
            model=model_for(kind), messages=[{"role": "user", "content": WEATHER_PROMPT}],
            tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=1024, stream=True,  # type: ignore[list-item]
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        args = ""
        for chunk in stream:
            for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                args += (delta_call.function.arguments or "") if delta_call.function else ""
        assert json.loads(args) == checks["tools"].info["stream_arguments"]
    finally:
        client.close()


# ------------------------------------------------------------------------------ what `up` calls


def test_smoke_endpoint_with_a_profile_and_a_shared_client() -> None:
    import httpx

    from glmdeploy.errors import EXIT_SMOKE_FAILED, SmokeFailed
    from glmdeploy.smoke import smoke_endpoint

    profile = load_profile("4x3090")
    spec = launch_spec_from(profile.engine.image, render(profile, PLAIN_HTTP), {"GLM_API_KEY": KEY})
    assert spec is not None
    seen: list[str] = []
    with serve(spec) as served, httpx.Client() as http:
        report = smoke_endpoint(served.url + "/v1", KEY, model="zai-org/GLM-4.7-Flash", profile=profile, http=http,
                                on_result=lambda r: seen.append(f"{r.name}:{r.status}"))
        assert not http.is_closed  # the caller's client stays the caller's
    assert report.passed, failed(report)
    report.raise_for_failure()
    assert seen == ["health:passed", "auth:passed", "models:passed", "chat:passed", "stream:passed",
                    "reasoning:skipped", "tools:skipped", "max_tokens:passed"]

    with serve(spec_for("sglang"), {"no_auth": None}) as served:
        broken = smoke_endpoint(served.url + "/v1", KEY, model=MODEL, profile=None, only=["auth"])
    with pytest.raises(SmokeFailed) as caught:
        broken.raise_for_failure()
    assert caught.value.exit_code == EXIT_SMOKE_FAILED
    assert str(caught.value).startswith("smoke checks failed: auth: the key is not enforced")
