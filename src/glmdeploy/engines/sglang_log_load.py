"""SGLang's load read from its own log, for deployments launched without ``--enable-metrics``.

Without that flag SGLang mounts no ``/metrics`` (engines.md §2), but its scheduler still logs its load
(the rank-0 scheduler, ``current_scheduler_metrics_enabled``, whatever ``--enable-metrics`` says). The
lines as SGLang 0.5.7, 0.5.8 and 0.5.9 write them (their PyPI wheels, ``sglang/srt/managers/
scheduler_metrics_mixin.py`` ``log_prefill_stats``/``log_decode_stats``; the same text at
sgl-project/sglang@78ac30c2056f, python/sglang/srt/managers/scheduler_metrics_mixin.py). The profile's
image ``dev-pr-17247`` is a PR build between 0.5.7 and 0.5.8 that no store holds; both sides write
(one line each, cut here; 0.5.9 drops the last ``, `` and ends Prefill lines with ``input throughput
(token/s): X, cuda graph: B``)::

    [2026-01-20 10:00:05 TP0] Prefill batch, #new-seq: 1, #new-token: 7, #cached-token: 0,
        token usage: 0.00, #running-req: 0, #queue-req: 0,
    [2026-01-20 10:00:06 TP0] Decode batch, #running-req: 1, #token: 43, token usage: 0.00,
        cuda graph: True, gen throughput (token/s): 48.31, #queue-req: 0,

- Prefix: ``[%Y-%m-%d %H:%M:%S`` (``.mmm`` with ``SGLANG_LOG_MS``) then the scheduler's ranks (`` TP0``,
  `` DP1 TP0``, `` PP0 TP0``...) (``srt/utils/common.py`` ``configure_logger``; ``scheduler.py``
  ``run_scheduler_process``). The time is the container's local clock.
- ``Decode batch`` is logged every ``--decode-log-interval`` decode steps (default 40;
  ``scheduler_output_processor_mixin.py``: ``forward_ct_decode % decode_log_interval == 0``), i.e.
  every second or two while anything generates. ``Prefill batch`` is logged for every batch of new
  requests admitted. **Nothing is logged while the engine is idle**, and nothing when the last request
  ends: the last line says what was running then, not now.
- ``#running-req`` in a Decode line is the decode batch; in a Prefill line it is the decode batch
  *without* the ``#new-seq`` requests being prefilled (``running_bs = len(self.running_batch.reqs)``),
  so a Prefill line reads as running = ``#running-req + #new-seq``. ``#queue-req`` is the waiting queue.
  ``token usage`` (two decimals) is the KV pool's share held by requests: ``(total - available -
  evictable) / total`` (``scheduler_runtime_checker_mixin.py`` ``_get_token_info``), so the prefix cache
  of finished requests (evictable) does not count and an idle engine holds 0. Hybrid pools print ``full
  token usage``/``swa token usage``; the larger is taken, as SGLang's own gauge does.
- ``GET /health`` (and ``/health_generate``) sends a one-token generation (``input_ids=[0]``,
  ``max_new_tokens`` 1; on by default, ``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION``, 0.5.7-0.5.9
  ``srt/entrypoints/http_server.py`` ``health_generate``), which the scheduler drops while a batch runs
  (``scheduler.py`` ``process_input_requests``) and otherwise prefills: ``Prefill batch, #new-seq: 1,
  #new-token: 1, #cached-token: 0, ..., #running-req: 0``. That line (one sequence, one token) is not
  load: it reads as running ``#running-req``, and it says the engine was idle then, so the watch's own
  health probe, logged just before it fetches the log, dates an idle engine's reading.
- Older releases wrote ``Decode batch. #running-req: ...`` (a full stop); ``SGLANG_LOG_FORWARD_ITERS``
  adds `` [N]`` after ``batch``. Both are read.

How a reading is judged (``read_log_load``):

- Only lines after the log's last ``The server is fired up and ready to roll!`` count: earlier batch
  lines are the warmup request's, or a previous engine process's.
- "Now" on the log's clock is the newest timestamp in the text, not our clock: the container's clock
  may be another zone or skewed (and the sandbox's is shifted). ``status --watch`` probes ``/health``
  right before it fetches the log and SGLang's access log writes that probe, so the newest line is
  within moments of the fetch.
- The latest batch line (per scheduler prefix; several data-parallel ranks add up) gives running,
  waiting and KV usage, if it is at most ``IDLE_AFTER_S`` older than the log's now. When it is the
  health check's line, the reading is idle at that time (running ``#running-req``, i.e. 0) and says so.
- Older than that, or no batch line since ready: SGLang would have logged a Decode line within a few
  seconds if anything ran, so the engine is idle, and the reading is running 0, waiting 0 and KV 0 (what
  SGLang's own gauges say of an idle scheduler), with a note saying it is inferred from silence since
  that time. A log with no SGLang line at all gives no figures.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from glmdeploy.engines.metrics import EngineLoad

READY_MARKER = "The server is fired up and ready to roll!"
# A Decode line comes every 40 decode steps while anything runs (a second or two); this much silence
# on the log's clock means nothing ran.
IDLE_AFTER_S = 15.0
# Vast's request_logs is slow (the host uploads the log, then it is polled for up to ~9 s) and rate
# limited (vast-api.md §2.3, §7): one fetch per this many seconds of wall time, the reading reused between.
LOG_FETCH_EVERY_S = 30.0
# Lines asked of the log's tail: at any traffic a batch line comes every second or two, so this reaches back
# well past IDLE_AFTER_S.
LOG_TAIL_LINES = 400

_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{3}))?([^\]]*)\] ")
_BATCH = re.compile(r"^(Prefill|Decode) batch(?: \[\d+\])?[.,] (.*)$")


@dataclass(frozen=True)
class BatchLine:
    """One scheduler batch line."""

    at: datetime  # the container's clock
    ranks: str  # the scheduler's prefix after the time (" TP0"), one per data-parallel rank
    kind: str  # "Prefill" or "Decode"
    health_check: bool  # SGLang's own one-token /health generation, run only when no batch runs
    running: int
    waiting: int
    kv_usage: float | None


@dataclass(frozen=True)
class LogLoad:
    """What the log says of the load: the figures, and the time they are from (the log's clock)."""

    load: EngineLoad
    as_of: datetime | None  # the batch line's time, or the start of the silence an idle reading rests on
    idle: bool


def _stamp(line: str) -> tuple[datetime, str, str] | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    if match.group(2):
        at = at.replace(microsecond=int(match.group(2)) * 1000)
    return at, match.group(3), line[match.end():]


def parse_batch_line(line: str) -> BatchLine | None:
    """A ``Prefill batch``/``Decode batch`` line, or None for any other line."""
    stamped = _stamp(line.strip())
    if stamped is None:
        return None
    at, ranks, message = stamped
    match = _BATCH.match(message)
    if match is None:
        return None
    fields: dict[str, str] = {}
    for part in match.group(2).split(","):
        key, sep, value = part.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    kind = match.group(1)
    try:
        running = int(fields["#running-req"])
        waiting = int(fields["#queue-req"])
        usages = [float(v) for k, v in fields.items() if k.endswith("token usage")]
        new_seqs = int(fields.get("#new-seq", "0"))
        new_tokens = int(fields.get("#new-token", "0")) + int(fields.get("#cached-token", "0"))
    except (KeyError, ValueError):
        return None
    health_check = kind == "Prefill" and new_seqs == 1 and new_tokens <= 1
    if kind == "Prefill" and not health_check:
        running += new_seqs  # the requests being prefilled run too
    return BatchLine(at, ranks, kind, health_check, running, waiting, max(usages) if usages else None)


def latest_kind(latest: dict[str, BatchLine]) -> str:
    return max(latest.values(), key=lambda b: b.at).kind


def read_log_load(text: str) -> LogLoad | None:
    """The load SGLang's log text says, judged as the module docstring says; None: no SGLang line in it."""
    first_at: datetime | None = None
    newest: datetime | None = None
    ready_at: datetime | None = None
    latest: dict[str, BatchLine] = {}
    for line in text.splitlines():
        line = line.strip()
        stamped = _stamp(line)
        if stamped is None:
            continue
        at, _ranks, message = stamped
        first_at = first_at or at
        newest = at if newest is None or at > newest else newest
        if message.startswith(READY_MARKER):
            ready_at, latest = at, {}  # what came before is the warmup's or an earlier process's
            continue
        batch = parse_batch_line(line)
        if batch is not None:
            latest[batch.ranks] = batch
    if newest is None:
        return None
    if latest:
        last = max(b.at for b in latest.values())
        if (newest - last).total_seconds() <= IDLE_AFTER_S:
            kvs = [b.kv_usage for b in latest.values() if b.kv_usage is not None]
            running = sum(b.running for b in latest.values())
            idle = running == 0 and all(b.health_check for b in latest.values())
            what = (f"idle at {last:%H:%M:%S} (SGLang's health check ran, which it does only when no batch runs)"
                    if idle else f"{latest_kind(latest)} batch at {last:%H:%M:%S}")
            load = EngineLoad(running, sum(b.waiting for b in latest.values()), max(kvs) if kvs else None,
                              note=what, source="log")
            return LogLoad(load, last, idle=idle)
        since, what = last, f"no batch logged since {last:%H:%M:%S}"
    elif ready_at is not None:
        since, what = ready_at, f"no batch logged since the engine was ready at {ready_at:%H:%M:%S}"
    else:
        assert first_at is not None
        since, what = first_at, f"no batch logged since {first_at:%H:%M:%S} (the oldest line fetched)"
    return LogLoad(EngineLoad(0, 0, 0.0, note=f"{what}: idle", source="log"), since, idle=True)


class LogFetchError(Exception):
    """The log could not be fetched; the message says why (it is shown as a note)."""


class ThrottledLogLoad:
    """``read()`` on every refresh, ``fetch()`` (the instance log's text) at most once per ``every_s``.

    Between fetches the last reading is returned again with its age in the note. A failed fetch is a
    note (with the last good reading, if any, and its age), never an exception; it also waits ``every_s``.
    """

    def __init__(self, fetch: Callable[[], str], *, every_s: float = LOG_FETCH_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._every_s = every_s
        self._clock = clock
        self._fetched_at: float | None = None
        self._reading: LogLoad | None = None
        self._read_at: float | None = None  # when the reading was fetched
        self._error: str | None = None
        self.fetches = 0

    def read(self) -> EngineLoad:
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._every_s:
            self._fetched_at = now
            self.fetches += 1
            try:
                text = self._fetch()
            except LogFetchError as exc:
                self._error = f"could not fetch the log: {exc}"
            else:
                self._error = None
                self._reading, self._read_at = read_log_load(text), now
        notes: list[str] = []
        load = EngineLoad()
        if self._reading is not None and self._read_at is not None:
            load = self._reading.load
            notes.append(f"from the log: {load.note}")
            age = now - self._read_at
            if age >= 1:
                notes.append(f"fetched {age:.0f}s ago")
        elif self._read_at is not None:
            notes.append("the log has no SGLang line yet")
        if self._error:
            notes.append(self._error)
        return replace(load, note="; ".join(notes) or None)


__all__ = ["IDLE_AFTER_S", "LOG_FETCH_EVERY_S", "LOG_TAIL_LINES", "READY_MARKER", "BatchLine", "LogFetchError",
           "LogLoad", "ThrottledLogLoad", "parse_batch_line", "read_log_load"]
