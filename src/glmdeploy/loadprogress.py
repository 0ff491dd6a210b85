"""What an engine's startup log says about how far it is: the stage, and a percentage and ETA where it can.

Pure logic over log lines (the ones ``readiness`` already reads), no I/O. What each engine prints:

- vLLM and SGLang download the weights with Hugging Face's ``snapshot_download`` with tqdm **disabled**,
  so no download progress is printed (engines.md §2.3 step 1, §3.3 step 3; the table "Download progress
  in log: none"). The download is bracketed instead: vLLM's ``Starting to load model`` (recorded,
  real-vllm-0.24.0/startup-default.log, ``gpu_model_runner.py:5160``) up to ``Time spent downloading
  weights`` (``weight_utils.py`` ~L514); SGLang's ``Using model weights format`` (``weight_utils.py``
  ~L513) up to its first shard bar. In between the tracker estimates from the offer's download speed
  and says so (``estimated=True``).
- A LightLLM onstart runs ``hf download`` first, whose ``Fetching N files`` bar is tqdm's own.
- Weight loading: ``Loading safetensors checkpoint shards:  NN% Completed | i/N [...]`` (vLLM, SGLang:
  ``weight_utils.py``), LightLLM's ``pid N Loading model weights with K workers: NN%|...| i/N [mm:ss<mm:ss]``
  (``hf_load_utils.py`` L66).
- vLLM's ``Capturing CUDA graphs (decode, FULL):   2%|▏ | 1/51 [00:00<00:07,  6.53it/s]`` (recorded; several
  bars share one log line, joined by carriage returns the log viewer dropped), SGLang's ``Capture cuda graph
  begin``, then the server starting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A tqdm bar in either layout: "desc: NN%|bar| i/N [el<rem, ...]" or vLLM/SGLang's shard bar
# "desc: NN% Completed | i/N [el<rem, ...]". The [el<rem] part is optional (the sandbox prints a bar there).
_BAR = re.compile(
    r"(?P<desc>[A-Za-z][^:|\r\n]{2,80}?):\s*(?P<pct>\d{1,3})%"
    r"(?:\s*Completed\s*\||\|[^|\n]*\|)\s*(?P<n>\d+)/(?P<total>\d+)"
    r"(?:\s*\[(?P<el>[\d:]+)<(?P<rem>[\d:?]+))?"
)
_DOWNLOAD_START = ("Starting to load model", "Using model weights format")
_DOWNLOAD_END = ("Time spent downloading weights",)
_SERVER = ("Starting vLLM server on", "Starting vLLM API server", "Uvicorn running on", "Started server process",
           "Application startup complete")
_GRAPHS = ("Capture cuda graph begin", "Capturing CUDA graphs", "Profiling CUDA graph memory")


@dataclass(frozen=True)
class Reading:
    """How far the engine's startup is, as one log line or bar shows it."""

    stage: str  # "downloading weights", "loading weights", "capturing CUDA graphs", "starting server", ...
    percent: float | None = None
    remaining_s: float | None = None  # tqdm's own remaining-time estimate, when it prints one
    done: int | None = None
    total: int | None = None


def _mmss(text: str | None) -> float | None:
    if not text or "?" in text:
        return None
    seconds = 0.0
    for part in text.split(":"):
        if not part.isdigit():
            return None
        seconds = seconds * 60 + int(part)
    return seconds


def _bar_stage(desc: str) -> str:
    lowered = desc.lower()
    if "fetching" in lowered or "download" in lowered:
        return "downloading weights"
    if "cuda graph" in lowered:
        return "capturing CUDA graphs"
    if "load" in lowered or "shard" in lowered:
        return "loading weights"
    return desc.strip()


def read_line(line: str) -> Reading | None:
    """The progress one log line shows, or None when it says nothing about it."""
    bars = list(_BAR.finditer(line))
    if bars:
        last = bars[-1]  # several refreshes of a bar can share a line: the last is the newest
        return Reading(
            _bar_stage(last["desc"]),
            percent=float(min(100, int(last["pct"]))),
            remaining_s=_mmss(last["rem"]),
            done=int(last["n"]),
            total=int(last["total"]),
        )
    if any(marker in line for marker in _DOWNLOAD_START):
        return Reading("downloading weights")
    if any(marker in line for marker in _DOWNLOAD_END):
        return Reading("downloaded weights", percent=100.0)
    if any(marker in line for marker in _GRAPHS):
        return Reading("capturing CUDA graphs")
    if any(marker in line for marker in _SERVER):
        return Reading("starting server")
    return None


@dataclass(frozen=True)
class Progress:
    """What the live display shows for the engine's startup at one moment."""

    stage: str
    percent: float | None
    eta_s: float | None
    estimated: bool  # the percentage and ETA are an estimate from the offer's speed, not printed by the engine


class LoadTracker:
    """Follows the startup stages across polls; ``now`` is in the provider's seconds (the sandbox's clock).

    ``download_s`` is the expected download time (weights over the offer's ``inet_down``), used while an
    engine downloads silently.
    """

    def __init__(self, download_s: float | None = None) -> None:
        self.download_s = download_s
        self.stage: str | None = None
        self.reading: Reading | None = None
        self.stage_since = 0.0
        self._first_pct: tuple[float, float] | None = None  # (time, percent) of the stage's first bar

    def begin_download(self, now: float) -> None:
        """The onstart downloads the weights before the engine starts (LightLLM: ``hf download`` first)."""
        self.stage, self.stage_since, self._first_pct = "downloading weights", now, None
        self.reading = Reading("downloading weights")

    def feed(self, lines: list[str], now: float) -> None:
        for line in lines:
            reading = read_line(line)
            if reading is None:
                continue
            if reading.stage != self.stage:
                self.stage = reading.stage
                self.stage_since = now
                self._first_pct = None
            self.reading = reading
            if reading.percent is not None and self._first_pct is None:
                self._first_pct = (now, reading.percent)

    def progress(self, now: float) -> Progress | None:
        if self.stage is None or self.reading is None:
            return None
        reading = self.reading
        if self.stage == "downloading weights" and reading.percent is None:
            if not self.download_s:
                return Progress(self.stage, None, None, estimated=True)
            spent = now - self.stage_since
            percent = min(99.0, 100.0 * spent / self.download_s)
            left = self.download_s - spent
            return Progress(self.stage, round(percent, 1), round(left) if left > 0 else None, estimated=True)
        eta: float | None = reading.remaining_s
        if eta is None and reading.percent is not None and self._first_pct is not None:
            # No remaining time printed: extrapolate from the stage's rate since its first bar.
            t0, p0 = self._first_pct
            if reading.percent > p0 and now > t0:
                eta = (100.0 - reading.percent) * (now - t0) / (reading.percent - p0)
        return Progress(self.stage, reading.percent, round(eta) if eta is not None else None, estimated=False)
