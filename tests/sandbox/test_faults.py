"""Every fault of docs/sandbox.md, produced as documented."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from glmdeploy.sandbox.faults import FaultSpecError, parse

pytestmark = pytest.mark.e2e


def _vast(start_sandbox: Any, client_for: Any, faults: str, **config: Any) -> Any:
    return client_for(start_sandbox(faults=faults, **config))


def test_http429_count_without_retry_after(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "http429:search=2")
    for _ in range(2):
        response = vast.http.post("/api/v0/bundles/", json={"limit": 1})
        assert response.status_code == 429
        assert "retry-after" not in response.headers
        assert response.json() == {"success": False, "error": "rate_limit_exceeded",
                                   "msg": "API requests too frequent endpoint threshold=2.0"}
    assert vast.http.post("/api/v0/bundles/", json={"limit": 1}).status_code == 200
    # Other endpoints are untouched.
    assert vast.http.get("/api/v1/instances/").status_code == 200


def test_http429_with_retry_after_headers(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "http429:create=1,retry_after=2")
    offer = vast.first_offer()
    response = vast.create(offer["id"])
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["x-ratelimit-remaining"] == "0" and int(response.headers["x-ratelimit-reset"]) > 0
    assert "4.5" in response.json()["msg"]
    assert vast.ledger()["instances"] == []  # a 429 created nothing
    assert vast.create(offer["id"]).status_code == 200


def test_http429_without_count_is_every_time_and_any_matches_all(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "http429:any")
    for _ in range(3):
        assert vast.http.get("/api/v1/instances/").status_code == 429
        assert vast.http.get("/api/v0/instances/1/").status_code == 429
    # admin endpoints are never faulted
    assert httpx.get(f"{vast.url}/_sandbox/ledger").status_code == 200


def test_http429_body_shapes(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "http429:create=1,body=detail;http429:search=1,body=text")
    detail = vast.http.put("/api/v0/asks/1/", json={"image": "x"})
    assert detail.status_code == 429
    assert detail.json() == {"detail": "API requests too frequent endpoint threshold=4.5"}
    text = vast.http.post("/api/v0/bundles/", json={})
    assert text.status_code == 429 and text.headers["content-type"].startswith("text/plain")
    assert text.text == "API requests too frequent endpoint threshold=2.0"


@pytest.mark.parametrize(("status", "kind"), [("500", "application/json"), ("502", "text/html"),
                                              ("503", "text/html"), ("504", "text/html")])
def test_http5xx(start_sandbox: Any, client_for: Any, status: str, kind: str) -> None:
    vast = _vast(start_sandbox, client_for, f"http5xx:show=1,status={status}")
    response = vast.http.get("/api/v0/instances/1/")
    assert response.status_code == int(status)
    assert response.headers["content-type"].startswith(kind)
    assert vast.http.get("/api/v0/instances/1/").status_code == 200


def test_http5xx_default_is_502(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "http5xx:logs=1")
    assert vast.http.put("/api/v0/instances/request_logs/1/", json={}).status_code == 502


def test_drop_closes_the_connection_without_an_answer(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "drop:destroy=1")
    with pytest.raises(httpx.TransportError):
        vast.http.request("DELETE", "/api/v0/instances/1/", json={})
    assert vast.destroy(1).status_code == 404  # the next one is answered
    records = httpx.get(f"{vast.url}/_sandbox/requests").json()["requests"]
    assert [r["status"] for r in records if r["method"] == "DELETE"] == [0, 404]


def test_offer_taken_between_search_and_create(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "offer_taken=1")
    offer = vast.first_offer()
    response = vast.create(offer["id"])
    assert response.status_code == 404 and response.json()["error"] == "no_such_ask"
    assert offer["id"] not in [o["id"] for o in vast.search({"rentable": {"eq": True}, "limit": 1000})]
    assert vast.create(offer["id"]).status_code == 404  # still taken
    second = vast.first_offer()
    assert vast.create(second["id"]).status_code == 200
    assert [r["offer_id"] for r in vast.ledger()["instances"]] == [second["id"]]


def test_unavailable_with_cancel_unavail_is_410(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "unavailable=1")
    offer = vast.first_offer()
    response = vast.create(offer["id"], cancel_unavail=True)
    assert response.status_code == 410
    assert response.json()["error"] == "no_such_ask"
    assert response.json()["msg"] == f"Instance type {offer['id']} is no longer available."
    assert vast.ledger()["instances"] == []


def test_unavailable_without_cancel_unavail_creates_a_stopped_instance(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "unavailable=1")
    response = vast.create(vast.first_offer()["id"], cancel_unavail=False)
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False and isinstance(body["new_contract"], int)
    row = vast.show(body["new_contract"])
    assert row["actual_status"] == "stopped" and row["intended_status"] == "stopped" and row["ports"] is None
    time.sleep(0.3)
    assert vast.show(body["new_contract"])["actual_status"] == "stopped"
    ledger = vast.ledger()
    assert ledger["live"] == 1 and ledger["running"] == 0 and ledger["total_cost"] > 0  # storage bills


def test_create_fail(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "create_fail=1")
    response = vast.create(vast.first_offer()["id"])
    assert response.status_code == 400
    assert response.json()["success"] is False and response.json()["error"] == "invalid_args"
    assert "credit" in response.json()["msg"]


def test_create_timeout_creates_the_instance_but_drops_the_answer(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "create_timeout=1")
    offer = vast.first_offer()
    with pytest.raises(httpx.TransportError):
        vast.create(offer["id"], label="orphan-me")
    (entry,) = vast.ledger()["instances"]
    assert entry["label"] == "orphan-me" and entry["offer_id"] == offer["id"]
    # A blind retry of the same create then fails: the offer is consumed (vast-api.md §2.1).
    assert vast.create(offer["id"]).json()["error"] == "no_such_ask"
    listed = vast.http.get("/api/v1/instances/", params={"select_filters": '{"label": {"eq": "orphan-me"}}'})
    assert [r["id"] for r in listed.json()["instances"]] == [entry["id"]]


def test_create_timeout_with_delay_outlasts_the_client_timeout(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "create_timeout=1,delay=2")
    with pytest.raises(httpx.ReadTimeout):
        vast.http.put(f"/api/v0/asks/{vast.first_offer()['id']}/", json={"image": "x", "env": {}}, timeout=0.3)
    assert len(vast.ledger()["instances"]) == 1


def test_create_timeout_holds_the_answer_until_released(start_sandbox: Any, client_for: Any) -> None:
    """A test holds a create as long as it needs (a long delay), then lets it go: nothing is timed."""
    import threading

    from waits import wait_for_request, wait_until_quiet

    vast = _vast(start_sandbox, client_for, "create_timeout=1,delay=600")
    log = lambda: httpx.get(f"{vast.url}/_sandbox/requests", timeout=10).json()  # noqa: E731
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            vast.http.put(f"/api/v0/asks/{vast.first_offer()['id']}/", json={"image": "x", "env": {}}, timeout=120)
        except httpx.TransportError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    wait_for_request(log, "PUT", "/api/v0/asks/", in_flight=True)
    assert len(vast.ledger()["instances"]) == 1  # created and billing while the answer is held
    released = httpx.post(f"{vast.url}/_sandbox/release", timeout=10).json()
    assert released == {"success": True, "released": 1}
    sender.join(60)
    assert not sender.is_alive() and outcome, "the held create was not dropped on release"
    wait_until_quiet(log)
    assert [r["status"] for r in log()["requests"] if r["method"] == "PUT"] == [0]


def test_stuck_loading(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "stuck_loading=1")
    stuck = vast.rent()
    vast.wait_status(stuck, "loading")
    healthy = vast.rent()
    vast.wait_status(healthy, "running")
    time.sleep(0.3)  # more than a whole simulated lifecycle at this time scale
    row = vast.show(stuck)
    assert row["actual_status"] == "loading" and row["ports"] is None


def test_exited_with_a_container_start_error(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "exited=1")
    row = vast.wait_status(vast.rent(), "exited")
    assert row["status_msg"] == "Error: container failed to start: OCI runtime create failed"
    assert row["ports"] is None
    assert vast.ledger()["running"] == 0


def test_loading_error_stays_loading_with_the_pull_error(start_sandbox: Any, client_for: Any) -> None:
    """On Vast a failed pull leaves actual_status 'loading' with the daemon's error in status_msg."""
    vast = _vast(start_sandbox, client_for, "loading_error=1")
    instance_id = vast.rent(image="lmsysorg/sglang:no-such-tag")
    expected = ("Error response from daemon: manifest for lmsysorg/sglang:no-such-tag not found: "
                "manifest unknown: manifest unknown")
    deadline = time.monotonic() + 10
    row = vast.show(instance_id)
    while time.monotonic() < deadline and (row is None or row["status_msg"] != expected):
        time.sleep(0.02)
        row = vast.show(instance_id)
    assert row is not None and row["status_msg"] == expected and row["actual_status"] == "loading", row
    first_sign = next(i for i in vast.ledger()["instances"] if i["id"] == instance_id)["first_sign_at"]
    assert first_sign is not None
    time.sleep(0.3)  # more than a whole simulated lifecycle at this time scale: it never runs
    assert vast.show(instance_id)["actual_status"] == "loading"


