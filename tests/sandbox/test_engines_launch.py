"""launch_spec_from: what a container would run, read from the onstart script glmdeploy renders."""

from __future__ import annotations

import pytest

from glmdeploy.engines import get_engine
from glmdeploy.onstart import render
from glmdeploy.profiles import load_all
from glmdeploy.sandbox.engines import LaunchSpec, launch_spec_from

ENV = {"GLM_API_KEY": "k"}
PROFILES = load_all()


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_every_shipped_profile_launches_its_engine(profile: object) -> None:
    from glmdeploy.profiles.model import Profile

    assert isinstance(profile, Profile)
    script = render(profile)
    spec = launch_spec_from(profile.engine.image, script, ENV)
    assert spec is not None
    kind = profile.engine.kind
    assert spec.kind == kind
    assert spec.served_model == get_engine(kind).reported_model_name(profile)
    assert spec.context_length == profile.engine.context_length
    # Every engine is behind the onstart's nginx, which terminates TLS and checks the key.
    assert spec.api_key == "k"
    assert spec.proxy is not None and spec.proxy.tls and spec.proxy.san_ip == ENV.get("PUBLIC_IPADDR", "127.0.0.1")
    if kind == "lightllm":
        assert spec.engine_key is None  # LightLLM has no auth of its own: only the proxy's key check
    else:
        assert spec.engine_key == "k"
    assert "${" not in " ".join(spec.argv)


def test_no_script_or_no_engine_means_nothing_listens() -> None:
    assert launch_spec_from("vllm/vllm-openai:latest", None, ENV) is None
    assert launch_spec_from("vllm/vllm-openai:latest", "", ENV) is None
    assert launch_spec_from("ubuntu:22.04", "#!/bin/bash\nsleep infinity\n", ENV) is None


def test_engine_missing_from_the_image_does_not_start() -> None:
    script = "exec python3 -m sglang.launch_server --model-path zai-org/GLM-4.7-Flash\n"
    assert launch_spec_from("vllm/vllm-openai:v0.24.0", script, ENV) is None
    spec = launch_spec_from("lmsysorg/sglang:latest", script, ENV)
    assert spec is not None and spec.kind == "sglang"
    # An image of no known engine: trust the command.
    assert launch_spec_from("example.com/custom:1", script, ENV) is not None


def test_unbound_variable_under_set_u_stops_the_script() -> None:
    script = '#!/bin/bash\nset -u\nexec vllm serve zai-org/GLM-4.7-Flash --api-key "${GLM_API_KEY}"\n'
    assert launch_spec_from("vllm/vllm-openai:latest", script, {}) is None
    # Without set -u bash expands it to "", and an empty key means no auth.
    spec = launch_spec_from("vllm/vllm-openai:latest", script.replace("set -u\n", ""), {})
    assert spec is not None and spec.api_key is None


def test_vllm_key_from_the_exported_variable_and_the_flag_wins() -> None:
    script = 'export VLLM_API_KEY="${GLM_API_KEY}"\nexec vllm serve zai-org/GLM-4.7-Flash\n'
    spec = launch_spec_from("vllm/vllm-openai:latest", script, ENV)
    assert spec is not None and spec.api_key == "k"
    assert spec.served_model == "zai-org/GLM-4.7-Flash"
    flagged = launch_spec_from("vllm/vllm-openai:latest", script.replace("Flash", "Flash --api-key other"), ENV)
    assert flagged is not None and flagged.api_key == "other"


def test_served_model_name_rules() -> None:
    vllm = launch_spec_from(
        "vllm/vllm-openai:latest", "vllm serve org/M --served-model-name first second --port 8000", {}
    )
    assert vllm is not None and vllm.served_model == "first"
    legacy = launch_spec_from("", "python -m vllm.entrypoints.openai.api_server --model org/M", {})
    assert legacy is not None and (legacy.kind, legacy.served_model) == ("vllm", "org/M")
    sglang = launch_spec_from("", "python3 -m sglang.launch_server --model-path=org/M --served-model-name=x", {})
    assert sglang is not None and sglang.served_model == "x"
    lightllm = launch_spec_from(
        "", "LOADWORKER=18 python -m lightllm.server.api_server --model_dir /data/GLM-4.7-Flash/ --tp 1", {}
    )
    assert lightllm is not None and (lightllm.kind, lightllm.served_model) == ("lightllm", "GLM-4.7-Flash")
    named = launch_spec_from("", "python -m lightllm.server.api_server --model_dir /d/M --model_name glm", {})
    assert named is not None and named.served_model == "glm"


def test_quoting_and_expansion_follow_sh() -> None:
    env = {"GLM_API_KEY": "a b'c\"d$e"}
    script = "exec python3 -m sglang.launch_server --model-path 'org/M' --api-key \"${GLM_API_KEY}\" # comment\n"
    spec = launch_spec_from("lmsysorg/sglang:latest", script, env)
    assert spec is not None
    assert spec.api_key == env["GLM_API_KEY"]
    literal = launch_spec_from("lmsysorg/sglang:latest", script.replace('"${GLM_API_KEY}"', "'$GLM_API_KEY'"), env)
    assert literal is not None and literal.api_key == "$GLM_API_KEY"


def test_context_length_per_engine_flag() -> None:
    assert _spec("vllm serve org/M --max-model-len 8000").context_length == 8000
    assert _spec("vllm serve org/M --max-model-len auto").context_length is None
    assert _spec("python3 -m sglang.launch_server --model-path org/M --context-length 4096").context_length == 4096
    assert _spec("python -m lightllm.server.api_server --model_dir /m/M --max_req_total_len 9").context_length == 9


def test_secrets_stay_out_of_repr() -> None:
    spec = _spec('python3 -m sglang.launch_server --model-path org/M --api-key "$GLM_API_KEY"', {"GLM_API_KEY": "s3cr"})
    assert spec.api_key == "s3cr"
    assert "s3cr" not in repr(spec)


def _spec(script: str, env: dict[str, str] | None = None) -> LaunchSpec:
    spec = launch_spec_from("", script, env or {})
    assert spec is not None
    return spec
