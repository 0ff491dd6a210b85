"""The response models accept what the real API sends: nulls, new fields, numbers as strings, odd port maps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from glmdeploy.vast.models import CreateResult, Instance, InstancePage, Offer


def test_offer_with_only_an_id_and_nulls_everywhere() -> None:
    fields = ["gpu_name", "num_gpus", "gpu_ram", "dph_total", "reliability", "inet_down", "score", "geolocation"]
    offer = Offer.from_api({"id": 3, **dict.fromkeys(fields)})
    assert offer.id == 3
    assert all(getattr(offer, name) is None for name in fields)
    assert not offer.datacenter


def test_offer_keeps_unknown_fields_and_strips_strings() -> None:
    offer = Offer.from_api({"id": 3, "gpu_name": " RTX 4090 ", "hosting_type": 1, "new_field": [1, 2]})
    assert offer.gpu_name == "RTX 4090"
    assert offer.datacenter
    assert offer.model_extra == {"new_field": [1, 2]}


def test_offer_malformed_optional_field_becomes_none_but_a_bad_id_fails() -> None:
    offer = Offer.from_api({"id": 3, "num_gpus": "two", "inet_down": {"x": 1}, "gpu_name": "A100"})
    assert (offer.num_gpus, offer.inet_down, offer.gpu_name) == (None, None, "A100")
    with pytest.raises(ValidationError):
        Offer.from_api({"id": "abc", "num_gpus": "two"})
    with pytest.raises(ValidationError):
        Offer.from_api({"gpu_name": "no id"})


def test_instance_host_port_takes_the_first_binding_with_a_port() -> None:
    instance = Instance.from_api(
        {
            "id": 1,
            "public_ipaddr": " 198.51.100.4 \n",
            "ports": {
                "8000/tcp": [{"HostIp": "0.0.0.0"}, {"HostIp": "0.0.0.0", "HostPort": ""}, {"HostPort": 40001}],
                "8080/tcp": None,
                "22/tcp": [],
            },
        }
    )
    assert instance.host_port(8000) == 40001  # numbers arrive as strings or ints: both work
    assert instance.host_port(8080) is None
    assert instance.host_port(22) is None
    assert instance.host_port(9999) is None
    assert instance.service_url(8000) == "http://198.51.100.4:40001"


def test_instance_ipv6_service_url_is_bracketed() -> None:
    instance = Instance.from_api({"id": 1, "public_ipaddr": "2001:db8::1", "ports": {"8000/tcp": [{"HostPort": "1"}]}})
    assert instance.service_url() == "http://[2001:db8::1]:1"


def test_instance_tolerates_malformed_ports_and_extra_env() -> None:
    instance = Instance.from_api({"id": 1, "ports": "garbage", "extra_env": [["A", "1"], ["odd"], "x", ["B", None]]})
    assert instance.ports is None and instance.host_port() is None
    assert instance.extra_env == {"A": "1", "B": ""}


def test_instance_drops_unknown_fields_so_secrets_do_not_linger() -> None:
    instance = Instance.from_api({"id": 1, "jupyter_token": "jt", "onstart": "GLM_API_KEY=abc run", "brand_new": 1})
    dumped = instance.model_dump()
    assert "jupyter_token" not in dumped and "brand_new" not in dumped
    assert "GLM_API_KEY=abc" not in repr(instance)


def test_instance_page_with_null_instances() -> None:
    page = InstancePage.from_api({"instances": None, "next_token": None, "label_counts": {"": 1}})
    assert page.parsed_instances() == []
    assert page.label_counts == {"": 1}


def test_create_result_states() -> None:
    created = CreateResult.from_api({"success": True, "new_contract": 9, "instance_api_key": "k-123"})
    stopped = CreateResult.from_api({"success": False, "new_contract": 10})
    refused = CreateResult.from_api({"success": False, "error": "no_such_ask", "msg": "gone"})
    assert created.instance_id == 9 and not created.created_stopped
    assert stopped.created_stopped and stopped.instance_id == 10
    assert not refused.created_stopped and refused.instance_id is None
    assert "k-123" not in repr(created) and "k-123" not in created.model_dump_json()
