"""How the three engines differ over HTTP (engines.md §2.5-2.6, §3.5-3.6, §4.5, §5)."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glmdeploy.sandbox.engines.config import EngineConfig


@dataclass(frozen=True)
class Dialect:
    kind: str
    owned_by: str
    reasoning_field: str
    reasoning_copy: bool  # vLLM 0.15 also fills the deprecated reasoning_content
    tool_id_prefix: str
    tool_id_hex: int
    checks_model: bool  # vLLM: 404 for a model it does not serve; the others echo the request's model
    always_usage: bool  # LightLLM HEAD: a usage chunk whatever stream_options says
    stream_reasoning: bool  # LightLLM buffers reasoning and sends it in one chunk at </think>
    incremental_tool_args: bool  # SGLang, LightLLM, vLLM 0.33: argument fragments; vLLM 0.15: one delta
    explicit_nulls: bool  # SGLang serialises every field (model_dump_json); others drop unset ones
    health_ok: bytes
    health_bad: bytes
    health_type: bytes | None
    server_header: bytes | None  # None: uvicorn's own "server: uvicorn"
    response_id_prefix: str

    def needs_key(self, method: str, path: str) -> bool:
        """Whether a request must carry the API key when one is configured (OPTIONS is always allowed)."""
        if method == "OPTIONS":
            return False
        if self.kind == "sglang":
            return not path.startswith(("/health", "/metrics"))
        if self.kind == "vllm":
            return path.startswith(("/v1", "/v2", "/inference", "/cohere"))
        return False  # LightLLM has no auth of its own

    def tool_call_id(self) -> str:
        return self.tool_id_prefix + secrets.token_hex(self.tool_id_hex // 2)

    def response_id(self) -> str:
        return self.response_id_prefix + secrets.token_hex(16)


def dialect_for(cfg: EngineConfig) -> Dialect:
    if cfg.kind == "sglang":
        return Dialect(
            kind="sglang",
            owned_by="sglang",
            reasoning_field="reasoning_content",
            reasoning_copy=False,
            tool_id_prefix="call_",
            tool_id_hex=24,
            checks_model=False,
            always_usage=False,
            stream_reasoning=True,
            incremental_tool_args=True,
            explicit_nulls=True,
            health_ok=b"",
            health_bad=b"",
            health_type=None,
            server_header=None,
            response_id_prefix="",
        )
    if cfg.kind == "vllm":
        return Dialect(
            kind="vllm",
            owned_by="vllm",
            reasoning_field="reasoning",
            reasoning_copy=cfg.version < (0, 16),
            tool_id_prefix="chatcmpl-tool-",
            tool_id_hex=32,
            checks_model=True,
            always_usage=False,
            stream_reasoning=True,
            incremental_tool_args=cfg.version >= (0, 33),
            explicit_nulls=False,
            health_ok=b"",
            health_bad=b"",
            health_type=None,
            server_header=None,
            response_id_prefix="chatcmpl-",
        )
    return Dialect(
        kind="lightllm",
        owned_by="lightllm",
        reasoning_field="reasoning",
        reasoning_copy=False,
        tool_id_prefix="call_",
        tool_id_hex=24,
        checks_model=False,
        always_usage=True,
        stream_reasoning=False,
        incremental_tool_args=True,
        explicit_nulls=False,
        health_ok=b'{"message":"Ok"}',
        health_bad=b'{"message":"Error"}',
        health_type=b"application/json",
        server_header=b"hypercorn-h11",
        response_id_prefix="chatcmpl-",
    )


def bearer_matches(headers: Mapping[bytes, bytes] | list[tuple[bytes, bytes]], key: str) -> bool:
    """``Authorization: Bearer <key>``: scheme case-insensitive, key compared in constant time."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return hmac.compare_digest(token.strip().encode(), key.encode())
            return False
    return False


def error_body(dialect: Dialect, status: int, message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error in the engine's envelope."""
    if dialect.kind == "vllm":
        return {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return {"object": "error", "message": message, "type": kind, "param": param, "code": status}
