"""The engines' /metrics read by their own names (issue 13 item 6), on exposition text in the format
each engine's prometheus_client writes: HELP/TYPE lines, labels, counters' _total/_created samples."""

from __future__ import annotations

import pytest

from glmdeploy.engines.metrics import parse_exposition, read_load, unavailable_reason

# The shape vLLM's PrometheusStatLogger exposes (vllm/v1/metrics/loggers.py): one series per engine core,
# labelled model_name and engine; content-type version=1.0.0 on 0.24.0 (real-vllm-0.24.0/http-transcript.txt).
VLLM = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="glm-4.7-flash"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="glm-4.7-flash"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="glm-4.7-flash"} 0.4213
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="glm-4.7-flash"} 1234.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="glm-4.7-flash"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="glm-4.7-flash"} 7.0
"""

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="glm-4.7-flash",tp_rank="0",pp_rank="0"} 5.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="glm-4.7-flash",tp_rank="0",pp_rank="0"} 0.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="glm-4.7-flash",tp_rank="0",pp_rank="0"} 0.07
"""

# lightllm/server/metrics/metrics.py: unlabelled gauges from one CollectorRegistry.
LIGHTLLM = """\
# HELP lightllm_request_count_total The total number of requests
# TYPE lightllm_request_count_total counter
lightllm_request_count_total 9.0
# HELP lightllm_request_count_created The total number of requests
# TYPE lightllm_request_count_created gauge
lightllm_request_count_created 1.7962408e+09
# HELP lightllm_queue_size Queue size
# TYPE lightllm_queue_size gauge
lightllm_queue_size 4.0
# HELP lightllm_batch_current_size Current batch size
# TYPE lightllm_batch_current_size gauge
lightllm_batch_current_size 8.0
"""


def test_vllm_load() -> None:
    load = read_load("vllm", VLLM)
    assert (load.running, load.waiting, load.kv_usage, load.note) == (3, 2, 0.4213, None)


def test_vllm_older_kv_name_is_read_when_the_current_one_is_absent() -> None:
    old = VLLM.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert read_load("vllm", old).kv_usage == 0.4213


def test_series_of_several_engine_cores_add_up() -> None:
    two = VLLM + 'vllm:num_requests_running{engine="1",model_name="glm-4.7-flash"} 4.0\n'
    assert read_load("vllm", two).running == 7


def test_sglang_load() -> None:
    load = read_load("sglang", SGLANG)
    assert (load.running, load.waiting, load.kv_usage, load.note) == (5, 0, 0.07, None)


def test_lightllm_load_has_no_kv_gauge_and_says_so() -> None:
    load = read_load("lightllm", LIGHTLLM)
    assert (load.running, load.waiting, load.kv_usage) == (8, 4, None)
    assert load.note == "LightLLM exports no KV-cache usage metric"


def test_metrics_of_another_engine_read_as_unknown_with_a_note() -> None:
    load = read_load("vllm", SGLANG)
    assert (load.running, load.waiting, load.kv_usage) == (None, None, None)
    assert load.note is not None and "vllm:num_requests_running" in load.note


def test_parser_copes_with_quoted_labels_timestamps_and_junk() -> None:
    text = (
        'vllm:num_requests_running{model_name="a b}{\\"c",engine="0"} 2 1700000000000\n'
        "garbage line without value\n"
        "vllm:num_requests_waiting NaN\n"
        "vllm:kv_cache_usage_perc 1e-1\n"
    )
    assert parse_exposition(text) == {"vllm:num_requests_running": 2.0, "vllm:kv_cache_usage_perc": 0.1}


@pytest.mark.parametrize(("kind", "argv", "expected"), [
    ("sglang", ["python3", "-m", "sglang.launch_server"], "--enable-metrics"),
    ("sglang", ["python3", "-m", "sglang.launch_server", "--enable-metrics"], None),
    ("vllm", ["vllm", "serve"], None),
    ("lightllm", ["python", "-m", "lightllm.server.api_server"], None),
])
def test_sglang_serves_metrics_only_when_asked(kind: str, argv: list[str], expected: str | None) -> None:
    reason = unavailable_reason(kind, argv)
    assert (reason is None) == (expected is None)
    if expected:
        assert reason is not None and expected in reason
