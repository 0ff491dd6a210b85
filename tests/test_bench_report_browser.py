"""Issue 13 §8: the bench report renders in a real headless browser, with no console message, charts drawn.

The browser is Debian's ``chromium-headless-shell`` (``.ci/run`` installs it when it runs as root); without
one the test is skipped and says why. The test loads a copy of the report with a probe script appended
(the report itself has no script): after layout, the probe writes into the DOM which charts the browser
laid out and how many bars of each have a non-zero height, and ``--dump-dom`` hands that back. Console
messages (a script error, an SVG attribute the browser cannot parse, a blocked fetch) come on stderr
with ``--enable-logging=stderr`` as ``CONSOLE`` lines; any of them fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from glmdeploy.bench_report import render_report
from test_bench_report import SETTINGS, sample_result

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHARTS = {"ttft", "tpot", "itl", "e2el", "tokens_per_s", "requests_completed"}

PROBE = """<pre id="probe"></pre><script>
(function () {
  var charts = {};
  document.querySelectorAll("svg.chart").forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    var bars = Array.prototype.filter.call(svg.querySelectorAll("rect.bar"), function (bar) {
      return bar.getBBox().height > 0 && bar.getBBox().width > 0;
    });
    charts[svg.getAttribute("data-chart")] = {width: box.width, height: box.height, bars: bars.length};
  });
  document.getElementById("probe").textContent = JSON.stringify(charts);
})();
</script>"""


def find_browser() -> str | None:
    override = os.environ.get("GLMDEPLOY_TEST_BROWSER")
    if override:
        return override
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def render_in_browser(browser: str, page: str, tmp_path: Path) -> tuple[dict[str, dict[str, float]], list[str]]:
    """(what the probe measured per chart, the console lines) for ``page`` loaded from a file."""
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    proc = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match is not None, "the page did not render: no probe output in the DOM"
    probe = match.group(1)
    measured: dict[str, dict[str, float]] = json.loads(probe) if probe else {}
    return measured, console


@pytest.fixture
def browser() -> str:
    found = find_browser()
    if found is None:
        pytest.skip("no headless browser installed (apt-get install chromium-headless-shell, or set "
                    "GLMDEPLOY_TEST_BROWSER)")
    return found


def test_report_renders_in_a_browser_with_every_chart_and_no_console_message(browser: str, tmp_path: Path) -> None:
    measured, console = render_in_browser(browser, render_report(sample_result(), SETTINGS), tmp_path)
    assert console == []
    assert set(measured) == CHARTS
    for chart, seen in measured.items():
        assert seen["width"] > 100 and seen["height"] > 30, (chart, seen)
        assert seen["bars"] > 0, (chart, seen)


def test_the_browser_check_catches_a_broken_report(browser: str, tmp_path: Path) -> None:
    """The check above can fail: a missing chart, an attribute the browser rejects and a script that throws
    are each seen (one browser run for the three, to keep CI cheap)."""
    page = render_report(sample_result(), SETTINGS)
    broken = re.sub(r'<svg class="chart" data-chart="itl".*?</svg>', "", page, count=1, flags=re.S)
    # A duplicate attribute: the HTML parser keeps the first, so this bar's height is NaN.
    broken = broken.replace('<rect class="bar" x="', '<rect class="bar" height="NaN" x="', 1)
    broken = broken.replace("</body>", '<script>throw new Error("report script broke")</script></body>', 1)
    measured, console = render_in_browser(browser, broken, tmp_path)
    assert set(measured) == CHARTS - {"itl"}
    assert any("NaN" in line for line in console), console
    assert any("report script broke" in line for line in console), console
