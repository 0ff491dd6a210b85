"""Each client operation sends the documented request (vast-api.md) and parses the documented answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from glmdeploy.vast.client import VastClient
from glmdeploy.vast.errors import ApiError, AuthError, NotFound, OfferUnavailable
from glmdeploy.vast.models import CreateResult
from vast.conftest import KEY, SleepRecorder

ONE_INSTANCE = {
    "id": 4242,
    "label": "glmdeploy-abc",
    "actual_status": "running",
    "intended_status": "running",
    "public_ipaddr": "203.0.113.7\n",
    "ports": {
        "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}],
        "8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41235"}, {"HostIp": "::", "HostPort": "41235"}],
    },
    "extra_env": [["GLM_API_KEY", "endpoint-secret"], ["-p 8000:8000", "1"]],
    "jupyter_token": "jt-secret",
    "ssh_host": "ssh5.vast.ai",
    "ssh_port": 12345,
    "dph_total": 1.23,
    "machine_id": 99,
    "start_date": 1763900000.5,
    "something_new": {"nested": True},
}


def sent(route: respx.Route, index: int = -1) -> httpx.Request:
    return route.calls[index].request


def assert_authorized(request: httpx.Request) -> None:
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in str(request.url)
    assert request.headers["User-Agent"].startswith("glmdeploy/")


# ---------------------------------------------------------------- search


def test_search_offers_posts_the_query_to_bundles(client: VastClient, router: respx.Router) -> None:
    query = {"gpu_name": {"in": ["H100 SXM"]}, "num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]], "limit": 5}
    route = router.post("/api/v0/bundles/").respond(
        200,
        json={
            "offers": [
                {"id": 1, "gpu_name": "H100 SXM", "num_gpus": 1, "dph_total": 2.5, "score": 9.1, "brand_new": "x"},
                {"id": 2, "gpu_name": None, "num_gpus": None, "dph_total": None, "cpu_cores": None},
            ]
        },
    )

    offers = client.search_offers(query)

    request = sent(route)
    assert request.method == "POST"
    assert request.url.path == "/api/v0/bundles/"
    assert json.loads(request.content) == query
    assert_authorized(request)
    assert [offer.id for offer in offers] == [1, 2]
    assert offers[0].gpu_name == "H100 SXM" and offers[0].dph_total == 2.5 and offers[0].score == 9.1
    assert offers[0].model_extra == {"brand_new": "x"}
    assert offers[1].gpu_name is None and offers[1].dph_total is None


def test_search_offers_survives_control_characters_and_odd_rows(client: VastClient, router: respx.Router) -> None:
    # A raw tab and newline inside a string: strict JSON parsers reject this (vast-api.md §3).
    raw = (
        '{"offers": [{"id": 7, "geolocation": "Tokyo,\tJP\n", "driver_version": 535086005,'
        ' "reliability": "not-a-number"}, {"gpu_name": "no id"}, "junk"]}'
    )
    router.post("/api/v0/bundles/").respond(200, content=raw.encode(), headers={"Content-Type": "application/json"})

    offers = client.search_offers({})

    assert len(offers) == 1
    offer = offers[0]
    assert offer.id == 7
    assert offer.geolocation == "Tokyo,\tJP"  # stripped at the ends only
    assert offer.driver_version == "535086005"
    assert offer.reliability is None  # malformed non-essential field dropped, offer kept


def test_search_offers_without_offers_list_is_an_api_error(client: VastClient, router: respx.Router) -> None:
    router.post("/api/v0/bundles/").respond(200, json={"success": True})
    with pytest.raises(ApiError, match="without an 'offers' list"):
        client.search_offers({})


# ---------------------------------------------------------------- create


def create(client: VastClient, offer_id: int = 555) -> CreateResult:
    return client.create_instance(
        offer_id,
        image="lmsysorg/sglang:v0.5.4",
        env={"GLM_API_KEY": "endpoint-secret", "-p 8000:8000": "1"},
        onstart="bash /onstart.sh",
        disk=120.0,
        label="glmdeploy-abc",
    )


def test_create_instance_puts_the_documented_body(client: VastClient, router: respx.Router) -> None:
    route = router.put("/api/v0/asks/555/").respond(
        200, json={"success": True, "new_contract": 4242, "instance_api_key": "inst-secret-key"}
    )

    result = client.create_instance(
        555,
        image="lmsysorg/sglang:v0.5.4",
        env={"GLM_API_KEY": "endpoint-secret", "-p 8000:8000": "1"},
        onstart="bash /onstart.sh",
        disk=120.0,
        label="glmdeploy-abc",
    )

    request = sent(route)
    assert request.method == "PUT"
    assert_authorized(request)
    body = json.loads(request.content)
    assert body["client_id"] == "me"
    assert body["image"] == "lmsysorg/sglang:v0.5.4"
    assert body["env"] == {"GLM_API_KEY": "endpoint-secret", "-p 8000:8000": "1"}
    assert body["onstart"] == "bash /onstart.sh"
    assert body["disk"] == 120.0
    assert body["label"] == "glmdeploy-abc"
    assert body["runtype"] == "ssh_direc ssh_proxy"
    assert body["cancel_unavail"] is True
    assert body["price"] is None  # on-demand, not a bid
    assert result.success and result.new_contract == 4242 and result.instance_id == 4242
    assert not result.created_stopped
    assert result.instance_api_key is not None
    assert result.instance_api_key.get_secret_value() == "inst-secret-key"
    assert "inst-secret-key" not in repr(result)


def test_create_instance_optional_runtype_and_args(client: VastClient, router: respx.Router) -> None:
    route = router.put("/api/v0/asks/9/").respond(200, json={"success": True, "new_contract": 1})
    client.create_instance(
        9, image="img", env={}, onstart=None, disk=10, label="l", runtype="args", cancel_unavail=False, args=["-c", "x"]
    )
    body = json.loads(sent(route).content)
    assert body["runtype"] == "args" and body["args"] == ["-c", "x"] and body["cancel_unavail"] is False


def test_create_that_lands_stopped_is_surfaced_not_hidden(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/asks/555/").respond(200, json={"success": False, "new_contract": 4243})
    result = create(client)
    assert result.created_stopped
    assert result.instance_id == 4243


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"success": False, "error": "no_such_ask", "msg": "No ask by id 555 is available."}),
        (410, {"success": False, "error": "no_such_ask", "msg": "Instance type 555 is no longer available."}),
        (404, {"success": False, "error": "invalid_args", "msg": "error 404/3603: no_such_ask Instance type"}),
    ],
)
def test_create_on_a_vanished_offer_is_offer_unavailable(
    client: VastClient, router: respx.Router, status: int, body: dict[str, object]
) -> None:
    route = router.put("/api/v0/asks/555/").respond(status, json=body)
    with pytest.raises(OfferUnavailable) as caught:
        create(client)
    assert caught.value.exit_code == 3
    assert caught.value.status_code == status
    assert caught.value.error == body["error"]
    assert caught.value.msg == body["msg"]
    assert route.call_count == 1


def test_create_refused_with_400_is_an_api_error(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/asks/555/").respond(400, json={"error": "invalid_args", "msg": "bad disk"})
    with pytest.raises(ApiError, match="HTTP 400 invalid_args: bad disk") as caught:
        create(client)
    assert caught.value.exit_code == 7


def test_create_200_failure_without_contract_is_an_error(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/asks/555/").respond(200, json={"success": False, "error": "invalid_args", "msg": "nope"})
    with pytest.raises(ApiError, match="nope"):
        create(client)


# ---------------------------------------------------------------- show


def test_show_instance_gets_one_instance(client: VastClient, router: respx.Router) -> None:
    route = router.get("/api/v0/instances/4242/").respond(200, json={"instances": ONE_INSTANCE})

    instance = client.show_instance(4242)

    request = sent(route)
    assert request.method == "GET"
    assert request.url.params["owner"] == "me"
    assert_authorized(request)
    assert instance is not None
    assert instance.id == 4242 and instance.label == "glmdeploy-abc" and instance.actual_status == "running"
    assert instance.public_ipaddr == "203.0.113.7"
    assert instance.host_port(8000) == 41235
    assert instance.host_port(22) == 41234
    assert instance.endpoint(8000) == ("203.0.113.7", 41235)
    assert instance.service_url(8000) == "http://203.0.113.7:41235"
    assert instance.extra_env == {"GLM_API_KEY": "endpoint-secret", "-p 8000:8000": "1"}
    assert "endpoint-secret" not in repr(instance)
    assert "jt-secret" not in repr(instance)


def test_show_instance_null_means_gone(client: VastClient, router: respx.Router) -> None:
    router.get("/api/v0/instances/4242/").respond(200, json={"instances": None})
    assert client.show_instance(4242) is None


def test_show_instance_404_no_such_instance_means_gone(client: VastClient, router: respx.Router) -> None:
    router.get("/api/v0/instances/4242/").respond(404, json={"error": "no_such_instance", "msg": "not found"})
    assert client.show_instance(4242) is None


def test_show_instance_plain_404_is_not_mistaken_for_gone(client: VastClient, router: respx.Router) -> None:
    # A wrong --api-url answering 404 must not make a billing instance look destroyed.
    router.get("/api/v0/instances/4242/").respond(404, text="<html><body>Not Found</body></html>")
    with pytest.raises(NotFound, match="HTTP 404"):
        client.show_instance(4242)


def test_show_instance_without_instances_key_is_an_api_error(client: VastClient, router: respx.Router) -> None:
    router.get("/api/v0/instances/4242/").respond(200, json={"success": True})
    with pytest.raises(ApiError, match="without an 'instances' field"):
        client.show_instance(4242)


def test_show_instance_before_ports_are_mapped(client: VastClient, router: respx.Router) -> None:
    loading = {"id": 5, "actual_status": "loading", "ports": None, "public_ipaddr": None, "extra_env": None}
    router.get("/api/v0/instances/5/").respond(200, json={"instances": loading})
    instance = client.show_instance(5)
    assert instance is not None
    assert instance.host_port(8000) is None
    assert instance.endpoint() is None and instance.service_url() is None
    assert instance.extra_env == {}


# ---------------------------------------------------------------- list


def page(ids: list[int], token: str | None) -> dict[str, object]:
    rows = [{"id": i, "label": f"glmdeploy-{i}", "actual_status": "running"} for i in ids]
    return {"success": True, "instances": rows, "instances_found": len(rows), "total_instances": 5, "next_token": token}


def test_list_instances_follows_next_token_across_three_pages(client: VastClient, router: respx.Router) -> None:
    route = router.get("/api/v1/instances/").mock(
        side_effect=[
            httpx.Response(200, json=page([1, 2], "tok-2")),
            httpx.Response(200, json=page([3, 4], "tok-3")),
            httpx.Response(200, json=page([5], None)),
        ]
    )

    instances = client.list_instances(label="glmdeploy-run")

    assert [i.id for i in instances] == [1, 2, 3, 4, 5]
    assert route.call_count == 3
    queries = [parse_qs(urlsplit(str(call.request.url)).query) for call in route.calls]
    for query in queries:
        assert json.loads(query["select_filters"][0]) == {"label": {"eq": "glmdeploy-run"}}
        assert query["limit"] == ["25"]
        assert json.loads(query["order_by"][0]) == [{"col": "id", "dir": "asc"}]
    assert "after_token" not in queries[0]
    assert queries[1]["after_token"] == ["tok-2"]
    assert queries[2]["after_token"] == ["tok-3"]
    for call in route.calls:
        assert_authorized(call.request)


def test_list_instances_without_label_sends_empty_filter_and_filters_prefix_locally(
    client: VastClient, router: respx.Router
) -> None:
    rows = [{"id": 1, "label": "glmdeploy-a"}, {"id": 2, "label": None}, {"id": 3, "label": "mine"}]
    route = router.get("/api/v1/instances/").respond(200, json={"instances": rows, "next_token": None})
    assert [i.id for i in client.list_instances(label_prefix="glmdeploy-")] == [1]
    assert json.loads(sent(route).url.params["select_filters"]) == {}


def test_list_instances_empty_account(client: VastClient, router: respx.Router) -> None:
    router.get("/api/v1/instances/").respond(200, json={"instances": None, "next_token": None})
    assert client.list_instances() == []


def test_list_instances_never_uses_the_retired_v0_list(client: VastClient, router: respx.Router) -> None:
    v0 = router.get("/api/v0/instances/").respond(410, json={"error": "deprecated_endpoint"})
    router.get("/api/v1/instances/").respond(200, json=page([1], None))
    client.list_instances()
    assert v0.call_count == 0


def test_410_deprecated_endpoint_is_a_clear_api_error(client: VastClient, router: respx.Router) -> None:
    router.get("/api/v1/instances/").respond(
        410,
        json={
            "success": False,
            "error": "deprecated_endpoint",
            "msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.",
        },
    )
    with pytest.raises(ApiError, match="retired the endpoint") as caught:
        client.list_instances()
    assert caught.value.status_code == 410
    assert caught.value.error == "deprecated_endpoint"
    assert "upgrade glmdeploy" in str(caught.value)


def test_list_instances_stops_on_a_repeating_token(client: VastClient, router: respx.Router) -> None:
    route = router.get("/api/v1/instances/").respond(200, json=page([1], "same"))
    with pytest.raises(ApiError, match="same page token twice"):
        client.list_instances()
    assert route.call_count == 2


def test_list_instances_refuses_to_skip_an_unreadable_row(client: VastClient, router: respx.Router) -> None:
    router.get("/api/v1/instances/").respond(200, json={"instances": [{"id": "not-an-id"}], "next_token": None})
    with pytest.raises(ApiError, match="cannot read"):
        client.list_instances()


# ---------------------------------------------------------------- logs


LOG_URL = "https://s3.amazonaws.test/vast.ai/instance_logs/abc.log"


def test_request_logs_polls_result_url_without_credentials(
    client: VastClient, router: respx.Router, sleeps: SleepRecorder
) -> None:
    request_route = router.put("/api/v0/instances/request_logs/4242/").respond(
        200, json={"success": True, "result_url": LOG_URL, "msg": "will upload"}
    )
    log_route = router.get(LOG_URL).mock(
        side_effect=[
            httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>"),
            httpx.Response(404, text="NoSuchKey"),
            httpx.Response(200, text="INFO Application startup complete.\n"),
        ]
    )

    text = client.request_logs(4242, tail=200)

    assert text == "INFO Application startup complete.\n"
    put = sent(request_route)
    assert put.method == "PUT"
    assert json.loads(put.content) == {"tail": "200"}
    assert_authorized(put)
    assert log_route.call_count == 3
    for call in log_route.calls:
        assert "Authorization" not in call.request.headers
    assert len(sleeps.calls) == 3
    assert sleeps.calls == sorted(sleeps.calls)  # waits grow


def test_request_logs_not_ready_in_time_means_no_logs_yet(
    make_client: Callable[..., VastClient], router: respx.Router, sleeps: SleepRecorder
) -> None:
    client = make_client(log_poll_tries=5)
    router.put("/api/v0/instances/request_logs/1/").respond(200, json={"success": True, "result_url": LOG_URL})
    log_route = router.get(LOG_URL).mock(
        side_effect=[httpx.ReadTimeout("slow"), *[httpx.Response(404) for _ in range(10)]]
    )
    assert client.request_logs(1) == ""
    assert log_route.call_count == 5
    assert len(sleeps.calls) == 5


def test_request_logs_without_tail_sends_empty_body(client: VastClient, router: respx.Router) -> None:
    route = router.put("/api/v0/instances/request_logs/1/").respond(200, json={"success": True, "msg": "no logs"})
    assert client.request_logs(1) == ""
    assert json.loads(sent(route).content) == {}


def test_request_logs_for_a_bad_id_is_not_found(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/instances/request_logs/1/").respond(
        404, json={"error": "invalid_id", "msg": "Invalid instance id."}
    )
    with pytest.raises(NotFound, match="Invalid instance id"):
        client.request_logs(1)


# ---------------------------------------------------------------- destroy and label


def test_destroy_instance_deletes_with_empty_body(client: VastClient, router: respx.Router) -> None:
    route = router.delete("/api/v0/instances/4242/").respond(200, json={"success": True})
    assert client.destroy_instance(4242) is True
    request = sent(route)
    assert request.method == "DELETE"
    assert json.loads(request.content) == {}
    assert_authorized(request)


def test_destroy_of_an_already_gone_instance_returns_false(client: VastClient, router: respx.Router) -> None:
    route = router.delete("/api/v0/instances/4242/").respond(
        404, json={"success": False, "error": "no_such_instance", "msg": "Instance 4242 not found."}
    )
    assert client.destroy_instance(4242) is False
    assert route.call_count == 1


def test_destroy_with_a_bad_key_is_an_auth_error_not_already_gone(client: VastClient, router: respx.Router) -> None:
    router.delete("/api/v0/instances/4242/").respond(
        404, json={"success": False, "error": "auth_error", "msg": "Invalid user key"}
    )
    with pytest.raises(AuthError):
        client.destroy_instance(4242)


def test_destroy_refused_with_200_success_false_is_an_error(client: VastClient, router: respx.Router) -> None:
    router.delete("/api/v0/instances/4242/").respond(200, json={"success": False, "error": "busy", "msg": "later"})
    with pytest.raises(ApiError, match="busy: later"):
        client.destroy_instance(4242)


def test_set_label_puts_the_label(client: VastClient, router: respx.Router) -> None:
    route = router.put("/api/v0/instances/4242/").respond(
        200, json={"success": True, "msg": "label for 4242 set to 'x'"}
    )
    client.set_label(4242, "glmdeploy-abc")
    request = sent(route)
    assert request.method == "PUT"
    assert json.loads(request.content) == {"label": "glmdeploy-abc"}
    assert_authorized(request)


def test_set_label_too_long_is_an_api_error(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/instances/4242/").respond(400, json={"error": "label_too_long", "msg": "too long"})
    with pytest.raises(ApiError, match="label_too_long"):
        client.set_label(4242, "x" * 2000)
