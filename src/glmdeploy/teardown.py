"""The one way glmdeploy gives an instance back, and the one guard that makes interrupts do it.

``tear_down`` is the rule every command follows once something was rented: destroy it, check Vast.ai
no longer shows it, close the record; if that fails, record the deployment as ``orphaned`` (where
``destroy --orphans`` and ``list`` find it) and say what to run, with the hint that fits the failure.
``up`` (a failed attempt, an interrupt), ``ci`` (always, at the end), ``destroy NAME|--all`` and
``destroy --orphans`` all call it, so they say and record the same things.

``InterruptGuard`` turns SIGINT, SIGTERM and SIGHUP into an exception the command catches to tear
down, and holds further signals back while a teardown runs, so a second Ctrl-C or the hang-up of a
dropped SSH session cannot cut a destroy short. SIGINT/SIGTERM then exit 130, SIGHUP 129.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from glmdeploy.errors import GlmdeployError, HungUp, Interrupted

if TYPE_CHECKING:
    from types import FrameType

    from glmdeploy.deploy import Pacing
    from glmdeploy.state import Deployment, StateStore
    from glmdeploy.vast.client import VastClient

ORPHAN_HINT = "an instance may still be billing: run 'glmdeploy destroy --orphans' once Vast.ai answers"
AUTH_ORPHAN_HINT = (
    "an instance may still be billing: fix the Vast.ai key (see 'glmdeploy --help'), then run "
    "'glmdeploy destroy --orphans'"
)
# Seconds (provider time) between the checks that a destroyed instance is gone; they grow linearly.
VERIFY_PAUSE_S = 3.0
VERIFY_CHECKS = 5


def orphan_hint(error: BaseException | None) -> str:
    """What to tell a user whose instance could not be destroyed: retrying only helps once the cause is gone."""
    from glmdeploy.vast.errors import AuthError

    return AUTH_ORPHAN_HINT if isinstance(error, AuthError) else ORPHAN_HINT


@dataclass(frozen=True)
class TornDown:
    """What a teardown left: nothing billing (``destroyed``, ``already_gone``) or an ``orphaned`` record."""

    instance_id: int
    outcome: Literal["destroyed", "already_gone", "orphaned"]
    error: GlmdeployError | None = None

    @property
    def left(self) -> Literal["nothing", "orphaned"]:
        return "orphaned" if self.outcome == "orphaned" else "nothing"

    @property
    def hint(self) -> str | None:
        return orphan_hint(self.error) if self.outcome == "orphaned" else None

    def message(self) -> str:
        """The one line a user reads about it."""
        if self.outcome == "destroyed":
            return f"destroyed instance {self.instance_id}"
        if self.outcome == "already_gone":
            return f"instance {self.instance_id} was already gone"
        return f"could not destroy instance {self.instance_id} ({self.error}); it is recorded as orphaned: {self.hint}"


def tear_down(
    client: VastClient,
    instance_id: int,
    *,
    pacing: Pacing,
    store: StateStore | None = None,
    deployment: Deployment | None = None,
    reason: str | None = None,
    status: Literal["destroyed", "failed"] = "destroyed",
    sleep: Callable[[float], None] = time.sleep,
) -> TornDown:
    """Destroy ``instance_id``, verify it is gone and close ``deployment``'s record; else record it orphaned.

    ``reason`` is kept as the record's error (why it was torn down). The verify wait is in provider
    time, scaled by ``pacing.scale`` (the sandbox's clock runs faster). A record another process
    closed meanwhile (a concurrent ``destroy``) keeps its outcome: the first one stands.
    """
    from glmdeploy.lifecycle import destroy_and_verify

    record = store is not None and deployment is not None
    if record:
        _closing_write(store, deployment, status="destroying", error=reason)  # type: ignore[arg-type]
    try:
        destroyed_now = destroy_and_verify(
            client, instance_id, sleep=sleep, pause=VERIFY_PAUSE_S * pacing.scale, checks=VERIFY_CHECKS
        )
    except GlmdeployError as exc:
        if record:
            why = f"{reason}; destroy failed: {exc}" if reason else f"destroy failed: {exc}"
            _closing_write(store, deployment, status="orphaned", error=why)  # type: ignore[arg-type]
        return TornDown(instance_id, "orphaned", exc)
    if record:
        _closing_write(store, deployment, status=status, error=reason, destroyed=True)  # type: ignore[arg-type]
    return TornDown(instance_id, "destroyed" if destroyed_now else "already_gone")


def _closing_write(
    store: StateStore, deployment: Deployment, *, destroyed: bool = False, status: str, error: str | None
) -> None:
    """A write made while tearing down. If another process already closed the row (``destroy`` in
    another terminal), its record stands: the teardown goes on, the row is left as it is."""
    from glmdeploy.state import DeploymentReleased

    with contextlib.suppress(DeploymentReleased):
        if destroyed:
            store.mark_destroyed(deployment.id, status=status, error=error)  # type: ignore[arg-type]
        else:
            store.update(deployment.id, status=status, **({"error": error} if error is not None else {}))


# --------------------------------------------------------------------------- interrupts


class SignalReceived(KeyboardInterrupt):
    """Raised in the main thread by ``InterruptGuard`` for SIGINT, SIGTERM or SIGHUP.

    A ``KeyboardInterrupt`` (a ``BaseException``), so no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


GUARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class InterruptGuard:
    """Install with ``with InterruptGuard() as guard:`` around the part of a command that rents.

    - a signal raises ``SignalReceived`` where the main thread is (an HTTP call returns EINTR first);
    - inside ``guard.shielded()`` (a teardown in progress) a signal is only remembered, and raised
      when the teardown is over; after ``guard.closing()`` every later signal is only remembered;
    - SIGHUP also detaches a terminal that is gone, so writing the cleanup's progress cannot fail;
    - ``guard.error(left)`` is the error to exit with: ``Interrupted`` (130) or ``HungUp`` (129).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._shield_depth = 0
        self._closing = False
        self._pending = False
        self._previous: dict[int, Any] = {}
        # Which of stdin/stdout/stderr are a terminal, found out now: once it is hung up, isatty() says no.
        self._terminal_fds: tuple[int, ...] = ()

    def __enter__(self) -> InterruptGuard:
        self._terminal_fds = tuple(fd for fd in (0, 1, 2) if _isatty(fd))
        for sig in GUARDED:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            _detach_terminal(self._terminal_fds)
        # SIGHUP wins over the others: the terminal is gone, which is what the exit code must say.
        if self.received is None or signum == signal.SIGHUP:
            self.received = signum
        if self._closing or self._shield_depth:
            self._pending = True
            return
        raise SignalReceived(signum)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Hold signals back while a teardown runs; one that arrived is raised once it is over."""
        self._shield_depth += 1
        try:
            yield
        finally:
            self._shield_depth -= 1
        if self._pending and not self._shield_depth and not self._closing and self.received is not None:
            self._pending = False
            raise SignalReceived(self.received)

    def closing(self) -> None:
        """From now on the command is cleaning up on its way out: signals are remembered, never raised."""
        self._closing = True

    @property
    def hung_up(self) -> bool:
        return self.received == signal.SIGHUP

    def error(self, left: str) -> Interrupted:
        """The error to exit with after the teardown; ``left`` is what it left ("nothing" or "orphaned")."""
        kind = HungUp if self.hung_up else Interrupted
        what = "hung up (SIGHUP)" if self.hung_up else "interrupted"
        if left == "orphaned":
            return kind(f"{what}: the instance could not be destroyed", hint=ORPHAN_HINT)
        return kind(f"{what}: whatever was rented has been destroyed")


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _detach_terminal(fds: tuple[int, ...]) -> None:
    """Point ``fds`` (those that were a terminal) at /dev/null: after a hang-up, writing to the
    terminal fails (EIO), and the teardown's progress lines must not stop the teardown."""
    if not fds:
        return
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
