"""Which Vast.ai API a command talks to: the real one (with the user's key) or the local sandbox.

``--sandbox`` finds the running sandbox or starts one; its key is a local test key. Commands that
act on an existing deployment talk to the server the deployment was created on (its ``api_url``),
so a sandbox deployment is never looked for on the real Vast.ai, nor the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glmdeploy.deploy import Pacing
    from glmdeploy.sandbox.process import SandboxInfo
    from glmdeploy.state import Deployment
    from glmdeploy.vast.client import VastClient


@dataclass
class Connection:
    client: VastClient
    api_url: str
    pacing: Pacing
    sandbox: bool


def connect(api_key: str | None, api_url: str | None, sandbox: bool) -> Connection:
    from glmdeploy.deploy import Pacing
    from glmdeploy.vast.client import client_from_options

    if sandbox:
        from glmdeploy.sandbox.process import ensure_running

        info = ensure_running()
        return _sandbox_connection(info)
    client = client_from_options(api_key, api_url)
    return Connection(client, client.base_url, Pacing(), sandbox=False)


def connect_default(api_key: str | None, api_url: str | None, sandbox: bool) -> Connection | None:
    """The account a command looks at beyond its own records (``list``, ``destroy --orphans``).

    With ``sandbox``: the running sandbox, or None when none runs (it is not started: a new one
    holds nothing). Otherwise Vast.ai with the discovered key; ``MissingApiKey`` when there is none.
    """
    if sandbox:
        running = _running_sandbox()
        return None if running is None else _sandbox_connection(running)
    return connect(api_key, api_url, False)


def connect_for(deployment: Deployment, api_key: str | None) -> Connection:
    """The API server ``deployment`` lives on; a sandbox deployment needs its sandbox running."""
    from glmdeploy.deploy import Pacing
    from glmdeploy.vast.client import client_from_options

    if is_local(deployment.api_url):
        running = _running_sandbox()
        if running is None or running.url != deployment.api_url:
            from glmdeploy.errors import UsageError

            raise UsageError(
                f"deployment {deployment.name!r} lives on a sandbox at {deployment.api_url}, which is not running",
                hint="the sandbox's instances ended with it; 'glmdeploy destroy --all' clears the records",
            )
        return _sandbox_connection(running)
    client = client_from_options(api_key, deployment.api_url)
    return Connection(client, client.base_url, Pacing(), sandbox=False)


def _sandbox_connection(info: SandboxInfo) -> Connection:
    from glmdeploy.deploy import Pacing
    from glmdeploy.vast.client import VastClient

    # The sandbox's clock runs time_scale times faster; so does its stand-in for the S3 log upload.
    # Retry backoff too: the number of retries a fault causes is what it would be on Vast, not the wait.
    scale = info.time_scale
    client = VastClient(
        info.api_key,
        base_url=info.url,
        key_source="sandbox",
        log_poll_interval=0.5 * scale,
        backoff_initial=max(0.005, 0.5 * scale),
        backoff_max=max(0.05, 20.0 * scale),
        backoff_jitter=0.5 * scale,
    )
    return Connection(client, info.url, Pacing(scale=info.time_scale), sandbox=True)


def is_local(api_url: str | None) -> bool:
    return api_url is not None and api_url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]"))


def _running_sandbox() -> SandboxInfo | None:
    from glmdeploy.sandbox.process import running

    return running()
