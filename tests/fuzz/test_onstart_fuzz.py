"""Property tests: no profile value that passes validation escapes its quoting in the onstart script.

Every rendered script is checked by ``bash -n`` and then run for real with every program it may call
replaced by a recording stub on a PATH that holds nothing else. The engine stub must receive exactly
the argv the engine's builder produced (with ``$GLM_API_KEY`` expanded), nothing may be created in
the working directory, and no command outside the expected set may run (bash would print
"command not found" on stderr).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from glmdeploy.engines import EnvRef, get_engine
from glmdeploy.onstart import (
    ASK_VAST_IP,
    PROXY_CONF,
    PROXY_UPSTREAM_PORT,
    TLS_CERT,
    TLS_DIR,
    TLS_KEY,
    OnstartOptions,
    needs_proxy,
    render,
)
from glmdeploy.profiles import Profile, load_profile
from waits import HANG_S

# One shipped profile per engine (h200-mtp adds LightLLM's MTP flags, 4x3090 is SGLang).
BASES: dict[str, dict[str, Any]] = {
    name: load_profile(name).model_dump(mode="json") for name in ("4x3090", "2x5090", "h200", "h200-mtp")
}
STUBS = (
    "python3", "python", "vllm", "hf", "nginx", "apt-get", "sleep", "rm", "cat", "chmod", "mkdir", "openssl", "cut",
)
# Two bash runs per example: keep the ci profile (40 examples) at about 40 bash executions.
BUDGET = max(1, settings.default.max_examples // 2)

HOSTILE = [
    "'",
    '"',
    "$(touch pwned)",
    "`touch pwned2`",
    ";",
    "&&",
    "||",
    "|",
    "${HOME}",
    "$HOME",
    "*",
    "?",
    "[a-z]",
    "-",
    "--",
    "\\",
    "é",
    "💥",
    " ",
    "\t",
    "!",
    "#",
    "~",
    ">",
    "<",
    "&",
    "$'\\x41'",
    "%s",
    "\x1b[31m",
    "{a,b}",
    "$((1+1))",
    "$0",
    "$@",
    "> out",
    "; touch pwned3",
    "\\'",
    "\v",
    "\x85",
    "\u2028",
]
safe_text = st.text(alphabet=st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)), max_size=8)
hostile_arg = st.one_of(st.just(""), st.lists(st.one_of(st.sampled_from(HOSTILE), safe_text), max_size=5).map("".join))
repo_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}(/[A-Za-z0-9][A-Za-z0-9._-]{0,15})?", fullmatch=True)
served_names = st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/:+-]{0,20}", fullmatch=True)
revisions = st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,15}", fullmatch=True)
flag_values = st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/+-]{0,12}", fullmatch=True)
env_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
api_keys = st.sampled_from(["k-123", "k $(touch pwned) `id` ';\"", "*", "-n", "${HOME}", "é💥\\"])


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in draw(st.sampled_from(list(BASES.values()))).items()}
    data["model"] = {
        **data["model"],
        "repo": draw(repo_ids),
        "served_name": draw(served_names),
        "revision": draw(revisions),
    }
    engine = dict(data["engine"])
    for key in ("tool_call_parser", "reasoning_parser", "dtype", "kv_cache_dtype"):
        engine[key] = draw(flag_values)
    engine["extra_args"] = draw(st.lists(hostile_arg, max_size=6))
    data["engine"] = engine
    data["env"] = draw(st.dictionaries(env_keys, safe_text, max_size=3))
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        # Only a script over Vast's 4,096 characters may be refused; everything drawn here is legal.
        assert "Vast accepts at most" in str(exc)
        assume(False)
        raise


options = st.builds(
    OnstartOptions,
    deployment=st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True),
    ttl_seconds=st.none() | st.integers(min_value=1, max_value=10**7),
    auth_proxy=st.booleans(),
)


def _install_stubs(bin_dir: Path, log_dir: Path) -> None:
    bin_dir.mkdir()
    for name in STUBS:
        # Each call leaves one file: the program name, then its arguments, NUL-separated.
        body = [
            "#!/bin/bash",
            f'record="{log_dir}/$BASHPID.$RANDOM"',
            # Written aside, then renamed: a reader never sees a half-written record.
            f'printf \'%s\\0\' {name} "$@" > "$record.part"',
        ]
        if name == "vllm":
            body.append('printf \'VLLM_API_KEY=%s\\0\' "${VLLM_API_KEY-unset}" >> "$record.part"')
        body.append('/bin/mv "$record.part" "$record"')
        if name == "cat":
            body.append('exec /bin/cat "$@"')
        elif name in ("chmod", "mkdir"):
            body.append(f'exec /bin/{name} "$@"')
        elif name == "openssl":
            # `openssl req` writes the key and the certificate: leave (empty) files where it was told to.
            body.append('if [ "$1" = req ]; then while [ $# -gt 0 ]; do case "$1" in -keyout|-out) : > "$2";; esac;'
                        " shift; done; fi")
        body.append("exit 0")
        stub = bin_dir / name
        stub.write_text("\n".join(body) + "\n")
        stub.chmod(0o755)


def _calls(log_dir: Path) -> list[list[str]]:
    calls = []
    for record in log_dir.iterdir():
        if record.suffix == ".part":
            continue
        parts = record.read_bytes().decode("utf-8", "surrogateescape").split("\0")
        assert parts[-1] == ""
        calls.append(parts[:-1])
    return calls


@settings(deadline=None, max_examples=BUDGET, suppress_health_check=[HealthCheck.too_slow])
@given(profile=profiles(), opts=options, api_key=api_keys)
@example(
    profile=Profile.model_validate(
        {**BASES["4x3090"], "engine": {**BASES["4x3090"]["engine"], "extra_args": ["$(touch pwned)", "*", "-", ""]}}
    ),
    opts=OnstartOptions(ttl_seconds=3600, auth_proxy=True),
    api_key="k $(touch pwned) `id`",
)
def test_rendered_script_runs_exactly_the_built_commands(profile: Profile, opts: OnstartOptions, api_key: str) -> None:
    try:
        script = render(profile, opts)
    except ValueError as exc:
        assert "Vast accepts at most" in str(exc)
        assume(False)
        return
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0

    with tempfile.TemporaryDirectory(prefix="fuzz-onstart-") as tmp:
        root = Path(tmp)
        log_dir, work, nginx_dir = root / "calls", root / "work", root / "etc-nginx"
        log_dir.mkdir()
        work.mkdir()
        (nginx_dir / "conf.d").mkdir(parents=True)
        _install_stubs(root / "bin", log_dir)
        # The test runs as root on some machines: keep the proxy's files out of the real /etc/nginx.
        tls_dir = root / "etc-tls"
        runnable = script.replace("/etc/nginx/", f"{nginx_dir}/").replace(TLS_DIR, str(tls_dir))
        env = {"PATH": str(root / "bin"), "GLM_API_KEY": api_key, "HOME": str(root / "home"), "LC_ALL": "C.UTF-8"}
        done = subprocess.run(
            ["/bin/bash", "-c", runnable], env=env, cwd=work, capture_output=True, check=False, timeout=20
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == b""
        engine = get_engine(profile.engine.kind)
        proxied = needs_proxy(profile, opts)
        host, port = ("127.0.0.1", PROXY_UPSTREAM_PORT) if proxied else ("0.0.0.0", profile.engine.port)
        built = engine.argv(profile, host=host, port=port)
        expected_engine = [api_key if isinstance(a, EnvRef) else str(a) for a in built]

        expected: list[list[str]] = []
        if engine.kind == "vllm":
            expected.append([*expected_engine, f"VLLM_API_KEY={api_key}"])
        else:
            expected.append(expected_engine)
        model_dir = engine.model_dir(profile)
        if model_dir is not None:
            download = ["hf", "download", profile.model.repo, "--local-dir", model_dir]
            if profile.model.revision:
                download += ["--revision", profile.model.revision]
            expected.append(download)
        conf = PROXY_CONF.replace("/etc/nginx/", f"{nginx_dir}/")
        if proxied:
            expected += [["rm", "-f", f"{nginx_dir}/sites-enabled/default"], ["cat"], ["chmod", "600", conf], ["nginx"]]
        if opts.tls:
            # The key pair is made on the host; PUBLIC_IPADDR is unset here, so Vast is asked for the address
            # (the python3 stub prints nothing: the SAN falls back to loopback).
            key, cert = TLS_KEY.replace(TLS_DIR, str(tls_dir)), TLS_CERT.replace(TLS_DIR, str(tls_dir))
            expected += [
                ["mkdir", "-p", "-m", "700", str(tls_dir)],
                ["python3", "-c", ASK_VAST_IP],
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "397", "-subj", "/CN=glmdeploy", "-keyout", key, "-out", cert,
                 "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE",
                 "-addext", "extendedKeyUsage=serverAuth"],
                ["chmod", "600", key],
                ["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
                ["cut", "-d=", "-f2"],
            ]
        if opts.ttl_seconds:
            expected += [["sleep", str(opts.ttl_seconds)], ["python3", "-"]]
            # The watchdog runs in the background: wait until it has reached its stubs (HANG_S bounds a hang).
            limit = time.monotonic() + HANG_S
            while len(_calls(log_dir)) < len(expected) and time.monotonic() < limit:
                time.sleep(0.02)

        assert sorted(_calls(log_dir)) == sorted(expected)
        assert list(work.iterdir()) == []
        if proxied:
            text = Path(conf).read_text()
            assert f"[[:space:]]+{api_key}$\" 1;" in text
            assert "$http_authorization" in text and oct(os.stat(conf).st_mode & 0o777) == "0o600"
