"""Issue 13 §4 and §9: `up` says what it knows before it rents, and a "no" at the prompt is an answer."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import LONG_TTL, Sandbox
from .pty_screen import run_on_pty

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e
PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def test_dry_run_prints_offer_onstart_and_plan_and_rents_nothing(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    proc = cli("up", "-p", "4x3090", "--sandbox", "--dry-run", "--ttl", "2h", check_exit=0)
    out = proc.stdout
    assert out.startswith("offer:   ") and "/h: first hour $" in out and "download ~" in out and "TTL 2h00m" in out
    assert "onstart script:" in out and "python3 -m sglang.launch_server" in out
    assert "GLMDEPLOY_ENDPOINT_API_KEY=<generated at rent time" in out or "API_KEY=<generated at rent time" in out
    assert "plan:" in out and "dry run: nothing was rented" in out
    # the profile's warning, before anything would be confirmed
    assert "warning: profile 4x3090: The seed sizes context from MHA arithmetic" in proc.stderr
    as_json = json.loads(cli("up", "-p", "4x3090", "--sandbox", "--dry-run", "--json", check_exit=0).stdout)
    assert as_json["event"] == "dry_run" and as_json["offer"]["id"] and "exec " in as_json["onstart"]
    assert as_json["plan"]["fits"] is True
    ledger = sb.ledger()
    assert ledger["instances"] == []


def test_a_known_to_fail_warning_needs_force(cli: Cli, sandbox: StartSandbox, tmp_path: Path) -> None:
    sb = sandbox()
    text = (PROFILES / "4x3090.yaml").read_text()
    assert "\nwarnings:\n" in text
    text = text.replace("\nwarnings:\n", '\nwarnings:\n  - "Known to fail: this image crashes at its first request."\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("name: 4x3090", "name: bad-4x3090"))
    refused = cli("up", "-p", str(bad), "--sandbox", "--dry-run", check_exit=2)
    assert refused.stderr.startswith("error: profile ") and "Known to fail" in refused.stderr
    assert "--force" in refused.stderr
    forced = cli("up", "-p", str(bad), "--sandbox", "--dry-run", "--force", check_exit=0)
    assert "known to fail" in forced.stderr.lower() and "dry run: nothing was rented" in forced.stdout
    assert sb.ledger()["instances"] == []


def test_up_lists_the_smoke_checks_it_ran_and_skipped(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    up = cli("up", "-p", "4x3090", "--sandbox", "--ttl", LONG_TTL, check_exit=0)
    assert "  smoke:    passed health, auth, models, chat, stream" in up.stdout
    assert "not run by up: reasoning, tools, max_tokens" in up.stdout
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []


def test_declining_the_rent_prompt_is_an_answer_not_an_interrupt(
    cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    sb = sandbox()
    args = ["up", "-p", "4x3090", "--api-url", sb.url, "--api-key", sb.api_key, "--ttl", "3h"]
    run = run_on_pty(cli_env, args, answers=(b"[y/N]", [b"n\n"]))
    code, text, answered = run.code, run.screen, run.answered
    assert answered, text
    prompt = text[: text.index("[y/N]")].rsplit("Rent offer", 1)[1]
    assert "first hour $" in prompt and "download ~" in prompt and "TTL 3h00m" in prompt
    assert code == 0, text
    assert "declined: nothing was rented" in text and "interrupted" not in text
    assert sb.ledger()["instances"] == []
