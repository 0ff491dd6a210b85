"""Local record of every deployment: what was rented, where, for which profile, and how it ended.

One SQLite file (``state.db`` under ``glmdeploy.paths.home()``). It holds endpoint API keys, so
the directory is 0700 and the file 0600 (SQLite gives its ``-wal``/``-shm`` files the database
file's mode). Several CLI processes may use it at once (``up`` in one terminal, ``list`` and
``destroy`` in another, a CI job), hence WAL journaling, a busy timeout, and short write
transactions that take the write lock up front (``BEGIN IMMEDIATE``): a deferred transaction that
reads and then writes can fail with "database is locked" without ever waiting.

A deployment is *active* while it may hold a rented instance: until it is marked destroyed
(``destroyed_at`` set, by ``destroy`` or by ``up`` after it tore a failed attempt down). A
``failed`` deployment kept with ``--keep-on-failure`` is still active (it still bills); one
whose instance was destroyed is not. Names are unique among active deployments, enforced by a
partial unique index so two concurrent ``up --name x`` cannot both win.

The record is written (status ``creating``) before the Vast create call: if the process dies
between the two, the label ``glmdeploy:<owner>:<id>`` stored here is how the orphan is found again
(older records hold ``glmdeploy:<id>``; see ``glmdeploy.ownership``).
"""

from __future__ import annotations

import builtins
import json
import os
import re
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from glmdeploy.errors import GlmdeployError, UsageError
from glmdeploy.paths import ensure_home, unusable_state

T = TypeVar("T")

DB_FILENAME = "state.db"
BUSY_TIMEOUT_MS = 10_000
LABEL_PREFIX = "glmdeploy:"
NAME_MAX_LEN = 48
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
_NAME_ATTEMPTS = 50

Status = Literal["creating", "starting", "loading", "ready", "failed", "destroying", "destroyed", "orphaned"]
STATUSES: tuple[str, ...] = get_args(Status)

# Statuses that may be written to a deployment already marked destroyed.
_ENDED_STATUSES = frozenset({"destroyed", "failed"})
# The SQL twin of Deployment.is_active; the partial unique index uses the same expression.
_ACTIVE_SQL = "destroyed_at IS NULL AND status != 'destroyed'"


class DeploymentReleased(GlmdeployError):
    """A status change arrived for a deployment that another process has already destroyed."""

    code = "deployment_released"


