"""Launches that die before the engine serves: the sandbox faults that replace a normal startup.

Each fault prints what the real launch prints and then the process exits (``Milestone.CRASH``):
the container stays ``running`` with a silent log, as on Vast. Where the text comes from:

- ``argparse_error``: recorded for vLLM 0.24.0 (real-vllm-0.24.0/argv-acceptance.txt: ``usage: main.py
  [-h] [-v]`` then ``main.py: error: unrecognized arguments: --swap-space 16`` about 17 s after launch).
  SGLang and LightLLM print the same two argparse lines (CPython ``ArgumentParser.error``) with their
  own program name; their usage line is abbreviated here.
- ``no_module``: CPython's ``python -m`` of a missing module prints ``<python>: No module named <mod>``
  (runpy); a console script whose package is missing ends its traceback with ``ModuleNotFoundError``.
- ``command_not_found``: bash's ``exec`` builtin, ``<script>: line N: exec: <prog>: not found``. The
  script path is the sandbox's (Vast's own path for the onstart script is not documented).
- ``hf_gated``, ``hf_missing``, ``disk_full``: huggingface_hub's texts (engines.md §8, from
  ``utils/_http.py`` and ``file_download.py``), printed where the download would start.
- ``nccl_error``: the NCCL text engines.md §8 lists as generic and unverified, printed at the
  distributed init (multi-GPU launches only reach it; a single GPU shows it too here).
- ``no_kernel_image``: the CUDA runtime's text for an image built without this GPU's architecture
  (engines.md §8, generic), raised by the first kernel the engine runs.
- ``kv_does_not_fit``: each engine's refusal of an empty KV pool after the weights loaded, the texts
  glmdeploy's memory models print for one (engines.md §2.4 SGLang ``model_runner.py``, §3.4 vLLM
  ``kv_cache_utils.py``, §4.4 LightLLM ``basemodel.py``; ``glmdeploy.engines.*_memory.reported_lines``).

Numbers (sizes, request ids) are invented; the failure's wording is not.
"""

from __future__ import annotations

import os.path
import random
from collections.abc import Callable, Mapping
from datetime import datetime

from glmdeploy.sandbox.engines.config import EngineConfig
from glmdeploy.sandbox.engines.logs import Milestone, Step, cuda_banner

LAUNCH_FAULTS = ("argparse_error", "no_module", "command_not_found", "hf_gated", "hf_missing", "disk_full",
                 "nccl_error", "no_kernel_image", "kv_does_not_fit")
DEFAULT_BAD_FLAG = "--swap-space 16"
# Seconds from launch to the argparse error: recorded 16.6-18.6 s for vLLM 0.24.0 (imports first).
ARGPARSE_AFTER_S = {"vllm": 17.0, "sglang": 6.0, "lightllm": 4.0}


def failure_plan(cfg: EngineConfig, faults: Mapping[str, str | None], rng: random.Random, pid: int
                 ) -> list[Step] | None:
    """The startup of a launch that fails, or None when no launch fault is set."""
    name = next((f for f in LAUNCH_FAULTS if f in faults), None)
    if name is None:
        return None
    lines = _LINES[name](cfg, faults.get(name), rng)
    after = {"argparse_error": ARGPARSE_AFTER_S.get(cfg.kind, 5.0), "no_module": 0.5, "command_not_found": 0.1,
             "nccl_error": 9.0, "no_kernel_image": 9.0, "kv_does_not_fit": 12.0}.get(name, 6.0)
    steps = [Step(0.0, lambda _ts: cuda_banner("12.9.1"))] if "rocm" not in cfg.spec.image else []
    steps.append(Step(after, _prefixed(cfg, lines, pid)))
    steps.append(Step(0.0, None, Milestone.CRASH))
    return steps


def _prefixed(cfg: EngineConfig, lines: list[str], pid: int) -> Callable[[datetime], list[str]]:
    # vLLM prefixes its processes' output; the shell's and argparse's own lines have no prefix.
    def render(_ts: datetime) -> list[str]:
        if cfg.kind == "vllm" and not lines[0].startswith(("usage:", "/", "Traceback")):
            return [f"(APIServer pid={pid}) {line}" for line in lines]
        return list(lines)

    return render


def _prog(cfg: EngineConfig) -> str:
    argv = cfg.spec.argv
    if cfg.kind == "vllm":
        return "main.py"  # recorded: `vllm serve` parses as main.py
    module = argv[2] if len(argv) > 2 and argv[1] == "-m" else argv[0]
    return module.rsplit(".", 1)[-1] + ".py"


def _argparse(cfg: EngineConfig, value: str | None, _rng: random.Random) -> list[str]:
    prog = _prog(cfg)
    usage = f"usage: {prog} [-h] [-v]" if cfg.kind == "vllm" else f"usage: {prog} [-h] ..."
    return [usage, f"{prog}: error: unrecognized arguments: {value or DEFAULT_BAD_FLAG}"]


