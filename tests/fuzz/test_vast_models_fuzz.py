"""Property tests: whatever Vast.ai sends, the models and the client end in a value or a glmdeploy error.

The models take missing, null, extra and wrongly-typed fields; only a bad essential field (an
object's ``id``) may fail validation. The client, fed the same garbage over a mock transport with any
status code, either returns or raises a ``GlmdeployError``: never KeyError, TypeError,
AttributeError or a RecursionError from a pathological body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from glmdeploy.errors import GlmdeployError
from glmdeploy.vast.client import VastClient
from glmdeploy.vast.models import CreateResult, Instance, InstancePage, Offer, VastModel

BASE = "https://console.vast.test"
KEY = "vk-FUZZ-0123456789abcdef"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
odd_values = st.one_of(
    json_values,
    st.sampled_from(["", " 12 ", "12", "1e3", "NaN", "true", "null", "8000/tcp", "1.2.3.4 ", "-1", "0x10", KEY]),
)
MODELS: list[type[VastModel]] = [Offer, Instance, CreateResult, InstancePage]
SAMPLES: dict[type[VastModel], dict[str, Any]] = {
    Offer: {"id": 42, "machine_id": 7, "gpu_name": "RTX 3090", "num_gpus": 4, "dph_total": 1.2, "reliability": 0.99},
    Instance: {
        "id": 9,
        "label": "glmdeploy:x",
        "actual_status": "running",
        "public_ipaddr": "1.2.3.4 ",
        "ports": {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41000"}]},
        "extra_env": [["GLM_API_KEY", "k"], ["-p 8000:8000", "1"]],
    },
    CreateResult: {"success": True, "new_contract": 9, "instance_api_key": "secret"},
    InstancePage: {"instances": [{"id": 1}], "next_token": None, "instances_found": 1},
}


@st.composite
def payloads(draw: st.DrawFn, model: type[VastModel]) -> dict[str, Any]:
    data = dict(SAMPLES[model])
    fields = sorted(model.model_fields)
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        action = draw(st.sampled_from(["drop", "null", "retype", "extra"]))
        name = draw(st.sampled_from(fields))
        if action == "drop":
            data.pop(name, None)
        elif action == "null":
            data[name] = None
        elif action == "retype":
            data[name] = draw(odd_values)
        else:
            data[draw(st.text(max_size=12))] = draw(json_values)
    return data


def _essential_is_bad(model: type[VastModel], data: dict[str, Any]) -> bool:
    """Whether the essential fields alone fail to validate (what from_api may refuse for)."""
    probe = {k: v for k, v in data.items() if k in model.essential}
    try:
        model.model_validate(probe)
    except ValidationError as exc:
        return any(err["loc"] and str(err["loc"][0]) in model.essential for err in exc.errors())
    return False


def _exercise(value: VastModel) -> None:
    """Every property and helper callers use must work on whatever was accepted."""
    if isinstance(value, Instance):
        for port in (8000, 22):
            value.host_port(port)
            value.endpoint(port)
            value.service_url(port)
        assert "extra_env" not in repr(value)
    elif isinstance(value, Offer):
        _ = value.datacenter
    elif isinstance(value, CreateResult):
        _ = (value.instance_id, value.created_stopped)
        assert "secret" not in repr(value)
    elif isinstance(value, InstancePage):
        try:
            value.parsed_instances()
        except ValidationError:
            pass  # a row without a usable id: the client turns this into ApiError


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(deadline=None)
@given(data=st.data())
def test_models_accept_garbage_or_refuse_only_for_the_essential_field(
    model: type[VastModel], data: st.DataObject
) -> None:
    raw = data.draw(payloads(model))
    try:
        value = model.from_api(raw)
    except ValidationError:
        assert _essential_is_bad(model, raw), raw
        return
    assert not _essential_is_bad(model, raw)
    alone = model.model_validate({k: v for k, v in raw.items() if k in model.essential})
    for name in model.essential:
        assert getattr(value, name) == getattr(alone, name)
    _exercise(value)


@given(st.builds(dict, success=odd_values, new_contract=st.integers(min_value=1, max_value=10**9)))
@example({"success": "maybe", "new_contract": 5})
def test_a_malformed_success_flag_never_loses_the_new_instance_id(raw: dict[str, Any]) -> None:
    # Losing new_contract would leave a rented instance nobody tracks.
    assert CreateResult.from_api(raw).new_contract == raw["new_contract"]


host_texts = st.one_of(
    st.text(max_size=30),
    st.ip_addresses().map(str),
    st.sampled_from(["evil.example/x?", "1.2.3.4:80", "user@host", "h#frag", "a b", "host.example", "fe80::1%eth0"]),
)
port_texts = st.one_of(st.text(max_size=6), st.integers(min_value=-5, max_value=70_000).map(str), st.just("²"))


@given(host=host_texts, port=port_texts)
@example(host="1.2.3.4", port="²")  # str.isdigit() accepts it, int() raised ValueError
@example(host="evil.example/x?", port="41000")  # would have sent the endpoint key to evil.example
def test_service_url_is_none_or_points_exactly_at_the_instance(host: str, port: str) -> None:
    instance = Instance.from_api({"id": 1, "public_ipaddr": host, "ports": {"8000/tcp": [{"HostPort": port}]}})
    url = instance.service_url(8000)
    if url is None:
        return
    parsed = httpx.URL(url)
    assert parsed.host == (instance.public_ipaddr or "").lower().strip("[]")
    assert parsed.port == int(port) and parsed.path in ("", "/") and not parsed.query and not parsed.fragment
    assert parsed.userinfo == b""


# ---------------------------------------------------------------------------------------------- client

STATUSES = st.sampled_from([200, 200, 200, 201, 400, 401, 403, 404, 410, 429, 500, 502, 503, 504])
top_level = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "success": odd_values,
            "offers": st.lists(st.one_of(json_values, payloads(Offer)), max_size=3) | odd_values,
            "instances": st.one_of(payloads(Instance), st.lists(payloads(Instance), max_size=3), odd_values),
            "next_token": odd_values,
            "new_contract": odd_values,
            "result_url": st.sampled_from(["https://logs.vast.test/x.log", "ftp://x", ""]) | odd_values,
            "error": odd_values,
            "msg": odd_values,
            "detail": odd_values,
            "retry_after": odd_values,
        },
    ),
)
bodies = st.one_of(
    top_level.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"", b"<html><body>502</body></html>", b"\xff\xfe{", b'{"offers": [' * 3, b"[" * 100_000]),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Retry-After": st.sampled_from(["1", "0", "99999", "soon", "1e3", ""]),
        "Content-Type": st.sampled_from(["application/json", "text/html", "application/json; charset=latin-1"]),
        "X-RateLimit-Reset": st.sampled_from(["1", "99999999999999999999", "x"]),
    },
)
answers = st.lists(st.tuples(STATUSES, bodies, headers), min_size=1, max_size=4)

OPERATIONS: dict[str, Callable[[VastClient], object]] = {
    "search": lambda c: c.search_offers({"limit": 3}),
    "show": lambda c: c.show_instance(9),
    "list": lambda c: c.list_instances(label_prefix="glmdeploy:"),
    "create": lambda c: c.create_instance(42, image="img", env={}, onstart="true", disk=10, label="glmdeploy:x"),
    "destroy": lambda c: c.destroy_instance(9),
    "logs": lambda c: c.request_logs(9, tail=10),
    "label": lambda c: c.set_label(9, "x"),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@settings(deadline=None)
@given(answers=answers)
@example(answers=[(200, b"[" * 100_000, {})])  # deeper than Python's stack: RecursionError in json
@example(answers=[(200, b'{"success": true, "new_contract": "x"}', {})])
def test_client_operations_return_or_raise_glmdeploy_errors(
    operation: str, answers: list[tuple[int, bytes, dict[str, str]]]
) -> None:
    replies = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        status, body, extra = next(replies, answers[-1])
        return httpx.Response(status, content=body, headers=extra)

    client = VastClient(
        KEY,
        base_url=BASE,
        transport=httpx.MockTransport(handler),
        sleep=lambda _s: None,
        attempts=2,
        log_poll_tries=2,
        log_poll_interval=0,
    )
    with client:
        try:
            OPERATIONS[operation](client)
        except GlmdeployError as exc:
            message = str(exc)
            assert "\n" not in message and KEY not in message
