"""Pydantic models for what Vast.ai returns (vast-api.md §4.6, §5.4, §6).

The real API sends nulls for almost anything, adds fields without notice, and has been seen
returning numbers where strings are documented. So: every field except an object's ``id`` is
optional, unknown fields never fail validation, strings are stripped (``public_ipaddr`` arrives with
trailing whitespace), and ``from_api`` turns a malformed non-essential field into None instead of
losing the whole object (or to its default, when the field has one).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

__all__ = ["CreateResult", "Instance", "InstancePage", "Offer", "PortBinding", "VastModel"]


class VastModel(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        str_strip_whitespace=True,
        coerce_numbers_to_str=True,
        populate_by_name=True,
    )

    # Fields without which the object is useless; a bad value there is a real error.
    essential: ClassVar[frozenset[str]] = frozenset({"id"})

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        """Validate, dropping any non-essential field whose value is malformed (it takes its default)."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
            if not bad or bad & cls.essential:
                raise
            # Dropped rather than set to None, so a field with a non-null default (CreateResult.success)
            # falls back to it instead of failing a second time.
            repaired = {key: value for key, value in data.items() if key not in bad}
            return cls.model_validate(repaired)


class Offer(VastModel):
    """One rentable machine slice from ``POST /api/v0/bundles/``; ``id`` is what create rents."""

    # Offers carry no secrets, so unknown fields are kept: `offers --json` can show them.
    model_config = ConfigDict(extra="allow")

    id: int
    machine_id: int | None = None
    host_id: int | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    gpu_ram: float | None = None  # MB per GPU
    gpu_total_ram: float | None = None  # MB
    cpu_ram: float | None = None  # MB
    cpu_cores_effective: float | None = None
    disk_space: float | None = None  # GB
    disk_bw: float | None = None  # MB/s
    dph_total: float | None = None  # $/h incl. the storage priced via allocated_storage
    dph_base: float | None = None
    storage_cost: float | None = None
    inet_down: float | None = None
    inet_up: float | None = None
    cuda_max_good: float | None = None
    driver_version: str | None = None
    compute_cap: int | None = None
    direct_port_count: int | None = None
    reliability: float | None = None
    reliability2: float | None = None
    verification: str | None = None
    geolocation: str | None = None
    duration: float | None = None  # seconds the host contract still runs
    end_date: float | None = None
    hosting_type: int | None = None
    static_ip: bool | None = None
    public_ipaddr: str | None = None
    score: float | None = None
    dlperf: float | None = None
    total_flops: float | None = None
    min_bid: float | None = None
    rentable: bool | None = None
    rented: bool | None = None

    @property
    def datacenter(self) -> bool:
        return self.hosting_type == 1


class PortBinding(VastModel):
    """One Docker-style mapping; ``HostPort`` is a string in the real API."""

    essential: ClassVar[frozenset[str]] = frozenset()

    host_ip: str | None = Field(default=None, alias="HostIp")
    host_port: str | None = Field(default=None, alias="HostPort")


class Instance(VastModel):
    """A rented instance as ``GET /api/v0/instances/{id}/`` and ``/api/v1/instances/`` describe it.

    Unknown fields are dropped on purpose: rows echo ``extra_env`` and ``onstart``, which hold the
    endpoint key, and fields like ``jupyter_token``; only the config echo we need is kept, out of repr.
    """

    id: int
    label: str | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    image_uuid: str | None = None
    image_runtype: str | None = None
    public_ipaddr: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ports: dict[str, list[PortBinding] | None] | None = None
    direct_port_count: int | None = None
    machine_id: int | None = None
    host_id: int | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    dph_total: float | None = None
    disk_space: float | None = None
    geolocation: str | None = None
    start_date: float | None = None
    end_date: float | None = None
    uptime_mins: float | None = None
    extra_env: dict[str, str] = Field(default_factory=dict, repr=False)
    onstart: str | None = Field(default=None, repr=False)

    @field_validator("extra_env", mode="before")
    @classmethod
    def _pairs_to_dict(cls, value: Any) -> Any:
        # The API sends a list of [key, value] pairs; tolerate a dict, null and odd pairs too.
        if value is None:
            return {}
        if isinstance(value, list):
            pairs = [item for item in value if isinstance(item, list | tuple) and len(item) == 2]
            return {str(key): "" if val is None else str(val) for key, val in pairs}
        return value

    def host_port(self, container_port: int = 8000, proto: str = "tcp") -> int | None:
        """The public port mapped to ``container_port``, or None while ports are not mapped yet."""
        bindings = (self.ports or {}).get(f"{container_port}/{proto}") or []
        for binding in bindings:
            # str.isdigit() alone also accepts '²', which int() refuses.
            if binding.host_port and binding.host_port.isascii() and binding.host_port.isdigit():
                port = int(binding.host_port)
                if 0 < port < 65536:
                    return port
        return None

    def endpoint(self, container_port: int = 8000) -> tuple[str, int] | None:
        """``(public_ip, host_port)`` for a container port, once both are known.

        The address must be an IP address or a plain host name: it becomes the host of a URL that
        receives the endpoint key, so text like ``evil.example/x?`` must not redirect it elsewhere.
        """
        port = self.host_port(container_port)
        if not self.public_ipaddr or port is None or not _is_host(self.public_ipaddr):
            return None
        return self.public_ipaddr, port

    def service_url(self, container_port: int = 8000) -> str | None:
        """``http://ip:port`` for a container port, or None while it is not reachable yet."""
        found = self.endpoint(container_port)
        if found is None:
            return None
        host, port = found
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _is_host(text: str) -> bool:
    if "%" in text:  # an IPv6 zone id has no place in a public URL
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return _HOST_NAME.fullmatch(text) is not None
    return True


class InstancePage(VastModel):
    """One page of ``GET /api/v1/instances/``; follow ``next_token`` until it is empty."""

    essential: ClassVar[frozenset[str]] = frozenset({"instances"})

    instances: list[dict[str, Any]] = Field(default_factory=list)
    next_token: str | None = None
    instances_found: int | None = None
    total_instances: int | None = None
    label_counts: dict[str, int] | None = None

    @field_validator("instances", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    def parsed_instances(self) -> list[Instance]:
        return [Instance.from_api(row) for row in self.instances]


class CreateResult(VastModel):
    """Answer to ``PUT /api/v0/asks/{id}/``: ``new_contract`` is the new instance's id.

    ``success`` false with a ``new_contract`` means the instance was created *stopped*: it bills
    storage and will not start by itself, so the caller must destroy it (``created_stopped``).
    """

    essential: ClassVar[frozenset[str]] = frozenset()

    success: bool = False
    new_contract: int | None = None
    instance_api_key: SecretStr | None = None
    ask_id: int | None = None
    error: str | None = None
    msg: str | None = None

    @property
    def instance_id(self) -> int | None:
        return self.new_contract

    @property
    def created_stopped(self) -> bool:
        return not self.success and self.new_contract is not None
