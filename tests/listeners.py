"""Whether *this* test process listens on a port: ``from listeners import listening_here``.

The simulated engines run inside the test process on a port a test picked with ``bind(0)`` and then let
go. "Connection refused" on that port does not prove the engine never listened, and a connect that
succeeds does not prove it did: under xdist another worker's sandbox may have been handed the same
ephemeral port in between (it happened in CI: `test_a_removed_flag_ends_the_engine_at_argument_parsing`
saw a listener the engine never opened). The kernel's socket table says who owns a listener: a LISTEN
row in /proc/net/tcp{,6} whose inode is one of this process's file descriptors.
"""

from __future__ import annotations

import os
from pathlib import Path

_LISTEN = "0A"


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listening_here(port: int) -> bool:
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
