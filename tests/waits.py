"""Event-driven waits shared by the tests: ``from waits import ...`` (tests/conftest.py puts tests/ on sys.path).

A test that must act "during phase X" waits for an observable event: a phase event on ``up --json``'s
NDJSON stream, a request the sandbox received, a line in a log, a row or file written. It never
sleeps a fixed time and hopes: on a loaded 2-core machine with two xdist workers a fixed sleep is
either too short (the event has not happened yet) or, against the sandbox's scaled clock, too long
(0.3 s real is 150 simulated seconds at time scale 0.002, enough for a readiness timeout to fire).

Every wait has a generous overall deadline (``HANG_S``) that only bounds a genuine hang; reaching it
fails the test with what was seen so far.

The other half of the rule: while a test waits for an event, the product's own timeouts must not be
able to fire first. Tests that act inside a phase pass ``LONG_TIMEOUT`` (``--timeout``), which at any
test time scale is many real minutes.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# Bounds a genuine hang, never a step that is merely slow under load.
HANG_S = 60.0
# A readiness timeout that cannot fire while a test waits for an event: 24 simulated hours are 173 real
# seconds at time scale 0.002 (the e2e sandbox) and 86 at 0.001 (the in-process fault sandbox), both
# beyond HANG_S. (The profiles' own 40 minutes are only 4.8 and 2.4 real seconds.)
LONG_TIMEOUT = ("--timeout", "24h")


def wait_until(predicate: Callable[[], T | None], what: str, timeout: float = HANG_S, interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    ``predicate`` reads state that some other process writes (a ledger, a request log, a file): the
    poll interval only sets how soon the test notices, never whether it passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class EventStream:
    """Reads a subprocess's NDJSON stdout (``up --json``, ``ci --json``) on a thread.

    ``wait_phase`` returns as soon as the phase event is read, so the test acts while the process is
    in that phase; the deadline only bounds a hang. ``seen`` holds every event read so far.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.ended = False
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            try:
                for line in stream:
                    self.lines.put(line)
            except (OSError, ValueError):  # the test closed the pipe after a kill
                pass
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The next event; None once the stream has ended; raises ``queue.Empty`` at the deadline."""
        if self.ended:
            return None
        line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if line is None:
            self.ended = True
            return None
        if not line.strip():
            return self._next(deadline)
        event: dict[str, Any] = json.loads(line)
        self.seen.append(event)
        return event

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], what: str, timeout: float = HANG_S) -> bool:
        """True once an event ``matches``; False if the stream ends first. AssertionError at the deadline."""
        if any(matches(e) for e in self.seen):
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._next(deadline)
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout:.0f}s: {self.seen}") from None
            if event is None:
                return False
            if matches(event):
                return True

    def wait_phase(self, phase: str, timeout: float = HANG_S) -> bool:
        """True once the ``phase`` event is read; False if the process ended before reaching it."""
        return self.wait_for(lambda e: e.get("phase") == phase, f"'{phase}' event", timeout)

    def expect_phase(self, phase: str, timeout: float = HANG_S) -> None:
        """Like ``wait_phase``, but the process ending first fails the test."""
        assert self.wait_phase(phase, timeout), f"the process ended before '{phase}': {self.seen}"

    def drain(self, timeout: float = 10) -> list[dict[str, Any]]:
        """After the process is dead (or done): every event it managed to write."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._next(deadline) is None:
                    return self.seen
            except queue.Empty:
                return self.seen


def requests_matching(
    records: Iterable[dict[str, Any]], method: str, path_contains: str = ""
) -> list[dict[str, Any]]:
    """The records of a ``GET /_sandbox/requests`` answer (``requests`` or ``in_flight``) that match."""
    return [r for r in records if r["method"] == method and path_contains in r["path"]]


def wait_for_request(
    fetch: Callable[[], dict[str, Any]], method: str, path_contains: str = "", *, in_flight: bool = False,
    timeout: float = HANG_S,
) -> dict[str, Any]:
    """Wait until the sandbox has received a matching Vast request, and return its record.

    ``fetch`` returns the ``GET /_sandbox/requests`` body. With ``in_flight`` the request must be one
    the sandbox is still serving (a create held back by ``create_timeout,delay=S``, a destroy in a
    fault's wait); otherwise any answered one counts too.
    """
    def found() -> dict[str, Any] | None:
        body = fetch()
        pools = [body.get("in_flight", [])] + ([] if in_flight else [body["requests"]])
        for pool in pools:
            hits = requests_matching(pool, method, path_contains)
            if hits:
                return hits[0]
        return None

    state = "in flight" if in_flight else "received"
    return wait_until(found, f"a {method} {path_contains or '*'} request {state} by the sandbox", timeout)


def wait_until_quiet(fetch: Callable[[], dict[str, Any]], timeout: float = HANG_S) -> None:
    """Wait until the sandbox serves no Vast request, e.g. one a killed process had already sent.

    The sandbox serves connections in the order their bytes arrive, so by the time it answers this
    admin request, a request that was sent before it has at least begun and shows as in flight.
    """
    wait_until(lambda: not fetch().get("in_flight"), "the sandbox to finish the requests in flight", timeout)


# Put in a subprocess's environment so that ``wait_exit`` can show where it hangs.
FAULTHANDLER_ENV = {"PYTHONFAULTHANDLER": "1"}


def wait_exit(proc: subprocess.Popen[str], timeout: float = HANG_S) -> int:
    """Wait for ``proc`` to exit and return its code. If it hangs, fail with every thread's traceback.

    The traceback needs ``FAULTHANDLER_ENV`` in the process's environment: SIGABRT then makes
    Python's faulthandler dump the stacks to stderr before the process dies.
    """
    import signal

    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=30)
        stderr = proc.stderr.read() if proc.stderr is not None else ""
        raise AssertionError(f"{proc.args} still running after {timeout:.0f}s; its stacks:\n{stderr[-8000:]}") from None


def default_sigint() -> None:
    """``preexec_fn`` for a child that must take Ctrl-C the way it does in a terminal.

    A test run started in the background by a non-interactive shell (``.ci/run &``, many CI runners)
    inherits SIGINT *ignored*, as POSIX shells do for background jobs; Python then installs no
    KeyboardInterrupt handler, so a SIGINT sent by the test is silently dropped. That, not the
    signal's timing, was the ``test_interrupt_during_wait_ready_destroys_and_exits_130[2]`` flake.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
