"""Every exception the paravisor defines derives from SvsmError, so a caller can catch L1's own."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import svsm
from svsm.errors import SvsmError


def test_every_svsm_exception_derives_from_the_root() -> None:
    found = []
    for info in pkgutil.walk_packages(svsm.__path__, "svsm."):
        module = importlib.import_module(info.name)
        found += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__
        ]
    names = {cls.__name__ for cls in found}
    assert {"NotEmulatable", "L2ImageError", "TdcallError", "BootStepError"} <= names
    assert [cls.__qualname__ for cls in found if not issubclass(cls, SvsmError)] == []
