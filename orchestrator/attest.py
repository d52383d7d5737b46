"""`invoke attest`: attest a running `invoke run --serve` end to end through the L2 path.

This side talks to the TPM over a TCTI (tpm2-pytss ESAPI) and collects `TpmEvidence`: the EK and
CA certificates from NV; the ECC EK recreated from its TCG template (EK Credential Profile,
template L-2); an AK created as a primary key in the owner hierarchy; a MakeCredential challenge
(made by `verifier.tpm_attestation`) activated with the EK under its policy (the profile's
PolicyA, PolicySecret(TPM_RH_ENDORSEMENT)); TPM2_Quote over PCRs 0, 4 and those the L2
firmware's event log covers, with a fresh nonce; PCR_Read of the same PCRs; and the L2
firmware's event log from its NV index when present. `verifier.tpm_attestation` decides.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from igvm.errors import IgvmError
from orchestrator.errors import OrchestratorError
from orchestrator.product import launch_options
from tdxdefs.firmware_log import EVENT_LOG_NV_INDEX, PAYLOAD_PCR
from verifier import eventlog
from verifier.errors import VerificationError
from verifier.reference import ReferenceValues, reference_values
from verifier.td_attestation import AttestationReport
from verifier.tpm_attestation import (
    BANK_ALGORITHM,
    QUOTE_BANKS,
    Challenge,
    TpmEvidence,
    make_credential,
    parse_public,
    verify_tpm_attestation,
)
from verifier.trust_anchors import resolve_root, simulated_root
from vtpm import wire
from vtpm.manufacture import EK_TEMPLATE_L2_ECC
from vtpm.nvindex import EK_CERT_NV_INDEX, NV_EK_CHAIN_FIRST, NV_EK_CHAIN_LAST

# orchestrator.boot and orchestrator.serve (the TD host, heavy to import) are imported where a TD
# is served, so `invoke attest` against a TD served elsewhere starts quickly
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = ROOT / "out" / "tdp.igvm"
SERVE_WAIT_S = 120.0
BASE_PCRS = (0, PAYLOAD_PCR)
NV_READ_CHUNK = 1024
NV_HANDLES_PER_CALL = 64
NV_INDEX_LIMIT = 2048  # TPM_PT_NV_INDEX_MAX of libtpms: no index of a vTPM holds more
AK_TEMPLATE = wire.Public(
    wire.TPM_ALG_ECC,
    wire.TPM_ALG_SHA256,
    wire.TPMA_OBJECT_FIXEDTPM
    | wire.TPMA_OBJECT_FIXEDPARENT
    | wire.TPMA_OBJECT_SENSITIVEDATAORIGIN
    | wire.TPMA_OBJECT_USERWITHAUTH
    | wire.TPMA_OBJECT_RESTRICTED
    | wire.TPMA_OBJECT_SIGN,
    b"",
    wire.EccParms(
        wire.SymDefObject(),
        wire.Scheme(wire.TPM_ALG_ECDSA, wire.TPM_ALG_SHA256),
        wire.TPM_ECC_NIST_P256,
        wire.Scheme(),
    ),
    (b"", b""),
)


class AttestError(OrchestratorError):
    """The evidence could not be collected from the TPM (names the command or NV index)."""


def tcti_for(port: int, tcti: str) -> str:
    """The TCTI string: `tcti` as given, else mssim on 127.0.0.1:`port`."""
    if tcti:
        return tcti
    if not port:
        raise AttestError("give --port P (of `invoke run --serve`) or --tcti T")
    return f"mssim:host=127.0.0.1,port={port}"


def nv_indices(ectx: object) -> set[int]:
    """The NV indices the TPM defines (TPM2_GetCapability(TPM_CAP_HANDLES, NV range))."""
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import TPM2_CAP, TPM2_HC

    assert isinstance(ectx, ESAPI)
    found: set[int] = set()
    first, last = int(TPM2_HC.NV_INDEX_FIRST), int(TPM2_HC.NV_INDEX_LAST)
    more = True
    while more and first <= last:  # the TPM is the host's: each answer must move forward
        more, data = ectx.get_capability(TPM2_CAP.HANDLES, first, NV_HANDLES_PER_CALL)
        handles = [int(h) for h in data.data.handles]
        if not handles or max(handles) < first:
            break
        found.update(handles)
        first = max(handles) + 1
    return found


def read_nv(ectx: object, index: int, limit: int = NV_INDEX_LIMIT) -> bytes:
    """The whole contents of NV index `index`, in NV_READ_CHUNK pieces; an index larger than
    `limit` bytes, or a TPM that answers a read with fewer bytes than asked, is refused."""
    from tpm2_pytss import ESAPI

    assert isinstance(ectx, ESAPI)
    handle = ectx.tr_from_tpmpublic(index)
    try:
        public, _name = ectx.nv_read_public(handle)
        size = public.nvPublic.dataSize
        if size > limit:
            raise AttestError(f"NV index {index:#010x}: {size} bytes, more than the {limit} read")
        data = b""
        while len(data) < size:
            chunk = min(NV_READ_CHUNK, size - len(data))
            piece = bytes(ectx.nv_read(handle, chunk, len(data)))
            if len(piece) != chunk:
                raise AttestError(
                    f"NV index {index:#010x}: {len(piece)} bytes read at offset {len(data)}, "
                    f"{chunk} asked"
                )
            data += piece
        return data
    finally:
        ectx.tr_close(handle)


def _pcr_list(firmware_log: bytes | None) -> list[int]:
    """PCRs 0 and 4, and every PCR the firmware log extends (when it parses; the verifier
    reports a log that does not)."""
    pcrs = set(BASE_PCRS)
    if firmware_log is not None:
        try:
            log = eventlog.parse(firmware_log)
        except eventlog.EventLogError:
            return sorted(pcrs)
        pcrs |= {e.mr_index for e in log.events if e.extends and 0 <= e.mr_index < 24}
    return sorted(pcrs)


def collect(tcti: str, challenge: Challenge) -> TpmEvidence:
    """Talk to the TPM at `tcti` and collect the evidence for `challenge` (module docstring)."""
    from tpm2_pytss import ESAPI, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import (
        TPM2B_ENCRYPTED_SECRET,
        TPM2B_ID_OBJECT,
        TPM2B_PUBLIC,
        TPML_PCR_SELECTION,
        TPMT_PUBLIC,
        TPMT_SIG_SCHEME,
        TPMT_SYM_DEF,
    )

    step = "opening the TCTI"
    try:
        with ESAPI(tcti) as ectx:
            step = "reading the EK and CA certificates from NV"
            defined = nv_indices(ectx)
            eks = {kind: read_nv(ectx, i) for kind, i in EK_CERT_NV_INDEX.items() if i in defined}
            ca = b""
            for index in range(NV_EK_CHAIN_FIRST, NV_EK_CHAIN_LAST + 1):
                if index not in defined:
                    break
                ca += read_nv(ectx, index)
            if not ca:
                raise AttestError(f"no CA certificate in NV from {NV_EK_CHAIN_FIRST:#x}")
            step = f"reading the firmware event log (NV {EVENT_LOG_NV_INDEX:#x})"
            firmware_log = (
                read_nv(ectx, EVENT_LOG_NV_INDEX) if EVENT_LOG_NV_INDEX in defined else None
            )

            step = "recreating the ECC EK (TPM2_CreatePrimary, template L-2)"
            ek_template = TPM2B_PUBLIC(TPMT_PUBLIC.unmarshal(EK_TEMPLATE_L2_ECC.pack())[0])
            ek, ek_out, *_ = ectx.create_primary(None, ek_template, ESYS_TR.ENDORSEMENT)
            try:
                step = "creating the AK (TPM2_CreatePrimary, owner hierarchy)"
                ak_template = TPM2B_PUBLIC(TPMT_PUBLIC.unmarshal(AK_TEMPLATE.pack())[0])
                ak, ak_out, *_ = ectx.create_primary(None, ak_template, ESYS_TR.OWNER)
                try:
                    ek_public = bytes(ek_out.publicArea.marshal())
                    ak_public = bytes(ak_out.publicArea.marshal())
                    name = parse_public(ak_public).name
                    credential = make_credential(parse_public(ek_public), name, challenge.secret)

                    step = "TPM2_ActivateCredential with the EK's policy session"
                    session = ectx.start_auth_session(
                        ESYS_TR.NONE,
                        ESYS_TR.NONE,
                        TPM2_SE.POLICY,
                        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                        TPM2_ALG.SHA256,
                    )
                    try:
                        ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
                        activated = ectx.activate_credential(
                            ak,
                            ek,
                            TPM2B_ID_OBJECT(credential.credential_blob),
                            TPM2B_ENCRYPTED_SECRET(credential.encrypted_seed),
                            session1=ESYS_TR.PASSWORD,
                            session2=session,
                        )
                    finally:
                        ectx.flush_context(session)

                    pcrs = _pcr_list(firmware_log)
                    text = "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank in QUOTE_BANKS)
                    step = f"TPM2_Quote over {text}"
                    attest, signature = ectx.quote(
                        ak,
                        TPML_PCR_SELECTION.parse(text),
                        challenge.nonce,
                        TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
                    )
                    attest_bytes = bytes(attest.marshal())[2:]
                    signature_bytes = bytes(signature.marshal())
                    step = f"TPM2_PCR_Read of {text}"
                    values: dict[str, dict[int, bytes]] = {}
                    for bank in QUOTE_BANKS:
                        _, _, digests = ectx.pcr_read(
                            TPML_PCR_SELECTION.parse(f"{bank}:{','.join(map(str, pcrs))}")
                        )
                        read = [bytes(d) for d in digests]
                        if len(read) != len(pcrs):
                            raise AttestError(
                                f"PCR_Read {bank}: {len(read)} values for PCRs {pcrs}"
                            )
                        values[bank] = dict(zip(pcrs, read, strict=True))
                finally:
                    ectx.flush_context(ak)
            finally:
                ectx.flush_context(ek)
    except TSS2_Exception as exc:
        raise AttestError(f"{step}: {exc}") from exc
    assert set(values) == set(BANK_ALGORITHM)
    return TpmEvidence(
        ca_certificate=ca,
        ek_certificates=eks,
        ek_kind="ecc",
        ek_public=ek_public,
        ak_public=ak_public,
        credential_name=credential.object_name,
        activated_secret=bytes(activated),
        attest=attest_bytes,
        signature=signature_bytes,
        pcrs=values,
        firmware_log=firmware_log,
    )


@dataclass(frozen=True)
class AttestResult:
    """A verdict, the evidence behind it, and how long collecting and checking took."""

    report: AttestationReport
    evidence: TpmEvidence
    challenge: Challenge
    root_label: str
    simulated: bool  # the trusted root is tdxsim's: no hardware root of trust
    collect_s: float
    verify_s: float


def reference_for(image: Path, dev_platform_port: bool = False) -> ReferenceValues:
    """The reference values of `image` as `invoke run --serve` launches it."""
    from svsm.version import SVSM_VERSION

    return reference_values(
        image, l1_version=SVSM_VERSION, command_line=launch_options(dev_platform_port).decode()
    )


def attest(
    tcti: str,
    image: Path = DEFAULT_IMAGE,
    *,
    root: str = "simulated",
    dev_platform_port: bool = False,
    reference: ReferenceValues | None = None,
) -> AttestResult:
    """Collect the evidence with a fresh nonce and verify it against `image`'s reference."""
    trusted_root, label = resolve_root(root)
    reference = reference if reference is not None else reference_for(image, dev_platform_port)
    challenge = Challenge.fresh()
    start = time.perf_counter()
    evidence = collect(tcti, challenge)
    collected = time.perf_counter()
    report = verify_tpm_attestation(
        evidence, reference, challenge=challenge, trusted_root=trusted_root, root_label=label
    )
    return AttestResult(
        report,
        evidence,
        challenge,
        label,
        trusted_root == simulated_root(),
        collected - start,
        time.perf_counter() - collected,
    )


