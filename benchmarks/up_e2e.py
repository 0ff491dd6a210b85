"""`glmdeploy up` then `destroy` against the sandbox, once per engine kind.

Prints, per engine: the wall time of each phase, the CLI's own overhead beyond the simulated
engine's startup, how long after the engine logged its ready marker `up` noticed, and the number
of Vast API requests the deployment made (log downloads from `result_url` are S3, not the API).

Targets (issue 4): overhead <= 1.0 s; ready detected within one log-poll interval of the marker;
<= 40 API requests for a deployment whose engine takes 5 simulated minutes to load.

    uv run python benchmarks/up_e2e.py [--time-scale 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import httpx

from glmdeploy.deploy import Pacing

PROFILES = {"sglang": "4x3090", "vllm": "2x5090", "lightllm": "h200"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glmdeploy", *args], env=env, capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL)


def run_one(kind: str, profile: str, time_scale: float) -> dict[str, float | int | str]:
    home = tempfile.mkdtemp(prefix="glmdeploy-bench-")
    env = {**os.environ, "GLMDEPLOY_HOME": home}
    env.pop("VAST_API_KEY", None)
    started = cli(env, "sandbox", "start", "--time-scale", str(time_scale))
    if started.returncode != 0:
        raise SystemExit(started.stderr)
    status = json.loads(cli(env, "sandbox", "status", "--json").stdout)
    url, key = status["url"], status["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    try:
        t0 = time.time()
        up = cli(env, "up", "-p", profile, "--sandbox", "--yes", "--json")
        t_end = time.time()
        if up.returncode != 0:
            raise SystemExit(f"{profile}: up failed: {up.stderr}")
        events = [json.loads(line) for line in up.stdout.splitlines()]
        phases = {e["phase"]: e["elapsed_s"] for e in events if e["event"] == "phase"}
        requests = httpx.get(url + "/_sandbox/requests", headers=auth, timeout=10).json()["requests"]
        api = [r for r in requests if r["path"].startswith("/api/")]
        ledger = httpx.get(url + "/_sandbox/ledger", headers=auth, timeout=10).json()["instances"][0]
        destroy = cli(env, "destroy", "--yes")
        if destroy.returncode != 0:
            raise SystemExit(destroy.stderr)
    finally:
        cli(env, "sandbox", "stop")
    first_api = min(r["at"] for r in api)
    ready_at = ledger["engine_ready_at"]
    engine_startup = ready_at - first_api
    # When `up` knew: the resolve_endpoint phase starts right after readiness is confirmed.
    noticed_at = t0 + (phases["resolve_endpoint"] - phases["plan_check"]) + (first_api - t0 - phases["search"])
    ordered = list(phases.items())
    durations = {name: round(ordered[i + 1][1] - t, 3) for i, (name, t) in enumerate(ordered[:-1])}
    return {
        "engine": kind,
        "profile": profile,
        "total_s": round(t_end - t0, 3),
        "engine_startup_s": round(engine_startup, 3),
        "simulated_load_min": round((ready_at - ledger["running_at"]) / time_scale / 60, 1),
        "overhead_s": round((t_end - t0) - engine_startup, 3),
        "before_first_request_s": round(first_api - t0, 3),
        "after_ready_s": round(t_end - ready_at, 3),
        "detect_delay_s": round(noticed_at - ready_at, 3),
        "poll_cap_s": round(Pacing(scale=time_scale).logs_max * time_scale, 3),
        "api_requests": len(api),
        "phases": json.dumps(durations),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time-scale", type=float, default=0.01)
    args = parser.parse_args()
    for kind, profile in PROFILES.items():
        r = run_one(kind, profile, args.time_scale)
        print(f"{r['engine']:<9} ({r['profile']}): total {r['total_s']:.2f}s, "
              f"engine startup {r['engine_startup_s']:.2f}s ({r['simulated_load_min']} simulated min of load)")
        print(f"          overhead {r['overhead_s']:.2f}s (target <= 1.0), "
              f"ready noticed {r['detect_delay_s']:.3f}s after the marker (one poll <= {r['poll_cap_s']:.3f}s), "
              f"{r['api_requests']} API requests (target <= 40)")
        print(f"          overhead = {r['before_first_request_s']:.2f}s before the first API request "
              f"(process start, imports, plan, sandbox probe) + {r['after_ready_s']:.2f}s after the marker "
              "(detection, verify, smoke, exit)")
        print(f"          phases: {r['phases']}")


if __name__ == "__main__":
    main()
