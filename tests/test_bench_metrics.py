"""``glmdeploy.bench``'s pure parts: stream interpretation, metrics, arrival schedule, dataset, result block.

Expected values are computed by hand or with the ``statistics`` module, never with the code under test.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from glmdeploy.bench import (
    VOCAB,
    BenchOptions,
    BenchRequest,
    RequestOutcome,
    arrival_offsets,
    chat_url,
    format_summary,
    make_requests,
    outcome_from_stream,
    parse_request_rate,
    percentile,
    summarize,
)
from glmdeploy.errors import UsageError

REQ = BenchRequest(prompt="x", input_len=7, output_len=4)


def chunk(delta: dict[str, object] | None = None, finish: str | None = None, usage: object = None) -> bytes:
    obj: dict[str, object] = {"object": "chat.completion.chunk"}
    obj["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        obj["usage"] = usage
    return json.dumps(obj).encode()


def np_percentile(values: list[float], p: int) -> float:
    """numpy's default (linear) percentile through the statistics module's 'inclusive' quantiles."""
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# --------------------------------------------------------------------------- one stream


def test_ttft_itl_e2el_tpot_of_one_stream_by_hand() -> None:
    events = [
        (10.020, chunk({"role": "assistant", "content": ""})),  # role-only: not output
        (10.100, chunk({"reasoning": "The"})),  # first output: TTFT 100 ms
        (10.150, chunk({"content": " sea"})),  # gap 50 ms
        (10.250, chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]})),  # gap 100 ms
        (10.300, chunk({}, finish="stop")),  # empty delta: not output
        (10.310, chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16})),
        (10.311, b"[DONE]"),
    ]
    out = outcome_from_stream(events, 10.0, REQ)
    assert out.success, out.error
    assert out.ttft == pytest.approx(0.100)
    assert out.itl == pytest.approx([0.050, 0.100])
    assert out.latency == pytest.approx(0.250)  # to the last output chunk, not to [DONE]
    assert out.output_tokens == 4 and out.input_tokens == 12
    result = summarize([out], 2.0, BenchOptions(num_prompts=1), "m")
    assert result.mean_tpot_ms == pytest.approx((250 - 100) / 3)  # (E2EL - TTFT) / (4 - 1)


def test_sglang_reasoning_content_counts_as_output() -> None:
    events = [
        (1.0, chunk({"role": "assistant", "content": None, "reasoning_content": None})),
        (1.3, chunk({"reasoning_content": "Hm"})),
        (1.4, chunk({}, finish="length")),
    ]
    out = outcome_from_stream(events, 1.0, REQ)
    assert out.success and out.ttft == pytest.approx(0.3)


def test_without_usage_the_output_chunks_are_counted_and_input_is_the_requested_length() -> None:
    events = [(0.1 * i, chunk({"content": "w"})) for i in range(1, 6)] + [(0.6, b"[DONE]")]
    out = outcome_from_stream(events, 0.0, REQ)
    assert out.success
    assert out.output_tokens == 5 and out.input_tokens == 7


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([(1.0, chunk({"content": "a"})), (1.1, b"{not json")], "invalid JSON"),
        ([(1.0, b'{"error": {"message": "CUDA error", "code": 500}}')], "CUDA error"),
        ([(1.0, b'{"object": "error", "message": "too long"}')], "too long"),
        ([(1.0, chunk({"content": "a"})), (1.1, chunk({"content": "b"}))], "ended before"),
        ([(1.0, chunk({"role": "assistant", "content": ""})), (1.1, chunk({}, finish="stop"))], "no output"),
        ([], "ended before"),
    ],
)
def test_broken_streams_are_failures_with_a_reason(events: list[tuple[float, bytes]], reason: str) -> None:
    out = outcome_from_stream(events, 0.5, REQ)
    assert not out.success
    assert reason in out.error


def test_a_null_error_field_is_not_an_error() -> None:
    events = [(1.0, b'{"error": null, "choices": [{"delta": {"content": "a"}, "finish_reason": "stop"}]}')]
    assert outcome_from_stream(events, 0.5, REQ).success


def test_finish_reason_without_done_is_a_complete_response() -> None:
    out = outcome_from_stream([(1.0, chunk({"content": "a"})), (1.2, chunk({}, finish="stop"))], 0.9, REQ)
    assert out.success and out.latency == pytest.approx(0.1)


# --------------------------------------------------------------------------- aggregation


def ok(ttft: float, itl: list[float], tokens: int, input_tokens: int = 10) -> RequestOutcome:
    return RequestOutcome(
        success=True, ttft=ttft, itl=itl, latency=ttft + sum(itl), output_tokens=tokens, input_tokens=input_tokens
    )


def test_summary_statistics_over_requests_and_over_gaps() -> None:
    outcomes = [
        ok(0.100, [0.010, 0.020, 0.030], 4),  # E2EL 0.160, TPOT 0.020
        ok(0.200, [0.040], 2),  # E2EL 0.240, TPOT 0.040
        ok(0.300, [], 1),  # one token: no TPOT, no gaps
        ok(0.050, [0.010, 0.010], 5, input_tokens=20),  # E2EL 0.070, TPOT 0.005
        RequestOutcome(success=False, error="HTTP 500: boom", ttft=9.0, latency=9.0),
    ]
    r = summarize(outcomes, 4.0, BenchOptions(num_prompts=5, max_concurrency=3), "glm", date="20260101-000000")
    ttfts = [100.0, 200.0, 300.0, 50.0]
    tpots = [20.0, 40.0, 5.0]
    itls = [10.0, 20.0, 30.0, 40.0, 10.0, 10.0]
    e2els = [160.0, 240.0, 300.0, 70.0]
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        got = r.model_dump()
        assert got[f"mean_{name}_ms"] == pytest.approx(statistics.mean(values)), name
        assert got[f"median_{name}_ms"] == pytest.approx(statistics.median(values)), name
        assert got[f"std_{name}_ms"] == pytest.approx(statistics.pstdev(values)), name
        assert got[f"p99_{name}_ms"] == pytest.approx(np_percentile(values, 99)), name
    assert (r.completed, r.failed) == (4, 1)
    assert r.total_input_tokens == 50 and r.total_output_tokens == 12
    assert r.request_throughput == pytest.approx(4 / 4.0)
    assert r.output_throughput == pytest.approx(12 / 4.0)
    assert r.total_token_throughput == pytest.approx(62 / 4.0)
    assert r.errors == ["HTTP 500: boom"]


def test_percentile_interpolates_linearly_by_hand() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)  # rank 0.99 x 3 = 2.97
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 99) == 0.0


def test_no_success_gives_zeros_and_keeps_only_the_first_ten_errors() -> None:
    outcomes = [RequestOutcome(error=f"e{i}") for i in range(15)]
    r = summarize(outcomes, 1.0, BenchOptions(num_prompts=15), "m")
    assert r.completed == 0 and r.failed == 15
    assert r.mean_ttft_ms == 0 and r.p99_itl_ms == 0 and r.request_throughput == 0
    assert r.errors == [f"e{i}" for i in range(10)]


def test_json_has_vllm_key_names_and_inf_as_a_string() -> None:
    r = summarize([ok(0.1, [0.01], 2)], 1.0, BenchOptions(num_prompts=1), "glm-4.7-flash")
    data = json.loads(r.model_dump_json())
    vllm_keys = {
        "date",
        "backend",
        "model_id",
        "num_prompts",
        "request_rate",
        "burstiness",
        "max_concurrency",
        "duration",
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "errors",
    } | {f"{s}_{m}_ms" for s in ("mean", "median", "std", "p99") for m in ("ttft", "tpot", "itl", "e2el")}
    assert vllm_keys <= data.keys()
    assert data["backend"] == "openai-chat" and data["model_id"] == "glm-4.7-flash"
    assert data["request_rate"] == "inf" and data["max_concurrency"] is None
    finite = summarize([], 1.0, BenchOptions(num_prompts=1, request_rate=2.5, burstiness=math.inf), "m")
    assert json.loads(finite.model_dump_json())["request_rate"] == 2.5
    assert json.loads(finite.model_dump_json())["burstiness"] == "inf"


def test_summary_block_has_seed_002s_rows_in_order() -> None:
    r = summarize([ok(0.1, [0.01, 0.02], 3)], 2.0, BenchOptions(num_prompts=1), "m")
    text = format_summary(r)
    lines = text.splitlines()
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[-1] == "=" * 50
    order = [
        "Successful requests:",
        "Failed requests:",
        "Benchmark duration (s):",
        "Total input tokens:",
        "Total generated tokens:",
        "Request throughput (req/s):",
        "Output token throughput (tok/s):",
        "Total Token throughput (tok/s):",
        "---------------Time to First Token----------------",
        "Mean TTFT (ms):",
        "Median TTFT (ms):",
        "P99 TTFT (ms):",
        "-----Time per Output Token (excl. 1st token)------",
        "Mean TPOT (ms):",
        "---------------Inter-token Latency----------------",
        "Mean ITL (ms):",
        "Mean E2EL (ms):",
    ]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(label)) for label in order]
    assert positions == sorted(positions)
    assert "Successful requests:                     1" in lines
    assert "Mean TTFT (ms):                          100.00" in lines
    assert "Benchmark duration (s):                  2.00" in lines


# --------------------------------------------------------------------------- schedule and dataset


def gaps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]


def test_inf_rate_sends_everything_at_zero() -> None:
    assert arrival_offsets(50, math.inf, 1.0, seed=0) == [0.0] * 50


def test_poisson_schedule_has_the_rate_and_is_seeded() -> None:
    rate = 8.0
    offsets = arrival_offsets(4000, rate, 1.0, seed=3)
    assert offsets == sorted(offsets)
    assert offsets[-1] == pytest.approx(4000 / rate)  # vLLM rescales to exactly n / rate
    g = gaps(offsets)
    assert statistics.mean(g) == pytest.approx(1 / rate, rel=0.01)
    assert statistics.pstdev(g) / statistics.mean(g) == pytest.approx(1.0, abs=0.06)  # exponential: CV 1
    assert arrival_offsets(4000, rate, 1.0, seed=3) == offsets
    assert arrival_offsets(4000, rate, 1.0, seed=4) != offsets


@pytest.mark.parametrize(("burstiness", "cv"), [(0.25, 2.0), (4.0, 0.5)])
def test_burstiness_is_the_gamma_shape(burstiness: float, cv: float) -> None:
    g = gaps(arrival_offsets(6000, 5.0, burstiness, seed=1))
    assert statistics.mean(g) == pytest.approx(0.2, rel=0.02)
    assert statistics.pstdev(g) / statistics.mean(g) == pytest.approx(cv, rel=0.1)  # CV = 1/sqrt(shape)


def test_infinite_burstiness_is_constant_spacing() -> None:
    assert arrival_offsets(4, 2.0, math.inf, seed=0) == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_dataset_is_seeded_random_words_of_the_input_length() -> None:
    first = make_requests(20, 64, 16, seed=5)
    assert first == make_requests(20, 64, 16, seed=5)
    assert first != make_requests(20, 64, 16, seed=6)
    assert len({r.prompt for r in first}) == 20
    for r in first:
        words = r.prompt.split(" ")
        assert len(words) == 64 and set(words) <= set(VOCAB)
        assert r.output_len == 16
    assert all(len(w) <= 4 and w.isalpha() for w in VOCAB)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "", "-inf"])
def test_invalid_request_rates_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--request-rate"):
        parse_request_rate(text)


def test_valid_request_rates() -> None:
    assert parse_request_rate("inf") == math.inf
    assert parse_request_rate("2.5") == 2.5


def test_chat_url_from_base_urls() -> None:
    assert chat_url("http://h:1/v1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"


def test_peak_chunks_and_concurrency_over_one_second_buckets() -> None:
    a = RequestOutcome(success=True, start_time=100.0, ttft=0.5, itl=[0.3, 0.4], latency=1.2, output_tokens=3)
    b = RequestOutcome(success=True, start_time=100.9, ttft=0.2, itl=[0.05], latency=0.25, output_tokens=2)
    c = RequestOutcome(success=True, start_time=102.5, ttft=0.1, itl=[], latency=0.1, output_tokens=1)
    failed = RequestOutcome(error="HTTP 500", start_time=100.1, ttft=0.0, latency=0.0)
    r = summarize([a, b, c, failed], 3.0, BenchOptions(num_prompts=4), "m")
    # chunks at 100.5, 100.8 | 101.2, 101.1, 101.15 | 102.6 -> buckets of 2, 3, 1
    assert r.max_output_tokens_per_s == 3.0
    # second 0: a and b; second 1: a and b; second 2: c
    assert r.max_concurrent_requests == 2
    assert "Peak concurrent requests:" in format_summary(r)


@pytest.mark.parametrize("url", ["ftp://h/v1", "localhost:8000", "", "http:///v1"])
def test_urls_that_are_not_http_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="--url"):
        chat_url(url)
