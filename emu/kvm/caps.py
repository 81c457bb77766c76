"""KVM capabilities emu knows, by name, and how users may name them.

A ``Cap`` is a name. Its enum value is the number the capability has in the kernel that
introduced it (``KVM_CAP_*`` in include/uapi/linux/kvm.h, ref 6.1), but the number a VM
reports and accepts comes from its profile (``Profile.cap_numbers``): the RFC's own
capabilities (``ARM_MP_HALTED``/``ARM_HVC_TO_USER``/``ARM_PSCI_TO_USER`` = 199/200/201)
were never merged and upstream gives those numbers to other capabilities
(HYPERV_ENFORCE_CPUID, SREGS2, EXIT_HYPERCALL), so an upstream profile does not know them.
"""

from __future__ import annotations

from enum import IntEnum


class Cap(IntEnum):
    """Capabilities for ``Vm.check_extension`` / ``Vm.enable_cap``."""

    ARM_PSCI = 87
    ARM_PSCI_0_2 = 102
    PTP_KVM = 198
    ARM_MP_HALTED = 199
    ARM_HVC_TO_USER = 200
    ARM_PSCI_TO_USER = 201
    SYSTEM_EVENT_DATA = 215
    ARM_SYSTEM_SUSPEND = 216

    @property
    def kvm_name(self) -> str:
        return f"KVM_CAP_{self.name}"

    @property
    def flag_name(self) -> str:
        """The CLI spelling: ``hvc-to-user`` for ``KVM_CAP_ARM_HVC_TO_USER``."""
        name = self.name.lower().replace("_", "-")
        return name[4:] if name.startswith("arm-") else name


def parse_cap(text: str) -> Cap:
    """Accept ``hvc-to-user``, ``ARM_HVC_TO_USER``, ``KVM_CAP_ARM_HVC_TO_USER`` or ``200``."""
    key = text.strip()
    if key.isdigit():
        try:
            return Cap(int(key))
        except ValueError:
            pass
    norm = key.upper().replace("-", "_")
    norm = norm.removeprefix("KVM_CAP_")
    for cap in Cap:
        if norm in (cap.name, cap.name.removeprefix("ARM_")):
            return cap
    known = ", ".join(c.flag_name for c in Cap)
    raise ValueError(f"unknown capability {text!r} (known: {known})")
