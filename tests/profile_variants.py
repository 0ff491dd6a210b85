"""Shipped profiles with changes, for the planner and engine-memory tests: ``from profile_variants import variant``
(tests/conftest.py puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Any

from glmdeploy.profiles import Profile, load_profile


def variant(base: str, **changes: Any) -> Profile:
    """A shipped profile with dotted-key changes, validated like a user's file would be."""
    data = load_profile(base).model_dump(mode="json")
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return Profile.model_validate(data)
