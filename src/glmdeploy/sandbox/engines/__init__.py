"""Simulated GLM serving engines (SGLang, vLLM, LightLLM) for the sandbox: real log lines, real sockets, no GPU.

The Vast API emulator calls ``launch_spec_from`` when an instance starts running and, if an engine is
launched, runs a ``SimulatedEngine`` on the instance's host port (contract: notes/sandbox-contract.md;
behaviour: docs/sandbox-engines.md).
"""

from glmdeploy.sandbox.engines.engine import ENGINE_FAULTS, EngineTiming, SimulatedEngine
from glmdeploy.sandbox.engines.launch import LaunchSpec, launch_spec_from, pull_error

__all__ = ["ENGINE_FAULTS", "EngineTiming", "LaunchSpec", "SimulatedEngine", "launch_spec_from", "pull_error"]
