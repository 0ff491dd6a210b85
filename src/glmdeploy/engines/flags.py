"""Which launch flags each engine version accepts: the tables in ``flag_tables.json``, and the checks on them.

The tables were generated from the engines' own argument definitions (the file names its sources per
engine) and hold only flag names: for each flag, the first version read that has it and the first
version read without it. Loaded lazily, once, on first use; nothing here imports an engine module,
so ``engines/``, ``onstart.py`` and ``profiles/`` can all use it without a cycle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

Version = tuple[int, ...]

_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:\.post(\d+))?")
# A negative number is a value ("--chunked-prefill-size -1"), not an option: argparse reads it so too.
_NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d+)?")


def parse_version(text: str) -> Version | None:
    """``v0.24.0`` / ``0.24.0`` / ``0.5.8.post1`` -> ``(0, 24, 0)`` (a post release reads as its base)."""
    match = _VERSION.fullmatch(text)
    if match is None:
        return None
    return tuple(int(g or 0) for g in match.groups()[:3])


def version_text(version: Version) -> str:
    return ".".join(str(p) for p in version)


@dataclass(frozen=True)
class Rejected:
    """One argv option the engine version's parser refuses, and why."""

    flag: str  # as written in the argv
    reason: str  # e.g. "removed in 0.18.0"


@dataclass(frozen=True)
class FlagTable:
    """The flags of one engine version, with the history needed to explain a refusal."""

    kind: str
    version: Version
    names: frozenset[str]
    spans: dict[str, tuple[Version, Version | None]]
    underscores_are_dashes: bool  # vLLM's FlexibleArgumentParser reads --max_model_len as --max-model-len

    def normalise(self, option: str) -> str:
        """The flag name argparse looks up for an argv element that starts with ``-``."""
        name = option.split("=", 1)[0]
        if self.underscores_are_dashes and name.startswith("--"):
            # FlexibleArgumentParser: '_' reads as '-' up to the first '.', and '--json-flag.key' is '--json-flag'.
            name = "--" + name[2:].split(".", 1)[0].replace("_", "-")
        elif self.underscores_are_dashes and name.startswith("-O"):
            # It also rewrites -O, -O3, -O=3 to --optimization-level (vllm/utils/argparse_utils.py, 0.24.0).
            name = "--optimization-level"
        return name

    def accepts(self, option: str) -> bool:
        name = self.normalise(option)
        if name in self.names:
            return True
        # argparse's allow_abbrev: a unique prefix of one long option is that option.
        if name.startswith("--") and len(name) > 2:
            matches = [n for n in self.names if n.startswith(name)]
            return len(matches) == 1
        return False

    def why_not(self, option: str) -> str:
        name = self.normalise(option)
        span = self.spans.get(name)
        if span is None:
            return "no version read has it"
        since, until = span
        if until is not None and until <= self.version:
            return f"removed in {version_text(until)}"
        if since > self.version:
            return f"added in {version_text(since)}"
        return "not accepted"

    def rejected(self, argv: Sequence[str]) -> list[Rejected]:
        """Every option in ``argv`` this version does not accept, in order (values are skipped)."""
        out: list[Rejected] = []
        for arg in argv:
            text = str(arg)
            if not text.startswith("-") or text == "-" or _NEGATIVE_NUMBER.fullmatch(text):
                continue
            if not self.accepts(text):
                out.append(Rejected(text.split("=", 1)[0], self.why_not(text)))
        return out


@dataclass(frozen=True)
class EngineFlagHistory:
    """Everything the tables say about one engine."""

    kind: str
    source: str
    releases: tuple[Version, ...]
    versions: tuple[Version, ...]  # the versions whose flags were read
    spans: dict[str, tuple[Version, Version | None]]
    underscores_are_dashes: bool

    def is_release(self, version: Version) -> bool:
        return version in self.releases

    def table(self, version: Version) -> FlagTable | None:
        """The flag table of ``version``, or None when that version's flags were not read."""
        if version not in self.versions:
            return None
        names = frozenset(
            f for f, (since, until) in self.spans.items() if since <= version and (until is None or version < until)
        )
        return FlagTable(self.kind, version, names, self.spans, self.underscores_are_dashes)

    @property
    def newest(self) -> Version:
        return self.versions[-1]


def _span(raw: Any) -> tuple[Version, Version | None]:
    # A flag that left and came back keeps only its latest stretch: the checks ask "is it here now".
    if raw and isinstance(raw[0], list):
        raw = raw[-1]
    since = parse_version(raw[0])
    until = parse_version(raw[1]) if raw[1] is not None else None
    assert since is not None
    return since, until


def _versions(texts: Iterable[str]) -> tuple[Version, ...]:
    parsed = {v for v in (parse_version(t) for t in texts) if v is not None}
    return tuple(sorted(parsed))


@cache
def _load() -> dict[str, EngineFlagHistory]:
    text = resources.files("glmdeploy.engines").joinpath("flag_tables.json").read_text(encoding="utf-8")
    data = json.loads(text)
    out: dict[str, EngineFlagHistory] = {}
    for kind, entry in data.items():
        if kind.startswith("_"):
            continue
        out[kind] = EngineFlagHistory(
            kind=kind,
            source=entry["source"],
            releases=_versions(entry["releases"]),
            versions=_versions(entry["versions"]),
            spans={flag: _span(raw) for flag, raw in entry["flags"].items()},
            underscores_are_dashes=kind == "vllm",
        )
    return out


def history(kind: str) -> EngineFlagHistory:
    """The flag history of engine ``kind`` (``vllm``, ``sglang``, ``lightllm``)."""
    return _load()[kind]


__all__ = ["EngineFlagHistory", "FlagTable", "Rejected", "Version", "history", "parse_version", "version_text"]
