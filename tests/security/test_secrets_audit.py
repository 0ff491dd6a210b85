"""Secrets audit: the Vast.ai account key and the endpoint key appear nowhere a user or a CI log can see.

The only places a secret may show are the ones a user asked for: ``glmdeploy env`` prints the
endpoint key, both keys travel in ``Authorization`` headers, the provider keeps the endpoint key in
the instance's environment, and ``sandbox start|status`` print the sandbox's own key (a local test
key by shared/spec/cli.md; here it doubles as the recognisable "account key"). Everything else is
scanned: every command's stdout and stderr (with and without ``--json``, in success and failure),
the state DB (every table and column except ``deployments.endpoint_api_key``), every file under
GLMDEPLOY_HOME and the user's home, the onstart script and instance row the provider stores, and
every URL the sandbox received. ``find_leaks`` also looks for the usual transformed forms of a
key (URL- and JSON-escaped, base64 at every alignment, its first or last 16 characters), and the
negative controls prove it fails on a planted leak.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import respx
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.errors import GlmdeployError
from glmdeploy.onstart import render
from glmdeploy.profiles import load_all
from glmdeploy.profiles.model import Profile
from glmdeploy.sandbox.engines import EngineTiming, SimulatedEngine, launch_spec_from
from glmdeploy.tls import FINGERPRINT_MARKER, colon_form
from glmdeploy.vast.client import VastClient
from waits import HANG_S

from .conftest import AuditCli, KeyedSandbox, Run

StartSandbox = Callable[[str], KeyedSandbox]
PARTIAL = 16  # a key's first or last this-many characters count as a leak


def vast_key(tag: str = "AUDIT") -> str:
    """A recognisable account key; '+' and '/' make its URL- and JSON-escaped forms differ from it."""
    return f"vk+{tag}/{secrets.token_hex(24)}"


# --------------------------------------------------------------------------- the scanner


def _base64_runs(raw: bytes) -> dict[str, str]:
    """The base64 characters that depend on ``raw`` alone, at each of the three byte alignments."""
    runs: dict[str, str] = {}
    for shift in range(3):
        for name, encode in (("base64", base64.b64encode), ("urlsafe base64", base64.urlsafe_b64encode)):
            text = encode(b"\0" * shift + raw + b"\0\0\0").decode()
            # Drop the quantum shared with the bytes before the key and the two after it.
            runs[f"{name} (offset {shift})"] = text[4 if shift else 0 : -8]
    return runs


def key_forms(secret: str) -> dict[str, str]:
    """The spellings of ``secret`` a leak could take: verbatim and the usual transformed forms."""
    escaped = json.dumps(secret)[1:-1]
    forms = {
        "verbatim": secret,
        "URL-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "JSON-escaped": escaped,
        "JSON-escaped slashes": escaped.replace("/", "\\/"),
        "repr-escaped": repr(secret)[1:-1],
        f"first {PARTIAL} characters": secret[:PARTIAL],
        f"last {PARTIAL} characters": secret[-PARTIAL:],
        **_base64_runs(secret.encode()),
    }
    return {name: form for name, form in forms.items() if len(form) >= PARTIAL}


def find_leaks(text: str, keys: Mapping[str, str]) -> list[str]:
    """Which of ``keys`` (name -> value) appear in ``text``, and in which form."""
    found = []
    for name, value in keys.items():
        for form_name, form in key_forms(value).items():
            if form in text:
                found.append(f"{name} ({form_name})")
    return found


@dataclass
class Audit:
    """Everything a user or a CI log could see, scanned at the end against every key known by then."""

    keys: dict[str, str]
    seen: list[tuple[str, str, frozenset[str]]] = field(default_factory=list)

    def see(self, where: str, text: str, *, allow: frozenset[str] = frozenset()) -> None:
        self.seen.append((where, text, allow))

    def see_runs(self, runs: list[Run], *, allow: Mapping[str, frozenset[str]] | None = None) -> None:
        for run in runs:
            permitted = next(
                (names for prefix, names in (allow or {}).items() if run.where.startswith(prefix)), frozenset()
            )
            self.see(f"{run.where} (exit {run.returncode}) stdout", run.stdout, allow=permitted)
            self.see(f"{run.where} (exit {run.returncode}) stderr", run.stderr, allow=permitted)

    def see_file(self, path: Path, *, allow: frozenset[str] = frozenset()) -> None:
        # latin-1 maps every byte to one character, so every ASCII form of a key is found as is.
        self.see(f"file {path}", path.read_bytes().decode("latin-1"), allow=allow)

    def leaks(self) -> list[str]:
        out: list[str] = []
        for where, text, allow in self.seen:
            hits = find_leaks(text, {k: v for k, v in self.keys.items() if k not in allow})
            out.extend(f"{where}: {hit}" for hit in hits)
        return out

    def assert_clean(self) -> None:
        leaks = self.leaks()
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
        assert self.seen, "nothing was scanned"


# --------------------------------------------------------------------------- negative controls


def test_scanner_finds_a_planted_key_in_every_form_it_claims() -> None:
    key = secrets.token_hex(32)
    account = vast_key()
    keys = {"endpoint key": key, "Vast key": account}
    for secret in (key, account):
        for form_name, form in key_forms(secret).items():
            planted = f"INFO request ok {form} done\n"
            assert find_leaks(planted, keys), f"{form_name} of the key was not found"
    # Base64 of a bigger blob that holds the key at any offset (a Basic auth header, a JSON dump).
    for prefix in ("", "a", "ab", "user:"):
        blob = base64.b64encode(f"{prefix}{account} trailing".encode()).decode()
        assert find_leaks(blob, keys), f"base64 with prefix {prefix!r}"
    clean = "export OPENAI_BASE_URL=http://127.0.0.1:1/v1\nexport MODEL=GLM-4.7-Flash\n" + secrets.token_hex(32)
    assert find_leaks(clean, keys) == []


def test_audit_fails_on_a_planted_leak_in_a_fake_output_and_a_fake_file(tmp_path: Path) -> None:
    key = secrets.token_hex(32)
    audit = Audit({"endpoint key": key})
    audit.see_runs([Run(("status",), 0, f"ready\n  endpoint: http://x/v1?key={quote(key)}\n", "")])
    leaked_file = tmp_path / "notes.log"
    leaked_file.write_text(f"debug: Authorization: Basic {base64.b64encode(f'user:{key}'.encode()).decode()}\n")
    audit.see_file(leaked_file)
    with pytest.raises(AssertionError) as failure:
        audit.assert_clean()
    message = str(failure.value)
    assert "glmdeploy status (exit 0) stdout: endpoint key (URL-encoded)" in message
    assert f"file {leaked_file}: endpoint key (base64" in message
    # The same output where the key is allowed (``glmdeploy env``) passes.
    allowed = Audit({"endpoint key": key})
    allowed.see_runs(
        [Run(("env",), 0, f"export OPENAI_API_KEY={key}\n", "")], allow={"glmdeploy env": frozenset({"endpoint key"})}
    )
    allowed.assert_clean()


# --------------------------------------------------------------------------- helpers


def exports(run: Run) -> dict[str, str]:
    pairs = {}
    for line in run.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        pairs[name] = value.strip("'")
    return pairs


def ndjson(run: Run) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def db_cells(db: Path) -> Iterator[tuple[str, str, Any]]:
    """Every (table, column, value) of the state DB: a raw dump, not through glmdeploy's model."""
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = conn.execute(f'SELECT * FROM "{table}"')  # noqa: S608 (names come from sqlite_master)
            columns = [d[0] for d in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    yield table, column, value
    finally:
        conn.close()


def see_state_db(audit: Audit, db: Path) -> list[Any]:
    """Scan every cell except the key column; returns that column's values."""
    key_cells = []
    for table, column, value in db_cells(db):
        if (table, column) == ("deployments", "endpoint_api_key"):
            key_cells.append(value)
        else:
            audit.see(f"state DB {table}.{column}", "" if value is None else str(value))
    return key_cells


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(home: Path) -> None:
    """The state directory is 0700; the DB (with its -wal/-shm while open) and sandbox.json 0600."""
    assert mode(home) == 0o700
    db = home / "state.db"
    conn = sqlite3.connect(db)  # a reader in WAL mode keeps the -wal and -shm files in place
    try:
        conn.execute("SELECT count(*) FROM deployments").fetchone()
        companions = [p for p in (Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
        assert companions, "expected the WAL files while the database is open"
        for path in (db, *companions):
            assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"
    finally:
        conn.close()
    sandbox_json = home / "sandbox.json"
    if sandbox_json.exists():
        assert mode(sandbox_json) == 0o600


def see_files(audit: Audit, root: Path, *, allow: Mapping[str, frozenset[str]]) -> int:
    """Scan every file under ``root`` except the state DB (scanned cell by cell)."""
    count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.startswith("state.db"):
            continue
        audit.see_file(path, allow=allow.get(path.name, frozenset()))
        count += 1
    return count


SANDBOX_COMMANDS = {"glmdeploy sandbox": frozenset({"Vast key"})}  # its key is printable by the spec
ENV_COMMAND = {"glmdeploy env": frozenset({"endpoint key"})}


# --------------------------------------------------------------------------- the full deployment


@pytest.mark.slow
def test_a_deployment_shows_neither_key_outside_env(
    audit_cli: AuditCli, keyed_sandbox: StartSandbox, isolated_env: Path
) -> None:
    account = vast_key()
    sb = keyed_sandbox(account)
    api = ("--api-url", sb.url, "--api-key", account)
    audit = Audit({"Vast key": account})
    cli = audit_cli

    for json_flag in ((), ("--json",)):
        cli("profiles", "list", *json_flag)
        cli("plan", "--profile", "4x3090", *json_flag)
        cli("offers", "--profile", "4x3090", *api, *json_flag)
    # --ttl puts the watchdog in the onstart script: it must use the instance's own key, never ours.
    up = cli("up", "--profile", "4x3090", "--name", "audit", "--ttl", "1000h", "--yes", "--json", *api, separate=True)
    assert ndjson(up)[-1]["event"] == "ready"

    env = cli("env", separate=True)
    endpoint_key = exports(env)["OPENAI_API_KEY"]
    assert len(endpoint_key) == 64 and find_leaks(env.stdout, {"endpoint key": endpoint_key})
    audit.keys["endpoint key"] = endpoint_key
    # TLS (issue 14): the CA bundle env writes is public (0644, certificates only) and scanned with the
    # state directory below; no private key of the host's TLS pair may show anywhere.
    audit.keys["a TLS private key"] = "PRIVATE KEY"
    bundle = Path(exports(env)["SSL_CERT_FILE"])
    assert bundle.parent.parent == isolated_env and mode(bundle) == 0o644
    assert exports(env)["CURL_CA_BUNDLE"] == exports(env)["REQUESTS_CA_BUNDLE"] == str(bundle)

    for json_flag in ((), ("--json",)):
        cli("list", "--api-key", account, *json_flag)
        cli("status", "--api-key", account, *json_flag)
        # Pass or fail (the stream check is timing-sensitive on a busy machine), its output is scanned.
        assert cli("smoke", *json_flag, exit_code=None).returncode in (0, 5)
        cli("bench", "--num-prompts", "2", "--output-len", "8", *json_flag)
        cli("chat", "--demo-tool", "-m", "What's the weather in Paris?", *json_flag)
        cli("sandbox", "status", *json_flag)
    cli("list", "--all")
    reports = isolated_env.parent / "reports"
    reports.mkdir()
    assert cli("smoke", "--junit", str(reports / "smoke.xml"), exit_code=None).returncode in (0, 5)
    cli("bench", "--num-prompts", "2", "--output-len", "8", "--output", str(reports / "bench.json"),
        "--report", str(reports / "bench.html"))
    logs = cli("logs", "--api-key", account)
    assert "Capture cuda graph" in logs.stdout  # the engine's own lines are there, not an empty log
    # The fingerprint line may show (it is what glmdeploy pins); it carries the fingerprint and nothing else.
    fingerprint = json.loads(cli("status", "--json").stdout)["tls_fingerprint"]
    [marked] = [line for line in logs.stdout.splitlines() if FINGERPRINT_MARKER in line]
    assert marked == f"{FINGERPRINT_MARKER} {colon_form(fingerprint)}"
    cli("logs", "--tail", "20")

    # The provider's side: the endpoint key is in the instance's environment (it must be, for the
    # engine), never in the onstart script the provider stores and shows; the account key never
    # reaches the instance at all.
    [instance] = sb.running()
    row = sb.admin(f"/api/v0/instances/{instance['id']}/")["instances"]
    assert "${GLM_API_KEY}" in row["onstart"] and "CONTAINER_API_KEY" in row["onstart"]
    audit.see("instance onstart stored by the provider", row["onstart"])
    extra_env = {name: value for name, value in row["extra_env"]}
    assert extra_env.pop("GLM_API_KEY") == endpoint_key
    audit.see("instance row without GLM_API_KEY", json.dumps({**row, "extra_env": extra_env}))
    container = sb.admin(f"/_sandbox/instances/{instance['id']}/container-env")["env"]
    assert container.pop("GLM_API_KEY") == endpoint_key
    audit.see("container environment without GLM_API_KEY", json.dumps(container))

    # Local state: the key column is the only place the endpoint key is stored.
    assert see_state_db(audit, isolated_env / "state.db") == [endpoint_key]
    assert_private(isolated_env)

    cli("destroy", "--yes", "--json", "--api-key", account)
    cli("list", "--all", "--json")
    assert sb.running() == []
    assert see_state_db(audit, isolated_env / "state.db") == [endpoint_key]

    requests = sb.admin("/_sandbox/requests")["requests"]
    assert any(r["path"].startswith("/api/v0/asks/") for r in requests)
    for r in requests:
        audit.see(f"URL {r['method']} {r['url']}", f"{r['url']} {r['path']}?{r['query']}")

    audit.see_runs(cli.runs, allow={**SANDBOX_COMMANDS, **ENV_COMMAND})
    user_home = isolated_env.parent / "user-home"
    scanned = see_files(audit, isolated_env, allow={"sandbox.json": frozenset({"Vast key"})})
    scanned += see_files(audit, user_home, allow={})
    scanned += see_files(audit, reports, allow={})
    assert scanned >= 4  # sandbox.json, sandbox.log and the two reports at least
    audit.assert_clean()


@pytest.mark.slow
def test_failures_show_neither_key(audit_cli: AuditCli, keyed_sandbox: StartSandbox, isolated_env: Path) -> None:
    account = vast_key()
    sb = keyed_sandbox(account)
    wrong = vast_key("WRONG")
    audit = Audit({"Vast key": account, "wrong key": wrong})
    cli = audit_cli

    # The engine runs out of memory: the failure line and a log excerpt are printed.
    sb.set_faults("engine_oom")
    oom = cli("up", "--profile", "2x5090", "--yes", "--sandbox", exit_code=4, separate=True)
    assert "log excerpt" in oom.stderr and "OutOfMemoryError" in oom.stderr
    oom_json = cli("up", "--profile", "2x5090", "--yes", "--sandbox", "--json", exit_code=4)
    assert ndjson(oom_json)[-1]["event"] == "failed"

    # The provider echoes the account key back in an instance's status message.
    sb.set_faults(f"exited=2,msg=manifest for {account} not found")
    echoed = cli("up", "--profile", "4x3090", "--yes", "--sandbox", "--json", exit_code=4)
    assert "is exited: manifest for" in ndjson(echoed)[-1]["error"]
    cli("up", "--profile", "4x3090", "--yes", "--sandbox", exit_code=4)
    sb.set_faults("")

    # A refused key: exit 6, saying where the key came from but not what it is.
    refused = cli("up", "--profile", "4x3090", "--yes", "--api-url", sb.url, "--api-key", wrong, exit_code=6)
    assert "from --api-key" in refused.stderr
    cli(
        "up",
        "--profile",
        "4x3090",
        "--yes",
        "--json",
        "--api-url",
        sb.url,
        exit_code=6,
        extra_env={"VAST_API_KEY": wrong},
    )

    # Keys that cannot go in a header (two keys in one file, a stray non-ASCII character): httpx's
    # own error would quote the header; glmdeploy refuses them with exit 2 instead.
    second = vast_key("SECOND")
    audit.keys["second key"] = second
    for bad in (f"{wrong}\n{second}", f"{wrong}\r{second}", f"{wrong}\u00e9"):
        run = cli("offers", "--profile", "4x3090", "--api-url", sb.url, "--api-key", bad, exit_code=2)
        assert "cannot be sent" in run.stderr
    endpoint = f"http://127.0.0.1:{sb.url.rsplit(':', 1)[1]}/v1"
    for bad in (f"{secrets.token_hex(32)}\n{second}", f"{second}\u00e9"):
        cli("smoke", "--url", endpoint, "--api-key", bad, "--json", exit_code=2)
        cli("bench", "--url", endpoint, "--api-key", bad, "--model", "m", "--num-prompts", "1", exit_code=2)
        cli("chat", "--url", endpoint, "--api-key", bad, "--model", "m", "-m", "hi", exit_code=2)

    # The one-shot CI job, failing (engine OOM) and passing, with its JUnit report.
    reports = isolated_env.parent / "reports"
    reports.mkdir()
    sb.set_faults("engine_oom")
    ci_failed = cli(
        "ci", "--profile", "2x5090", "--sandbox", "--json", "--junit", str(reports / "ci-oom.xml"), exit_code=None
    )
    assert ci_failed.returncode == 4, ci_failed.stderr
    sb.set_faults("")
    ci_ok = cli(
        "ci",
        "--profile",
        "4x3090",
        "--sandbox",
        "--bench",
        "--bench-prompts",
        "2",
        "--junit",
        str(reports / "ci.xml"),
        "--report",
        str(reports / "ci-bench.html"),
        exit_code=None,
    )
    assert ci_ok.returncode in (0, 5), ci_ok.stderr  # 5: a timing-sensitive smoke check on a busy machine
    see_files(audit, reports, allow={})

    # What the failures left in the records, as list and status show it.
    for json_flag in ((), ("--json",)):
        cli("list", "--all", *json_flag)
    records = json.loads(cli("list", "--all", "--json").stdout)["deployments"]
    # Every run but the passing CI job failed; the two refused keys fail before any record is written.
    assert sum(bool(r["error"]) for r in records) >= 5
    for record in records:
        cli("status", record["id"], "--json")

    # Every endpoint key generated on the way is a secret too.
    db = isolated_env / "state.db"
    for i, value in enumerate(v for t, c, v in db_cells(db) if c == "endpoint_api_key" and v):
        audit.keys[f"endpoint key {i}"] = value
    # Two OOM runs, two echo runs and two CI jobs: each got its own key. The two refused keys were
    # caught before the search, so they wrote no record and made no endpoint key.
    assert len([k for k in audit.keys if k.startswith("endpoint key")]) == 6
    assert see_state_db(audit, db)
    assert_private(isolated_env)
    assert sb.running() == []
    for r in sb.admin("/_sandbox/requests")["requests"]:
        audit.see(f"URL {r['method']} {r['url']}", f"{r['url']} {r['path']}?{r['query']}")
    audit.see_runs(cli.runs, allow=SANDBOX_COMMANDS)
    see_files(audit, isolated_env, allow={"sandbox.json": frozenset({"Vast key"})})
    audit.assert_clean()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["VAST_API_KEY", "config file"])
def test_account_key_from_env_or_config_file_never_shows(
    audit_cli: AuditCli, keyed_sandbox: StartSandbox, isolated_env: Path, source: str
) -> None:
    account = vast_key()
    sb = keyed_sandbox(account)
    wrong = vast_key("WRONG")
    audit = Audit({"Vast key": account, "wrong key": wrong})
    key_file = isolated_env.parent / "user-home" / ".config" / "vastai" / "vast_api_key"

    def provide(key: str) -> dict[str, str]:
        if source == "VAST_API_KEY":
            return {"VAST_URL": sb.url, "VAST_API_KEY": key}
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key + "\n")
        return {"VAST_URL": sb.url}

    env = provide(account)
    for json_flag in ((), ("--json",)):
        audit_cli("offers", "--profile", "h200", *json_flag, extra_env=env)
        # Listing instances needs the key: exit 0 proves the key was found and accepted.
        audit_cli("destroy", "--orphans", "--yes", *json_flag, extra_env=env)
    env = provide(wrong)
    refused = audit_cli("destroy", "--orphans", "--yes", exit_code=6, extra_env=env)
    assert "refused the API key" in refused.stderr
    if source == "config file":  # (typer hands VAST_API_KEY over as --api-key, so that source reads so)
        assert f"(from {key_file})" in refused.stderr
    audit_cli("up", "--profile", "h200", "--yes", "--json", exit_code=6, extra_env=env)
    assert sb.running() == []
    audit.see_runs(audit_cli.runs, allow=SANDBOX_COMMANDS)
    for r in sb.admin("/_sandbox/requests")["requests"]:
        audit.see(f"URL {r['method']} {r['url']}", f"{r['url']} {r['path']}?{r['query']}")
    see_files(audit, isolated_env, allow={"sandbox.json": frozenset({"Vast key"})})
    audit.assert_clean()


# --------------------------------------------------------------------------- a server that echoes the key

BASE = "http://vast.test"


@pytest.fixture
def echoing() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def echo_client(key: str) -> VastClient:
    return VastClient(key, base_url=BASE, key_source="--api-key", sleep=lambda _s: None, log_poll_interval=0)


def _echo(request: httpx.Request) -> str:
    return request.headers["Authorization"].removeprefix("Bearer ")


ECHOES: dict[str, Callable[[httpx.Request], httpx.Response]] = {
    "401 auth_error": lambda r: httpx.Response(
        401, json={"error": "auth_error", "msg": f"Invalid user key {_echo(r)}"}
    ),
    "404 auth_error": lambda r: httpx.Response(404, json={"error": "auth_error", "msg": f"key {_echo(r)} unknown"}),
    "400 detail": lambda r: httpx.Response(400, json={"detail": f"bad request from {_echo(r)}"}),
    "error code": lambda r: httpx.Response(400, json={"error": f"bad_key_{_echo(r)}", "msg": "no"}),
    "500 text": lambda r: httpx.Response(500, text=f"Traceback: headers={{'Authorization': 'Bearer {_echo(r)}'}}"),
    "200 text": lambda r: httpx.Response(200, text=f"{_echo(r)} is not allowed here"),
    "200 JSON escaped": lambda r: httpx.Response(
        200,
        content=json.dumps({"success": False, "msg": _echo(r)}).replace("/", "\\/").encode(),
        headers={"Content-Type": "application/json"},
    ),
    "429 text": lambda r: httpx.Response(429, text=f"slow down {_echo(r)}", headers={"Retry-After": "9999"}),
}


@pytest.mark.parametrize("answer", list(ECHOES))
def test_an_echoed_account_key_never_reaches_an_error(echoing: respx.MockRouter, answer: str) -> None:
    key = vast_key()
    echoing.route().mock(side_effect=ECHOES[answer])
    client = echo_client(key)
    calls: list[Callable[[], object]] = [
        lambda: client.search_offers({}),
        lambda: client.show_instance(7),
        lambda: client.list_instances(),
        lambda: client.destroy_instance(7),
        lambda: client.request_logs(7),
    ]
    for call in calls:
        with pytest.raises(GlmdeployError) as error:
            call()
        shown = f"{error.value} {error.value.hint or ''} {vars(error.value)}"
        assert find_leaks(shown, {"Vast key": key}) == [], (answer, shown)


def test_an_echoed_account_key_never_reaches_instance_fields_or_logs(echoing: respx.MockRouter) -> None:
    key = vast_key()
    row = {
        "id": 7,
        "actual_status": "exited",
        "status_msg": f"pull failed for {key}",
        "label": f"x-{key}",
        "onstart": f"echo {key}",
        "extra_env": [["K", key]],
    }
    # JSON may escape '/' as '\/': the answer to show spells the key that way.
    escaped = json.dumps({"instances": row}).replace("/", "\\/").encode()
    echoing.get("/api/v0/instances/7/").respond(200, content=escaped, headers={"Content-Type": "application/json"})
    echoing.get("/api/v1/instances/").respond(200, json={"instances": [row], "next_token": None})
    echoing.put("/api/v0/instances/request_logs/7/").respond(
        200, json={"success": True, "result_url": f"{BASE}/logs/7.log"}
    )
    log_route = echoing.get("/logs/7.log").respond(200, text=f"env: VAST_API_KEY={key}\nready\n")
    client = echo_client(key)
    shown = client.show_instance(7)
    assert shown is not None and shown.status_msg == "pull failed for ***"
    listed = client.list_instances()
    logs = client.request_logs(7)
    assert "ready" in logs
    # The log upload lives on another host (S3): it gets no credentials at all.
    assert log_route.calls and "authorization" not in log_route.calls.last.request.headers
    everything = f"{shown!r} {shown.model_dump_json()} {listed!r} {logs}"
    assert find_leaks(everything, {"Vast key": key}) == []


def test_cli_output_stays_clean_when_the_server_echoes_the_key(echoing: respx.MockRouter) -> None:
    key = vast_key()
    echoing.route().mock(side_effect=ECHOES["200 text"])
    runner = CliRunner()
    for args in (["offers", "--profile", "h200"], ["offers", "--profile", "h200", "--json"]):
        result = runner.invoke(app, [*args, "--api-url", BASE, "--api-key", key])
        assert result.exit_code == 7, result.output
        assert "instead of JSON" in result.output
        assert find_leaks(result.output, {"Vast key": key}) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://user:{key}@127.0.0.1:9",
        "http://{key}@127.0.0.1:9",
        "http://127.0.0.1:9/?api_key={key}",
        "http://127.0.0.1:9/api#{key}",
    ],
)
def test_an_api_url_holding_the_key_is_refused_without_repeating_it(url: str, isolated_env: Path) -> None:
    """Vast accepts ``?api_key=``, so a key may sit in VAST_URL; it must not reach messages or deployment records."""
    key = vast_key()
    target = url.format(key=quote(key, safe=""))
    audit = Audit({"Vast key": key})
    runner = CliRunner()
    for args, env in (
        (["offers", "--profile", "h200", "--api-url", target], None),
        (["up", "--profile", "h200", "--yes", "--json", "--api-url", target], None),
        (["up", "--profile", "h200", "--yes"], {"VAST_URL": target}),
        (["destroy", "--orphans", "--yes", "--json"], {"VAST_URL": target}),
    ):
        result = runner.invoke(app, [*args, "--api-key", "vk-other"], env=env)
        if args[0] != "destroy":  # destroy --orphans warns and goes on to the servers it can reach
            assert result.exit_code == 2, result.output
        assert "must not hold credentials" in result.output
        audit.see(" ".join(args), result.output)
    db = isolated_env / "state.db"
    if db.exists():
        assert see_state_db(audit, db) == []  # nothing was recorded, so no key either
    audit.assert_clean()