class Deployment(BaseModel):
    """One deployment row. Dumps (``model_dump``, ``model_dump_json``, ``public()``) never hold the key."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Opaque deployment id (12 hex characters); the label carries it.")
    name: str
    profile: str = Field(description="Profile name.")
    profile_snapshot: dict[str, Any] = Field(description="The full profile as it was when the deployment began.")
    offer_id: int | None = None
    offer_snapshot: dict[str, Any] | None = None
    instance_id: int | None = None
    machine_id: int | None = None
    endpoint: str | None = Field(default=None, description="OpenAI base URL, ending in /v1.")
    model: str | None = Field(default=None, description="Model name the endpoint serves.")
    status: Status = "creating"
    phase: str | None = Field(default=None, description="Phase of the up state machine.")
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None = None
    destroyed_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="When the TTL watchdog destroys it.")
    dph_total: float | None = None
    label: str = Field(description="Vast instance label, glmdeploy:<owner>:<id> (older rows: glmdeploy:<id>).")
    api_url: str | None = Field(default=None, description="Vast API server the instance was created on.")
    owner_pid: int | None = Field(
        default=None, description="PID of the process driving it (up, destroy): tells in-flight from abandoned."
    )
    kv_tokens_planned: int | None = Field(
        default=None, description="KV pool the planner predicted (tokens per GPU), for calibration."
    )
    kv_tokens_planned_low: int | None = Field(default=None, description="Low end of the planner's band.")
    kv_tokens_planned_high: int | None = Field(default=None, description="High end of the planner's band.")
    kv_tokens_reported: int | None = Field(
        default=None, description="KV pool the engine reported in its startup log (tokens)."
    )
    tls_fingerprint: str | None = Field(
        default=None, description="SHA-256 of the endpoint's certificate, as its host logged it (hex)."
    )
    tls_certificate: str | None = Field(
        default=None, description="The endpoint's certificate (PEM) once a TLS connection presented that pin."
    )
    endpoint_api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    # Replicas (issue 12, migration 5). A *group* row (replicas_wanted set) rents nothing itself: it
    # owns the gateway, and its replicas are ordinary deployment rows whose parent_id names it.
    parent_id: str | None = Field(default=None, description="The replica group this row is a replica of.")
    replica_index: int | None = Field(default=None, description="Replica number within its group (never reused).")
    gateway_worker_id: str | None = Field(default=None, description="The gateway's id for this replica.")
    retired_at: datetime | None = Field(
        default=None, description="When scale/destroy removed this replica on purpose (else a gone one is lost)."
    )
    replicas_wanted: int | None = Field(default=None, description="Replicas a group should have.")
    gateway_url: str | None = Field(default=None, description="The group's one endpoint (the gateway), no /v1.")
    gateway_pid: int | None = None
    gateway_policy: str | None = None
    gateway_api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)

    @property
    def is_active(self) -> bool:
        return self.destroyed_at is None and self.status != "destroyed"

    @property
    def is_group(self) -> bool:
        """A replica group: rents nothing itself, owns a gateway and its replicas (children rows)."""
        return self.replicas_wanted is not None

    def gateway_key(self) -> str | None:
        """The gateway's client key in clear, for ``glmdeploy env`` and the smoke client only."""
        return None if self.gateway_api_key is None else self.gateway_api_key.get_secret_value()

    def endpoint_key(self) -> str | None:
        """The endpoint's API key in clear, for ``glmdeploy env`` and the smoke client only.

        A replica group's endpoint is its gateway, so its key is the gateway's (never a replica's)."""
        if self.is_group:
            return self.gateway_key()
        return None if self.endpoint_api_key is None else self.endpoint_api_key.get_secret_value()

    def public(self, *, snapshots: bool = False) -> dict[str, Any]:
        """The JSON view for ``--json`` output; the snapshots are bulky, so only on request."""
        exclude = None if snapshots else {"profile_snapshot", "offer_snapshot", "tls_certificate"}
        return self.model_dump(mode="json", exclude=exclude)


# --- schema -----------------------------------------------------------------------------------


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """The first layout: one row per deployment."""
    conn.execute(
        """
        CREATE TABLE deployments (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            profile TEXT NOT NULL,
            profile_snapshot TEXT NOT NULL,
            offer_id INTEGER,
            offer_snapshot TEXT,
            instance_id INTEGER,
            machine_id INTEGER,
            endpoint TEXT,
            model TEXT,
            status TEXT NOT NULL,
            phase TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            ready_at TEXT,
            destroyed_at TEXT,
            dph_total REAL,
            label TEXT NOT NULL UNIQUE,
            endpoint_api_key TEXT
        )
        """
    )
    conn.execute(f"CREATE UNIQUE INDEX deployments_active_name ON deployments(name) WHERE {_ACTIVE_SQL}")
    conn.execute("CREATE INDEX deployments_instance ON deployments(instance_id)")


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """TTL watchdog deadline, and which API server (Vast or a sandbox) holds the instance."""
    conn.execute("ALTER TABLE deployments ADD COLUMN expires_at TEXT")
    conn.execute("ALTER TABLE deployments ADD COLUMN api_url TEXT")


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Which local process drives the deployment, so a crashed ``up`` can be told from a running one."""
    conn.execute("ALTER TABLE deployments ADD COLUMN owner_pid INTEGER")


def _migrate_v4(conn: sqlite3.Connection) -> None:
    """The planner's KV pool (and band) next to the engine's own figure: every rental calibrates."""
    for column in ("kv_tokens_planned", "kv_tokens_planned_low", "kv_tokens_planned_high", "kv_tokens_reported"):
        conn.execute(f"ALTER TABLE deployments ADD COLUMN {column} INTEGER")


def _migrate_v5(conn: sqlite3.Connection) -> None:
    """Replicas (issue 12): a group row owns a gateway; its replicas are rows pointing at it."""
    for column, kind in (
        ("parent_id", "TEXT"),
        ("replica_index", "INTEGER"),
        ("gateway_worker_id", "TEXT"),
        ("retired_at", "TEXT"),
        ("replicas_wanted", "INTEGER"),
        ("gateway_url", "TEXT"),
        ("gateway_pid", "INTEGER"),
        ("gateway_policy", "TEXT"),
        ("gateway_api_key", "TEXT"),
    ):
        conn.execute(f"ALTER TABLE deployments ADD COLUMN {column} {kind}")
    conn.execute("CREATE INDEX deployments_parent ON deployments(parent_id)")


def _migrate_v6(conn: sqlite3.Connection) -> None:
    """The endpoint's TLS pin (read from the instance log through the Vast API) and its certificate."""
    conn.execute("ALTER TABLE deployments ADD COLUMN tls_fingerprint TEXT")
    conn.execute("ALTER TABLE deployments ADD COLUMN tls_certificate TEXT")


