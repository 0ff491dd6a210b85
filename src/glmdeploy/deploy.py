"""``glmdeploy up`` as an explicit state machine.

    plan_check -> search -> rank -> confirm -> create -> wait_running -> wait_ready
               -> resolve_endpoint -> smoke -> done

Every phase change is written to the state DB and reported to an ``UpEvents`` sink (a live
display on a terminal, NDJSON with ``--json``). The rules that keep users' money safe:

- the deployment row exists *before* the create call, and the instance carries the label
  ``glmdeploy:<id>``, so a crash at any point leaves something ``destroy --orphans`` can find;
- a create whose outcome is unknown (timeout, dropped connection) is resolved by looking the label
  up before any retry, so a retry never rents twice;
- every failure after an instance exists destroys it and checks it is gone (or, with
  ``--keep-on-failure``, keeps it and says how to destroy it); if the destroy itself fails the row
  is marked ``orphaned`` so ``destroy --orphans`` retries it;
- "running" is not "ready": readiness needs the engine's ready marker in the logs and its health
  endpoint answering. What each poll's logs, instance and health probe mean is the ready-wait rule,
  ``readiness.ReadyWait``: a failure signature, an error status_msg, a dead state, a port never mapped
  or an engine that exited ends the wait within two polls; this module only does the polling.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from glmdeploy.engines import API_KEY_ENV, get_engine
from glmdeploy.errors import (
    Declined,
    DeploymentFailed,
    GlmdeployError,
    NoOfferError,
    SmokeFailed,
    UsageError,
)
from glmdeploy.loadprogress import LoadTracker
from glmdeploy.onstart import VAST_URL_ENV, OnstartOptions, render
from glmdeploy.readiness import LaunchFailure, ReadyWait, instance_failure
from glmdeploy.state import DeploymentReleased
from glmdeploy.teardown import ORPHAN_HINT, orphan_hint, tear_down
from glmdeploy.tls import EXIT_TLS_REFUSED, EndpointNotTrusted, fingerprint_in_log, https_url, pin_certificate
from glmdeploy.vast.errors import (
    AuthError,
    CreateOutcomeUnknown,
    OfferUnavailable,
    VastError,
)
from glmdeploy.vast.filters import offer_query

if TYPE_CHECKING:
    from glmdeploy.planner import Plan
    from glmdeploy.profiles.model import Profile
    from glmdeploy.ranking import RankedOffer
    from glmdeploy.state import Deployment, StateStore
    from glmdeploy.vast.client import VastClient
    from glmdeploy.vast.models import Instance, Offer


class Phase(StrEnum):
    PLAN_CHECK = "plan_check"
    SEARCH = "search"
    RANK = "rank"
    CONFIRM = "confirm"
    CREATE = "create"
    WAIT_RUNNING = "wait_running"
    WAIT_READY = "wait_ready"
    RESOLVE_ENDPOINT = "resolve_endpoint"
    SMOKE = "smoke"
    DONE = "done"


# The deployment status (shared/spec/cli.md) each phase puts the row in.
PHASE_STATUS: dict[Phase, str] = {
    Phase.CREATE: "creating",
    Phase.WAIT_RUNNING: "starting",
    Phase.WAIT_READY: "loading",
    Phase.RESOLVE_ENDPOINT: "loading",
    Phase.SMOKE: "loading",
    Phase.DONE: "ready",
}
LOG_TAIL = 400
UP_SMOKE_CHECKS = ("health", "auth", "models", "chat", "stream")
OFFERS_TRIED = 5
TOP_OFFERS_SHOWN = 5


@dataclass(frozen=True)
class Pacing:
    """Poll intervals, in seconds on the real Vast.ai.

    Vast rate-limits per endpoint (vast-api.md §2.3: ~2 s for show/logs), and a 5-minute load must
    cost at most ~40 API requests, so polls back off geometrically. ``scale`` shrinks every wait for
    the sandbox, whose clock runs ``time_scale`` times faster, so the *number* of requests a sandbox
    deployment makes is what the same deployment would make on Vast.
    """

    scale: float = 1.0
    running_first: float = 5.0
    running_max: float = 20.0
    logs_first: float = 5.0
    logs_max: float = 30.0
    factor: float = 1.6

    def interval(self, attempt: int, first: float, cap: float) -> float:
        return min(cap, first * self.factor**attempt) * self.scale


@dataclass
class UpRequest:
    profile: Profile
    api_url: str
    name: str | None = None
    max_price: float | None = None
    ttl_s: float | None = None
    timeout_s: float | None = None
    max_attempts: int = 1
    keep_on_failure: bool = False
    smoke: bool = True
    # The checks `up` runs before it calls a deployment ready; `glmdeploy smoke`/`ci` run them all.
    smoke_checks: tuple[str, ...] = UP_SMOKE_CHECKS
    force: bool = False
    # The owner scope the instance's label carries (glmdeploy.ownership); None: the state dir's.
    owner: str | None = None
    # Dollars the rented instance may cost (price x time rented) before the wait gives up and tears down.
    max_cost: float | None = None
    # A replica of a group (issue 12, glmdeploy.replicas): its row is a child of ``parent`` and its
    # label the group's plus ``-r<replica_index>``; ``exclude_machines`` keeps replicas on different machines,
    # and offers on ``used_hosts`` (hosts the group's other replicas run on) come after every other host's.
    parent: Deployment | None = None
    replica_index: int | None = None
    exclude_machines: tuple[int, ...] = ()
    used_hosts: tuple[int, ...] = ()


class UpEvents(Protocol):
    """Where `up` reports progress; implementations render it (terminal or NDJSON)."""

    def phase(self, phase: Phase, elapsed_s: float, **detail: Any) -> None: ...

    def note(self, message: str) -> None: ...

    def offers(self, ranked: Sequence[RankedOffer]) -> None: ...

    def progress(self, **fields: Any) -> None:
        """One poll's view of a rented instance: phase, elapsed, status_msg, load stage, ETA, cost, TTL."""
        ...


