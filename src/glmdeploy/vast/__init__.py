"""Talking to Vast.ai: the REST client, its models, errors and API-key discovery.

Names are resolved lazily so that importing ``glmdeploy.vast.filters`` (or this package) from a
command module does not pull in httpx, tenacity and pydantic: ``glmdeploy --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glmdeploy.vast.client import VastClient, client_from_options
    from glmdeploy.vast.errors import (
        ApiError,
        ApiUnreachable,
        AuthError,
        CreateOutcomeUnknown,
        NotFound,
        OfferUnavailable,
        RateLimited,
        VastError,
    )
    from glmdeploy.vast.keys import ApiKey, discover_api_key, find_api_key
    from glmdeploy.vast.models import CreateResult, Instance, InstancePage, Offer

_HOMES = {
    "VastClient": "client",
    "client_from_options": "client",
    "ApiError": "errors",
    "ApiUnreachable": "errors",
    "AuthError": "errors",
    "CreateOutcomeUnknown": "errors",
    "NotFound": "errors",
    "OfferUnavailable": "errors",
    "RateLimited": "errors",
    "VastError": "errors",
    "ApiKey": "keys",
    "discover_api_key": "keys",
    "find_api_key": "keys",
    "CreateResult": "models",
    "Instance": "models",
    "InstancePage": "models",
    "Offer": "models",
}

__all__ = [
    "ApiError",
    "ApiKey",
    "ApiUnreachable",
    "AuthError",
    "CreateOutcomeUnknown",
    "CreateResult",
    "Instance",
    "InstancePage",
    "NotFound",
    "Offer",
    "OfferUnavailable",
    "RateLimited",
    "VastClient",
    "VastError",
    "client_from_options",
    "discover_api_key",
    "find_api_key",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
