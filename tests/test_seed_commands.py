"""Each shipped profile renders its seed's launch command, flag for flag.

The seed text is read from ../shared/seeds/ and parsed here; the profile's command comes from
``glmdeploy profiles show NAME --json`` (the public surface). The only differences allowed are
listed per profile in ``DEVIATIONS`` with the reason, so a change to a profile or a builder
that drifts from the recipe fails here.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app

# The checkout sits beside shared/ (locally and in CI).
SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"

runner = CliRunner()


def seed_text(prefix: str) -> str:
    (path,) = SEEDS.glob(f"{prefix}_*.txt")
    return path.read_text(encoding="utf-8")


def between(text: str, start: str, end: str, occurrence: int = 0) -> str:
    idx = -1
    for _ in range(occurrence + 1):
        idx = text.index(start, idx + 1)
    stop = text.index(end, idx + len(start))
    return text[idx : stop + len(end)]


def parse_command(command: str) -> tuple[list[str], dict[str, str | bool]]:
    """Program words (and positionals before the first flag) and a flag -> value map."""
    tokens = shlex.split(command.replace("\\\n", " "), posix=True)
    head: list[str] = []
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(tokens) and not tokens[i].startswith("--"):
        head.append(tokens[i])
        i += 1
    while i < len(tokens):
        name = tokens[i]
        assert name.startswith("--"), f"positional {name!r} after flags in {command!r}"
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            flags[name] = tokens[i + 1]
            i += 2
        else:
            flags[name] = True
            i += 1
    assert len(flags) == len([t for t in tokens if t.startswith("--")]), "a flag appears twice"
    return head, flags


def profile_command(name: str) -> tuple[list[str], dict[str, str | bool], dict[str, object]]:
    result = runner.invoke(app, ["profiles", "show", name, "--json"])
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    head, flags = parse_command(detail["launch_command"])
    return head, flags, detail


def strip_env_prefix(head: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    rest = list(head)
    while rest and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", rest[0]):
        key, value = rest.pop(0).split("=", 1)
        env[key] = value
    return env, rest


# name -> (seed prefix, extractor, allowed flag differences {flag: reason}, allowed head mapping)
SEED_000 = lambda: between(seed_text("000"), "python3 -m sglang.launch_server", "$GLM_API_KEY")  # noqa: E731
LIGHTLLM_BASIC = lambda: between(seed_text("001"), "LIGHTLLM_TRITON_AUTOTUNE_LEVEL=1", "--port 8000", 0)  # noqa: E731
LIGHTLLM_MTP = lambda: between(seed_text("001"), "LIGHTLLM_TRITON_AUTOTUNE_LEVEL=1", "--port 8000", 2)  # noqa: E731
VLLM_BF16 = lambda: between(seed_text("004"), "uv run vllm serve zai-org/GLM-4.7-Flash", "--port 8000", 0)  # noqa: E731
VLLM_NVFP4 = lambda: between(seed_text("004"), "uv run vllm serve GadflyII/GLM-4.7-Flash-NVFP4", "--port 8000")  # noqa: E731
VLLM_FP8_MTP = lambda: between(  # noqa: E731
    seed_text("002"), "vllm serve zai-org/GLM-4.7-FP8", "--enable-auto-tool-choice"
)
VLLM_ROCM = lambda: between(seed_text("002"), "SAFETENSORS_FAST_GPU=1", "--trust-remote-code")  # noqa: E731

LIGHTLLM_DIR = "/workspace/models/GLM-4.7-Flash"
HOST_PORT = {"--host": "0.0.0.0", "--port": "8000"}

CASES = {
    "4x3090": (SEED_000, {}, {}),
    "h200": (LIGHTLLM_BASIC, {"--model_dir": LIGHTLLM_DIR}, {}),
    "h200-mtp": (
        LIGHTLLM_MTP,
        {"--model_dir": LIGHTLLM_DIR, "--mtp_draft_model_dir": LIGHTLLM_DIR},
        {},
    ),
    # --download-dir is the blog author's local disk; on a rented box the HF cache is used.
    # --swap-space went away in vLLM 0.18.0; the pinned 0.24.0 refuses it (see the profile's warnings).
    "2x5090": (VLLM_BF16, {"--download-dir": None, "--swap-space": None}, {}),
    "2x5090-nvfp4": (VLLM_NVFP4, {"--download-dir": None}, {}),
    # glmdeploy always binds explicitly; the seed relies on vLLM's defaults (all interfaces, 8000).
    "4xh200-glm47-fp8-mtp": (VLLM_FP8_MTP, HOST_PORT, {}),
    # 20 attention heads cannot split 8 ways: one MI300X, tp 1 (see the profile's warnings).
    # --disable-log-requests went away in vLLM 0.17.0; request logging is off by default since.
    "mi300x": (
        VLLM_ROCM,
        {**HOST_PORT, "--tensor-parallel-size": "1", "--disable-log-requests": None},
        {"$model_name": "zai-org/GLM-4.7-Flash"},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_profile_renders_its_seed_command_flag_for_flag(name: str) -> None:
    extract, deviations, head_map = CASES[name]
    seed_env, seed_head = strip_env_prefix(parse_command(extract())[0])
    _, seed_flags = parse_command(extract())
    head, flags, detail = profile_command(name)

    # Program: the seed's, minus a host-local `uv run` wrapper, with placeholders resolved.
    seed_head = [head_map.get(t, t) for t in seed_head if t not in ("uv", "run")]
    assert head == seed_head

    expected = dict(seed_flags)
    for flag_name, replacement in deviations.items():
        if replacement is None:
            expected.pop(flag_name)
        else:
            expected[flag_name] = replacement
    assert flags == expected

    # Environment the seed sets inline must be in the profile's env.
    profile_env = detail["profile"]["env"]
    for key, value in seed_env.items():
        assert profile_env.get(key) == value


def test_2x5090_profile_keeps_the_seed_allocator_setting() -> None:
    text = seed_text("004")
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in text
    _, _, detail = profile_command("2x5090")
    assert detail["profile"]["env"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_4x4090d_profile_takes_the_values_its_article_states() -> None:
    text = seed_text("003")
    # The article runs vLLM over 4 cards at about 85% memory, max_len 4096 ("修改 --max-model-len 为 4096").
    assert "4张RTX 4090 D" in text and "85%" in text
    assert "max_len=4096" in text and "--max-model-len 为 4096" in text
    head, flags, detail = profile_command("4x4090d")
    assert head == ["vllm", "serve", "zai-org/GLM-4.7-Flash"]
    assert flags["--tensor-parallel-size"] == "4"
    assert flags["--max-model-len"] == "4096"
    assert flags["--gpu-memory-utilization"] == "0.85"
    assert detail["profile"]["hardware"]["num_gpus"] == 4


def test_seed_000_hardware_filters_match_the_guide() -> None:
    text = seed_text("000")
    assert "cuda_vers>=12.2 cuda_vers<=12.6" in text and "--disk 200" in text
    _, _, detail = profile_command("4x3090")
    hw = detail["profile"]["hardware"]
    assert (hw["cuda_min"], hw["cuda_max"], hw["disk_gb"], hw["num_gpus"]) == (12.2, 12.6, 200, 4)
    assert hw["direct_port"] is True
    assert detail["profile"]["engine"]["image"] == "lmsysorg/sglang:dev-pr-17247"
