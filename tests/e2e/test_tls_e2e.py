"""Issue 14 acceptance on the sandbox: an intercepted endpoint is refused, and pins work for --url targets.

The sandbox's simulated hosts serve TLS like the onstart script (their own key pair, the fingerprint on one
marked log line). ``tls_intercept`` makes the port present a different certificate: a man in the middle.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from glmdeploy.tls import MISMATCH_MESSAGE

from .conftest import LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e


def test_an_intercepted_endpoint_is_never_called_ready_and_never_receives_the_key(
    cli: Cli, sandbox: StartSandbox
) -> None:
    sb = sandbox(faults="tls_intercept")
    up = cli("up", "--profile", "2x5090", "--sandbox", "--yes", "--ttl", LONG_TTL)
    assert up.returncode == 9, up.stderr
    assert MISMATCH_MESSAGE in up.stderr and "ready:" not in up.stdout
    [instance] = sb.ledger()["instances"]
    assert instance["status"] == "destroyed"
    # glmdeploy did reach the port (the TLS handshake began) and stopped there: no request, so no key.
    assert instance["tls_handshakes"] >= 1
    assert instance["endpoint_requests"] == []
    [row] = json.loads(cli("list", "--json", check_exit=0).stdout)["deployments"]
    assert row["status"] == "failed" and row["endpoint"] is None


def test_url_targets_take_a_pin_or_a_ca_file_and_a_wrong_pin_is_exit_9(cli: Cli, sandbox: StartSandbox) -> None:
    sandbox()
    cli("up", "--profile", "2x5090", "--sandbox", "--yes", "--ttl", LONG_TTL, "--no-smoke", check_exit=0)
    status = json.loads(cli("status", "--json", check_exit=0).stdout)
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in cli("env", check_exit=0).stdout.splitlines()
    )
    base, key, bundle = exports["OPENAI_BASE_URL"], exports["OPENAI_API_KEY"], exports["SSL_CERT_FILE"]
    fingerprint = status["tls_fingerprint"]
    assert base.startswith("https://") and len(fingerprint) == 64
    target = ("--url", base, "--api-key", key, "--only", "models")
    cli("smoke", *target, "--pin", fingerprint, check_exit=0)
    cli("smoke", *target, "--ca-cert", bundle, check_exit=0)
    wrong = cli("smoke", *target, "--pin", "ab" * 32)
    assert wrong.returncode == 9 and MISMATCH_MESSAGE in wrong.stderr and key not in wrong.stderr
    bench = cli("bench", "--url", base, "--api-key", key, "--pin", "ab" * 32, "--num-prompts", "1")
    assert bench.returncode == 9 and MISMATCH_MESSAGE in bench.stderr
    # Without a pin or a CA file the self-signed certificate is not trusted: refused, never plain http.
    untrusted = cli("smoke", *target)
    assert untrusted.returncode != 0
    cli("destroy", "--yes", check_exit=0)
