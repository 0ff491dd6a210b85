"""Finding, reading and validating profile files.

A profile is named by a shipped name (``4x3090``), by a file dropped into
``$GLMDEPLOY_HOME/profiles/`` (which shadows a shipped one of the same name), or by a path.
A profile may say ``extends: <name>`` to start from another one; mappings merge
key by key, lists and scalars replace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from glmdeploy.errors import ProfileError
from glmdeploy.profile_files import PROFILE_SUFFIXES, profile_files, shipped_profiles_dir  # noqa: F401 (re-exported)
from glmdeploy.profiles.model import Profile

_SUFFIXES = PROFILE_SUFFIXES
_profile_files = profile_files  # the lookup lives apart so completion can use it without pydantic


def known_names() -> list[str]:
    return sorted(_profile_files())


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(_SUFFIXES) or ref.startswith(".")


def resolve(ref: str) -> Path:
    """The file a profile reference points at, or a ``ProfileError`` listing the known names."""
    if _looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ProfileError(f"profile file not found: {ref}")
        return path
    files = _profile_files()
    if ref not in files:
        raise ProfileError(f"unknown profile {ref!r}; known: {', '.join(sorted(files))}")
    return files[ref]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ProfileError(f"{path}: invalid YAML{where}: {_one_line(problem)}") from None
    except RecursionError:
        raise ProfileError(f"{path}: invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors let these through: a 5,000-digit integer, a date like 2001-13-45.
        raise ProfileError(f"{path}: invalid YAML: {_one_line(str(exc))}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a YAML mapping, got {type(data).__name__}")
    return data


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _loc_part(part: object) -> str:
    # A key is user text: one with spaces, newlines or control characters is shown quoted and escaped.
    text = str(part)
    return text if text.isprintable() and " " not in text else repr(text)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _raw(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in chain:
        names = " -> ".join(p.stem for p in (*chain, path))
        raise ProfileError(f"{path}: 'extends' forms a cycle: {names}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ProfileError(f"{path}: extends: expected a profile name, got {parent!r}")
    try:
        parent_path = resolve(parent)
    except ProfileError as exc:
        raise ProfileError(f"{path}: extends: {exc}") from None
    base = _raw(parent_path, (*chain, path.resolve()))
    return _merge(base, data)


def _format_validation(path: Path, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:3]:
        loc = ".".join(_loc_part(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {_one_line(msg)}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"{path}: " + "; ".join(parts) + more


def load_file(path: Path) -> Profile:
    data = _raw(path)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_validation(path, exc)) from None
    _check_onstart_fits(path, profile)
    return profile


def _check_onstart_fits(path: Path, profile: Profile) -> None:
    """Vast refuses an onstart over 4096 characters: find out when the file is read, not after a deployment
    row exists. Worst case: the longest deployment name, a TTL watchdog and the auth proxy.

    Done here, not in the schema, so that the schema does not depend on the onstart renderer (and through
    it on the engines): profiles/ -> onstart -> engines/ stays a one-way street.
    """
    from glmdeploy.onstart import OnstartOptions, render

    longest = OnstartOptions(deployment="x" * 64, ttl_seconds=10**9, auth_proxy=True)
    try:
        render(profile, longest)
    except ValueError as exc:
        raise ProfileError(f"{path}: {exc}; shorten engine.extra_args") from None


def load_profile(ref: str) -> Profile:
    """Load a profile by name or path; every failure is a one-line ``ProfileError``."""
    return load_file(resolve(ref))


def load_all() -> list[Profile]:
    """Every known profile. Broken user files raise, naming the file."""
    return [load_file(path) for _, path in sorted(_profile_files().items())]
