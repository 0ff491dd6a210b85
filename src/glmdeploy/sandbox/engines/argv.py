"""The simulated engine reads its argv like the real parser does, with the same flag tables as glmdeploy.

An option the image's engine version does not have ends the process at argument parsing, as argparse does:
a usage line, ``PROG: error: unrecognized arguments: ...`` and exit status 2, before any other log line of
the engine and before its port is served. The container itself keeps running (nothing restarts it) and its
log stays silent from then on, which is what Vast shows for a real engine (issue 9; recorded for vLLM 0.24.0
in shared/reference/real-vllm-0.24.0/argv-acceptance.txt).

An engine version that cannot load the model starts, then ends with the line it really ends with
(``Engine.model_support_error``) and exits.
"""

from __future__ import annotations

from collections.abc import Sequence

from glmdeploy.engines import get_engine
from glmdeploy.engines.flags import FlagTable

# What argparse prints, per engine (``parser.error``: usage, then "PROG: error: MESSAGE", exit 2).
# vLLM: recorded verbatim from 0.24.0 (argv-acceptance.txt): the top-level parser of vllm/entrypoints/cli/main.py
# reports what the serve subparser left over. SGLang and LightLLM are plain argparse parsers run as modules
# (`python3 -m sglang.launch_server`, `python -m lightllm.server.api_server`), so PROG is the script's file
# name; their real usage line lists every option, shortened here to its start.
USAGE = {
    "vllm": ("usage: main.py [-h] [-v]", "main.py"),
    "sglang": ("usage: launch_server.py [-h] [--model-path MODEL_PATH] ...", "launch_server.py"),
    "lightllm": ("usage: api_server.py [-h] [--run_mode {normal,prefill,decode,pd_master}] ...", "api_server.py"),
}
# Seconds of imports before the parser runs: vLLM 16.6-18.9 s in the recording; the others are derived.
PARSE_AFTER_S = {"vllm": 17.0, "sglang": 8.0, "lightllm": 6.0}


def flag_table(kind: str, image: str) -> FlagTable | None:
    """The table the engine in ``image`` parses with; None for an image of no known engine (trusted)."""
    engine = get_engine(kind)
    if engine.image_version(image).kind is None:
        return None
    return engine.flag_table(image) or engine.builder_table(image)


def unrecognized(table: FlagTable, args: Sequence[str], *, positionals: int) -> list[str]:
    """The argv elements argparse would leave over, in order: refused options and the values after them.

    ``args`` is the argv after the program words; its first ``positionals`` non-option words are the
    engine's positionals (vLLM's model). A word after an accepted option is taken as that option's value.
    """
    left: list[str] = []
    previous_refused = False
    previous_option = False
    for arg in args:
        if arg.startswith("-") and arg != "-" and not _number(arg):
            previous_option = True
            previous_refused = not table.accepts(arg)
            if previous_refused:
                left.append(arg)
            continue
        if previous_refused:
            left.append(arg)
        elif not previous_option and positionals > 0:
            positionals -= 1
        elif not previous_option:
            left.append(arg)
        previous_option = False
    return left


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_error(kind: str, image: str, argv: Sequence[str]) -> list[str] | None:
    """The lines argparse prints for ``argv`` (program words included), or None when it parses."""
    table = flag_table(kind, image)
    if table is None:
        return None
    engine = get_engine(kind)
    program = len(engine.program)
    # `vllm serve MODEL`: one positional; python -m ... engines take none.
    left = unrecognized(table, list(argv)[program:], positionals=1 if kind == "vllm" else 0)
    if not left:
        return None
    usage, prog = USAGE[kind]
    return [usage, f"{prog}: error: unrecognized arguments: {' '.join(left)}"]


def model_error(kind: str, arch_key: str, image: str) -> str | None:
    return get_engine(kind).model_support_error(arch_key, image)


__all__ = ["PARSE_AFTER_S", "flag_table", "model_error", "parse_error", "unrecognized"]
