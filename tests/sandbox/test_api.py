"""The sandbox answers Vast's paths with Vast's codes and bodies (shared/reference/vast-api.md)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e


# ---------------- search ----------------


def test_search_filters_orders_limits_and_prices_storage(vast: Any) -> None:
    query = {"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"eq": 1}, "rentable": {"eq": True},
             "order": [["dph_total", "asc"]], "limit": 3, "allocated_storage": 100}
    response = vast.http.post("/api/v0/bundles/", json=query)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"  # the CLI rejects anything else
    offers = response.json()["offers"]
    assert 1 <= len(offers) <= 3
    assert all(o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1 for o in offers)
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)
    for offer in offers:
        assert offer["dph_total"] == pytest.approx(offer["dph_base"] + offer["storage_cost"] * 100 / 720, abs=1e-5)


def test_allocated_storage_changes_dph_total(vast: Any) -> None:
    base = {"id": {"eq": vast.first_offer()["id"]}}
    small = vast.search({**base, "allocated_storage": 10})[0]
    large = vast.search({**base, "allocated_storage": 1000})[0]
    assert large["dph_total"] > small["dph_total"]
    assert large["dph_base"] == small["dph_base"]


def test_string_values_are_coerced_like_the_server(vast: Any) -> None:
    # The official CLI sends {"eq": "1"} for num_gpus=1 (vast-api.md §4.4).
    as_strings = vast.search({"num_gpus": {"eq": "4"}, "gpu_name": {"eq": "RTX 3090"}, "verified": {"eq": "true"},
                              "cuda_max_good": {"gte": "12.2"}})
    as_numbers = vast.search({"num_gpus": {"eq": 4}, "gpu_name": {"eq": "RTX 3090"}, "verified": {"eq": True},
                              "cuda_max_good": {"gte": 12.2}})
    assert as_strings and [o["id"] for o in as_strings] == [o["id"] for o in as_numbers]


@pytest.mark.parametrize(
    ("field", "condition", "check"),
    [
        ("num_gpus", {"neq": 1}, lambda o: o["num_gpus"] != 1),
        ("gpu_ram", {"gt": 81559}, lambda o: o["gpu_ram"] > 81559),
        ("gpu_ram", {"gte": 81559}, lambda o: o["gpu_ram"] >= 81559),
        ("dph_base", {"lt": 0.3}, lambda o: o["dph_base"] < 0.3),
        ("dph_base", {"lte": 0.3}, lambda o: o["dph_base"] <= 0.3),
        ("gpu_name", {"in": ["H200", "MI300X"]}, lambda o: o["gpu_name"] in ("H200", "MI300X")),
        ("gpu_name", {"notin": ["RTX 3090", "RTX 4090"]}, lambda o: o["gpu_name"] not in ("RTX 3090", "RTX 4090")),
        ("geolocation", {"in": ["US", "CA"]}, lambda o: o["geolocation"].endswith((", US", ", CA"))),
        ("direct_port_count", {"eq": 0}, lambda o: o["direct_port_count"] == 0),
    ],
)
def test_each_operator(vast: Any, field: str, condition: dict[str, Any], check: Any) -> None:
    offers = vast.search({field: condition, "limit": 1000})
    assert offers, f"{field} {condition} matched nothing"
    assert all(check(o) for o in offers)
    everything = vast.search({"limit": 1000})
    assert len(offers) < len(everything)


def test_search_get_with_q_and_put_search_asks(vast: Any) -> None:
    query = {"gpu_name": {"eq": "H200"}, "order": [["dph_total", "asc"]], "limit": 5}
    posted = [o["id"] for o in vast.search(query)]
    got = vast.http.get("/api/v0/bundles/", params={"q": json.dumps(query)})
    put = vast.http.put("/api/v0/search/asks/", json={"select_cols": ["*"], "q": query})
    assert got.status_code == put.status_code == 200
    assert [o["id"] for o in got.json()["offers"]] == posted == [o["id"] for o in put.json()["offers"]]


def test_search_needs_no_key(sandbox: Any, client_for: Any) -> None:
    anonymous = client_for(sandbox, api_key=None)
    assert anonymous.search({"limit": 2})


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", json.dumps({"num_gpus": 1}).encode(), json.dumps({"num_gpus": {"approx": 1}}).encode(),
     json.dumps({"type": "spot"}).encode(), json.dumps({"num_gpus": {"eq": "many"}}).encode()],
)
def test_malformed_search_is_400_invalid_args(vast: Any, body: bytes) -> None:
    response = vast.http.post("/api/v0/bundles/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["success"] is False and response.json()["error"] == "invalid_args"
    assert response.json()["msg"]


# ---------------- create ----------------


def test_create_returns_contract_and_instance_key_and_rents_the_offer(vast: Any) -> None:
    offer = vast.first_offer(gpu_name="H100 SXM")
    response = vast.create(offer["id"], label="glmdeploy-test", onstart="echo hi")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and isinstance(body["new_contract"], int) and len(body["instance_api_key"]) >= 32
    # The offer is gone from rentable searches and cannot be rented twice.
    assert offer["id"] not in [o["id"] for o in vast.search({"rentable": {"eq": True}, "limit": 1000})]
    again = vast.create(offer["id"])
    assert again.status_code == 404 and again.json()["error"] == "no_such_ask"
    ledger = vast.ledger()
    assert [r["offer_id"] for r in ledger["instances"]] == [offer["id"]]


def test_create_on_unknown_offer_is_404_no_such_ask(vast: Any) -> None:
    response = vast.create(1)
    assert response.status_code == 404
    assert response.json() | {"ask_id": 1} == {
        "success": False, "error": "no_such_ask", "ask_id": 1,
        "msg": "error 404/3603: no_such_ask Instance type by id 1 is not available."}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"image": ""}, "invalid_args"),
        ({"image": None}, "invalid_args"),
        ({"env": ["-p 8000:8000"]}, "invalid_args"),
        ({"disk": "lots"}, "invalid_args"),
        ({"label": "x" * 257}, "invalid_args"),
        ({"onstart": "x" * 4097}, "invalid_args"),
        ({"runtype": "teleport"}, "invalid_args"),
        ({"use_ssh": True}, "invalid_args"),
        ({"price": 500}, "invalid_price"),
        ({"disk": 1_000_000}, "invalid_args"),
    ],
)
def test_malformed_create_is_400(vast: Any, body: dict[str, Any], error: str) -> None:
    response = vast.create(vast.first_offer()["id"], **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error and response.json()["success"] is False
    assert vast.ledger()["instances"] == []


def test_create_with_non_json_body_and_bad_id(vast: Any) -> None:
    offer_id = vast.first_offer()["id"]
    assert vast.http.put(f"/api/v0/asks/{offer_id}/", content=b"{oops").status_code == 400
    bad = vast.http.put("/api/v0/asks/abc/", json={"image": "x"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_args"


def test_env_as_docker_flag_string_is_silently_ignored(vast: Any) -> None:
    # vast-api.md §5.2 / §11.8: a "-e ..." string does nothing; no port gets mapped.
    instance_id = vast.rent(env="-e FOO=bar -p 8000:8000")
    row = vast.wait_status(instance_id, "running")
    assert row["extra_env"] == [] and "8000/tcp" not in row["ports"]


# ---------------- show / lifecycle ----------------


def test_lifecycle_created_loading_running_with_ports(vast: Any) -> None:
    offer = vast.first_offer()
    instance_id = vast.create(offer["id"], env={"-p 8000:8000": "1", "HF_HOME": "/workspace/hf"},
                              label="lc").json()["new_contract"]
    first = vast.show(instance_id)
    assert first["actual_status"] in ("created", "loading") and first["ports"] is None
    row = vast.wait_status(instance_id, "running")
    assert row["intended_status"] == "running" and row["cur_state"] == "running"
    assert row["public_ipaddr"] == "127.0.0.1"
    assert row["status_msg"].startswith("success, running")
    host_port = row["ports"]["8000/tcp"][0]["HostPort"]
    assert isinstance(host_port, str) and 0 < int(host_port) < 65536
    assert row["ports"]["8000/tcp"][0]["HostIp"] == "0.0.0.0"
    assert "22/tcp" in row["ports"]
    assert ["-p 8000:8000", "1"] in row["extra_env"] and ["HF_HOME", "/workspace/hf"] in row["extra_env"]
    assert row["machine_id"] == offer["machine_id"] and row["gpu_name"] == offer["gpu_name"]
    assert row["num_gpus"] == offer["num_gpus"] and row["label"] == "lc"
    assert row["image_uuid"] and isinstance(row["start_date"], float) and row["dph_total"] > 0


def test_show_unknown_instance_is_instances_null_and_bad_id_400(vast: Any) -> None:
    response = vast.http.get("/api/v0/instances/999/")
    assert response.status_code == 200 and response.json() == {"instances": None}
    assert vast.http.get("/api/v0/instances/nope/").status_code == 400


def test_v0_list_is_gone(vast: Any) -> None:
    response = vast.http.get("/api/v0/instances/")
    assert response.status_code == 410
    assert response.json() == {"success": False, "error": "deprecated_endpoint",
                               "msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead."}


# ---------------- v1 list ----------------


def _page(vast: Any, **params: Any) -> httpx.Response:
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    response: httpx.Response = vast.http.get("/api/v1/instances/", params=encoded)
    return response


def test_v1_list_paginates_25_with_next_token(vast: Any) -> None:
    offers = vast.search({"rentable": {"eq": True}, "limit": 30, "order": [["dph_total", "asc"]]})
    ids = []
    for index, offer in enumerate(offers[:27]):
        response = vast.create(offer["id"], label="even" if index % 2 == 0 else None)
        ids.append(response.json()["new_contract"])
    first = _page(vast, limit=100)
    assert first.status_code == 200
    data = first.json()
    assert data["success"] is True and len(data["instances"]) == 25 == data["instances_found"]
    assert data["total_instances"] == 27 and data["next_token"]
    assert data["label_counts"] == {"even": 14, "": 13}
    second = _page(vast, limit=25, after_token=data["next_token"]).json()
    assert second["next_token"] is None and len(second["instances"]) == 2
    seen = [r["id"] for r in data["instances"] + second["instances"]]
    assert seen == sorted(ids)
    # limit <= 0 means 5
    assert len(_page(vast, limit=0).json()["instances"]) == 5


def test_v1_list_filters_and_orders(vast: Any) -> None:
    a = vast.rent(label="alpha")
    b = vast.rent(label="beta")
    c = vast.rent()
    by_label = _page(vast, select_filters={"label": {"eq": "alpha"}}).json()
    assert [r["id"] for r in by_label["instances"]] == [a]
    unlabelled = _page(vast, select_filters={"label": {"in": [None]}}).json()
    assert [r["id"] for r in unlabelled["instances"]] == [c]
    desc = _page(vast, order_by=[{"col": "id", "dir": "desc"}]).json()
    assert [r["id"] for r in desc["instances"]] == sorted([a, b, c], reverse=True)
    vast.wait_status(a, "running")
    running = _page(vast, select_filters={"actual_status": {"eq": "running"}, "id": {"eq": a}}).json()
    assert [r["id"] for r in running["instances"]] == [a]
    cols = _page(vast, select_cols=["id", "label", "no_such_col"]).json()["instances"][0]
    assert set(cols) == {"id", "label", "no_such_col"} and cols["no_such_col"] is None


def test_v1_list_rejects_computed_fields_and_bad_tokens(vast: Any) -> None:
    computed = _page(vast, select_filters={"dph_total": {"lt": 1}})
    assert computed.status_code == 400
    assert computed.json() == {"success": False, "error": "invalid_request",
                               "msg": "Error in query parameters: dph_total is not a valid search key"}
    assert _page(vast, select_filters={"num_gpus": {"eq": 1}}).json()["error"] == "invalid_request"
    bad = _page(vast, after_token="not-a-token")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_token"


def test_instance_filters_endpoint(vast: Any) -> None:
    instance_id = vast.rent()
    row = vast.wait_status(instance_id, "running")
    data = vast.http.get("/api/v0/instances/filters/").json()
    assert {"actual_status": "running", "verification": "verified", "gpu_name": row["gpu_name"]} in data["filters"]


# ---------------- auth ----------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v0/instances/1/"), ("GET", "/api/v1/instances/"), ("DELETE", "/api/v0/instances/1/"),
     ("PUT", "/api/v0/asks/1/"), ("PUT", "/api/v0/instances/request_logs/1/")],
)
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_bad_key_is_401_auth_error(sandbox: Any, client_for: Any, method: str, path: str,
                                              key: str | None) -> None:
    client = client_for(sandbox, api_key=key)
    response = client.http.request(method, path, json={})
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}


def test_api_key_query_parameter_is_accepted(sandbox: Any, client_for: Any) -> None:
    client = client_for(sandbox, api_key=None)
    response = client.http.get("/api/v1/instances/", params={"api_key": sandbox.api_key})
    assert response.status_code == 200 and response.json()["total_instances"] == 0


def test_instance_key_is_scoped_to_its_instance(sandbox: Any, vast: Any, client_for: Any) -> None:
    offers = vast.search({"rentable": {"eq": True}, "limit": 2, "order": [["dph_total", "asc"]]})
    mine = vast.create(offers[0]["id"]).json()
    other = vast.create(offers[1]["id"]).json()["new_contract"]
    scoped = client_for(sandbox, api_key=mine["instance_api_key"])
    own_id = mine["new_contract"]
    assert scoped.show(own_id)["id"] == own_id
    relabel = scoped.http.put(f"/api/v0/instances/{own_id}/", json={"label": "self"})
    assert relabel.status_code == 200 and relabel.json()["success"] is True
    for method, path in [("GET", f"/api/v0/instances/{other}/"), ("DELETE", f"/api/v0/instances/{other}/"),
                         ("GET", "/api/v1/instances/"), ("PUT", f"/api/v0/asks/{offers[1]['id']}/"),
                         ("PUT", f"/api/v0/instances/request_logs/{own_id}/")]:
        response = scoped.http.request(method, path, json={"image": "x"})
        assert response.status_code == 403, (method, path)
        assert response.json()["error"] == "not_authorized"
    assert vast.show(other) is not None
    # An instance can destroy itself; its key is revoked with it.
    assert scoped.destroy(own_id).json() == {"success": True}
    after = scoped.http.get(f"/api/v0/instances/{own_id}/")
    assert after.status_code == 401 and after.json()["error"] == "auth_error"


# ---------------- manage / destroy ----------------


def test_label_and_label_too_long(vast: Any) -> None:
    instance_id = vast.rent()
    ok = vast.http.put(f"/api/v0/instances/{instance_id}/", json={"label": "y" * 1024})
    assert ok.status_code == 200 and ok.json()["success"] is True
    assert vast.show(instance_id)["label"] == "y" * 1024
    too_long = vast.http.put(f"/api/v0/instances/{instance_id}/", json={"label": "y" * 1025})
    assert too_long.status_code == 400 and too_long.json()["error"] == "label_too_long"
    gone = vast.http.put("/api/v0/instances/5/", json={"label": "x"})
    assert gone.status_code == 404 and gone.json()["error"] == "no_such_instance"


def test_stop_and_start(vast: Any) -> None:
    instance_id = vast.rent()
    vast.wait_status(instance_id, "running")
    assert vast.http.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"}).json()["success"] is True
    stopped = vast.show(instance_id)
    assert stopped["actual_status"] == "stopped" and stopped["intended_status"] == "stopped"
    assert stopped["ports"] is None
    assert vast.ledger()["running"] == 0
    assert vast.http.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"}).json()["success"] is True
    assert vast.wait_status(instance_id, "running")["ports"]["8000/tcp"]


def test_destroy_then_404_and_ledger_shows_nothing_running(vast: Any) -> None:
    instance_id = vast.rent(label="to-destroy")
    offer_id = vast.ledger()["instances"][0]["offer_id"]
    vast.wait_status(instance_id, "running")
    assert vast.ledger()["running"] == 1
    response = vast.destroy(instance_id)
    assert response.status_code == 200 and response.json() == {"success": True}
    again = vast.destroy(instance_id)
    assert again.status_code == 404
    assert again.json() == {"success": False, "error": "no_such_instance", "msg": f"Instance {instance_id} not found."}
    assert vast.show(instance_id) is None
    assert vast.http.request("DELETE", "/api/v0/instances/abc/").status_code == 400
    ledger = vast.ledger()
    assert ledger["running"] == 0 and ledger["live"] == 0
    (entry,) = ledger["instances"]
    assert entry["status"] == "destroyed" and entry["destroyed_at"] >= entry["created_at"]
    assert entry["cost"] > 0 and ledger["total_cost"] == entry["cost"]
    # The machine is back on the market.
    assert offer_id in [o["id"] for o in vast.search({"rentable": {"eq": True}, "limit": 1000})]
    assert _page(vast).json()["total_instances"] == 0


def test_cost_stops_accruing_after_destroy(vast: Any) -> None:
    instance_id = vast.rent()
    vast.wait_status(instance_id, "running")
    vast.destroy(instance_id)
    first = vast.ledger()["total_cost"]
    vast.show(instance_id)
    assert vast.ledger()["total_cost"] == first


def test_bulk_destroy(vast: Any) -> None:
    a, b = vast.rent(), vast.rent()
    response = vast.http.request("DELETE", "/api/v0/instances/", json={"instance_ids": [a, b]})
    assert response.status_code == 200 and response.json()["success"] is True
    none_left = vast.http.request("DELETE", "/api/v0/instances/", json={"instance_ids": [a, b]})
    assert none_left.status_code == 404 and none_left.json()["error"] == "instances_not_found"


# ---------------- logs ----------------


def test_logs_result_url_points_at_the_sandbox_and_needs_no_auth(vast: Any) -> None:
    instance_id = vast.rent()
    vast.wait_status(instance_id, "running")
    response = vast.http.put(f"/api/v0/instances/request_logs/{instance_id}/", json={"tail": "5",
                                                                                   "daemon_logs": "true"})
    assert response.status_code == 200
    url = response.json()["result_url"]
    assert url.startswith(vast.url + "/sandbox-logs/") and url.endswith(".log")
    text = httpx.get(url, timeout=5).text  # no Authorization header, like the official client
    assert "pulling" in text and len(text.splitlines()) <= 5


def test_logs_tail_and_filter(sandbox: Any, vast: Any) -> None:
    instance_id = vast.rent()
    vast.wait_status(instance_id, "running")
    instance = sandbox.world.instances[instance_id]

    async def write() -> None:
        instance.container_log.extend(f"line {i}" for i in range(10))

    sandbox.call(write())
    assert vast.logs(instance_id, tail="3").splitlines()[-3:] == ["line 7", "line 8", "line 9"]
    assert vast.logs(instance_id, filter="line [25]").splitlines() == ["line 2", "line 5"]
    missing = vast.http.put("/api/v0/instances/request_logs/7/", json={})
    assert missing.status_code == 404 and missing.json()["error"] == "invalid_id"


# ---------------- admin ----------------


def test_request_log_records_urls(vast: Any) -> None:
    vast.http.get("/api/v1/instances/", params={"limit": "3"})
    records = httpx.get(f"{vast.url}/_sandbox/requests", timeout=5).json()["requests"]
    assert {"method": "GET", "path": "/api/v1/instances/", "status": 200} | {"query": "limit=3"} in [
        {k: r[k] for k in ("method", "path", "status", "query")} for r in records]
    assert records[-1]["url"] == "/api/v1/instances/?limit=3"


def test_request_log_shows_requests_in_flight_until_answered(sandbox: Any) -> None:
    """The hook event-driven tests wait on: a request is listed in flight from its arrival to its answer.

    The test holds the request open itself (headers sent, body not finished), so nothing here is timed.
    """
    import socket

    from waits import wait_for_request, wait_until_quiet

    fetch = lambda: httpx.get(f"{sandbox.url}/_sandbox/requests", timeout=5).json()  # noqa: E731
    assert fetch()["in_flight"] == []
    body = b'{"q": {"limit": 1}}'
    host, port = sandbox.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"PUT /api/v0/search/asks/ HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body[:5]))
        held = wait_for_request(fetch, "PUT", "/search/asks/", in_flight=True)
        assert held["url"] == "/api/v0/search/asks/" and "since" in held
        assert not [r for r in fetch()["requests"] if r["method"] == "PUT"]  # not answered yet
        conn.sendall(body[5:])
        assert conn.recv(12).startswith(b"HTTP/1.1 200")
    wait_until_quiet(fetch)
    assert [r["status"] for r in fetch()["requests"] if r["method"] == "PUT"] == [200]


def test_health_reports_pid_and_token(sandbox: Any) -> None:
    import os

    data = httpx.get(f"{sandbox.url}/_sandbox/health", timeout=5).json()
    assert data["ok"] is True and data["pid"] == os.getpid() and data["token"] == sandbox.world.token


def test_v1_pages_neither_skip_nor_repeat_when_instances_go_away(vast: Any) -> None:
    offers = vast.search({"rentable": {"eq": True}, "limit": 30, "order": [["dph_total", "asc"]]})
    ids = sorted(vast.create(o["id"]).json()["new_contract"] for o in offers[:30])
    first = _page(vast).json()
    assert [r["id"] for r in first["instances"]] == ids[:25]
    for gone in ids[:3]:
        vast.destroy(gone)
    second = _page(vast, after_token=first["next_token"]).json()
    assert [r["id"] for r in second["instances"]] == ids[25:]
    assert second["next_token"] is None
    # A token from another query is refused.
    other = _page(vast, select_filters={"label": {"eq": "x"}}, after_token=first["next_token"])
    assert other.status_code == 400 and other.json()["error"] == "invalid_token"


def test_proxy_only_host_never_maps_ports(vast: Any) -> None:
    offer = vast.search({"direct_port_count": {"eq": 0}, "rentable": {"eq": True}, "limit": 1})[0]
    instance_id = vast.create(offer["id"]).json()["new_contract"]
    row = vast.wait_status(instance_id, "running")
    assert row["ports"] is None and row["direct_port_count"] == 0 and row["direct_port_start"] == -1
