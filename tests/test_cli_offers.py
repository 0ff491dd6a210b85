"""``glmdeploy offers`` through the CLI, against a respx double of ``POST /api/v0/bundles/``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from typer.testing import CliRunner

from glmdeploy.cli import app

runner = CliRunner()
BUNDLES = "https://console.vast.ai/api/v0/bundles/"
KEY = "vast-test-key-7f3a9c"


def offer(id_: int, dph: float, *, rel: float = 0.99, down: float = 1000, gpu: str = "H200", n: int = 1,
          **extra: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "ask_contract_id": id_,
        "machine_id": id_ * 10,
        "gpu_name": gpu,
        "num_gpus": n,
        "dph_total": dph,
        "reliability": rel,
        "inet_down": down,
        "cuda_max_good": 12.8,
        "geolocation": "Oregon, US",
        "direct_port_count": 20,
        "verification": "verified",
        **extra,
    }


# Server order is cheapest first (as the query asks); the best score is not the cheapest.
MARKET = [
    offer(101, 2.10, rel=0.86, down=120),  # cheapest, flaky host, ~69 min to fetch 62.4 GB
    offer(102, 2.40, rel=0.995, down=2000),  # a little dearer, solid and fast
    offer(103, 3.90, rel=0.97, down=800),
    offer(104, 2.30, rel=0.99, down=900, gpu="H200 NVL"),
]


@pytest.fixture
def vast() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


def invoke(*args: str, key: str | None = KEY) -> Any:
    env = {"VAST_API_KEY": key} if key else {}
    return runner.invoke(app, ["offers", *args], env=env)


def test_json_is_best_score_first_not_cheapest_first(vast: respx.MockRouter) -> None:
    route = vast.post(BUNDLES).mock(return_value=httpx.Response(200, json={"offers": MARKET}))
    result = invoke("--profile", "h200", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == [102, 104, 103, 101]
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        for field in ("id", "gpu_name", "num_gpus", "dph_total", "reliability", "inet_down", "score"):
            assert field in row
        assert 0 <= row["score"] <= 100
    assert rows[0]["download_minutes"] == pytest.approx(62.4 * 8000 / 2000 / 60, abs=0.1)

    # What was asked: the profile's hardware under its own cap, with the key only in the header.
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in str(request.url)
    body = json.loads(request.content)
    assert body["gpu_name"] == {"in": ["H200", "H200 NVL"]}
    assert body["num_gpus"] == {"eq": 1}
    assert body["dph_total"] == {"lte": 4.5}
    assert body["limit"] >= 64
    assert KEY not in result.stdout + result.stderr


def test_table_lists_offers_in_score_order(vast: respx.MockRouter) -> None:
    vast.post(BUNDLES).mock(return_value=httpx.Response(200, json={"offers": MARKET}))
    result = invoke("--profile", "h200")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for header in ("score", "$/h", "GPU", "reliability", "inet_down", "download", "CUDA", "location"):
        assert header in out
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["102", "104", "103", "101"]  # the key column leads
    assert "2.400" in out and "1x H200" in out and "Oregon, US" in out and "2,000 Mbit/s" in out
    assert "4 offer(s) for profile h200 at or under $4.50/h" in result.stderr
    assert "offer(s)" not in out


def test_limit_and_max_price(vast: respx.MockRouter) -> None:
    route = vast.post(BUNDLES).mock(return_value=httpx.Response(200, json={"offers": MARKET}))
    result = invoke("--profile", "h200", "--json", "--limit", "2", "--max-price", "2.5")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    # 103 costs 3.90 $/h: above the cap, so gone even though the server sent it.
    assert [r["id"] for r in rows] == [102, 104]
    assert json.loads(route.calls.last.request.content)["dph_total"] == {"lte": 2.5}


def test_offers_for_other_hardware_are_dropped(vast: respx.MockRouter) -> None:
    wrong = [offer(201, 1.0, gpu="A100 SXM4"), offer(202, 1.2, n=2), offer(203, 3.0)]
    vast.post(BUNDLES).mock(return_value=httpx.Response(200, json={"offers": wrong}))
    result = invoke("--profile", "h200", "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in json.loads(result.stdout)] == [203]


@pytest.mark.parametrize("market", [[], [offer(301, 5.0), offer(302, 4.6)]])
def test_nothing_under_the_cap_exits_3(vast: respx.MockRouter, market: list[dict[str, Any]]) -> None:
    vast.post(BUNDLES).mock(return_value=httpx.Response(200, json={"offers": market}))
    result = invoke("--profile", "h200", "--json")
    assert result.exit_code == 3
    assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    assert first == "error: no offer matches profile 'h200' at or under $4.50/h"
    assert "Traceback" not in result.output


def test_cap_from_option_is_named(vast: respx.MockRouter) -> None:
    vast.post(BUNDLES).mock(return_value=httpx.Response(200, json={"offers": MARKET}))
    result = invoke("--profile", "h200", "--max-price", "1.25")
    assert result.exit_code == 3
    assert "at or under $1.25/h" in result.stderr


def test_no_api_key_exits_2_without_calling_vast(vast: respx.MockRouter) -> None:
    route = vast.post(BUNDLES).mock(return_value=httpx.Response(200, json={"offers": MARKET}))
    result = invoke("--profile", "h200", key=None)
    assert result.exit_code == 2
    assert "no Vast.ai API key" in result.stderr
    assert not route.called


def test_refused_key_exits_6_and_never_echoes_it(vast: respx.MockRouter) -> None:
    vast.post(BUNDLES).mock(
        return_value=httpx.Response(401, json={"success": False, "error": "auth_error", "msg": "Invalid user key"})
    )
    result = invoke("--profile", "h200", "--json")
    assert result.exit_code == 6
    assert "refused the API key" in result.stderr
    assert KEY not in result.output
    assert result.stdout == ""


def test_api_url_option_picks_the_server(vast: respx.MockRouter) -> None:
    other = vast.post("http://127.0.0.1:9/api/v0/bundles/").mock(
        return_value=httpx.Response(200, json={"offers": MARKET[:1]})
    )
    result = invoke("--profile", "h200", "--json", "--api-url", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.stderr
    assert other.called
    assert [r["id"] for r in json.loads(result.stdout)] == [101]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "nope"], "unknown profile 'nope'"),
        (["--profile", "h200", "--max-price", "0"], "'--max-price': must be a positive"),
        (["--profile", "h200", "--max-price", "inf"], "'--max-price': must be a positive"),
        (["--profile", "h200", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_exits_2(vast: respx.MockRouter, args: list[str], message: str) -> None:
    route = vast.post(BUNDLES).mock(return_value=httpx.Response(200, json={"offers": MARKET}))
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not route.called


# --- against the sandbox's Vast API over 127.0.0.1 ---------------------------------------------


@pytest.fixture
def sandbox_api() -> Iterator[Any]:
    from glmdeploy.sandbox.process import serve_in_thread

    with serve_in_thread() as served:
        yield served


@pytest.mark.e2e
def test_ranks_the_sandbox_market(sandbox_api: Any) -> None:
    from glmdeploy.profiles import load_profile

    hardware = load_profile("4x3090").hardware
    args = ("--profile", "4x3090", "--json", "--limit", "50", "--api-url", sandbox_api.url)
    result = runner.invoke(app, ["offers", *args, "--api-key", sandbox_api.api_key])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    for row in rows:
        assert row["gpu_name"] in hardware.gpu_names
        assert row["num_gpus"] == hardware.num_gpus
        assert row["dph_total"] <= hardware.max_price
        assert row["reliability"] >= hardware.min_reliability

    cheapest = min(r["dph_total"] for r in rows)
    capped = runner.invoke(
        app, ["offers", *args, "--api-key", sandbox_api.api_key, "--max-price", f"{cheapest / 2:.4f}"]
    )
    assert capped.exit_code == 3, capped.stderr
    assert "no offer matches profile '4x3090'" in capped.stderr


@pytest.fixture
def background_sandbox() -> Iterator[None]:
    from glmdeploy.sandbox.process import stop

    try:
        yield
    finally:
        stop()


@pytest.mark.e2e
def test_sandbox_flag_starts_the_sandbox_and_needs_no_key(background_sandbox: None) -> None:
    from glmdeploy.sandbox.process import running

    result = runner.invoke(app, ["offers", "--profile", "4x3090", "--sandbox", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)
    assert running() is not None
