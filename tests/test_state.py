"""The local deployment store: round trips, secrets, file modes, names, schema versions, concurrency."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from glmdeploy.errors import EXIT_USAGE, UsageError
from glmdeploy.profiles.loader import load_profile
from glmdeploy.state import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Deployment,
    DeploymentReleased,
    StateStore,
    generate_name,
    validate_name,
)

SECRET = "sk-endpoint-0123456789abcdef"


@pytest.fixture
def snapshot() -> dict[str, Any]:
    return load_profile("h200").model_dump(mode="json")


@pytest.fixture
def store() -> Iterator[StateStore]:
    with StateStore.open() as opened:
        yield opened


def test_round_trip_keeps_every_field(store: StateStore, snapshot: dict[str, Any]) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    created = store.create(
        profile="h200",
        profile_snapshot=snapshot,
        api_url="http://127.0.0.1:1234",
        expires_at=expires,
        endpoint_api_key=SECRET,
        model="glm-4.7-flash",
    )
    assert created.status == "creating"
    assert len(created.id) == 12 and int(created.id, 16) >= 0
    owner = (store.path.parent / "owner-id").read_text().strip()
    assert created.label == f"glmdeploy:{owner}:{created.id}"
    assert created.name.startswith("glm-h200-")
    assert created.name != created.id

    offer = {"id": 991, "gpu_name": "H200", "dph_total": 2.5}
    store.update(
        created.name,
        offer_id=991,
        offer_snapshot=offer,
        instance_id=123456,
        machine_id=777,
        dph_total=2.5,
        status="ready",
        phase="smoke",
        endpoint="http://127.0.0.1:40001/v1",
        ready_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    with StateStore.open() as reopened:
        again = reopened.get(created.name)
    assert again.offer_snapshot == offer
    assert again.profile_snapshot == snapshot
    assert again.instance_id == 123456 and again.machine_id == 777 and again.offer_id == 991
    assert again.status == "ready" and again.phase == "smoke"
    assert again.endpoint == "http://127.0.0.1:40001/v1"
    assert again.expires_at == expires
    assert again.ready_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert again.api_url == "http://127.0.0.1:1234"
    assert again.updated_at >= again.created_at
    assert again.endpoint_key() == SECRET
    assert again.owner_pid == os.getpid()
    assert store.get(created.id) == again
    assert store.find_by_label(created.label) == again
    assert store.find_by_instance(123456) == again
    assert store.find_by_instance(123456, api_url="https://console.vast.ai") is None
    assert store.find_by_label("glmdeploy:000000000000") is None


def test_secret_never_in_dumps_or_repr(store: StateStore, snapshot: dict[str, Any]) -> None:
    created = store.create(profile="h200", profile_snapshot=snapshot, endpoint_api_key=SECRET)
    loaded = store.get(created.name)
    for deployment in (created, loaded):
        views = [
            deployment.model_dump_json(),
            json.dumps(deployment.model_dump(mode="json")),
            str(deployment.model_dump()),
            json.dumps(deployment.public()),
            json.dumps(deployment.public(snapshots=True)),
            repr(deployment),
            str(deployment),
        ]
        for view in views:
            assert SECRET not in view
            assert "endpoint_api_key" not in view
        assert deployment.endpoint_key() == SECRET
    public = loaded.public()
    for field in ("name", "profile", "instance_id", "status", "endpoint", "model", "dph_total",
                  "created_at", "machine_id"):
        assert field in public
    assert "profile_snapshot" not in public
    assert loaded.public(snapshots=True)["profile_snapshot"] == snapshot


def test_file_modes_are_owner_only(isolated_env: Path, snapshot: dict[str, Any]) -> None:
    old = os.umask(0o022)
    try:
        with StateStore.open() as store:
            store.create(profile="h200", profile_snapshot=snapshot, endpoint_api_key=SECRET)
            db = store.path
            assert db.parent == isolated_env
            assert stat.S_IMODE(isolated_env.stat().st_mode) == 0o700
            assert stat.S_IMODE(db.stat().st_mode) == 0o600
            # SQLite creates its WAL sidecars with the database file's mode.
            for sidecar in (Path(f"{db}-wal"), Path(f"{db}-shm")):
                assert sidecar.exists()
                assert stat.S_IMODE(sidecar.stat().st_mode) & 0o077 == 0
    finally:
        os.umask(old)


def test_existing_loose_file_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "loose.db"
    db.touch()
    db.chmod(0o644)
    StateStore.open(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_wal_mode_is_used(store: StateStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_names_unique_among_active_and_reusable_after_destroy(
    store: StateStore, snapshot: dict[str, Any]
) -> None:
    first = store.create(profile="h200", profile_snapshot=snapshot, name="my-glm")
    with pytest.raises(UsageError, match="a deployment named 'my-glm' already exists") as info:
        store.create(profile="h200", profile_snapshot=snapshot, name="my-glm")
    assert info.value.exit_code == EXIT_USAGE

    # A failed deployment kept with --keep-on-failure still holds an instance: still active.
    store.update("my-glm", status="failed", error="engine crashed")
    with pytest.raises(UsageError, match="already exists"):
        store.create(profile="h200", profile_snapshot=snapshot, name="my-glm")

    gone = store.mark_destroyed("my-glm")
    assert gone.status == "destroyed" and gone.destroyed_at is not None and not gone.is_active
    second = store.create(profile="h200", profile_snapshot=snapshot, name="my-glm")
    assert second.id != first.id
    # The name now means the active one; the destroyed one stays reachable by id and in --all.
    assert store.get("my-glm").id == second.id
    assert store.get(first.id).status == "destroyed"
    assert [d.id for d in store.list()] == [second.id]
    assert [d.id for d in store.list(include_destroyed=True)] == [first.id, second.id]


def test_failed_and_torn_down_is_not_active(store: StateStore, snapshot: dict[str, Any]) -> None:
    created = store.create(profile="h200", profile_snapshot=snapshot, name="flaky")
    ended = store.mark_destroyed("flaky", status="failed", error="never ready", phase="waiting")
    assert ended.status == "failed" and ended.error == "never ready" and ended.phase == "waiting"
    assert store.active() == []
    assert store.create(profile="h200", profile_snapshot=snapshot, name="flaky").id != created.id


def test_rename_into_an_active_name_is_refused(store: StateStore, snapshot: dict[str, Any]) -> None:
    store.create(profile="h200", profile_snapshot=snapshot, name="one")
    store.create(profile="h200", profile_snapshot=snapshot, name="two")
    with pytest.raises(UsageError, match="'one' already exists"):
        store.update("two", name="one")


@pytest.mark.parametrize("bad", ["", "UPPER", "has space", "-lead", "trail-", "under_score", "x" * 49, "dot.ted"])
def test_invalid_names_are_usage_errors(store: StateStore, snapshot: dict[str, Any], bad: str) -> None:
    with pytest.raises(UsageError, match="invalid deployment name") as info:
        store.create(profile="h200", profile_snapshot=snapshot, name=bad)
    assert info.value.exit_code == EXIT_USAGE
    assert store.list(include_destroyed=True) == []


def test_generated_names_follow_the_rules() -> None:
    for profile in ("h200", "4xh200-glm47-fp8-mtp", "weird.profile_name", "a" * 80):
        name = generate_name(profile)
        assert validate_name(name) == name
        assert name.startswith("glm-")
        assert len(name.rsplit("-", 1)[1]) == 4
    assert generate_name("2x5090").startswith("glm-2x5090-")


def test_generated_name_collision_draws_again(
    store: StateStore, snapshot: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = iter(["glm-h200-aaaa", "glm-h200-aaaa", "glm-h200-bbbb"])
    monkeypatch.setattr("glmdeploy.state.generate_name", lambda profile: next(drawn))
    assert store.create(profile="h200", profile_snapshot=snapshot).name == "glm-h200-aaaa"
    assert store.create(profile="h200", profile_snapshot=snapshot).name == "glm-h200-bbbb"


def test_mark_destroyed_is_idempotent(store: StateStore, snapshot: dict[str, Any]) -> None:
    store.create(profile="h200", profile_snapshot=snapshot, name="twice")
    first = store.mark_destroyed("twice")
    second = store.mark_destroyed("twice", status="failed", error="late cleanup")
    assert second.destroyed_at == first.destroyed_at
    assert second.status == "destroyed" and second.error is None


def test_late_status_change_does_not_revive_a_destroyed_deployment(
    store: StateStore, snapshot: dict[str, Any]
) -> None:
    store.create(profile="h200", profile_snapshot=snapshot, name="raced")
    store.update("raced", status="loading", instance_id=5)
    # Another terminal ran 'glmdeploy destroy raced'; then 'up' reports ready.
    store.mark_destroyed("raced")
    with pytest.raises(DeploymentReleased, match="'raced' was destroyed meanwhile"):
        store.update("raced", status="ready", endpoint="http://127.0.0.1:1/v1")
    after = store.get("raced")
    assert after.status == "destroyed" and after.endpoint is None and not after.is_active
    # Non-status facts may still be recorded, and a terminal status is allowed.
    assert store.update("raced", error="destroyed by the user").error == "destroyed by the user"
    # Reviving on purpose (an orphan found still running) says so with destroyed_at=None.
    revived = store.update("raced", status="orphaned", destroyed_at=None)
    assert revived.is_active and store.resolve_default().id == revived.id


def test_unknown_name_lists_known_ones(store: StateStore, snapshot: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="unknown deployment 'nope'; there are no active deployments"):
        store.get("nope")
    store.create(profile="h200", profile_snapshot=snapshot, name="alpha")
    store.create(profile="h200", profile_snapshot=snapshot, name="beta")
    with pytest.raises(UsageError, match="unknown deployment 'nope'; known: alpha, beta"):
        store.get("nope")


def test_resolve_default(store: StateStore, snapshot: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="no active deployment"):
        store.resolve_default()
    only = store.create(profile="h200", profile_snapshot=snapshot, name="only")
    assert store.resolve_default().id == only.id
    assert store.resolve(None).id == only.id
    store.create(profile="h200", profile_snapshot=snapshot, name="other")
    with pytest.raises(UsageError, match=r"2 active deployments \(only, other\)"):
        store.resolve_default()
    store.mark_destroyed("other")
    assert store.resolve_default().id == only.id


def test_update_rejects_unknown_fields_and_statuses(store: StateStore, snapshot: dict[str, Any]) -> None:
    store.create(profile="h200", profile_snapshot=snapshot, name="strict")
    with pytest.raises(ValueError, match="cannot update"):
        store.update("strict", label="glmdeploy:forged")
    with pytest.raises(ValueError, match="unknown status"):
        store.update("strict", status="running")
    with pytest.raises(ValueError, match="timezone-aware"):
        store.update("strict", ready_at=datetime(2030, 1, 1))
    assert store.get("strict").status == "creating"


def test_timestamps_are_utc(store: StateStore, snapshot: dict[str, Any]) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    created = store.create(profile="h200", profile_snapshot=snapshot)
    assert created.created_at.tzinfo is not None
    assert created.created_at.utcoffset() == timedelta(0)
    assert created.created_at >= before
    assert json.loads(created.model_dump_json())["created_at"].endswith(("Z", "+00:00"))


def test_blank_database_gets_current_schema(tmp_path: Path) -> None:
    db = tmp_path / "blank.db"
    StateStore.open(db).close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {row[1] for row in conn.execute("PRAGMA table_info(deployments)")}
    finally:
        conn.close()
    assert set(Deployment.model_fields) <= columns


@pytest.mark.parametrize("start", range(1, SCHEMA_VERSION))
def test_upgrade_from_an_older_schema_keeps_rows(tmp_path: Path, snapshot: dict[str, Any], start: int) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for migration in MIGRATIONS[:start]:
        migration(conn)
    conn.execute(f"PRAGMA user_version = {start}")
    conn.execute(
        "INSERT INTO deployments (id, name, profile, profile_snapshot, status, created_at, updated_at, label,"
        " instance_id, endpoint_api_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ("abcdef012345", "legacy", "h200", json.dumps(snapshot), "ready", "2026-01-01T00:00:00+00:00",
         "2026-01-01T00:00:00+00:00", "glmdeploy:abcdef012345", 42, SECRET),
    )
    conn.commit()
    conn.close()

    with StateStore.open(db) as store:
        legacy = store.get("legacy")
        assert legacy.instance_id == 42 and legacy.status == "ready"
        assert legacy.expires_at is None and legacy.api_url is None and legacy.owner_pid is None
        assert legacy.endpoint_key() == SECRET
        updated = store.update("legacy", api_url="https://console.vast.ai", owner_pid=4242)
        assert updated.api_url == "https://console.vast.ai" and updated.owner_pid == 4242
        # Migration 4: the planner's KV pool next to the engine's own figure.
        assert legacy.kv_tokens_planned is None and legacy.kv_tokens_reported is None
        calibrated = store.update(
            "legacy", kv_tokens_planned=1_332_512, kv_tokens_planned_low=1_311_488,
            kv_tokens_planned_high=1_361_360, kv_tokens_reported=1_332_528,
        )
        assert (calibrated.kv_tokens_planned, calibrated.kv_tokens_reported) == (1_332_512, 1_332_528)
        assert store.get("legacy").public()["kv_tokens_planned_low"] == 1_311_488
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    conn.close()
    with pytest.raises(UsageError) as info:
        StateStore.open(db)
    message = str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    assert "written by a newer glmdeploy" in message
    assert f"schema {SCHEMA_VERSION + 3}, this version knows {SCHEMA_VERSION}" in message
    assert "upgrade glmdeploy" in message
    assert str(db) in message


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(b"this is not a database, just text that happens to be long enough" * 20)
    with pytest.raises(UsageError, match=r"state database .*garbage\.db is unreadable") as info:
        StateStore.open(db)
    assert info.value.exit_code == EXIT_USAGE


_WORKER = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path
    from glmdeploy.errors import UsageError
    from glmdeploy.state import StateStore

    path, worker = Path(sys.argv[1]), sys.argv[2]
    # Start together, so the three really compete for the database (first open included).
    (path.parent / f"ready-{worker}").touch()
    deadline = time.monotonic() + 60
    while not (path.parent / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.005)
    store = StateStore.open(path)
    names = []
    for i in range(20):
        d = store.create(profile="h200", profile_snapshot={"worker": worker, "i": i},
                         name=f"w{worker}-{i}", endpoint_api_key=f"key-{worker}-{i}")
        names.append(d.name)
        store.update(d.name, status="starting", phase="create", instance_id=int(worker) * 1000 + i)
    for name in names:
        store.update(name, status="ready", phase="ready", endpoint=f"http://127.0.0.1:1/{name}/v1")
    won = 0
    try:
        store.create(profile="h200", profile_snapshot={}, name="contested")
        won = 1
    except UsageError:
        pass
    store.close()
    print(f"won={won}")
    """
)


