"""Key discovery order (vast-api.md §1.3), base URL and path rules (§1.1), and redirects that must not leak the key."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import respx

from glmdeploy.errors import MissingApiKey, UsageError
from glmdeploy.vast.client import DEFAULT_BASE_URL, VastClient, api_path, client_from_options, resolve_base_url
from glmdeploy.vast.keys import MISSING_KEY_MESSAGE, discover_api_key, find_api_key
from vast.conftest import BASE, KEY


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def key_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    home = Path(os.environ["HOME"])  # the isolated empty home from tests/conftest.py
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    return {"xdg": xdg / "vastai" / "vast_api_key", "legacy": home / ".vast_api_key", "home": home}


def test_flag_beats_everything(key_places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "from-env")
    write(key_places["xdg"], "from-xdg\n")
    write(key_places["legacy"], "from-legacy\n")
    found = discover_api_key("  from-flag  ")
    assert (found.value, found.source) == ("from-flag", "--api-key")


def test_env_beats_files(key_places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", " from-env\n")
    write(key_places["xdg"], "from-xdg\n")
    write(key_places["legacy"], "from-legacy\n")
    found = discover_api_key(None)
    assert (found.value, found.source) == ("from-env", "VAST_API_KEY")


def test_xdg_file_beats_legacy_file(key_places: dict[str, Path]) -> None:
    write(key_places["xdg"], "\n  from-xdg \n")
    write(key_places["legacy"], "from-legacy\n")
    found = discover_api_key()
    assert found.value == "from-xdg"
    assert found.source == str(key_places["xdg"])


def test_legacy_file_is_the_last_resort(key_places: dict[str, Path]) -> None:
    write(key_places["legacy"], "from-legacy\n")
    assert discover_api_key().value == "from-legacy"


def test_without_xdg_config_home_the_default_config_dir_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    home = Path(os.environ["HOME"])
    write(home / ".config" / "vastai" / "vast_api_key", "from-default-xdg\n")
    write(home / ".vast_api_key", "from-legacy\n")
    assert discover_api_key().value == "from-default-xdg"


def test_blank_values_fall_through(key_places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "   ")
    write(key_places["xdg"], "\n\n")
    write(key_places["legacy"], "from-legacy")
    assert discover_api_key("").value == "from-legacy"


def test_unreadable_key_file_is_skipped(key_places: dict[str, Path]) -> None:
    key_places["xdg"].mkdir(parents=True)  # a directory where the file should be
    write(key_places["legacy"], "from-legacy")
    assert discover_api_key().value == "from-legacy"


def test_no_key_anywhere_says_how_to_fix_it(key_places: dict[str, Path]) -> None:
    assert find_api_key() is None
    with pytest.raises(MissingApiKey) as caught:
        discover_api_key()
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert message == MISSING_KEY_MESSAGE
    assert "--api-key" in message and "VAST_API_KEY" in message and "vastai set api-key" in message


def test_found_key_repr_hides_the_value() -> None:
    found = discover_api_key("super-secret-value")
    assert "super-secret-value" not in repr(found)


def test_client_from_options_discovers_key_and_url(
    key_places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(key_places["legacy"], "legacy-key\n")
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9/")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"offers": []})

    with client_from_options(None, None, transport=httpx.MockTransport(handler)) as client:
        assert client.base_url == "http://127.0.0.1:9"
        assert client.key_source == str(key_places["legacy"])
        client.search_offers({})
    assert str(seen[0].url) == "http://127.0.0.1:9/api/v0/bundles/"
    assert seen[0].headers["Authorization"] == "Bearer legacy-key"


def test_client_from_options_without_key_is_missing_api_key(key_places: dict[str, Path]) -> None:
    with pytest.raises(MissingApiKey):
        client_from_options(None, "https://console.vast.ai")


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/bundles/", "/api/v0/bundles/"),
        ("/asks/12", "/api/v0/asks/12/"),
        ("instances/request_logs/3/", "/api/v0/instances/request_logs/3/"),
        ("/api/v1/instances/", "/api/v1/instances/"),
        ("/api/v12/thing", "/api/v12/thing/"),
        ("/api/vX/thing/", "/api/v0/api/vX/thing/"),
    ],
)
def test_api_path(path: str, expected: str) -> None:
    assert api_path(path) == expected


def test_base_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base_url(None) == DEFAULT_BASE_URL == "https://console.vast.ai"
    monkeypatch.setenv("VAST_URL", "https://env.example/")
    assert resolve_base_url(None) == "https://env.example"
    assert resolve_base_url("http://127.0.0.1:8787/") == "http://127.0.0.1:8787"
    monkeypatch.setenv("VAST_URL", "")
    assert resolve_base_url("") == DEFAULT_BASE_URL


@pytest.mark.parametrize("bad", ["ftp://host", "not a url", "console.vast.ai", "http://"])
def test_bad_api_url_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match=r"invalid Vast\.ai API URL"):
        resolve_base_url(bad)


def test_key_is_never_put_in_the_url(client: VastClient, router: respx.Router) -> None:
    routes = [
        router.post("/api/v0/bundles/").respond(200, json={"offers": []}),
        router.get("/api/v0/instances/1/").respond(200, json={"instances": None}),
        router.get("/api/v1/instances/").respond(200, json={"instances": [], "next_token": None}),
    ]
    client.search_offers({})
    client.show_instance(1)
    client.list_instances(label="x")
    for route in routes:
        request = route.calls[0].request
        assert KEY not in str(request.url)
        assert "api_key" not in str(request.url)


# ---------------------------------------------------------------- redirects


def test_redirect_to_another_host_drops_authorization(client: VastClient, router: respx.Router) -> None:
    router.post("/api/v0/bundles/").respond(307, headers={"Location": "https://elsewhere.example/api/v0/bundles/"})
    foreign = router.post("https://elsewhere.example/api/v0/bundles/").respond(200, json={"offers": [{"id": 5}]})
    assert [o.id for o in client.search_offers({"limit": 1})] == [5]
    request = foreign.calls[0].request
    assert "Authorization" not in request.headers
    assert KEY not in str(request.url)
    assert KEY.encode() not in request.content


def test_redirect_to_another_port_or_scheme_drops_authorization(client: VastClient, router: respx.Router) -> None:
    router.get("/api/v0/instances/1/").respond(302, headers={"Location": "http://console.vast.test:8080/x/"})
    other = router.get("http://console.vast.test:8080/x/").respond(200, json={"instances": None})
    client.show_instance(1)
    assert "Authorization" not in other.calls[0].request.headers


def test_redirect_on_the_same_host_keeps_authorization(client: VastClient, router: respx.Router) -> None:
    router.get("/api/v0/instances/1/").respond(301, headers={"Location": f"{BASE}/api/v0/instances/1/moved/"})
    moved = router.get("/api/v0/instances/1/moved/").respond(200, json={"instances": None})
    client.show_instance(1)
    assert moved.calls[0].request.headers["Authorization"] == f"Bearer {KEY}"


def test_timeouts_are_configurable(make_client: Callable[..., VastClient], router: respx.Router) -> None:
    client = make_client(timeout=httpx.Timeout(5.0, connect=2.0))
    route = router.post("/api/v0/bundles/").respond(200, json={"offers": []})
    client.search_offers({})
    timeout = route.calls[0].request.extensions["timeout"]
    assert timeout["connect"] == 2.0 and timeout["read"] == 5.0


def test_default_timeouts(client: VastClient, router: respx.Router) -> None:
    route = router.post("/api/v0/bundles/").respond(200, json={"offers": []})
    client.search_offers({})
    timeout = route.calls[0].request.extensions["timeout"]
    assert timeout["connect"] == 10.0 and timeout["read"] == 30.0