# Applied in order; the database's user_version counts how many have run. Append, never edit.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_v1, _migrate_v2, _migrate_v3, _migrate_v4, _migrate_v5, _migrate_v6,
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS: tuple[str, ...] = tuple(Deployment.model_fields)
_JSON_COLUMNS = frozenset({"profile_snapshot", "offer_snapshot"})
_TIME_COLUMNS = frozenset({"created_at", "updated_at", "ready_at", "destroyed_at", "expires_at", "retired_at"})
# What update() may change: identity and creation facts are fixed.
_UPDATABLE = frozenset(_COLUMNS) - {
    "id", "label", "created_at", "updated_at", "profile", "profile_snapshot", "parent_id", "replica_index",
}


# --- helpers ----------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_path() -> Path:
    return ensure_home() / DB_FILENAME


def new_deployment_id() -> str:
    return secrets.token_hex(6)


def label_for(deployment_id: str, owner: str) -> str:
    """``glmdeploy:<owner>:<deployment id>`` (glmdeploy.ownership says who the owner is)."""
    from glmdeploy.ownership import make_label

    return make_label(owner, deployment_id)


def validate_name(name: str) -> str:
    """A user-chosen ``--name``: lowercase letters, digits and dashes, at most 48 characters."""
    if len(name) > NAME_MAX_LEN or not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid deployment name {name!r}: use lowercase letters, digits and dashes "
            f"(not at the start or end), at most {NAME_MAX_LEN} characters"
        )
    return name


def generate_name(profile: str) -> str:
    """``glm-<profile>-<4 random lowercase alnum>``, squeezed into the name rules."""
    stem = re.sub(r"[^a-z0-9]+", "-", profile.lower()).strip("-") or "deployment"
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(4))
    room = NAME_MAX_LEN - len("glm--") - len(suffix)
    return f"glm-{stem[:room].rstrip('-')}-{suffix}"


