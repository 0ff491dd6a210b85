"""One module per serving engine; ``get_engine`` picks the one a profile names."""

from __future__ import annotations

from glmdeploy.engines.base import API_KEY_ENV, Engine, EnvRef, FailureSignature
from glmdeploy.engines.images import ImageVersion
from glmdeploy.engines.kinds import ENGINE_KINDS
from glmdeploy.engines.lightllm import LightLLM
from glmdeploy.engines.sglang import SGLang
from glmdeploy.engines.vllm import VLLM

ENGINES: dict[str, Engine] = {e.kind: e for e in (SGLang(), VLLM(), LightLLM())}


def get_engine(kind: str) -> Engine:
    return ENGINES[kind]


def image_version(image: str) -> ImageVersion:
    """Which engine's repository ``image`` is from, and the release its tag pins (catalogue of all engines)."""
    for engine in ENGINES.values():
        info = engine.image_version(image)
        if info.kind is not None:
            return info
    return ImageVersion(image, None, None, floating=False, known=False)


__all__ = [
    "API_KEY_ENV",
    "ENGINES",
    "ENGINE_KINDS",
    "Engine",
    "EnvRef",
    "FailureSignature",
    "ImageVersion",
    "get_engine",
    "image_version",
]
