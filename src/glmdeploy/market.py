"""Finding the offers that can run a profile, best first (search on Vast, then ``ranking``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile
    from glmdeploy.ranking import RankedOffer
    from glmdeploy.vast.client import VastClient

# Vast returns the cheapest matches first (filters.offer_query orders by dph_total), so ask for
# more than are shown: the best-scored offer is often not among the very cheapest.
MIN_SEARCH_LIMIT = 64
SEARCH_LIMIT_FACTOR = 4
MAX_SEARCH_LIMIT = 1000


def search_ranked(
    client: VastClient,
    profile: Profile,
    *,
    max_price: float | None = None,
    limit: int = MIN_SEARCH_LIMIT,
    exclude_machines: tuple[int, ...] = (),
) -> list[RankedOffer]:
    """Search Vast for the profile's hardware under the cap and rank what comes back, best first.

    Offers whose GPU or GPU count differ from the profile are dropped even if the server sent them,
    and so are machines in ``exclude_machines`` (hosts that just failed a deployment).
    """
    from glmdeploy.ranking import matches_hardware, rank_offers
    from glmdeploy.vast.filters import offer_query

    cap = profile.hardware.max_price if max_price is None else max_price
    search_limit = min(MAX_SEARCH_LIMIT, max(MIN_SEARCH_LIMIT, limit * SEARCH_LIMIT_FACTOR))
    query = offer_query(profile.hardware, max_price=cap, limit=search_limit, exclude_machines=exclude_machines)
    found = [o for o in client.search_offers(query) if matches_hardware(o, profile.hardware)]
    if exclude_machines:
        found = [o for o in found if o.machine_id not in exclude_machines]
    return rank_offers(
        found, weights_gb=profile.model.weights_gb, max_price=cap, reference_price=profile.hardware.max_price
    )


def host_of(offer: object) -> int | None:
    """The Vast host (the provider account) an offer's machine belongs to; one host may own several machines."""
    host = getattr(offer, "host_id", None)
    return host if isinstance(host, int) else None


def spread_over_hosts(ranked: list[RankedOffer], used_hosts: tuple[int, ...]) -> list[RankedOffer]:
    """The same offers, those on hosts not in ``used_hosts`` first, each part in rank order.

    A replica group (issue 12) prefers a host it does not use yet, so one host going down takes one
    replica with it, not two; a machine of a used host is still better than no replica at all. An
    offer whose host is not listed counts as a new host: nothing says it is a used one.
    """
    if not used_hosts:
        return list(ranked)
    used = set(used_hosts)
    fresh = [r for r in ranked if host_of(r.offer) not in used]
    return fresh + [r for r in ranked if host_of(r.offer) in used]