@pytest.mark.parametrize("status", ["unknown", "offline"])
def test_status_lost_instead_of_running(start_sandbox: Any, client_for: Any, status: str) -> None:
    vast = _vast(start_sandbox, client_for, f"status_{status}=1")
    lost = vast.rent()
    row = vast.wait_status(lost, status)
    assert row["ports"] is None
    time.sleep(0.3)
    assert vast.show(lost)["actual_status"] == status
    assert vast.wait_status(vast.rent(), "running")  # the count was one: the next instance runs


def test_status_null_while_provisioning_then_runs(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "status_null=1")
    instance_id = vast.rent()
    row = vast.show(instance_id)
    assert row is not None and row["actual_status"] is None
    vast.wait_status(instance_id, "running")


def test_skip_spares_the_first_instances_and_hits_the_next(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "exited=1,skip=1")
    spared = vast.rent()
    hit = vast.rent()
    assert vast.wait_status(hit, "exited")["status_msg"].startswith("Error: container failed to start")
    assert vast.wait_status(spared, "running")["actual_status"] == "running"
    third = vast.rent()  # the count (1) is spent: the third runs too
    assert vast.wait_status(third, "running")["actual_status"] == "running"


def test_exited_with_custom_message(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "exited,msg=OCI runtime create failed: nvidia-container-cli")
    row = vast.wait_status(vast.rent(), "exited")
    assert row["status_msg"] == "OCI runtime create failed: nvidia-container-cli"


