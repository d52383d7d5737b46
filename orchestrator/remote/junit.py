"""JUnit XML for remote runs: read pytest's counts, write one file per host and a merged one.

The format is the one pytest's `--junitxml` writes and CI servers read (the Apache Ant JUnit
task's XML: <testsuites>/<testsuite>/<testcase> with <failure>, <error> and <skipped>).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Counts:
    """Tests passed, failed (failures and errors) and skipped."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.passed += other.passed
        self.failed += other.failed
        self.skipped += other.skipped
        return self


def suites_of(path: Path) -> list[ET.Element]:
    """The <testsuite> elements of a JUnit file (root <testsuites> or a bare <testsuite>)."""
    root = ET.parse(path).getroot()
    return [root] if root.tag == "testsuite" else list(root.iter("testsuite"))


def count(suites: list[ET.Element]) -> Counts:
    """Counts from the suites' testcases."""
    result = Counts()
    for suite in suites:
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                result.failed += 1
            elif case.find("skipped") is not None:
                result.skipped += 1
            else:
                result.passed += 1
    return result


def step_case(classname: str, name: str, seconds: float, failure: str | None) -> ET.Element:
    """A testcase for one step of a host's run (connect, preflight, a suite command)."""
    case = ET.Element("testcase", classname=classname, name=name, time=f"{seconds:.3f}")
    if failure is not None:
        ET.SubElement(case, "failure", message=failure[:500]).text = failure
    return case


def host_suite(
    host_name: str, steps: list[ET.Element], pytest_suites: list[ET.Element]
) -> ET.Element:
    """One host's <testsuites>: its steps as a suite, then pytest's suites renamed per host."""
    root = ET.Element("testsuites", name=host_name)
    steps_suite = ET.SubElement(root, "testsuite", name=f"{host_name}: steps")
    for case in steps:
        steps_suite.append(case)
    for suite in pytest_suites:
        suite.set("name", f"{host_name}: {suite.get('name', 'pytest')}")
        root.append(suite)
    for suite in root.iter("testsuite"):
        counts = count([suite])
        suite.set("tests", str(counts.passed + counts.failed + counts.skipped))
        suite.set("failures", str(counts.failed))
        suite.set("errors", "0")
        suite.set("skipped", str(counts.skipped))
    return root


def write(root: ET.Element, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def merge(host_roots: list[ET.Element], name: str = "tdp remote") -> ET.Element:
    """All hosts' suites under one <testsuites>."""
    merged = ET.Element("testsuites", name=name)
    for root in host_roots:
        for suite in root.findall("testsuite"):
            merged.append(suite)
    return merged
