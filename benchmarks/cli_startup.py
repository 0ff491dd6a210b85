"""Cold-start wall time of `glmdeploy --help`, `glmdeploy profiles list` and one TAB press (completion).

Prints the median of N runs of each (default 15) and, when the official `vastai` CLI is
installed, the ratio against `vastai --help` measured in the same run.
Targets (issue 2): `glmdeploy --help` median <= 0.15 s on 2 cores; >= 10x faster than `vastai --help`.

    uv run python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    glmdeploy = shutil.which("glmdeploy", path=str(bindir)) or "glmdeploy"
    results = {
        "glmdeploy --help": median_seconds([glmdeploy, "--help"], args.runs),
        "glmdeploy profiles list": median_seconds([glmdeploy, "profiles", "list", "--json"], args.runs),
    }
    # What bash runs on TAB after `glmdeploy status ` (the script `glmdeploy completion bash` prints).
    tab = {**os.environ, "_GLMDEPLOY_COMPLETE": "complete_bash", "COMP_WORDS": "glmdeploy status ", "COMP_CWORD": "2"}
    results["completion (status NAME)"] = median_seconds([glmdeploy], args.runs, env=tab)
    tab = {**tab, "COMP_WORDS": "glmdeploy up --profile ", "COMP_CWORD": "3"}
    results["completion (--profile)"] = median_seconds([glmdeploy], args.runs, env=tab)
    vastai = shutil.which("vastai", path=str(bindir)) or shutil.which("vastai")
    if vastai:
        results["vastai --help"] = median_seconds([vastai, "--help"], max(3, args.runs // 3))
    for name, seconds in results.items():
        print(f"{name:<28} median {seconds * 1000:7.1f} ms")
    help_s = results["glmdeploy --help"]
    print(f"target --help <= 150 ms: {'met' if help_s <= 0.150 else 'NOT met'}")
    if "vastai --help" in results:
        ratio = results["vastai --help"] / help_s
        print(f"vastai --help / glmdeploy --help = {ratio:.1f}x (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