class StepFailed(DeploymentFailed):
    """A failure after an instance exists: carries what the user needs to understand it."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        phase: Phase,
        excerpt: Sequence[str] = (),
        hint: str | None = None,
        retry_elsewhere: bool = True,
    ) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind
        self.phase = phase
        self.excerpt = list(excerpt)
        # The host it failed on, so a retry with --max-attempts goes elsewhere.
        self.machine_id: int | None = None
        # False when another machine would fail the same way (the image or the profile is the cause).
        self.retry_elsewhere = retry_elsewhere


class EndpointRefused(StepFailed):
    """The endpoint did not present the certificate its host reported (or answered in plain http).

    Its own exit code; the key was never sent. Not retried elsewhere: the interception may sit on the
    path from here, and every retry rents another instance.
    """

    exit_code = EXIT_TLS_REFUSED
    code = "tls_refused"


class CostLimitReached(StepFailed):
    """The accrued cost (dph_total x time rented) reached ``max_cost`` (``ci --max-cost``)."""

    code = "cost_limit"


class PlanRefused(UsageError):
    code = "plan_refused"


class _OfferGone(Exception):
    """The offer was rented by someone else between search and create: nothing exists, try the next."""


def _nothing_rented(exc: AuthError) -> AuthError:
    """The same refusal, saying what it means for the user's money: a refused key rents nothing."""
    return AuthError(
        f"{exc}: nothing was rented",
        status_code=exc.status_code,
        error=exc.error,
        msg=exc.msg,
        operation=exc.operation,
        hint=exc.hint,
    )


@dataclass
class _Attempt:
    offer: Offer
    deployment: Deployment
    instance_id: int | None = None
    machine_id: int | None = None
    # When the instance was rented (clock of the Deployer): the readiness budget counts from here.
    rented_at: float | None = None
    # The KV pool the engine's own startup line reported (issue 11 §5: calibrates the planner).
    kv_tokens_reported: int | None = None
    # Vast.ai refused the create outright (401/403): it is certain that nothing was rented.
    nothing_rented: bool = False
    # The endpoint's pin, from the marked log line, and the client that trusts exactly that certificate.
    tls_fingerprint: str | None = None
    endpoint_http: httpx.Client | None = None


