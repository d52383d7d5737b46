"""`serving_product`: the product image booted on the module model in this process, its L2 1
vTPM served through the host relay, the test as the TPM client (`ServedProduct.tcti`). Used by
the tests that talk to the L1 vTPM through an L2 with tpm2-pytss."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator.boot import TD_RAM, build_product
from orchestrator.product import launch_options
from orchestrator.relay import RelayServer
from tdxsim.attestation.quoting import QuotingService
from tdxsim.host.relay import HostRelay
from tdxsim.host.vmm import RunResult, RunStatus, Vmm

READY_S, RUN_S, JOIN_S = 60, 300, 20


@dataclass
class ServedProduct:
    """A served product TD: the relay server (its TCTI strings), the host's relay, the image and
    the MRTD the TD was built with."""

    server: RelayServer
    relay: HostRelay
    image: Path
    mrtd: bytes

    @property
    def tcti(self) -> str:
        return self.server.tcti_strings()["mssim"]


@contextmanager
def serving_product(
    image: Path, mac_key: bytes, quoting: QuotingService, *, dev_platform_port: bool = False
) -> Iterator[ServedProduct]:
    """Build the product into `image`, boot it with the serve options, yield once L1 serves; the
    TD must end stopped on request."""
    mrtd = build_product(image, out=lambda _line: None)
    server = RelayServer(dev_platform_port=dev_platform_port)
    result: list[RunResult] = []
    with Vmm(quoting) as vmm:
        vmm.create(TD_RAM, mac_key=mac_key, num_l2_vms=1)
        vmm.load_igvm(image, TD_RAM, command_line=launch_options(dev_platform_port))
        vmm.aug_rest()
        assert vmm.finalize() == mrtd
        assert vmm.host is not None
        relay = vmm.host.attach_relay(server)
        thread = threading.Thread(target=lambda: result.append(vmm.run(RUN_S)), daemon=True)
        thread.start()
        try:
            assert relay.ready.wait(READY_S), bytes(vmm.host.uart.output).decode(errors="replace")
            yield ServedProduct(server, relay, image, mrtd)
        finally:
            relay.stop.set()
            thread.join(JOIN_S)
            server.close()
    assert result and result[0].status == RunStatus.STOPPED
