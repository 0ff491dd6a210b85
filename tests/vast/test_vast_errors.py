"""Refusals become typed errors with status, Vast's error code and msg; nothing leaks the key; bodies never crash us."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import respx

from glmdeploy.errors import GlmdeployError
from glmdeploy.vast.client import VastClient
from glmdeploy.vast.errors import ApiError, AuthError, InsufficientCredit, NotFound, RateLimited, VastError
from vast.conftest import BASE, KEY


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"success": False, "error": "auth_error", "msg": "Invalid user key"}),
        (404, {"success": False, "error": "auth_error", "msg": "Invalid user key"}),
        (404, {"msg": "Invalid user key"}),
        (403, {"error": "auth_error", "msg": "Bad key"}),
        (401, {"detail": "Unauthorized"}),
    ],
    ids=["401", "404-auth_error", "404-msg-only", "403-auth_error", "401-no-code"],
)
def test_refused_key_is_auth_error_whatever_the_status(
    make_client: Callable[..., VastClient], router: respx.Router, status: int, body: dict[str, object]
) -> None:
    client = make_client(key_source="VAST_API_KEY")
    route = router.get("/api/v0/instances/1/").respond(status, json=body)
    with pytest.raises(AuthError) as caught:
        client.show_instance(1)
    error = caught.value
    assert route.call_count == 1  # never retried
    assert error.exit_code == 6
    assert error.status_code == status
    assert error.error == body.get("error")
    assert "VAST_API_KEY" in str(error)  # where the refused key came from
    assert error.hint is not None and "vastai set api-key" in error.hint
    assert KEY not in str(error)


def test_errors_carry_status_code_and_msg(client: VastClient, router: respx.Router) -> None:
    router.post("/api/v0/bundles/").respond(
        400, json={"success": False, "error": "invalid_request", "msg": "dph_total is not a valid search key"}
    )
    with pytest.raises(ApiError) as caught:
        client.search_offers({})
    error = caught.value
    assert isinstance(error, VastError) and isinstance(error, GlmdeployError)
    assert (error.status_code, error.error, error.msg) == (
        400,
        "invalid_request",
        "dph_total is not a valid search key",
    )
    assert error.operation == "search offers"
    assert (
        str(error) == "Vast.ai could not search offers (HTTP 400 invalid_request: dph_total is not a valid search key)"
    )


def test_html_error_page_is_a_one_line_api_error(client: VastClient, router: respx.Router) -> None:
    html = "<!DOCTYPE html>\n<html><head><title>500</title></head>\n<body><h1>Server Error</h1></body></html>"
    router.put("/api/v0/instances/2/").respond(500, text=html, headers={"Content-Type": "text/html"})
    with pytest.raises(ApiError) as caught:
        client.set_label(2, "x")
    message = str(caught.value)
    assert "\n" not in message
    assert "HTML page" in message
    assert "<h1>" not in message
    assert caught.value.status_code == 500


@pytest.mark.parametrize(
    "content",
    [b"<html><body>maintenance</body></html>", b"", b"\x00\xff\xfe garbage \x1b[31m", b'{"offers": [', b"[1, 2, 3]"],
    ids=["html", "empty", "binary", "truncated-json", "json-list"],
)
def test_unreadable_success_body_is_an_api_error_not_a_crash(
    client: VastClient, router: respx.Router, content: bytes
) -> None:
    router.post("/api/v0/bundles/").respond(200, content=content)
    with pytest.raises(ApiError) as caught:
        client.search_offers({})
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message and "\x00" not in message
    assert len(message) < 300


def test_plain_text_error_body_is_kept_as_msg(make_client: Callable[..., VastClient], router: respx.Router) -> None:
    client = make_client(attempts=1)
    router.post("/api/v0/bundles/").respond(429, text="API requests too frequent: endpoint threshold=2")
    with pytest.raises(RateLimited) as caught:
        client.search_offers({})
    assert caught.value.msg == "API requests too frequent: endpoint threshold=2"


def test_200_with_success_false_is_checked(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/instances/3/").respond(
        200, json={"success": False, "error": "resources_unavailable", "msg": "Required resources are unavailable"}
    )
    with pytest.raises(ApiError) as caught:
        client.set_label(3, "x")
    assert caught.value.status_code == 200
    assert caught.value.error == "resources_unavailable"


def test_404_is_not_found(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/instances/3/").respond(404, json={"error": "not_found", "msg": "nope"})
    with pytest.raises(NotFound) as caught:
        client.set_label(3, "x")
    assert caught.value.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"success": False, "error": "no_such_instance", "msg": "Instance 3 not found."},
        {"success": False, "error": "not_found", "msg": "Instance 3 not found."},
        {"detail": "Not Found"},
    ],
    ids=["no_such_instance", "not_found", "no-code"],
)
def test_any_non_auth_404_on_delete_means_already_gone(
    client: VastClient, router: respx.Router, body: dict[str, object]
) -> None:
    route = router.delete("/api/v0/instances/3/").respond(404, json=body)
    assert client.destroy_instance(3) is False
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"success": False, "error": "invalid_args", "msg": "Your account lacks credit; see the billing page."}),
        (400, {"success": False, "error": "missing_billing", "msg": "You lack credit, see the billing page."}),
        (400, {"success": False, "error": "insufficient_credit", "msg": "You lack credit."}),
        (402, {"detail": "Payment Required"}),
    ],
    ids=["create-invalid_args", "missing_billing", "insufficient_credit", "402"],
)
def test_lack_of_credit_is_its_own_error_with_exit_8(
    client: VastClient, router: respx.Router, status: int, body: dict[str, object]
) -> None:
    route = router.put("/api/v0/asks/7/").respond(status, json=body)
    with pytest.raises(InsufficientCredit) as caught:
        client.create_instance(7, image="img", env={}, onstart=None, disk=10, label="glmdeploy:x")
    assert route.call_count == 1  # never retried: only the user can fix it
    assert caught.value.exit_code == 8
    assert "cannot pay" in str(caught.value) and "billing" in (caught.value.hint or "")


def test_an_ordinary_400_is_not_mistaken_for_credit(client: VastClient, router: respx.Router) -> None:
    router.put("/api/v0/asks/7/").respond(400, json={"error": "invalid_args", "msg": "disk too large"})
    with pytest.raises(ApiError) as caught:
        client.create_instance(7, image="img", env={}, onstart=None, disk=10, label="glmdeploy:x")
    assert not isinstance(caught.value, InsufficientCredit) and caught.value.exit_code == 7


def test_key_never_appears_in_errors_even_if_the_server_echoes_it(client: VastClient, router: respx.Router) -> None:
    router.post("/api/v0/bundles/").respond(400, json={"error": f"bad_{KEY}", "msg": f"key {KEY} is malformed"})
    with pytest.raises(ApiError) as caught:
        client.search_offers({})
    error = caught.value
    for text in (str(error), repr(error), error.msg or "", error.error or "", str(error.args)):
        assert KEY not in text
    assert "***" in str(error)


def test_key_never_appears_in_connection_errors(make_client: Callable[..., VastClient], router: respx.Router) -> None:
    client = make_client(attempts=1)
    router.get("/api/v0/instances/1/").mock(side_effect=httpx.ConnectError(f"failed with {KEY}"))
    with pytest.raises(VastError) as caught:
        client.show_instance(1)
    assert KEY not in str(caught.value)


def test_key_never_appears_in_the_client_repr(client: VastClient) -> None:
    assert KEY not in repr(client)
    assert KEY not in str(client)
    assert "api_key=set" in repr(client)
    assert BASE in repr(client)


def test_client_without_key_sends_no_authorization(
    make_client: Callable[..., VastClient], router: respx.Router
) -> None:
    client = make_client(api_key=None)
    route = router.post("/api/v0/bundles/").respond(200, json={"offers": []})
    assert client.search_offers({}) == []
    assert "Authorization" not in route.calls[0].request.headers
    assert "api_key=none" in repr(client)


def test_too_many_redirects_is_an_api_error(client: VastClient, router: respx.Router) -> None:
    router.post("/api/v0/bundles/").respond(307, headers={"Location": f"{BASE}/api/v0/bundles/"})
    with pytest.raises(ApiError, match="TooManyRedirects"):
        client.search_offers({})
