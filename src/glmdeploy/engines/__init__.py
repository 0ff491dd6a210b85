"""One module per serving engine; ``get_engine`` picks the one a profile names."""

from __future__ import annotations

from glmdeploy.engines.base import API_KEY_ENV, Engine, EnvRef, FailureSignature
from glmdeploy.engines.lightllm import LightLLM
from glmdeploy.engines.sglang import SGLang
from glmdeploy.engines.vllm import VLLM

ENGINES: dict[str, Engine] = {e.kind: e for e in (SGLang(), VLLM(), LightLLM())}


def get_engine(kind: str) -> Engine:
    return ENGINES[kind]


__all__ = ["API_KEY_ENV", "ENGINES", "Engine", "EnvRef", "FailureSignature", "get_engine"]