def _encode(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _JSON_COLUMNS:
        return json.dumps(value, sort_keys=True)
    if column in _TIME_COLUMNS:
        if not isinstance(value, datetime):
            raise TypeError(f"{column} must be a datetime, not {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError(f"{column} must be timezone-aware (UTC)")
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if column in ("endpoint_api_key", "gateway_api_key") and isinstance(value, SecretStr):
        return value.get_secret_value()
    if column == "status" and value not in STATUSES:
        raise ValueError(f"unknown status {value!r}; one of {', '.join(STATUSES)}")
    return value


def _decode(row: sqlite3.Row) -> Deployment:
    data: dict[str, Any] = {}
    for column in _COLUMNS:
        value = row[column]
        if value is not None and column in _JSON_COLUMNS:
            value = json.loads(value)
        data[column] = value
    return Deployment.model_validate(data)


def _is_name_conflict(exc: sqlite3.IntegrityError) -> bool:
    text = str(exc)
    return "deployments.name" in text or "deployments_active_name" in text


# --- the store --------------------------------------------------------------------------------


class StateStore:
    """Deployment records in one SQLite file, safe to share between processes."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path

    @classmethod
    def open(cls, path: Path | None = None) -> StateStore:
        """Open (creating and migrating if needed) the store; default ``<home>/state.db``."""
        db_path = default_path() if path is None else Path(path)
        try:
            if path is not None:
                db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(db_path)
        except OSError as exc:  # a directory or a broken link where the database should be, ...
            raise unusable_state(db_path, exc) from None
        conn = sqlite3.connect(
            db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn, db_path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            raise UsageError(
                f"state database {db_path} is unreadable ({exc}); move it aside to start afresh",
                hint="it lists rented instances: check 'vastai show instances' for ones labelled glmdeploy:",
            ) from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, db_path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction and return what it returns.

        A signal's exception can land on any line (CPython raises it right after the call that was
        running), and the teardown that follows writes here. So: no generator-based context manager,
        whose ``__exit__`` could be cut short before the COMMIT and leave the generator holding the
        transaction and the lock; BEGIN inside the ``try``; and a transaction still open when the next
        write starts (only an interrupted write of this process can leave one: the lock is held) never
        committed, so it is rolled back first.
        """
        with self._lock:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                result = body(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return result

    def _write_one(self, sql: str, params: tuple[Any, ...]) -> None:
        self._write(lambda conn: conn.execute(sql, params))

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[Deployment]:
        with self._lock:
            return [_decode(row) for row in self._conn.execute(sql, params).fetchall()]

    # -- writing --

    def create(
        self,
        *,
        profile: str,
        profile_snapshot: dict[str, Any],
        name: str | None = None,
        api_url: str | None = None,
        expires_at: datetime | None = None,
        endpoint_api_key: str | None = None,
        model: str | None = None,
        phase: str | None = None,
        owner_pid: int | None = None,
        owner: str | None = None,
        parent: Deployment | None = None,
        replica_index: int | None = None,
        replicas_wanted: int | None = None,
    ) -> Deployment:
        """Record a new deployment in status ``creating``; call this before renting anything.

        ``owner`` is the scope its label carries (default: this state dir's, see
        ``glmdeploy.ownership.rental_owner``).

        ``name`` is validated and must not belong to an active deployment; without it one is
        generated (``glm-<profile>-xxxx``), retrying on the rare collision. ``owner_pid``
        defaults to this process.

        A replica (``parent`` and ``replica_index`` given) is named ``<group name>-r<index>`` and
        labelled ``<group label>-r<index>``: the label still parses to the group's owner scope, so
        ``destroy --orphans`` finds a replica a crash left behind (``glmdeploy.ownership``).
        """
        from glmdeploy.ownership import rental_owner, validate_owner

        chosen = validate_name(name) if name is not None else None
        scope = validate_owner(owner, source="owner") if owner is not None else rental_owner(self.path.parent)
        for _ in range(_NAME_ATTEMPTS):
            candidate = chosen or generate_name(profile)
            deployment_id = new_deployment_id()
            label = label_for(deployment_id, scope)
            if parent is not None and replica_index is not None:
                suffix = f"-r{replica_index}"
                candidate = parent.name[: NAME_MAX_LEN - len(suffix)].rstrip("-") + suffix
                label = parent.label + suffix
            now = utcnow()
            values: dict[str, Any] = {
                "id": deployment_id,
                "name": candidate,
                "profile": profile,
                "profile_snapshot": profile_snapshot,
                "status": "creating",
                "phase": phase,
                "model": model,
                "created_at": now,
                "updated_at": now,
                "label": label,
                "api_url": api_url,
                "parent_id": parent.id if parent is not None else None,
                "replica_index": replica_index,
                "replicas_wanted": replicas_wanted,
                "expires_at": expires_at,
                "endpoint_api_key": endpoint_api_key,
                "owner_pid": os.getpid() if owner_pid is None else owner_pid,
            }
            columns = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            encoded = tuple(_encode(col, val) for col, val in values.items())
            try:
                self._write_one(f"INSERT INTO deployments ({columns}) VALUES ({marks})", encoded)  # noqa: S608
            except sqlite3.IntegrityError as exc:
                if not _is_name_conflict(exc):
                    continue  # a 48-bit id collision: draw again
                if chosen is not None or parent is not None:
                    raise UsageError(
                        f"a deployment named {chosen!r} already exists",
                        hint=f"pick another --name, or run 'glmdeploy destroy {chosen}' first",
                    ) from None
                continue
            return self._by_id(deployment_id)
        raise UsageError(f"could not find a free deployment name for profile {profile!r}; pass --name")

    def update(self, ref: str, **fields: Any) -> Deployment:
        """Change fields of one deployment (by name or id) and bump ``updated_at``.

        A deployment already marked destroyed is not brought back to life by a late status change
        from another process (say ``up`` reporting ``ready`` after ``destroy`` ran in another
        terminal): that raises ``DeploymentReleased``. Reviving one on purpose (an orphan found
        still running) means passing ``destroyed_at=None`` along with the new status.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        if "name" in fields:
            validate_name(fields["name"])
        values = {**fields, "updated_at": utcnow()}
        encoded = tuple(_encode(col, val) for col, val in values.items())
        assignments = ", ".join(f"{col} = ?" for col in values)
        target = self.get(ref)
        try:

            def change(conn: sqlite3.Connection) -> None:
                row = conn.execute("SELECT status, destroyed_at FROM deployments WHERE id = ?", (target.id,)).fetchone()
                reviving = "status" in fields and fields["status"] not in _ENDED_STATUSES
                on_purpose = "destroyed_at" in fields and fields["destroyed_at"] is None
                if row["destroyed_at"] is not None and reviving and not on_purpose:
                    raise DeploymentReleased(
                        f"deployment {target.name!r} was destroyed meanwhile (status {row['status']}); "
                        f"not setting it to {fields['status']!r}"
                    )
                conn.execute(
                    f"UPDATE deployments SET {assignments} WHERE id = ?",  # noqa: S608 (columns are allow-listed)
                    (*encoded, target.id),
                )

            self._write(change)
        except sqlite3.IntegrityError as exc:
            if _is_name_conflict(exc):
                name = fields.get("name", target.name)
                raise UsageError(f"a deployment named {name!r} already exists") from None
            raise
        return self._by_id(target.id)

    def mark_destroyed(self, ref: str, *, status: Literal["destroyed", "failed"] = "destroyed",
                       error: str | None = None, phase: str | None = None) -> Deployment:
        """The instance is gone (or was never rented): the deployment stops being active.

        ``status="failed"`` records a deployment that failed and whose instance was torn down.
        Idempotent: on a deployment already marked, nothing changes (the first outcome stands).
        """
        target = self.get(ref)
        fields: dict[str, Any] = {"status": status, "destroyed_at": utcnow(), "updated_at": utcnow()}
        if error is not None:
            fields["error"] = error
        if phase is not None:
            fields["phase"] = phase
        assignments = ", ".join(f"{col} = ?" for col in fields)
        encoded = tuple(_encode(col, val) for col, val in fields.items())
        self._write_one(
            f"UPDATE deployments SET {assignments} WHERE id = ? AND destroyed_at IS NULL",  # noqa: S608
            (*encoded, target.id),
        )
        return self._by_id(target.id)

    # -- reading --

    def _by_id(self, deployment_id: str) -> Deployment:
        rows = self._rows("SELECT * FROM deployments WHERE id = ?", (deployment_id,))
        if not rows:
            raise UsageError(f"unknown deployment id {deployment_id!r}")
        return rows[0]

    def find(self, ref: str) -> Deployment | None:
        """By name (the active one first, else the newest with that name), then by id."""
        rows = self._rows(
            f"SELECT * FROM deployments WHERE name = ? ORDER BY ({_ACTIVE_SQL}) DESC, created_at DESC LIMIT 1",  # noqa: S608
            (ref,),
        )
        if rows:
            return rows[0]
        rows = self._rows("SELECT * FROM deployments WHERE id = ?", (ref,))
        return rows[0] if rows else None

    def check_name_free(self, name: str) -> None:
        """Raise the ``UsageError`` that ``create`` would, before anything is rented under that name."""
        validate_name(name)
        existing = self.find(name)
        if existing is not None and existing.name == name and existing.is_active:
            raise UsageError(
                f"a deployment named {name!r} already exists",
                hint=f"pick another --name, or run 'glmdeploy destroy {name}' first",
            )

    def get(self, ref: str) -> Deployment:
        """Like ``find`` but an unknown name is a usage error listing the known ones."""
        found = self.find(ref)
        if found is not None:
            return found
        known = [d.name for d in self.active()]
        listing = f"known: {', '.join(known)}" if known else "there are no active deployments"
        raise UsageError(f"unknown deployment {ref!r}; {listing}")

    def find_by_label(self, label: str) -> Deployment | None:
        rows = self._rows("SELECT * FROM deployments WHERE label = ?", (label,))
        return rows[0] if rows else None

    def find_by_instance(self, instance_id: int, api_url: str | None = None) -> Deployment | None:
        rows = self._rows(
            "SELECT * FROM deployments WHERE instance_id = ? ORDER BY created_at DESC", (instance_id,)
        )
        for row in rows:
            if api_url is None or row.api_url == api_url:
                return row
        return None

    def list(self, *, include_destroyed: bool = False, replicas: bool = True) -> builtins.list[Deployment]:
        """Oldest first; without ``include_destroyed`` only the active ones; ``replicas=False`` leaves
        out the rows that are replicas of a group (the group row stands for them)."""
        conditions = [] if include_destroyed else [_ACTIVE_SQL]
        if not replicas:
            conditions.append("parent_id IS NULL")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._rows(f"SELECT * FROM deployments {where} ORDER BY created_at, rowid")  # noqa: S608

    def active(self) -> builtins.list[Deployment]:
        """The active deployments a user names: replica groups stand for their replicas."""
        return self.list(include_destroyed=False, replicas=False)

    def replicas_of(self, group_id: str, *, include_retired: bool = False) -> builtins.list[Deployment]:
        """A group's replicas by index; without ``include_retired`` only those not removed on purpose."""
        extra = "" if include_retired else " AND retired_at IS NULL"
        return self._rows(
            f"SELECT * FROM deployments WHERE parent_id = ?{extra} ORDER BY replica_index",  # noqa: S608
            (group_id,),
        )

    def resolve(self, ref: str | None) -> Deployment:
        """What a command's optional NAME argument means."""
        return self.resolve_default() if ref is None else self.get(ref)

    def resolve_default(self) -> Deployment:
        """The only active deployment, for commands whose NAME was left out."""
        active = self.active()
        if len(active) == 1:
            return active[0]
        if not active:
            raise UsageError("no active deployment; start one with 'glmdeploy up --profile P'")
        names = ", ".join(d.name for d in active)
        raise UsageError(f"{len(active)} active deployments ({names}); name the one you mean")


def open_state(path: Path | None = None) -> StateStore:
    """The one way commands open the store (``<home>/state.db`` unless a path is given)."""
    return StateStore.open(path)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL (persistent in the file), retrying: the switch ignores the busy handler.

    When several processes open a brand-new database at once, all but one get "database is
    locked" straight away instead of waiting, so wait here, bounded by the same busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            # A file system without WAL support answers with the mode it kept; that still works.
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _create_private(path: Path) -> None:
    """Create the database file owner-only before SQLite touches it, and tighten an existing one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, one named step at a time, under the write lock."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current == SCHEMA_VERSION:
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        # Read again under the lock: another process may have migrated meanwhile.
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise UsageError(
                f"state database {path} was written by a newer glmdeploy (schema {current}, "
                f"this version knows {SCHEMA_VERSION}); upgrade glmdeploy"
            )
        for version in range(current, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
