"""LightLLM (ModelTC/lightllm): launch flags, log markers and HTTP facts, engines.md §4.

LightLLM has no API-key option, so a deployment always fronts it with an authenticating
proxy and binds the engine to the container's loopback (see ``glmdeploy.onstart``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from glmdeploy.engines.base import MODELS_DIR, Engine, _sig, flag

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile


class LightLLM(Engine):
    kind = "lightllm"
    program = ("python", "-m", "lightllm.server.api_server")
    # Printed by the app's startup hook; Hypercorn binds the port right after it.
    ready_markers = ("server start up ok",)
    failures = (
        _sig(
            "kv_does_not_fit",
            r"check max len infer fail",
            "lower engine.context_length or engine.mem_fraction",
        ),
        _sig("init_failed", r"init func start_\w+ : Traceback", "see the log excerpt"),
    )
    kv_capacity = re.compile(r"(\d+) is the profiled max_total_token_num")
    health_path = "/health"
    # Behind the auth proxy: nginx answers 502 until the engine's HTTP server is up (it is spawned
    # only after the model loaded, engines.md §4.3 step 6).
    starting_codes = frozenset({502})
    auth_exempt_prefixes = ()
    reasoning_field = "reasoning"
    tool_call_id_prefix = "call_"
    native_auth = False
    display_name = "LightLLM"
    image_repos = ("ghcr.io/modeltc/lightllm", "modeltc/lightllm")
    # `main` is built on every push (engines.md §4.2).
    floating_tags = frozenset({"latest", "main"})

    def model_support_error(self, model_arch: str, image: str) -> str | None:
        if model_arch != "glm-4.7-flash":
            return None
        info = self.image_version(image)
        # GLM-4.7-Flash support (PR #1188) first ships in v1.2.0 (engines.md §4.1); older builds refuse the
        # model type in lightllm/models/registry.py (engines.md §4.4).
        if info.version is not None and info.version < (1, 2, 0):
            return "ValueError: Model type glm4_moe_lite is not supported."
        return None

    def model_dir(self, profile: Profile) -> str:
        return f"{MODELS_DIR}/{profile.model.repo.rsplit('/', 1)[-1]}"

    def reported_model_name(self, profile: Profile) -> str:
        # Without --model_name LightLLM reports basename(model_dir).
        return profile.model.served_name or self.model_dir(profile).rsplit("/", 1)[-1]

    def argv(
        self,
        profile: Profile,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        with_api_key: bool = True,
    ) -> list[str]:
        e = profile.engine
        model_dir = self.model_dir(profile)
        args = [*self.program, "--model_dir", model_dir]
        flag(args, "--model_name", profile.model.served_name)
        flag(args, "--tp", e.tensor_parallel)
        flag(args, "--max_req_total_len", e.context_length)
        flag(args, "--mem_fraction", e.mem_fraction)
        flag(args, "--data_type", e.dtype)
        flag(args, "--running_max_req_size", e.max_running_requests)
        flag(args, "--chunked_prefill_size", e.chunked_prefill_size)
        flag(args, "--llm_prefill_att_backend", e.prefill_attention_backend)
        flag(args, "--llm_decode_att_backend", e.decode_attention_backend)
        flag(args, "--graph_max_batch_size", e.cuda_graph_max_batch)
        flag(args, "--trust_remote_code", e.trust_remote_code)
        flag(args, "--tool_call_parser", e.tool_call_parser)
        flag(args, "--reasoning_parser", e.reasoning_parser)
        if e.speculative is not None:
            flag(args, "--mtp_step", e.speculative.num_tokens)
            flag(args, "--mtp_mode", e.speculative.mode or "eagle_with_att")
            flag(args, "--mtp_draft_model_dir", model_dir)
        args.extend(e.extra_args)
        flag(args, "--host", host)
        flag(args, "--port", port or e.port)
        return args
