"""Hypothesis budgets for the property suites.

``ci`` keeps every suite to a few dozen examples so the whole fuzz directory stays well under a
minute on a shared runner; ``dev`` digs deeper (``HYPOTHESIS_PROFILE=dev``). ``ci`` is chosen when
``CI`` is set (GitHub Actions sets ``CI=true``) unless ``HYPOTHESIS_PROFILE`` names one explicitly;
otherwise Hypothesis's own default budget applies.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _chosen_profile() -> str | None:
    explicit = os.environ.get("HYPOTHESIS_PROFILE")
    if explicit:
        return explicit
    return "ci" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else None


_profile = _chosen_profile()
if _profile is not None:
    settings.load_profile(_profile)