def _no_module(cfg: EngineConfig, value: str | None, _rng: random.Random) -> list[str]:
    argv = cfg.spec.argv
    if len(argv) > 2 and argv[1] == "-m":
        return [f"/usr/bin/{os.path.basename(argv[0])}: No module named {value or argv[2]}"]
    module = value or argv[0]
    return [
        "Traceback (most recent call last):",
        f'  File "/usr/local/bin/{os.path.basename(argv[0])}", line 5, in <module>',
        f"    from {module}.entrypoints.cli.main import main",
        f"ModuleNotFoundError: No module named '{module}'",
    ]


def _command_not_found(cfg: EngineConfig, value: str | None, _rng: random.Random) -> list[str]:
    prog = value or cfg.spec.argv[0]
    return [f"/root/onstart.sh: line 5: exec: {prog}: not found"]


def _repo(cfg: EngineConfig) -> str:
    return cfg.model_path if "/" in cfg.model_path and not cfg.model_path.startswith("/") else "zai-org/GLM-4.7-Flash"


def _request_id(rng: random.Random) -> str:
    return f"Root=1-{rng.getrandbits(32):08x}-{rng.getrandbits(96):024x}"


def _hf_gated(cfg: EngineConfig, _value: str | None, rng: random.Random) -> list[str]:
    repo = _repo(cfg)
    return [
        "Traceback (most recent call last):",
        '  File "/usr/local/lib/python3.12/dist-packages/huggingface_hub/utils/_http.py", line 409, '
        "in hf_raise_for_status",
        "    response.raise_for_status()",
        f"huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: {_request_id(rng)})",
        "",
        f"Cannot access gated repo for url https://huggingface.co/{repo}/resolve/main/config.json.",
        f"Access to model {repo} is restricted. You must have access to it and be authenticated to access it. "
        "Please log in.",
    ]


def _hf_missing(cfg: EngineConfig, _value: str | None, rng: random.Random) -> list[str]:
    repo = _repo(cfg)
    return [
        "Traceback (most recent call last):",
        '  File "/usr/local/lib/python3.12/dist-packages/huggingface_hub/utils/_http.py", line 409, '
        "in hf_raise_for_status",
        "    response.raise_for_status()",
        f"huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: {_request_id(rng)})",
        "",
        f"Repository Not Found for url: https://huggingface.co/api/models/{repo}/revision/main.",
        "Please make sure you specified the correct `repo_id` and `repo_type`.",
        "If you are trying to access a private or gated repo, make sure you are authenticated.",
    ]


def _disk_full(cfg: EngineConfig, _value: str | None, rng: random.Random) -> list[str]:
    repo = _repo(cfg).replace("/", "--")
    need = rng.uniform(4000, 5400)
    free = rng.uniform(50, 900)
    return [
        f"UserWarning: Not enough free disk space to download the file. The expected file size is: {need:.2f} MB. "
        f"The target location /root/.cache/huggingface/hub/models--{repo}/blobs only has {free:.2f} MB free "
        "disk space.",
        "Traceback (most recent call last):",
        '  File "/usr/local/lib/python3.12/dist-packages/huggingface_hub/file_download.py", line 1734, '
        "in _download_to_tmp_and_move",
        "OSError: [Errno 28] No space left on device",
    ]


def _nccl(_cfg: EngineConfig, _value: str | None, _rng: random.Random) -> list[str]:
    return [
        "Traceback (most recent call last):",
        "torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/"
        "ProcessGroupNCCL.cpp:3353, unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL version 2.27.3",
        "ncclUnhandledCudaError: Call to CUDA function failed.",
    ]


def _no_kernel_image(_cfg: EngineConfig, _value: str | None, _rng: random.Random) -> list[str]:
    return [
        "Traceback (most recent call last):",
        "RuntimeError: CUDA error: no kernel image is available for execution on the device",
    ]


def _kv_does_not_fit(cfg: EngineConfig, _value: str | None, _rng: random.Random) -> list[str]:
    if cfg.kind == "sglang":
        return [
            "Traceback (most recent call last):",
            "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
            f"Current value: self.server_args.mem_fraction_static={cfg.mem_fraction:g}",
        ]
    if cfg.kind == "vllm":
        return [
            "Available KV cache memory: 0.00 GiB",
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
            "when initializing the engine.",
        ]
    return [
        "0 is the profiled max_total_token_num with the mem_fraction " + f"{cfg.mem_fraction:g}",
        "check max len infer fail, you can try:1.Set the --mem_fraction or --max_total_token_num startup "
        "parameter to a smaller value.2.Set the --max_req_total_len to a smaller value.3.Set the "
        "--batch_max_tokens startup parameter to a smaller value.",
    ]


_LINES: dict[str, Callable[[EngineConfig, str | None, random.Random], list[str]]] = {
    "argparse_error": _argparse,
    "no_module": _no_module,
    "command_not_found": _command_not_found,
    "hf_gated": _hf_gated,
    "hf_missing": _hf_missing,
    "disk_full": _disk_full,
    "nccl_error": _nccl,
    "no_kernel_image": _no_kernel_image,
    "kv_does_not_fit": _kv_does_not_fit,
}
