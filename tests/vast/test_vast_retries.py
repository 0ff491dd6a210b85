"""Retry policy (vast-api.md §2): what is resent, how long we wait, when we give up, and what is never resent."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
import respx

from glmdeploy.vast.client import VastClient
from glmdeploy.vast.errors import ApiUnreachable, CreateOutcomeUnknown, RateLimited
from glmdeploy.vast.models import CreateResult
from vast.conftest import SleepRecorder

OK = {"offers": [{"id": 1}]}


def create(client: VastClient) -> CreateResult:
    return client.create_instance(555, image="img", env={}, onstart="run", disk=50, label="glmdeploy-xyz")


def test_429_with_retry_after_waits_exactly_that_long(
    client: VastClient, router: respx.Router, sleeps: SleepRecorder
) -> None:
    route = router.post("/api/v0/bundles/").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "7"}, text="API requests too frequent"),
            httpx.Response(200, json=OK),
        ]
    )
    assert [o.id for o in client.search_offers({})] == [1]
    assert route.call_count == 2
    assert sleeps.calls == [7.0]


def test_429_with_retry_after_in_the_json_body(client: VastClient, router: respx.Router, sleeps: SleepRecorder) -> None:
    router.post("/api/v0/bundles/").mock(
        side_effect=[
            httpx.Response(
                429, json={"error": "HTTPTooManyRequests", "msg": "API requests too frequent", "retry_after": 3}
            ),
            httpx.Response(200, json=OK),
        ]
    )
    client.search_offers({})
    assert sleeps.calls == [3.0]


def test_429_without_retry_after_backs_off_exponentially_with_jitter(
    make_client: Callable[..., VastClient], router: respx.Router, sleeps: SleepRecorder
) -> None:
    client = make_client(attempts=4, backoff_initial=1.0, backoff_max=20.0, backoff_jitter=0.5)
    route = router.post("/api/v0/bundles/").mock(
        side_effect=[
            httpx.Response(429, json={"detail": "API requests too frequent endpoint threshold=2"}),
            httpx.Response(429, text="API requests too frequent"),
            httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}),  # not numeric: ignored
            httpx.Response(200, json=OK),
        ]
    )
    client.search_offers({})
    assert route.call_count == 4
    assert len(sleeps.calls) == 3
    for attempt, waited in enumerate(sleeps.calls):
        base = 1.0 * 2**attempt
        assert base <= waited <= base + 0.5


def test_backoff_is_capped(make_client: Callable[..., VastClient], router: respx.Router, sleeps: SleepRecorder) -> None:
    client = make_client(attempts=6, backoff_initial=1.0, backoff_max=3.0, backoff_jitter=0.0)
    router.post("/api/v0/bundles/").mock(
        side_effect=[*[httpx.Response(502) for _ in range(5)], httpx.Response(200, json=OK)]
    )
    client.search_offers({})
    assert sleeps.calls == [1.0, 2.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_retried_then_succeed(
    client: VastClient, router: respx.Router, sleeps: SleepRecorder, status: int
) -> None:
    route = router.get("/api/v0/instances/1/").mock(
        side_effect=[
            httpx.Response(status, text="<html>Bad Gateway</html>"),
            httpx.Response(200, json={"instances": {"id": 1}}),
        ]
    )
    instance = client.show_instance(1)
    assert instance is not None and instance.id == 1
    assert route.call_count == 2
    assert len(sleeps.calls) == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.ReadTimeout("slow read"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=["connect-error", "connect-timeout", "read-timeout", "disconnect"],
)
def test_connection_failures_are_retried_then_succeed(
    client: VastClient, router: respx.Router, sleeps: SleepRecorder, failure: Exception
) -> None:
    route = router.get("/api/v1/instances/").mock(
        side_effect=[failure, httpx.Response(200, json={"instances": [{"id": 3}], "next_token": None})]
    )
    assert [i.id for i in client.list_instances()] == [3]
    assert route.call_count == 2
    assert len(sleeps.calls) == 1


def test_giving_up_on_429_raises_rate_limited_with_status(
    make_client: Callable[..., VastClient], router: respx.Router, sleeps: SleepRecorder
) -> None:
    client = make_client(attempts=3)
    route = router.post("/api/v0/bundles/").respond(
        429, json={"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"}
    )
    with pytest.raises(RateLimited) as caught:
        client.search_offers({})
    assert route.call_count == 3
    assert len(sleeps.calls) == 2
    error = caught.value
    assert error.status_code == 429
    assert error.error == "rate_limit_exceeded"
    assert error.msg == "API requests too frequent"
    assert error.exit_code == 7
    assert "after 3 attempt(s)" in str(error)


def test_giving_up_on_503_raises_api_unreachable_with_status(
    make_client: Callable[..., VastClient], router: respx.Router
) -> None:
    client = make_client(attempts=2)
    route = router.delete("/api/v0/instances/9/").respond(503, text="Service Unavailable")
    with pytest.raises(ApiUnreachable) as caught:
        client.destroy_instance(9)
    assert route.call_count == 2
    assert caught.value.status_code == 503
    assert caught.value.exit_code == 7
    assert "Service Unavailable" in str(caught.value)


def test_giving_up_on_connection_errors_raises_api_unreachable(
    make_client: Callable[..., VastClient], router: respx.Router, sleeps: SleepRecorder
) -> None:
    client = make_client(attempts=4)
    route = router.get("/api/v0/instances/1/").mock(side_effect=httpx.ConnectError("Connection refused"))
    with pytest.raises(ApiUnreachable) as caught:
        client.show_instance(1)
    assert route.call_count == 4
    assert len(sleeps.calls) == 3
    assert caught.value.status_code is None
    assert caught.value.exit_code == 7
    assert "ConnectError after 4 attempt(s)" in str(caught.value)


def test_attempts_below_one_still_sends_once(make_client: Callable[..., VastClient], router: respx.Router) -> None:
    # The official client's retry=0 sends nothing and crashes (vast-api.md §2.1); we send once.
    client = make_client(attempts=0)
    route = router.post("/api/v0/bundles/").respond(200, json=OK)
    client.search_offers({})
    assert route.call_count == 1


def test_search_quota_exceeded_is_never_retried(
    client: VastClient, router: respx.Router, sleeps: SleepRecorder
) -> None:
    route = router.post("/api/v0/bundles/").respond(
        429,
        headers={"X-RateLimit-Reset": "1795478400", "Retry-After": "1"},
        json={"success": False, "error": "search_quota_exceeded", "msg": "daily search quota exceeded"},
    )
    with pytest.raises(RateLimited) as caught:
        client.search_offers({})
    assert route.call_count == 1
    assert sleeps.calls == []
    assert caught.value.error == "search_quota_exceeded"
    assert "2026-11-24 00:00 UTC" in str(caught.value)


def test_search_quota_without_reset_header_still_explains(client: VastClient, router: respx.Router) -> None:
    router.post("/api/v0/bundles/").respond(429, json={"error": "search_quota_exceeded", "msg": "quota"})
    with pytest.raises(RateLimited, match=r"daily Vast\.ai search quota.*midnight UTC"):
        client.search_offers({})


def test_retry_after_above_the_cap_gives_up_at_once(
    make_client: Callable[..., VastClient], router: respx.Router, sleeps: SleepRecorder
) -> None:
    client = make_client(max_retry_after=60)
    route = router.post("/api/v0/bundles/").respond(429, headers={"Retry-After": "3600"}, text="slow down")
    with pytest.raises(RateLimited) as caught:
        client.search_offers({})
    assert route.call_count == 1
    assert sleeps.calls == []
    assert caught.value.retry_after == 3600.0
    assert "3600 s" in str(caught.value)


def test_retry_after_at_the_cap_is_honoured(
    make_client: Callable[..., VastClient], router: respx.Router, sleeps: SleepRecorder
) -> None:
    client = make_client(max_retry_after=60)
    router.post("/api/v0/bundles/").mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": "60"}), httpx.Response(200, json=OK)]
    )
    client.search_offers({})
    assert sleeps.calls == [60.0]


# ---------------------------------------------------------------- the create call is special


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected"),
        httpx.ReadError("reset"),
        httpx.WriteTimeout("write"),
        httpx.DecodingError("bad gzip"),
    ],
    ids=["read-timeout", "disconnect", "read-error", "write-timeout", "undecodable-answer"],
)
def test_create_is_not_resent_after_a_timeout_or_dropped_connection(
    client: VastClient, router: respx.Router, sleeps: SleepRecorder, failure: Exception
) -> None:
    route = router.put("/api/v0/asks/555/").mock(
        side_effect=[failure, httpx.Response(404, json={"error": "no_such_ask", "msg": "consumed"})]
    )
    with pytest.raises(CreateOutcomeUnknown) as caught:
        create(client)
    assert route.call_count == 1
    assert sleeps.calls == []
    error = caught.value
    assert error.offer_id == 555
    assert error.label == "glmdeploy-xyz"
    assert "glmdeploy-xyz" in str(error)
    assert error.exit_code == 7


@pytest.mark.parametrize("status", [500, 502, 504])
def test_create_answered_by_a_failing_gateway_is_outcome_unknown(
    client: VastClient, router: respx.Router, status: int
) -> None:
    route = router.put("/api/v0/asks/555/").respond(status, text="<html>Gateway Timeout</html>")
    with pytest.raises(CreateOutcomeUnknown) as caught:
        create(client)
    assert route.call_count == 1
    assert caught.value.status_code == status


def test_create_200_with_garbage_is_outcome_unknown(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/asks/555/").respond(200, text="<html>oops</html>")
    with pytest.raises(CreateOutcomeUnknown, match="HTML"):
        create(client)


def test_create_success_without_contract_is_outcome_unknown(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/asks/555/").respond(200, json={"success": True})
    with pytest.raises(CreateOutcomeUnknown):
        create(client)


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(
            429, headers={"Retry-After": "2"}, json={"detail": "API requests too frequent endpoint threshold=4.5"}
        ),
        httpx.Response(503, text="Service Unavailable"),
    ],
    ids=["429", "503"],
)
def test_create_refused_by_the_server_is_safely_retried(
    client: VastClient, router: respx.Router, sleeps: SleepRecorder, refusal: httpx.Response
) -> None:
    route = router.put("/api/v0/asks/555/").mock(
        side_effect=[refusal, httpx.Response(200, json={"success": True, "new_contract": 77})]
    )
    result = create(client)
    assert result.new_contract == 77
    assert route.call_count == 2
    assert len(sleeps.calls) == 1
    first, second = (json.loads(call.request.content) for call in route.calls)
    assert first == second


def test_create_is_resent_when_the_connection_never_opened(client: VastClient, router: respx.Router) -> None:
    route = router.put("/api/v0/asks/555/").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json={"success": True, "new_contract": 78})]
    )
    assert create(client).new_contract == 78
    assert route.call_count == 2


def test_create_that_never_connects_is_unreachable_not_unknown(
    make_client: Callable[..., VastClient], router: respx.Router
) -> None:
    client = make_client(attempts=3)
    route = router.put("/api/v0/asks/555/").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(ApiUnreachable):
        create(client)
    assert route.call_count == 3
