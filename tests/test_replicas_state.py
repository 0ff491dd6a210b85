"""Replica groups in the state DB (migration 5), their labels, and the one-line missing-gateway error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glmdeploy.errors import UsageError
from glmdeploy.ownership import own_scopes, parse_label
from glmdeploy.profiles import load_profile
from glmdeploy.state import SCHEMA_VERSION, StateStore

GATEWAY_KEY = "gw-" + "9" * 40
REPLICA_KEY = "rk-" + "1" * 40


@pytest.fixture
def store() -> Iterator[StateStore]:
    with StateStore.open() as opened:
        yield opened


def _group(store: StateStore) -> Any:
    snapshot = load_profile("4x3090").model_dump(mode="json")
    group = store.create(profile="4x3090", profile_snapshot=snapshot, name="team", replicas_wanted=2)
    group = store.update(group.id, gateway_url="http://127.0.0.1:4000", gateway_pid=123, gateway_policy="round_robin",
                         gateway_api_key=GATEWAY_KEY, endpoint="http://127.0.0.1:4000/v1")
    replicas = [store.create(profile="4x3090", profile_snapshot=snapshot, parent=group, replica_index=i,
                             endpoint_api_key=REPLICA_KEY) for i in range(2)]
    return group, replicas


def test_schema_has_the_replica_migration() -> None:
    from glmdeploy.state import MIGRATIONS

    # Migration 5 adds the replica columns (6, the TLS pin, came after it).
    assert SCHEMA_VERSION >= 5
    assert "Replicas" in (MIGRATIONS[4].__doc__ or "")


def test_replicas_are_children_labelled_with_the_group_label_and_index(store: StateStore) -> None:
    group, replicas = _group(store)
    assert [r.name for r in replicas] == ["team-r0", "team-r1"]
    assert [r.label for r in replicas] == [group.label + "-r0", group.label + "-r1"]
    # Owner-scoped: a replica's label parses to the group's owner, which is this state dir's.
    for r in replicas:
        parts = parse_label(r.label)
        assert parts is not None and parts.owner == parse_label(group.label).owner  # type: ignore[union-attr]
        assert parts.owner in own_scopes(store.path.parent)
    assert [r.replica_index for r in store.replicas_of(group.id)] == [0, 1]
    # The group stands for its replicas where users name deployments.
    assert [d.name for d in store.active()] == ["team"]
    assert store.resolve_default().id == group.id
    assert len(store.list()) == 3


def test_group_key_is_the_gateway_key_and_never_dumped(store: StateStore) -> None:
    group, replicas = _group(store)
    group = store.get("team")
    assert group.is_group and group.endpoint_key() == GATEWAY_KEY
    assert replicas[0].endpoint_key() == REPLICA_KEY != GATEWAY_KEY
    dumped = group.model_dump_json() + str(group.public())
    assert GATEWAY_KEY not in dumped and "gateway_api_key" not in dumped


def test_reconcile_finds_a_crashed_replica_as_this_owners_orphan(store: StateStore) -> None:
    """A replica instance with no row (a lost state DB) is an orphan of this owner, not foreign."""
    from glmdeploy.lifecycle import reconcile
    from glmdeploy.vast.models import Instance

    group, _ = _group(store)
    label = group.label + "-r7"

    class Client:
        def list_instances(self, **_: Any) -> list[Instance]:
            return [Instance.model_validate({"id": 99, "label": label, "actual_status": "running"})]

    result = reconcile(store, Client(), api_url=group.api_url or "")  # type: ignore[arg-type]
    assert [o.instance_id for o in result.orphans] == [99] and result.foreign == []
    assert store.get("team").is_active  # the group row rents nothing itself: reconcile leaves it alone


def test_missing_smg_is_one_line_naming_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    from glmdeploy import gateway

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gateway.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(UsageError) as caught:
        gateway.smg_binary()
    assert "pip install 'glmdeploy[gateway]'" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_smg_from_the_cli_exits_2_before_renting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from glmdeploy import gateway
    from glmdeploy.cli import app

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gateway.sys, "executable", str(tmp_path / "python"))
    result = CliRunner().invoke(app, ["up", "--profile", "4x3090", "--replicas", "2", "--yes",
                                      "--api-key", "k", "--api-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "glmdeploy[gateway]" in result.output and "Traceback" not in result.output
    assert "error: --replicas needs the SMG gateway, which is not installed" in result.stderr.splitlines()[0]


@pytest.mark.parametrize("args", [("--replicas", "0"), ("--replicas", "-1")])
def test_ci_replicas_bad_input_exits_2_before_renting(args: tuple[str, ...]) -> None:
    from typer.testing import CliRunner

    from glmdeploy.cli import app

    # An API URL where nothing listens: reaching Vast would be exit 7, not 2.
    result = CliRunner().invoke(app, ["ci", "--profile", "4x3090", *args, "--api-key", "k",
                                      "--api-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_max_cost_counts_every_replica_still_billing_not_only_the_one_rented_last() -> None:
    from glmdeploy.deploy import CostLimitReached, Deployer, Pacing

    now = [7200.0]
    deployer: Any = Deployer(client=None, store=None, events=None, confirm=lambda _c: True,  # type: ignore[arg-type]
                             pacing=Pacing(), clock=lambda: now[0])
    deployer.max_cost = 3.0
    deployer.still_billing = [(1.0, 0.0)]  # replica 0: ready, $1/h for 2 h so far
    deployer.rented = (0.5, 3600.0)  # replica 1: loading, $0.5/h for 1 h
    assert deployer.accrued_cost() == pytest.approx(2.5)
    deployer.check_cost()  # $2.50 of $3: goes on (replica 1 alone would be $0.50)
    now[0] = 7200.0 + 1200.0  # 20 minutes later: $1.5/h x 1/3 h more = $3.00
    with pytest.raises(CostLimitReached) as caught:
        deployer.check_cost()
    assert "$1.500/h" in str(caught.value)


def test_ci_replicas_without_smg_exits_2_naming_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from glmdeploy import gateway
    from glmdeploy.cli import app

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gateway.sys, "executable", str(tmp_path / "python"))
    result = CliRunner().invoke(app, ["ci", "--profile", "4x3090", "--replicas", "2", "--api-key", "k",
                                      "--api-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "glmdeploy[gateway]" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("found", "allow_fewer", "expected"), [(3, False, 3), (5, False, 3), (2, True, 2),
                                                               (2, False, None), (0, True, None)])
def test_fewer_machines_than_replicas_is_exit_3_unless_allow_fewer(
        monkeypatch: pytest.MonkeyPatch, found: int, allow_fewer: bool, expected: int | None) -> None:
    from types import SimpleNamespace

    from glmdeploy import replicas
    from glmdeploy.errors import NoOfferError

    monkeypatch.setattr(replicas, "count_machines", lambda _client, _request: found)
    request: Any = SimpleNamespace(profile=SimpleNamespace(name="4x3090"))
    spec = replicas.GroupSpec(replicas=3, allow_fewer=allow_fewer)
    if expected is None:
        with pytest.raises(NoOfferError) as caught:
            replicas.check_offers(None, request, spec)  # type: ignore[arg-type]
        assert caught.value.exit_code == 3 and f"{found} matching offer(s)" in str(caught.value)
        assert "nothing was rented" in str(caught.value)
    else:
        assert replicas.check_offers(None, request, spec) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("errors", "ends"), [
    (["its TTL expired at X: the host watchdog destroyed it"] * 2, True),
    (["its TTL expired at X: the host watchdog destroyed it", "instance no longer exists on Vast.ai"], False),
    (["its TTL expired at X: the host watchdog destroyed it", None], False),  # replica 1 still runs
])
def test_a_group_ends_only_when_every_replica_ended_by_its_ttl(store: StateStore, errors: list[str | None],
                                                               ends: bool) -> None:
    from glmdeploy.replicas import end_if_expired, replica_views

    group, replicas = _group(store)
    group = store.update(group.id, gateway_url="http://127.0.0.1:9", gateway_pid=None)  # nothing listens there
    for replica, error in zip(replicas, errors, strict=True):
        if error is not None:
            store.mark_destroyed(replica.id, error=error)
    notes: list[str] = []
    after = end_if_expired(store, store.get(group.id), note=notes.append)
    assert after.is_active is not ends
    if ends:
        assert "TTL expired" in (after.error or "") and len(notes) == 1 and "gateway stopped" in notes[0]
        assert replica_views(store, after) == []  # retired: ended on purpose, not lost
    else:
        assert notes == [] and len(replica_views(store, after)) == 2
