"""SGLang's load read from its log (issue 13 item 6, SGLang without --enable-metrics), on lines in the exact
format SGLang 0.5.8/0.5.9 write (sglang/srt/managers/scheduler_metrics_mixin.py, see the module's docstring)."""

from __future__ import annotations

from datetime import datetime

import pytest

from glmdeploy.engines.sglang_log_load import (
    IDLE_AFTER_S,
    LogFetchError,
    ThrottledLogLoad,
    parse_batch_line,
    read_log_load,
)

READY = "[2026-01-20 10:00:00] The server is fired up and ready to roll!"
WARMUP = ("[2026-01-20 09:59:58 TP0] Prefill batch, #new-seq: 1, #new-token: 7, #cached-token: 0, token usage: 0.00, "
          "#running-req: 0, #queue-req: 0, ")
# 0.5.8 (log_prefill_stats / log_decode_stats, both ending ", ")
PREFILL_058 = ("[2026-01-20 10:00:05 TP0] Prefill batch, #new-seq: 2, #new-token: 412, #cached-token: 0, "
               "token usage: 0.01, #running-req: 3, #queue-req: 1, ")
DECODE_058 = ("[2026-01-20 10:00:06 TP0] Decode batch, #running-req: 5, #token: 1843, token usage: 0.04, "
              "cuda graph: True, gen throughput (token/s): 231.57, #queue-req: 1, ")
# 0.5.9: Prefill lines end with input throughput and the graph flag, Decode lines without the last ", ";
# with EAGLE, accept len/rate come before the graph flag.
PREFILL_059 = ("[2026-02-23 10:00:05 TP0] Prefill batch, #new-seq: 1, #new-token: 9, #cached-token: 0, "
               "token usage: 0.02, #running-req: 0, #queue-req: 0, input throughput (token/s): 0.00, cuda graph: False")
DECODE_059_EAGLE = ("[2026-02-23 10:00:06 TP0] Decode batch, #running-req: 2, #token: 981, token usage: 0.12, "
                    "accept len: 3.21, accept rate: 0.80, cuda graph: True, gen throughput (token/s): 97.40, "
                    "#queue-req: 0")
ACCESS = '[2026-01-20 10:00:07] INFO:     10.0.0.2:51234 - "GET /health HTTP/1.1" 200 OK'
# GET /health's own one-token generation (input_ids=[0], max_new_tokens 1), prefilled only when no batch runs.
HEALTH_CHECK = ("[2026-01-20 10:00:09 TP0] Prefill batch, #new-seq: 1, #new-token: 1, #cached-token: 0, "
                "token usage: 0.00, #running-req: 0, #queue-req: 0, ")


@pytest.mark.parametrize(("line", "expected"), [
    (DECODE_058, ("Decode", 5, 1, 0.04)),
    (PREFILL_058, ("Prefill", 5, 1, 0.01)),  # the decode batch (3) plus the two being prefilled
    (PREFILL_059, ("Prefill", 1, 0, 0.02)),
    (DECODE_059_EAGLE, ("Decode", 2, 0, 0.12)),
    # older releases: a full stop after "batch"; SGLANG_LOG_FORWARD_ITERS: " [N]"; SGLANG_LOG_MS: ".mmm"
    ("[2026-01-20 10:00:06 TP0] Decode batch. #running-req: 4, #token: 12, token usage: 0.50, "
     "gen throughput (token/s): 1.00, #queue-req: 2, ", ("Decode", 4, 2, 0.5)),
    ("[2026-01-20 10:00:06.250 DP1 TP0] Decode batch [1234], #running-req: 7, #token: 12, token usage: 0.30, "
     "cuda graph: True, gen throughput (token/s): 1.00, #queue-req: 0, ", ("Decode", 7, 0, 0.3)),
    # a hybrid (SWA) pool: the larger of the two usages, as SGLang's own gauge
    ("[2026-01-20 10:00:06 TP0] Decode batch, #running-req: 1, #full token: 10, full token usage: 0.10, "
     "#swa token: 30, swa token usage: 0.30, cuda graph: True, gen throughput (token/s): 1.00, #queue-req: 0, ",
     ("Decode", 1, 0, 0.3)),
])
def test_batch_lines_read_as_sglang_writes_them(line: str, expected: tuple[str, int, int, float]) -> None:
    batch = parse_batch_line(line)
    assert batch is not None
    assert (batch.kind, batch.running, batch.waiting, batch.kv_usage) == expected


def test_the_health_checks_own_prefill_is_not_load_and_says_idle() -> None:
    batch = parse_batch_line(HEALTH_CHECK)
    assert batch is not None and batch.health_check and (batch.running, batch.waiting) == (0, 0)
    assert not parse_batch_line(PREFILL_058).health_check  # type: ignore[union-attr]
    # The watch probes /health right before it fetches the log: a request that just ended, then the probe.
    reading = read_log_load("\n".join([READY, DECODE_058, HEALTH_CHECK, ACCESS.replace("10:00:07", "10:00:10")]))
    assert reading is not None and reading.idle
    assert (reading.load.running, reading.load.waiting, reading.load.kv_usage) == (0, 0, 0.0)
    assert reading.load.note == "idle at 10:00:09 (SGLang's health check ran, which it does only when no batch runs)"


@pytest.mark.parametrize("line", [READY, ACCESS, "Decode batch, #running-req: 1, #queue-req: 0",  # no prefix
                                  "[2026-01-20 10:00:06 TP0] Decode batch, #token: 1, token usage: 0.1"])
