"""The HTML report of a bench run (``bench --report``, ``ci --bench --report``): pure, result -> str.

One self-contained file that opens offline: inline CSS and inline SVG drawn here, no script, no font, no
image, no link to fetch. Every string that comes from outside (the URL, the model, a server's error text)
goes through ``html.escape``; the endpoint key is never an input, and the URL is shown by ``shown_url``
(no user:password@, query or fragment).

Contents: the run's settings; the summary figures; per latency metric (TTFT, TPOT, ITL, E2EL) a table of
mean and p50/p90/p95/p99/max and a histogram with the percentiles marked; and throughput over time (output
tokens/s and requests completed per time bucket). The percentiles are ``glmdeploy.bench.percentile`` over
the same values ``summarize`` used, so the report's p50/p99 are the result's median/p99.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from pydantic import BaseModel

from glmdeploy.bench import BenchResult, RequestSample, mean, percentile, shown_url

REPORT_PERCENTILES = (50, 90, 95, 99)
HISTOGRAM_BINS = 30
MAX_TIME_BUCKETS = 60
# Bucket widths (s) for throughput over time: the smallest that keeps the chart to MAX_TIME_BUCKETS bars.
_BUCKET_STEPS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
METRIC_TITLES = {
    "ttft": "TTFT: time to first token",
    "tpot": "TPOT: time per output token (excl. 1st)",
    "itl": "ITL: inter-token latency (per chunk)",
    "e2el": "E2EL: end-to-end latency",
}

# Chart geometry (SVG user units).
_W, _H = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 14, 34


class ReportSettings(BaseModel):
    """What the result itself does not know about the run. Never holds a key."""

    target: str
    model: str
    version: str
    engine: str | None = None
    profile: str | None = None
    deployment: str | None = None


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    """An SVG coordinate: finite, short. A NaN here would make the browser log an error and drop the shape."""
    return f"{value:.2f}" if math.isfinite(value) else "0"


def _ms(value: float) -> str:
    return f"{value * 1000:.2f}"


# --------------------------------------------------------------------------- figures (pure)


def metric_table(values: Sequence[float]) -> dict[str, float]:
    """mean, p50, p90, p95, p99 and max of ``values`` (seconds), in ms."""
    row = {"mean": mean(values) * 1000}
    for p in REPORT_PERCENTILES:
        row[f"p{p}"] = percentile(values, p) * 1000
    row["max"] = max(values, default=0.0) * 1000
    return row


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> tuple[float, float, list[int]]:
    """(low, high, counts) over ``bins`` equal bins from the minimum to the maximum (fewer for few values)."""
    if not values:
        return 0.0, 0.0, []
    low, high = min(values), max(values)
    bins = max(1, min(bins, 2 * math.ceil(math.sqrt(len(values)))))
    if high - low <= abs(high) * 1e-9:  # all equal but for float noise (e.g. every TPOT the same): one bar
        low, high, bins = low - max(abs(low) * 0.05, 1e-6), high + max(abs(high) * 0.05, 1e-6), 1
    width = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    return low, high, counts


def bucket_width(duration: float) -> float:
    for step in _BUCKET_STEPS:
        if duration / step <= MAX_TIME_BUCKETS:
            return float(step)
    return float(_BUCKET_STEPS[-1])


def throughput_over_time(samples: Sequence[RequestSample], duration: float) -> tuple[float, list[float], list[int]]:
    """(bucket width s, output tokens/s per bucket, requests completed per bucket) from the run's start.

    A request's output tokens are spread evenly over its output chunks (``usage`` counts tokens, the
    stream's timestamps are per chunk); a bucket's rate is its tokens over its width (the last bucket's
    actual width, which may be shorter).
    """
    end = max([duration, *(s.start + s.latency for s in samples if s.success)], default=0.0)
    width = bucket_width(end)
    n = max(1, math.ceil(end / width)) if end > 0 else 1
    tokens = [0.0] * n
    completed = [0] * n

    last = n - 1
    for s in samples:
        if not s.success:
            continue
        chunks = 1 + len(s.itl)
        per_chunk = s.output_tokens / chunks if s.output_tokens else 1.0
        at = s.start + s.ttft
        tokens[min(int(at / width), last)] += per_chunk
        for gap in s.itl:  # the hot loop of a large run: times are >= 0, so int() needs no lower clamp
            at += gap
            tokens[min(int(at / width), last)] += per_chunk
        completed[min(int((s.start + s.latency) / width), last)] += 1
    rates = []
    for i, total in enumerate(tokens):
        actual = min(width, end - i * width) if end > 0 else width
        rates.append(total / actual if actual > 0 else 0.0)
    return width, rates, completed


# --------------------------------------------------------------------------- SVG


def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * magnitude:
            return float(factor * magnitude)
    return 10.0 * magnitude


def _bar_chart(
    chart: str,
    label: str,
    counts: Sequence[float],
    x_low: float,
    x_high: float,
    x_unit: str,
    y_unit: str,
    *,
    markers: Sequence[tuple[str, float]] = (),
    bar_titles: Sequence[str] = (),
    css_class: str = "chart",
) -> str:
    """An SVG bar chart: bars over [x_low, x_high], y from 0; ``markers`` are labelled vertical lines."""
    points = sum(1 for c in counts if c > 0)
    head = (
        f'<svg class="{_esc(css_class)}" data-chart="{_esc(chart)}" data-points="{points}" role="img" '
        f'aria-label="{_esc(label)}" viewBox="0 0 {_W} {_H}">'
    )
    parts = [head, f"<title>{_esc(label)}</title>"]
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    base_y = _TOP + plot_h
    if not counts or points == 0:
        parts.append(f'<text class="empty" x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    y_max = _nice_max(max(counts))
    span = x_high - x_low if x_high > x_low else 1.0

    def x_of(v: float) -> float:
        return _LEFT + (v - x_low) / span * plot_w

    def y_of(v: float) -> float:
        return base_y - v / y_max * plot_h

    for i in range(5):  # horizontal grid with y labels
        v = y_max * i / 4
        y = y_of(v)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_num(y)}" y2="{_num(y)}"/>')
        text = f"{v:.3g}"
        parts.append(f'<text class="tick" x="{_LEFT - 4}" y="{_num(y + 3)}" text-anchor="end">{_esc(text)}</text>')
    bar_w = plot_w / len(counts)
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        y = y_of(c)
        title = bar_titles[i] if i < len(bar_titles) else f"{c:g}"
        parts.append(
            f'<rect class="bar" x="{_num(_LEFT + i * bar_w + 0.5)}" y="{_num(y)}" '
            f'width="{_num(max(bar_w - 1, 0.5))}" height="{_num(base_y - y)}"><title>{_esc(title)}</title></rect>'
        )
    for i in range(5):  # x labels
        v = x_low + span * i / 4
        parts.append(
            f'<text class="tick" x="{_num(x_of(v))}" y="{base_y + 14}" text-anchor="middle">{_esc(f"{v:.3g}")}</text>'
        )
    parts.append(f'<text class="axis" x="{_LEFT + plot_w / 2}" y="{_H - 3}" text-anchor="middle">{_esc(x_unit)}</text>')
    parts.append(
        f'<text class="axis" x="12" y="{_TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_TOP + plot_h / 2})">{_esc(y_unit)}</text>'
    )
    for row, (name, v) in enumerate(markers):  # labels on separate rows: p95 and p99 are often close
        x = x_of(min(max(v, x_low), x_high))
        parts.append(
            f'<line class="marker" x1="{_num(x)}" x2="{_num(x)}" y1="{_TOP}" y2="{base_y}">'
            f"<title>{_esc(f'{name}: {v:.2f} {x_unit}')}</title></line>"
        )
        right = x > _LEFT + plot_w * 0.85  # near the right edge the label goes left of its line
        parts.append(
            f'<text class="marker-label" x="{_num(x - 2 if right else x + 2)}" y="{_TOP + 9 + 10 * row}"'
            f' text-anchor="{"end" if right else "start"}">{_esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- page


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;
color:#1d2430;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #dde2ea}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #eef1f5}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1em}
figure{margin:0}figcaption{font-weight:600;margin:.3em 0}
svg.chart{width:100%;height:auto;background:#fafbfc;border:1px solid #e3e7ee}
svg .bar{fill:#4c78a8}svg .grid{stroke:#e3e7ee}svg .tick,svg .axis,svg .marker-label,svg .empty{font-size:10px;
fill:#5a6472}svg .axis{font-size:11px}svg .marker{stroke:#d62728;stroke-dasharray:3 2}
svg .marker-label{fill:#d62728}svg.done .bar{fill:#59a14f}.muted{color:#5a6472}.errors li{font-family:monospace}
"""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _settings_rows(result: BenchResult, settings: ReportSettings) -> list[tuple[str, str]]:
    rate = result.request_rate
    return [
        ("target", shown_url(settings.target)),
        ("model", settings.model or result.model_id),
        ("deployment", settings.deployment or "-"),
        ("profile", settings.profile or "-"),
        ("engine", settings.engine or "-"),
        ("requests", str(result.num_prompts)),
        ("max concurrency", str(result.max_concurrency) if result.max_concurrency is not None else "unlimited"),
        ("request rate (req/s)", str(rate)),
        ("burstiness", str(result.burstiness)),
        ("prompt length (words)", str(result.input_len)),
        ("output length (tokens)", str(result.output_len)),
        ("seed", str(result.seed)),
        ("date (UTC)", result.date),
        ("glmdeploy", settings.version),
    ]


