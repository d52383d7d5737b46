"""One exception root for the orchestrator, and no exception named like one of the paravisor's."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import orchestrator
import svsm
from orchestrator.boot import BootReport, L1Summary, _step
from orchestrator.errors import LocalBootError, OrchestratorError
from tdxsim.host.vmm import RunResult, RunStatus


def exceptions_of(package: ModuleType) -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        module = importlib.import_module(info.name)
        found += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__
        ]
    return found


def test_every_orchestrator_exception_derives_from_the_root() -> None:
    classes = exceptions_of(orchestrator)
    assert LocalBootError in classes
    assert [c.__qualname__ for c in classes if not issubclass(c, OrchestratorError)] == []


def test_no_orchestrator_exception_shares_a_name_with_a_paravisor_one() -> None:
    ours = {cls.__name__ for cls in exceptions_of(orchestrator)}
    theirs = {cls.__name__ for cls in exceptions_of(svsm)}
    assert "BootStepError" in theirs and "LocalBootError" in ours
    assert ours & theirs == set()


def test_malformed_l1_output_is_a_local_boot_error_naming_the_key() -> None:
    run = RunResult(RunStatus.DONE, b'{"num_l2_vms": 1}', 0, 0.0)
    with pytest.raises(OrchestratorError, match="L1's summary is malformed: KeyError"):
        L1Summary.parse(run, "")


def test_a_failing_step_is_named_in_the_root_error() -> None:
    report = BootReport(image=Path("x.igvm"))
    lines: list[str] = []
    with (
        pytest.raises(
            LocalBootError, match=r"step 1 \(build\) failed: FileNotFoundError: no recipe"
        ),
        _step(report, "build", lines.append),
    ):
        raise FileNotFoundError("no recipe")
    assert lines == ["[1] build ..."] and report.steps == []
