"""Property tests for following engine logs through Vast's tail snapshots.

A log is written line by line (LF or CRLF, duplicates, very long lines, markers and failure lines at
random places); the watcher is fed tails of what has been written so far, cut at arbitrary byte
positions (so a marker can be split across two polls) with a window that keeps a varying number of
lines (so old lines drop out). After every poll the verdict must equal what an oracle computes from
the complete lines that any snapshot so far has shown: ready exactly when a complete line holding a
ready marker has been seen, and the failure the engine's rules pick from those lines.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from glmdeploy.engines import ENGINES, Engine, get_engine
from glmdeploy.readiness import LogFollower, ReadinessWatcher

FAILURE_LINES = [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
    "(EngineCore_DP0 pid=7) ERROR EngineCore failed to start.",
    "[2026-11-23 10:00:00] Scheduler hit an exception: Traceback",
    "Not enough memory. Please try to increase --mem-fraction-static",
    "ValueError: No available memory for the cache blocks.",
    "INFO check max len infer fail",
    "init func start_router_process : Traceback (most recent call last):",
    "RuntimeError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp",
    "OSError: [Errno 28] No space left on device",
    "OSError: [Errno 98] Address already in use",
    "huggingface_hub.errors.GatedRepoError: 401 Client Error.",
]
KV_LINES = ["INFO GPU KV cache size: 1,234 tokens", "KV Cache is allocated. #tokens: 91234, KV size: 4.5 GB"]
MARKERS = sorted({m for e in ENGINES.values() for m in e.ready_markers})
noise = st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=40)


@st.composite
def log_lines(draw: st.DrawFn) -> list[str]:
    """Lines without their terminators; a marker or failure may sit inside surrounding text."""
    lines: list[str] = []
    for _ in range(draw(st.integers(min_value=0, max_value=25))):
        kind = draw(st.sampled_from(["noise", "noise", "marker", "failure", "kv", "duplicate", "long"]))
        if kind == "marker":
            line = draw(noise) + draw(st.sampled_from(MARKERS)) + draw(noise)
        elif kind == "failure":
            line = draw(st.sampled_from(FAILURE_LINES))
        elif kind == "kv":
            line = draw(st.sampled_from(KV_LINES))
        elif kind == "duplicate" and lines:
            line = draw(st.sampled_from(lines))
        elif kind == "long":
            line = "x" * draw(st.integers(min_value=10_000, max_value=200_000)) + draw(noise)
        else:
            line = draw(noise)
        lines.append(line)
    return lines


@st.composite
def polls(draw: st.DrawFn, size: int) -> list[tuple[int, int]]:
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=size), max_size=10)))
    tails = draw(st.lists(st.integers(min_value=1, max_value=40), min_size=len(cuts), max_size=len(cuts)))
    return [*zip(cuts, tails, strict=True), (size, 1000)]


def _tail(prefix: str, keep: int) -> tuple[str, list[int]]:
    """The last ``keep`` complete lines of ``prefix`` plus its unterminated end, and their line numbers."""
    pieces = prefix.split("\n")
    complete = len(pieces) - 1
    first = max(0, complete - keep)
    return "".join(p + "\n" for p in pieces[first:complete]) + pieces[-1], list(range(first, complete))


def _oracle(engine: Engine, lines: list[str]) -> tuple[bool, str | None, str | None]:
    """``lines``: each distinct complete line shown so far, in the order it was first shown."""
    ready = any(marker in line for line in lines for marker in engine.ready_markers)
    specific = generic = None
    for line in lines:
        sig = engine.classify_failure(line)
        if sig is None:
            continue
        if sig.kind == "init_failed":
            generic = generic or (sig.kind, line.strip())
        else:
            specific = specific or (sig.kind, line.strip())
    picked = specific or generic
    return ready, (picked[0] if picked else None), (picked[1] if picked else None)


@settings(deadline=None)
@given(
    kind=st.sampled_from(sorted(ENGINES)),
    lines=log_lines(),
    crlf=st.booleans(),
    data=st.data(),
)
@example(
    kind="sglang",
    lines=["loading", "[x] The server is fired up and ready to roll!"],
    crlf=False,
    data=None,
)
@example(  # the later failure shown first (a 1-line tail), the earlier one only by a longer tail after it
    kind="lightllm",
    lines=["", FAILURE_LINES[0], "OSError: [Errno 28] No space left on device", ""],
    crlf=False,
    data=None,
)
def test_verdict_matches_the_complete_lines_seen_so_far(
    kind: str, lines: list[str], crlf: bool, data: st.DataObject | None
) -> None:
    engine = get_engine(kind)
    ending = "\r\n" if crlf else "\n"
    text = "".join(line + ending for line in lines)
    if data is None and "fired up" in text:  # the marker line cut in the middle, then completed
        cut = text.index("fired up") + 3
        schedule = [(cut, 10), (len(text), 10)]
    elif data is None:  # the last complete line alone, then the whole log
        schedule = [(len(text) - len(lines[-1] + ending), 1), (len(text), 1000)]
    else:
        schedule = data.draw(polls(len(text)))
    watcher = ReadinessWatcher(engine)
    complete = text.split("\n")
    first_shown: dict[str, None] = {}  # distinct complete lines, in the order a snapshot first showed them
    for cut, keep in schedule:
        snapshot, shown = _tail(text[:cut], keep)
        verdict = watcher.feed(snapshot)
        first_shown.update((complete[i], None) for i in shown if complete[i] not in first_shown)
        ready, failure, failure_line = _oracle(engine, list(first_shown))
        assert verdict.ready is ready
        assert (verdict.failure.kind if verdict.failure else None) == failure
        assert verdict.failure_line == failure_line
        assert len(verdict.excerpt) <= 12


@settings(deadline=None)
@given(st.lists(st.text(max_size=200), max_size=12))
def test_arbitrary_snapshots_never_raise(snapshots: list[str]) -> None:
    for kind in ENGINES:
        watcher = ReadinessWatcher(get_engine(kind))
        for snapshot in snapshots:
            watcher.feed(snapshot)
        assert isinstance(watcher.follower.pending(), str)


@settings(deadline=None)
@given(
    lines=st.lists(st.sampled_from(["a", "b", "c", "ready"]), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_repeated_lines_never_come_back_as_new_content(lines: list[str], cuts: list[int]) -> None:
    # With heavy repetition the follower may merge repeats, but it never yields a line that was not in
    # the log, and every distinct complete line shown to it comes out at least once.
    text = "".join(f"{line}\n" for line in lines)
    follower = LogFollower()
    got: list[str] = []
    for cut in sorted(cuts):
        got += follower.feed(text[: min(cut, len(text))])
    got += follower.feed(text)
    assert set(got) == set(lines)
    assert len(got) <= len(lines)


@settings(deadline=None)
@given(
    count=st.integers(min_value=0, max_value=60),
    memory=st.integers(min_value=1, max_value=8),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
@example(count=10, memory=5, cuts=[len("".join(f"line {i}\n" for i in range(10)))])
def test_whole_log_snapshots_longer_than_the_memory_still_align(count: int, memory: int, cuts: list[int]) -> None:
    # `glmdeploy logs --follow` without --tail gets the whole log each time, which can outgrow the memory.
    lines = [f"line {i}" for i in range(count)]
    text = "".join(f"{line}\n" for line in lines)
    follower = LogFollower(memory=memory)
    got: list[str] = []
    for cut in sorted(cuts):
        got += follower.feed(text[: min(cut, len(text))])
    got += follower.feed(text)
    assert got == lines
