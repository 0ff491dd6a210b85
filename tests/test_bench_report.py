"""Issue 13 §8: the HTML bench report (``glmdeploy.bench_report``) and ``bench --report``.

Expected figures are computed here with the ``statistics`` module or by hand, never with the code under test.
"""

from __future__ import annotations

import json
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glmdeploy.bench import BenchOptions, RequestOutcome, summarize
from glmdeploy.bench_report import ReportSettings, render_report, throughput_over_time
from glmdeploy.cli import app

KEY = "sk-report-secret-key"


def outcome(start: float, ttft: float, itl: list[float], tokens: int) -> RequestOutcome:
    return RequestOutcome(success=True, input_tokens=10, output_tokens=tokens, ttft=ttft, latency=ttft + sum(itl),
                          itl=itl, start_time=start)


def sample_result():  # type: ignore[no-untyped-def]
    outcomes = [outcome(100.0 + i * 0.5, 0.05 + 0.01 * i, [0.01 + 0.001 * j for j in range(5)], 6) for i in range(12)]
    outcomes.append(RequestOutcome(start_time=101.0, error=f"HTTP 500: <script>alert('x')</script> {KEY[:3]}"))
    return summarize(outcomes, 7.0, BenchOptions(num_prompts=13, max_concurrency=4), "glm-4.7-flash",
                     date="20261203-100000", started=100.0)


SETTINGS = ReportSettings(target=f"https://user:{KEY}@127.0.0.1:8443/v1?key={KEY}", model="glm-4.7-flash",
                          version="0.1.0", engine="vllm", profile="2x5090", deployment="glm-<b>x</b>")


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: dict[tuple[str, str], float] = {}
        self._cell: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "td" and a.get("data-metric"):
            self._cell = (str(a["data-metric"]), str(a["data-stat"]))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self.cells[self._cell] = float(data)
            self._cell = None


def parse(page: str) -> Collect:
    parser = Collect()
    parser.feed(page)
    return parser


def test_percentiles_in_the_report_are_the_results() -> None:
    result = sample_result()
    cells = parse(render_report(result, SETTINGS)).cells
    ttfts = [0.05 + 0.01 * i for i in range(12)]
    quantiles = statistics.quantiles(ttfts, n=100, method="inclusive")  # numpy's linear percentile
    for p in (50, 90, 95, 99):
        assert cells[("ttft", f"p{p}")] == pytest.approx(quantiles[p - 1] * 1000, abs=0.01)
    for metric in ("ttft", "tpot", "itl", "e2el"):
        assert cells[(metric, "p50")] == pytest.approx(getattr(result, f"median_{metric}_ms"), abs=0.01)
        assert cells[(metric, "p99")] == pytest.approx(getattr(result, f"p99_{metric}_ms"), abs=0.01)
        assert cells[(metric, "mean")] == pytest.approx(getattr(result, f"mean_{metric}_ms"), abs=0.01)


def test_report_is_self_contained_escaped_and_keyless() -> None:
    page = render_report(sample_result(), SETTINGS)
    parsed = parse(page)
    assert KEY not in page and "user:" not in page and "?key" not in page
    assert "https://127.0.0.1:8443/v1" in page  # the target, as shown_url prints it
    # Nothing is fetched at view time: no src/href/xlink attribute, no stylesheet link, no script, no @import.
    fetching = [(t, a) for t, a in parsed.tags if {"src", "href", "xlink:href", "srcset", "data"} & a.keys()]
    assert fetching == []
    assert not any(t in ("script", "link", "img", "iframe", "object") for t, _ in parsed.tags)
    assert "@import" not in page and "url(" not in page
    assert not re.search(r"https?://(?!127\.0\.0\.1:8443/v1<)", page)
    # Outside text is escaped: the error body's markup and the deployment name are text, not tags.
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "glm-&lt;b&gt;x&lt;/b&gt;" in page and not any(t == "b" for t, _ in parsed.tags)


def test_report_has_every_chart_with_data_and_the_settings() -> None:
    page = render_report(sample_result(), SETTINGS)
    charts = {a["data-chart"]: int(a["data-points"] or 0) for t, a in parse(page).tags if t == "svg"}
    assert set(charts) == {"ttft", "tpot", "itl", "e2el", "tokens_per_s", "requests_completed"}
    assert all(points > 0 for points in charts.values()), charts
    for text in ("2x5090", "vllm", "0.1.0", "20261203-100000", "<th>max concurrency</th><td>4</td>",
                 "<th>requests</th><td>13</td>"):
        assert text in page


def test_a_run_without_successes_renders_empty_charts_not_an_error() -> None:
    failed = summarize([RequestOutcome(error="boom")], 1.0, BenchOptions(num_prompts=1), "m")
    page = render_report(failed, SETTINGS)
    assert page.count("no data") == 6 and "nan" not in page.lower()


def test_throughput_over_time_by_hand() -> None:
    # Two requests of 3 tokens: chunks at 0.2, 0.4, 0.6 s and 1.2, 1.4, 1.6 s; 0.05 s buckets would be
    # 34 of them, under the cap of 60, so 0.05 s it is.
    result = summarize([outcome(10.0, 0.2, [0.2, 0.2], 3), outcome(11.0, 0.2, [0.2, 0.2], 3)], 1.7,
                       BenchOptions(num_prompts=2), "m", started=10.0)
    width, rates, completed = throughput_over_time(result.samples, result.duration)
    assert width == 0.05 and len(rates) == 34
    assert sum(r * width for r in rates) == pytest.approx(6)  # every token once
    assert completed[12] == 1 and completed[32] == 1 and sum(completed) == 2


def test_samples_stay_out_of_the_json() -> None:
    dumped = sample_result().model_dump(mode="json")
    assert "samples" not in dumped and "samples" not in json.loads(sample_result().model_dump_json())


runner = CliRunner()


def test_cli_report_needs_an_existing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--url", "http://127.0.0.1:9/v1", "--model", "m",
                                 "--report", str(tmp_path / "nope" / "r.html")])
    assert result.exit_code == 2
    assert "--report: directory" in result.stderr


def test_ci_report_without_bench_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ci", "-p", "2x5090", "--sandbox", "--report", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert "--report needs --bench" in result.stderr


def test_bench_figures_become_junit_properties_before_the_cases() -> None:
    import xml.etree.ElementTree as ET

    from glmdeploy.commands.ci import bench_properties
    from glmdeploy.junit import Case, Suite, render

    result = sample_result()
    props = bench_properties(result)
    suite = Suite(name="glmdeploy.ci", cases=[Case("bench", "glmdeploy.ci", 1.0)], properties=props)
    root = ET.fromstring(render([suite]))
    element = root.find("testsuite")
    assert element is not None and [child.tag for child in element] == ["properties", "testcase"]
    values = {p.get("name"): p.get("value") for p in element.iter("property")}
    assert values["bench.requests_ok"] == "12" and values["bench.requests_failed"] == "1"
    assert float(values["bench.ttft_p50_ms"] or "") == pytest.approx(result.median_ttft_ms, abs=0.001)
    assert float(values["bench.itl_p99_ms"] or "") == pytest.approx(result.p99_itl_ms, abs=0.001)
