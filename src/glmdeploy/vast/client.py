"""A typed, retrying client for the parts of the Vast.ai REST API glmdeploy uses.

Facts behind every choice are in shared/reference/vast-api.md:
- paths get ``/api/v0`` unless already versioned, always with a trailing slash (§1.1);
- the key travels only in ``Authorization: Bearer`` (never in a URL), and httpx drops that header
  when a redirect leaves the origin (§1.1, §1.2);
- 429/502/503/504 and connection failures are retried with exponential backoff and jitter,
  honouring a numeric ``Retry-After`` up to a cap; the daily search quota is never retried (§2);
- the create call is not resent after a timeout or a dropped connection, because the server may
  already have rented the instance (§2.1 "Danger"); the caller looks it up by label instead (§12);
- errors are translated here, once, into ``glmdeploy.vast.errors`` (§3, §5.5, §8);
- answers are read as a stream with a size cap and an overall deadline, so a hostile or broken
  server (a gigabyte body, a byte a second forever) ends in a one-line error instead of eating
  memory or hanging: httpx's own timeouts only bound each read, not the whole answer.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NoReturn, Self
from urllib.parse import urlsplit

import httpx
import tenacity
from pydantic import ValidationError

from glmdeploy import __version__
from glmdeploy.errors import UsageError
from glmdeploy.urls import check_port
from glmdeploy.vast.errors import (
    ApiError,
    ApiUnreachable,
    AuthError,
    CreateOutcomeUnknown,
    InsufficientCredit,
    NotFound,
    OfferUnavailable,
    RateLimited,
)
from glmdeploy.vast.keys import discover_api_key
from glmdeploy.vast.models import CreateResult, Instance, InstancePage, Offer

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_RUNTYPE",
    "VastClient",
    "api_path",
    "client_from_options",
    "resolve_base_url",
]

DEFAULT_BASE_URL = "https://console.vast.ai"
# The client's spelling for direct + proxied ssh (sic, no trailing "t"): vast-api.md §5.3.
DEFAULT_RUNTYPE = "ssh_direc ssh_proxy"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
LOG_FETCH_TIMEOUT = httpx.Timeout(10.0)
# Real answers are kilobytes (an offer search with 64 rows is ~200 KB); past this, stop reading.
MAX_BODY_BYTES = 8_000_000
# A log download keeps only its last bytes past this: readiness needs the tail, not the history.
MAX_LOG_BYTES = 4_000_000
# The whole answer (headers and body) must arrive within this many seconds.
RESPONSE_DEADLINE_S = 120.0
_HOP_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# On create only a refusal is safe to resend: 502/504 come from a gateway whose backend may have
# rented the instance anyway.
CREATE_RETRYABLE_STATUSES = frozenset({429, 503})
RETRYABLE_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
# Failures that happen before a single byte of the request left: resending cannot duplicate anything.
NEVER_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

INSTANCES_PAGE_SIZE = 25  # the v1 list's maximum (vast-api.md §6.1)
MAX_INSTANCE_PAGES = 400  # 10,000 instances: a bound on the loop, far above any real account
AUTH_ERROR_MESSAGES = ("Invalid user key", "Session expired. Please log in again.")
NOT_FOUND_ERRORS = frozenset({"no_such_instance", "invalid_id", "not_found", "instances_not_found"})
# Error codes that mean "already gone" on a DELETE, whatever the HTTP status.
GONE_ON_DELETE_ERRORS = frozenset({"no_such_instance", "not_found"})
# The account cannot pay (vast-api.md §5.5: start/stop answer 400 "missing_billing" "You lack credit,
# see the billing page.", bulk updates "insufficient_credit" "You lack credit.", new accounts
# "spend_rate_limit"; the create-time code is undocumented, so a 400/402/403 whose message speaks of
# credit or billing counts too).
CREDIT_ERRORS = frozenset({"missing_billing", "insufficient_credit", "insufficient_funds", "spend_rate_limit"})
_CREDIT_MESSAGE = re.compile(r"\black(?:s)? (?:of )?credit|insufficient (?:credit|balance|funds)|billing page", re.I)
MAX_DETAIL_CHARS = 200

_VERSIONED_PATH = re.compile(r"^/api/v\d+/")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")
_NUMBER = re.compile(r"^\s*\d+(\.\d+)?\s*$")


def resolve_base_url(api_url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``--api-url``, else env ``VAST_URL``, else the official default; validated and without a trailing slash."""
    env = os.environ if environ is None else environ
    raw = (api_url or "").strip() or env.get("VAST_URL", "").strip() or DEFAULT_BASE_URL
    parts = urlsplit(raw)
    if "@" in parts.netloc or parts.query or parts.fragment:
        # Vast accepts ?api_key=KEY, so a key may well be in there: the URL ends up in error messages
        # and in every deployment record (list --json), so refuse it without repeating it.
        raise UsageError(
            "the Vast.ai API URL must not hold credentials, a query or a fragment (user:password@, ?api_key=...)",
            hint="give the server alone, e.g. https://console.vast.ai, and the key with --api-key or VAST_API_KEY",
        )
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise UsageError(f"invalid Vast.ai API URL {raw!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"invalid Vast.ai API URL {raw!r}: expected http(s)://host[:port]")
    check_port(raw, option="--api-url" if (api_url or "").strip() else "VAST_URL")
    return raw.rstrip("/")


def api_path(path: str) -> str:
    """``/bundles/`` → ``/api/v0/bundles/``; already versioned paths pass; always a trailing slash."""
    if not path.startswith("/"):
        path = "/" + path
    if not _VERSIONED_PATH.match(path):
        path = "/api/v0" + path
    if not path.endswith("/"):
        path += "/"
    return path


def _may_have_run(exc: httpx.HTTPError) -> bool:
    """Whether the server may have executed a request that failed with ``exc``.

    Connection set-up failures happen before anything is sent; an unsupported scheme or a redirect
    loop means the server answered with a redirect instead of acting. Anything else (timeouts while
    waiting for the answer, dropped connections, an undecodable answer) leaves it unknown.
    """
    return not isinstance(exc, (*NEVER_SENT_ERRORS, httpx.UnsupportedProtocol, httpx.TooManyRedirects))


def _one_line(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    flat = " ".join(_CONTROL_CHARS.sub(" ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _parse_json(response: httpx.Response) -> Any:
    # strict=False: offer payloads have been seen with raw control characters inside strings.
    try:
        return json.loads(response.text, strict=False)
    except RecursionError:
        # "[[[[...": nested deeper than Python's stack; callers treat ValueError as "not JSON".
        raise ValueError("JSON nested too deeply") from None


def _json_or_none(response: httpx.Response) -> Any:
    """The body as JSON, or None when it is not JSON (error paths describe it from the raw text)."""
    try:
        return _parse_json(response)
    except ValueError:
        return None


def _describe_unreadable(response: httpx.Response) -> str:
    text = response.text.strip()
    if not text:
        return "an empty body"
    lowered = text[:200].lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered or "<body" in lowered:
        return "an HTML page"
    return f"unreadable text {_one_line(text, 60)!r}"


def _retry_after(response: httpx.Response, payload: Any) -> float | None:
    """The wait a 429/503 asks for: numeric ``Retry-After``, else a numeric ``retry_after`` in the body."""
    header = response.headers.get("Retry-After")
    if header is not None and _NUMBER.match(header):
        return float(header)
    if isinstance(payload, dict):
        value = payload.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


def _reset_time(header: str | None) -> str | None:
    if header is None or not _NUMBER.match(header):
        return None
    try:
        moment = datetime.fromtimestamp(float(header), tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class _CreateAttempt:
    offer_id: int
    label: str | None


class _TooLarge(Exception):
    """Internal: the answer is bigger than the client is willing to read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an answer over {limit / 1_000_000:g} MB")
        self.limit = limit


class _RetryableResponse(Exception):
    """Internal: a response worth resending, and how long the server asked us to wait."""

    def __init__(self, response: httpx.Response, delay: float | None) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.delay = delay


class VastClient:
    """Synchronous Vast.ai client. One instance per command; close it (or use ``with``)."""

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str | None = None,
        key_source: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float | None = None,
        attempts: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        max_retry_after: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 20.0,
        backoff_jitter: float = 0.5,
        log_poll_tries: int = 12,
        log_poll_interval: float = 0.5,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_log_bytes: int = MAX_LOG_BYTES,
        response_deadline: float = RESPONSE_DEADLINE_S,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self._api_key = api_key.strip() if api_key and api_key.strip() else None
        self.key_source = key_source
        self.attempts = max(1, attempts)
        self._sleep = sleep
        self.max_retry_after = max_retry_after
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        self.log_poll_tries = max(1, log_poll_tries)
        self.log_poll_interval = log_poll_interval
        self.max_body_bytes = max_body_bytes
        self.max_log_bytes = max_log_bytes
        self.response_deadline = response_deadline
        self._http = httpx.Client(
            transport=transport,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            # The Authorization header is added per request, so the shared client (and the log
            # download from a foreign host) never carries it; httpx strips it on cross-origin redirects.
            headers={"User-Agent": f"glmdeploy/{__version__}", "Accept": "application/json"},
            follow_redirects=True,
        )

    def __repr__(self) -> str:
        key_state = "set" if self._api_key else "none"
        return f"VastClient(base_url={self.base_url!r}, api_key={key_state}, key_source={self.key_source!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ operations

    def search_offers(self, query: Mapping[str, Any]) -> list[Offer]:
        """``POST /api/v0/bundles/`` with a query dict (see ``filters.offer_query``); server order kept."""
        body = self._call("POST", "/bundles/", operation="search offers", json_body=dict(query))
        rows = body.get("offers")
        if not isinstance(rows, list):
            raise ApiError("Vast.ai answered 'search offers' without an 'offers' list", operation="search offers")
        offers: list[Offer] = []
        for row in rows:
            if not isinstance(row, dict):
                continue
            try:
                offers.append(Offer.from_api(row))
            except ValidationError:
                continue  # an offer without a usable id cannot be rented anyway
        return offers

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        env: Mapping[str, str],
        onstart: str | None,
        disk: float,
        label: str,
        runtype: str | None = DEFAULT_RUNTYPE,
        cancel_unavail: bool = True,
        args: list[str] | None = None,
    ) -> CreateResult:
        """Rent offer ``offer_id``: ``PUT /api/v0/asks/{id}/`` (vast-api.md §5).

        ``env`` is the dict form, ports included as ``{"-p 8000:8000": "1"}``. A result with
        ``created_stopped`` true is an instance that exists and bills storage: destroy it.
        Raises ``OfferUnavailable`` when the offer is gone and ``CreateOutcomeUnknown`` when the
        request may have been executed but no usable answer came back.
        """
        operation = f"rent offer {offer_id}"
        body: dict[str, Any] = {
            "client_id": "me",
            "image": image,
            "env": dict(env),
            "price": None,  # on-demand; a price would make it an interruptible bid
            "disk": disk,
            "label": label,
            "extra": None,
            "onstart": onstart,
            "image_login": None,
            "python_utf8": False,
            "lang_utf8": False,
            "use_jupyter_lab": False,
            "jupyter_dir": None,
            "force": False,
            "cancel_unavail": cancel_unavail,
            "template_hash_id": None,
            "user": None,
        }
        if runtype:
            body["runtype"] = runtype
        if args is not None:
            body["args"] = list(args)
        attempt = _CreateAttempt(offer_id=offer_id, label=label)
        response = self._send("PUT", f"/asks/{offer_id}/", operation=operation, json_body=body, create=attempt)
        payload = _json_or_none(response)
        if response.is_success:
            result = self._create_result(payload)
            if result is not None and result.new_contract is not None:
                return result
            if result is None or result.success:
                # Accepted (2xx) but we cannot tell which instance, if any, it made.
                reason = "a success without an instance id" if result else _describe_unreadable(response)
                raise self._outcome_unknown(attempt, reason, status_code=response.status_code)
        self._raise_for(response, payload, operation)

    def show_instance(self, instance_id: int) -> Instance | None:
        """``GET /api/v0/instances/{id}/?owner=me``; None when the instance does not exist (any more)."""
        operation = f"show instance {instance_id}"
        try:
            body = self._call("GET", f"/instances/{instance_id}/", operation=operation, params={"owner": "me"})
        except NotFound as exc:
            if exc.error == "no_such_instance":
                return None
            raise
        if "instances" not in body:
            raise ApiError(f"Vast.ai answered '{operation}' without an 'instances' field", operation=operation)
        row = body["instances"]
        if isinstance(row, list):  # tolerate a one-element list instead of the documented object
            row = row[0] if row else None
        if row is None:
            return None
        if not isinstance(row, dict):
            raise ApiError(f"Vast.ai answered '{operation}' with a malformed instance", operation=operation)
        return self._instance(row, operation)

    def list_instances(self, label: str | None = None, *, label_prefix: str | None = None) -> list[Instance]:
        """All our instances via the paginated ``GET /api/v1/instances/`` (the v0 list is retired).

        ``label`` filters on the server (exact match); ``label_prefix`` filters here, since the
        API has no prefix operator.
        """
        return [
            instance
            for instance in self.iter_instances(label)
            if label_prefix is None or (instance.label or "").startswith(label_prefix)
        ]

    def iter_instances(self, label: str | None = None) -> Iterator[Instance]:
        operation = "list instances"
        filters: dict[str, Any] = {} if label is None else {"label": {"eq": label}}
        params: dict[str, str] = {
            "select_filters": json.dumps(filters, separators=(",", ":")),
            "order_by": json.dumps([{"col": "id", "dir": "asc"}], separators=(",", ":")),
            "limit": str(INSTANCES_PAGE_SIZE),
        }
        seen_tokens: set[str] = set()
        for _ in range(MAX_INSTANCE_PAGES):
            body = self._call("GET", "/api/v1/instances/", operation=operation, params=params)
            try:
                page = InstancePage.from_api(body)
            except ValidationError:
                raise ApiError(f"Vast.ai answered '{operation}' with a malformed page", operation=operation) from None
            for row in page.instances:
                yield self._instance(row, operation)
            token = page.next_token
            if not token:
                return
            if token in seen_tokens:
                raise ApiError(
                    "Vast.ai returned the same page token twice while listing instances", operation=operation
                )
            seen_tokens.add(token)
            params["after_token"] = token
        raise ApiError(f"more than {MAX_INSTANCE_PAGES} pages of instances; giving up", operation=operation)

    def request_logs(self, instance_id: int, tail: int | None = None) -> str:
        """The container's log text, or "" when the host has not uploaded any yet.

        ``PUT /api/v0/instances/request_logs/{id}/`` makes the host upload its logs and returns a
        ``result_url``; that URL (S3) is polled without credentials until it answers 200.
        """
        operation = f"request logs for instance {instance_id}"
        request: dict[str, Any] = {} if tail is None else {"tail": str(tail)}
        body = self._call("PUT", f"/instances/request_logs/{instance_id}/", operation=operation, json_body=request)
        result_url = body.get("result_url")
        if not result_url:
            return ""
        if not isinstance(result_url, str) or not result_url.startswith(("https://", "http://")):
            raise ApiError(f"Vast.ai answered '{operation}' with an unusable result_url", operation=operation)
        return self._fetch_result(result_url)

    def destroy_instance(self, instance_id: int) -> bool:
        """``DELETE /api/v0/instances/{id}/``. True if destroyed now, False if it was already gone."""
        try:
            self._call(
                "DELETE", f"/instances/{instance_id}/", operation=f"destroy instance {instance_id}", json_body={}
            )
        except NotFound as exc:
            # A DELETE answered 404 (auth failures were raised as AuthError before this) means the
            # instance is not there: Vast documents both "no_such_instance" and "not_found" for it
            # (vast-api.md §6: destroy is not idempotent at the HTTP level, a repeat answers 404).
            if exc.status_code == 404 or exc.error in GONE_ON_DELETE_ERRORS:
                return False
            raise
        return True

    def set_label(self, instance_id: int, label: str) -> None:
        """``PUT /api/v0/instances/{id}/`` with ``{"label": ...}``."""
        self._call(
            "PUT", f"/instances/{instance_id}/", operation=f"label instance {instance_id}", json_body={"label": label}
        )

    # ------------------------------------------------------------------ plumbing

    def _url(self, path: str) -> str:
        return self.base_url + api_path(path)

    def _call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send with retries and return the JSON object, raising a typed error for any refusal."""
        response = self._send(method, path, operation=operation, json_body=json_body, params=params)
        readable = True
        try:
            payload = _parse_json(response)
        except ValueError:
            payload, readable = None, False
        if not response.is_success or (isinstance(payload, dict) and payload.get("success") is False):
            self._raise_for(response, payload, operation)
        if not readable:
            raise ApiError(
                f"Vast.ai answered '{operation}' with {_describe_unreadable(response)} instead of JSON",
                status_code=response.status_code,
                operation=operation,
            )
        if not isinstance(payload, dict):
            shape = "null" if payload is None else type(payload).__name__
            raise ApiError(
                f"Vast.ai answered '{operation}' with JSON of an unexpected shape ({shape})",
                status_code=response.status_code,
                operation=operation,
            )
        return payload

    def _send(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        create: _CreateAttempt | None = None,
    ) -> httpx.Response:
        url = self._url(path)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        resendable = CREATE_RETRYABLE_STATUSES if create is not None else RETRYABLE_STATUSES

        def attempt() -> httpx.Response:
            try:
                response = self._exchange(method, url, json=json_body, params=params, headers=headers)
            except _TooLarge as exc:
                if create is not None:
                    raise self._outcome_unknown(create, str(exc)) from None
                raise ApiError(
                    f"Vast.ai sent {exc} to '{operation}'; glmdeploy stops reading there",
                    operation=operation,
                ) from None
            except httpx.HTTPError as exc:
                if create is not None and _may_have_run(exc):
                    raise self._outcome_unknown(create, type(exc).__name__) from exc
                if isinstance(exc, RETRYABLE_TRANSPORT_ERRORS):
                    raise
                raise ApiError(
                    f"could not {operation}: {type(exc).__name__}: {self._clean(str(exc))}", operation=operation
                ) from exc
            status = response.status_code
            if create is not None and status >= 500 and status not in resendable:
                raise self._outcome_unknown(create, f"HTTP {status}", status_code=status)
            if status in resendable:
                self._refuse_hopeless_retry(response, operation)
            return response

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type((_RetryableResponse, *RETRYABLE_TRANSPORT_ERRORS)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _RetryableResponse as exc:
            self._raise_exhausted(exc.response, operation)
        except RETRYABLE_TRANSPORT_ERRORS as exc:
            raise ApiUnreachable(
                f"cannot reach Vast.ai at {self.base_url} to {operation}: "
                f"{type(exc).__name__} after {self.attempts} attempt(s)",
                operation=operation,
                hint="check your network, or --api-url / VAST_URL",
            ) from exc

    def _refuse_hopeless_retry(self, response: httpx.Response, operation: str) -> NoReturn:
        """Raise ``_RetryableResponse`` for a resendable answer, or a final error when waiting cannot help."""
        payload = _json_or_none(response)
        error, msg = self._envelope(payload, response)
        status = response.status_code
        if status == 429 and error == "search_quota_exceeded":
            reset = _reset_time(response.headers.get("X-RateLimit-Reset"))
            when = f"it resets at {reset}" if reset else "it resets at midnight UTC"
            raise RateLimited(
                f"the daily Vast.ai search quota is used up; {when}", error=error, msg=msg, operation=operation
            )
        delay = _retry_after(response, payload)
        if delay is not None and delay > self.max_retry_after:
            message = (
                f"Vast.ai asks to wait {delay:g} s before retrying '{operation}' "
                f"(more than the {self.max_retry_after:g} s glmdeploy waits); try again later"
            )
            if status == 429:
                raise RateLimited(message, retry_after=delay, error=error, msg=msg, operation=operation)
            raise ApiUnreachable(message, status_code=status, error=error, msg=msg, operation=operation)
        raise _RetryableResponse(response, delay)

    def _raise_exhausted(self, response: httpx.Response, operation: str) -> NoReturn:
        payload = _json_or_none(response)
        error, msg = self._envelope(payload, response)
        status = response.status_code
        detail = self._detail(status, error, msg)
        tail = f"after {self.attempts} attempt(s) ({detail})"
        if status == 429:
            raise RateLimited(
                f"Vast.ai kept rate-limiting '{operation}' {tail}",
                retry_after=_retry_after(response, payload),
                error=error,
                msg=msg,
                operation=operation,
            )
        raise ApiUnreachable(
            f"Vast.ai kept failing to {operation} {tail}", status_code=status, error=error, msg=msg, operation=operation
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        outcome = state.outcome
        failure = outcome.exception() if outcome is not None else None
        if isinstance(failure, _RetryableResponse) and failure.delay is not None:
            return failure.delay
        # Exponential with jitter, so that several glmdeploy processes do not retry in lockstep.
        base = min(self.backoff_max, self.backoff_initial * 2.0 ** (state.attempt_number - 1))
        return base + random.uniform(0, self.backoff_jitter)

    def _fetch_result(self, url: str) -> str:
        """Poll a result_url (no credentials: it is a foreign host) until it answers 200."""
        delay = self.log_poll_interval
        for _ in range(self.log_poll_tries):
            self._sleep(delay)  # the host needs a moment to upload before the first look
            delay = min(delay * 1.5, 3.0)
            try:
                response = self._exchange(
                    "GET", url, timeout=LOG_FETCH_TIMEOUT, headers={"Accept": "*/*"}, keep_tail=self.max_log_bytes
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                text = response.text
                if response.extensions.get("glmdeploy_truncated"):
                    # The cut fell inside a line: drop that fragment, keep whole lines only.
                    text = text.partition("\n")[2]
                return text
        # A slow host is normal right after start: "no logs yet", not a failure (vast-api.md §7).
        return ""

    def _exchange(
        self,
        method: str,
        url: str,
        *,
        keep_tail: int | None = None,
        timeout: httpx.Timeout | None = None,
        **request: Any,
    ) -> httpx.Response:
        """Send and read the answer within ``max_body_bytes`` and ``response_deadline``.

        Past the cap this raises ``_TooLarge``, or with ``keep_tail`` keeps only the last
        ``keep_tail`` bytes (the response then has ``extensions["glmdeploy_truncated"]``). Past the
        deadline it raises ``httpx.ReadTimeout``, which the retry logic treats like any timeout.
        """
        started = time.monotonic()
        built = self._http.build_request(
            method, url, timeout=timeout if timeout is not None else self._http.timeout, **request
        )
        limit = keep_tail if keep_tail is not None else self.max_body_bytes
        response = self._http.send(built, stream=True)
        body = bytearray()
        truncated = False
        try:
            declared = response.headers.get("Content-Length", "")
            if keep_tail is None and declared.isdigit() and int(declared) > limit:
                raise _TooLarge(limit)
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limit:
                    if keep_tail is None:
                        raise _TooLarge(limit)
                    del body[: len(body) - limit]
                    truncated = True
                if time.monotonic() - started > self.response_deadline:
                    raise httpx.ReadTimeout(f"the answer took longer than {self.response_deadline:g} s", request=built)
        finally:
            response.close()
        # The body is already decoded: drop the headers that describe its encoding on the wire.
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP_HEADERS]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=self._scrub_key(bytes(body)),
            request=built,
            extensions={"glmdeploy_truncated": truncated},
        )

    def _scrub_key(self, body: bytes) -> bytes:
        """The answer with our account key masked, so nothing a server echoes can reach a message.

        Every string glmdeploy shows from Vast (error messages, ``status_msg``, labels, logs) comes
        out of a body read here. Masking the raw bytes before parsing also covers the key's JSON
        escapes (``\\/`` for ``/``, ``\\uXXXX``); ``***`` keeps a JSON string valid.
        """
        if not self._api_key or not body:
            return body
        forms = {self._api_key, json.dumps(self._api_key)[1:-1], json.dumps(self._api_key, ensure_ascii=False)[1:-1]}
        forms |= {form.replace("/", "\\/") for form in forms}
        for form in sorted(forms, key=len, reverse=True):
            body = body.replace(form.encode("utf-8"), b"***")
        return body

    def _create_result(self, payload: Any) -> CreateResult | None:
        if not isinstance(payload, dict):
            return None
        try:
            return CreateResult.from_api(payload)
        except ValidationError:
            return None

    def _instance(self, row: Mapping[str, Any], operation: str) -> Instance:
        try:
            return Instance.from_api(row)
        except ValidationError:
            # Never skip a row: an instance we cannot see is one we cannot destroy.
            raise ApiError(
                f"Vast.ai answered '{operation}' with an instance row glmdeploy cannot read "
                f"(id {_one_line(repr(row.get('id')), 40)})",
                operation=operation,
            ) from None

    def _outcome_unknown(
        self, create: _CreateAttempt, reason: str, *, status_code: int | None = None
    ) -> CreateOutcomeUnknown:
        where = f"look for label {create.label!r}" if create.label else "check your instances"
        return CreateOutcomeUnknown(
            f"no usable answer while renting offer {create.offer_id} ({reason}); "
            f"an instance may have been created: {where} before retrying",
            offer_id=create.offer_id,
            label=create.label,
            status_code=status_code,
            hint="'glmdeploy destroy --orphans' removes instances glmdeploy created but does not track",
        )

    def _clean(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _one_line(text)

    def _envelope(self, payload: Any, response: httpx.Response) -> tuple[str | None, str | None]:
        """Vast's ``error`` code and human ``msg`` (or ``message``/``detail``, or a plain-text body)."""
        if isinstance(payload, dict):
            error = payload.get("error")
            msg = next((payload[k] for k in ("msg", "message", "detail") if isinstance(payload.get(k), str)), None)
            return (self._clean(error) if isinstance(error, str) else None), (self._clean(msg) if msg else None)
        if payload is None and response.text.strip():
            described = _describe_unreadable(response)
            if described.startswith("unreadable text"):
                return None, self._clean(response.text)
            return None, described
        return None, None

    @staticmethod
    def _detail(status: int, error: str | None, msg: str | None) -> str:
        parts = [f"HTTP {status}"]
        if error:
            parts.append(error)
        detail = " ".join(parts)
        return f"{detail}: {msg}" if msg else detail

    def _raise_for(self, response: httpx.Response, payload: Any, operation: str) -> NoReturn:
        """Translate a refusal (non-2xx, or 2xx with ``success: false``) into a typed error."""
        status = response.status_code
        error, msg = self._envelope(payload, response)
        detail = self._detail(status, error, msg)
        fields: dict[str, Any] = {"status_code": status, "error": error, "msg": msg, "operation": operation}
        # Auth first: a wrong key can come back as 404 with error "auth_error" (vast-api.md §1.2).
        if error == "auth_error" or msg in AUTH_ERROR_MESSAGES or status == 401:
            source = f" (from {self.key_source})" if self.key_source else ""
            raise AuthError(
                f"Vast.ai refused the API key{source} ({detail})",
                hint="check the key, or replace it: pass --api-key, set VAST_API_KEY, or run 'vastai set api-key KEY'",
                **fields,
            )
        if error in CREDIT_ERRORS or status == 402 or (status in (400, 403) and _CREDIT_MESSAGE.search(msg or "")):
            raise InsufficientCredit(
                f"the Vast.ai account cannot pay: could not {operation} ({detail})",
                hint="add credit (or raise the spend limit) on the billing page https://cloud.vast.ai/billing/,"
                " then retry; retrying before that cannot help",
                **fields,
            )
        if error == "no_such_ask" or (operation.startswith("rent offer") and status in (404, 410)):
            raise OfferUnavailable(f"the offer is no longer available: could not {operation} ({detail})", **fields)
        if error == "deprecated_endpoint" or status == 410:
            raise ApiError(
                f"Vast.ai has retired the endpoint glmdeploy uses to {operation} ({detail}); upgrade glmdeploy",
                **fields,
            )
        if status == 404 or error in NOT_FOUND_ERRORS:
            raise NotFound(f"Vast.ai could not {operation}: not found ({detail})", **fields)
        if status == 429:
            raise RateLimited(f"Vast.ai rate-limited '{operation}' ({detail})", **fields)
        raise ApiError(f"Vast.ai could not {operation} ({detail})", **fields)


def client_from_options(api_key: str | None, api_url: str | None, **options: Any) -> VastClient:
    """The client a command needs from its ``--api-key``/``--api-url`` values, after key discovery.

    Raises ``MissingApiKey`` (exit 2) when no key is found anywhere.
    """
    key = discover_api_key(api_key)
    return VastClient(key.value, key_source=key.source, base_url=resolve_base_url(api_url), **options)
