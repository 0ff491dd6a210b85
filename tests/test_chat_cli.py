"""``glmdeploy chat --url`` through the CLI (CliRunner) against the three simulated engines on 127.0.0.1.

The REPL here reads a pipe (no terminal: no prompt, no colour); the terminal is tests/e2e/test_chat_e2e.py's.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app
from test_smoke_engines import KEY, Served, free_port, model_for, serve, spec_for

runner = CliRunner()
KINDS = ("sglang", "vllm", "lightllm")
REASONING_FIELD = {"sglang": "reasoning_content", "vllm": "reasoning", "lightllm": "reasoning"}
WEATHER = "What's the weather in Paris?"
ANSI = "\x1b["


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, Served]]:
    with serve(spec_for("sglang")) as s, serve(spec_for("vllm")) as v, serve(spec_for("lightllm")) as ll:
        yield {"sglang": s, "vllm": v, "lightllm": ll}


def chat(served: Served, kind: str, *args: str, input: str | None = None, key: str = KEY) -> Any:
    url = ["--url", served.url + "/v1", "--api-key", key, "--model", model_for(kind)]
    return runner.invoke(app, ["chat", *url, *args], input=input)


@pytest.mark.parametrize("kind", KINDS)
def test_one_message_answer_on_stdout_reasoning_on_stderr(engines: dict[str, Served], kind: str) -> None:
    result = chat(engines[kind], kind, "-m", "hi")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("thinking: The user asks: hi.")
    answer = result.stdout.strip()
    assert answer and "The user asks" not in answer and "</think>" not in answer
    assert ANSI not in result.stdout + result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_demo_tool_call_is_a_block_with_pretty_arguments(engines: dict[str, Served], kind: str) -> None:
    result = chat(engines[kind], kind, "--demo-tool", "-m", WEATHER)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tool call get_weather (") and lines[0].endswith(")")
    assert json.loads("\n".join(lines[1:])) == {"city": "Paris"}
    assert lines[1:] == ["  {", '    "city": "Paris"', "  }"]


@pytest.mark.parametrize("kind", KINDS)
def test_json_prints_the_raw_response(engines: dict[str, Served], kind: str) -> None:
    result = chat(engines[kind], kind, "--json", "-m", "hi")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"][REASONING_FIELD[kind]].startswith("The user asks: hi.")
    assert data["usage"]["completion_tokens"] > 0


def test_tools_file_offers_its_tools(engines: dict[str, Served], tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {
        "name": "lookup_stock", "description": "Look up the stock price of a company",
        "parameters": {"type": "object", "properties": {"company": {"type": "string"}}, "required": ["company"]}}}]))
    result = chat(engines["vllm"], "vllm", "--tools", str(tools), "-m", "What is the stock price of Nvidia?")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("tool call lookup_stock (")
    assert '"company": "Nvidia"' in result.stdout


def test_repl_commands_history_and_resume(engines: dict[str, Served], isolated_env: Path) -> None:
    script = "hello there\n/tokens\n/system Be brief.\n/nope\n" + WEATHER + "\n/tool {\"temp_c\": 12}\n/tokens\n/exit\n"
    result = chat(engines["sglang"], "sglang", "--demo-tool", input=script)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("chat with http://127.0.0.1:")
    assert "thinking: The user asks: hello there." in out and "\nanswer: " in out
    assert "tokens over 1 request: " in out  # /tokens after one answer
    assert "system prompt set" in out and "error: unknown command '/nope'" in out
    assert "tool call get_weather (call_" in out and "(the model waits for the result" in out
    assert "result sent for get_weather" in out
    assert "tokens over 3 requests: " in out  # the answer after the tool result is the third
    assert ANSI not in out
    files = list((isolated_env / "chat").iterdir())
    assert [f.name for f in files] == [f"url-127.0.0.1_{engines['sglang'].port}.json"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    saved = files[0].read_text()
    assert KEY not in saved
    history = json.loads(saved)
    assert history["system"] == "Be brief."
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant", "tool", "assistant"]

    again = chat(engines["sglang"], "sglang", input="/tokens\n/reset\n/tokens\n/exit\n")
    assert "resumed 6 messages" in again.stdout and "tokens over 3 requests" in again.stdout
    assert "conversation reset" in again.stdout and "no request yet" in again.stdout
    assert json.loads(files[0].read_text())["messages"] == []
    fresh = chat(engines["sglang"], "sglang", "--new", input="/exit\n")
    assert "resumed" not in fresh.stdout


def test_a_new_message_answers_a_pending_tool_call_as_not_run(engines: dict[str, Served], isolated_env: Path) -> None:
    result = chat(engines["vllm"], "vllm", "--demo-tool", input=WEATHER + "\nnever mind, say hi\n")
    assert result.exit_code == 0, result.output
    assert "(1 pending tool call(s) answered as not run)" in result.stdout
    history = json.loads(next((isolated_env / "chat").iterdir()).read_text())
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "tool", "user", "assistant"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--json"], "--json goes with -m TEXT"),
        (["-m", " "], "-m: the message is empty"),
        (["--tools", "/nonexistent/tools.json", "-m", "x"], "--tools: no such file"),
        (["--url", "ftp://x", "-m", "x"], "not an http(s) URL"),
        (["some-name", "--url", "http://127.0.0.1:1", "-m", "x"], "give either a deployment NAME or --url"),
        (["--model", "m", "-m", "x"], "--model goes with --url"),
        (["--max-tokens", "0", "-m", "x"], "Invalid value for '--max-tokens'"),
    ],
)
def test_bad_input_is_one_error_line_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["chat", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) in (1, 2) and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_tools_file_that_is_not_a_tools_array(tmp_path: Path) -> None:
    bad = tmp_path / "tools.json"
    for text, said in (("{", "is not JSON"), ('[{"name": "f"}]', "tool 1 is not")):
        bad.write_text(text)
        result = runner.invoke(app, ["chat", "--url", "http://127.0.0.1:1", "--tools", str(bad), "-m", "x"])
        assert result.exit_code == 2 and said in result.stderr, result.stderr


def test_no_deployment_is_exit_2() -> None:
    result = runner.invoke(app, ["chat", "-m", "hi"])
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.stderr


def test_unreachable_server_is_exit_7() -> None:
    result = runner.invoke(app, ["chat", "--url", f"http://127.0.0.1:{free_port()}", "--model", "m", "-m", "hi"])
    assert result.exit_code == 7, result.output
    assert result.stderr.startswith("error: cannot reach http://127.0.0.1:")


def test_wrong_key_is_exit_5_and_never_printed(engines: dict[str, Served]) -> None:
    wrong = "wrong-key-0123456789abcdef"
    result = chat(engines["vllm"], "vllm", "-m", "hi", key=wrong)
    assert result.exit_code == 5, result.output
    assert "answered HTTP 401" in result.stderr and "hint: check the key" in result.stderr
    assert wrong not in result.output


def test_a_closed_stdout_ends_quietly(engines: dict[str, Served]) -> None:
    served = engines["vllm"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "glmdeploy", "chat", "--url", served.url + "/v1", "--api-key", KEY,
         "--model", model_for("vllm"), "--no-thinking", "-m", "Write a long story about the sea."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader went away before the first byte (`chat ... | head -c0`)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert stderr == ""


def test_an_error_answer_in_the_repl_is_one_line_and_the_repl_goes_on(engines: dict[str, Served],
                                                                      isolated_env: Path) -> None:
    result = chat(engines["lightllm"], "lightllm", input="hi\n/tokens\n/exit\n", key="wrong-key-0123456789abcdef")
    assert result.exit_code == 0, result.output
    assert "error: chat completion: http://127.0.0.1:" in result.stdout and "answered HTTP 401" in result.stdout
    assert "no request yet in this conversation" in result.stdout  # /tokens still answered after the error
    assert not (isolated_env / "chat").exists()  # nothing answered, nothing saved


def _record(served: Served, profile_name: str, status: str = "ready") -> str:
    from glmdeploy.profiles import load_profile
    from glmdeploy.state import StateStore

    profile = load_profile(profile_name)
    with StateStore.open() as store:
        d = store.create(profile=profile.name, profile_snapshot=profile.model_dump(mode="json"),
                         endpoint_api_key=KEY, model=model_for("vllm"))
        store.update(d.id, status=status, endpoint=served.url + "/v1")
    return d.name


def test_a_deployment_whose_profile_has_no_parsers_gets_a_note(engines: dict[str, Served]) -> None:
    name = _record(engines["vllm"], "4x3090")
    result = runner.invoke(app, ["chat", name, "--demo-tool", "-m", "hi"])
    assert result.exit_code == 0, result.output
    assert "note: profile 4x3090 enables no reasoning parser: thinking arrives inline in content" in result.stderr
    assert "note: profile 4x3090 enables no tool-call parser" in result.stderr
    repl = runner.invoke(app, ["chat"], input="/exit\n")  # the only active deployment
    assert repl.stdout.startswith(f"chat with {name} (glm-4.7-flash, sglang)")
    assert "note: profile 4x3090 enables no reasoning parser" in repl.stdout
    assert "tool-call parser" not in repl.stdout  # no tools offered, nothing to say about them


def test_an_answer_cut_by_max_tokens_says_so(engines: dict[str, Served]) -> None:
    result = chat(engines["vllm"], "vllm", "--max-tokens", "3", "-m", "hi")
    assert result.exit_code == 0, result.output
    assert "note: the answer hit the length limit" in result.stderr


def test_a_server_that_accepts_but_never_answers_is_exit_7_within_the_timeout() -> None:
    import socket

    with socket.socket() as silent:  # listens, never accepts or answers: the kernel completes the connect
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = runner.invoke(app, ["chat", "--url", f"http://127.0.0.1:{port}", "--model", "m", "--timeout", "0.5",
                                     "-m", "hi"])
    assert result.exit_code == 7, result.output
    assert "no answer from http://127.0.0.1:" in result.stderr and "in 0.5 s" in result.stderr, result.stderr


def test_an_unreadable_history_is_one_line_exit_2(engines: dict[str, Served], isolated_env: Path) -> None:
    served = engines["vllm"]
    history = isolated_env / "chat" / f"url-127.0.0.1_{served.port}.json"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text("{not json")
    result = chat(served, "vllm", input="/exit\n")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: the chat history {history} is unreadable"), result.stderr
