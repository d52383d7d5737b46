"""The TPM engine: one libtpms TPM 2.0 per process, NV held in memory, every call serialized.

libtpms keeps global C state, so at most one `TpmEngine` is open at a time. Its NV blobs
(`permall`, `volatilestate`) live only in this object's memory through the nvram callbacks: with
the callbacks registered libtpms never touches the disk. The blobs are overwritten with zeros when
they are replaced, wiped or the engine is closed.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

from vtpm import libtpms
from vtpm.errors import VtpmError
from vtpm.wire import (
    COMMAND_TAGS,
    TPM_CC_STARTUP,
    TPM_HEADER,
    TPM_HEADER_SIZE,
    TPM_RC_BAD_TAG,
    TPM_RC_COMMAND_SIZE,
    TPM_RC_FAILURE,
    TPM_RC_INITIALIZE,
    TPM_RC_SUCCESS,
    TPM_ST_NO_SESSIONS,
    TPM_SU_CLEAR,
    UINT16,
    build_command,
)

T = TypeVar("T")
A = TypeVar("A")

# Largest command or response libtpms 0.9 accepts (its default TPM2 buffer size).
TPM_MAX_COMMAND_SIZE = 4096

MAX_LOCALITY = 4


class TpmEngineError(VtpmError, RuntimeError):
    """A lifecycle operation of the engine failed (libtpms result code in the message)."""


class EngineBusyError(TpmEngineError):
    """A second TpmEngine was opened while another is still open in this process."""


def error_response(rc: int) -> bytes:
    """A 10-byte TPM 2.0 error response carrying `rc`."""
    return TPM_HEADER.pack(TPM_ST_NO_SESSIONS, TPM_HEADER_SIZE, rc)


def response_code(response: bytes) -> int:
    """The responseCode field of a TPM response; TPM_RC_FAILURE if the header is incomplete."""
    if len(response) < TPM_HEADER_SIZE:
        return TPM_RC_FAILURE
    return int(TPM_HEADER.unpack_from(response)[2])


def check_command(command: bytes) -> int:
    """TPM_RC_SUCCESS if `command` is a well-framed TPM 2.0 command, else the RC that says why."""
    if len(command) < TPM_HEADER_SIZE:
        return TPM_RC_COMMAND_SIZE
    tag, size, _code = TPM_HEADER.unpack_from(command)
    if tag not in COMMAND_TAGS:
        return TPM_RC_BAD_TAG
    if size != len(command) or size > TPM_MAX_COMMAND_SIZE:
        return TPM_RC_COMMAND_SIZE
    return TPM_RC_SUCCESS


def _wipe(blob: bytearray) -> None:
    """Overwrite a blob in place so the secret bytes do not linger in freed memory."""
    blob[:] = bytes(len(blob))


class _NvStore:
    """The in-memory NV blobs of the live engine, keyed by the name libtpms gives them."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytearray] = {}
        self.locality = 0

    def wipe(self) -> None:
        for blob in self.blobs.values():
            _wipe(blob)
        self.blobs.clear()


# The store the C callbacks write to; set while an engine is open.
_active_store: _NvStore | None = None
_live_lock = threading.Lock()
_live_engine: TpmEngine | None = None


def _cb_nvram_init() -> int:
    return libtpms.TPM_SUCCESS


def _cb_nvram_loaddata(data: Any, length: Any, _tpm_number: int, name: bytes) -> int:
    """Hand libtpms a TPM_Malloc'd copy of blob `name`, or TPM_RETRY if it does not exist."""
    store = _active_store
    blob = None if store is None else store.blobs.get(name.decode("ascii", "replace"))
    if blob is None:
        return libtpms.TPM_RETRY
    lib = libtpms.load()
    buf = libtpms.BytePtr()
    rc = int(lib.TPM_Malloc(ctypes.byref(buf), len(blob)))
    if rc != libtpms.TPM_SUCCESS:
        return rc
    ctypes.memmove(buf, (ctypes.c_char * len(blob)).from_buffer(blob), len(blob))
    data[0] = buf
    length[0] = len(blob)
    return libtpms.TPM_SUCCESS


def _cb_nvram_storedata(data: int | None, length: int, _tpm_number: int, name: bytes) -> int:
    """Copy blob `name` into memory, overwriting the previous version first."""
    store = _active_store
    if store is None:
        return libtpms.TPM_FAIL
    blob = bytearray(length)
    if length and data is not None:
        ctypes.memmove((ctypes.c_char * length).from_buffer(blob), data, length)
    key = name.decode("ascii", "replace")
    old = store.blobs.get(key)
    if old is not None:
        _wipe(old)
    store.blobs[key] = blob
    return libtpms.TPM_SUCCESS


def _cb_nvram_deletename(_tpm_number: int, name: bytes, must_exist: int) -> int:
    store = _active_store
    if store is None:
        return libtpms.TPM_FAIL
    old = store.blobs.pop(name.decode("ascii", "replace"), None)
    if old is None:
        return libtpms.TPM_FAIL if must_exist else libtpms.TPM_SUCCESS
    _wipe(old)
    return libtpms.TPM_SUCCESS


