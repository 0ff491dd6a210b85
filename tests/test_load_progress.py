"""The startup-progress parser on recorded log fragments (issue 13 §1): the real vLLM 0.24.0 recording,
engines.md's quoted lines, the seeds' and the sandbox's own bars."""

from __future__ import annotations

from pathlib import Path

from glmdeploy.loadprogress import LoadTracker, read_line

RECORDING = Path(__file__).resolve().parents[2] / "shared" / "reference" / "real-vllm-0.24.0" / "startup-default.log"


def _recorded() -> list[str]:
    # Each line is "<seconds> <log line>" (the recorder's own prefix).
    return [line.split(" ", 1)[1] if " " in line.strip() else line for line in
            (raw.lstrip() for raw in RECORDING.read_bytes().decode().split("\n"))]


def test_recorded_vllm_startup_walks_through_the_stages() -> None:
    stages = [r.stage for line in _recorded() if (r := read_line(line)) is not None]
    assert stages[0] == "downloading weights"  # "Starting to load model /tmp/glm..."
    assert "capturing CUDA graphs" in stages
    assert stages[-1] == "starting server"
    # the order of first appearance is the engine's startup order
    firsts = list(dict.fromkeys(stages))
    assert firsts.index("downloading weights") < firsts.index("capturing CUDA graphs") < firsts.index("starting server")


def test_recorded_cuda_graph_bars_take_the_newest_refresh_on_the_line() -> None:
    line = next(line for line in _recorded() if "Capturing CUDA graphs (decode, FULL)" in line)
    reading = read_line(line)
    assert reading is not None and reading.stage == "capturing CUDA graphs"
    assert reading.total == 51 and reading.done is not None and reading.done > 1
    assert reading.percent is not None and reading.percent > 2


def test_engines_md_shard_bar_and_download_lines() -> None:
    shard = read_line("[2026-01-02 10:00:00 TP0] Loading safetensors checkpoint shards:  50% Completed | 2/4 "
                      "[00:10<00:10,  5.00s/it]")
    assert shard is not None
    assert (shard.stage, shard.percent, shard.done, shard.total, shard.remaining_s) == (
        "loading weights", 50.0, 2, 4, 10.0)
    sglang = read_line("[2026-01-02 10:00:00 TP0] Using model weights format ['*.safetensors']")
    assert sglang is not None and sglang.stage == "downloading weights"
    done = read_line("INFO 01-02 10:00:00 [weight_utils.py:514] Time spent downloading weights for "
                     "zai-org/GLM-4.7-Flash: 512.3 seconds")
    assert done is not None and done.percent == 100.0
    lightllm = read_line("pid 140 Loading model weights with 18 workers: 37%|███▋      | 18/48 [00:41<01:09]")
    assert lightllm is not None and lightllm.stage == "loading weights" and lightllm.remaining_s == 69.0
    fetch = read_line("Fetching 56 files:  25%|██▌       | 14/56 [02:00<06:00,  8.57s/it]")
    assert fetch is not None and fetch.stage == "downloading weights" and fetch.remaining_s == 360.0
    graphs = read_line("[2026-01-02 10:00:00 TP0] Capture cuda graph begin. This can take up to several minutes.")
    assert graphs is not None and graphs.stage == "capturing CUDA graphs"


def test_seed_wording_and_unrelated_lines_are_not_progress() -> None:
    # seed 000 tells users to watch for "Loading model weights": alone it carries no bar
    assert read_line("The server is fired up and ready to roll!") is None
    assert read_line("INFO 12-02 19:46:04 [gpu_model_runner.py:5255] Model loading took 55.87 GiB memory") is None
    assert read_line("62.50% |") is None


def test_sandbox_shard_bar_without_remaining_time_gets_an_extrapolated_eta() -> None:
    tracker = LoadTracker()
    tracker.feed(["Loading safetensors checkpoint shards:  25% Completed | 2/8 [███       ] 1.00it/s"], now=100.0)
    tracker.feed(["Loading safetensors checkpoint shards:  50% Completed | 4/8 [█████     ] 1.00it/s"], now=110.0)
    progress = tracker.progress(110.0)
    assert progress is not None and progress.percent == 50.0 and not progress.estimated
    assert progress.eta_s == 20  # 25 points took 10 s, 50 to go


def test_silent_download_is_estimated_from_the_offer_speed_and_counts_down() -> None:
    tracker = LoadTracker(download_s=600.0)
    tracker.feed(["INFO [gpu_model_runner.py:5160] Starting to load model zai-org/GLM-4.7-Flash..."], now=50.0)
    first = tracker.progress(110.0)
    later = tracker.progress(350.0)
    assert first is not None and later is not None and first.estimated
    assert (first.percent, first.eta_s) == (10.0, 540)
    assert (later.percent, later.eta_s) == (50.0, 300)
    overdue = tracker.progress(2000.0)
    assert overdue is not None and overdue.percent == 99.0 and overdue.eta_s is None


def test_an_onstart_download_counts_from_the_start_and_ends_at_the_fetch_bar() -> None:
    # LightLLM: the onstart's `hf download` runs before the engine prints anything.
    tracker = LoadTracker(download_s=100.0)
    tracker.begin_download(now=0.0)
    early = tracker.progress(25.0)
    assert early is not None and (early.stage, early.percent, early.eta_s) == ("downloading weights", 25.0, 75)
    tracker.feed(["Fetching 20 files: 100%|██████████| 20/20 [01:40<00:00]"], now=100.0)
    done = tracker.progress(100.0)
    assert done is not None and done.percent == 100.0 and not done.estimated
