"""The exact messages of docs/troubleshooting.md's bad-input rows, through the CLI (CliRunner).

tests/test_cli_inputs.py proves every bad number is refused with one line and exit 2; this pins the
wording the doc quotes, so the doc and the CLI cannot drift apart. Each case is refused while parsing,
before a sandbox is started or Vast.ai is asked (``VAST_URL`` points at a closed port: a request would
fail loudly, with exit 7).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app

CLOSED = "http://127.0.0.1:9"


def one_error_line(args: list[str], code: int = 2) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert result.stdout == ""
    return errors[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "-p", "h200", "--yes", "--max-price", "nan"],
         "error: Invalid value for '--max-price': must be a positive number of $/h, got nan"),
        (["offers", "-p", "h200", "--max-price", "-1"],
         "error: Invalid value for '--max-price': must be a positive number of $/h, got -1"),
        (["up", "-p", "h200", "--yes", "--max-price", "1000"],
         "error: Invalid value for '--max-price': must be at most $128/h, "),
        (["up", "-p", "h200", "--yes", "--timeout", "9999d"], "error: --timeout: '9999d' is longer than 366 days"),
        (["up", "-p", "h200", "--yes", "--ttl", "9999d"], "error: --ttl: '9999d' is longer than 366 days"),
        (["smoke", "--url", "http://127.0.0.1:0/v1"],
         "error: --url: the port in '127.0.0.1:0' must be a number from 1 to 65535"),
        (["offers", "-p", "h200", "--api-url", "http://127.0.0.1:70000"],
         "error: --api-url: the port in '127.0.0.1:70000' must be a number from 1 to 65535"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_each_documented_bad_input_message_is_the_one_error_line(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAST_API_KEY", "k" * 64)
    monkeypatch.setenv("VAST_URL", CLOSED)
    assert one_error_line(args).startswith(message)


def test_a_vast_url_with_a_bad_port_is_named_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "k" * 64)
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:0")
    assert "the port in '127.0.0.1:0' must be a number from 1 to 65535" in one_error_line(["offers", "-p", "h200"])


def test_include_foreign_alone_is_refused_before_vast_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "k" * 64)
    monkeypatch.setenv("VAST_URL", CLOSED)
    line = one_error_line(["destroy", "--include-foreign", "--yes"])
    assert line.startswith("error: --include-foreign needs --instance ID or --older-than DURATION")
