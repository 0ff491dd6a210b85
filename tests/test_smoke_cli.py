"""``glmdeploy smoke`` through the CLI (CliRunner): targets, --json, --junit, --skip/--only, exit codes.

The servers are simulated engines on 127.0.0.1 (see ``test_smoke_engines.serve``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.onstart import OnstartOptions, render
from glmdeploy.profiles import load_profile
from glmdeploy.sandbox.engines import launch_spec_from
from glmdeploy.smoke import CHECK_NAMES
from glmdeploy.state import StateStore
from test_smoke_engines import KEY, MODEL, Served, serve, spec_for

# These in-process tests speak plain http to the simulated engine; TLS has its own tests (test_tls_*).
PLAIN_HTTP = OnstartOptions(tls=False)

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, ["smoke", *args], env=env)


@pytest.fixture(scope="module")
def vllm() -> Iterator[Served]:
    with serve(spec_for("vllm")) as served:
        yield served


def url_args(served: Served, *extra: str) -> list[str]:
    return ["--url", served.url + "/v1", "--api-key", KEY, "--model", MODEL, *extra]


def test_json_has_exactly_the_documented_shape(vllm: Served) -> None:
    result = invoke(*url_args(vllm, "--json", "--engine", "vllm"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert [c["name"] for c in data["checks"]] == list(CHECK_NAMES)
    for check in data["checks"]:
        assert {"name", "passed", "duration_ms", "detail", "status"} <= set(check)
        assert isinstance(check["duration_ms"], float) and isinstance(check["detail"], str)
        assert check["passed"] is True and check["status"] == "passed"
    stream = next(c for c in data["checks"] if c["name"] == "stream")
    assert stream["ttft_ms"] >= 0
    assert KEY not in result.stdout and KEY not in result.stderr


def test_junit_report(vllm: Served, tmp_path: Path) -> None:
    path = tmp_path / "reports" / "smoke.xml"
    result = invoke(*url_args(vllm, "--junit", str(path), "--skip", "max_tokens"))
    assert result.exit_code == 0, result.output
    root = ET.parse(path).getroot()
    [suite] = root.findall("testsuite")
    assert suite.get("name") == "glmdeploy.smoke"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("7", "0", "0")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [n for n in CHECK_NAMES if n != "max_tokens"]
    assert all(c.get("classname") == "glmdeploy.smoke" and float(c.get("time") or -1) >= 0 for c in cases)
    assert not list(root.iter("failure"))


def test_a_failing_check_exits_5_with_a_failure_element(tmp_path: Path) -> None:
    path = tmp_path / "smoke.xml"
    with serve(spec_for("sglang"), {"broken_tool_parser": None}) as served:
        result = invoke(*url_args(served, "--json", "--junit", str(path)))
    assert result.exit_code == 5, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is False
    assert [c["name"] for c in data["checks"] if not c["passed"]] == ["tools"]
    assert "error: smoke checks failed: tools" in result.stderr
    root = ET.parse(path).getroot()
    failures = {c.get("name"): c.find("failure") for c in root.iter("testcase")}
    assert [name for name, f in failures.items() if f is not None] == ["tools"]
    tools_failure = failures["tools"]
    assert tools_failure is not None and "arguments are not JSON" in (tools_failure.get("message") or "")
    assert root.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]


def test_table_output_on_stdout_progress_on_stderr(vllm: Served) -> None:
    result = invoke(*url_args(vllm, "--only", "health,chat", "--only", "stream"))
    assert result.exit_code == 0, result.output
    for name in ("health", "chat", "stream"):
        assert name in result.stdout
    assert "PASS" in result.stdout and "models" not in result.stdout
    assert "PASS stream" in result.stderr  # one progress line per check when stderr is not a terminal
    assert "smoke checks passed (3 passed, 0 skipped)" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["--skip", "helth"], ["--only", "chat", "--only", "tool"], ["--only", "chat", "--skip", "chat"],
     ["--engine", "tgi"], ["--timeout", "0"]],
)
def test_bad_check_names_and_values_exit_2(vllm: Served, args: list[str]) -> None:
    result = invoke(*url_args(vllm, *args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_an_unwritable_junit_path_exits_2_before_any_request(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for path in (tmp_path, blocker / "sub" / "smoke.xml"):
        # The URL is unreachable: had the checks run, the exit would be 5.
        result = invoke("--url", "http://127.0.0.1:9", "--junit", str(path))
        assert result.exit_code == 2, result.output
        assert "--junit" in result.stderr


def test_bad_urls_exit_2() -> None:
    for url in ("ftp://x/v1", "not a url", "http://user:pw@127.0.0.1:1/v1"):
        result = invoke("--url", url)
        assert result.exit_code == 2, (url, result.output)
        assert "pw" not in result.stderr


def test_without_a_deployment_or_url_exit_2() -> None:
    result = invoke()
    assert result.exit_code == 2
    assert "no active deployment" in result.stderr


def test_the_key_can_come_from_the_environment(vllm: Served) -> None:
    result = invoke("--url", vllm.url, "--only", "models", "--json", env={"OPENAI_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)["checks"][0]["detail"]
    assert detail == "lists glm-4.7-flash; using glm-4.7-flash (no model given)"


def test_an_unreachable_url_fails_every_check_with_the_reason() -> None:
    from test_smoke_engines import free_port

    result = invoke("--url", f"http://127.0.0.1:{free_port()}", "--api-key", "k", "--json")
    assert result.exit_code == 7  # unreachable, like Vast.ai unreachable: not "smoke checks failed"
    data = json.loads(result.stdout)
    assert all(not c["passed"] and "cannot connect" in c["detail"] for c in data["checks"])


# ------------------------------------------------------------------------ deployment targets


def record(profile_name: str, served: Served, key: str = KEY, model: str | None = None) -> str:
    profile = load_profile(profile_name)
    from glmdeploy.engines import get_engine

    with StateStore.open() as store:
        d = store.create(
            profile=profile.name, profile_snapshot=profile.model_dump(mode="json"), endpoint_api_key=key,
            model=model or get_engine(profile.engine.kind).reported_model_name(profile),
        )
        store.update(d.id, status="ready", endpoint=served.url + "/v1")
    return d.name


@pytest.mark.parametrize("profile_name", ["4x3090", "2x5090", "h200"])
def test_a_deployment_is_smoked_with_its_profile_in_mind(profile_name: str) -> None:
    """4x3090 (SGLang) enables no reasoning nor tool parser: those two are skipped, and say why."""
    profile = load_profile(profile_name)
    spec = launch_spec_from(profile.engine.image, render(profile, PLAIN_HTTP), {"GLM_API_KEY": KEY})
    assert spec is not None
    with serve(spec) as served:
        name = record(profile_name, served)
        result = invoke("--json")
        named = invoke(name, "--json", "--only", "models")
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    skipped = {n for n, c in checks.items() if c["status"] == "skipped"}
    if profile_name == "4x3090":
        assert skipped == {"reasoning", "tools"}
        assert checks["reasoning"]["detail"] == (
            "profile 4x3090 enables no reasoning parser: thinking arrives inline in content"
        )
        assert checks["reasoning"]["passed"] is True
    else:
        assert skipped == set()
    assert all(c["passed"] for c in checks.values())
    assert named.exit_code == 0 and json.loads(named.stdout)["checks"][0]["passed"]


def test_model_and_engine_options_belong_to_url_mode(vllm: Served) -> None:
    record("2x5090", vllm)
    result = invoke("--model", "x")
    assert result.exit_code == 2
    assert "--model and --engine go with --url" in result.stderr


def test_an_unknown_deployment_name_exits_2() -> None:
    result = invoke("nope")
    assert result.exit_code == 2
    assert "unknown deployment 'nope'" in result.stderr