@dataclass
class Deployer:
    """Runs one ``up``. Collaborators are injected so tests can drive it against the sandbox."""

    client: VastClient
    store: StateStore
    events: UpEvents
    confirm: Callable[[RankedOffer], bool]
    pacing: Pacing = field(default_factory=Pacing)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0)))
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    started: float = 0.0
    current: _Attempt | None = None
    # The phase reached last, so a failure that is not a StepFailed (an API error) still says where.
    phase_now: Phase | None = None
    # Runs around every teardown: the command's InterruptGuard.shielded, so a signal cannot cut it short.
    shield: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
    # What the last teardown left ("nothing", "kept" or "orphaned"): an interrupt during it reports this.
    left: str = "nothing"
    max_cost: float | None = None
    # (dph_total, rented_at) of the instance rented last: what --max-cost counts.
    rented: tuple[float | None, float] | None = None
    # Instances rented earlier by this Deployer that stay rented (a replica group's ready replicas,
    # glmdeploy.replicas.add_replica moves each here): --max-cost counts them too.
    still_billing: list[tuple[float | None, float]] = field(default_factory=list)
    # The smoke report of the deployment that became ready (None when --no-smoke): `up` lists what ran.
    smoke_report: Any = None
    # When the current phase began (Deployer clock), for the live display's per-phase elapsed time.
    phase_started: float = 0.0

    # ------------------------------------------------------------------ public

    def up(self, request: UpRequest) -> Deployment:
        self.started = self.clock()
        self.max_cost = request.max_cost
        profile = request.profile
        self._phase(Phase.PLAN_CHECK, None)
        plan = self._plan_check(profile, force=request.force)
        self._check_key()
        cap = profile.hardware.max_price if request.max_price is None else request.max_price
        failed_machines: list[int] = list(request.exclude_machines)
        last_error: GlmdeployError | None = None
        for attempt_no in range(1, max(1, request.max_attempts) + 1):
            self._phase(Phase.SEARCH, None, try_number=attempt_no)
            ranked = self._search_and_rank(profile, cap, failed_machines)
            if request.used_hosts:
                from glmdeploy.market import spread_over_hosts

                ranked = spread_over_hosts(ranked, request.used_hosts)
            try:
                return self._attempt(request, plan, ranked, cap)
            except StepFailed as exc:
                last_error = exc
                if isinstance(exc, CostLimitReached):
                    raise  # another machine would cost more, not less
                if exc.machine_id is not None:
                    failed_machines.append(exc.machine_id)
                if not exc.retry_elsewhere:
                    raise  # the image or the profile: another machine would fail the same way
                if attempt_no < request.max_attempts and not request.keep_on_failure:
                    self.events.note(f"attempt {attempt_no} failed ({exc}); trying another machine")
                    continue
                raise
        assert last_error is not None  # the loop either returns or raises
        raise last_error

    def abort(self, reason: str) -> str:
        """Clean up after an interrupt (Ctrl-C, SIGTERM, SIGHUP): destroy whatever this run rented.

        Returns what is left, as ``_cleanup`` does ("nothing" or "orphaned"); when the interrupt came
        during a teardown already under way, what that teardown left.
        """
        if self.current is None:
            return self.left
        return self._cleanup(self.current, reason=reason, keep=False, status="failed")

    def _billing(self) -> list[tuple[float | None, float]]:
        return [*self.still_billing, *([self.rented] if self.rented is not None else [])]

    def accrued_cost(self) -> float:
        """Dollars the instances rented so far have cost (price x provider time since each was rented):
        the one rented last, plus a replica group's replicas that stay rented."""
        now = self.clock()
        return sum(dph * (now - since) / self.pacing.scale / 3600 for dph, since in self._billing() if dph)

    def check_cost(self) -> None:
        """Raise ``CostLimitReached`` once the rented instances have cost ``max_cost``."""
        billing = self._billing()
        if self.max_cost is None or not billing:
            return
        cost = self.accrued_cost()
        if cost >= self.max_cost:
            dph = sum(d or 0.0 for d, _ in billing)
            raise CostLimitReached(
                f"cost limit reached: ${cost:.3f} accrued at ${dph:.3f}/h (--max-cost "
                f"${self.max_cost:.2f}); tearing down",
                kind="cost_limit",
                phase=self.phase_now or Phase.CREATE,
            )

    # ------------------------------------------------------------------ phases

    def _plan_check(self, profile: Profile, *, force: bool) -> Plan:
        from glmdeploy.planner import plan_profile

        plan = plan_profile(profile)
        if not plan.fits:
            if not force:
                raise PlanRefused(
                    f"profile {profile.name!r} does not fit: {plan.reason}",
                    hint="see 'glmdeploy plan --profile ...'; pass --force to rent anyway",
                )
            self.events.note(f"planner says it does not fit ({plan.reason}); continuing because of --force")
        return plan

    def _check_key(self) -> None:
        """One authenticated call before searching, which needs no key: a wrong key is reported now,
        not after search and ranking, at the create. Only a refused key stops here; any other
        trouble is the later calls' to report (the create authenticates anyway)."""
        try:
            next(iter(self.client.iter_instances()), None)
        except AuthError as exc:
            raise _nothing_rented(exc) from None
        except VastError as exc:
            self.events.note(f"could not check the API key before searching ({exc}); going on")

    def _search_and_rank(self, profile: Profile, cap: float, failed: list[int]) -> list[RankedOffer]:
        from glmdeploy.market import search_ranked

        ranked = search_ranked(self.client, profile, max_price=cap, exclude_machines=tuple(failed))
        self._phase(Phase.RANK, None, offers=len(ranked))
        if not ranked:
            raise NoOfferError(
                f"no offer matches profile {profile.name!r} under ${cap:.2f}/h",
                hint="raise the cap with --max-price, or see 'glmdeploy offers --profile ...'",
            )
        self.events.offers(ranked[:TOP_OFFERS_SHOWN])
        return ranked

    def _attempt(self, request: UpRequest, plan: Plan, ranked: list[RankedOffer], cap: float) -> Deployment:
        """Rent the best offer that is still there (offers vanish between search and create)."""
        warned = False
        for candidate in ranked[:OFFERS_TRIED]:
            offer = self._confirm_and_recheck(request.profile, candidate, cap)
            if offer is None:
                continue
            if offer.host_id is not None and offer.host_id in request.used_hosts and not warned:
                warned = True  # one line, even when the first such offer was taken and the next is tried
                self.events.note(
                    f"warning: no matching offer on a host the group does not use yet: renting machine "
                    f"{offer.machine_id} of host {offer.host_id}, which already runs a replica"
                )
            try:
                return self._deploy(request, offer, plan)
            except _OfferGone:
                self.events.note(f"offer {offer.id} was taken before it could be rented; trying the next one")
        raise NoOfferError(
            f"every matching offer for profile {request.profile.name!r} was taken or moved above ${cap:.2f}/h",
            hint="try again in a minute, or raise the cap with --max-price",
        )

    def _deploy(self, request: UpRequest, offer: Offer, plan: Plan) -> Deployment:
        key = secrets.token_hex(32)
        # Shielded until `current` holds the row: a signal meanwhile is raised after that, so the abort
        # that follows closes the record instead of leaving a deployment "creating" forever.
        with self.shield():
            attempt = self._open_record(request, offer, key)
        deployment = attempt.deployment
        try:
            self._create(request, attempt, key)
            instance = self._wait_running(request, attempt)
            if request.ttl_s:
                # The watchdog starts with the container (onstart runs then): count from now.
                self.store.update(deployment.id, expires_at=self._expiry(request))
            endpoint = self._wait_ready(request, attempt, instance, key)
            self._phase(Phase.RESOLVE_ENDPOINT, attempt)
            self._verify_endpoint(attempt, endpoint, key)
            if request.smoke:
                self._phase(Phase.SMOKE, attempt)
                self._smoke(request, attempt, endpoint, key)
            done = self.store.update(
                deployment.id,
                status="ready",
                phase=Phase.DONE.value,
                endpoint=endpoint,
                ready_at=_now(),
                error=None,
                kv_tokens_planned=plan.kv_pool_tokens,
                kv_tokens_planned_low=plan.uncertainty.kv_pool_tokens_low,
                kv_tokens_planned_high=plan.uncertainty.kv_pool_tokens_high,
                kv_tokens_reported=attempt.kv_tokens_reported,
            )
        except _OfferGone:
            self.current = None
            self._closing_write(deployment.id, status="failed", error="offer taken before it was rented",
                                destroyed=True)
            raise
        except DeploymentReleased:
            # `destroy` in another process closed this deployment while we were working on it. Whatever
            # we rented since (a create that landed after it looked) is ours to destroy.
            self._cleanup(attempt, reason="destroyed by another command", keep=False, status="destroyed")
            raise self._released(deployment) from None
        except (StepFailed, SmokeFailed, VastError) as exc:
            if isinstance(exc, StepFailed):
                exc.machine_id = attempt.machine_id
            if self._destroyed_elsewhere(deployment.id):
                # The instance vanished because `destroy` ran in another terminal: say that, not "404".
                self._cleanup(attempt, reason="destroyed by another command", keep=False, status="destroyed")
                raise self._released(deployment) from None
            left = self._cleanup(attempt, reason=str(exc), keep=request.keep_on_failure, status="failed")
            if left == "orphaned":
                # The one line the user reads must say that something may still bill, and what to run.
                hint = orphan_hint(exc)
                exc.hint = hint if not exc.hint else f"{exc.hint}; then {hint}"
            raise
        self._close_endpoint_http(attempt)
        self._phase(Phase.DONE, None, endpoint=endpoint)
        self.current = None
        return done

    def _expiry(self, request: UpRequest) -> Any:
        """When the host watchdog destroys the instance (the wall clock; the sandbox's runs faster)."""
        if not request.ttl_s:
            return None
        return _now() + timedelta(seconds=request.ttl_s * self.pacing.scale)

    def _destroyed_elsewhere(self, deployment_id: str) -> bool:
        """``destroy`` in another terminal closed the record, or is destroying the instance right now.

        That ``destroy`` marks the row "destroying" before its DELETE and closes it only once it has
        verified the instance gone: a failure seen in between (the engine's port refusing, a logs
        request answered 404) is the other command's doing, not this deployment's failure. Nothing in
        this process marks the row "destroying" before this check: its own teardown comes after.
        """
        row = self.store.get(deployment_id)
        return not row.is_active or row.status == "destroying"

    @staticmethod
    def _released(deployment: Deployment) -> DeploymentFailed:
        return DeploymentFailed(
            f"deployment {deployment.name!r} was destroyed by another glmdeploy command while 'up' ran"
        )

    def _confirm_and_recheck(self, profile: Profile, candidate: RankedOffer, cap: float) -> Offer | None:
        offer: Offer = candidate.offer  # type: ignore[assignment]
        self._phase(Phase.CONFIRM, None, offer=offer.id, dph_total=offer.dph_total)
        if not self.confirm(candidate):
            raise Declined("declined: nothing was rented")
        # Prices move and offers vanish: look at the exact offer right before renting (anchors.md §1.5).
        query = offer_query(profile.hardware)
        query.pop("dph_total", None)
        query["id"] = {"eq": offer.id}
        fresh = [o for o in self.client.search_offers(query) if o.id == offer.id]
        if not fresh:
            self.events.note(f"offer {offer.id} is no longer listed; trying the next one")
            return None
        offer = fresh[0]
        if offer.dph_total is not None and offer.dph_total > cap:
            self.events.note(f"offer {offer.id} now costs ${offer.dph_total:.3f}/h, above the cap; skipping it")
            return None
        return offer

    def _create(self, request: UpRequest, attempt: _Attempt, key: str) -> None:
        profile = request.profile
        d = attempt.deployment
        onstart = render(
            profile,
            OnstartOptions(deployment=d.name, ttl_seconds=int(request.ttl_s) if request.ttl_s else None),
        )
        env = {
            f"-p {profile.engine.port}:{profile.engine.port}": "1",
            **profile.env,
            API_KEY_ENV: key,
            VAST_URL_ENV: request.api_url,
        }
        self._phase(Phase.CREATE, attempt, offer=attempt.offer.id)
        for tries in range(2):
            try:
                result = self.client.create_instance(
                    attempt.offer.id,
                    image=profile.engine.image,
                    env=env,
                    onstart=onstart,
                    disk=profile.hardware.disk_gb,
                    label=d.label,
                )
            except CreateOutcomeUnknown:
                found = self._find_by_label(d.label)
                if found is not None:
                    self.events.note(f"create timed out, but instance {found.id} exists with our label; using it")
                    self._record_instance(attempt, found.id, found.machine_id)
                    return
                if tries == 0:
                    self.events.note("create timed out and no instance carries our label; retrying once")
                    continue
                raise
            except OfferUnavailable:
                raise _OfferGone from None
            except AuthError as exc:
                # Refused before anything was created: say so, so no one goes looking for a billing instance.
                attempt.nothing_rented = True
                raise _nothing_rented(exc) from None
            if result.new_contract is None:
                raise StepFailed(
                    "Vast.ai accepted the create but returned no instance id", kind="create", phase=Phase.CREATE
                )
            self._record_instance(attempt, result.new_contract, attempt.offer.machine_id)
            if result.created_stopped:
                raise StepFailed(
                    f"instance {result.new_contract} was created stopped (resources unavailable)",
                    kind="created_stopped",
                    phase=Phase.CREATE,
                )
            return

    def _open_record(self, request: UpRequest, offer: Offer, key: str) -> _Attempt:
        profile = request.profile
        engine = get_engine(profile.engine.kind)
        deployment = self.store.create(
            profile=profile.name,
            profile_snapshot=profile.model_dump(mode="json"),
            name=request.name,
            api_url=request.api_url,
            expires_at=self._expiry(request),
            endpoint_api_key=key,
            model=engine.reported_model_name(profile),
            phase=Phase.CREATE.value,
            owner=request.owner,
            parent=request.parent,
            replica_index=request.replica_index,
        )
        attempt = _Attempt(offer=offer, deployment=deployment)
        self.current = attempt
        return attempt

    def _find_by_label(self, label: str) -> Instance | None:
        for instance in self.client.list_instances(label=label):
            if instance.label == label:
                return instance
        return None

    def _record_instance(self, attempt: _Attempt, instance_id: int, machine_id: int | None) -> None:
        attempt.instance_id = instance_id
        attempt.rented_at = self.clock()
        attempt.machine_id = machine_id
        offer = attempt.offer
        self.rented = (offer.dph_total, attempt.rented_at)
        self.store.update(
            attempt.deployment.id,
            instance_id=instance_id,
            machine_id=machine_id,
            offer_id=offer.id,
            offer_snapshot=offer.model_dump(mode="json"),
            dph_total=offer.dph_total,
        )

    def _deadline(self, request: UpRequest, attempt: _Attempt) -> float:
        # Durations are in the provider's time: the sandbox's clock runs `scale` times faster.
        # The budget is the instance's, so it starts when it was rented: waits for rate limits or a
        # flaky search before that cost nothing and must not eat the time the engine needs to load
        # (on the sandbox, a real-time Retry-After of 1 s is 1000 simulated seconds).
        timeout = request.timeout_s or request.profile.readiness.timeout_s
        start = attempt.rented_at if attempt.rented_at is not None else self.clock()
        return start + timeout * self.pacing.scale

    def _wait_running(self, request: UpRequest, attempt: _Attempt) -> Instance:
        self._phase(Phase.WAIT_RUNNING, attempt)
        assert attempt.instance_id is not None
        deadline = self._deadline(request, attempt)
        last_msg: str | None = None
        polls = 0
        while True:
            instance = self.client.show_instance(attempt.instance_id)
            if instance is None:
                raise StepFailed(
                    f"instance {attempt.instance_id} disappeared while starting",
                    kind="vanished",
                    phase=Phase.WAIT_RUNNING,
                )
            if instance.machine_id is not None:
                attempt.machine_id = instance.machine_id
            if instance.status_msg and instance.status_msg != last_msg:
                last_msg = instance.status_msg
                self.events.note(f"instance {instance.id}: {instance.actual_status or 'provisioning'}: {last_msg}")
            status = instance.actual_status
            # An error status_msg while still loading (a pull error) or a dead state ends the wait now.
            failure = instance_failure(instance.id, status, instance.status_msg)
            if failure is not None:
                raise _failed(failure, Phase.WAIT_RUNNING)
            if status == "running":
                return instance
            self._progress(attempt, instance.status_msg)
            if self.clock() >= deadline:
                raise StepFailed(
                    f"instance {instance.id} still '{status or 'provisioning'}' at the timeout",
                    kind="timeout",
                    phase=Phase.WAIT_RUNNING,
                    hint="raise --timeout, or try another offer",
                )
            self._wait(self.pacing.interval(polls, self.pacing.running_first, self.pacing.running_max), deadline)
            polls += 1

    def _wait_ready(self, request: UpRequest, attempt: _Attempt, instance: Instance, key: str) -> str:
        """Poll logs, instance and health until ``ReadyWait`` (readiness.py) says ready or failed."""
        from glmdeploy.engines.health import HealthReading, HealthState, probe_health

        self._phase(Phase.WAIT_READY, attempt)
        profile = request.profile
        engine = get_engine(profile.engine.kind)
        rule = ReadyWait(engine, container_port=profile.engine.port)
        deadline = self._deadline(request, attempt)
        endpoint: str | None = instance.service_url(profile.engine.port)
        # The look that saw it running counts: a host that maps no port has shown it once already.
        failure = rule.feed_instance(instance.id, instance.actual_status, instance.status_msg, endpoint)
        if failure is not None:
            raise _failed(failure, Phase.WAIT_READY)
        polls = 0
        looks = 0
        seen = 0
        status_msg = instance.status_msg
        tracker = LoadTracker(download_s=self._download_estimate_s(profile, attempt.offer))
        if engine.model_dir(profile) is not None:
            tracker.begin_download(self._provider_now())  # the onstart's `hf download` runs first
        assert attempt.instance_id is not None
        while True:
            # An engine may print its arguments, key included: the lines that reach the failure
            # message, the log excerpt and the state DB are masked before anything reads them.
            verdict = rule.feed_logs(_masked(self.client.request_logs(attempt.instance_id, tail=LOG_TAIL), key))
            tracker.feed(rule.watcher.fresh, self._provider_now())
            if verdict.failure_is_generic:
                # The cause usually follows in the traceback: read once more before giving up.
                self._wait(self.pacing.interval(0, self.pacing.logs_first, self.pacing.logs_max), deadline)
                verdict = rule.feed_logs(_masked(self.client.request_logs(attempt.instance_id, tail=LOG_TAIL), key))
                tracker.feed(rule.watcher.fresh, self._provider_now())
            failure = rule.log_failure()
            if failure is not None:
                raise _failed(failure, Phase.WAIT_READY)
            fingerprint = fingerprint_in_log(rule.watcher.fresh)
            if fingerprint is not None and fingerprint != attempt.tls_fingerprint:
                # Read through the authenticated Vast API: the pin a man in the middle cannot touch.
                attempt.tls_fingerprint = fingerprint
                self._close_endpoint_http(attempt)
                self.store.update(attempt.deployment.id, tls_fingerprint=fingerprint)
            # The instance is looked at every poll until its port is known, then every other poll, so
            # a state or status_msg change is seen within two polls.
            looks += 1
            if endpoint is None or looks % 2 == 0 or verdict.ready:
                refreshed = self.client.show_instance(attempt.instance_id)
                if refreshed is None:
                    raise StepFailed("instance disappeared while loading", kind="vanished", phase=Phase.WAIT_READY)
                endpoint = refreshed.service_url(profile.engine.port)
                status_msg = refreshed.status_msg
                failure = rule.feed_instance(refreshed.id, refreshed.actual_status, refreshed.status_msg, endpoint)
                if failure is not None:
                    raise _failed(failure, Phase.WAIT_READY)
            if endpoint is not None and attempt.tls_fingerprint is not None:
                # The engine's port costs no Vast.ai request: probe it every poll, so an engine that
                # exits (its port refuses again, the log stops) is seen at the next poll. Only over TLS
                # that presents the pinned certificate: before the pin is known nothing is sent.
                endpoint = https_url(endpoint)
                http = self._endpoint_http(attempt, endpoint)
                reading = (probe_health(engine, http, endpoint, key) if http is not None
                           else HealthReading(HealthState.REFUSED, engine.health_path, detail="connection refused"))
                failure = rule.feed_health(reading)
                if failure is not None:
                    raise _failed(failure, Phase.WAIT_READY)
                if verdict.ready and reading.healthy:
                    attempt.kv_tokens_reported = verdict.kv_tokens
                    return endpoint + "/v1"
            self._progress(attempt, status_msg, tracker)
            if self.clock() >= deadline:
                why = "the ready marker never appeared" if not verdict.ready else "the health check never passed"
                if attempt.tls_fingerprint is None:
                    why += " (the host never logged its TLS certificate's fingerprint)"
                if endpoint is None:
                    why = "the port was never mapped (ports stayed null)"
                raise StepFailed(
                    f"engine not ready at the timeout: {why}",
                    kind="timeout",
                    phase=Phase.WAIT_READY,
                    excerpt=verdict.excerpt,
                    hint="raise --timeout or the profile's readiness.timeout",
                )
            # New engine output means progress: keep polling at the current pace instead of backing off.
            if rule.progress == seen:
                polls += 1
            seen = rule.progress
            self._wait(self.pacing.interval(polls, self.pacing.logs_first, self.pacing.logs_max), deadline)

    def _endpoint_http(self, attempt: _Attempt, endpoint: str) -> httpx.Client | None:
        """The client that trusts only the pinned certificate, once one TLS handshake presented it.

        None while the port refuses or times out (not yet up). A different certificate or a plain-http
        answer is ``EndpointRefused``: nothing has been sent, least of all the key.
        """
        if attempt.endpoint_http is not None:
            return attempt.endpoint_http
        assert attempt.tls_fingerprint is not None
        from glmdeploy.tls import pinned_context

        try:
            pem = pin_certificate(endpoint, attempt.tls_fingerprint, timeout_s=10.0)
        except EndpointNotTrusted as exc:
            raise EndpointRefused(str(exc), kind=exc.code, phase=Phase.WAIT_READY, hint=exc.hint,
                                  retry_elsewhere=False) from None
        except OSError:
            return None
        self.store.update(attempt.deployment.id, tls_certificate=pem)
        attempt.endpoint_http = httpx.Client(verify=pinned_context(pem), timeout=self.http.timeout,
                                             follow_redirects=False, trust_env=False)
        return attempt.endpoint_http

    @staticmethod
    def _close_endpoint_http(attempt: _Attempt) -> None:
        if attempt.endpoint_http is not None:
            attempt.endpoint_http.close()
            attempt.endpoint_http = None

    def _verify_endpoint(self, attempt: _Attempt, endpoint: str, key: str) -> None:
        http = attempt.endpoint_http
        assert http is not None
        try:
            r = http.get(endpoint + "/models", headers={"Authorization": f"Bearer {key}"})
            ids = [m.get("id") for m in r.json().get("data", [])] if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            ids = []
        if not ids:
            raise StepFailed(
                f"the endpoint {endpoint} is not reachable from here or lists no model",
                kind="unreachable",
                phase=Phase.RESOLVE_ENDPOINT,
            )
        self.store.update(attempt.deployment.id, endpoint=endpoint)

    def _smoke(self, request: UpRequest, attempt: _Attempt, endpoint: str, key: str) -> None:
        from glmdeploy.smoke import smoke_endpoint

        report = smoke_endpoint(
            endpoint,
            key,
            model=attempt.deployment.model,
            profile=request.profile,
            only=request.smoke_checks,
            http=attempt.endpoint_http,
            on_result=lambda r: self.events.note(f"smoke {r.name}: {r.status}: {r.detail}")
            if r.status != "passed"
            else None,
        )
        self.smoke_report = report
        report.raise_for_failure()

    # ------------------------------------------------------------------ cleanup

    def _cleanup(self, attempt: _Attempt, *, reason: str, keep: bool, status: str) -> str:
        """Destroy what this attempt rented; returns what is left: "nothing", "kept" or "orphaned".

        Runs shielded: a signal that arrives meanwhile is acted on once the teardown is over.
        """
        self._close_endpoint_http(attempt)
        with self.shield():
            self.left = self._tear_down_attempt(attempt, reason=reason, keep=keep, status=status)
        return self.left

    def _tear_down_attempt(self, attempt: _Attempt, *, reason: str, keep: bool, status: str) -> str:
        d = attempt.deployment
        self.current = None
        if attempt.instance_id is None:
            if attempt.nothing_rented:
                self._closing_write(d.id, status="failed", error=reason, destroyed=True)
                return "nothing"
            # The row exists but nothing was rented, unless a create is in doubt: look by label.
            try:
                found = self._find_by_label(d.label)
            except GlmdeployError as exc:
                self._closing_write(d.id, status="orphaned", error=f"{reason}; could not check for an instance")
                self.events.note(
                    f"could not check whether the create rented an instance ({exc}); "
                    f"it would carry the label {d.label}: run 'glmdeploy destroy --orphans'"
                )
                return "orphaned"
            if found is None:
                self._closing_write(d.id, status="failed", error=reason, destroyed=True)
                return "nothing"
            attempt.instance_id = found.id
            self._closing_write(d.id, instance_id=found.id, machine_id=found.machine_id)
        if keep:
            self._closing_write(d.id, status="failed", error=reason)
            self.events.note(
                f"kept instance {attempt.instance_id} for debugging (--keep-on-failure); it is still billing: "
                f"run 'glmdeploy destroy {d.name}' when done"
            )
            return "kept"
        result = tear_down(
            self.client,
            attempt.instance_id,
            pacing=self.pacing,
            store=self.store,
            deployment=d,
            reason=reason,
            status="failed" if status == "failed" else "destroyed",
            sleep=self.sleep,
        )
        self.events.note(result.message())
        return result.left

    def _closing_write(self, deployment_id: str, *, destroyed: bool = False, **fields: Any) -> None:
        """A write made while tearing down. If another process already closed the row (``destroy`` in
        another terminal), its record stands: the teardown goes on, the row is left as it is."""
        try:
            if destroyed:
                self.store.mark_destroyed(deployment_id, status=fields["status"], error=fields.get("error"))
            else:
                self.store.update(deployment_id, **fields)
        except DeploymentReleased:
            pass

    # ------------------------------------------------------------------ plumbing

    def _provider_now(self) -> float:
        """Seconds since `up` started, in the provider's time (the sandbox's clock runs faster)."""
        return (self.clock() - self.started) / self.pacing.scale

    @staticmethod
    def _download_estimate_s(profile: Profile, offer: Offer) -> float | None:
        from glmdeploy.ranking import estimated_download_minutes

        minutes = estimated_download_minutes(profile.model.weights_gb, offer.inet_down)
        return minutes * 60 if math.isfinite(minutes) else None

    def _progress(self, attempt: _Attempt, status_msg: str | None, tracker: LoadTracker | None = None) -> None:
        """Tell the display where a rented instance is: every poll of the waits (issue 13 §1)."""
        report = getattr(self.events, "progress", None)
        if report is None or self.phase_now is None:
            return
        now = self._provider_now()
        load = tracker.progress(now) if tracker is not None else None
        expires = self.store.get(attempt.deployment.id).expires_at
        report(
            phase=self.phase_now.value,
            elapsed_s=round(now, 1),
            phase_elapsed_s=round((self.clock() - self.phase_started) / self.pacing.scale, 1),
            status_msg=status_msg,
            stage=load.stage if load else None,
            percent=load.percent if load else None,
            eta_s=load.eta_s if load else None,
            estimated=load.estimated if load else None,
            spent_usd=round(self.accrued_cost(), 4),
            dph_total=attempt.offer.dph_total,
            expires_at=expires.isoformat(timespec="seconds") if expires is not None else None,
            clock_scale=self.pacing.scale,
        )

    def _phase(self, phase: Phase, attempt: _Attempt | None, **detail: Any) -> None:
        self.phase_now = phase
        self.phase_started = self.clock()
        if attempt is not None:
            fields: dict[str, Any] = {"phase": phase.value}
            status = PHASE_STATUS.get(phase)
            if status is not None:
                fields["status"] = status
            self.store.update(attempt.deployment.id, **fields)
        self.events.phase(phase, round(self.clock() - self.started, 3), **detail)

    def _wait(self, seconds: float, deadline: float) -> None:
        self.check_cost()
        self.sleep(max(0.0, min(seconds, deadline - self.clock())))


def _failed(failure: LaunchFailure, phase: Phase) -> StepFailed:
    return StepFailed(
        failure.message,
        kind=failure.kind,
        phase=phase,
        excerpt=failure.excerpt,
        hint=failure.advice,
        retry_elsewhere=failure.host_fault,
    )


def _masked(text: str, key: str) -> str:
    return text.replace(key, "[redacted]") if key else text


def _now() -> Any:
    from glmdeploy.state import utcnow

    return utcnow()


__all__ = [
    "ORPHAN_HINT",
    "AuthError",
    "CostLimitReached",
    "Deployer",
    "Pacing",
    "Phase",
    "PlanRefused",
    "StepFailed",
    "UpEvents",
    "UpRequest",
]