def test_other_lines_are_not_batch_lines(line: str) -> None:
    assert parse_batch_line(line) is None


def test_busy_engine_reads_its_latest_batch_line() -> None:
    reading = read_log_load("\n".join([WARMUP, READY, PREFILL_058, DECODE_058, ACCESS]))
    assert reading is not None and not reading.idle
    load = reading.load
    assert (load.running, load.waiting, load.kv_usage, load.source) == (5, 1, 0.04, "log")
    assert load.note == "Decode batch at 10:00:06"
    assert reading.as_of == datetime(2026, 1, 20, 10, 0, 6)


def test_silence_after_the_last_batch_reads_idle_with_its_time() -> None:
    late = f"[2026-01-20 10:00:{6 + int(IDLE_AFTER_S) + 1:02d}] INFO:     10.0.0.2:1 - \"GET /health HTTP/1.1\" 200 OK"
    reading = read_log_load("\n".join([READY, DECODE_058, late]))
    assert reading is not None and reading.idle
    assert (reading.load.running, reading.load.waiting, reading.load.kv_usage) == (0, 0, 0.0)
    assert reading.load.note == "no batch logged since 10:00:06: idle"
    # Just inside the window, the line still stands.
    near = late.replace(f"10:00:{6 + int(IDLE_AFTER_S) + 1:02d}", f"10:00:{6 + int(IDLE_AFTER_S):02d}")
    assert read_log_load("\n".join([READY, DECODE_058, near])).load.running == 5  # type: ignore[union-attr]


def test_warmup_and_an_earlier_process_do_not_count() -> None:
    reading = read_log_load("\n".join([DECODE_058.replace("10:00:06", "09:59:59"), WARMUP, READY, ACCESS]))
    assert reading is not None and reading.idle
    assert reading.load.note == "no batch logged since the engine was ready at 10:00:00: idle"
    assert reading.as_of == datetime(2026, 1, 20, 10, 0, 0)


def test_a_tail_without_any_batch_or_ready_line_is_idle_since_its_oldest_line() -> None:
    reading = read_log_load("\n".join([ACCESS.replace("10:00:07", "09:50:00"), ACCESS]))
    assert reading is not None and reading.idle
    assert reading.load.note == "no batch logged since 09:50:00 (the oldest line fetched): idle"


def test_data_parallel_ranks_add_up() -> None:
    dp0 = DECODE_058.replace(" TP0]", " DP0 TP0]")
    dp1 = DECODE_058.replace(" TP0]", " DP1 TP0]").replace("#running-req: 5", "#running-req: 2").replace(
        "token usage: 0.04", "token usage: 0.09")
    load = read_log_load("\n".join([READY, dp0, dp1])).load  # type: ignore[union-attr]
    assert (load.running, load.waiting, load.kv_usage) == (7, 2, 0.09)


def test_no_sglang_line_at_all_gives_no_reading() -> None:
    assert read_log_load("") is None
    assert read_log_load("\n==========\n== CUDA ==\n==========\n") is None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_log_is_fetched_at_most_once_per_interval_and_the_reading_says_its_age() -> None:
    clock, texts = Clock(), ["\n".join([READY, DECODE_058, ACCESS])]
    reader = ThrottledLogLoad(lambda: texts[-1], every_s=30, clock=clock)
    first = reader.read()
    assert (first.running, first.waiting, first.source) == (5, 1, "log")
    assert first.note == "from the log: Decode batch at 10:00:06"
    clock.t += 12
    again = reader.read()
    assert reader.fetches == 1 and again.running == 5
    assert again.note == "from the log: Decode batch at 10:00:06; fetched 12s ago"
    texts.append("\n".join([READY, DECODE_058, ACCESS.replace("10:00:07", "10:01:07")]))
    clock.t += 18
    idle = reader.read()
    assert reader.fetches == 2
    assert (idle.running, idle.waiting, idle.kv_usage) == (0, 0, 0.0)
    assert idle.note == "from the log: no batch logged since 10:00:06: idle"


def test_a_failed_fetch_is_a_note_and_keeps_the_last_reading() -> None:
    clock = Clock()
    answers: list[str | Exception] = [LogFetchError("Vast.ai answered HTTP 429"), "\n".join([READY, DECODE_058])]

    def fetch() -> str:
        answer = answers.pop(0) if answers else LogFetchError("Vast.ai is unreachable")
        if isinstance(answer, Exception):
            raise answer
        return answer

    reader = ThrottledLogLoad(fetch, every_s=30, clock=clock)
    failed = reader.read()
    assert (failed.running, failed.source) == (None, None)
    assert failed.note == "could not fetch the log: Vast.ai answered HTTP 429"
    clock.t += 1
    assert reader.read().note == "could not fetch the log: Vast.ai answered HTTP 429" and reader.fetches == 1
    clock.t += 30
    assert reader.read().running == 5
    clock.t += 40
    stale = reader.read()
    assert stale.running == 5
    assert stale.note == ("from the log: Decode batch at 10:00:06; fetched 40s ago; "
                          "could not fetch the log: Vast.ai is unreachable")


def test_an_empty_log_says_so() -> None:
    load = ThrottledLogLoad(lambda: "", clock=Clock()).read()
    assert (load.running, load.note) == (None, "the log has no SGLang line yet")
