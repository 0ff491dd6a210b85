"""Who rented an instance: owner ids, owner scopes, and the label that carries them.

Several machines (a laptop, a colleague's, CI runners) may share one Vast.ai account. Each state
directory gets a stable random *owner id*, written once to ``<state dir>/owner-id`` (0600), and
every instance glmdeploy rents is labelled ``glmdeploy:<owner>:<deployment id>``. An instance
whose owner is not one of ours is *foreign*: ``list`` shows it, ``destroy --orphans`` never
touches it unless asked to by id or age (``--include-foreign``).

Scopes:

- by default ``up`` rents under the state dir's id, and ``ci`` under ``<id>-ci``, so what a CI
  job rented is told apart from what its machine's user rented by hand;
- ``GLMDEPLOY_OWNER`` replaces the scope for every command (``up``, ``ci``, ``list``,
  ``destroy``), verbatim: CI runners that set the same value share one scope, so one runner's
  sweep can clean up what a killed runner left (see docs/ci.md for the ``--older-than`` guard);
- ``destroy --orphans`` and ``list`` treat the state dir's own scopes as ours: ``<id>`` and
  ``<id>-ci`` (or just ``GLMDEPLOY_OWNER`` when set).

Labels written before owners existed (``glmdeploy:<deployment id>``) have no owner: they are
foreign unless a local record tracks them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from glmdeploy.errors import UsageError

LABEL_PREFIX = "glmdeploy:"
OWNER_FILE = "owner-id"
OWNER_ENV = "GLMDEPLOY_OWNER"
CI_SUFFIX = "-ci"
OWNER_MAX_LEN = 40
# No ':' (it separates the label's parts), nothing a shell or a label filter would trip on.
OWNER_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,38}[a-z0-9])?")


@dataclass(frozen=True)
class LabelParts:
    """A glmdeploy label taken apart; ``owner`` is None for the old ``glmdeploy:<id>`` form."""

    owner: str | None
    deployment_id: str


def validate_owner(value: str, *, source: str = OWNER_ENV) -> str:
    owner = value.strip()
    if not OWNER_PATTERN.fullmatch(owner):
        raise UsageError(
            f"invalid owner scope {value!r} in {source}: use lowercase letters, digits, '.', '_' and '-' "
            f"(no ':'), at most {OWNER_MAX_LEN} characters"
        )
    return owner


def make_label(owner: str, deployment_id: str) -> str:
    return f"{LABEL_PREFIX}{owner}:{deployment_id}"


def parse_label(label: str | None) -> LabelParts | None:
    """The owner and deployment id of a glmdeploy label; None if it is not one of ours at all."""
    if not label or not label.startswith(LABEL_PREFIX):
        return None
    rest = label.removeprefix(LABEL_PREFIX)
    owner, sep, deployment_id = rest.rpartition(":")
    if not sep:
        return LabelParts(owner=None, deployment_id=rest)
    return LabelParts(owner=owner or None, deployment_id=deployment_id)


def local_owner_id(state_dir: Path) -> str:
    """This state dir's owner id, created on first use (8 random hex digits, file mode 0600).

    The file appears complete or not at all (written aside, then hard-linked into place, which
    fails if it exists): processes creating it at once all end up with the first one's id.
    """
    path = Path(state_dir) / OWNER_FILE
    with contextlib.suppress(FileNotFoundError):
        return validate_owner(path.read_text().strip(), source=str(path))
    candidate = secrets.token_hex(4)
    scratch = path.with_name(f".{OWNER_FILE}.{os.getpid()}.{candidate}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(candidate + "\n")
        try:
            os.link(scratch, path)
        except FileExistsError:
            return validate_owner(path.read_text().strip(), source=str(path))
        return candidate
    finally:
        scratch.unlink(missing_ok=True)


def explicit_owner() -> str | None:
    """``GLMDEPLOY_OWNER`` when set (validated), else None."""
    raw = os.environ.get(OWNER_ENV, "")
    return validate_owner(raw) if raw.strip() else None


def rental_owner(state_dir: Path, *, ci: bool = False) -> str:
    """The owner scope a new rental is labelled with: ``up`` and ``ci`` call this."""
    explicit = explicit_owner()
    if explicit is not None:
        return explicit
    own = local_owner_id(state_dir)
    return own + CI_SUFFIX if ci else own


def own_scopes(state_dir: Path) -> frozenset[str]:
    """The owners whose untracked instances count as this machine's orphans."""
    explicit = explicit_owner()
    if explicit is not None:
        return frozenset({explicit})
    own = local_owner_id(state_dir)
    return frozenset({own, own + CI_SUFFIX})
