"""Every error glmdeploy reports to a user, and the exit code each one maps to.

The CLI catches ``GlmdeployError`` at its edge and prints ``str(error)`` as one line
(plus ``hint`` when there is one) and exits with ``exit_code``. Anything else that escapes
is a bug: exit 1 with a pointer to the issue tracker, never a traceback unless
``GLMDEPLOY_DEBUG=1``.

    GlmdeployError (1)
    ├── UsageError (2)            bad input: options, durations, names
    │   ├── ProfileError (2)      unknown profile, invalid YAML, schema violation
    │   └── MissingApiKey (2)     no Vast.ai key anywhere
    ├── NoOfferError (3)          nothing matches the profile and price cap
    ├── DeploymentFailed (4)      failed before ready; instance destroyed or kept
    ├── SmokeFailed (5)           smoke checks failed
    ├── EndpointUnreachable (7)   smoke/bench target cannot be reached or never answers
    ├── VastError (7)             API failures (see glmdeploy.vast.errors)
    │   ├── AuthError (6)         credentials refused
    │   └── InsufficientCredit (8) the account lacks credit / hit its spend limit
    ├── EndpointNotTrusted (9)    the endpoint's TLS certificate is not the pinned one, or it spoke plain http
    └── Interrupted (130)         Ctrl-C / SIGTERM, after cleanup
        └── HungUp (129)          SIGHUP (terminal or SSH session gone), after cleanup

A closed stdout or stderr (EPIPE) ends a command quietly with 141, like a tool killed by SIGPIPE.

Exit codes are part of the public surface (shared/spec/cli.md): never renumber.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NO_OFFER = 3
EXIT_DEPLOY_FAILED = 4
EXIT_SMOKE_FAILED = 5
EXIT_AUTH = 6
EXIT_UNREACHABLE = 7
EXIT_NO_CREDIT = 8
EXIT_TLS_REFUSED = 9
EXIT_HUNG_UP = 129
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE, what a shell reports for a tool that a closed pipe ended (`yes | head -1`).
EXIT_OUTPUT_CLOSED = 141


class GlmdeployError(Exception):
    """Base of all errors shown to users as one line."""

    exit_code: int = EXIT_INTERNAL
    code: str = "internal_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(GlmdeployError):
    """The user asked for something malformed: a bad option value, duration or name."""

    exit_code = EXIT_USAGE
    code = "usage_error"


class ProfileError(UsageError):
    """A profile could not be found or does not validate."""

    code = "profile_error"


class MissingApiKey(UsageError):
    """No Vast.ai API key was found in any of the places the official client looks."""

    code = "missing_api_key"


class NoOfferError(GlmdeployError):
    """No offer matches the profile's hardware filters under the price cap."""

    exit_code = EXIT_NO_OFFER
    code = "no_offer"


class DeploymentFailed(GlmdeployError):
    """The deployment failed before the endpoint was ready."""

    exit_code = EXIT_DEPLOY_FAILED
    code = "deployment_failed"


class SmokeFailed(GlmdeployError):
    """At least one selected smoke check failed."""

    exit_code = EXIT_SMOKE_FAILED
    code = "smoke_failed"


class EndpointUnreachable(GlmdeployError):
    """The endpoint given to smoke or bench cannot be connected to, or accepts and never answers."""

    exit_code = EXIT_UNREACHABLE
    code = "endpoint_unreachable"


class Declined(GlmdeployError):
    """The user answered no at the rent prompt: nothing was rented, nothing went wrong (exit 0)."""

    exit_code = EXIT_OK
    code = "declined"


class Interrupted(GlmdeployError):
    """The user interrupted; whatever was rented has been cleaned up."""

    exit_code = EXIT_INTERRUPTED
    code = "interrupted"


class HungUp(Interrupted):
    """The terminal went away (SIGHUP: a closed window, a dropped SSH session); cleaned up like Ctrl-C."""

    exit_code = EXIT_HUNG_UP
    code = "hung_up"
