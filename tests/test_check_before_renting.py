"""Issue 10 item 4: everything that can be checked before renting is checked before renting.

The CLI runs in-process (Typer's CliRunner) against a sandbox served from a thread; the sandbox's
request log shows what reached "Vast.ai". Order: a name clash, a missing key and a refused
confirmation are reported before any request; a wrong key is caught by one authenticated call before
the search (which needs no key, so it used to be noticed only at the create, with a false warning
that an instance may still be billing). A 401 on the create itself says nothing was rented.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from glmdeploy.sandbox.process import SandboxConfig, ThreadedSandbox, serve_in_thread

WRONG_KEY = "0" * 64


@pytest.fixture
def sb() -> Iterator[ThreadedSandbox]:
    with serve_in_thread(SandboxConfig(time_scale=0.001)) as sandbox:
        yield sandbox


def glm(*args: str) -> Any:
    from glmdeploy.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def vast_requests(sb: ThreadedSandbox) -> list[dict[str, Any]]:
    r = httpx.get(sb.url + "/_sandbox/requests", headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=10,
                  trust_env=False)
    r.raise_for_status()
    requests: list[dict[str, Any]] = r.json()["requests"]
    return requests


def error_lines(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_a_wrong_key_is_caught_before_the_search_and_nothing_is_said_to_bill(sb: ThreadedSandbox) -> None:
    result = glm("up", "-p", "4x3090", "--yes", "--api-url", sb.url, "--api-key", WRONG_KEY)
    assert result.exit_code == 6, result.stderr
    [line] = error_lines(result)
    assert "refused the API key" in line and "nothing was rented" in line
    assert "may still be billing" not in result.stderr and "destroy --orphans" not in result.stderr
    paths = [(r["method"], r["path"]) for r in vast_requests(sb)]
    assert paths == [("GET", "/api/v1/instances/")], paths  # one authenticated call, then nothing
    assert WRONG_KEY not in result.stderr + result.stdout


def test_a_401_on_create_says_plainly_that_nothing_was_rented(sb: ThreadedSandbox) -> None:
    import respx

    with respx.mock(assert_all_called=False) as mock:
        mock.put(url__regex=r".*/api/v0/asks/\d+/$").respond(
            401, json={"success": False, "error": "auth_error", "msg": "Invalid user key"})
        mock.route().pass_through()
        result = glm("up", "-p", "4x3090", "--yes", "--json", "--api-url", sb.url, "--api-key", sb.api_key)
    assert result.exit_code == 6, result.stderr
    [line] = error_lines(result)
    assert "nothing was rented" in line, line
    assert "may still be billing" not in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["code"] == "auth_error"
    listed = json.loads(glm("list", "--json", "--all", "--api-key", sb.api_key).stdout)
    assert [d["status"] for d in listed["deployments"]] == ["failed"]
    assert listed["orphans"] == []


def test_name_clash_missing_key_and_refusal_come_before_any_request_in_that_order(
    sb: ThreadedSandbox, isolated_env: Path
) -> None:
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        store.create(profile="4x3090", profile_snapshot={}, name="twin", api_url=sb.url)
    # All three wrong at once: the name clash is reported.
    clash = glm("up", "-p", "4x3090", "--name", "twin", "--api-url", sb.url)
    assert clash.exit_code == 2 and "already exists" in error_lines(clash)[0], clash.stderr
    # No clash, no key and no --yes: the missing key.
    nokey = glm("up", "-p", "4x3090", "--name", "other", "--api-url", sb.url)
    assert nokey.exit_code == 2 and "API key" in error_lines(nokey)[0], nokey.stderr
    # A key, but no --yes and no terminal to ask on: refused.
    refused = glm("up", "-p", "4x3090", "--name", "other", "--api-url", sb.url, "--api-key", WRONG_KEY)
    assert refused.exit_code == 2 and "without confirmation" in error_lines(refused)[0], refused.stderr
    for result in (clash, nokey, refused):
        assert len(error_lines(result)) == 1
    assert vast_requests(sb) == []  # none of them touched Vast.ai
