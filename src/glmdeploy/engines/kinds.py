"""The engine kinds glmdeploy knows: the one list, which the schema, smoke and the sandbox all read.

A leaf module (it imports nothing of glmdeploy), so that the profile schema can name the kinds without
depending on the engine modules. ``glmdeploy.engines.ENGINES`` has one module per kind listed here.
"""

from __future__ import annotations

from typing import Literal, get_args

EngineKind = Literal["sglang", "vllm", "lightllm"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)

__all__ = ["ENGINE_KINDS", "EngineKind"]
