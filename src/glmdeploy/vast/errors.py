"""What can go wrong when glmdeploy talks to Vast.ai, as typed errors with exit codes.

    GlmdeployError                      (glmdeploy.errors)
    └── VastError (7)                   any Vast.ai API failure
        ├── AuthError (6)               the key was refused (401, or 404 with error "auth_error")
        ├── InsufficientCredit (8)      the account lacks credit or hit its spend limit
        ├── OfferUnavailable (3)        the offer was taken between search and create (no_such_ask)
        ├── NotFound (7)                the thing asked about does not exist (404)
        ├── RateLimited (7)             429 that retrying cannot fix (quota, long Retry-After, exhausted)
        ├── ApiError (7)                any other refusal, a retired endpoint, or a body we cannot read
        ├── ApiUnreachable (7)          connection failures or 502/503/504 after every retry
        └── CreateOutcomeUnknown (7)    the create call may or may not have rented an instance

Every error carries the HTTP ``status_code`` (None when no response came back), Vast's own
``error`` code (``"no_such_ask"``, ``"auth_error"``…) and its human ``msg`` as attributes, so callers
branch on data instead of parsing messages. Messages are one line and never contain the API key:
the client redacts it before building them.
"""

from __future__ import annotations

from glmdeploy.errors import EXIT_AUTH, EXIT_NO_CREDIT, EXIT_NO_OFFER, EXIT_UNREACHABLE, GlmdeployError

__all__ = [
    "ApiError",
    "ApiUnreachable",
    "AuthError",
    "CreateOutcomeUnknown",
    "InsufficientCredit",
    "NotFound",
    "OfferUnavailable",
    "RateLimited",
    "VastError",
]


class VastError(GlmdeployError):
    """Base of every failure reported by (or about) the Vast.ai API."""

    exit_code = EXIT_UNREACHABLE
    code = "vast_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        msg: str | None = None,
        operation: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code
        self.error = error
        self.msg = msg
        self.operation = operation


class AuthError(VastError):
    """Vast.ai refused the API key (wrong, revoked, or an expired session)."""

    exit_code = EXIT_AUTH
    code = "auth_error"


class InsufficientCredit(VastError):
    """The account cannot pay for what was asked (no credit, a spend limit): only the user can fix it.

    Not exit 7: retrying later does not help, and CI should not treat it as an outage.
    """

    exit_code = EXIT_NO_CREDIT
    code = "insufficient_credit"


class OfferUnavailable(VastError):
    """The offer vanished between search and create; the caller should try the next one."""

    exit_code = EXIT_NO_OFFER
    code = "offer_unavailable"


class NotFound(VastError):
    """The instance (or other object) asked about does not exist or is not ours."""

    code = "not_found"


class RateLimited(VastError):
    """Vast.ai keeps answering 429, asks for a longer wait than we accept, or the daily quota is spent."""

    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = 429,
        error: str | None = None,
        msg: str | None = None,
        operation: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, error=error, msg=msg, operation=operation, hint=hint)
        self.retry_after = retry_after


class ApiError(VastError):
    """Any other refusal, an unreadable body, or an endpoint Vast.ai has retired."""

    code = "api_error"


class ApiUnreachable(VastError):
    """No usable answer from Vast.ai after every retry: connection failures, timeouts, 502/503/504."""

    code = "api_unreachable"


class CreateOutcomeUnknown(VastError):
    """The create request may have reached Vast.ai, but no answer came back.

    Retrying could rent a second, billing instance (the first create may have consumed the offer,
    so a retry would also fail with no_such_ask and hide the orphan). The caller must look the
    instance up by ``label`` before deciding what to do.
    """

    code = "create_outcome_unknown"

    def __init__(
        self,
        message: str,
        *,
        offer_id: int,
        label: str | None,
        status_code: int | None = None,
        error: str | None = None,
        msg: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, error=error, msg=msg, operation="create instance", hint=hint)
        self.offer_id = offer_id
        self.label = label