def _cb_io_init() -> int:
    return libtpms.TPM_SUCCESS


def _cb_io_getlocality(locality: Any, _tpm_number: int) -> int:
    store = _active_store
    locality[0] = 0 if store is None else store.locality
    return libtpms.TPM_SUCCESS


def _cb_io_getphysicalpresence(present: Any, _tpm_number: int) -> int:
    present[0] = 0
    return libtpms.TPM_SUCCESS


# The CFUNCTYPE objects must outlive every libtpms call, so they live as long as the module.
_NVRAM_INIT = libtpms.NvramInitFn(_cb_nvram_init)
_NVRAM_LOADDATA = libtpms.NvramLoadDataFn(_cb_nvram_loaddata)
_NVRAM_STOREDATA = libtpms.NvramStoreDataFn(_cb_nvram_storedata)
_NVRAM_DELETENAME = libtpms.NvramDeleteNameFn(_cb_nvram_deletename)
_IO_INIT = libtpms.IoInitFn(_cb_io_init)
_IO_GETPHYSICALPRESENCE = libtpms.IoGetPhysicalPresenceFn(_cb_io_getphysicalpresence)


def _callbacks(getlocality: Any) -> Any:
    return libtpms.LibtpmsCallbacks(
        ctypes.sizeof(libtpms.LibtpmsCallbacks),
        _NVRAM_INIT,
        _NVRAM_LOADDATA,
        _NVRAM_STOREDATA,
        _NVRAM_DELETENAME,
        _IO_INIT,
        getlocality,
        _IO_GETPHYSICALPRESENCE,
    )


_CALLBACKS_WITH_LOCALITY = _callbacks(libtpms.IoGetLocalityFn(_cb_io_getlocality))
# Without tpm_io_getlocality, TPM2_Process runs the command at locality 0 and never calls back
# into Python for it: process() registers this set for locality 0 (nearly every command) and
# swaps the other in only while a client asks for a higher locality.
_CALLBACKS_LOCALITY_0 = _callbacks(libtpms.IoGetLocalityFn())


@dataclass(frozen=True)
class ResponseBuffer:
    """libtpms' response buffer as TPMLIB_Process takes it (by reference: it may reallocate).

    Valid only inside TpmEngine.run_native(); `read` copies response bytes out of it.
    """

    pointer: Any  # the CharPtr that libtpms points at its buffer
    pointer_ref: Any
    length_ref: Any
    size_ref: Any

    def read(self, start: int, end: int) -> bytes:
        """Bytes start..end of the last response."""
        return cast(bytes, self.pointer[start:end])


