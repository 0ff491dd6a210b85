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
from dataclasses import dataclass
from fcntl import ioctl

from waits import HANG_S

from .conftest import GLMDEPLOY


@dataclass
class PtyRun:
    code: int
    screen: str
    answered: bool  # whether ``answer``'s reply was written


def run_on_pty(
    env: dict[str, str],
    args: list[str],
    *,
    size: tuple[int, int] | None = None,
    answer: tuple[bytes, bytes] | None = None,
    read_s: float = HANG_S,
) -> PtyRun:
    """Run ``glmdeploy args`` with a pty as stdin/stdout/stderr until it exits or closes the terminal.

    ``size`` (rows, columns) sets the terminal's window size; ``answer`` (prompt, reply) writes the
    reply once, the first time the prompt appears; ``read_s`` bounds the reading (a genuine hang only).
    """
    master, slave = pty.openpty()
    if size is not None:
        rows, cols = size
        ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([*GLMDEPLOY, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    answered = False
    deadline = time.monotonic() + read_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if answer is not None and not answered and answer[0] in seen:
                    os.write(master, answer[1])
                    answered = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return PtyRun(code, seen.decode(errors="replace"), answered)
