"""The MRS/MSR/SYS filter and the block counter are an optional C extension: without it the
same tables are applied in Python and time is counted with Unicorn's count=, with the same
guest-visible results."""

from __future__ import annotations

import pytest

from emu.arm import syshook
from emu.vmm.boot import boot
from tests.conftest import FIRMWARE

TIMER_IRQ = r"""
    ldr     x0, =vectors
    msr     vbar_el1, x0
    ldr     x1, =0x08000000
    mov     w2, #0x12                   // GICD_CTLR: ARE, EnableGrp1
    str     w2, [x1]
    ldr     x1, =0x080B0100             // GICR_ISENABLER0 of vCPU 0
    mov     w2, #(1 << 27)
    str     w2, [x1]
    mov     x2, #0xff
    msr     s3_0_c4_c6_0, x2            // ICC_PMR_EL1
    mov     x2, #1
    msr     s3_0_c12_c12_7, x2          // ICC_IGRPEN1_EL1
    isb
    mrs     x20, cntvct_el0
    mov     x2, #1000
    msr     cntv_tval_el0, x2
    mov     x2, #1
    msr     cntv_ctl_el0, x2
    msr     daifclr, #2
1:  cbz     x5, 1b
    ldr     x0, =0x84000008
    hvc     #0
    .balign 0x800
vectors:
    .rept   0x280 / 4
    b       .
    .endr
    mrs     x6, s3_0_c12_c12_0          // 0x280: ICC_IAR1_EL1
    mrs     x21, cntvct_el0
    mov     x7, #2
    msr     cntv_ctl_el0, x7            // IMASK
    msr     s3_0_c12_c12_1, x6          // ICC_EOIR1_EL1
    mov     x5, #1
    eret
"""


@pytest.fixture(params=["c", "python"])
def hooks(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(syshook, "_syshook", None)
    elif not syshook.native():
        pytest.skip("the C extension is not built")
    return request.param


def test_timer_irq_arrives_at_its_deadline(hooks) -> None:
    result = boot(source=TIMER_IRQ)
    result.assert_system_event("SHUTDOWN")
    regs = result.vm.vcpus[0].get_regs()
    assert regs["x6"] == 27
    # 1000 ticks of 16 ns. The C counter ends the slice at the deadline; count= cannot be
    # shortened once running, so without it the tick comes at the end of a 64 Ki slice.
    late = 1100 if hooks == "c" else 1000 + (1 << 16) // 16 + 100
    assert 1000 <= regs["x21"] - regs["x20"] <= late
    interrupts = [(e.what, e.intid) for e in result.vm.trace.interrupts]
    assert interrupts == [("raised", 27), ("acked", 27), ("completed", 27)]


def test_broadcast_and_firmware_without_the_extension(hooks) -> None:
    result = boot(FIRMWARE / "smp_boot.S", cpus=4)
    result.assert_system_event("SHUTDOWN")
    assert result.psci_results("PSCI_CPU_ON64")[:3] == ["SUCCESS"] * 3
