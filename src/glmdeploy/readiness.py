"""Reading an engine's container logs until it is ready or has failed.

Vast's log endpoint returns the *tail* of the container log each time (vast-api.md §7), not what
is new since the last poll. ``LogFollower`` turns successive tails into the lines not seen before:
it aligns each new tail on the end of what it has already seen, and holds back a last line with no
newline yet, so a marker split across two polls is matched once, whole.

``ReadinessWatcher`` then matches the engine's ready markers and failure signatures
(``glmdeploy.engines``) on new lines only. Readiness in the log is necessary, not sufficient: the
deploy state machine confirms it with the engine's real health semantics before declaring ready.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from glmdeploy.engines import Engine, FailureSignature

EXCERPT_LINES = 12
# Signatures that say an engine died without saying why; a later, specific one replaces them.
GENERIC_FAILURES = frozenset({"init_failed"})


class LogFollower:
    """Yield only the log lines not seen in earlier snapshots of a growing log's tail."""

    def __init__(self, memory: int = 4000) -> None:
        self._seen: deque[str] = deque(maxlen=memory)
        self._partial = ""

    def feed(self, snapshot: str) -> list[str]:
        if not snapshot:
            return []
        lines = snapshot.split("\n")
        # A trailing piece without "\n" may still grow: keep it back until a later snapshot completes it.
        partial = lines.pop()
        start = self._overlap(lines)
        fresh = lines[start:]
        self._seen.extend(fresh)
        self._partial = partial
        return fresh

    def pending(self) -> str:
        """A trailing line that has not been terminated yet (for final excerpts)."""
        return self._partial

    def _overlap(self, lines: list[str]) -> int:
        """How many leading ``lines`` were already seen (the tail we had overlaps the new snapshot)."""
        if not self._seen or not lines:
            return 0
        seen = list(self._seen)
        # Largest k such that lines[:k] ends with the lines seen last. Once the memory is full, earlier
        # lines are forgotten, so a snapshot longer than it (the whole log, no tail) is aligned on the
        # remembered ones instead of coming back entirely "new".
        forgot = len(seen) == self._seen.maxlen
        for k in range(len(lines) if forgot else min(len(seen), len(lines)), 0, -1):
            if lines[k - 1] != seen[-1]:
                continue
            j = min(k, len(seen))
            if lines[k - j : k] == seen[-j:]:
                return k
        return 0


@dataclass
class LogVerdict:
    ready: bool = False
    failure: FailureSignature | None = None
    failure_line: str | None = None
    kv_tokens: int | None = None
    excerpt: list[str] = field(default_factory=list)

    @property
    def failure_is_generic(self) -> bool:
        return self.failure is not None and self.failure.kind in GENERIC_FAILURES


class ReadinessWatcher:
    """Feed it log snapshots; it says when the engine logged readiness or a fatal failure."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.follower = LogFollower()
        self.recent: deque[str] = deque(maxlen=EXCERPT_LINES)
        self.verdict = LogVerdict()
        self.lines_seen = 0

    def feed(self, snapshot: str) -> LogVerdict:
        for line in self.follower.feed(snapshot):
            self._line(line)
        return self.verdict

    def _line(self, line: str) -> None:
        self.lines_seen += 1
        self.recent.append(line)
        v = self.verdict
        if v.failure is None or v.failure.kind in GENERIC_FAILURES:
            sig = self.engine.classify_failure(line)
            # "failed to start" comes before the traceback that says why: let the cause replace it.
            if sig is not None and (v.failure is None or sig.kind not in GENERIC_FAILURES):
                v.failure = sig
                v.failure_line = line.strip()
        if any(marker in line for marker in self.engine.ready_markers):
            v.ready = True
        tokens = self.engine.parse_kv_tokens(line)
        if tokens is not None:
            v.kv_tokens = tokens
        v.excerpt = list(self.recent)
