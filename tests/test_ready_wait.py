"""The ready-wait rule (readiness.ReadyWait) and the launch failure signatures, as pure logic (issue 9 item 4)."""

from __future__ import annotations

import pytest

from glmdeploy.engines import ENGINES, get_engine
from glmdeploy.engines.health import HealthReading, HealthState
from glmdeploy.readiness import ReadyWait, instance_failure, status_msg_failure

REFUSED = HealthReading(HealthState.REFUSED, "/health", detail="connection refused")
STARTING = HealthReading(HealthState.STARTING, "/health", status_code=503)
HEALTHY = HealthReading(HealthState.HEALTHY, "/health", status_code=200)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        # Recorded for vLLM 0.24.0 (real-vllm-0.24.0/argv-acceptance.txt).
        ("main.py: error: unrecognized arguments: --swap-space 16", "argparse_error"),
        ("main.py: error: unrecognized arguments: --disable-log-requests", "argparse_error"),
        ("launch_server.py: error: argument --tp-size: invalid int value: 'x'", "argparse_error"),
        ("api_server.py: error: the following arguments are required: --model_dir", "argparse_error"),
        ("/usr/bin/python3: No module named sglang.launch_server", "no_module"),
        ("ModuleNotFoundError: No module named 'vllm'", "no_module"),
        ("(APIServer pid=7) ModuleNotFoundError: No module named 'flashinfer'", "no_module"),
        ("bash: line 1: vllm: command not found", "command_not_found"),
        ("/root/onstart.sh: line 5: exec: vllm: not found", "command_not_found"),
    ],
)
def test_launch_failures_are_named_for_every_engine(line: str, kind: str) -> None:
    for engine in ENGINES.values():
        sig = engine.classify_failure(line)
        assert sig is not None and sig.kind == kind, (engine.kind, line)
        assert not sig.host_fault  # the image or the profile: another machine fails the same way


@pytest.mark.parametrize(
    "line",
    [
        "usage: main.py [-h] [-v]",  # the usage line alone says nothing yet
        "(APIServer pid=1) WARNING 12-02 19:45:44 [x.py:1] Failed to import with ModuleNotFoundError(\"No module "
        "named 'vllm._C'\")",  # a warning quoting an optional import is not fatal
        "(APIServer pid=7014) WARNING 12-02 19:45:44 [system_utils.py:299] Found ulimit of 20000 and failed to "
        "automatically increase with error current limit exceeds maximum limit.",  # recorded, harmless
    ],
)
def test_harmless_lines_are_not_failures(line: str) -> None:
    assert get_engine("vllm").classify_failure(line) is None


@pytest.mark.parametrize(
    ("msg", "kind", "host"),
    [
        ("Error response from daemon: manifest for x/y:nope not found: manifest unknown: manifest unknown",
         "manifest_unknown", False),
        ("pull access denied for private/image, repository does not exist or may require authorization",
         "image_pull", False),
        ("Error: container failed to start: OCI runtime create failed", "status_msg_error", True),
        ("docker_build() error writing dockerfile", "status_msg_error", True),
    ],
)
def test_error_looking_status_msg(msg: str, kind: str, host: bool) -> None:
    failure = status_msg_failure(7, "loading", msg)
    assert failure is not None and failure.kind == kind and failure.host_fault is host
    assert kind in failure.message and msg in failure.message


@pytest.mark.parametrize("msg", [None, "", "Pulling image vllm/vllm-openai:v0.24.0", "success, running x/ssh"])
def test_ordinary_status_msg_is_not_a_failure(msg: str | None) -> None:
    assert status_msg_failure(7, "loading", msg) is None
    assert instance_failure(7, "loading", msg) is None
    assert instance_failure(7, None, msg) is None  # null = provisioning (vast-api.md §6.5)


@pytest.mark.parametrize("state", ["exited", "offline", "unknown", "stopped"])
def test_dead_states(state: str) -> None:
    failure = instance_failure(7, state, None)
    assert failure is not None and failure.kind == f"instance_{state}" and failure.host_fault


def test_running_without_a_port_fails_on_the_second_look() -> None:
    rule = ReadyWait(get_engine("vllm"), container_port=8000)
    assert rule.feed_instance(7, "running", None, None) is None
    failure = rule.feed_instance(7, "running", None, None)
    assert failure is not None and failure.kind == "no_ports" and failure.host_fault


def test_a_port_that_shows_up_resets_the_count() -> None:
    rule = ReadyWait(get_engine("vllm"), container_port=8000)
    assert rule.feed_instance(7, "running", None, None) is None
    assert rule.feed_instance(7, "running", None, "http://h:1") is None
    assert rule.feed_instance(7, "running", None, None) is None


def test_refused_before_the_port_ever_answered_is_just_not_started() -> None:
    rule = ReadyWait(get_engine("vllm"), container_port=8000)
    for _ in range(5):
        rule.feed_logs("")
        assert rule.feed_health(REFUSED) is None  # vLLM refuses for the whole start (recorded: 125 s)


def test_engine_exit_is_a_port_that_answered_then_refuses_with_a_silent_log() -> None:
    rule = ReadyWait(get_engine("sglang"), container_port=8000)
    rule.feed_logs("[2026-12-03 10:00:00] INFO:     Application startup complete.\n")
    assert rule.feed_health(STARTING) is None
    # Our own probe's access-log line is not engine output.
    rule.feed_logs('[2026-12-03 10:00:00] INFO:     Application startup complete.\n'
                   '[2026-12-03 10:00:01] INFO:     127.0.0.1:5 - "GET /health HTTP/1.1" 503\n')
    failure = rule.feed_health(REFUSED)
    assert failure is not None and failure.kind == "engine_exited"
    assert "engine_exited" in failure.message and failure.excerpt


def test_a_port_that_refuses_while_the_log_moves_is_not_yet_an_exit() -> None:
    rule = ReadyWait(get_engine("sglang"), container_port=8000)
    rule.feed_logs("a\n")
    assert rule.feed_health(STARTING) is None
    rule.feed_logs("a\nb\n")
    assert rule.feed_health(REFUSED) is None  # new output: something still runs (a restart, a reload)
    rule.feed_logs("a\nb\n")
    failure = rule.feed_health(REFUSED)
    assert failure is not None and failure.kind == "engine_exited"


def test_health_rules_belong_to_the_engine() -> None:
    assert get_engine("sglang").read_health(503) is HealthState.STARTING  # warmup (engines.md §2.5)
    # vLLM has no 503 phase before ready (recorded); a 503 is a broken engine.
    assert get_engine("vllm").read_health(503) is HealthState.UNHEALTHY
    assert get_engine("lightllm").read_health(502) is HealthState.STARTING  # nginx before the engine is up
    assert all(e.read_health(200) is HealthState.HEALTHY for e in ENGINES.values())
    assert HEALTHY.healthy and HEALTHY.port_answers and not REFUSED.port_answers
