"""The state of one interrupt, as KVM keeps it in ``struct vgic_irq`` (include/kvm/arm_vgic.h).

SGIs (INTIDs 0-15) and PPIs (16-31) are banked: every vCPU has its own copy, whose
``owner`` is that vCPU. SPIs (32 and up) exist once and have ``owner`` None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NR_SGIS = 16
NR_PRIVATE = 32  # SGIs + PPIs (IHI 0069 2.2.1)
SPURIOUS = 1023  # IHI 0069 2.2.1: no interrupt to acknowledge
GROUP1_NOT_ACKED = 1022  # IHI 0048B 4.4.4: GICC_IAR with AckCtl=0 and a Group 1 interrupt

EDGE = "edge"
LEVEL = "level"

# The fields a snapshot carries; intid and owner follow from where the IRQ sits.
STATE_FIELDS = (
    "group",
    "enabled",
    "pending_latch",
    "line_level",
    "active",
    "priority",
    "config",
    "targets",
    "route",
    "source",
)


@dataclass(slots=True)
class Irq:
    """One interrupt's state. ``pending`` combines the latch and, for level IRQs, the line."""

    intid: int
    owner: int | None = None
    group: int = 0
    enabled: bool = False
    pending_latch: bool = False  # ISPENDR, an edge, an SGI; cleared by acknowledge / ICPENDR
    line_level: bool = False  # the input line, meaningful for level-sensitive IRQs
    active: bool = False
    priority: int = 0
    config: str = EDGE
    targets: int = 0  # GICv2 ITARGETSR byte (bit n = vCPU n)
    route: int = 0  # GICv3 IROUTER affinity, Aff2.Aff1.Aff0 (KVM keeps no Aff3)
    source: int = 0  # GICv2 SGIs: bitmap of the vCPUs that sent it, still pending

    @property
    def pending(self) -> bool:
        """Pending as GICD_ISPENDR reads it: the latch, or the asserted line if level-sensitive."""
        return self.pending_latch or (self.config == LEVEL and self.line_level)

    def state(self) -> dict[str, Any]:
        """The mutable fields as plain data."""
        return {name: getattr(self, name) for name in STATE_FIELDS}

    def load(self, state: dict[str, Any]) -> None:
        """Take the fields ``state()`` produced."""
        for name in STATE_FIELDS:
            setattr(self, name, state[name])
