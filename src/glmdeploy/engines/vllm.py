"""vLLM (vllm-project/vllm): launch flags, log markers and HTTP facts, engines.md §3."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from glmdeploy.engines.base import API_KEY_ENV, Engine, _sig, flag

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile


# The line a transformers without glm4_moe_lite ends the config parsing with (engines.md §1, issue #33580).
TRANSFORMERS_TOO_OLD = (
    "The checkpoint you are trying to load has model type `glm4_moe_lite` but Transformers does not "
    "recognize this architecture."
)


class VLLM(Engine):
    kind = "vllm"
    program = ("vllm", "serve")
    # vLLM hands uvicorn a pre-bound socket, so "Uvicorn running on" never appears.
    ready_markers = ("Application startup complete.",)
    failures = (
        _sig(
            "kv_does_not_fit",
            r"(No available memory for the cache blocks|To serve at least one request with the models's max seq len)",
            "raise engine.mem_fraction or lower engine.context_length",
        ),
        _sig("init_failed", r"(EngineCore failed to start|Engine core initialization failed)", "see the log excerpt"),
    )
    kv_capacity = re.compile(r"KV cache size: ([\d,]+) tokens")
    health_path = "/health"
    # Only /v1 (and newer /v2, /inference, /cohere) is guarded; /health, /metrics are open.
    auth_exempt_prefixes = ("/health", "/ping", "/version", "/metrics", "/load", "/tokenize")
    reasoning_field = "reasoning"
    tool_call_id_prefix = "chatcmpl-tool-"
    display_name = "vLLM"
    image_repos = ("vllm/vllm-openai", "vllm/vllm-openai-rocm")
    floating_tags = frozenset({"latest", "nightly"})
    # `"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set` (engines.md §3.4).
    auto_tool_choice_flag = "--enable-auto-tool-choice"

    def argv(
        self,
        profile: Profile,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        with_api_key: bool = True,
    ) -> list[str]:
        # with_api_key is honoured through VLLM_API_KEY (auth_env), keeping argv as the seed wrote it.
        e = profile.engine
        table = self.builder_table(e.image)
        args = [*self.program, profile.model.repo]
        flag(args, "--revision", profile.model.revision)
        flag(args, "--kv-cache-dtype", e.kv_cache_dtype)
        flag(args, "--dtype", e.dtype)
        flag(args, "--tensor-parallel-size", e.tensor_parallel)
        flag(args, "--max-model-len", e.context_length)
        flag(args, "--gpu-memory-utilization", e.mem_fraction)
        flag(args, "--swap-space", e.swap_space_gb)
        flag(args, "--enforce-eager", e.enforce_eager)
        flag(args, "--trust-remote-code", e.trust_remote_code)
        flag(args, "--max-num-seqs", e.max_running_requests)
        flag(args, "--max-num-batched-tokens", e.chunked_prefill_size)
        if e.speculative is not None:
            flag(args, "--speculative-config.method", e.speculative.method)
            flag(args, "--speculative-config.num_speculative_tokens", e.speculative.num_tokens)
        flag(args, "--tool-call-parser", e.tool_call_parser)
        flag(args, "--reasoning-parser", e.reasoning_parser)
        flag(args, "--enable-auto-tool-choice", e.auto_tool_choice)
        if e.disable_log_requests and table.accepts("--disable-log-requests"):
            args.append("--disable-log-requests")
        # Else nothing: the flag went away in 0.17.0, when request logging was already off by default
        # (vLLM 0.15.1 engine/arg_utils.py: "--disable-log-requests [DEPRECATED]", --enable-log-requests
        # default False), so leaving it out keeps the seed's intent.
        flag(args, "--no-enable-prefix-caching", e.disable_prefix_caching)
        flag(args, "--served-model-name", profile.model.served_name)
        args.extend(e.extra_args)
        flag(args, "--host", host)
        flag(args, "--port", port or e.port)
        return args

    def model_support_error(self, model_arch: str, image: str) -> str | None:
        if model_arch != "glm-4.7-flash":
            return None
        info = self.image_version(image)
        # engines.md §1: 0.15.0 (the first with glm4_moe_lite.py) up to 0.19.0 pin transformers<5, which does
        # not know glm4_moe_lite (vllm-project/vllm issue #33580); 0.19.1 first allows transformers 5.5.1+.
        if info.version is not None and info.version < (0, 19, 1):
            return TRANSFORMERS_TOO_OLD
        return None

    def auth_env(self) -> dict[str, str]:
        return {"VLLM_API_KEY": API_KEY_ENV}
