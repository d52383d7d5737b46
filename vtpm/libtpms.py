"""ctypes bindings for the parts of libtpms 0.9 the engine uses (tpm_library.h, tpm_memory.h).

Only declarations live here: the C prototypes, the callback table and the result codes. The
lifecycle and the in-memory NV policy are in `vtpm.engine`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from vtpm.errors import VtpmError

LIBRARY_NAMES = ("libtpms.so.0", "libtpms.so")

# TPM_RESULT values from libtpms/tpm_error.h.
TPM_SUCCESS = 0x0
TPM_FAIL = 0x9
TPM_RETRY = 0x800

# enum TPMLIB_TPMVersion
TPMLIB_TPM_VERSION_2 = 1

TPM_RESULT = ctypes.c_uint32
TPM_BOOL = ctypes.c_ubyte
TPM_MODIFIER_INDICATOR = ctypes.c_uint32
BytePtr = ctypes.POINTER(ctypes.c_ubyte)
# The response buffer pointer: slicing a c_char pointer yields bytes in one C call.
CharPtr = ctypes.POINTER(ctypes.c_char)

# struct libtpms_callbacks members, in declaration order.
NvramInitFn = ctypes.CFUNCTYPE(TPM_RESULT)
NvramLoadDataFn = ctypes.CFUNCTYPE(
    TPM_RESULT,
    ctypes.POINTER(BytePtr),
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.c_uint32,
    ctypes.c_char_p,
)
NvramStoreDataFn = ctypes.CFUNCTYPE(
    TPM_RESULT, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p
)
NvramDeleteNameFn = ctypes.CFUNCTYPE(TPM_RESULT, ctypes.c_uint32, ctypes.c_char_p, TPM_BOOL)
IoInitFn = ctypes.CFUNCTYPE(TPM_RESULT)
IoGetLocalityFn = ctypes.CFUNCTYPE(
    TPM_RESULT, ctypes.POINTER(TPM_MODIFIER_INDICATOR), ctypes.c_uint32
)
IoGetPhysicalPresenceFn = ctypes.CFUNCTYPE(TPM_RESULT, ctypes.POINTER(TPM_BOOL), ctypes.c_uint32)


class LibtpmsCallbacks(ctypes.Structure):
    """struct libtpms_callbacks (tpm_library.h)."""

    _fields_ = [
        ("sizeOfStruct", ctypes.c_int),
        ("tpm_nvram_init", NvramInitFn),
        ("tpm_nvram_loaddata", NvramLoadDataFn),
        ("tpm_nvram_storedata", NvramStoreDataFn),
        ("tpm_nvram_deletename", NvramDeleteNameFn),
        ("tpm_io_init", IoInitFn),
        ("tpm_io_getlocality", IoGetLocalityFn),
        ("tpm_io_getphysicalpresence", IoGetPhysicalPresenceFn),
    ]


class LibtpmsNotFoundError(VtpmError, OSError):
    """libtpms could not be loaded (the Debian package libtpms0 provides it)."""


def _declare(lib: Any) -> None:
    """Attach argument and result types to the functions the engine calls."""
    lib.TPMLIB_ChooseTPMVersion.argtypes = [ctypes.c_int]
    lib.TPMLIB_ChooseTPMVersion.restype = TPM_RESULT
    lib.TPMLIB_RegisterCallbacks.argtypes = [ctypes.POINTER(LibtpmsCallbacks)]
    lib.TPMLIB_RegisterCallbacks.restype = TPM_RESULT
    lib.TPMLIB_MainInit.argtypes = []
    lib.TPMLIB_MainInit.restype = TPM_RESULT
    lib.TPMLIB_Terminate.argtypes = []
    lib.TPMLIB_Terminate.restype = None
    lib.TPMLIB_Process.argtypes = [
        ctypes.POINTER(CharPtr),
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.c_char_p,
        ctypes.c_uint32,
    ]
    lib.TPMLIB_Process.restype = TPM_RESULT
    lib.TPM_Malloc.argtypes = [ctypes.POINTER(BytePtr), ctypes.c_uint32]
    lib.TPM_Malloc.restype = TPM_RESULT
    lib.TPM_Free.argtypes = [ctypes.c_void_p]
    lib.TPM_Free.restype = None


def load() -> Any:
    """Load libtpms once and return the declared ctypes library handle."""
    global _LIB
    if _LIB is None:
        found = ctypes.util.find_library("tpms")
        names = (found, *LIBRARY_NAMES) if found else LIBRARY_NAMES
        errors: list[str] = []
        for name in names:
            try:
                lib = ctypes.CDLL(name)
            except OSError as exc:
                errors.append(f"{name}: {exc}")
                continue
            _declare(lib)
            _LIB = lib
            break
        else:
            raise LibtpmsNotFoundError("cannot load libtpms (" + "; ".join(errors) + ")")
    return _LIB


_LIB: Any = None
