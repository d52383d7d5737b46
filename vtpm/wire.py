"""TPM 2.0 wire format: the few structures and commands the vTPM itself sends (TPM 2.0 Parts 1-3).

Only stdlib and `tdxdefs`: this runs inside L1. Fixed layouts are declared with
`tdxdefs.layout.Layout` (big-endian), variable ones are dataclasses with pack/unpack, named as
TPM 2.0 Part 2 names them. `TpmClient` sends commands through any transport with
`process(command) -> response` (a `TpmEngine`, or a socket to swtpm) and raises `TpmError`, which
names the command, its code and the response code, when the TPM refuses.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from tdxdefs.eventlog import TPM_ALG_SHA384 as TPM_ALG_SHA384  # declared once, in tdxdefs
from tdxdefs.layout import BIG_ENDIAN, Layout
from tdxdefs.tpm import DIGEST_SIZES as DIGEST_SIZES  # declared once, in tdxdefs
from tdxdefs.tpm import HASH_NAMES, EccCurve, TpmAlg, TpmaNv, TpmaObject
from vtpm.errors import VtpmError

# --- constants (Part 2) -------------------------------------------------------------------------

TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
TPM_ST_HASHCHECK = 0x8024
COMMAND_TAGS = frozenset({TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS})

TPM_RC_SUCCESS = 0x000
TPM_RC_BAD_TAG = 0x01E
TPM_RC_INITIALIZE = 0x100
TPM_RC_FAILURE = 0x101
TPM_RC_COMMAND_SIZE = 0x142
TPM_RC_HANDLE = 0x08B  # format-one handle error; the handle number is in bits 8..10
TPM_RC_NV_DEFINED = 0x14C
RC_FMT1 = 0x080
RC_FMT1_ERROR_MASK = 0x0BF

TPM_SU_CLEAR = 0x0000

TPM_RH_OWNER = 0x40000001
TPM_RH_NULL = 0x40000007
TPM_RS_PW = 0x40000009
TPM_RH_ENDORSEMENT = 0x4000000B
TPM_RH_PLATFORM = 0x4000000C

# Algorithm IDs, curves and attribute bits are declared in tdxdefs.tpm; the names below are the
# ones this module's callers use (plain ints, for struct packing).
TPM_ALG_RSA = int(TpmAlg.RSA)
TPM_ALG_SHA1 = int(TpmAlg.SHA1)
TPM_ALG_AES = int(TpmAlg.AES)
TPM_ALG_SHA256 = int(TpmAlg.SHA256)
TPM_ALG_SHA512 = int(TpmAlg.SHA512)
TPM_ALG_NULL = int(TpmAlg.NULL)
TPM_ALG_RSASSA = int(TpmAlg.RSASSA)
TPM_ALG_ECDSA = int(TpmAlg.ECDSA)
TPM_ALG_ECC = int(TpmAlg.ECC)
TPM_ALG_CFB = int(TpmAlg.CFB)
TPM_ECC_NIST_P256 = int(EccCurve.NIST_P256)
TPM_ECC_NIST_P384 = int(EccCurve.NIST_P384)
HASH_ALGS = HASH_NAMES

TPMA_OBJECT_FIXEDTPM = int(TpmaObject.FIXED_TPM)
TPMA_OBJECT_FIXEDPARENT = int(TpmaObject.FIXED_PARENT)
TPMA_OBJECT_SENSITIVEDATAORIGIN = int(TpmaObject.SENSITIVE_DATA_ORIGIN)
TPMA_OBJECT_USERWITHAUTH = int(TpmaObject.USER_WITH_AUTH)
TPMA_OBJECT_ADMINWITHPOLICY = int(TpmaObject.ADMIN_WITH_POLICY)
TPMA_OBJECT_NODA = int(TpmaObject.NO_DA)
TPMA_OBJECT_RESTRICTED = int(TpmaObject.RESTRICTED)
TPMA_OBJECT_DECRYPT = int(TpmaObject.DECRYPT)
TPMA_OBJECT_SIGN = int(TpmaObject.SIGN_ENCRYPT)

TPMA_NV_PPWRITE = int(TpmaNv.PPWRITE)
TPMA_NV_WRITELOCKED = int(TpmaNv.WRITELOCKED)
TPMA_NV_WRITEDEFINE = int(TpmaNv.WRITEDEFINE)
TPMA_NV_PPREAD = int(TpmaNv.PPREAD)
TPMA_NV_OWNERREAD = int(TpmaNv.OWNERREAD)
TPMA_NV_AUTHREAD = int(TpmaNv.AUTHREAD)
TPMA_NV_NO_DA = int(TpmaNv.NO_DA)
TPMA_NV_PLATFORMCREATE = int(TpmaNv.PLATFORMCREATE)

TPMA_SESSION_CONTINUESESSION = 0x01

TPM_CAP_TPM_PROPERTIES = 0x00000006
TPM_PT_FIXED = 0x100
TPM_PT_MANUFACTURER = TPM_PT_FIXED + 5
TPM_PT_VENDOR_STRING_1 = TPM_PT_FIXED + 6
TPM_PT_VENDOR_STRING_2 = TPM_PT_FIXED + 7
TPM_PT_VENDOR_STRING_3 = TPM_PT_FIXED + 8
TPM_PT_VENDOR_STRING_4 = TPM_PT_FIXED + 9
TPM_PT_FIRMWARE_VERSION_1 = TPM_PT_FIXED + 11
TPM_PT_FIRMWARE_VERSION_2 = TPM_PT_FIXED + 12
TPM_PT_NV_INDEX_MAX = TPM_PT_FIXED + 23
TPM_PT_NV_BUFFER_MAX = TPM_PT_FIXED + 44

# Command codes (Part 2, 6.5.2).
TPM_CC_NV_UNDEFINE_SPACE = 0x00000122
TPM_CC_NV_DEFINE_SPACE = 0x0000012A
TPM_CC_CREATE_PRIMARY = 0x00000131
TPM_CC_NV_WRITE = 0x00000137
TPM_CC_NV_WRITE_LOCK = 0x00000138
TPM_CC_STARTUP = 0x00000144
TPM_CC_NV_READ = 0x0000014E
TPM_CC_SIGN = 0x0000015D
TPM_CC_FLUSH_CONTEXT = 0x00000165
TPM_CC_NV_READ_PUBLIC = 0x00000169
TPM_CC_GET_CAPABILITY = 0x0000017A
TPM_CC_CREATE_LOADED = 0x00000191
TPM_CC_PCR_READ = 0x0000017E
TPM_CC_PCR_EXTEND = 0x00000182

COMMAND_NAMES: dict[int, str] = {
    TPM_CC_NV_UNDEFINE_SPACE: "TPM2_NV_UndefineSpace",
    TPM_CC_NV_DEFINE_SPACE: "TPM2_NV_DefineSpace",
    TPM_CC_CREATE_PRIMARY: "TPM2_CreatePrimary",
    TPM_CC_NV_WRITE: "TPM2_NV_Write",
    TPM_CC_NV_WRITE_LOCK: "TPM2_NV_WriteLock",
    TPM_CC_STARTUP: "TPM2_Startup",
    TPM_CC_NV_READ: "TPM2_NV_Read",
    TPM_CC_SIGN: "TPM2_Sign",
    TPM_CC_FLUSH_CONTEXT: "TPM2_FlushContext",
    TPM_CC_NV_READ_PUBLIC: "TPM2_NV_ReadPublic",
    TPM_CC_GET_CAPABILITY: "TPM2_GetCapability",
    TPM_CC_CREATE_LOADED: "TPM2_CreateLoaded",
    TPM_CC_PCR_READ: "TPM2_PCR_Read",
    TPM_CC_PCR_EXTEND: "TPM2_PCR_Extend",
}

# --- fixed layouts (Part 1, 18; Part 2) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TpmHeader(Layout):
    """Command and response header (Part 1, 18): the size counts the whole command or response."""

    NAME: ClassVar[str] = "TPM header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("tag", "H"), ("size", "I"), ("code", "I"))
    SIZE: ClassVar[int] = 10
    BYTE_ORDER: ClassVar[str] = BIG_ENDIAN

    tag: int
    size: int
    code: int


@dataclass(frozen=True, slots=True)
class TpmsTaggedProperty(Layout):
    """TPMS_TAGGED_PROPERTY (Part 2, 10.8.2)."""

    NAME: ClassVar[str] = "TPMS_TAGGED_PROPERTY"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("property", "I"), ("value", "I"))
    SIZE: ClassVar[int] = 8
    BYTE_ORDER: ClassVar[str] = BIG_ENDIAN

    property: int
    value: int


@dataclass(frozen=True, slots=True)
class GetCapabilityParameters(Layout):
    """TPM2_GetCapability command parameters (Part 3, 30.2)."""

    NAME: ClassVar[str] = "TPM2_GetCapability parameters"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("capability", "I"),
        ("property", "I"),
        ("property_count", "I"),
    )
    SIZE: ClassVar[int] = 12
    BYTE_ORDER: ClassVar[str] = BIG_ENDIAN

    capability: int
    property: int
    property_count: int


@dataclass(frozen=True, slots=True)
class TpmtTkHashcheckNull(Layout):
    """TPMT_TK_HASHCHECK (Part 2, 10.7.6) as the NULL ticket: tag, hierarchy, an empty digest."""

    NAME: ClassVar[str] = "TPMT_TK_HASHCHECK"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("tag", "H"),
        ("hierarchy", "I"),
        ("digest_size", "H"),
    )
    SIZE: ClassVar[int] = 8
    BYTE_ORDER: ClassVar[str] = BIG_ENDIAN

    tag: int
    hierarchy: int
    digest_size: int


# The compiled structs of the layouts above, for the per-command paths (no object per call).
TPM_HEADER = TpmHeader.STRUCT
TPM_HEADER_SIZE = TpmHeader.SIZE
TPMS_TAGGED_PROPERTY = TpmsTaggedProperty.STRUCT
GET_CAPABILITY_PARAMS = GetCapabilityParameters.STRUCT
TPMT_TK_HASHCHECK_NULL = TpmtTkHashcheckNull.STRUCT
UINT8 = struct.Struct(">B")
UINT16 = struct.Struct(">H")
UINT32 = struct.Struct(">I")


class WireError(VtpmError, ValueError):
    """Bytes from the TPM do not parse as the structure expected; says which field and offset."""


class TpmError(VtpmError, RuntimeError):
    """The TPM answered a command with a response code other than TPM_RC_SUCCESS."""

    def __init__(self, command_code: int, rc: int, detail: str = "") -> None:
        self.command_code = command_code
        self.rc = rc
        name = COMMAND_NAMES.get(command_code, "TPM2 command")
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{name} (cc 0x{command_code:08x}) failed: rc=0x{rc:03x}{extra}")


class Transport(Protocol):
    """Anything that runs one TPM 2.0 command and returns the response bytes."""

    def process(self, command: bytes) -> bytes: ...


def tpm2b(data: bytes) -> bytes:
    """A TPM2B: a 16-bit big-endian size followed by that many bytes."""
    if len(data) > 0xFFFF:
        raise WireError(f"TPM2B payload of {len(data)} bytes does not fit a 16-bit size")
    return UINT16.pack(len(data)) + data


class Reader:
    """Sequential unmarshalling with offsets in every error."""

    def __init__(self, data: bytes, what: str = "response") -> None:
        self.data = data
        self.offset = 0
        self.what = what

    def take(self, size: int, name: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise WireError(
                f"{self.what}: field {name} at offset {self.offset} needs {size} bytes, "
                f"only {len(self.data) - self.offset} left"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u8(self, name: str) -> int:
        return int(UINT8.unpack(self.take(UINT8.size, name))[0])

    def u16(self, name: str) -> int:
        return int(UINT16.unpack(self.take(UINT16.size, name))[0])

    def u32(self, name: str) -> int:
        return int(UINT32.unpack(self.take(UINT32.size, name))[0])

    def tpm2b(self, name: str) -> bytes:
        return self.take(self.u16(f"{name}.size"), name)

    def rest(self) -> bytes:
        chunk = self.data[self.offset :]
        self.offset = len(self.data)
        return chunk

    def expect_end(self) -> None:
        if self.offset != len(self.data):
            raise WireError(
                f"{self.what}: {len(self.data) - self.offset} trailing bytes "
                f"at offset {self.offset}"
            )


# --- object structures (Part 2, 12) -------------------------------------------------------------


@dataclass(frozen=True)
class SymDefObject:
    """TPMT_SYM_DEF_OBJECT: algorithm, keyBits and mode (the last two absent for TPM_ALG_NULL)."""

    algorithm: int = TPM_ALG_NULL
    key_bits: int = 0
    mode: int = 0

    def pack(self) -> bytes:
        if self.algorithm == TPM_ALG_NULL:
            return UINT16.pack(TPM_ALG_NULL)
        return struct.pack(">HHH", self.algorithm, self.key_bits, self.mode)

    @classmethod
    def unpack(cls, r: Reader) -> SymDefObject:
        algorithm = r.u16("symmetric.algorithm")
        if algorithm == TPM_ALG_NULL:
            return cls()
        return cls(algorithm, r.u16("symmetric.keyBits"), r.u16("symmetric.mode"))


@dataclass(frozen=True)
class Scheme:
    """TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME / TPMT_SIG_SCHEME: scheme + hashAlg."""

    scheme: int = TPM_ALG_NULL
    hash_alg: int = TPM_ALG_NULL

    def pack(self) -> bytes:
        if self.scheme == TPM_ALG_NULL:
            return UINT16.pack(TPM_ALG_NULL)
        return struct.pack(">HH", self.scheme, self.hash_alg)

    @classmethod
    def unpack(cls, r: Reader, name: str) -> Scheme:
        scheme = r.u16(f"{name}.scheme")
        if scheme == TPM_ALG_NULL:
            return cls()
        return cls(scheme, r.u16(f"{name}.details.hashAlg"))


@dataclass(frozen=True)
class RsaParms:
    """TPMS_RSA_PARMS; exponent 0 means the default 65537."""

    symmetric: SymDefObject = SymDefObject()
    scheme: Scheme = Scheme()
    key_bits: int = 2048
    exponent: int = 0

    def pack(self) -> bytes:
        return (
            self.symmetric.pack()
            + self.scheme.pack()
            + struct.pack(">HI", self.key_bits, self.exponent)
        )

    @classmethod
    def unpack(cls, r: Reader) -> RsaParms:
        return cls(
            SymDefObject.unpack(r),
            Scheme.unpack(r, "scheme"),
            r.u16("keyBits"),
            r.u32("exponent"),
        )


@dataclass(frozen=True)
class EccParms:
    """TPMS_ECC_PARMS."""

    symmetric: SymDefObject = SymDefObject()
    scheme: Scheme = Scheme()
    curve_id: int = TPM_ECC_NIST_P256
    kdf: Scheme = Scheme()

    def pack(self) -> bytes:
        return (
            self.symmetric.pack()
            + self.scheme.pack()
            + UINT16.pack(self.curve_id)
            + self.kdf.pack()
        )

    @classmethod
    def unpack(cls, r: Reader) -> EccParms:
        return cls(
            SymDefObject.unpack(r),
            Scheme.unpack(r, "scheme"),
            r.u16("curveID"),
            Scheme.unpack(r, "kdf"),
        )


@dataclass(frozen=True)
class Public:
    """TPMT_PUBLIC for RSA and ECC keys. `unique` is the RSA modulus, or (x, y) for ECC."""

    type: int
    name_alg: int
    object_attributes: int
    auth_policy: bytes
    parameters: RsaParms | EccParms
    unique: bytes | tuple[bytes, bytes]

    def pack(self) -> bytes:
        head = struct.pack(">HHI", self.type, self.name_alg, self.object_attributes)
        if isinstance(self.unique, tuple):
            unique = tpm2b(self.unique[0]) + tpm2b(self.unique[1])
        else:
            unique = tpm2b(self.unique)
        return head + tpm2b(self.auth_policy) + self.parameters.pack() + unique

    @classmethod
    def unpack(cls, r: Reader) -> Public:
        key_type = r.u16("type")
        name_alg = r.u16("nameAlg")
        attributes = r.u32("objectAttributes")
        policy = r.tpm2b("authPolicy")
        parameters: RsaParms | EccParms
        unique: bytes | tuple[bytes, bytes]
        if key_type == TPM_ALG_RSA:
            parameters = RsaParms.unpack(r)
            unique = r.tpm2b("unique.rsa")
        elif key_type == TPM_ALG_ECC:
            parameters = EccParms.unpack(r)
            unique = (r.tpm2b("unique.ecc.x"), r.tpm2b("unique.ecc.y"))
        else:
            raise WireError(f"{r.what}: TPMT_PUBLIC.type 0x{key_type:04x} is neither RSA nor ECC")
        return cls(key_type, name_alg, attributes, policy, parameters, unique)

    @classmethod
    def from_bytes(cls, data: bytes) -> Public:
        """Unpack a marshalled TPMT_PUBLIC that must fill `data` exactly."""
        r = Reader(data, "TPMT_PUBLIC")
        public = cls.unpack(r)
        r.expect_end()
        return public

    def name(self) -> bytes:
        """The object's Name: nameAlg, then the nameAlg digest of the marshalled TPMT_PUBLIC."""
        return name_of(self.name_alg, self.pack())