def test_an_endpoint_echoing_its_key_does_not_put_it_in_smoke_reports(tmp_path: Path) -> None:
    """A proxy or engine that repeats the Authorization header in bodies and model ids."""
    key = secrets.token_hex(32)

    def echo(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        if request.url.path.endswith("/health"):
            return httpx.Response(200)
        if auth != f"Bearer {key}":
            return httpx.Response(401, json={"error": f"Unauthorized: {auth}"})
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": f"glm {auth}", "object": "model"}]})
        return httpx.Response(500, text=f"Internal error while serving {auth}")

    audit = Audit({"endpoint key": key})
    runner = CliRunner()
    with respx.mock(assert_all_called=False) as router:
        router.route(host="endpoint.test").mock(side_effect=echo)
        for extra in ([], ["--json"], ["--junit", str(tmp_path / "smoke.xml")]):
            result = runner.invoke(app, ["smoke", "--url", "http://endpoint.test/v1", "--api-key", key, *extra])
            assert result.exit_code == 5, result.output
            assert "[redacted]" in result.output  # the echoes were read, and masked
            audit.see(f"smoke {' '.join(extra)}", result.output)
    audit.see_file(tmp_path / "smoke.xml")
    audit.assert_clean()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/v1?api_key={key}", "http://u:{key}@127.0.0.1:9/v1", "http://127.0.0.1:9/v1#{key}"]
)
def test_an_endpoint_url_holding_the_key_is_refused_without_repeating_it(url: str) -> None:
    key = secrets.token_hex(32)
    audit = Audit({"endpoint key": key})
    runner = CliRunner()
    for command in (["smoke"], ["bench", "--model", "m", "--num-prompts", "1"]):
        result = runner.invoke(app, [*command, "--url", url.format(key=key), "--json"])
        if command == ["smoke"]:  # bench sends it as given (Basic auth from user:key@) and fails
            assert result.exit_code == 2, result.output
        audit.see(" ".join(command), result.output)
    audit.assert_clean()


