"""Which Vast.ai offer to rent: a score that weighs price against reliability and download time.

Pure functions, no I/O. Vast's own default order (``score``) and "cheapest first" both ignore
that the weights (~60 GB for GLM-4.7-Flash BF16) must be downloaded at the host's speed while the
meter runs, and that an unreliable host costs a failed attempt. The formula, for an offer at
``dph_total`` = *p* $/h, reliability *r* (0-1), download speed *d* Mbit/s, and the reference price
*S* $/h:

    minutes          = weights_gb * 8000 / d / 60            (∞ when d is unknown or 0)
    first_hour_cost  = p * (1 + minutes / 60)                 ($: download the weights, then serve 1 h)
    cost_term        = S / (S + first_hour_cost)              (1 when free, ½ at one reference hour's worth)
    reliability_term = clamp((r - 0.80) / 0.20, 0, 1)         (0 at r ≤ 0.80, 1 at r = 1)
    network_term     = 10 / (10 + minutes)                    (½ for a 10-minute download)

    score = 100 * (0.50 * cost_term + 0.30 * reliability_term + 0.20 * network_term)

*S* is the profile's own default cap (``hardware.max_price``): what an hour of that hardware is
expected to cost, fixed for the profile. It is deliberately not the ``--max-price`` the user gives:
a cap only filters. With *S* = *C*, raising the cap shrank the cost term's spread, so a dearer but
more reliable offer could overtake one that ranked above it under the lower cap (issue 10).

Offers above the cap (or without a price) are excluded, not penalised. Missing values count as
the worst case: no reliability → 0, no download speed → an endless download. Each term only
improves when its input does (lower price, higher reliability, faster download) and the weights
are positive, so an offer that is better on one axis and equal on the others never scores lower.
Reliability is scored from 0.80 up because the search already asks for the profile's
``min_reliability`` (0.95 by default): across the 0.9-1.0 band that remains, a plain ``r`` would
barely separate a flaky host from a solid one.

Ties are broken by lower price, then lower offer id, so the order is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Hardware

__all__ = [
    "COST_WEIGHT",
    "MAX_PRICE_CAP",
    "NETWORK_WEIGHT",
    "RELIABILITY_WEIGHT",
    "OfferLike",
    "OfferSummary",
    "RankedOffer",
    "estimated_download_minutes",
    "matches_hardware",
    "offer_reliability",
    "rank_offers",
    "score_offer",
]

COST_WEIGHT = 0.50
RELIABILITY_WEIGHT = 0.30
NETWORK_WEIGHT = 0.20
RELIABILITY_FLOOR = 0.80
NETWORK_HALF_MINUTES = 10.0
SERVING_HOURS = 1.0
MEGABITS_PER_GB = 8000.0  # 1 GB = 10^9 bytes = 8000 Mbit
# The highest cap accepted, $/h for the whole instance: Vast.ai takes hourly bids of 0.001-128 $/h per
# machine (shared/reference/vast-api.md, create instance, `price`). A cap above it filters nothing.
MAX_PRICE_CAP = 128.0


class OfferLike(Protocol):
    """What ranking reads from an offer (``glmdeploy.vast.models.Offer`` fits).

    Only ``id`` and ``dph_total`` are required; ``reliability``/``reliability2`` and ``inet_down``
    are read when present.
    """

    @property
    def id(self) -> int: ...

    @property
    def dph_total(self) -> float | None: ...


@dataclass(frozen=True)
class RankedOffer:
    """An offer with its score and the figures the score came from."""

    offer: OfferLike
    score: float
    reliability: float | None
    download_minutes: float
    first_hour_cost: float
    cost_term: float
    reliability_term: float
    network_term: float


def estimated_download_minutes(weights_gb: float, inet_down: float | None) -> float:
    """Minutes to download ``weights_gb`` GB at ``inet_down`` Mbit/s; ∞ when the speed is unknown or 0."""
    if inet_down is None or not math.isfinite(inet_down) or inet_down <= 0:
        return math.inf
    return max(weights_gb, 0.0) * MEGABITS_PER_GB / inet_down / 60.0


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def offer_reliability(offer: object) -> float | None:
    """``reliability``, else ``reliability2``, clamped to 0-1; None when neither is known."""
    for field in ("reliability", "reliability2"):
        value = _number(getattr(offer, field, None))
        if value is not None:
            return min(max(value, 0.0), 1.0)
    return None


def score_offer(
    offer: OfferLike, *, weights_gb: float, max_price: float, reference_price: float
) -> RankedOffer | None:
    """The offer's score, or None when it is above the cap or has no price.

    ``max_price`` only decides whether the offer is scored; ``reference_price`` (the profile's default
    cap) is the scale of the cost term, so the score does not depend on the cap.
    """
    _check_cap(max_price)
    _check_cap(reference_price)
    price = _number(offer.dph_total)
    if price is None or price < 0 or price > max_price:
        return None
    reliability = offer_reliability(offer)
    minutes = estimated_download_minutes(weights_gb, _number(getattr(offer, "inet_down", None)))

    first_hour_cost = price * (SERVING_HOURS + minutes / 60.0) if price > 0 else 0.0
    cost_term = reference_price / (reference_price + first_hour_cost)
    if reliability is None:
        reliability_term = 0.0
    else:
        reliability_term = min(max((reliability - RELIABILITY_FLOOR) / (1.0 - RELIABILITY_FLOOR), 0.0), 1.0)
    network_term = NETWORK_HALF_MINUTES / (NETWORK_HALF_MINUTES + minutes)

    score = 100.0 * (
        COST_WEIGHT * cost_term + RELIABILITY_WEIGHT * reliability_term + NETWORK_WEIGHT * network_term
    )
    return RankedOffer(
        offer=offer,
        score=score,
        reliability=reliability,
        download_minutes=minutes,
        first_hour_cost=first_hour_cost,
        cost_term=cost_term,
        reliability_term=reliability_term,
        network_term=network_term,
    )


def _check_cap(max_price: float) -> None:
    if not (max_price > 0 and math.isfinite(max_price)):
        raise ValueError(f"the price cap must be a positive, finite $/h, got {max_price!r}")


def rank_offers(
    offers: Iterable[OfferLike], *, weights_gb: float, max_price: float, reference_price: float
) -> list[RankedOffer]:
    """Offers at or under ``max_price`` $/h, best score first (see the module docstring)."""
    _check_cap(max_price)
    ranked = [
        scored
        for offer in offers
        if (
            scored := score_offer(
                offer, weights_gb=weights_gb, max_price=max_price, reference_price=reference_price
            )
        )
        is not None
    ]
    ranked.sort(key=lambda r: (-r.score, _number(r.offer.dph_total) or 0.0, r.offer.id))
    return ranked


def matches_hardware(offer: object, hardware: Hardware) -> bool:
    """Whether the offer really has the profile's GPUs, whatever the server's filtering did.

    Guards against a search that silently drops a filter and offers the wrong card or count.
    """
    return getattr(offer, "gpu_name", None) in hardware.gpu_names and getattr(offer, "num_gpus", None) == (
        hardware.num_gpus
    )


class OfferSummary(BaseModel):
    """One ranked offer as ``glmdeploy offers --json`` prints it (and ``up`` records it)."""

    model_config = ConfigDict(frozen=True)

    id: int
    machine_id: int | None
    gpu_name: str | None
    num_gpus: int | None
    dph_total: float | None
    reliability: float | None
    inet_down: float | None
    score: float
    download_minutes: float | None  # None when the download speed is unknown
    first_hour_cost: float | None
    cuda_max_good: float | None
    geolocation: str | None
    direct_port_count: int | None
    verification: str | None

    @classmethod
    def from_ranked(cls, ranked: RankedOffer) -> OfferSummary:
        offer = ranked.offer
        return cls(
            id=offer.id,
            machine_id=_integer(getattr(offer, "machine_id", None)),
            gpu_name=_text(getattr(offer, "gpu_name", None)),
            num_gpus=_integer(getattr(offer, "num_gpus", None)),
            dph_total=_number(offer.dph_total),
            reliability=ranked.reliability,
            inet_down=_number(getattr(offer, "inet_down", None)),
            score=round(ranked.score, 2),
            download_minutes=round(ranked.download_minutes, 1) if math.isfinite(ranked.download_minutes) else None,
            first_hour_cost=round(ranked.first_hour_cost, 4) if math.isfinite(ranked.first_hour_cost) else None,
            cuda_max_good=_number(getattr(offer, "cuda_max_good", None)),
            geolocation=_text(getattr(offer, "geolocation", None)),
            direct_port_count=_integer(getattr(offer, "direct_port_count", None)),
            verification=_text(getattr(offer, "verification", None)),
        )


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
