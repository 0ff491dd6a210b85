"""Turn a profile's hardware section into the body of ``POST /api/v0/bundles/``.

Shapes and units from shared/reference/vast-api.md §4: each filter is
``{"<field>": {"<op>": value}}`` with real numbers (not the CLI's strings); ``gpu_ram`` is in
MB; ``allocated_storage`` makes ``dph_total`` include the disk we will actually request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Hardware

DEFAULT_LIMIT = 64


def offer_query(
    hardware: Hardware,
    *,
    max_price: float | None = None,
    limit: int = DEFAULT_LIMIT,
    exclude_machines: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The search body for offers that can run the profile, cheapest first.

    ``max_price`` overrides the profile's cap; ``exclude_machines`` skips hosts that just failed.
    """
    cap = hardware.max_price if max_price is None else max_price
    query: dict[str, Any] = {
        # The official client's defaults (vast-api.md §4.3): verified, rentable, not rented, no external.
        "verified": {"eq": hardware.verified},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "gpu_name": {"in": list(hardware.gpu_names)},
        "num_gpus": {"eq": hardware.num_gpus},
        "gpu_ram": {"gte": round(hardware.min_vram_gb * 1000)},
        "disk_space": {"gte": hardware.disk_gb},
        "reliability": {"gte": hardware.min_reliability},
        "inet_down": {"gte": hardware.min_inet_down},
        "dph_total": {"lte": cap},
        "type": "on-demand",
        "allocated_storage": hardware.disk_gb,
        "order": [["dph_total", "asc"]],
        "limit": limit,
    }
    cuda: dict[str, float] = {}
    if hardware.cuda_min is not None:
        cuda["gte"] = hardware.cuda_min
    if hardware.cuda_max is not None:
        cuda["lte"] = hardware.cuda_max
    if cuda:
        query["cuda_max_good"] = cuda
    if hardware.direct_port:
        query["direct_port_count"] = {"gte": 1}
    if not hardware.verified:
        del query["verified"]
    if exclude_machines:
        query["machine_id"] = {"notin": list(exclude_machines)}
    return query
