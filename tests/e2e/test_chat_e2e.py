"""Issue 13 §5 acceptance: `chat NAME -m hi` and a scripted REPL on a pseudo-terminal, on the sandbox, for all
three engines, with reasoning and a tool call shown (the session asks for the weather with --demo-tool; `-m`
with a tool call on each engine is tests/test_chat_cli.py's, against the same simulated engines, cheaper).

One sandbox and one deployment per engine for the whole module (`up --ttl LONG_TTL`), ended with the sandbox:
SGLang (4x3090 with the GLM parsers switched on: the shipped profile has none, so its server sends thinking
and tool calls inline, which chat says in a note), vLLM (2x5090) and LightLLM (h200). The SGLang one also
serves issue 13 §6's `status --watch` on SGLang without /metrics (its load from the log), to spare an `up`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from profile_variants import variant
from waits import HANG_S, wait_until

from .conftest import GLMDEPLOY, LONG_TTL, TIME_SCALE
from .pty_screen import prompted, run_on_pty

pytestmark = pytest.mark.e2e

ENGINES = ("sglang", "vllm", "lightllm")
PROFILES = {"vllm": "2x5090", "lightllm": "h200"}
WEATHER = "What's the weather in Paris?"
DIM, BOLD_CYAN = "\x1b[2m", "\x1b[1;36m"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class World:
    env: dict[str, str]
    home: Path

    def run(self, *args: str, check_exit: int | None = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*GLMDEPLOY, *args], env=self.env, capture_output=True, text=True, timeout=HANG_S,
                              stdin=subprocess.DEVNULL)
        if check_exit is not None:
            assert proc.returncode == check_exit, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("chat-e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "GLMDEPLOY_", "OPENAI_"))}
    env.update(GLMDEPLOY_HOME=str(home / "state"), HOME=str(home), PYTHONUNBUFFERED="1", COLUMNS="200")
    w = World(env, home)
    w.run("sandbox", "start", "--time-scale", str(TIME_SCALE))
    try:
        # The shipped SGLang profile enables no parser; a copy with GLM's two, as a user would write it.
        sglang = home / "4x3090-parsers.json"
        with_parsers = variant("4x3090", name="4x3090-parsers", **{"engine.tool_call_parser": "glm47",
                                                                   "engine.reasoning_parser": "glm45"})
        sglang.write_text(with_parsers.model_dump_json(exclude_none=True))
        for engine, profile in {"sglang": str(sglang), **PROFILES}.items():
            w.run("up", "-p", profile, "--sandbox", "--ttl", LONG_TTL, "--yes", "--no-smoke",
                  "--name", f"chat-{engine}")
        yield w
    finally:
        w.run("sandbox", "stop", check_exit=None)  # its instances end with it; the records die with tmp_path


@pytest.mark.parametrize("engine", ENGINES)
def test_chat_name_m_hi_shows_reasoning_and_answer(world: World, engine: str) -> None:
    proc = world.run("chat", f"chat-{engine}", "-m", "hi")
    assert proc.stderr.startswith("thinking: The user asks: hi."), proc.stderr
    assert proc.stdout.strip() and "The user asks" not in proc.stdout


def _session(env: dict[str, str], args: list[str], lines: list[str]) -> tuple[int, str]:
    """Run ``glmdeploy args`` on a pty (40x120); type each line once the REPL prompts for it."""
    run = run_on_pty(env, args, size=(40, 120), answers=(b"you> ", [line.encode() + b"\r" for line in lines]))
    return run.code, run.screen


@pytest.mark.parametrize("engine", ENGINES)
def test_scripted_session_on_a_terminal(world: World, engine: str) -> None:
    env = {**world.env, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    code, screen = _session(env, ["chat", f"chat-{engine}", "--demo-tool", "--new"],
                            ["hi", "/tokens", WEATHER, "/reset", "/tokens", "/exit"])
    assert code == 0, screen[-2000:]
    dimmed = "".join(re.findall(r"\x1b\[2m(.*?)\x1b\[0m", screen, flags=re.S))
    assert dimmed.startswith("The user asks: hi."), screen[:600]  # the reasoning, and only it, dimmed
    assert "The user asks" not in ANSI.sub("", re.sub(r"\x1b\[2m.*?\x1b\[0m", "", screen, flags=re.S))
    assert f"{BOLD_CYAN}tool call get_weather (" in screen
    plain = ANSI.sub("", screen)
    assert re.search(r"\d+ tokens over 1 request: \d+ prompt, \d+ completion", plain), plain
    assert '"city": "Paris"' in plain
    assert "conversation reset" in plain and "no request yet in this conversation" in plain
    saved = world.home / "state" / "chat" / f"deployment-chat-{engine}.json"
    assert oct(saved.stat().st_mode & 0o777) == "0o600"
    assert json.loads(saved.read_text())["messages"] == []


def test_no_color_on_a_terminal_draws_no_colour(world: World) -> None:
    env = {**world.env, "TERM": "xterm-256color", "NO_COLOR": "1"}
    code, screen = _session(env, ["chat", "chat-vllm", "--demo-tool", "--new"], ["hi", WEATHER, "/exit"])
    assert code == 0, screen[-2000:]
    assert DIM not in screen and BOLD_CYAN not in screen and "\x1b[0m" not in screen
    assert "thinking: The user asks: hi." in screen and "answer: " in screen and "tool call get_weather" in screen


def test_ctrl_c_while_an_answer_streams_drops_it_and_the_chat_goes_on(world: World) -> None:
    """Ctrl-C during an answer (the engine holds the request, so it is mid-answer, not racing one):
    the answer and its question are dropped, the chat is back at the prompt, the next message gets a
    full answer, and the saved history holds only the answered turn."""
    sb = json.loads(world.run("sandbox", "status", "--json").stdout)
    admin = {"Authorization": f"Bearer {sb['api_key']}"}

    def held(_screen: str) -> bool:
        return int(httpx.get(sb["url"] + "/_sandbox/hold", headers=admin, timeout=10).json()["held"]) >= 1

    def release(_proc: object) -> bytes:
        httpx.post(sb["url"] + "/_sandbox/release", headers=admin, timeout=10).raise_for_status()
        return b"again\r"

    httpx.post(sb["url"] + "/_sandbox/hold", headers=admin, timeout=10).raise_for_status()
    try:
        run = run_on_pty({**world.env, "TERM": "dumb"}, ["chat", "chat-vllm", "--new"], size=(40, 120), steps=[
            prompted("you> ", 1, b"first question\r"),
            (held, lambda proc: os.kill(proc.pid, signal.SIGINT) or b""),  # what Ctrl-C sends
            (lambda screen: "interrupted" in screen and screen.count("you> ") >= 2, release),
            prompted("you> ", 3, b"/exit\r"),
        ])
    finally:
        httpx.post(sb["url"] + "/_sandbox/release", headers=admin, timeout=10)
    plain = ANSI.sub("", run.screen)
    assert run.code == 0 and run.answered == 4, plain[-2000:]
    assert "(interrupted: the answer was dropped)" in plain and "Traceback" not in plain
    after = plain[plain.index("(interrupted"):]
    assert "The user asks: again" in after, after  # the next message got its (reasoning and) answer
    saved = json.loads((world.home / "state" / "chat" / "deployment-chat-vllm.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant"] and saved[0]["content"] == "again", saved


def test_status_watch_on_sglang_without_metrics_reads_a_held_request_from_the_log(world: World) -> None:
    """Issue 13 §6 on this module's SGLang deployment (no --enable-metrics, like every shipped SGLang profile, so
    no /metrics): `status --watch` reads the scheduler's batch lines from the instance log, one Vast log fetch
    for the three refreshes. The request is held by the engine while the watch runs; once it is answered the
    watch reads idle."""
    import threading

    sb = json.loads(world.run("sandbox", "status", "--json").stdout)
    admin = {"Authorization": f"Bearer {sb['api_key']}"}
    httpx.post(sb["url"] + "/_sandbox/hold", headers=admin, timeout=10).raise_for_status()
    answered: list[subprocess.CompletedProcess[str]] = []
    asker = threading.Thread(target=lambda: answered.append(world.run("chat", "chat-sglang", "-m", "hi")))
    asker.start()
    try:
        wait_until(lambda: httpx.get(sb["url"] + "/_sandbox/hold", headers=admin, timeout=10).json()["held"] == 1
                   or None, "the engine to hold the request")
        out = world.run("status", "chat-sglang", "--watch", "--json", "--count", "3", "--interval", "0.05").stdout
        samples = [json.loads(line) for line in out.splitlines()]
        assert len(samples) == 3
        for s in samples:
            assert s["load_source"] == "log", s
            assert s["running"] is not None and s["running"] >= 1 and s["waiting"] == 0, s
            assert str(s["metrics_note"]).startswith("from the log: "), s
    finally:
        httpx.post(sb["url"] + "/_sandbox/release", headers=admin, timeout=10).raise_for_status()
        asker.join(HANG_S)
    assert [a.returncode for a in answered] == [0]
    # Idle: the watch's own /health probe makes SGLang prefill its one-token check (it does only when no
    # batch runs), and that line says idle at once, with no wait for the log to fall silent.
    [idle] = [json.loads(line) for line in world.run("status", "chat-sglang", "--watch", "--json", "--count", "1")
              .stdout.splitlines()]
    assert (idle["running"], idle["waiting"], idle["kv_cache_usage"], idle["load_source"]) == (0, 0, 0, "log"), idle
    assert str(idle["metrics_note"]).startswith("from the log: idle at "), idle
