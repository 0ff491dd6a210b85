"""A Vast.ai API double for the client tests: a respx router behind the client's injectable transport."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import respx

from glmdeploy.vast.client import VastClient

BASE = "https://console.vast.test"
KEY = "vk-SECRET-0123456789abcdef"


class SleepRecorder:
    """Stands in for time.sleep: records every wait instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def router() -> Iterator[respx.Router]:
    routes = respx.Router(base_url=BASE, assert_all_called=False, assert_all_mocked=True)
    yield routes


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def make_client(router: respx.Router, sleeps: SleepRecorder) -> Iterator[Callable[..., VastClient]]:
    made: list[VastClient] = []

    def build(**options: Any) -> VastClient:
        options.setdefault("api_key", KEY)
        options.setdefault("base_url", BASE)
        client = VastClient(
            options.pop("api_key"), transport=httpx.MockTransport(router.handler), sleep=sleeps, **options
        )
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., VastClient]) -> VastClient:
    return make_client()
