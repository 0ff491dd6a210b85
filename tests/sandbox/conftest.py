"""Fixtures for tests of the sandbox (shared with the engines tests).

- ``sandbox``: a sandbox served from a background thread on a free 127.0.0.1 port
  (time scale 0.001: an instance is running ~0.13 s after create). Yields a ``ThreadedSandbox``
  (``.url``, ``.api_key``, ``.world``, ``.call(coro)``); stopped, engines included, after the test.
- ``start_sandbox``: the same with your own ``SandboxConfig`` fields, e.g.
  ``start_sandbox(faults="exited=1", seed=3)``; every sandbox it starts is stopped after the test.
- ``vast``: an ``ApiClient`` (httpx, Bearer key) bound to ``sandbox``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from glmdeploy.sandbox.process import SandboxConfig, ThreadedSandbox, serve_in_thread
from waits import HANG_S

TEST_TIME_SCALE = 0.001
IMAGE = "vllm/vllm-openai:v0.11.0"


class ApiClient:
    """A thin Vast API client for tests: raw status codes and bodies, nothing hidden."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=10.0)

    def close(self) -> None:
        self.http.close()

    def search(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.http.post("/api/v0/bundles/", json=query)
        assert response.status_code == 200, response.text
        offers: list[dict[str, Any]] = response.json()["offers"]
        return offers

    def first_offer(self, **filters: Any) -> dict[str, Any]:
        query: dict[str, Any] = {"rentable": {"eq": True}, "direct_port_count": {"gte": 1},
                                 "order": [["dph_total", "asc"]], "limit": 5}
        query.update({k: {"eq": v} for k, v in filters.items()})
        offers = self.search(query)
        assert offers, f"no offer for {filters}"
        return offers[0]

    def create(self, offer_id: int, **body: Any) -> httpx.Response:
        payload: dict[str, Any] = {"image": IMAGE, "env": {"-p 8000:8000": "1"}, "disk": 50,
                                   "runtype": "ssh_direc ssh_proxy", "cancel_unavail": True}
        payload.update(body)
        return self.http.put(f"/api/v0/asks/{offer_id}/", json=payload)

    def rent(self, **body: Any) -> int:
        """Create an instance on the cheapest rentable offer; returns its id."""
        offer = self.first_offer()
        response = self.create(offer["id"], **body)
        assert response.status_code == 200 and response.json()["success"] is True, response.text
        instance_id: int = response.json()["new_contract"]
        return instance_id

    def show(self, instance_id: int) -> dict[str, Any] | None:
        response = self.http.get(f"/api/v0/instances/{instance_id}/", params={"owner": "me"})
        assert response.status_code == 200, response.text
        row: dict[str, Any] | None = response.json()["instances"]
        return row

    def wait_status(self, instance_id: int, status: str, timeout: float = HANG_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        row = self.show(instance_id)
        while time.monotonic() < deadline:
            row = self.show(instance_id)
            if row is not None and row["actual_status"] == status:
                return row
            time.sleep(0.02)
        raise AssertionError(f"instance {instance_id} never reached {status}: {row}")

    def logs(self, instance_id: int, **body: Any) -> str:
        response = self.http.put(f"/api/v0/instances/request_logs/{instance_id}/", json=body)
        assert response.status_code == 200, response.text
        result = httpx.get(response.json()["result_url"], timeout=10)
        assert result.status_code == 200, result.text
        return result.text

    def destroy(self, instance_id: int) -> httpx.Response:
        return self.http.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})

    def ledger(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_sandbox/ledger", timeout=10).json()
        return data

    def set_faults(self, spec: str, mode: str = "replace") -> httpx.Response:
        return httpx.post(f"{self.url}/_sandbox/faults", json={"spec": spec, "mode": mode}, timeout=10)


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., ThreadedSandbox]]:
    with ExitStack() as stack:

        def start(**config: Any) -> ThreadedSandbox:
            config.setdefault("time_scale", TEST_TIME_SCALE)
            return stack.enter_context(serve_in_thread(SandboxConfig(**config)))

        yield start


@pytest.fixture
def sandbox(start_sandbox: Callable[..., ThreadedSandbox]) -> ThreadedSandbox:
    return start_sandbox()


@pytest.fixture
def vast(sandbox: ThreadedSandbox) -> Iterator[ApiClient]:
    client = ApiClient(sandbox.url, sandbox.api_key)
    yield client
    client.close()


@pytest.fixture
def client_for() -> Iterator[Callable[..., ApiClient]]:
    """``client_for(sandbox, api_key=...)``: an ``ApiClient`` for another sandbox or key."""
    clients: list[ApiClient] = []

    def make(sandbox: ThreadedSandbox, api_key: str | None = "<sandbox>") -> ApiClient:
        client = ApiClient(sandbox.url, sandbox.api_key if api_key == "<sandbox>" else api_key)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
