"""JUnit XML, the report format CI systems (GitHub Actions reporters, GitLab, Jenkins) read.

One ``<testsuites>`` root holding one ``<testsuite>`` per ``Suite``; a case that failed gets a
``<failure message=...>`` element, a skipped one a ``<skipped message=...>`` element. Times are in
seconds, as the format wants. Written with ``xml.etree`` so text is always escaped correctly.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

CaseStatus = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Case:
    name: str
    classname: str
    time_s: float
    status: CaseStatus = "passed"
    message: str = ""
    output: str = ""


@dataclass(frozen=True)
class Suite:
    name: str
    cases: list[Case] = field(default_factory=list)
    timestamp: datetime | None = None
    properties: dict[str, str] = field(default_factory=dict)


# Characters XML 1.0 cannot hold even escaped; a server's garbage in a message must not break the file.
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def to_element(suites: list[Suite]) -> ET.Element:
    root = ET.Element("testsuites")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    total_time = 0.0
    for suite in suites:
        failures = sum(c.status == "failed" for c in suite.cases)
        skipped = sum(c.status == "skipped" for c in suite.cases)
        suite_time = sum(c.time_s for c in suite.cases)
        element = ET.SubElement(
            root,
            "testsuite",
            {
                "name": _clean(suite.name),
                "tests": str(len(suite.cases)),
                "failures": str(failures),
                "errors": "0",
                "skipped": str(skipped),
                "time": _seconds(suite_time),
                "timestamp": (suite.timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        if suite.properties:
            props = ET.SubElement(element, "properties")
            for key, value in suite.properties.items():
                ET.SubElement(props, "property", {"name": _clean(key), "value": _clean(value)})
        for case in suite.cases:
            attributes = {"name": _clean(case.name), "classname": _clean(case.classname), "time": _seconds(case.time_s)}
            case_element = ET.SubElement(element, "testcase", attributes)
            if case.status == "failed":
                failure = ET.SubElement(case_element, "failure", {"message": _clean(case.message), "type": "failure"})
                failure.text = _clean(case.output or case.message)
            elif case.status == "skipped":
                ET.SubElement(case_element, "skipped", {"message": _clean(case.message)})
            if case.output and case.status != "failed":
                ET.SubElement(case_element, "system-out").text = _clean(case.output)
        totals["tests"] += len(suite.cases)
        totals["failures"] += failures
        totals["skipped"] += skipped
        total_time += suite_time
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("skipped", str(totals["skipped"]))
    root.set("time", _seconds(total_time))
    return root


def render(suites: list[Suite]) -> bytes:
    root = to_element(suites)
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def write(path: Path, suites: list[Suite]) -> None:
    """Write atomically: a CI step reading the file never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(render(suites))
    os.replace(tmp, path)
