"""Property tests: whatever a profile file holds, loading it gives a Profile or one clean ProfileError.

Inputs are built from the shipped profiles (mutated keys, values and types, unknown keys, nested
garbage) and from raw random text and bytes, including YAML constructs that have crashed loaders
before: deep nesting, huge integers, impossible dates, aliases, tags.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.errors import ProfileError
from glmdeploy.profiles import Profile, load_file
from glmdeploy.profiles.loader import shipped_profiles_dir

SHIPPED_FILES = sorted(shipped_profiles_dir().glob("*.yaml"))
SHIPPED: list[dict[str, Any]] = [yaml.safe_load(p.read_text()) for p in SHIPPED_FILES]
runner = CliRunner()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "45m", "0s", "-1", "1e9", "sglang", "zai-org/GLM-4.7-Flash", "$(id)", "a\nb"]),
)
garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
    ),
    max_leaves=12,
)


def _paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for key, value in data.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found.extend(_paths(value, (*prefix, key)))
    return found


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


@st.composite
def mutated_profiles(draw: st.DrawFn) -> dict[str, Any]:
    data = _copy(draw(st.sampled_from(SHIPPED)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        *parents, leaf = path
        node = data
        for part in parents:
            node = node[part]
        action = draw(st.sampled_from(["delete", "replace", "unknown_key", "nest", "retype"]))
        if action == "delete":
            del node[leaf]
        elif action == "replace":
            node[leaf] = draw(garbage)
        elif action == "unknown_key":
            node[draw(st.text(min_size=1, max_size=15))] = draw(garbage)
        elif action == "nest":
            node[leaf] = {leaf: node[leaf], "more": draw(garbage)}
        else:
            value = node[leaf]
            node[leaf] = [value] if not isinstance(value, list) else str(value)
    return data


yaml_tokens = st.sampled_from(
    [
        "name: x\n",
        "engine:\n",
        "  kind: vllm\n",
        "- ",
        ": ",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "*b",
        "!!str ",
        "!!binary ",
        "!!python/object:os.system ",
        "!!set ",
        "? ",
        "|\n",
        ">\n",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "0x" + "f" * 40,
        "1" * 5000,
        "2001-13-45",
        "2001-02-30 25:61:61",
        "1:2:3",
        ".inf",
        ".nan",
        "~",
        "'",
        '"',
        "\t",
        "\n",
        "  ",
        "#",
        "\x00",
        "\ufeff",
        "é",
        "extends: h200\n",
        "extends: [x]\n",
        "<<: *a\n",
        "\\",
    ]
)


def _check(path: Path) -> Profile | None:
    try:
        return load_file(path)
    except ProfileError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert str(path) in message, message
        return None


@contextmanager
def _written(content: str | bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-profile-") as directory:
        path = Path(directory) / "p.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        yield path


def _load(content: str | bytes) -> Profile | None:
    with _written(content) as path:
        return _check(path)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_profiles())
@example({**SHIPPED[0], "bad\nkey": 1})  # a key with a newline once split the error over two lines
@example({**SHIPPED[0], "readiness": {"timeout": "1" + "0" * 400}})  # parses to an infinite wait
def test_mutated_shipped_profiles_load_or_fail_in_one_line(data: dict[str, Any]) -> None:
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        assume(False)
    profile = _load(text)
    if profile is not None:
        # Anything accepted survives a dump/validate round trip unchanged.
        assert Profile.model_validate(profile.model_dump()) == profile
        assert math.isfinite(profile.readiness.timeout_s)


@settings(deadline=None)
@given(st.lists(yaml_tokens, max_size=30))
@example(["name: ", "1" * 5000])  # PyYAML raises ValueError past Python's 4,300-digit int limit
@example(["name: ", "2001-13-45"])  # and for impossible dates
@example(["engine:\n", '  "bad\\nkey": 1\n'])  # a YAML-escaped newline inside a key
def test_yaml_shaped_noise_loads_or_fails_in_one_line(tokens: list[str]) -> None:
    _load("".join(tokens))


@settings(deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_raw_text_and_bytes_load_or_fail_in_one_line(content: str | bytes) -> None:
    _load(content)


@pytest.mark.parametrize("opener", ["[", "{a: ", "- "])
@pytest.mark.parametrize("depth", [50, 1500, 20_000])
def test_deep_nesting_is_a_profile_error(depth: int, opener: str) -> None:
    closer = {"[": "]", "{a: ": "}", "- ": ""}[opener]
    text = "engine: " + opener * depth + "1" + closer * depth + "\n"
    assert _load(text) is None


@settings(deadline=None, max_examples=8)
@given(
    st.one_of(
        mutated_profiles().map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.lists(yaml_tokens).map("".join)
    )
)
def test_cli_validate_exits_0_or_2_without_traceback(text: str) -> None:
    with _written(text) as path:
        result = runner.invoke(app, ["profiles", "validate", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and str(path) in lines[0]


def test_a_profile_whose_onstart_would_exceed_vasts_limit_is_refused_when_loaded() -> None:
    # It used to validate, then crash `up` with an internal ValueError after the deployment row existed.
    data = _copy(SHIPPED[0])
    data["engine"]["extra_args"] = ["--flag", "v" * 4200]
    with _written(yaml.safe_dump(data)) as path:
        with pytest.raises(ProfileError, match=r"Vast accepts at most 4096; shorten engine\.extra_args"):
            load_file(path)
        result = runner.invoke(app, ["profiles", "validate", str(path)])
    assert result.exit_code == 2 and "4096" in result.stderr
