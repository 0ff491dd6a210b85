"""The socket-table check the engine tests use instead of a connect (tests/listeners.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

from listeners import listening_here


def test_a_listener_of_this_process_counts_and_a_closed_one_does_not() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not listening_here(port)  # bound is not listening
        s.listen(1)
        assert listening_here(port)
    assert not listening_here(port)


def test_another_process_listening_on_the_port_is_not_ours() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1);"
         " print(s.getsockname()[1], flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # a connect would have said "something listens"
        assert not listening_here(port)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