def _summary_rows(result: BenchResult) -> list[tuple[str, str]]:
    return [
        ("successful requests", str(result.completed)),
        ("failed requests", str(result.failed)),
        ("duration (s)", f"{result.duration:.2f}"),
        ("total input tokens", str(result.total_input_tokens)),
        ("total output tokens", str(result.total_output_tokens)),
        ("request throughput (req/s)", f"{result.request_throughput:.2f}"),
        ("output token throughput (tok/s)", f"{result.output_throughput:.2f}"),
        ("total token throughput (tok/s)", f"{result.total_token_throughput:.2f}"),
        ("peak output tokens/s (1 s buckets)", f"{result.max_output_tokens_per_s:.2f}"),
        ("peak concurrent requests", str(result.max_concurrent_requests)),
    ]


def _percentile_table(series: dict[str, list[float]], tables: dict[str, dict[str, float]]) -> str:
    columns = ["mean", *(f"p{p}" for p in REPORT_PERCENTILES), "max"]
    head = "<tr><th>metric (ms)</th><th class=n>n</th>" + "".join(f"<th class=n>{c}</th>" for c in columns) + "</tr>"
    rows = []
    for key, values in series.items():
        row = tables[key]
        cells = "".join(f'<td class=n data-metric="{key}" data-stat="{c}">{row[c]:.2f}</td>' for c in columns)
        rows.append(f"<tr><th>{_esc(key.upper())}</th><td class=n>{len(values)}</td>{cells}</tr>")
    return f'<table class="percentiles">{head}{"".join(rows)}</table>'


