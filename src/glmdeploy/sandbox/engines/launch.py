"""What a container would launch: read the onstart script like bash would, closely enough.

The sandbox never runs the script. It only needs the engine command the script ``exec``s,
with ``$VAR`` references expanded from the instance environment, to decide which engine to
simulate, under which model name and behind which API key (engines.md §2.1, §3.1, §4.1).
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from glmdeploy.engines import ENGINES, image_version


@dataclass(frozen=True)
class AuthProxy:
    """An nginx the onstart puts in front of an engine without auth of its own (LightLLM).

    It listens from the start of the container, so the port accepts connections long before the
    engine does: until then nginx answers 502 (engines.md has no such line; this is nginx's own page).
    """

    listen_port: int
    upstream_port: int | None
    api_key: str | None = field(repr=False)  # matched case-insensitively, as nginx's ``~*`` map regex does
    open_paths: tuple[str, ...]  # ``location = /path`` blocks without the key check
    unauthorized_body: bytes
    engine_key: str | None = field(repr=False)  # the key of the engine behind it, if it has its own
    # ``listen PORT ssl``: nginx terminates TLS with the certificate the script had openssl generate.
    tls: bool = False
    san_ip: str | None = None  # the IP SAN given to ``openssl req -addext subjectAltName=IP:...``


@dataclass(frozen=True)
class LaunchSpec:
    """The engine a container runs, as far as clients of its endpoint can tell."""

    kind: str  # "sglang" | "vllm" | "lightllm"
    served_model: str  # id listed by /v1/models
    # Secrets: kept out of repr() so a logged spec never shows them (the argv may hold --api-key).
    api_key: str | None = field(repr=False)  # bearer key the endpoint requires; None = open
    argv: tuple[str, ...] = field(repr=False)  # the launch argv after expanding "${VAR}" from the instance env
    context_length: int | None = None
    # Not in the sandbox contract's constructor: defaults keep it compatible. The image tag picks
    # version-dependent behaviour (vLLM < 0.16 also fills reasoning_content, ...).
    image: str = ""
    download: tuple[str, ...] = field(default=())  # argv of an `hf download` the script runs first
    proxy: AuthProxy | None = None  # an authenticating reverse proxy the script starts first

    @property
    def engine_key(self) -> str | None:
        """The key the engine process itself checks (behind a proxy, usually none)."""
        return self.proxy.engine_key if self.proxy is not None else self.api_key


class UnboundVariable(Exception):
    """A ``$VAR`` under ``set -u`` that the environment does not define: bash stops there."""


_OPERATORS = ("&&", "||", ";", "|", "&")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def shell_words(line: str, env: Mapping[str, str], *, nounset: bool = False) -> list[str]:
    """Split one line into words like POSIX sh: quotes, backslashes, ``$VAR``/``${VAR}`` expansion
    (not inside single quotes), ``#`` comments, and the control operators as separate words."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i, n = 0, len(line)

    def expand(at: int) -> tuple[str, int]:
        # line[at] == "$"
        if at + 1 < n and line[at + 1] == "{":
            end = line.find("}", at + 2)
            if end < 0:
                return "$", at + 1
            spec = line[at + 2 : end]
            name, _, default = spec.partition(":-")
            if not _NAME.fullmatch(name):
                return line[at : end + 1], end + 1
            value = env.get(name)
            if value is None or (value == "" and ":-" in spec):
                if ":-" in spec:
                    return default, end + 1
                if nounset:
                    raise UnboundVariable(name)
                return "", end + 1
            return value, end + 1
        match = _NAME.match(line, at + 1)
        if not match:
            return "$", at + 1
        name = match.group(0)
        if name not in env and nounset:
            raise UnboundVariable(name)
        return env.get(name, ""), match.end()

    while i < n:
        ch = line[i]
        if ch == "'":
            end = line.find("'", i + 1)
            end = n if end < 0 else end
            cur.append(line[i + 1 : end])
            in_word = True
            i = end + 1
        elif ch == '"':
            in_word = True
            i += 1
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n and line[i + 1] in '"\\$`':
                    cur.append(line[i + 1])
                    i += 2
                elif line[i] == "$":
                    value, i = expand(i)
                    cur.append(value)
                else:
                    cur.append(line[i])
                    i += 1
            i += 1
        elif ch == "\\" and i + 1 < n:
            cur.append(line[i + 1])
            in_word = True
            i += 2
        elif ch == "$":
            value, i = expand(i)
            cur.append(value)
            in_word = True
        elif ch.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
        elif ch == "#" and not in_word:
            break
        elif any(line.startswith(op, i) for op in _OPERATORS):
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            op = next(op for op in _OPERATORS if line.startswith(op, i))
            words.append(op)
            i += len(op)
        else:
            cur.append(ch)
            in_word = True
            i += 1
    if in_word:
        words.append("".join(cur))
    return words


def _commands(words: list[str]) -> list[list[str]]:
    """Split a line's words at control operators."""
    out: list[list[str]] = [[]]
    for word in words:
        if word in _OPERATORS:
            out.append([])
        else:
            out[-1].append(word)
    return [c for c in out if c]


def _strip_prefix(cmd: list[str], env: dict[str, str]) -> list[str]:
    """Drop ``exec`` and leading ``NAME=value`` assignments (which go into the command's env)."""
    cmd = list(cmd)
    while cmd:
        if cmd[0] == "exec":
            cmd.pop(0)
        elif "=" in cmd[0] and _NAME.fullmatch(cmd[0].split("=", 1)[0]):
            name, value = cmd.pop(0).split("=", 1)
            env[name] = value
        else:
            break
    return cmd


def engine_kind(argv: Sequence[str]) -> str | None:
    """Which engine an argv starts, if any."""
    if not argv:
        return None
    prog = os.path.basename(argv[0])
    if prog.startswith("python") and len(argv) >= 3 and argv[1] == "-m":
        module = argv[2]
        if module == "sglang.launch_server":
            return "sglang"
        if module.startswith("vllm.entrypoints.openai.api_server"):
            return "vllm"
        if module == "lightllm.server.api_server":
            return "lightllm"
        return None
    if prog == "vllm" and len(argv) >= 2 and argv[1] == "serve":
        return "vllm"
    if prog == "sglang" and len(argv) >= 2 and argv[1] == "serve":
        return "sglang"
    return None


def image_kind(image: str) -> str | None:
    """The engine an image ships, from its repository name (tag and digest ignored).

    A repository of an engine, or one named like it (``vllm/vllm-openai-rocm``, ``.../lightllm/xyz``), ships
    that engine; the repositories are the engine modules' own (``Engine.image_repos``).
    """
    ref = image.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    repo = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
    for kind, engine in ENGINES.items():
        for prefix in engine.image_repos:
            if repo == prefix or repo.startswith((prefix + "-", prefix + "/")):
                return kind
    return None


def pull_error(image: str) -> str | None:
    """What the registry answers a pull of ``image`` with, if it fails: a tag of an engine's repository that
    names no published release (nor a moving tag). Images of other repositories are trusted."""
    from glmdeploy.sandbox.faults import DEFAULT_PULL_ERROR

    info = image_version(image)
    if info.kind is None or info.known:
        return None
    return DEFAULT_PULL_ERROR.format(image=image)


def option_values(argv: Sequence[str], *names: str) -> list[str]:
    """Every value given to any of ``names`` (``--flag value`` or ``--flag=value``), in order."""
    found: list[str] = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                found.append(argv[i + 1])
            elif arg.startswith(name + "="):
                found.append(arg[len(name) + 1 :])
    return found


def option(argv: Sequence[str], *names: str) -> str | None:
    """The last value of an option (argparse keeps the last one)."""
    values = option_values(argv, *names)
    return values[-1] if values else None


def has_flag(argv: Sequence[str], *names: str) -> bool:
    return any(arg in names for arg in argv)


def _vllm_served_names(argv: Sequence[str]) -> list[str]:
    """``--served-model-name`` takes one or more values (nargs='+')."""
    names: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--served-model-name":
            for value in argv[i + 1 :]:
                if value.startswith("-"):
                    break
                names.append(value)
        elif arg.startswith("--served-model-name="):
            names.append(arg.split("=", 1)[1])
    return names


def model_path(kind: str, argv: Sequence[str]) -> str | None:
    if kind == "sglang":
        return option(argv, "--model-path", "--model")
    if kind == "lightllm":
        return option(argv, "--model_dir")
    # vllm serve MODEL ...: the positional comes right after `serve`; the legacy module uses --model.
    if len(argv) >= 3 and os.path.basename(argv[0]) == "vllm" and not argv[2].startswith("-"):
        return argv[2]
    return option(argv, "--model")


def served_model_name(kind: str, argv: Sequence[str]) -> str | None:
    path = model_path(kind, argv)
    if kind == "sglang":
        return option(argv, "--served-model-name") or path
    if kind == "vllm":
        names = _vllm_served_names(argv)
        return names[0] if names else path
    # LightLLM reports basename(model_dir) unless --model_name is given.
    name = option(argv, "--model_name")
    if name:
        return name
    return os.path.basename(path.rstrip("/")) if path else None


def _api_key(kind: str, argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    if kind == "lightllm":
        return None  # LightLLM has no API-key option at all (engines.md §4.1).
    key = option(argv, "--api-key")
    if kind == "vllm" and not key:
        key = env.get("VLLM_API_KEY")  # the CLI flag wins over the variable
    return key or None  # an empty key disables auth in both engines


def _context_length(kind: str, argv: Sequence[str]) -> int | None:
    names = {"sglang": ("--context-length",), "vllm": ("--max-model-len",), "lightllm": ("--max_req_total_len",)}
    value = option(argv, *names[kind])
    if value is None:
        return None
    try:
        parsed = int(value.replace("_", ""))
    except ValueError:
        return None  # vLLM's "auto": the engine picks
    return parsed if parsed > 0 else None


_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


def _heredoc_body(lines: list[str], env: Mapping[str, str], *, quoted: bool, nounset: bool) -> str:
    """An unquoted delimiter expands ``$VAR`` in the body and turns ``\\$`` into ``$``."""
    if quoted:
        return "\n".join(lines)
    out = []
    for line in lines:
        parts = re.split(r"(\\\$)", line)
        expanded = []
        for part in parts:
            if part == "\\$":
                expanded.append("$")
            else:
                expanded.append(_expand_plain(part, env, nounset=nounset))
        out.append("".join(expanded))
    return "\n".join(out)


def _expand_plain(text: str, env: Mapping[str, str], *, nounset: bool) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in env and nounset:
            raise UnboundVariable(name)
        return env.get(name, "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)


def _nginx_proxy(config: str) -> AuthProxy | None:
    """The parts of an nginx server block that matter to a client: port, key check, open paths."""
    listen = re.search(r"^\s*listen\s+(?:[\d.]+:)?(\d+)(\s+ssl)?\s*;", config, re.M)
    if listen is None or "proxy_pass" not in config:
        return None
    upstream = re.search(r"proxy_pass\s+http://[^:/\s]+:(\d+)", config)
    # The scheme is matched case-insensitively ("~*^Bearer" or "~^(?i:bearer)"), the key exactly.
    key = re.search(r'"~\*?\^(?:Bearer|\(\?i:bearer\))\[\[:space:\]\]\+(.*)\$"\s+1\s*;', config)
    opened = tuple(re.findall(r"location\s*=\s*(/\S*)\s*\{[^}]*proxy_pass", config))
    body = re.search(r"return\s+401\s+'([^']*)'", config)
    return AuthProxy(
        listen_port=int(listen.group(1)),
        upstream_port=int(upstream.group(1)) if upstream else None,
        api_key=(key.group(1) or None) if key else None,
        open_paths=opened,
        unauthorized_body=(body.group(1) if body else "").encode(),
        engine_key=None,
        tls=bool(listen.group(2)) and "ssl_certificate " in config,
    )


def launch_spec_from(image: str, onstart: str | None, env: Mapping[str, str]) -> LaunchSpec | None:
    """Parse what the container would run. None when no known engine is launched
    (the instance then runs, but nothing listens on its port)."""
    if not onstart:
        return None
    shell_env = dict(env)
    nounset = False
    download: tuple[str, ...] = ()
    files: dict[str, str] = {}
    proxy: AuthProxy | None = None
    san_ip: str | None = None
    lines = onstart.splitlines()
    at = 0
    while at < len(lines):
        raw = lines[at]
        at += 1
        heredoc = _HEREDOC.search(raw)
        body: str | None = None
        if heredoc is not None:
            strip_tabs, quote, delimiter = heredoc.groups()
            body_lines: list[str] = []
            while at < len(lines) and (lines[at].lstrip("\t") if strip_tabs else lines[at]) != delimiter:
                body_lines.append(lines[at])
                at += 1
            at += 1
            raw = raw[: heredoc.start()] + raw[heredoc.end() :]
            try:
                body = _heredoc_body(body_lines, shell_env, quoted=bool(quote), nounset=nounset)
            except UnboundVariable:
                return None
        try:
            words = shell_words(raw, shell_env, nounset=nounset)
        except UnboundVariable:
            return None  # bash: "NAME: unbound variable", the script stops here
        for cmd in _commands(words):
            if cmd[0] == "cat" and body is not None and ">" in cmd[:-1]:
                files[cmd[cmd.index(">") + 1]] = body
                continue
            if cmd[0] == "openssl" and cmd[1:2] == ["req"]:
                for value in option_values(cmd, "-addext"):
                    if value.startswith("subjectAltName=IP:"):
                        san_ip = value.removeprefix("subjectAltName=IP:").split(",", 1)[0]
                continue
            if cmd[0] == "nginx" and len(cmd) == 1:
                for text in files.values():
                    proxy = proxy or _nginx_proxy(text)
                if proxy is not None and proxy.tls:
                    proxy = replace(proxy, san_ip=san_ip)
                continue
            if cmd[0] == "set":
                nounset = nounset or any(a.startswith("-") and "u" in a for a in cmd[1:])
                continue
            if cmd[0] == "export":
                for assignment in cmd[1:]:
                    name, eq, value = assignment.partition("=")
                    if eq and _NAME.fullmatch(name):
                        shell_env[name] = value
                continue
            cmd_env = dict(shell_env)
            argv = _strip_prefix(cmd, cmd_env)
            if not argv:
                shell_env = cmd_env  # a bare assignment line
                continue
            if os.path.basename(argv[0]) in ("hf", "huggingface-cli") and "download" in argv[1:2]:
                download = tuple(argv)
                continue
            kind = engine_kind(argv)
            if kind is None:
                continue
            in_image = image_kind(image)
            if in_image is not None and in_image != kind:
                return None  # e.g. sglang started in a vLLM image: the module is not installed
            served = served_model_name(kind, argv)
            if not served:
                return None  # the engine exits at argument parsing
            own_key = _api_key(kind, argv, cmd_env)
            if proxy is not None:
                proxy = replace(proxy, engine_key=own_key)
            return LaunchSpec(
                kind=kind,
                served_model=served,
                api_key=proxy.api_key if proxy is not None else own_key,
                argv=tuple(argv),
                context_length=_context_length(kind, argv),
                image=image,
                download=download,
                proxy=proxy,
            )
    return None
