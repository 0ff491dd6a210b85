"""Offer ranking: the cap excludes, each axis is monotonic, and cheapest is not automatically best."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glmdeploy.ranking import estimated_download_minutes, rank_offers, score_offer
from glmdeploy.vast.models import Offer

WEIGHTS_GB = 62.4
REFERENCE = 1.0  # the profile's default cap: the cost term's scale, whatever the cap


@dataclass(frozen=True)
class FakeOffer:
    id: int
    dph_total: float | None
    reliability: float | None = 0.99
    inet_down: float | None = 1000.0
    machine_id: int | None = None
    gpu_name: str | None = "H200"
    num_gpus: int | None = 1


def test_download_minutes() -> None:
    # 60 GB at 800 Mbit/s: 60 * 8000 / 800 = 600 s = 10 min.
    assert estimated_download_minutes(60, 800) == pytest.approx(10.0)
    assert estimated_download_minutes(62.4, 1000) == pytest.approx(8.32)
    assert estimated_download_minutes(60, None) == math.inf
    assert estimated_download_minutes(60, 0) == math.inf
    assert estimated_download_minutes(60, -5) == math.inf


def test_offers_above_the_cap_are_excluded() -> None:
    offers = [FakeOffer(1, 1.01), FakeOffer(2, 1.00), FakeOffer(3, 0.50), FakeOffer(4, None)]
    ranked = rank_offers(offers, weights_gb=WEIGHTS_GB, max_price=1.0, reference_price=REFERENCE)
    assert [r.offer.id for r in ranked] == [3, 2]
    assert rank_offers(offers, weights_gb=WEIGHTS_GB, max_price=0.1, reference_price=REFERENCE) == []
    assert rank_offers([], weights_gb=WEIGHTS_GB, max_price=1.0, reference_price=REFERENCE) == []


@pytest.mark.parametrize("cap", [0.0, -1.0, math.inf, math.nan])
def test_a_cap_must_be_positive_and_finite(cap: float) -> None:
    with pytest.raises(ValueError, match="price cap"):
        rank_offers([FakeOffer(1, 0.5)], weights_gb=WEIGHTS_GB, max_price=cap, reference_price=REFERENCE)


def test_cheap_but_unreliable_slow_offer_loses_to_a_slightly_pricier_good_one() -> None:
    cheap_flaky = FakeOffer(1, dph_total=0.30, reliability=0.85, inet_down=100)  # 83 min download
    solid = FakeOffer(2, dph_total=0.40, reliability=0.99, inet_down=1000)  # 8 min download
    ranked = rank_offers([cheap_flaky, solid], weights_gb=WEIGHTS_GB, max_price=1.0, reference_price=REFERENCE)
    assert [r.offer.id for r in ranked] == [2, 1]
    best, worst = ranked
    assert best.score > worst.score + 20
    assert worst.download_minutes == pytest.approx(83.2)
    # The slow download is also money: 0.30 $/h over 83 min of download + 1 h of serving.
    assert worst.first_hour_cost == pytest.approx(0.30 * (1 + 83.2 / 60))


def test_all_else_equal_the_cheaper_offer_wins() -> None:
    ranked = rank_offers(
        [FakeOffer(1, 0.9), FakeOffer(2, 0.5), FakeOffer(3, 0.7)], weights_gb=WEIGHTS_GB, max_price=1.0,
        reference_price=REFERENCE,
    )
    assert [r.offer.id for r in ranked] == [2, 3, 1]


def test_missing_values_count_as_worst_case() -> None:
    known = score_offer(FakeOffer(1, 0.5, reliability=0.80, inet_down=1), weights_gb=WEIGHTS_GB, max_price=1.0,
                        reference_price=REFERENCE)
    unknown = score_offer(FakeOffer(2, 0.5, reliability=None, inet_down=None), weights_gb=WEIGHTS_GB, max_price=1.0,
                          reference_price=REFERENCE)
    assert known is not None and unknown is not None
    assert unknown.reliability is None and unknown.reliability_term == 0
    assert unknown.download_minutes == math.inf and unknown.network_term == 0
    assert unknown.score <= known.score
    assert 0 <= unknown.score <= 100


def test_reliability2_is_the_fallback() -> None:
    offer = Offer.model_validate({"id": 5, "dph_total": 0.5, "reliability2": 0.97, "inet_down": 500})
    scored = score_offer(offer, weights_gb=WEIGHTS_GB, max_price=1.0, reference_price=REFERENCE)
    assert scored is not None and scored.reliability == pytest.approx(0.97)


def test_accepts_vast_offer_models_with_nulls() -> None:
    offers = [
        Offer.model_validate({"id": 1, "dph_total": 0.8, "reliability": 0.995, "inet_down": 2000}),
        Offer.model_validate({"id": 2, "dph_total": 0.6}),
        Offer.model_validate({"id": 3}),
    ]
    ranked = rank_offers(offers, weights_gb=WEIGHTS_GB, max_price=1.0, reference_price=REFERENCE)
    assert [r.offer.id for r in ranked] == [1, 2]


def test_scores_are_bounded_and_ties_are_deterministic() -> None:
    twins = [FakeOffer(9, 0.5), FakeOffer(3, 0.5), FakeOffer(7, 0.5)]
    ranked = rank_offers(twins, weights_gb=WEIGHTS_GB, max_price=1.0, reference_price=REFERENCE)
    assert [r.offer.id for r in ranked] == [3, 7, 9]
    free_perfect = score_offer(FakeOffer(1, 0.0, 1.0, 1e9), weights_gb=WEIGHTS_GB, max_price=1.0,
                               reference_price=REFERENCE)
    assert free_perfect is not None and free_perfect.score == pytest.approx(100, abs=0.01)


prices = st.floats(min_value=0, max_value=2, allow_nan=False)
reliabilities = st.one_of(st.none(), st.floats(min_value=0, max_value=1, allow_nan=False))
speeds = st.one_of(st.none(), st.floats(min_value=0, max_value=20_000, allow_nan=False))
caps = st.floats(min_value=0.01, max_value=2, allow_nan=False)


def _score(offer: FakeOffer, cap: float) -> float | None:
    scored = score_offer(offer, weights_gb=WEIGHTS_GB, max_price=cap, reference_price=REFERENCE)
    return None if scored is None else scored.score


@given(prices, prices, reliabilities, speeds, caps)
def test_cheaper_never_scores_lower(p1: float, p2: float, rel: float | None, down: float | None, cap: float) -> None:
    cheap, dear = sorted((p1, p2))
    dear_score = _score(FakeOffer(1, dear, rel, down), cap)
    cheap_score = _score(FakeOffer(2, cheap, rel, down), cap)
    if dear_score is not None:
        assert cheap_score is not None and cheap_score >= dear_score


@given(prices, reliabilities, reliabilities, speeds, caps)
def test_more_reliable_never_scores_lower(
    price: float, r1: float | None, r2: float | None, down: float | None, cap: float
) -> None:
    low, high = sorted((r1, r2), key=lambda r: -1.0 if r is None else r)
    low_score = _score(FakeOffer(1, price, low, down), cap)
    high_score = _score(FakeOffer(2, price, high, down), cap)
    assert (low_score is None) == (high_score is None)
    if low_score is not None and high_score is not None:
        assert high_score >= low_score


@given(prices, reliabilities, speeds, speeds, caps)
def test_faster_download_never_scores_lower(
    price: float, rel: float | None, d1: float | None, d2: float | None, cap: float
) -> None:
    slow, fast = sorted((d1, d2), key=lambda d: -1.0 if d is None else d)
    slow_score = _score(FakeOffer(1, price, rel, slow), cap)
    fast_score = _score(FakeOffer(2, price, rel, fast), cap)
    if slow_score is not None and fast_score is not None:
        assert fast_score >= slow_score
        assert 0 <= slow_score <= fast_score <= 100


@given(st.lists(st.tuples(prices, reliabilities, speeds), max_size=12), caps)
def test_ranking_is_sorted_and_respects_the_cap(
    rows: list[tuple[float, float | None, float | None]], cap: float
) -> None:
    offers = [FakeOffer(i, p, r, d) for i, (p, r, d) in enumerate(rows)]
    ranked = rank_offers(offers, weights_gb=WEIGHTS_GB, max_price=cap, reference_price=REFERENCE)
    assert {r.offer.id for r in ranked} == {o.id for o in offers if o.dph_total is not None and o.dph_total <= cap}
    assert all(a.score >= b.score for a, b in itertools.pairwise(ranked))


def test_better_on_one_axis_equal_elsewhere_concrete() -> None:
    base = FakeOffer(1, 0.6, 0.95, 500)
    for better in (replace(base, id=2, dph_total=0.55), replace(base, id=2, reliability=0.98),
                   replace(base, id=2, inet_down=900)):
        ranked = rank_offers([base, better], weights_gb=WEIGHTS_GB, max_price=1.0, reference_price=REFERENCE)
        assert ranked[0].offer.id == 2
        assert ranked[0].score > ranked[1].score


@given(st.lists(st.tuples(prices, reliabilities, speeds), max_size=12), caps, caps)
def test_a_cap_filters_and_never_reorders(
    rows: list[tuple[float, float | None, float | None]], cap_a: float, cap_b: float
) -> None:
    low, high = sorted((cap_a, cap_b))
    offers = [FakeOffer(i, p, r, d) for i, (p, r, d) in enumerate(rows)]
    under_low = [r.offer.id for r in rank_offers(offers, weights_gb=WEIGHTS_GB, max_price=low,
                                                 reference_price=REFERENCE)]
    under_high = [r.offer.id for r in rank_offers(offers, weights_gb=WEIGHTS_GB, max_price=high,
                                                  reference_price=REFERENCE)]
    assert [i for i in under_high if i in under_low] == under_low


def test_raising_the_cap_does_not_put_a_dearer_offer_first() -> None:
    # Under the old cost term C / (C + cost), a higher cap flattened the price difference until the
    # dearer, more reliable offer overtook: cheap first at a $1/h cap, dear first at $10/h.
    cheap = FakeOffer(1, dph_total=0.50, reliability=0.96, inet_down=1000)
    dear = FakeOffer(2, dph_total=0.90, reliability=1.00, inet_down=1000)
    orders = {
        cap: [r.offer.id for r in rank_offers([cheap, dear], weights_gb=WEIGHTS_GB, max_price=cap,
                                             reference_price=REFERENCE)]
        for cap in (1.0, 2.0, 10.0, 100.0)
    }
    assert set(map(tuple, orders.values())) == {(1, 2)}