def render_report(result: BenchResult, settings: ReportSettings) -> str:
    """The whole HTML document for ``result``."""
    # Sorted once: ``percentile`` sorts its input, which is linear on a sorted list (a large run has millions
    # of gaps, and each table takes five percentiles).
    series = {key: sorted(values) for key, values in result.series().items()}
    tables = {key: metric_table(values) for key, values in series.items()}
    figures = []
    for key, values in series.items():
        low, high, counts = histogram(values)
        table = tables[key]
        markers = [(f"p{p}", table[f"p{p}"]) for p in REPORT_PERCENTILES] if values else []
        step = (high - low) / len(counts) if counts else 0.0
        titles = [
            f"{_ms(low + i * step)}-{_ms(low + (i + 1) * step)} ms: {c} {'gaps' if key == 'itl' else 'requests'}"
            for i, c in enumerate(counts)
        ]
        svg = _bar_chart(
            key, METRIC_TITLES[key], counts, low * 1000, high * 1000, "ms",
            "gaps" if key == "itl" else "requests", markers=markers, bar_titles=titles,
        )
        figures.append(f"<figure><figcaption>{_esc(METRIC_TITLES[key])}</figcaption>{svg}</figure>")
    width, rates, completed = throughput_over_time(result.samples, result.duration)
    end = width * len(rates)
    rate_titles = [f"{i * width:g}-{(i + 1) * width:g} s: {r:.1f} tok/s" for i, r in enumerate(rates)]
    done_titles = [f"{i * width:g}-{(i + 1) * width:g} s: {c} completed" for i, c in enumerate(completed)]
    over_time = [
        "<figure><figcaption>Output tokens/s over time</figcaption>"
        + _bar_chart("tokens_per_s", "Output tokens per second over time", rates, 0.0, end,
                     f"seconds since start ({width:g} s buckets)", "tokens/s", bar_titles=rate_titles)
        + "</figure>",
        "<figure><figcaption>Requests completed over time</figcaption>"
        + _bar_chart("requests_completed", "Requests completed per time bucket", completed, 0.0, end,
                     f"seconds since start ({width:g} s buckets)", "requests", bar_titles=done_titles,
                     css_class="chart done")
        + "</figure>",
    ]
    errors = ""
    if result.errors:
        items = "".join(f"<li>{_esc(e)}</li>" for e in result.errors)
        errors = f'<h2>Failed requests (first {len(result.errors)})</h2><ul class="errors">{items}</ul>'
    title = f"glmdeploy bench: {settings.model or result.model_id} ({result.date})"
    return "".join(
        [
            "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>",
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{_esc(title)}</h1>",
            '<p class="muted">Measured the way <code>vllm bench serve</code> does: TTFT to the first output chunk, '
            "ITL between chunks, TPOT = (E2EL - TTFT) / (output tokens - 1). Percentiles interpolate linearly.</p>",
            '<div class="grid2"><section><h2>Settings</h2>',
            _table(_settings_rows(result, settings)),
            "</section><section><h2>Summary</h2>",
            _table(_summary_rows(result)),
            "</section></div><h2>Latency percentiles</h2>",
            _percentile_table(series, tables),
            '<h2>Latency distributions</h2><div class="grid2">',
            *figures,
            '</div><h2>Throughput over time</h2><div class="grid2">',
            *over_time,
            "</div>",
            errors,
            "</body></html>\n",
        ]
    )
