"""The JUnit XML writer and the smoke report's suite: structure, counts, escaping, unsafe characters."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from glmdeploy import junit
from glmdeploy.smoke import CheckResult, SmokeReport


def parse(data: bytes) -> ET.Element:
    return ET.fromstring(data)


def report() -> SmokeReport:
    checks = [
        CheckResult(name="health", passed=True, status="passed", duration_ms=12.5, detail="GET /health: 200"),
        CheckResult(name="stream", passed=False, status="failed", duration_ms=1500.0,
                    detail='the stream ended without data: [DONE] <after> 3 chunks & "quotes"'),
        CheckResult(name="tools", passed=True, status="skipped", duration_ms=0.0,
                    detail="profile 4x3090 enables no tool-call parser: tool calls arrive as raw text"),
    ]
    return SmokeReport(passed=False, target="http://127.0.0.1:1/v1", engine="sglang", model="m", checks=checks)


def test_one_testcase_per_check_with_failure_and_skipped_elements() -> None:
    root = parse(junit.render([report().junit_suite()]))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped"), root.get("errors")) == ("3", "1", "1", "0")
    [suite] = root.findall("testsuite")
    assert suite.get("name") == "glmdeploy.smoke"
    assert suite.get("time") == "1.512"
    cases = suite.findall("testcase")
    assert [(c.get("name"), c.get("classname"), c.get("time")) for c in cases] == [
        ("health", "glmdeploy.smoke", "0.013"),
        ("stream", "glmdeploy.smoke", "1.500"),
        ("tools", "glmdeploy.smoke", "0.000"),
    ]
    health, stream, tools = cases
    assert health.find("failure") is None and health.find("skipped") is None
    failure = stream.find("failure")
    assert failure is not None
    assert failure.get("message") == 'the stream ended without data: [DONE] <after> 3 chunks & "quotes"'
    skipped = tools.find("skipped")
    assert skipped is not None and skipped.get("message", "").startswith("profile 4x3090 enables no tool-call parser")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"target": "http://127.0.0.1:1/v1", "engine": "sglang", "model": "m"}


def test_characters_xml_cannot_hold_are_replaced_not_fatal() -> None:
    case = junit.Case(name="chat", classname="glmdeploy.smoke", time_s=0.1, status="failed",
                      message="body 'a\x00b\x1bc\ud800'")
    root = parse(junit.render([junit.Suite(name="s", cases=[case])]))
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None and failure.get("message") == "body 'a\ufffdb\ufffdc\ufffd'"


def test_write_creates_directories_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "junit.xml"
    suite = junit.Suite(name="s", cases=[junit.Case(name="a", classname="c", time_s=1)],
                        timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    junit.write(path, [suite])
    assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    assert parse(path.read_bytes()).find("testsuite").get("timestamp") == "2026-01-02T03:04:05"  # type: ignore[union-attr]
    assert sorted(p.name for p in path.parent.iterdir()) == ["junit.xml"]


def test_several_suites_add_up() -> None:
    a = junit.Suite(name="a", cases=[junit.Case(name="x", classname="a", time_s=1, status="failed", message="m")])
    b = junit.Suite(name="b", cases=[junit.Case(name="y", classname="b", time_s=2)])
    root = parse(junit.render([a, b]))
    assert [s.get("name") for s in root.findall("testsuite")] == ["a", "b"]
    assert (root.get("tests"), root.get("failures"), root.get("time")) == ("2", "1", "3.000")


def test_json_view_of_the_report() -> None:
    data = report().to_json()
    assert data["passed"] is False
    assert [set(c) for c in data["checks"]] == [{"name", "passed", "status", "duration_ms", "detail", "info"}] * 3
    assert report().summary().startswith("smoke checks failed: stream: the stream ended without data: [DONE]")
