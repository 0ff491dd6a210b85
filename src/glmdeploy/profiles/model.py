"""The hardware-profile schema: one YAML file = one known-good recipe.

Strict on purpose: an unknown key is an error (a typo such as ``contex_length`` must not
silently fall back to a default and rent the wrong box). Every string that ends up inside
the onstart shell script is either checked against an allow-list here or shell-quoted by the
renderer, so a profile can never smuggle a command onto a rented host.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from glmdeploy.catalog import MODEL_ARCHS
from glmdeploy.engines.kinds import EngineKind
from glmdeploy.ranking import MAX_PRICE_CAP

Quant = Literal["bf16", "fp16", "fp8", "nvfp4", "awq"]

_SHELL_HINT = "must not contain quotes, ';', '$(', backticks, spaces or newlines"


def _allow(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{what} {value!r} has characters that are not allowed ({_SHELL_HINT})")
        return value

    return AfterValidator(check)


HfRepoId = Annotated[str, _allow(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", "model id")]
ImageRef = Annotated[
    str, _allow(r"[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?", "image")
]
ServedName = Annotated[str, _allow(r"[A-Za-z0-9][A-Za-z0-9._/:+-]*", "served model name")]
EnvKey = Annotated[str, _allow(r"[A-Za-z_][A-Za-z0-9_]*", "environment variable name")]
Revision = Annotated[str, _allow(r"[A-Za-z0-9][A-Za-z0-9._/-]*", "revision")]
ProfileName = Annotated[str, _allow(r"[a-z0-9][a-z0-9._-]*", "profile name")]
FlagValue = Annotated[str, _allow(r"[A-Za-z0-9][A-Za-z0-9._:/+-]*", "engine option value")]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(StrictModel):
    """Which seed recipe the profile reproduces, and what it takes from it."""

    seed: str = Field(description="File name of the seed document in shared/seeds/.")
    takes: str = Field(description="What the profile takes from the seed, in a sentence.")


class ModelSpec(StrictModel):
    repo: HfRepoId = Field(description="Hugging Face repository id, e.g. zai-org/GLM-4.7-Flash.")
    revision: Revision | None = Field(default=None, description="Branch, tag or commit to pin.")
    served_name: ServedName | None = Field(
        default=None, description="Name the endpoint reports in /v1/models; defaults to the repo id."
    )
    arch: str = Field(description="Planner architecture key, e.g. glm-4.7-flash.")
    quant: Quant = Field(description="Weight format of the checkpoint.")
    weights_gb: float = Field(gt=0, description="Checkpoint size in GB (10^9 bytes) to download.")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if value not in MODEL_ARCHS:
            raise ValueError(f"unknown architecture {value!r}; known: {', '.join(sorted(MODEL_ARCHS))}")
        return value

    @property
    def name(self) -> str:
        return self.served_name or self.repo


class Hardware(StrictModel):
    gpu_names: list[Annotated[str, _allow(r"[A-Za-z0-9][A-Za-z0-9 ._-]*", "gpu name")]] = Field(
        min_length=1, description="Vast gpu_name values that qualify, e.g. 'RTX 3090'."
    )
    num_gpus: int = Field(ge=1, le=16)
    min_vram_gb: float = Field(gt=0, description="Minimum VRAM per GPU in GB.")
    cuda_min: float | None = Field(default=None, description="Lowest acceptable cuda_max_good.")
    cuda_max: float | None = Field(default=None, description="Highest acceptable cuda_max_good.")
    disk_gb: int = Field(ge=8, description="Container disk in GB (weights + image + cache).")
    min_inet_down: float = Field(default=200.0, ge=0, description="Minimum download speed, Mbit/s.")
    min_reliability: float = Field(default=0.95, ge=0, le=1)
    direct_port: bool = Field(default=True, description="Require a directly mapped port.")
    max_price: float = Field(
        gt=0,
        le=MAX_PRICE_CAP,
        allow_inf_nan=False,
        description="Default price cap in $/h for the whole instance; also the scale of the ranking's cost term.",
    )
    verified: bool = Field(default=True, description="Only verified machines.")

    @model_validator(mode="after")
    def _cuda_range(self) -> Hardware:
        if self.cuda_min is not None and self.cuda_max is not None and self.cuda_min > self.cuda_max:
            raise ValueError(f"cuda_min {self.cuda_min} is above cuda_max {self.cuda_max}")
        return self


class Speculative(StrictModel):
    """Multi-token prediction with the model's own MTP layer."""

    method: Literal["mtp"] = "mtp"
    num_tokens: int = Field(ge=1, le=8, description="Draft tokens per step.")
    mode: Literal["eagle_with_att", "vanilla_with_att", "eagle_no_att", "vanilla_no_att"] | None = Field(
        default=None, description="LightLLM --mtp_mode."
    )