def name_of(name_alg: int, marshalled_public: bytes) -> bytes:
    """TPM2B_NAME contents for an object or NV index whose public area is `marshalled_public`."""
    if name_alg not in HASH_ALGS:
        raise WireError(f"nameAlg 0x{name_alg:04x} is not a supported hash")
    return UINT16.pack(name_alg) + hashlib.new(HASH_ALGS[name_alg], marshalled_public).digest()


@dataclass(frozen=True)
class SensitiveCreate:
    """TPMS_SENSITIVE_CREATE: userAuth and data (both TPM2B)."""

    user_auth: bytes = b""
    data: bytes = b""

    def pack(self) -> bytes:
        return tpm2b(self.user_auth) + tpm2b(self.data)


@dataclass(frozen=True)
class NvPublic:
    """TPMS_NV_PUBLIC."""

    nv_index: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    data_size: int

    def pack(self) -> bytes:
        return (
            struct.pack(">IHI", self.nv_index, self.name_alg, self.attributes)
            + tpm2b(self.auth_policy)
            + UINT16.pack(self.data_size)
        )

    @classmethod
    def unpack(cls, r: Reader) -> NvPublic:
        return cls(
            r.u32("nvIndex"),
            r.u16("nameAlg"),
            r.u32("attributes"),
            r.tpm2b("authPolicy"),
            r.u16("dataSize"),
        )


