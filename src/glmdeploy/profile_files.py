"""Where profile files are and what they are called: stdlib only, so shell completion can list
profile names without loading the schema (pydantic) or the YAML reader."""

from __future__ import annotations

from pathlib import Path

from glmdeploy.paths import user_profiles_dir

PROFILE_SUFFIXES = (".yaml", ".yml")


def shipped_profiles_dir() -> Path:
    """Profiles inside the wheel, or the repository's top-level ``profiles/`` in a checkout."""
    here = Path(__file__).resolve().parent
    bundled = here / "_profiles"
    if bundled.is_dir():
        return bundled
    return here.parent.parent / "profiles"


def profile_files() -> dict[str, Path]:
    """Name -> file, user files shadowing shipped ones."""
    found: dict[str, Path] = {}
    for directory in (shipped_profiles_dir(), user_profiles_dir()):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.suffix in PROFILE_SUFFIXES and path.is_file():
                found[path.stem] = path
    return found
