"""`sandbox start --ttft-ms/--tpot-ms` shape the simulated engines' streams."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

from .conftest import LONG_TTL, Sandbox

pytestmark = pytest.mark.e2e


def test_configured_latency_reaches_the_engine(cli: Callable[..., subprocess.CompletedProcess[str]],
                                               sandbox: Callable[..., Sandbox]) -> None:
    sandbox()
    cli("sandbox", "stop", check_exit=0)
    cli("sandbox", "start", "--time-scale", "0.002", "--ttft-ms", "150", "--tpot-ms", "30", check_exit=0)
    cli("up", "-p", "2x5090", "--sandbox", "--no-smoke", "--ttl", LONG_TTL, check_exit=0)
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in cli("env", check_exit=0).stdout.splitlines()
    )
    base, key, model = (exports[k].strip("'") for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MODEL"))
    stamps: list[float] = []
    start = time.perf_counter()
    body = {"model": model, "messages": [{"role": "user", "content": "count"}], "max_tokens": 8, "stream": True,
            "ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}}
    # Over TLS, trusting what `env` exports (its CA bundle: the system CAs plus the pinned certificate).
    verify = ssl.create_default_context(cafile=exports["SSL_CERT_FILE"].strip("'"))
    with httpx.stream("POST", base + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=30, verify=verify) as r:
        for line in r.iter_lines():
            payload = line.removeprefix("data:").strip()
            if not line.startswith("data:") or payload == "[DONE]":
                continue
            choices = json.loads(payload).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                stamps.append(time.perf_counter() - start)
    assert len(stamps) >= 4
    # Token i cannot arrive before the engine sent it: 150 ms to the first, then 30 ms per token. These
    # are lower bounds measured from the request, so a loaded client that reads late (and sees tokens
    # bunched) cannot fail them, while an engine that ignored the settings or bunched them would.
    for i, stamp in enumerate(stamps):
        assert stamp >= 0.14 + i * 0.028, (i, stamps)
    cli("destroy", "--yes", check_exit=0)