@dataclass(frozen=True)
class EcdsaSignature:
    """TPMT_SIGNATURE with sigAlg TPM_ALG_ECDSA: hash and the (r, s) integers."""

    hash_alg: int
    r: int
    s: int


def unpack_signature(r: Reader) -> EcdsaSignature:
    """TPMT_SIGNATURE; only ECDSA, the one scheme the vTPM signs its certificates with."""
    sig_alg = r.u16("signature.sigAlg")
    if sig_alg != TPM_ALG_ECDSA:
        raise WireError(f"{r.what}: signature.sigAlg 0x{sig_alg:04x}, expected ECDSA")
    hash_alg = r.u16("signature.hash")
    sig_r = int.from_bytes(r.tpm2b("signature.signatureR"), "big")
    sig_s = int.from_bytes(r.tpm2b("signature.signatureS"), "big")
    return EcdsaSignature(hash_alg, sig_r, sig_s)


# --- commands and responses (Part 1, 18) --------------------------------------------------------


@dataclass(frozen=True)
class PasswordAuth:
    """TPMS_AUTH_COMMAND for the password session TPM_RS_PW."""

    password: bytes = b""

    def pack(self) -> bytes:
        return (
            UINT32.pack(TPM_RS_PW)
            + tpm2b(b"")
            + UINT8.pack(TPMA_SESSION_CONTINUESESSION)
            + tpm2b(self.password)
        )