class TpmEngine:
    """A libtpms TPM 2.0 with in-memory NV; all operations are serialized by one lock.

    Lifecycle: power_on() (manufactures a fresh TPM when no NV exists), startup_clear(),
    process()..., reset() (power cycle keeping NV), wipe() (forget NV), power_off(), close().
    """

    def __init__(self) -> None:
        global _live_engine, _active_store
        with _live_lock:
            if _live_engine is not None:
                raise EngineBusyError(
                    "a TpmEngine is already open in this process (libtpms holds one global TPM); "
                    "close it first"
                )
            self._lib = libtpms.load()
            self._nv = _NvStore()
            self._lock = threading.Lock()
            self._powered = False
            self._closed = False
            self._resp = libtpms.CharPtr()
            self._resp_len = ctypes.c_uint32(0)
            self._resp_bufsize = ctypes.c_uint32(0)
            self._resp_ref = ctypes.byref(self._resp)
            self._resp_len_ref = ctypes.byref(self._resp_len)
            self._resp_bufsize_ref = ctypes.byref(self._resp_bufsize)
            self._response_buffer = ResponseBuffer(
                self._resp, self._resp_ref, self._resp_len_ref, self._resp_bufsize_ref
            )
            rc = int(self._lib.TPMLIB_ChooseTPMVersion(libtpms.TPMLIB_TPM_VERSION_2))
            if rc != libtpms.TPM_SUCCESS:
                raise TpmEngineError(f"TPMLIB_ChooseTPMVersion(TPM 2) failed: rc=0x{rc:x}")
            self._register_callbacks(with_locality=self._nv.locality != 0)
            _active_store = self._nv
            _live_engine = self

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def powered(self) -> bool:
        """True between power_on() and power_off()."""
        return self._powered

    @property
    def closed(self) -> bool:
        """True once close() has run; the engine can no longer be used."""
        return self._closed

    def _register_callbacks(self, *, with_locality: bool) -> None:
        """Point libtpms at our callbacks (it copies the structure), with or without locality."""
        table = _CALLBACKS_WITH_LOCALITY if with_locality else _CALLBACKS_LOCALITY_0
        rc = int(self._lib.TPMLIB_RegisterCallbacks(ctypes.byref(table)))
        if rc != libtpms.TPM_SUCCESS:
            raise TpmEngineError(f"TPMLIB_RegisterCallbacks failed: rc=0x{rc:x}")

    def _check_open(self) -> None:
        if self._closed:
            raise TpmEngineError("the TpmEngine is closed")

    def power_on(self) -> None:
        """TPMLIB_MainInit: load NV from memory, or manufacture a fresh TPM if there is none."""
        with self._lock:
            self._check_open()
            self._power_on_locked()

    def _power_on_locked(self) -> None:
        if self._powered:
            return
        rc = int(self._lib.TPMLIB_MainInit())
        if rc != libtpms.TPM_SUCCESS:
            raise TpmEngineError(f"TPMLIB_MainInit failed: rc=0x{rc:x}")
        self._powered = True

    def power_off(self) -> None:
        """TPMLIB_Terminate: drop volatile state; NV stays in memory."""
        with self._lock:
            self._power_off_locked()

    def _power_off_locked(self) -> None:
        if self._powered:
            self._lib.TPMLIB_Terminate()
            self._powered = False

    def reset(self) -> None:
        """Power cycle keeping NV (the next command must be TPM2_Startup)."""
        with self._lock:
            self._check_open()
            self._power_off_locked()
            self._power_on_locked()

    def wipe(self) -> None:
        """Terminate and forget all NV, so the next power_on() manufactures a fresh TPM."""
        with self._lock:
            self._check_open()
            self._power_off_locked()
            self._nv.wipe()

    def close(self) -> None:
        """Terminate, overwrite the NV blobs and free the slot for another engine."""
        global _live_engine, _active_store
        with self._lock:
            if self._closed:
                return
            self._power_off_locked()
            self._nv.wipe()
            if self._resp:
                ctypes.memset(self._resp, 0, self._resp_bufsize.value)
                self._lib.TPM_Free(self._resp)
                self._resp = libtpms.CharPtr()
            self._closed = True
            with _live_lock:
                if _live_engine is self:
                    _live_engine = None
                    _active_store = None

    def __enter__(self) -> TpmEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------------

    def process(self, command: bytes, locality: int = 0) -> bytes:
        """Run one TPM 2.0 command and return its response; malformed input gets an error response.

        A command that is not well framed (short, bad tag, size field disagreeing with the length,
        over 4096 bytes), or that arrives while the TPM is powered off, never reaches libtpms.
        """
        rc = check_command(command)
        if rc != TPM_RC_SUCCESS:
            return error_response(rc)
        if not 0 <= locality <= MAX_LOCALITY:
            return error_response(TPM_RC_FAILURE)
        with self._lock:
            if not self._powered or self._closed:
                return error_response(TPM_RC_FAILURE)
            self._set_locality(locality)
            rc = int(
                self._lib.TPMLIB_Process(
                    self._resp_ref,
                    self._resp_len_ref,
                    self._resp_bufsize_ref,
                    command,
                    len(command),
                )
            )
            size = self._resp_len.value
            if rc != libtpms.TPM_SUCCESS or size < TPM_HEADER_SIZE:
                return error_response(TPM_RC_FAILURE)
            # Slicing a c_char pointer copies into bytes (typeshed knows only the list case).
            return cast(bytes, self._resp[:size])

    def run_native(self, locality: int, call: Callable[[ResponseBuffer | None, A], T], arg: A) -> T:
        """Run `call(buffer, arg)` holding the TPM, for native code that calls TPMLIB_Process.

        `buffer` is the response buffer with `locality` in force, or None when the TPM must not
        process (powered off, closed, or a locality it lacks): then the call may only read input
        and hand it to process(), which answers with the error. Nothing else runs libtpms
        meanwhile.
        """
        with self._lock:
            if not self._powered or self._closed or not 0 <= locality <= MAX_LOCALITY:
                return call(None, arg)
            self._set_locality(locality)
            return call(self._response_buffer, arg)

    def _set_locality(self, locality: int) -> None:
        """Make `locality` the one libtpms sees, swapping the callback table when it crosses 0."""
        if (locality != 0) is not (self._nv.locality != 0):
            self._register_callbacks(with_locality=locality != 0)
        self._nv.locality = locality

    def startup_clear(self) -> int:
        """Send TPM2_Startup(CLEAR); return its RC (SUCCESS, or INITIALIZE if already started)."""
        command = build_command(TPM_CC_STARTUP, params=UINT16.pack(TPM_SU_CLEAR))
        rc = response_code(self.process(command))
        if rc not in (TPM_RC_SUCCESS, TPM_RC_INITIALIZE):
            raise TpmEngineError(f"TPM2_Startup(CLEAR) failed: rc=0x{rc:x}")
        return rc

    def nv_blob_names(self) -> list[str]:
        """Names of the NV blobs held in memory (for diagnostics and tests)."""
        with self._lock:
            return sorted(self._nv.blobs)

    def nv_size(self) -> int:
        """Total bytes of NV held in memory."""
        with self._lock:
            return sum(len(b) for b in self._nv.blobs.values())
