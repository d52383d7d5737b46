"""One exception root per package: every vtpm exception is a VtpmError, every igvm one an
IgvmError, and the standard-library bases callers catch are kept."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import igvm
import vtpm
from igvm.errors import IgvmError
from vtpm.errors import VtpmError


def _exceptions(package: ModuleType) -> list[type[BaseException]]:
    """Every exception class defined in the package's modules (warnings excluded)."""
    found: list[type[BaseException]] = []
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(value, BaseException)
                and not issubclass(value, Warning)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


@pytest.mark.parametrize(("package", "root"), [(vtpm, VtpmError), (igvm, IgvmError)])
def test_every_exception_of_a_package_derives_from_its_root(
    package: ModuleType, root: type[Exception]
) -> None:
    exceptions = _exceptions(package)
    assert len(exceptions) >= (10 if package is vtpm else 3), exceptions
    strays = [cls.__qualname__ for cls in exceptions if not issubclass(cls, root)]
    assert strays == []


def test_vtpm_exceptions_keep_their_standard_library_bases() -> None:
    from vtpm.attest import AttesterError, BindingError, UnknownAttesterError
    from vtpm.certs import CertificateError
    from vtpm.engine import EngineBusyError, TpmEngineError
    from vtpm.libtpms import LibtpmsNotFoundError
    from vtpm.protocol import ProtocolError
    from vtpm.server import ServerConfigError
    from vtpm.wire import TpmError, WireError

    kept = {
        AttesterError: RuntimeError,
        UnknownAttesterError: LookupError,
        BindingError: ValueError,
        CertificateError: ValueError,
        TpmEngineError: RuntimeError,
        EngineBusyError: RuntimeError,
        LibtpmsNotFoundError: OSError,
        ProtocolError: ValueError,
        ServerConfigError: ValueError,
        WireError: ValueError,
        TpmError: RuntimeError,
    }
    for cls, base in kept.items():
        assert issubclass(cls, VtpmError) and issubclass(cls, base), cls
    with pytest.raises(VtpmError):
        raise LibtpmsNotFoundError("libtpms.so.0 not found")