def build_command(
    code: int,
    handles: Sequence[int] = (),
    params: bytes = b"",
    auths: Sequence[PasswordAuth] = (),
) -> bytes:
    """Marshal a command: header, handles, authorization area (if any), parameters."""
    body = b"".join(UINT32.pack(h) for h in handles)
    if auths:
        area = b"".join(a.pack() for a in auths)
        body += UINT32.pack(len(area)) + area
    body += params
    tag = TPM_ST_SESSIONS if auths else TPM_ST_NO_SESSIONS
    return TPM_HEADER.pack(tag, TPM_HEADER_SIZE + len(body), code) + body


@dataclass
class Response:
    """A successful response split into its handles and its parameter area."""

    handles: list[int] = field(default_factory=list)
    params: bytes = b""


def parse_response(code: int, response: bytes, n_handles: int = 0) -> Response:
    """Check the header and response code, then split handles, parameterSize and parameters."""
    what = f"{COMMAND_NAMES.get(code, 'TPM2 command')} response"
    r = Reader(response, what)
    tag = r.u16("tag")
    size = r.u32("responseSize")
    rc = r.u32("responseCode")
    if size != len(response):
        raise WireError(f"{what}: responseSize {size} but {len(response)} bytes arrived")
    if rc != TPM_RC_SUCCESS:
        raise TpmError(code, rc)
    if tag not in (TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS):
        raise WireError(f"{what}: bad tag 0x{tag:04x} at offset 0")
    handles = [r.u32(f"handle[{i}]") for i in range(n_handles)]
    has_sessions = tag == TPM_ST_SESSIONS
    params = r.take(r.u32("parameterSize"), "parameters") if has_sessions else r.rest()
    return Response(handles, params)