def test_ports_null(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "ports_null=1")
    row = vast.wait_status(vast.rent(), "running")
    assert row["ports"] is None
    assert vast.wait_status(vast.rent(), "running")["ports"]["8000/tcp"]


def test_empty_logs_for_the_first_requests(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "empty_logs=2")
    instance_id = vast.rent()
    vast.wait_status(instance_id, "running")
    assert vast.logs(instance_id, daemon_logs="true") == ""
    assert vast.logs(instance_id, daemon_logs="true") == ""
    assert "pulling" in vast.logs(instance_id, daemon_logs="true")


def test_logs_pending(start_sandbox: Any, client_for: Any) -> None:
    vast = _vast(start_sandbox, client_for, "logs_pending=2")
    instance_id = vast.rent()
    vast.wait_status(instance_id, "running")
    url = vast.http.put(f"/api/v0/instances/request_logs/{instance_id}/", json={"daemon_logs": "true"}).json()[
        "result_url"]
    assert [httpx.get(url).status_code for _ in range(3)] == [404, 404, 200]


def test_probability_is_reproducible_with_the_seed(start_sandbox: Any, client_for: Any) -> None:
    def pattern(seed: int) -> list[int]:
        vast = _vast(start_sandbox, client_for, "http5xx:show,p=0.5", seed=seed)
        return [vast.http.get("/api/v0/instances/1/").status_code for _ in range(16)]

    first = pattern(7)
    assert first == pattern(7)
    assert set(first) == {200, 502}


def test_faults_can_be_changed_live(vast: Any) -> None:
    assert vast.http.get("/api/v1/instances/").status_code == 200
    response = vast.set_faults("http429:list=1")
    assert response.status_code == 200 and response.json()["faults"][0]["name"] == "http429"
    assert vast.http.get("/api/v1/instances/").status_code == 429
    assert vast.set_faults("http5xx:list=1", mode="add").json()["spec"] == "http429:list=1;http5xx:list=1"
    assert vast.http.get("/api/v1/instances/").status_code == 502
    assert vast.set_faults("").json()["faults"] == []
    bad = vast.set_faults("http429:nowhere=1")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_args" and "endpoint" in bad.json()["msg"]


def test_engine_faults_are_recorded_for_the_engine(vast: Any) -> None:
    data = vast.set_faults("engine_oom;slow_first_token=3").json()
    assert [(f["name"], f["value"]) for f in data["faults"]] == [("engine_oom", None), ("slow_first_token", "3")]


@pytest.mark.parametrize(
    "spec",
    ["nonsense", "http429=3", "http429:create=x", "http429:create,retry_after=soon", "exited:create",
     "http5xx:show,status=418", "empty_logs", "engine_oom:create", "stuck_loading,colour=red",
     "http429:create,p=2", "http429:create,body=xml", "exited,skip=one", "exited,skip=-1", "http429:create,skip=1"],
)
def test_bad_specs_are_rejected(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse(spec)


def test_spec_parses_documented_example() -> None:
    faults = parse("http429:create=3,retry_after=2; exited; stuck_loading=1; engine_oom")
    assert [(f.name, f.endpoint, f.remaining, f.params) for f in faults] == [
        ("http429", "create", 3, {"retry_after": "2"}), ("exited", None, None, {}),
        ("stuck_loading", None, 1, {}), ("engine_oom", None, None, {})]
