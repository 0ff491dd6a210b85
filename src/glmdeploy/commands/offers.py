"""``glmdeploy offers``: the offers that can run a profile, best first, by ``glmdeploy.ranking``'s score."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from glmdeploy.commands._common import (
    ApiKey,
    ApiUrl,
    JsonOutput,
    MaxPrice,
    ProfileRef,
    Sandbox,
    emit_json,
    handles_errors,
    say,
)
from glmdeploy.tables_options import WideOutput

if TYPE_CHECKING:
    pass

@handles_errors
def offers(
    profile: ProfileRef,
    limit: Annotated[int, typer.Option(min=1, help="How many offers to show.")] = 10,
    max_price: MaxPrice = None,
    json_output: JsonOutput = False,
    output: WideOutput = None,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: Sandbox = False,
) -> None:
    """Show the offers that can run a profile, best first.

    The score (0-100) weighs price, host reliability and the time to download the weights at the
    host's speed (time that is billed too); offers above the price cap are left out. Exit 3 when
    no offer matches.
    """

    from glmdeploy.errors import NoOfferError
    from glmdeploy.profiles import load_profile
    from glmdeploy.ranking import OfferSummary

    loaded = load_profile(profile)
    cap = loaded.hardware.max_price if max_price is None else max_price
    from glmdeploy.connect import connect
    from glmdeploy.market import search_ranked

    with connect(api_key, api_url, sandbox).client as client:
        ranked = search_ranked(client, loaded, max_price=cap, limit=limit)
    if not ranked:
        raise NoOfferError(
            f"no offer matches profile {loaded.name!r} at or under ${cap:.2f}/h",
            hint="raise the cap with --max-price, or try again later: the market changes by the minute",
        )
    shown = [OfferSummary.from_ranked(r) for r in ranked[:limit]]
    if json_output:
        emit_json([row.model_dump(mode="json") for row in shown])
        return
    say(
        f"{len(ranked)} offer(s) for profile {loaded.name} at or under ${cap:.2f}/h; "
        f"showing {len(shown)}, best first (weights: {loaded.model.weights_gb:g} GB to download)"
    )
    _print_table(shown, wide=output == "wide")


def _print_table(rows: list[Any], *, wide: bool = False) -> None:
    from glmdeploy.tables import Column, print_table

    columns = [
        Column("offer id", 9, justify="right", key=True),
        Column("score", 6, justify="right"),
        Column("$/h", 8, justify="right"),
        Column("GPU", 7),
        Column("download", 5, justify="right"),
        Column("reliability", 4, justify="right"),
        Column("inet_down", 3, justify="right"),
        Column("location", 2),
        Column("CUDA", 1, justify="right"),
    ]
    from glmdeploy.durations import human_duration

    table = [
        [
            str(row.id),
            f"{row.score:.1f}",
            "-" if row.dph_total is None else f"{row.dph_total:.3f}",
            f"{row.num_gpus or '?'}x {row.gpu_name or '?'}",
            "unknown" if row.download_minutes is None else human_duration(row.download_minutes * 60),
            "-" if row.reliability is None else f"{row.reliability:.3f}",
            "-" if row.inet_down is None else f"{row.inet_down:,.0f} Mbit/s",
            row.geolocation or "-",
            "-" if row.cuda_max_good is None else f"{row.cuda_max_good:g}",
        ]
        for row in rows
    ]
    print_table(columns, table, wide=wide)