def rc_base(rc: int) -> int:
    """The error number without the handle/parameter/session position bits."""
    return rc & RC_FMT1_ERROR_MASK if rc & RC_FMT1 else rc


# --- the commands the vTPM sends ----------------------------------------------------------------


@dataclass(frozen=True)
class CreatedObject:
    """What TPM2_CreatePrimary / TPM2_CreateLoaded return that the vTPM keeps."""

    handle: int
    public: Public
    name: bytes


class TpmClient:
    """TPM 2.0 commands over a `Transport`, with password authorization."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def call(
        self,
        code: int,
        handles: Sequence[int] = (),
        params: bytes = b"",
        auths: Sequence[PasswordAuth] = (),
        n_out_handles: int = 0,
    ) -> Response:
        command = build_command(code, handles, params, auths)
        return parse_response(code, self.transport.process(command), n_out_handles)

    def startup_clear(self) -> bool:
        """TPM2_Startup(CLEAR); False if the TPM had already been started."""
        try:
            self.call(TPM_CC_STARTUP, params=UINT16.pack(TPM_SU_CLEAR))
        except TpmError as exc:
            if exc.rc == TPM_RC_INITIALIZE:
                return False
            raise
        return True

    def get_properties(self, first: int, count: int) -> dict[int, int]:
        """TPM2_GetCapability(TPM_PROPERTIES): property -> value for up to `count` properties."""
        resp = self.call(
            TPM_CC_GET_CAPABILITY,
            params=GET_CAPABILITY_PARAMS.pack(TPM_CAP_TPM_PROPERTIES, first, count),
        )
        r = Reader(resp.params, "TPM2_GetCapability response")
        r.u8("moreData")
        capability = r.u32("capabilityData.capability")
        if capability != TPM_CAP_TPM_PROPERTIES:
            raise WireError(f"TPM2_GetCapability: capability 0x{capability:x} returned")
        out = {}
        for i in range(r.u32("tpmProperties.count")):
            prop, value = TPMS_TAGGED_PROPERTY.unpack(
                r.take(TPMS_TAGGED_PROPERTY.size, f"tpmProperty[{i}]")
            )
            out[prop] = value
        return out

    def create_primary(
        self,
        hierarchy: int,
        template: Public,
        sensitive: SensitiveCreate = SensitiveCreate(),
        hierarchy_auth: bytes = b"",
    ) -> CreatedObject:
        """TPM2_CreatePrimary with no outsideInfo and no creation PCRs."""
        params = tpm2b(sensitive.pack()) + tpm2b(template.pack()) + tpm2b(b"") + UINT32.pack(0)
        resp = self.call(
            TPM_CC_CREATE_PRIMARY, [hierarchy], params, [PasswordAuth(hierarchy_auth)], 1
        )
        r = Reader(resp.params, "TPM2_CreatePrimary response")
        public = Public.from_bytes(r.tpm2b("outPublic"))
        r.tpm2b("creationData")
        r.tpm2b("creationHash")
        r.u16("creationTicket.tag")
        r.u32("creationTicket.hierarchy")
        r.tpm2b("creationTicket.digest")
        name = r.tpm2b("name")
        return CreatedObject(resp.handles[0], public, name)

    def create_loaded(
        self,
        parent: int,
        template: Public,
        sensitive: SensitiveCreate = SensitiveCreate(),
        parent_auth: bytes = b"",
    ) -> CreatedObject:
        """TPM2_CreateLoaded: an ordinary key from the TPM RNG, loaded; its private blob dropped."""
        params = tpm2b(sensitive.pack()) + tpm2b(template.pack())
        resp = self.call(TPM_CC_CREATE_LOADED, [parent], params, [PasswordAuth(parent_auth)], 1)
        r = Reader(resp.params, "TPM2_CreateLoaded response")
        r.tpm2b("outPrivate")
        public = Public.from_bytes(r.tpm2b("outPublic"))
        name = r.tpm2b("name")
        return CreatedObject(resp.handles[0], public, name)

    def sign(self, key: int, digest: bytes, key_auth: bytes = b"") -> EcdsaSignature:
        """TPM2_Sign of a digest with the key's own scheme and a NULL hashcheck ticket."""
        params = (
            tpm2b(digest)
            + Scheme().pack()
            + TPMT_TK_HASHCHECK_NULL.pack(TPM_ST_HASHCHECK, TPM_RH_NULL, 0)
        )
        resp = self.call(TPM_CC_SIGN, [key], params, [PasswordAuth(key_auth)])
        return unpack_signature(Reader(resp.params, "TPM2_Sign response"))

    def flush(self, handle: int) -> None:
        """TPM2_FlushContext."""
        self.call(TPM_CC_FLUSH_CONTEXT, params=UINT32.pack(handle))

    def nv_define(self, public: NvPublic, auth_handle: int = TPM_RH_PLATFORM) -> None:
        """TPM2_NV_DefineSpace with an empty index authValue."""
        params = tpm2b(b"") + tpm2b(public.pack())
        self.call(TPM_CC_NV_DEFINE_SPACE, [auth_handle], params, [PasswordAuth()])

    def nv_undefine(self, index: int, auth_handle: int = TPM_RH_PLATFORM) -> None:
        """TPM2_NV_UndefineSpace."""
        self.call(TPM_CC_NV_UNDEFINE_SPACE, [auth_handle, index], auths=[PasswordAuth()])

    def nv_read_public(self, index: int) -> NvPublic | None:
        """TPM2_NV_ReadPublic, or None if no index of that handle is defined."""
        try:
            resp = self.call(TPM_CC_NV_READ_PUBLIC, [index])
        except TpmError as exc:
            if rc_base(exc.rc) == TPM_RC_HANDLE:
                return None
            raise
        r = Reader(resp.params, "TPM2_NV_ReadPublic response")
        inner = Reader(r.tpm2b("nvPublic"), "TPMS_NV_PUBLIC")
        return NvPublic.unpack(inner)

    def nv_write(
        self,
        index: int,
        data: bytes,
        chunk: int,
        auth_handle: int = TPM_RH_PLATFORM,
    ) -> None:
        """TPM2_NV_Write of `data` from offset 0, `chunk` bytes (TPM_PT_NV_BUFFER_MAX) at a time."""
        for offset in range(0, len(data), chunk):
            params = tpm2b(data[offset : offset + chunk]) + UINT16.pack(offset)
            self.call(TPM_CC_NV_WRITE, [auth_handle, index], params, [PasswordAuth()])

    def nv_write_lock(self, index: int, auth_handle: int = TPM_RH_PLATFORM) -> None:
        """TPM2_NV_WriteLock; with TPMA_NV_WRITEDEFINE it holds until the index is undefined."""
        self.call(TPM_CC_NV_WRITE_LOCK, [auth_handle, index], auths=[PasswordAuth()])

    def nv_read(
        self,
        index: int,
        size: int,
        chunk: int,
        auth_handle: int | None = None,
    ) -> bytes:
        """TPM2_NV_Read of `size` bytes from offset 0; by default authorized by the index itself."""
        out = b""
        auth = index if auth_handle is None else auth_handle
        while len(out) < size:
            n = min(chunk, size - len(out))
            params = UINT16.pack(n) + UINT16.pack(len(out))
            resp = self.call(TPM_CC_NV_READ, [auth, index], params, [PasswordAuth()])
            data = Reader(resp.params, "TPM2_NV_Read response").tpm2b("data")
            if len(data) != n:
                raise WireError(f"TPM2_NV_Read of index 0x{index:08x}: asked {n}, got {len(data)}")
            out += data
        return out


