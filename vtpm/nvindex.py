"""Where a manufactured vTPM keeps its certificates in NV, and reading the CA certificate back.

The EK certificates sit at the TCG EK Credential Profile 2.x low-range indices (RSA-2048 template
L-1 at 0x01C00002, ECC P-256 template L-2 at 0x01C0000A, section 2.2.1.5); the CA certificate is
split over consecutive indices of the EK certificate chain range from 0x01C00100. Kept apart from
`vtpm.manufacture` so that L1, which only reads certificates back through TPM commands, does not
import the X.509 machinery that manufacture needs.
"""

from __future__ import annotations

from vtpm import wire
from vtpm.errors import VtpmError

EK_KINDS = ("rsa", "ecc")
NV_RSA_EK_CERT = 0x01C00002
NV_ECC_EK_CERT = 0x01C0000A
EK_CERT_NV_INDEX = {"rsa": NV_RSA_EK_CERT, "ecc": NV_ECC_EK_CERT}
NV_EK_CHAIN_FIRST = 0x01C00100
NV_EK_CHAIN_LAST = 0x01C001FF


class CertificateReadError(VtpmError, RuntimeError):
    """The TPM did not give what reading a certificate back needs; names what was missing."""


def read_ca_certificate(tpm: wire.TpmClient) -> bytes:
    """The CA certificate reassembled from consecutive chain NV indices from 0x01C00100."""
    chunk = tpm.get_properties(wire.TPM_PT_NV_BUFFER_MAX, 1).get(wire.TPM_PT_NV_BUFFER_MAX, 0)
    if not chunk:
        raise CertificateReadError("TPM did not report TPM_PT_NV_BUFFER_MAX")
    data = b""
    for index in range(NV_EK_CHAIN_FIRST, NV_EK_CHAIN_LAST + 1):
        public = tpm.nv_read_public(index)
        if public is None:
            break
        data += tpm.nv_read(index, public.data_size, chunk)
    return data
