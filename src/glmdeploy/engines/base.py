"""What every engine module provides: a launch command, log markers, failure signatures
and the HTTP facts the readiness check and smoke tests rely on (shared/reference/engines.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from glmdeploy.engines.flags import FlagTable, Version, history, parse_version
from glmdeploy.engines.images import ImageVersion, parse_image

if TYPE_CHECKING:
    from glmdeploy.engines.health import HealthState
    from glmdeploy.engines.memory import MemoryModel
    from glmdeploy.profiles.model import Profile

# The per-deployment endpoint key reaches the engine through this variable, never inline.
API_KEY_ENV = "GLM_API_KEY"
# LightLLM needs a local directory; the onstart downloads the weights here first.
MODELS_DIR = "/workspace/models"


class EnvRef(str):
    """An argv element that is the value of an environment variable on the host.

    Rendered as ``"$NAME"`` in the onstart script and shown as ``$NAME`` to users, so
    secrets never appear in the command line that Vast stores and echoes back.
    """

    __slots__ = ("var",)
    var: str

    def __new__(cls, var: str) -> EnvRef:
        obj = super().__new__(cls, "$" + var)
        obj.var = var
        return obj


@dataclass(frozen=True)
class FailureSignature:
    """A log pattern that means the engine will never become ready.

    ``host_fault``: the cause is the machine, not the image or the profile, so ``up --max-attempts``
    may try another machine. Everything else (a flag the image rejects, a missing module, a gated
    repo, a disk too small for the profile) fails the same way on every host and is not retried.
    """

    kind: str
    pattern: re.Pattern[str]
    advice: str
    host_fault: bool = False


def _sig(kind: str, pattern: str, advice: str, *, host_fault: bool = False) -> FailureSignature:
    return FailureSignature(kind, re.compile(pattern), advice, host_fault)


# vLLM prefixes each process's lines with "(APIServer pid=N) " (engines.md §3.3).
_PROC = r"^(?:\(\w+ pid=\d+\) )?"

# A launch that dies before the engine starts: these come from the shell, Python or argparse, so
# they read the same for every engine.
LAUNCH_FAILURES: tuple[FailureSignature, ...] = (
    # CPython argparse.ArgumentParser.error prints "usage: ..." then "<prog>: error: <message>" and
    # exits 2; the messages are argparse's own (Lib/argparse.py: parse_args, _parse_known_args,
    # _get_values). Recorded for vLLM 0.24.0 (real-vllm-0.24.0/argv-acceptance.txt):
    #   "main.py: error: unrecognized arguments: --swap-space 16", about 17 s after launch.
    _sig(
        "argparse_error",
        _PROC + r"\S+: error: (unrecognized arguments: |the following arguments are required: |argument \S+: "
        r"|ambiguous option: )",
        "the engine in this image rejects the launch arguments: fix the flag named above in the profile "
        "(engine.extra_args) or pick an image whose engine version accepts it",
    ),
    # "python -m pkg" without pkg: "/usr/bin/python3: No module named sglang.launch_server"; an
    # import inside the engine: "ModuleNotFoundError: No module named 'flashinfer'" as the last line of
    # a traceback. Anchored at the line start: a WARNING that quotes a failed optional import is not fatal.
    _sig(
        "no_module",
        _PROC + r"(ModuleNotFoundError: No module named \S+|\S*python[\d.]*: No module named \S+)",
        "the image lacks the engine or a module it imports: check --image and the engine kind",
    ),
    # bash: "bash: line 1: vllm: command not found"; dash/sh: "/bin/sh: 1: exec: vllm: not found".
    _sig(
        "command_not_found",
        r"(: command not found\s*$|exec: \S+: not found)",
        "the image has no such program: check --image and the engine kind",
    ),
)


# Generic signatures from engines.md §8, shared by all engines.
COMMON_FAILURES: tuple[FailureSignature, ...] = (
    # Our own onstart lines (onstart.py): the TLS proxy in front of every engine could not start, so the
    # script exited before the engine and no fingerprint line will ever come.
    _sig(
        "proxy_failed",
        r"glmdeploy: (could not install nginx for the auth proxy|nginx failed to start"
        r"|openssl could not generate the TLS certificate)",
        "the image needs nginx and openssl (or apt-get to install them) for the TLS proxy; pick another image",
    ),
    _sig(
        "cuda_oom",
        r"(torch\.(cuda\.)?OutOfMemoryError: CUDA out of memory|CUDA error: out of memory)",
        "lower the context length or memory fraction, or pick a profile with more VRAM",
    ),
    _sig(
        "no_kernel_image",
        r"no kernel image is available for execution on the device",
        "the image was not built for this GPU architecture; use an image built for it",
    ),
    _sig(
        "unsupported_arch",
        r"(does not recognize this architecture|Model architectures \[.*\] are not supported"
        r"|Model type \S+ is not supported)",
        "the image's engine or transformers is too old for this model; use a newer image",
    ),
    _sig(
        "nccl",
        r"(NCCL error|ncclUnhandledCudaError|ncclSystemError|NCCL WARN Error while creating shared memory)",
        "multi-GPU communication failed on this host; try another machine",
        host_fault=True,
    ),
    _sig(
        "disk_full",
        r"(No space left on device|Not enough free disk space to download)",
        "raise hardware.disk_gb",
    ),
    _sig(
        "gated_repo",
        r"(GatedRepoError|Cannot access gated repo|Repository Not Found for url|RepositoryNotFoundError)",
        "the model repository is gated, private or misspelled; set HF_TOKEN or fix model.repo",
    ),
    _sig(
        "port_in_use",
        r"(Address already in use|address already in use|port \d+ has been used)",
        "another process holds the server port inside the container",
        host_fault=True,
    ),
)


class Engine:
    """Facts and builders for one serving engine. Subclasses fill in the class variables."""

    kind: ClassVar[str]
    program: ClassVar[tuple[str, ...]]
    ready_markers: ClassVar[tuple[str, ...]]
    failures: ClassVar[tuple[FailureSignature, ...]]
    kv_capacity: ClassVar[re.Pattern[str]]
    health_path: ClassVar[str] = "/health"
    # A read timeout for the health GET when the engine's own check takes long (None: the client's).
    health_read_timeout_s: ClassVar[float | None] = None
    # Health answers that mean "up, still starting" rather than "broken" (SGLang's warmup 503).
    starting_codes: ClassVar[frozenset[int]] = frozenset()
    # Paths the engine serves without the API key (engines.md §5).
    auth_exempt_prefixes: ClassVar[tuple[str, ...]] = ()
    reasoning_field: ClassVar[str] = "reasoning_content"
    tool_call_id_prefix: ClassVar[str] = "call_"
    native_auth: ClassVar[bool] = True
    # How users and the engine itself name it ("vLLM 0.24.0").
    display_name: ClassVar[str] = ""
    # Image repositories that ship this engine, and tags that move (they exist but pin no version).
    image_repos: ClassVar[tuple[str, ...]] = ()
    floating_tags: ClassVar[frozenset[str]] = frozenset({"latest"})
    # Tags that are not a release number but stand for a known build, e.g. SGLang's PR images.
    tag_aliases: ClassVar[dict[str, Version]] = {}
    # A flag that must come with the tool-call parser before tool_choice "auto" is served (vLLM's), if any.
    auto_tool_choice_flag: ClassVar[str | None] = None

    def argv(
        self,
        profile: Profile,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        with_api_key: bool = True,
    ) -> list[str]:
        raise NotImplementedError

    def auth_env(self) -> dict[str, str]:
        """Variables to export from ``API_KEY_ENV`` before launch (vLLM reads its own)."""
        return {}

    def model_dir(self, profile: Profile) -> str | None:
        """Local directory the weights must be downloaded to before launch, if any."""
        return None

    def reported_model_name(self, profile: Profile) -> str:
        """The id this engine lists in /v1/models for the profile."""
        return profile.model.served_name or profile.model.repo

    def read_health(self, status_code: int) -> HealthState:
        """What a health answer means for this engine (the probe itself is ``engines.health``)."""
        from glmdeploy.engines.health import HealthState

        if status_code == 200:
            return HealthState.HEALTHY
        if status_code in self.starting_codes:
            return HealthState.STARTING
        return HealthState.UNHEALTHY

    def classify_failure(self, text: str) -> FailureSignature | None:
        for sig in (*self.failures, *LAUNCH_FAILURES, *COMMON_FAILURES):
            if sig.pattern.search(text):
                return sig
        return None

    def memory(self) -> MemoryModel:
        """How this engine budgets GPU memory (``engines/<kind>_memory.py``, used by the planner)."""
        from glmdeploy.engines.memory import memory_model

        return memory_model(self.kind)

    def parse_kv_tokens(self, text: str) -> int | None:
        match = self.kv_capacity.search(text)
        if match is None:
            return None
        number = next(g for g in match.groups() if g is not None)
        return int(number.replace(",", ""))

    # ------------------------------------------------------------------ versions and flags

    def tag_version(self, tag: str) -> Version | None:
        """The release a tag of one of this engine's repositories pins (``v0.24.0`` -> (0, 24, 0))."""
        if tag in self.tag_aliases:
            return self.tag_aliases[tag]
        return parse_version(tag)

    def image_version(self, image: str) -> ImageVersion:
        """What the image reference says: this engine's or not, which release, known to a registry or not."""
        ref = parse_image(image)
        if ref.repo not in self.image_repos:
            return ImageVersion(image, None, None, floating=False, known=False)
        if ref.tag is None or ref.tag in self.floating_tags:
            # No tag means `latest` to docker; a digest alone pins a build whose version the name does not say.
            floating = ref.tag is not None or ref.digest is None
            return ImageVersion(image, self.kind, None, floating=floating, known=floating)
        version = self.tag_version(ref.tag)
        releases = history(self.kind).releases
        known = version is not None and (ref.tag in self.tag_aliases or version in releases)
        return ImageVersion(image, self.kind, version if known else None, floating=False, known=known)

    def flag_table(self, image: str) -> FlagTable | None:
        """The flags the image's engine accepts: its release's table, the newest one for a floating tag,
        None when the version is not known or its flags were not read."""
        info = self.image_version(image)
        flags = history(self.kind)
        if info.floating:
            return flags.table(flags.newest)
        if info.version is None:
            return None
        return flags.table(info.version)

    def builder_table(self, image: str) -> FlagTable:
        """The table a builder follows: the image's, else the newest (a build the tag does not pin is recent)."""
        flags = history(self.kind)
        return self.flag_table(image) or flags.table(flags.newest)  # type: ignore[return-value]

    def model_support_error(self, model_arch: str, image: str) -> str | None:
        """The log line the engine in ``image`` ends with when it cannot load ``model_arch``; None if it can."""
        return None


def flag(args: list[str], name: str, value: object | None) -> None:
    """Append ``name value`` when value is set (booleans: just the flag when true)."""
    if value is None or value is False:
        return
    if value is True:
        args.append(name)
        return
    args.extend([name, _fmt(value)])


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