# --- PCRs (Part 3, 22.2 TPM2_PCR_Extend and 22.4 TPM2_PCR_Read) ---------------------------------

TPMT_HA_ALG = struct.Struct(">H")  # hashAlg, then the digest of that algorithm's size
PCR_SELECT_SIZE = 3  # sizeofSelect for PCRs 0..23
PCR_COUNT = PCR_SELECT_SIZE * 8


def pcr_selection(bank: int, pcr: int) -> bytes:
    """TPML_PCR_SELECTION of one PCR in one bank."""
    if not 0 <= pcr < PCR_COUNT:
        raise WireError(f"PCR {pcr} outside 0..{PCR_COUNT - 1}")
    select = bytearray(PCR_SELECT_SIZE)
    select[pcr // 8] |= 1 << (pcr % 8)
    return UINT32.pack(1) + UINT16.pack(bank) + UINT8.pack(PCR_SELECT_SIZE) + bytes(select)


def pcr_extend(tpm: TpmClient, pcr: int, digests: dict[int, bytes]) -> None:
    """TPM2_PCR_Extend of `pcr` with one digest per bank (hash algorithm -> digest)."""
    values = b""
    for alg, digest in digests.items():
        if DIGEST_SIZES.get(alg) != len(digest):
            raise WireError(f"TPM2_PCR_Extend: digest of {len(digest)} bytes for alg 0x{alg:04x}")
        values += TPMT_HA_ALG.pack(alg) + digest
    params = UINT32.pack(len(digests)) + values
    tpm.call(TPM_CC_PCR_EXTEND, [pcr], params, [PasswordAuth()])


def pcr_read(tpm: TpmClient, bank: int, pcr: int) -> bytes:
    """TPM2_PCR_Read of one PCR in one bank; its current value."""
    resp = tpm.call(TPM_CC_PCR_READ, params=pcr_selection(bank, pcr))
    r = Reader(resp.params, "TPM2_PCR_Read response")
    r.u32("pcrUpdateCounter")
    for i in range(r.u32("pcrSelectionOut.count")):
        r.u16(f"pcrSelectionOut[{i}].hash")
        r.take(r.u8(f"pcrSelectionOut[{i}].sizeofSelect"), f"pcrSelectionOut[{i}].pcrSelect")
    count = r.u32("pcrValues.count")
    if count != 1:
        raise WireError(f"TPM2_PCR_Read of PCR {pcr} bank 0x{bank:04x}: {count} values returned")
    return r.tpm2b("pcrValues[0]")
