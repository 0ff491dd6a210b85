"""Issue 12: a replica group's replicas go on different machines and, where offers allow, different hosts.

The pure choice (``spread_over_hosts``) and the ``Deployer`` renting with it against a threaded sandbox
whose catalogue has two well-kept machines of one host per (GPU, count) bundle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from glmdeploy.market import search_ranked, spread_over_hosts
from glmdeploy.ranking import rank_offers
from glmdeploy.sandbox.process import SandboxConfig, SandboxInfo, ThreadedSandbox, serve_in_thread


@dataclass(frozen=True)
class FakeOffer:
    id: int
    dph_total: float
    host_id: int | None
    machine_id: int = 0
    reliability: float = 0.99
    inet_down: float = 2000.0
    gpu_name: str = "RTX 3090"
    num_gpus: int = 4


def _ranked(*offers: FakeOffer) -> list[Any]:
    return rank_offers(list(offers), weights_gb=62.4, max_price=2.0, reference_price=2.0)


def _ids(ranked: list[Any]) -> list[int]:
    return [r.offer.id for r in ranked]


def test_offers_on_new_hosts_come_first_in_rank_order() -> None:
    ranked = _ranked(FakeOffer(1, 0.5, host_id=7), FakeOffer(2, 0.6, host_id=7), FakeOffer(3, 0.9, host_id=8),
                     FakeOffer(4, 1.2, host_id=9))
    assert _ids(ranked) == [1, 2, 3, 4]
    # Host 7 runs a replica: its cheaper second machine goes after every other host's offer.
    assert _ids(spread_over_hosts(ranked, (7,))) == [3, 4, 1, 2]
    assert _ids(spread_over_hosts(ranked, (7, 8))) == [4, 1, 2, 3]
    # Nothing used yet: the ranking stands.
    assert _ids(spread_over_hosts(ranked, ())) == [1, 2, 3, 4]


def test_only_used_hosts_left_falls_back_to_them_in_rank_order() -> None:
    ranked = _ranked(FakeOffer(1, 0.5, host_id=7), FakeOffer(2, 0.6, host_id=8), FakeOffer(3, 0.9, host_id=7))
    assert _ids(spread_over_hosts(ranked, (7, 8))) == [1, 2, 3]  # nothing is dropped


def test_an_offer_without_a_host_counts_as_a_new_host() -> None:
    ranked = _ranked(FakeOffer(1, 0.5, host_id=7), FakeOffer(2, 0.6, host_id=None))
    assert _ids(spread_over_hosts(ranked, (7,))) == [2, 1]


# ---------------------------------------------------------------------------- through the Deployer


class Notes:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def phase(self, phase: Any, elapsed_s: float, **detail: Any) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)

    def offers(self, ranked: Any) -> None:
        pass

    def progress(self, **fields: Any) -> None:
        pass


@pytest.fixture
def box() -> Iterator[ThreadedSandbox]:
    with serve_in_thread(SandboxConfig(time_scale=0.001)) as sb:
        yield sb


def _connection(sb: ThreadedSandbox) -> Any:
    from glmdeploy.connect import _sandbox_connection

    port = int(sb.url.rsplit(":", 1)[1])
    return _sandbox_connection(SandboxInfo(url=sb.url, api_key=sb.api_key, pid=0, token=sb.world.token, port=port,
                                           seed=sb.world.seed, time_scale=sb.world.time_scale,
                                           started_at=time.time()))


def _rent(conn: Any, used_machines: tuple[int, ...], used_hosts: tuple[int, ...]) -> tuple[Any, list[str]]:
    from glmdeploy.deploy import Deployer, UpRequest
    from glmdeploy.profiles import load_profile
    from glmdeploy.state import StateStore

    events = Notes()
    with StateStore.open() as store:
        deployer = Deployer(client=conn.client, store=store, events=events, confirm=lambda _c: True,
                            pacing=conn.pacing)
        request = UpRequest(profile=load_profile("4x3090"), api_url=conn.api_url, ttl_s=3600.0 * 1000, smoke=False,
                            exclude_machines=used_machines, used_hosts=used_hosts)
        return deployer.up(request), events.notes


def _warnings(notes: list[str]) -> list[str]:
    return [n for n in notes if n.startswith("warning:")]


def test_a_replica_goes_to_another_host_and_falls_back_to_a_used_one_with_one_warning(box: ThreadedSandbox) -> None:
    from glmdeploy.profiles import load_profile

    conn = _connection(box)
    with conn.client:
        ranked = search_ranked(conn.client, load_profile("4x3090"))
        hosts = [r.offer.host_id for r in ranked]
        # The catalogue's premise: the two best offers are two machines of one host, a third host exists.
        assert len(ranked) == 3 and hosts[0] == hosts[1] != hosts[2], hosts
        first = ranked[0].offer

        second, notes = _rent(conn, (first.machine_id,), (first.host_id,))
        # Not the second-best offer (same host as the first replica): the best one on another host.
        assert second.machine_id == ranked[2].offer.machine_id
        assert (second.offer_snapshot or {})["host_id"] == hosts[2]
        assert _warnings(notes) == []

        # Every remaining offer is on a used host: the group still gets its replica, and says so once.
        third, notes = _rent(conn, (first.machine_id, second.machine_id), (first.host_id, hosts[2]))
        assert third.machine_id == ranked[1].offer.machine_id
        warnings = _warnings(notes)
        assert len(warnings) == 1 and f"host {first.host_id}" in warnings[0], notes