def test_concurrent_processes_share_one_database(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "state.db"
    db.parent.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(db), str(worker)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in (1, 2, 3)
    ]
    deadline = time.monotonic() + 60
    while len(list(db.parent.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    (db.parent / "go").touch()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err
    assert sum(int(out.strip().split("=")[1]) for out, _ in outputs) == 1

    with StateStore.open(db) as store:
        rows = [d for d in store.list(include_destroyed=True) if d.name != "contested"]
        assert len(rows) == 60
        for d in rows:
            worker, index = d.name[1:].split("-")
            assert d.status == "ready" and d.phase == "ready"
            assert d.instance_id == int(worker) * 1000 + int(index)
            assert d.profile_snapshot == {"worker": worker, "i": int(index)}
            assert d.endpoint == f"http://127.0.0.1:1/{d.name}/v1"
            assert d.endpoint_key() == f"key-{worker}-{index}"
        assert len({d.id for d in rows}) == 60
        assert store.get("contested").status == "creating"


def test_each_state_dir_has_one_stable_private_owner_id(tmp_path: Path, snapshot: dict[str, Any]) -> None:
    with StateStore.open(tmp_path / "a" / "state.db") as a1:
        first = a1.create(profile="h200", profile_snapshot=snapshot)
    with StateStore.open(tmp_path / "a" / "state.db") as a2:
        second = a2.create(profile="h200", profile_snapshot=snapshot)
    with StateStore.open(tmp_path / "b" / "state.db") as b:
        other = b.create(profile="h200", profile_snapshot=snapshot)
    owner_file = tmp_path / "a" / "owner-id"
    owner = owner_file.read_text().strip()
    assert stat.S_IMODE(owner_file.stat().st_mode) == 0o600
    assert first.label.split(":")[1] == second.label.split(":")[1] == owner
    assert other.label.split(":")[1] != owner


def test_glmdeploy_owner_sets_the_scope_and_is_validated(
    store: StateStore, snapshot: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLMDEPLOY_OWNER", "acme-ci")
    assert store.create(profile="h200", profile_snapshot=snapshot).label.startswith("glmdeploy:acme-ci:")
    monkeypatch.setenv("GLMDEPLOY_OWNER", "a:b")
    with pytest.raises(UsageError, match="GLMDEPLOY_OWNER"):
        store.create(profile="h200", profile_snapshot=snapshot)


def test_labels_parse_in_the_new_and_the_old_form() -> None:
    from glmdeploy.ownership import LabelParts, parse_label

    assert parse_label("glmdeploy:ab12cd34-ci:0123456789ab") == LabelParts("ab12cd34-ci", "0123456789ab")
    assert parse_label("glmdeploy:0123456789ab") == LabelParts(None, "0123456789ab")
    assert parse_label("someone-else") is None and parse_label(None) is None


class _SignalRightAfterBegin:
    """The store's connection, with a signal whose handler raises the moment BEGIN IMMEDIATE returns.

    CPython runs a Python signal handler at the first check after the C call that was running when the
    signal came, and raises its exception there: a Ctrl-C or SIGHUP that lands while SQLite takes the
    write lock surfaces at the ``execute("BEGIN IMMEDIATE")`` call site itself, with the transaction open.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.armed = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, *args)
        if self.armed and sql.startswith("BEGIN"):
            self.armed = False
            raise KeyboardInterrupt
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_signal_as_the_write_lock_is_taken_leaves_no_transaction_open(
    store: StateStore, snapshot: dict[str, Any]
) -> None:
    """The teardown after a signal writes to the same store: it must find it usable (a SIGHUP during
    `up` once ended in "internal error", exit 1, instead of destroying and exiting 129)."""
    created = store.create(profile="h200", profile_snapshot=snapshot, endpoint_api_key=SECRET)
    real = store._conn
    store._conn = _SignalRightAfterBegin(real)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        store.update(created.id, status="loading")
    store._conn = real
    assert not real.in_transaction
    assert store.get(created.id).status == "creating"  # the interrupted write did not happen
    store.update(created.id, status="destroying")  # before the fix: "cannot start a transaction within a transaction"
    with StateStore.open(store.path) as other:  # and no other process waits on a lock left behind
        other.update(created.id, status="failed")
    assert store.get(created.id).status == "failed"


def _line_events(call: Callable[[], object]) -> int:
    seen = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal seen
        if event == "line":
            seen += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return seen


def _interrupt_at_line(call: Callable[[], object], k: int) -> bool:
    """Run ``call`` with SIGUSR1 (whose handler raises KeyboardInterrupt, as SIGINT's does) delivered at
    its ``k``-th line event, in whatever frame that is (this module's, glmdeploy's, contextlib's).
    True if the interrupt surfaced."""
    seen = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal seen
        if event == "line":
            seen += 1
            if seen == k:
                sys.settrace(None)
                signal.raise_signal(signal.SIGUSR1)
                return None
        return tracer

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    sys.settrace(tracer)
    try:
        call()
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
        signal.signal(signal.SIGUSR1, previous)
    return False


@pytest.mark.parametrize("write", ["update", "mark_destroyed"])
def test_a_signal_at_any_line_of_a_write_leaves_the_store_usable(
    store: StateStore, snapshot: dict[str, Any], write: str
) -> None:
    """A signal's exception can land on any line of a write. Whatever line: the write happened or it
    did not (never half), this process's next write works, and no other process is left waiting on the
    database's write lock (SQLite's busy timeout would make it fail after 10 s)."""
    created = store.create(profile="h200", profile_snapshot=snapshot, endpoint_api_key=SECRET)

    def change() -> None:
        if write == "update":
            store.update(created.id, status="loading", error="probe")
        else:
            store.mark_destroyed(created.id, status="failed", error="probe")

    def reset() -> None:
        store.update(created.id, status="creating", error=None, destroyed_at=None)

    lines = _line_events(change)
    assert lines > 20  # the sweep below covers the store's own lines, not just the call
    interrupted = 0
    with StateStore.open(store.path) as other:
        for k in range(1, lines + 1):
            reset()
            interrupted += _interrupt_at_line(change, k)
            seen = other.get(created.id)
            assert (seen.status, seen.error) in {("creating", None), (store.get(created.id).status, "probe")}, k
            assert store.get(created.id) == seen, k  # this process reads what was committed
            other.update(created.id, error="other process")  # the write lock is free
            store.update(created.id, error="this process")  # and this process's next write works
    assert interrupted >= lines - 2  # nearly every line: the sweep really interrupted the write
