"""Issue 13 §2: at 80 columns no key column is cut, in `profiles list`, `offers` and `list`; `-o wide`
shows every column; `list` has a totals row; `profiles list` says whether tools and reasoning work."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from .conftest import LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e


def _narrow(cli_env: dict[str, str]) -> None:
    cli_env["COLUMNS"] = "80"


def _lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.strip()]


def test_profiles_list_at_80_columns_keeps_every_name_and_shows_tools_and_reasoning(
    cli: Cli, cli_env: dict[str, str]
) -> None:
    _narrow(cli_env)
    names = [p["name"] for p in json.loads(cli("profiles", "list", "--json", check_exit=0).stdout)]
    out = cli("profiles", "list", check_exit=0).stdout
    lines = _lines(out)
    assert all(len(line) <= 80 for line in lines), out
    header = lines[0].split()
    assert header[:2] == ["name", "engine"] and "tools" in header and "reasoning" in header
    assert [line.split()[0] for line in lines[1:]] == names  # whole names, no ellipsis
    assert "…" not in out
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert by_name["4x3090"].split()[-2:] == ["no", "no"]  # SGLang profile without parsers
    assert by_name["2x5090"].split()[-2:] == ["yes", "yes"]
    wide = cli("profiles", "list", "-o", "wide", check_exit=0).stdout
    assert "source" in _lines(wide)[0] and "context" in _lines(wide)[0] and "model" in _lines(wide)[0]


def test_offers_at_80_columns_keeps_the_offer_id(cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox) -> None:
    sandbox()
    _narrow(cli_env)
    ids = [str(o["id"]) for o in json.loads(
        cli("offers", "-p", "4xh200-glm47-fp8-mtp", "--sandbox", "--json", check_exit=0).stdout)]
    out = cli("offers", "-p", "4xh200-glm47-fp8-mtp", "--sandbox", check_exit=0).stdout
    lines = _lines(out)
    assert all(len(line) <= 80 for line in lines), out
    assert lines[0].split()[:2] == ["offer", "id"]
    assert [line.split()[0] for line in lines[1:]] == ids
    assert "…" not in out and "location" not in lines[0]  # a low-value column went first
    wide = _lines(cli("offers", "-p", "4xh200-glm47-fp8-mtp", "--sandbox", "-o", "wide", check_exit=0).stdout)
    assert "location" in wide[0] and "CUDA" in wide[0]


def test_list_at_80_columns_keeps_names_and_status_and_totals_the_cost(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    sb = sandbox()
    for name in ("glm-h200-eval-run-one", "glm-h200-eval-run-two"):
        cli("up", "-p", "h200", "--sandbox", "--ttl", LONG_TTL, "--no-smoke", "--name", name, check_exit=0)
    _narrow(cli_env)
    out = cli("list", "--sandbox", check_exit=0).stdout
    lines = _lines(out)
    assert all(len(line) <= 80 for line in lines), out
    assert lines[0].split()[:4] == ["name", "status", "$/h", "spent"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert {"glm-h200-eval-run-one", "glm-h200-eval-run-two", "total"} <= set(rows)
    assert rows["glm-h200-eval-run-one"].split()[1] == "ready"
    listed = json.loads(cli("list", "--sandbox", "--json", check_exit=0).stdout)["deployments"]
    total = sum(d["dph_total"] for d in listed)
    assert rows["total"].split()[1] == f"{total:.3f}"
    assert rows["total"].split()[2].startswith("$")
    wide = _lines(cli("list", "--sandbox", "-o", "wide", check_exit=0).stdout)
    assert all(h in wide[0] for h in ("endpoint", "instance", "profile", "expires"))
    cli("destroy", "glm-h200-eval-run-one", "--yes", check_exit=0)
    cli("destroy", "glm-h200-eval-run-two", "--yes", check_exit=0)
    assert sb.running() == []
