"""One exception root: a caller catches every tdxsim error with `except TdxsimError`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tdxsim
from tdxsim import TdxsimError
from tdxsim.host.channel import ChannelError
from tdxsim.host.faults import FaultSet
from tdxsim.host.td_process import HostShutdown


def _exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(tdxsim.__path__, "tdxsim."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


def test_the_walk_finds_the_exceptions_of_every_layer() -> None:
    modules = {cls.__module__ for cls in _exception_classes()}
    assert {"tdxsim.module.dispatch", "tdxsim.host.channel", "tdxsim.attestation.report"} <= modules


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda cls: cls.__qualname__)
def test_every_tdxsim_exception_derives_from_tdxsim_error(cls: type[BaseException]) -> None:
    if cls is HostShutdown:
        # Unwinds L1 when the host ends the TD: L1's own `except Exception` must not catch it.
        assert not issubclass(cls, Exception)
        return
    assert issubclass(cls, TdxsimError), f"{cls.__module__}.{cls.__qualname__} is not a TdxsimError"


def test_a_raised_tdxsim_error_is_caught_by_the_root_and_its_stdlib_base() -> None:
    with pytest.raises(TdxsimError, match="fault"):
        FaultSet.parse("no-such-fault")
    with pytest.raises(ValueError):
        FaultSet.parse("no-such-fault")
    assert issubclass(ChannelError, ValueError)