def print_report(result: AttestResult, out: Callable[[str], None] = print) -> None:
    """One line per step, like `python -m verifier quote`; a failure with expected and actual."""
    out(f"root of trust: {result.root_label}")
    for step in result.report.steps:
        out(f"{'ok' if step.ok else 'FAILED':>6}  {step.name}: {step.detail}")
        if not step.ok:
            out(f"        expected: {step.expected}")
            out(f"        actual:   {step.actual}")
    failed = result.report.failed
    verdict = "attested" if failed is None else f"NOT attested (step '{failed.name}')"
    quote = "SIMULATED TD quote" if result.simulated else "TD quote"
    out(
        f"{verdict}; {quote}; collect {result.collect_s * 1000:.0f} ms, verify "
        f"{result.verify_s * 1000:.0f} ms"
    )


@contextmanager
def serving(
    image: Path, out: Callable[[str], None] = lambda _line: None, *, dev_platform_port: bool = False
) -> Iterator[str]:
    """`invoke run --serve`'s code on `image` in a thread; yields the mssim TCTI string once L1
    serves, and stops the TD on exit."""
    from orchestrator.serve import serve_image

    stop = threading.Event()
    ready = threading.Event()
    tcti: list[str] = []
    failure: list[BaseException] = []

    def show(line: str) -> None:
        out(line)
        if re.fullmatch(r"\s*mssim:host=\S+", line):
            tcti.append(line.strip())
            ready.set()

    def body() -> None:
        try:
            serve_image(image, stop=stop, out=show, dev_platform_port=dev_platform_port)
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=body, name="served-td", daemon=True)
    thread.start()
    try:
        if not ready.wait(SERVE_WAIT_S) or not tcti:
            why = f": {failure[0]}" if failure else ""
            raise AttestError(f"the TD built from {image} did not serve its vTPM{why}")
        yield tcti[0]
    finally:
        stop.set()
        thread.join(SERVE_WAIT_S)


def main(
    port: int = 0,
    tcti: str = "",
    image: str = "",
    as_json: bool = False,
    root: str = "simulated",
    dev_platform_port: bool = False,
) -> int:
    """Entry point of `invoke attest`: 0 attested, 1 a step failed or the TPM could not be read."""
    path = Path(image) if image else DEFAULT_IMAGE
    try:
        result = attest(tcti_for(port, tcti), path, root=root, dev_platform_port=dev_platform_port)
    except (OrchestratorError, IgvmError, VerificationError, OSError, ValueError) as exc:
        print(f"attest: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(
            json.dumps(
                {
                    **result.report.as_dict(),
                    "root": result.root_label,
                    "simulated": result.simulated,
                    "nonce": result.challenge.nonce.hex(),
                    "collect_ms": round(result.collect_s * 1000, 1),
                    "verify_ms": round(result.verify_s * 1000, 1),
                },
                indent=2,
            )
        )
    else:
        print_report(result)
    return 0 if result.report.ok else 1