# --------------------------------------------------------------------------- the endpoint key in engine logs


@pytest.mark.slow
def test_an_engine_printing_its_key_is_masked_in_up_output_and_state(
    monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    """Engines may log their arguments; ``up``'s failure line, excerpt and stored error must not carry the key."""
    from glmdeploy.sandbox import process

    created: list[str] = []
    create_instance = VastClient.create_instance
    request_logs = VastClient.request_logs

    def recording_create(self: VastClient, offer_id: int, **kwargs: Any) -> Any:
        created.append(kwargs["env"]["GLM_API_KEY"])
        return create_instance(self, offer_id, **kwargs)

    def echoing_logs(self: VastClient, instance_id: int, tail: int | None = None) -> str:
        text = request_logs(self, instance_id, tail)
        if "OutOfMemoryError" not in text:
            return text
        return (
            text
            + f"server_args=ServerArgs(api_key='{created[-1]}')\nRuntimeError: CUDA out of memory ({created[-1]})\n"
        )

    monkeypatch.setattr(VastClient, "create_instance", recording_create)
    monkeypatch.setattr(VastClient, "request_logs", echoing_logs)
    runner = CliRunner()
    started = runner.invoke(app, ["sandbox", "start", "--time-scale", "0.002", "--faults", "engine_oom"])
    assert started.exit_code == 0, started.output
    try:
        human = runner.invoke(app, ["up", "--profile", "2x5090", "--yes", "--sandbox"])
        machine = runner.invoke(app, ["up", "--profile", "2x5090", "--yes", "--sandbox", "--json"])
    finally:
        process.stop()
    assert human.exit_code == 4 and machine.exit_code == 4
    assert "[redacted]" in human.output  # the planted lines were read and shown, masked
    assert len(created) == 2
    keys = {f"endpoint key {i}": k for i, k in enumerate(created)}
    audit = Audit(keys)
    audit.see("up stdout+stderr", human.output)
    audit.see("up --json stdout+stderr", machine.output)
    key_cells = see_state_db(audit, isolated_env / "state.db")
    assert sorted(key_cells) == sorted(created)
    audit.assert_clean()


# --------------------------------------------------------------------------- every profile's endpoint needs the key

PROFILES = load_all()
ENGINE_KEY = secrets.token_hex(32)


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_every_shipped_profile_refuses_requests_without_the_key(profile: Profile) -> None:
    import asyncio
    import socket
    import threading
    import time

    from glmdeploy.engines import get_engine

    script = render(profile)
    assert ENGINE_KEY not in script
    spec = launch_spec_from(profile.engine.image, script, {"GLM_API_KEY": ENGINE_KEY})
    assert spec is not None and spec.kind == profile.engine.kind
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    engine = SimulatedEngine(spec, port=port, log=lambda _line: None, timing=EngineTiming(time_scale=0.0005), faults={})
    task = asyncio.run_coroutine_threadsafe(engine.run(), loop)
    try:
        deadline = time.monotonic() + HANG_S
        while engine.state != "serving":
            assert engine.state == "starting" and time.monotonic() < deadline, engine.state
            time.sleep(0.005)
        model = get_engine(profile.engine.kind).reported_model_name(profile)
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        # Over TLS, as shipped: the client trusts exactly the certificate the simulated host made.
        import ssl

        base = f"https://127.0.0.1:{port}/v1"
        pinned = ssl.create_default_context(cadata=engine.certificate.cert_pem.decode())
        refused_keys: list[str | None] = [None, "wrong", ENGINE_KEY[:-1], ENGINE_KEY + "0", f"{ENGINE_KEY} x"]
        with httpx.Client(timeout=10, trust_env=False, verify=pinned) as http:
            for key in [*refused_keys, ENGINE_KEY]:
                headers = {} if key is None else {"Authorization": f"Bearer {key}"}
                models = http.get(base + "/models", headers=headers)
                answer = http.post(base + "/chat/completions", headers=headers, json=chat)
                expected = 200 if key == ENGINE_KEY else 401
                assert (models.status_code, answer.status_code) == (expected, expected), (profile.name, key)
    finally:
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(5)
        task.result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
