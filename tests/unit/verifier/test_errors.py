"""One exception root for the verifier: catching VerificationError catches every verifier error."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import verifier
from verifier import eventlog
from verifier.chain import load_certificate
from verifier.errors import VerificationError
from verifier.quote import verify_quote


def verifier_exceptions() -> list[type[BaseException]]:
    found = []
    for module_info in pkgutil.iter_modules(verifier.__path__, "verifier."):
        if module_info.name == "verifier.__main__":
            continue
        module = importlib.import_module(module_info.name)
        found += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__
        ]
    return found


def test_every_verifier_exception_derives_from_verification_error() -> None:
    classes = verifier_exceptions()
    names = {cls.__name__ for cls in classes}
    assert {"ChainError", "QuoteParseError", "EventLogError", "AttestationStepError"} <= names
    strays = [cls.__qualname__ for cls in classes if not issubclass(cls, VerificationError)]
    assert strays == []


@pytest.mark.parametrize(
    "call",
    [
        lambda: eventlog.parse(b""),
        lambda: load_certificate(b"not a certificate"),
        lambda: verify_quote(b"\x04\x00", b"not a root"),
    ],
)
def test_bad_evidence_raises_the_root(call: object) -> None:
    assert callable(call)
    with pytest.raises(VerificationError):
        call()
