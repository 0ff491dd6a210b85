"""Run the real CLI on a pseudo-terminal and read everything it drew, for the e2e tests that need a terminal.

The caller builds the environment (TERM, COLUMNS, NO_COLOR are part of what each test checks).
"""

from __future__ import annotations

import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fcntl import ioctl

from waits import HANG_S, default_sigint

from .conftest import GLMDEPLOY


@dataclass
class PtyRun:
    code: int
    screen: str
    answered: int  # how many of the steps (``answers``' replies) were done


# One step of a scripted session: once ``when(screen so far)`` holds, ``do(the process)`` runs and the
# bytes it returns are typed (a step may act another way, e.g. send a signal, and type nothing).
Step = tuple[Callable[[str], bool], Callable[[subprocess.Popen[bytes]], bytes]]


def prompted(prompt: str, times: int, reply: bytes) -> Step:
    """The step that types ``reply`` once ``prompt`` has appeared ``times`` times."""
    return (lambda screen: screen.count(prompt) >= times, lambda _proc: reply)


def run_on_pty(
    env: dict[str, str],
    args: list[str],
    *,
    size: tuple[int, int] | None = None,
    answers: tuple[bytes, list[bytes]] | None = None,
    steps: Sequence[Step] = (),
    read_s: float = HANG_S,
) -> PtyRun:
    """Run ``glmdeploy args`` with a pty as stdin/stdout/stderr until it exits or closes the terminal.

    ``size`` (rows, columns) sets the terminal's window size; ``answers`` (prompt, replies) writes the
    k-th reply once the prompt has appeared k times (a REPL prompting line after line, or one [y/N]);
    ``steps`` are done in order, each once its condition holds (checked as output arrives, and every
    0.1 s meanwhile); ``read_s`` bounds the reading (a genuine hang only). The child takes SIGINT as in
    a terminal, whatever this test run inherited.
    """
    master, slave = pty.openpty()
    if size is not None:
        rows, cols = size
        ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    if answers is not None:
        prompt = answers[0].decode()
        steps = [prompted(prompt, k + 1, reply) for k, reply in enumerate(answers[1])]
    proc = subprocess.Popen([*GLMDEPLOY, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                            preexec_fn=default_sigint)
    os.close(slave)
    seen = b""
    answered = 0
    deadline = time.monotonic() + read_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
            while answered < len(steps) and steps[answered][0](seen.decode(errors="replace")):
                typed = steps[answered][1](proc)
                if typed:
                    os.write(master, typed)
                answered += 1
        code = proc.wait(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return PtyRun(code, seen.decode(errors="replace"), answered)
