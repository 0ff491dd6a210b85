"""reconcile sorts untracked labelled instances by the owner in their label: ours are orphans, the rest foreign."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import respx

from glmdeploy.lifecycle import reconcile
from glmdeploy.ownership import local_owner_id
from glmdeploy.profiles.loader import load_profile
from glmdeploy.state import StateStore
from glmdeploy.vast.client import VastClient
from vast.conftest import BASE


def row(instance_id: int, label: str) -> dict[str, Any]:
    return {"id": instance_id, "label": label, "actual_status": "running", "dph_total": 0.5,
            "start_date": 1_700_000_000.0, "machine_id": 7}


@pytest.fixture
def store() -> Any:
    with StateStore.open() as opened:
        yield opened


def test_untracked_instances_are_orphans_only_in_our_own_scopes(
    store: StateStore, client: VastClient, router: respx.Router
) -> None:
    mine = local_owner_id(store.path.parent)
    router.get("/api/v1/instances/").respond(200, json={"next_token": None, "instances": [
        row(1, f"glmdeploy:{mine}:aaaaaaaaaaaa"),       # ours, untracked: orphan
        row(2, f"glmdeploy:{mine}-ci:bbbbbbbbbbbb"),    # our CI scope, untracked: orphan
        row(3, "glmdeploy:0ther0wn:cccccccccccc"),       # a teammate's: foreign
        row(4, "glmdeploy:dddddddddddd"),                # the old form, nobody's here: foreign
        row(5, "someone-elses-job"),                     # not glmdeploy's at all: not even listed
    ]})
    found = reconcile(store, client, BASE)
    assert sorted(o.instance_id for o in found.orphans) == [1, 2]
    assert [(f.instance_id, f.owner, f.dph_total) for f in found.foreign] == [(3, "0ther0wn", 0.5), (4, None, 0.5)]


def test_a_record_with_the_old_label_form_is_still_tracked(
    store: StateStore, client: VastClient, router: respx.Router
) -> None:
    d = store.create(profile="h200", profile_snapshot=load_profile("h200").model_dump(mode="json"), api_url=BASE)
    old_label = f"glmdeploy:{d.id}"
    with sqlite3.connect(store.path) as raw:  # a row written by a glmdeploy from before owner labels
        raw.execute("UPDATE deployments SET label = ?, status = 'ready', instance_id = 9 WHERE id = ?",
                    (old_label, d.id))
    router.get("/api/v1/instances/").respond(200, json={"next_token": None, "instances": [row(9, old_label)]})
    found = reconcile(store, client, BASE)
    assert found.orphans == [] and found.foreign == []
    assert found.instances[old_label].id == 9


def test_glmdeploy_owner_is_the_only_own_scope_when_set(
    store: StateStore, client: VastClient, router: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLMDEPLOY_OWNER", "acme-ci")
    router.get("/api/v1/instances/").respond(200, json={"next_token": None, "instances": [
        row(1, "glmdeploy:acme-ci:aaaaaaaaaaaa"),
        row(2, "glmdeploy:acme:bbbbbbbbbbbb"),
    ]})
    found = reconcile(store, client, BASE)
    assert [o.instance_id for o in found.orphans] == [1]
    assert [f.instance_id for f in found.foreign] == [2]
