"""The modelled host: CPU vulnerability state and clocksource, which KVM reports to guests.

KVM answers SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_*) from the *host's* mitigation state
(ref 3.4) and PTP_KVM only when the host clocksource is the arch counter (ref 3.2), so
these are properties of the machine emu pretends to run on, not of the kernel version.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Mitigation(str, Enum):
    """arm64 ``enum mitigation_state`` (arch/arm64/include/asm/spectre.h)."""

    VULNERABLE = "vulnerable"
    MITIGATED = "mitigated"
    UNAFFECTED = "unaffected"


@dataclass(frozen=True)
class HostCpu:
    """Host facts KVM leaks into hypercall answers.

    The default is a Cortex-A72-class host: Spectre-v2, SSB (v4) and BHB mitigated by
    firmware, no SSBS, arch counter as clocksource.
    """

    spectre_v2: Mitigation = Mitigation.MITIGATED
    spectre_v4: Mitigation = Mitigation.MITIGATED
    spectre_bhb: Mitigation = Mitigation.MITIGATED
    ssbs: bool = False
    arch_counter_clocksource: bool = True

    def __post_init__(self) -> None:
        # Accept the plain strings ("unaffected") that configuration files carry.
        for name in ("spectre_v2", "spectre_v4", "spectre_bhb"):
            object.__setattr__(self, name, Mitigation(getattr(self, name)))