class EngineSpec(StrictModel):
    kind: EngineKind
    image: ImageRef = Field(description="Container image with a pinned tag.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the server listens on in the container.")
    tensor_parallel: int = Field(default=1, ge=1, le=16)
    context_length: int | None = Field(default=None, ge=256)
    mem_fraction: float | None = Field(default=None, gt=0, le=1)
    dtype: FlagValue | None = None
    kv_cache_dtype: FlagValue | None = None
    tool_call_parser: FlagValue | None = None
    reasoning_parser: FlagValue | None = None
    auto_tool_choice: bool = False
    speculative: Speculative | None = None
    max_running_requests: int | None = Field(default=None, ge=1)
    trust_remote_code: bool = False
    enforce_eager: bool = False
    swap_space_gb: int | None = Field(default=None, ge=0)
    chunked_prefill_size: int | None = Field(default=None, ge=-1)
    prefill_attention_backend: FlagValue | None = None
    decode_attention_backend: FlagValue | None = None
    cuda_graph_max_batch: int | None = Field(default=None, ge=1)
    disable_prefix_caching: bool = False
    disable_log_requests: bool = False
    mla: bool | None = Field(
        default=None,
        description="Whether this engine build stores the MLA latent KV; null = infer from engine and image.",
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Further arguments, passed through shell-quoted."
    )

    @field_validator("extra_args")
    @classmethod
    def _no_control_chars(cls, value: list[str]) -> list[str]:
        for arg in value:
            if any(ch in arg for ch in "\n\r\x00"):
                raise ValueError(f"extra argument {arg!r} contains a newline or NUL")
        return value


class Readiness(StrictModel):
    timeout: str = Field(default="45m", description="How long to wait for the engine to become ready.")

    @field_validator("timeout")
    @classmethod
    def _parses(cls, value: str) -> str:
        from glmdeploy.durations import parse_duration
        from glmdeploy.errors import UsageError

        try:
            seconds = parse_duration(value, option="readiness.timeout")
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        # A 400-digit number parses to infinity: a wait that never ends keeps a rented GPU billing.
        if seconds == float("inf"):
            raise ValueError("must be a finite duration")
        return value

    @property
    def timeout_s(self) -> float:
        from glmdeploy.durations import parse_duration

        return parse_duration(self.timeout)


class Profile(StrictModel):
    name: ProfileName
    description: str
    source: Source
    model: ModelSpec
    hardware: Hardware
    engine: EngineSpec
    env: dict[EnvKey, Annotated[str, AfterValidator(lambda v: _no_newline(v))]] = Field(default_factory=dict)
    readiness: Readiness = Field(default_factory=Readiness)
    warnings: list[str] = Field(
        default_factory=list, description="Known problems with the recipe, printed by 'profiles show' and 'plan'."
    )

    @model_validator(mode="after")
    def _parallelism(self) -> Profile:
        arch = MODEL_ARCHS[self.model.arch]
        tp = self.engine.tensor_parallel
        if not arch.valid_tensor_parallel(tp):
            divisors = [d for d in range(1, arch.num_attention_heads + 1) if arch.num_attention_heads % d == 0]
            raise ValueError(
                f"engine.tensor_parallel {tp} does not divide {self.model.arch}'s "
                f"{arch.num_attention_heads} attention heads; use one of {divisors}"
            )
        if tp > self.hardware.num_gpus or self.hardware.num_gpus % tp:
            raise ValueError(
                f"engine.tensor_parallel {tp} does not fit hardware.num_gpus {self.hardware.num_gpus}"
            )
        return self


def _no_newline(value: str) -> str:
    if any(ch in value for ch in "\n\r\x00"):
        raise ValueError("environment values must not contain newlines or NUL")
    return value


def with_overrides(profile: Profile, *, context_length: int | None = None, image: str | None = None) -> Profile:
    """``profile`` with command-line overrides applied and validated like a profile file.

    Raises ``UsageError`` naming the option (``--context-length``, ``--image``) when a value is refused.
    """
    from pydantic import ValidationError

    from glmdeploy.errors import UsageError

    if context_length is None and image is None:
        return profile
    data = profile.model_dump()
    if context_length is not None:
        data["engine"]["context_length"] = context_length
    if image is not None:
        data["engine"]["image"] = image
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        option = {"engine.context_length": "--context-length", "engine.image": "--image"}.get(loc, loc)
        raise UsageError(f"{option}: {err['msg'].removeprefix('Value error, ')}") from None
