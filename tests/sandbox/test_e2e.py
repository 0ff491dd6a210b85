"""End to end over real sockets: search, create, poll, logs until ready, call the endpoint, destroy."""

from __future__ import annotations

import importlib
import time
from typing import Any

import httpx
import pytest

from glmdeploy.engines import get_engine
from glmdeploy.onstart import OnstartOptions, render
from glmdeploy.profiles import load_profile
from glmdeploy.vast.filters import offer_query
from waits import HANG_S

# These in-process tests speak plain http to the simulated engine; TLS has its own tests (test_tls_*).
PLAIN_HTTP = OnstartOptions(tls=False)


def _engines_available() -> bool:
    try:
        module = importlib.import_module("glmdeploy.sandbox.engines")
    except ImportError:
        return False
    return all(hasattr(module, name) for name in ("SimulatedEngine", "launch_spec_from", "EngineTiming"))


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not _engines_available(),
                       reason="package glmdeploy.sandbox.engines (simulated engines) is not available yet"),
]

ENDPOINT_KEY = "sk-sandbox-e2e-key"
# One shipped profile per engine kind.
PROFILES = {"sglang": "4x3090", "vllm": "2x5090", "lightllm": "h200"}


def _deploy(vast: Any, profile_name: str) -> tuple[int, dict[str, Any], Any]:
    profile = load_profile(profile_name)
    offers = vast.search(offer_query(profile.hardware))
    assert len({o["machine_id"] for o in offers}) >= 2
    response = vast.create(offers[0]["id"], image=profile.engine.image, disk=profile.hardware.disk_gb,
                           env={f"-p {profile.engine.port}:{profile.engine.port}": "1", "GLM_API_KEY": ENDPOINT_KEY},
                           onstart=render(profile, PLAIN_HTTP), label=f"glmdeploy-e2e-{profile_name}")
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    return response.json()["new_contract"], offers[0], profile


def _logs_until(vast: Any, instance_id: int, markers: tuple[str, ...], timeout: float = HANG_S) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = str(vast.logs(instance_id, tail="2000"))
        if any(marker in text for marker in markers):
            return text
        time.sleep(0.1)
    raise AssertionError(f"no ready marker {markers} in logs:\n{text[-2000:]}")


@pytest.mark.parametrize("kind", sorted(PROFILES))
def test_deploy_call_and_destroy(vast: Any, kind: str) -> None:
    instance_id, offer, profile = _deploy(vast, PROFILES[kind])
    row = vast.wait_status(instance_id, "running")
    assert row["machine_id"] == offer["machine_id"]
    engine = get_engine(kind)
    logs = _logs_until(vast, instance_id, engine.ready_markers)
    assert logs.strip()
    host_port = row["ports"][f"{profile.engine.port}/tcp"][0]["HostPort"]
    base = f"http://{row['public_ipaddr']}:{host_port}"
    models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {ENDPOINT_KEY}"}, timeout=10)
    assert models.status_code == 200
    assert models.json()["data"][0]["id"] == engine.reported_model_name(profile)
    anonymous = httpx.get(f"{base}/v1/models", timeout=10)
    assert anonymous.status_code == 401
    chat = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {ENDPOINT_KEY}"},
                      json={"model": models.json()["data"][0]["id"], "max_tokens": 16,
                            "messages": [{"role": "user", "content": "Say hi"}]}, timeout=20)
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]
    assert vast.destroy(instance_id).json() == {"success": True}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/v1/models", timeout=2)  # the engine stopped with the instance
    ledger = vast.ledger()
    assert ledger["running"] == 0 and ledger["live"] == 0 and ledger["errors"] == []
    assert ledger["instances"][0]["status"] == "destroyed" and ledger["instances"][0]["cost"] > 0


def test_engine_fault_reaches_the_engine(start_sandbox: Any, client_for: Any) -> None:
    vast = client_for(start_sandbox(faults="engine_oom"))
    instance_id, _, profile = _deploy(vast, "2x5090")
    row = vast.wait_status(instance_id, "running")
    text = _logs_until(vast, instance_id, ("CUDA out of memory", "OutOfMemoryError"))
    assert "Application startup complete." not in text
    host_port = row["ports"][f"{profile.engine.port}/tcp"][0]["HostPort"]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{host_port}/health", timeout=2)
    vast.destroy(instance_id)
    assert vast.ledger()["live"] == 0


def test_without_onstart_nothing_listens(vast: Any) -> None:
    instance_id = vast.rent(onstart=None)
    row = vast.wait_status(instance_id, "running")
    port = row["ports"]["8000/tcp"][0]["HostPort"]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
