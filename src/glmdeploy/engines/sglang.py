"""SGLang (sgl-project/sglang): launch flags, log markers and HTTP facts, engines.md §2."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from glmdeploy.engines.base import API_KEY_ENV, Engine, EnvRef, _sig, flag
from glmdeploy.engines.flags import Version
from glmdeploy.engines.vllm import TRANSFORMERS_TOO_OLD

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile


class SGLang(Engine):
    kind = "sglang"
    program = ("python3", "-m", "sglang.launch_server")
    # "Application startup complete." comes before warmup: only this line means ready.
    ready_markers = ("The server is fired up and ready to roll!",)
    failures = (
        _sig(
            "kv_does_not_fit",
            r"Not enough memory\. Please try to increase --mem-fraction-static",
            "raise engine.mem_fraction or lower engine.context_length",
        ),
        _sig(
            "cuda_oom",
            r"Capture cuda graph failed",
            "set a lower mem_fraction or cuda_graph_max_batch, or disable CUDA graphs",
        ),
        _sig("init_failed", r"(Initialization failed\.|Scheduler hit an exception)", "see the log excerpt"),
    )
    kv_capacity = re.compile(r"max_total_num_tokens=(\d+)|KV Cache is allocated\. #tokens: (\d+)")
    health_path = "/health"
    # /health runs a 1-token generation and waits up to SGLANG_HEALTH_CHECK_TIMEOUT (20 s) for it
    # (engines.md §2.5); 503 while the warmup request has not gone through yet.
    health_read_timeout_s = 25.0
    starting_codes = frozenset({503})
    auth_exempt_prefixes = ("/health", "/metrics")
    reasoning_field = "reasoning_content"
    tool_call_id_prefix = "call_"
    display_name = "SGLang"
    image_repos = ("lmsysorg/sglang",)
    floating_tags = frozenset({"latest", "latest-cu130", "dev"})
    # The image of seed 000 (the Vast.ai guide): sgl-project/sglang PR #17247, built for GLM-4.7-Flash
    # between 0.5.7 and 0.5.8; its flags are read as 0.5.8's, the first release with glm4_moe_lite.
    tag_aliases = {"dev-pr-17247": (0, 5, 8)}

    def tag_version(self, tag: str) -> Version | None:
        # Release tags carry the CUDA build: v0.5.9-cu129, v0.5.23-cu130 (engines.md §2.2).
        return super().tag_version(re.sub(r"-cu\d+.*$", "", tag))

    def model_support_error(self, model_arch: str, image: str) -> str | None:
        if model_arch != "glm-4.7-flash":
            return None
        info = self.image_version(image)
        if image.endswith(":dev-pr-17247"):
            return None  # built for this model (seed 000: "must use this image")
        # engines.md §1: up to 0.5.9 SGLang pins transformers 4.57.1, which does not know glm4_moe_lite;
        # 0.5.10 ships transformers 5.3.0+.
        if info.version is not None and info.version < (0, 5, 10):
            return TRANSFORMERS_TOO_OLD
        return None

    def argv(
        self,
        profile: Profile,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        with_api_key: bool = True,
    ) -> list[str]:
        e = profile.engine
        args = [*self.program, "--model-path", profile.model.repo]
        flag(args, "--revision", profile.model.revision)
        flag(args, "--served-model-name", profile.model.served_name)
        flag(args, "--host", host)
        flag(args, "--port", port or e.port)
        flag(args, "--tp-size", e.tensor_parallel)
        flag(args, "--context-length", e.context_length)
        flag(args, "--trust-remote-code", e.trust_remote_code)
        flag(args, "--dtype", e.dtype)
        flag(args, "--kv-cache-dtype", e.kv_cache_dtype)
        flag(args, "--mem-fraction-static", e.mem_fraction)
        flag(args, "--max-running-requests", e.max_running_requests)
        flag(args, "--chunked-prefill-size", e.chunked_prefill_size)
        if e.cuda_graph_max_batch is not None:
            # 0.5.20 split it per phase; --cuda-graph-max-bs-decode is the decode graph's, what the old one capped
            # (sgl-project/sglang 0.5.23 python/sglang/srt/arg_groups/fields/exec_.py).
            table = self.builder_table(e.image)
            name = "--cuda-graph-max-bs" if table.accepts("--cuda-graph-max-bs") else "--cuda-graph-max-bs-decode"
            flag(args, name, e.cuda_graph_max_batch)
        flag(args, "--tool-call-parser", e.tool_call_parser)
        flag(args, "--reasoning-parser", e.reasoning_parser)
        if e.speculative is not None:
            # SGLang runs GLM's MTP layer as EAGLE with the model itself as draft.
            flag(args, "--speculative-algorithm", "EAGLE")
            flag(args, "--speculative-num-steps", e.speculative.num_tokens)
            flag(args, "--speculative-eagle-topk", 1)
            flag(args, "--speculative-num-draft-tokens", e.speculative.num_tokens + 1)
        flag(args, "--disable-radix-cache", e.disable_prefix_caching)
        args.extend(e.extra_args)
        if with_api_key:
            args.extend(["--api-key", EnvRef(API_KEY_ENV)])
        return args
