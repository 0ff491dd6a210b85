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

import re
from collections import deque
from dataclasses import dataclass, field

from glmdeploy.engines import Engine, FailureSignature
from glmdeploy.engines.health import HealthReading, HealthState

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
    """Feed it log snapshots; it says when the engine logged readiness or a fatal failure.

    The failure reported is the first specific one seen; a generic one (``GENERIC_FAILURES``) stands
    only until a specific one is seen. "First" is the order in which lines are first seen, which is the
    log's own order as long as each tail reaches no further back than the one before (``up`` asks for a
    fixed ``LOG_TAIL``). A tail that shrinks and then grows again can show an earlier line after a later
    one; the verdict does not change then (a reported cause never flips to another).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.follower = LogFollower()
        self.recent: deque[str] = deque(maxlen=EXCERPT_LINES)
        self.verdict = LogVerdict()
        self.lines_seen = 0
        self.fresh: list[str] = []  # the lines the last snapshot added

    def feed(self, snapshot: str) -> LogVerdict:
        self.fresh = self.follower.feed(snapshot)
        for line in self.fresh:
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


# ---------------------------------------------------------------------------- the ready-wait rule
#
# What `up` decides at each poll between "rented" and "ready", as pure logic: ``deploy.py`` does the
# I/O (show the instance, fetch the logs, probe the health path) and feeds what it saw to a
# ``ReadyWait``, which says "failed, because ..." as soon as a sign is unambiguous, and within two
# polls of its first sign at most.

# Instance states that never reach running (vast-api.md §6.5: the docs warn that exited, unknown
# and offline never come back; stopped is not ours to restart).
DEAD_STATES = frozenset({"exited", "offline", "unknown", "stopped"})
# A status_msg holding any of these is fatal: the token list of Vast's own self-test wait loop
# (vast-ai/vast-cli, vastai/cli/commands/machines.py @55679830a2c2, `status_msg_is_error`).
STATUS_MSG_ERROR_TOKENS = ("error", "failed", "failure", "exception", "traceback", "oci runtime",
                           "permission denied")
# Docker pull failures: the image (name, tag, registry access), not the host, so another machine fails
# the same way. Phrases from the self-test's pull classifier (same repo,
# vastai/cli/self_test/runtime_diagnostics.py `_DOCKER_PULL_RE` and its tests), narrowed to those only a
# pull produces ("not found" alone also ends OCI errors).
MANIFEST_UNKNOWN = re.compile(r"manifest unknown|manifest for \S+ not found", re.IGNORECASE)
IMAGE_PULL = re.compile(
    r"pull access denied|repository does not exist|no such image|requested access to the resource is denied"
    r"|unauthorized: authentication required",
    re.IGNORECASE,
)
# Vast may publish `ports` a moment after `running` (vast-api.md §11.6: "treat as not yet"); two polls
# running without the port is the sign that this host will not map it.
NO_PORT_POLLS = 2


@dataclass(frozen=True)
class LaunchFailure:
    """Why a launch will never become ready: the name (``kind``), one line, and what to do."""

    kind: str
    message: str
    advice: str | None = None
    excerpt: tuple[str, ...] = ()
    # The machine, not the image or profile, is the likely cause: `--max-attempts` may try another.
    host_fault: bool = False


def status_msg_failure(instance_id: int, status: str | None, status_msg: str | None) -> LaunchFailure | None:
    """An error-looking ``status_msg`` (any state): a pull error or a daemon/container error."""
    msg = (status_msg or "").strip()
    pull = MANIFEST_UNKNOWN.search(msg) or IMAGE_PULL.search(msg)
    # A pull failure's phrases are unambiguous even where Docker's "Error response from daemon: "
    # prefix is missing (the self-test's own pull tests include such messages).
    if not msg or not (pull or any(token in msg.lower() for token in STATUS_MSG_ERROR_TOKENS)):
        return None
    where = f"instance {instance_id} is {status or 'provisioning'}"
    if MANIFEST_UNKNOWN.search(msg):
        return LaunchFailure("manifest_unknown", f"image failed: manifest_unknown: {where}: {msg}",
                             "the image or tag does not exist: check --image or the profile's engine.image; "
                             "another machine would fail the same way, so it was not retried")
    if IMAGE_PULL.search(msg):
        return LaunchFailure("image_pull", f"image failed: image_pull: {where}: {msg}",
                             "check the image name and that it is public; not retried on another machine")
    return LaunchFailure("status_msg_error", f"instance failed: status_msg_error: {where}: {msg}",
                         "Vast.ai reported an error on this host", host_fault=True)


def instance_failure(instance_id: int, status: str | None, status_msg: str | None) -> LaunchFailure | None:
    """What one look at the instance says: an error ``status_msg`` or a state that never reaches running."""
    failure = status_msg_failure(instance_id, status, status_msg)
    if failure is not None:
        return failure
    if status in DEAD_STATES:
        return LaunchFailure(f"instance_{status}",
                             f"instance failed: instance_{status}: instance {instance_id} is {status}: "
                             f"{status_msg or 'no status message'}",
                             "this state never reaches running (vast-api.md §6.5); try another machine",
                             host_fault=True)
    return None


class ReadyWait:
    """Feed it each poll's observations; it says when the launch has failed, and why.

    - log lines: the engine's failure signatures (``Engine.classify_failure``), ready markers;
    - the instance: error ``status_msg``, dead states, running with no port for ``NO_PORT_POLLS`` polls;
    - the health probe: a port that answered once and now refuses, with the log silent, is an engine
      that exited (the container stays up on Vast, so nothing else says so).
    """

    def __init__(self, engine: Engine, *, container_port: int) -> None:
        self.engine = engine
        self.container_port = container_port
        self.watcher = ReadinessWatcher(engine)
        self.port_answered = False
        self._no_port_polls = 0
        self._progress = 0  # log lines that are not our own health probes' access-log lines
        self._progress_at_probe = -1

    @property
    def verdict(self) -> LogVerdict:
        return self.watcher.verdict

    @property
    def progress(self) -> int:
        """New engine output so far; our own probes' access-log lines do not count as progress."""
        return self._progress

    def feed_logs(self, snapshot: str) -> LogVerdict:
        self.watcher.feed(snapshot)
        probe = f"GET {self.engine.health_path} "
        self._progress += sum(1 for line in self.watcher.fresh if probe not in line)
        return self.watcher.verdict

    def log_failure(self) -> LaunchFailure | None:
        v = self.watcher.verdict
        if v.failure is None:
            return None
        return LaunchFailure(v.failure.kind, f"engine failed: {v.failure.kind}: {v.failure_line}",
                             v.failure.advice, tuple(v.excerpt), host_fault=v.failure.host_fault)

    def feed_instance(self, instance_id: int, status: str | None, status_msg: str | None,
                      endpoint: str | None) -> LaunchFailure | None:
        failure = instance_failure(instance_id, status, status_msg)
        if failure is not None:
            return LaunchFailure(failure.kind, failure.message, failure.advice, tuple(self.verdict.excerpt),
                                 failure.host_fault)
        if status == "running" and endpoint is None:
            self._no_port_polls += 1
            if self._no_port_polls >= NO_PORT_POLLS:
                return LaunchFailure(
                    "no_ports",
                    f"instance failed: no_ports: instance {instance_id} is running but maps no port for "
                    f"{self.container_port}/tcp "
                    f"(ports stayed null for {self._no_port_polls} polls)",
                    "the host exposes no direct port; try another machine",
                    tuple(self.verdict.excerpt),
                    host_fault=True,
                )
        elif endpoint is not None:
            self._no_port_polls = 0
        return None

    def feed_health(self, reading: HealthReading) -> LaunchFailure | None:
        """One health probe of this poll, after this poll's logs were fed."""
        silent = self._progress == self._progress_at_probe
        self._progress_at_probe = self._progress
        if reading.port_answers:
            self.port_answered = True
            return None
        if reading.state is HealthState.REFUSED and self.port_answered and silent:
            excerpt = tuple(self.verdict.excerpt)
            last = excerpt[-1].strip() if excerpt else "no log line"
            return LaunchFailure(
                "engine_exited",
                f"engine failed: engine_exited: its port answered and now refuses connections, and the log "
                f"stopped (last line: {last})",
                "see the log excerpt; 'glmdeploy logs' shows the whole log while the instance is kept",
                excerpt,
            )
        return None
