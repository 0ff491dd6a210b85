"""Log following and readiness/failure detection on engine logs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from glmdeploy.engines import get_engine
from glmdeploy.readiness import LogFollower, ReadinessWatcher

SGLANG_READY = "[2026-11-23 10:00:00] The server is fired up and ready to roll!"


def test_follower_returns_only_new_lines_of_a_growing_tail() -> None:
    f = LogFollower()
    assert f.feed("a\nb\n") == ["a", "b"]
    assert f.feed("a\nb\nc\n") == ["c"]
    # A tail window that dropped old lines still aligns on what was seen.
    assert f.feed("b\nc\nd\ne\n") == ["d", "e"]
    assert f.feed("b\nc\nd\ne\n") == []


def test_marker_split_across_two_polls_is_matched_once_whole() -> None:
    w = ReadinessWatcher(get_engine("sglang"))
    first = "loading\n" + SGLANG_READY[:20]
    assert not w.feed(first).ready
    assert w.feed("loading\n" + SGLANG_READY + "\n").ready
    assert w.lines_seen == 2


def test_uvicorn_startup_is_not_sglang_readiness() -> None:
    w = ReadinessWatcher(get_engine("sglang"))
    assert not w.feed("[2026-11-23 10:00:00] INFO:     Application startup complete.\n").ready
    v = ReadinessWatcher(get_engine("vllm"))
    assert v.feed("(APIServer pid=1) INFO 11-23 10:00:00 [launcher.py:1] Application startup complete.\n").ready


def test_cuda_oom_is_classified_with_an_excerpt() -> None:
    w = ReadinessWatcher(get_engine("vllm"))
    log = (
        "(EngineCore_DP0 pid=7) INFO loading\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity\n"
        "(EngineCore_DP0 pid=7) ERROR EngineCore failed to start.\n"
    )
    v = w.feed(log)
    assert v.failure is not None and v.failure.kind == "cuda_oom"
    assert "CUDA out of memory" in (v.failure_line or "")
    assert len(v.excerpt) == 3


def test_kv_capacity_lines_are_parsed_per_engine() -> None:
    assert get_engine("vllm").parse_kv_tokens("INFO GPU KV cache size: 1,234,567 tokens") == 1234567
    assert get_engine("sglang").parse_kv_tokens("KV Cache is allocated. #tokens: 91234, KV size: 4.5 GB") == 91234
    line = "INFO 11-23 [mem_manager.py:70] 1370000 is the profiled max_total_token_num with the mem_fraction 0.9"
    assert get_engine("lightllm").parse_kv_tokens(line) == 1370000


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=30), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_follower_sees_every_line_exactly_once_whatever_the_poll_points(lines: list[str], cuts: list[int]) -> None:
    # Lines are made unique so "exactly once" is well defined for a tail that may repeat content.
    unique = [f"{i}:{text}" for i, text in enumerate(lines)]
    full = "".join(line + "\n" for line in unique)
    f = LogFollower()
    got: list[str] = []
    for cut in sorted(cuts):
        got += f.feed(full[: min(cut, len(full))])
    got += f.feed(full)
    assert got == unique


def test_a_specific_cause_replaces_a_generic_engine_failure() -> None:
    w = ReadinessWatcher(get_engine("vllm"))
    v = w.feed("(EngineCore_DP0 pid=7) ERROR EngineCore failed to start.\nTraceback (most recent call last):\n")
    assert v.failure is not None and v.failure.kind == "init_failed" and v.failure_is_generic
    v = w.feed("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB.\n")
    assert v.failure is not None and v.failure.kind == "cuda_oom" and not v.failure_is_generic
