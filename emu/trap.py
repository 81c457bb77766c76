"""The EL2 side of a vCPU: Unicorn's interrupt hook, made to look like a trap to KVM.

Unicorn reports HVC and SMC as interrupt numbers with the PC already past the
instruction and no syndrome anywhere (engine notes 0.3). This module rebuilds what the
hardware would have given KVM, ESR_EL2 with EC, IL and ISS = imm16 taken from the
trapping instruction, keeps it on the vCPU (``vcpu.esr``, like ``kvm_vcpu_get_esr``)
and hands a ``Call`` to the model. Every other exception is delivered to the guest's
EL1 vectors as the architecture would (``emu.exceptions``); accesses outside RAM and
devices get the external abort KVM injects. Only a guest without vectors, or an
exception emu cannot deliver, ends the run with a ``FaultExit`` naming PC, instruction
and cause.

It also serves the generic-timer counters and timers from the VM's deterministic clock
(``emu.clock``, ``emu.timer``) instead of Unicorn's host-time ones.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable
from typing import Any, Protocol

from unicorn import UC_HOOK_CODE, UC_HOOK_INTR, UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_UNMAPPED
from unicorn import arm64_const as a64
from unicorn.unicorn_py3.unicorn import uclib

from emu.abi.exits import Exit, FaultExit, Wait
from emu.abi.trace import ExceptionEvent, HypercallEvent, InsnEvent, Trace
from emu.arm.clock import EVENT_NS, NS_PER_INSN
from emu.arm.cpu import Cpu
from emu.arm.debug import (
    EC_BREAKPOINT_CUR,
    EC_BREAKPOINT_LOW,
    EC_SOFTSTEP_CUR,
    EC_SOFTSTEP_LOW,
    EC_WATCHPOINT_CUR,
    EC_WATCHPOINT_LOW,
    FSC_DEBUG,
    SOFTSTEP_ISV,
    WATCH_OP2,
    WNR,
    Watchpoints,
    breakpoint_at,
    stepping,
)
from emu.arm.exceptions import (
    EC_BRK64,
    EC_DABT_CUR,
    EC_DABT_LOW,
    EC_IABT_CUR,
    EC_IABT_LOW,
    EC_SVC64,
    EC_UNKNOWN,
    ESR_WNR,
    FSC_ALIGN,
    FSC_EXTABT,
    SyncException,
    enter_el1,
    from_el0,
)
from emu.arm.insn_decode import memory_access
from emu.arm.mmu import FSC_ADDRESS_SIZE, beyond_pa_range, walk
from emu.arm.pmu import Pmu, pmu_keys
from emu.arm.regs import read_batch as _read_batch
from emu.arm.syshook import (
    FLAG_CODE,
    FLAG_TLB,
    PYTHON,
    STALE_CODE,
    STALE_TLB,
    ActionTable,
    InsnHook,
    Maintenance,
)
from emu.arm.timer import GenericTimers
from emu.kvm.limits import RunLimits
from emu.kvm.profiles import ModelVm
from emu.kvm_model import KvmModel
from emu.smccc.call import Call, Conduit, ServiceVcpu, esr_for

# QEMU's exception numbers as Unicorn passes them to UC_HOOK_INTR (target/arm/cpu.h).
EXCP_UDEF = 1
EXCP_SWI = 2
EXCP_PREFETCH_ABORT = 3
EXCP_DATA_ABORT = 4
EXCP_BKPT = 7
EXCP_HVC = 11
EXCP_SMC = 13

# A64 encodings: HVC #imm16 = 0xD4000002 | imm16 << 5, SMC #imm16 = 0xD4000003 | imm16 << 5.
_XVC_MASK = 0xFFE0_001F
_HVC_BITS = 0xD400_0002
_SMC_BITS = 0xD400_0003

_WFI = 0xD503_207F

# UC_MEM_* access types of the unmapped and fetch-protection hooks.
_WRITE_UNMAPPED = 20
_FETCH_UNMAPPED = 21
_FETCH_PROT = 24

_u32 = struct.Struct("<I").unpack_from

_HVC = Conduit.HVC
_SMC = Conduit.SMC
_ESR_HVC = esr_for(Conduit.HVC, 0)
_ESR_SMC = esr_for(Conduit.SMC, 0)

# uc_cb_hookintr_t: void (*)(uc_engine *uc, uint32_t intno, void *user_data)
_INTR_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)

# Generic-timer counters: op0=3 op1=3 CRn=14 CRm=0, op2 1 CNTPCT, 2 CNTVCT, 5/6 the
# self-synchronising CNTPCTSS/CNTVCTSS (FEAT_ECV).
_PHYS_COUNTER_OP2 = (1, 5)
_SCTLR_EL1 = (3, 0, 1, 0, 0)
# CNTP_* (CRm 2) and CNTV_* (CRm 3): TVAL, CTL, CVAL (op2 0..2).
_TIMER_CRMS = (2, 3)
_TIMER_OP2S = (0, 1, 2)
_VIRT_COUNTER_OP2 = (2, 6)


def _icc_keys() -> list[tuple[int, int, int, int, int]]:
    """GICv3 CPU interface registers: ICC_PMR_EL1 and op0=3 op1=0 CRn=12 CRm 8..15."""
    return [(3, 0, 4, 6, 0)] + [(3, 0, 12, crm, op2) for crm in range(8, 16) for op2 in range(8)]


_TIMER_KEYS = [(3, 3, 14, crm, op2) for crm in _TIMER_CRMS for op2 in _TIMER_OP2S]
# The encodings the trap path serves; every other MRS/MSR/SYS runs in the engine untouched.
MRS_ACTIONS = ActionTable(
    [((3, 3, 14, 0, op2), PYTHON) for op2 in _VIRT_COUNTER_OP2 + _PHYS_COUNTER_OP2]
    + [(key, PYTHON) for key in _TIMER_KEYS + _icc_keys() + pmu_keys()]
)
_WATCH_KEYS = [(2, 0, 0, n, op2) for n in range(16) for op2 in WATCH_OP2]
MSR_ACTIONS = ActionTable(
    [(key, PYTHON) for key in [*_TIMER_KEYS, *_icc_keys(), *pmu_keys(), *_WATCH_KEYS, _SCTLR_EL1]]
)
# TLBI <op>E1IS (op1 0, CRn 8, CRm 3), IC IALLUIS and IC IVAU: the other vCPUs' engines
# must drop stale TLB entries or translated code (engine notes 0.7). IC IVAU names one
# line: Python forwards its page, so the others drop only the code translated from it.
SYS_ACTIONS = ActionTable(
    [((1, 0, 8, 3, op2), STALE_TLB) for op2 in range(8)]
    + [((1, 0, 7, 1, 0), STALE_CODE), ((1, 3, 7, 5, 1), PYTHON)]
)


class TrapVm(ModelVm, Protocol):
    """What the trap path needs of the VM: its model, RAM, the trace and its listeners."""

    model: KvmModel
    on_event: Callable[[HypercallEvent], None] | None
    ram_base: int
    ram_size: int
    ram_buffer: mmap.mmap
    trace_insns: bool
    limits: RunLimits

    def in_ram(self, address: int, size: int = 1) -> bool: ...

    def read_memory(self, address: int, size: int) -> bytes: ...

    @property
    def maintenance(self) -> Maintenance: ...

    def broadcast(self, source: object, *, tlb: bool = False, code: bool = False) -> None: ...

    def broadcast_code_page(self, source: object, va: int) -> None: ...

    @property
    def irqchip(self) -> TrapIrqchip | None: ...


class TrapIrqchip(Protocol):
    """The VM's vGIC as the trap path uses it (``emu.kvm.irqchip.Irqchip``)."""

    # The vCPU is the trap path's own (``emu.kvm.vcpu.Vcpu``), typed loosely here because
    # the irqchip describes the vCPU it needs with its own protocol.
    def sysreg_read(self, vcpu: Any, key: tuple[int, int, int, int, int]) -> int | None: ...

    def sysreg_write(self, vcpu: Any, key: tuple[int, int, int, int, int], value: int) -> bool: ...

    def update_timer(self, vcpu: Any) -> None: ...


class TrapVcpu(Cpu, ServiceVcpu, Protocol):
    """What the trap path needs of the vCPU whose hooks it installs (``emu.kvm.vcpu.Vcpu``)."""

    index: int
    esr: int
    mmu_enabled: bool
    timers: GenericTimers
    pmu: Pmu
    watchpoints: Watchpoints

    @property
    def vm(self) -> TrapVm: ...

    @property
    def sleeping(self) -> bool: ...

    def wakeup_pending(self) -> bool: ...

    def sync_clock(self) -> None: ...

    def end_slice_at_deadline(self) -> None: ...

    @property
    def counting(self) -> bool: ...

    def disasm(self, va: int) -> str: ...

    def post_exit(self, exit_: Exit) -> None: ...

    def stop(self) -> None: ...


class TrapHandler:
    """Unicorn hooks for one vCPU, routing traps to the VM's KVM model."""

    def __init__(self, vcpu: TrapVcpu) -> None:
        self.vcpu = vcpu
        self.vm = vcpu.vm
        self.model = vcpu.vm.model
        self.regs = vcpu.regs
        self.bind_trace(vcpu.vm.trace)
        self.clock = vcpu.vm.clock
        self.ram = vcpu.vm.ram_buffer
        self.ram_base = vcpu.vm.ram_base
        self.ram_last_word = vcpu.vm.ram_size - 3
        self._trap_batch, self._trap_values = self.regs.trap_batch()
        # (physical address, UC_MEM_* access type, size) of an access to unmapped memory.
        self.pending_abort: tuple[int, int, int] | None = None
        # The running slice was stopped before its instruction count (budget spent on
        # exceptions); cleared by the vCPU before each slice.
        self.cut_short = False
        # Guest debugging: (conduit, pc, fid) -> True to stop before the model answers.
        self.hypercall_hook: Callable[[str, int, int], bool] | None = None

    def bind_trace(self, trace: Trace) -> None:
        """Record into ``trace`` (the VM's; a restored VM gets a new one)."""
        self._record_all = trace.events.append
        self._record_call = trace.hypercalls.append

    def install(self, uc) -> None:
        # The interrupt hook is registered with the C library directly: it is the hot path,
        # and the binding's two wrapper layers cost more than the rest of a trap. Errors
        # take the binding's route (stored on the Uc, re-raised by Vcpu.run).
        sync = self.vcpu.sync_clock

        def intr(_handle, intno: int, _user) -> None:
            try:
                sync()
                if intno == EXCP_HVC:
                    self._hypercall(_HVC, "hvc", _HVC_BITS, _ESR_HVC)
                elif intno == EXCP_SMC:
                    self._hypercall(_SMC, "smc", _SMC_BITS, _ESR_SMC)
                else:
                    self._exception(intno)
            except BaseException as err:
                if uc._hook_exception is None:
                    uc._hook_exception = err
                self.vcpu.stop()

        self._intr_cb = _INTR_CFUNC(intr)
        hook = ctypes.c_size_t()
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(hook),
            UC_HOOK_INTR,
            self._intr_cb,
            None,
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if status != 0:
            raise RuntimeError(f"uc_hook_add(UC_HOOK_INTR) failed: {status}")
        # Device regions (MMIO) are not executable: a fetch there is reported like one
        # from unmapped memory.
        uc.hook_add(UC_HOOK_MEM_UNMAPPED | UC_HOOK_MEM_FETCH_PROT, self.on_unmapped)

        def on_error(err: BaseException) -> None:
            if uc._hook_exception is None:
                uc._hook_exception = err
            self.vcpu.stop()

        # MRS/MSR/SYS reach Python only for the encodings emu serves (emu.arm.syshook).
        vm, index = self.vm, self.vcpu.index

        def mrs(reg: int, cp) -> int:
            sync()
            return self.on_mrs(uc, reg, cp, None)

        def msr(reg: int, cp) -> int:
            sync()
            return self.on_msr(uc, reg, cp, None)

        def sys(reg: int, cp) -> int:
            sync()
            return self.on_sys(uc, reg, cp, None)

        self.insn_hooks = [
            InsnHook(uc, insn, table, handler, vm.maintenance, index, lambda: len(vm.vcpus), on_error)
            for insn, table, handler in (
                (a64.UC_ARM64_INS_MRS, MRS_ACTIONS, mrs),
                (a64.UC_ARM64_INS_MSR, MSR_ACTIONS, msr),
                (a64.UC_ARM64_INS_SYS, SYS_ACTIONS, sys),
            )
        ]
        if self.vm.trace_insns:
            self._disasm_cache: dict[tuple[int, int], str] = {}
            uc.hook_add(UC_HOOK_CODE, self.on_insn)

    # -- UC_HOOK_INTR ------------------------------------------------------------------

    def _hypercall(self, conduit: Conduit, name: str, bits: int, esr_base: int) -> None:
        """HVC/SMC: rebuild the syndrome, let the model decide, write back, record."""
        vcpu = self.vcpu
        _read_batch(*self._trap_batch)
        trap = self._trap_values
        # Unicorn leaves PC on the preferred return address, past the 4-byte instruction.
        pc = trap[0] - 4
        offset = pc - self.ram_base
        if not vcpu.mmu_enabled and 0 <= offset < self.ram_last_word:
            insn = _u32(self.ram, offset)[0]  # MMU off: the VA is the PA, read RAM directly
        else:
            insn = vcpu.read_insn(pc)
        if insn is None or insn & _XVC_MASK != bits:
            self._fetch_again(pc)
            return
        hook = self.hypercall_hook
        if hook is not None and hook(name, pc, trap[1] & 0xFFFF_FFFF):
            return
        # ESR_EL2 = EC | IL | ISS, with ISS = the instruction's imm16 (see emu.smccc.call.esr_for).
        esr = esr_base | ((insn >> 5) & 0xFFFF)
        vcpu.esr = esr
        self.clock.ns += EVENT_NS
        args = (trap[1], trap[2], trap[3], trap[4], trap[5], trap[6])
        call = Call(self.vm, vcpu, conduit, esr, pc, args)
        if conduit is _HVC:
            exit_ = self.model.handle_hvc(call)
        else:
            exit_ = self.model.handle_smc(call)
        ret = call.ret
        if ret is not None:
            self.regs.write_x(ret)
        event = HypercallEvent(vcpu.id, pc, name, esr, args, ret[0] if ret else None, exit_, self.clock.ns)
        self._record_all(event)
        self._record_call(event)
        if exit_ is not None:
            self.regs.resume_pc = pc + 4  # past the HVC/SMC, where Unicorn already put PC
            vcpu.post_exit(exit_)
            return
        if self.vm.on_event is not None:
            self.vm.on_event(event)
        if vcpu.sleeping:
            vcpu.stop()

    def _fetch_again(self, pc: int) -> None:
        """The engine trapped an HVC/SMC that memory no longer holds at ``pc`` (or that no
        longer translates): it ran code translated before the guest rewrote it, with no
        IC IVAU since. Until that maintenance a fetch may see the old or the new instruction
        (Arm ARM B2.4, "Synchronization and coherency issues between data and instruction
        accesses"); emu takes the new one, with no syndrome to invent: the vCPU drops its
        translated code and TLB and fetches ``pc`` again, as one instruction of budget."""
        self.regs.write_id(a64.UC_ARM64_REG_PC, pc)
        self.vm.maintenance.flags[self.vcpu.index] |= FLAG_CODE | FLAG_TLB
        self.cut_short = True
        self.vcpu.stop()

    def _exception(self, intno: int) -> None:
        """Everything but HVC/SMC: deliver it to the guest's EL1 vectors as the CPU would."""
        vcpu = self.vcpu
        pc = self.regs.read_id(a64.UC_ARM64_REG_PC)
        if intno == EXCP_UDEF:
            insn = vcpu.read_insn(pc)
            if insn == _WFI:
                self._wfi(pc)
            elif stepping(vcpu) and insn is not None and not vcpu.disasm(pc).startswith(("udf", ".")):
                # A software step completed: the next instruction is a valid one (D2.12).
                el0 = from_el0(self.regs.read_id(a64.UC_ARM64_REG_PSTATE))
                ec = EC_SOFTSTEP_LOW if el0 else EC_SOFTSTEP_CUR
                self._take(SyncException(ec, SOFTSTEP_ISV | FSC_DEBUG, pc), pc, "software step")
            else:
                # Includes HVC/SMC at EL0 and MRS/MSR of EL2/EL3 registers at EL1.
                self._take(SyncException(EC_UNKNOWN, 0, pc), pc, "undefined instruction")
        elif intno == EXCP_SWI:
            pc -= 4  # reported past the SVC, like HVC/SMC; that is also the return address
            imm = ((vcpu.read_insn(pc) or 0) >> 5) & 0xFFFF
            self._take(SyncException(EC_SVC64, imm, pc + 4), pc, "SVC (supervisor call)")
        elif intno == EXCP_BKPT:
            imm = ((vcpu.read_insn(pc) or 0) >> 5) & 0xFFFF
            self._take(SyncException(EC_BRK64, imm, pc), pc, "BRK (software breakpoint)")
        elif intno in (EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT):
            self._abort(pc, fetch=intno == EXCP_PREFETCH_ABORT)
        else:
            self._fault(pc, f"exception {intno} that emu does not deliver")

    def _abort(self, pc: int, fetch: bool) -> None:
        """An abort Unicorn raised itself: an MMU fault, an alignment fault, or a hardware
        breakpoint (QEMU raises those as prefetch aborts too)."""
        vcpu = self.vcpu
        el0 = from_el0(self.regs.read_id(a64.UC_ARM64_REG_PSTATE))
        if fetch and breakpoint_at(vcpu, pc):
            ec = EC_BREAKPOINT_LOW if el0 else EC_BREAKPOINT_CUR
            self._take(SyncException(ec, FSC_DEBUG, pc), pc, "hardware breakpoint")
            return
        checked_misaligned = False
        if fetch:
            far, write = pc, False
        else:
            access = memory_access(vcpu, pc)
            if access is None:
                self._fault(pc, "data abort at an instruction emu cannot decode")
                return
            far, write = access.address, access.is_write
            # Exclusives, acquire/release and atomics check alignment before translation.
            checked_misaligned = access.checked and far % access.size != 0
        if checked_misaligned:
            fsc = None
        elif vcpu.mmu_enabled:
            fsc = walk(vcpu, far, write=write, fetch=fetch, el0=el0).fsc
        else:
            fsc = FSC_ADDRESS_SIZE if beyond_pa_range(vcpu, far) else None
        if fsc is None:
            fsc, cause = FSC_ALIGN, "alignment fault"
        elif fsc & ~3 == FSC_ADDRESS_SIZE:
            cause = "address size fault (beyond the physical address range)"
        else:
            cause = "translation, access-flag or permission fault"
        if fetch:
            ec, iss = (EC_IABT_LOW if el0 else EC_IABT_CUR), fsc
        else:
            ec, iss = (EC_DABT_LOW if el0 else EC_DABT_CUR), fsc | (ESR_WNR if write else 0)
        self._take(
            SyncException(ec, iss, pc, far), pc, f"{'instruction' if fetch else 'data'} abort ({cause})", far
        )

    def take_pending_abort(self) -> None:
        """After emu_start gave up on unmapped memory: inject KVM's external abort (FSC 0x10).

        Outside RAM and devices there is nothing for KVM to emulate, so it injects a
        synchronous external abort (inject_abt64: EC by source EL, IL, FSC 0x10, FAR).
        An instruction fetch from a device gets the same: KVM cannot execute MMIO and
        injects a prefetch abort (kvm_handle_guest_abort, "Prefetch abort on an I/O
        address").
        """
        pending, self.pending_abort = self.pending_abort, None
        if pending is None:
            return
        address, access, size = pending
        pc = self.regs.read_id(a64.UC_ARM64_REG_PC)
        vcpu = self.vcpu
        el0 = from_el0(self.regs.read_id(a64.UC_ARM64_REG_PSTATE))
        if access in (_FETCH_UNMAPPED, _FETCH_PROT):
            far, ec = pc, (EC_IABT_LOW if el0 else EC_IABT_CUR)
            what = "of unmapped memory" if access == _FETCH_UNMAPPED else "from device memory"
            cause = f"instruction fetch {what} ({size} bytes)"
        else:
            decoded = memory_access(vcpu, pc) if vcpu.mmu_enabled else None
            far = decoded.address if decoded is not None else address
            ec = EC_DABT_LOW if el0 else EC_DABT_CUR
            kind = "write" if access == _WRITE_UNMAPPED else "read"
            cause = f"{kind} of unmapped memory ({size} bytes)"
        self._take(SyncException(ec, FSC_EXTABT, pc, far), pc, cause, address)

    def _take(self, exc: SyncException, pc: int, cause: str, address: int | None = None) -> None:
        """Deliver ``exc``; like an instruction, it costs budget and virtual time."""
        vector = enter_el1(self.vcpu, exc)
        if vector is None:
            self._fault(pc, cause, address, vectors=False)
            return
        self.vm.trace.add(ExceptionEvent(self.clock.ns, self.vcpu.id, exc.esr, exc.elr, exc.far, vector))
        self.clock.advance(NS_PER_INSN)
        if self.vm.limits.charge_exception():
            self.cut_short = True
            self.vcpu.stop()
        else:
            self._moved_pc()

    def _moved_pc(self) -> None:
        """A hook changed PC: in a free-running slice, end it so the next starts there.

        Once a hook has written PC, Unicorn stops reporting the exact PC of a later
        access to unmapped memory in the same emu_start: it reports the start of the
        translation block instead, so the fault was taken one or more instructions early
        and taken again on return. A fresh emu_start, or a counted one (whose counting
        hook syncs PC on every instruction), reports it exactly.
        """
        if not self.vcpu.counting:
            self.vcpu.stop()

    def _wfi(self, pc: int) -> None:
        """A WFI trapped by HCR_EL2.TWI: KVM's kvm_handle_wfx, PC past the WFI, then block.

        A pending interrupt (with a vGIC: the vCPU's IRQ line; without one: a timer that
        has fired), even one PSTATE masks, makes the WFI complete at once.
        """
        vcpu = self.vcpu
        self.regs.write_id(a64.UC_ARM64_REG_PC, pc + 4)
        if vcpu.wakeup_pending():
            self._moved_pc()
            return
        vcpu.wait_for_interrupt(Wait.WFI)
        vcpu.stop()

    def _fault(self, pc: int, cause: str, address: int | None = None, vectors: bool = True) -> None:
        """End the run with a fault exit (``vectors=False``: the guest installed none)."""
        vcpu = self.vcpu
        if not vectors:
            vbar = self.regs.read_id(a64.UC_ARM64_REG_VBAR_EL1)
            why = "is 0" if not vbar else "does not translate to guest memory"
            cause += f", and the guest has no usable exception vectors (VBAR_EL1 = {vbar:#x} {why})"
        vcpu.post_exit(FaultExit(vcpu=vcpu.id, pc=pc, insn=vcpu.disasm(pc), cause=cause, address=address))

    # -- UC_HOOK_MEM_UNMAPPED ---------------------------------------------------------------

    def on_unmapped(self, uc, access: int, address: int, size: int, value: int, _user) -> bool:
        """Memory outside RAM and devices, or code in a device: remember it; the abort is
        taken once Unicorn returns."""
        # Inside this hook PC may still be the start of the translation block; once
        # emu_start has returned it is the faulting instruction. Only the access is kept.
        if self.pending_abort is None:  # Unicorn may report one access more than once
            self.pending_abort = (address, access, size)
        return False

    # -- UC_HOOK_INSN (MRS) -------------------------------------------------------------------

    def on_insn(self, uc, address: int, size: int, _user) -> None:
        """Instruction tracing: one InsnEvent per executed instruction, disassembly cached."""
        word = self.vcpu.read_insn(address)
        key = (address, word or 0)
        text = self._disasm_cache.get(key)
        if text is None:
            text = self._disasm_cache[key] = self.vcpu.disasm(address)
        self.vm.trace.add(InsnEvent(self.vcpu.id, address, text))

    def on_sys(self, uc, reg: int, cp, _user) -> int:
        """Broadcast maintenance: make other vCPUs drop stale TLB entries or translated code.

        Each Unicorn instance has its own TLB and code cache, so a TLBI ... IS or IC IALLUIS
        on one vCPU does not reach the others (engine notes 0.7); KVM's hardware does.
        """
        if cp.op1 == 0 and cp.crn == 8 and cp.crm == 3:  # TLBI <op>E1IS
            self.vm.broadcast(self.vcpu, tlb=True)
        elif (cp.op1, cp.crn, cp.crm, cp.op2) == (3, 7, 5, 1):  # IC IVAU, Xt: one line
            self.vm.broadcast_code_page(self.vcpu, cp.val)
        elif (cp.op1, cp.crn, cp.crm, cp.op2) == (0, 7, 1, 0):  # IC IALLUIS
            self.vm.broadcast(self.vcpu, code=True)
        return 0

    def on_msr(self, uc, reg: int, cp, _user) -> int:
        """Track SCTLR_EL1.M; keep the generic timers' registers in ``emu.timer``; ICC_* to the vGIC."""
        op0, op1, crn, crm, op2 = cp.op0, cp.op1, cp.crn, cp.crm, cp.op2
        if op0 == 3 and op1 == 3 and crn == 14 and crm in _TIMER_CRMS and op2 in _TIMER_OP2S:
            vcpu = self.vcpu
            vcpu.timers.write(crm, op2, cp.val)
            chip = vcpu.vm.irqchip
            if chip is not None:
                chip.update_timer(vcpu)
                vcpu.end_slice_at_deadline()
            return 1
        if crn == 9 or (crn == 14 and crm >= 8):
            if self.vcpu.pmu.write((op0, op1, crn, crm, op2), cp.val):
                return self._skip()
            return 0
        if op0 == 3 and op1 == 0 and ((crn == 12 and crm >= 8) or (crn == 4 and crm == 6)):
            chip = self.vm.irqchip
            if chip is not None and chip.sysreg_write(self.vcpu, (op0, op1, crn, crm, op2), cp.val):
                return self._skip()
            return 0  # no vGIC, or no such register: Unicorn's UNDEF
        if op0 == 2 and op1 == 0 and crn == 0 and op2 in WATCH_OP2:
            self.vcpu.watchpoints.write(crm, op2, cp.val)
            return 0  # the engine keeps the register too, for MRS
        if (op0, op1, crn, crm, op2) == _SCTLR_EL1:
            self.vcpu.mmu_enabled = bool(cp.val & 1)
        return 0

    def take_watchpoint(self) -> None:
        """After emu_start stopped on a watched access: the watchpoint exception, at the
        accessing instruction, FAR = the address accessed."""
        hit = self.vcpu.watchpoints.take_hit()
        if hit is None:
            return
        va, write = hit
        pc = self.regs.read_id(a64.UC_ARM64_REG_PC)
        el0 = from_el0(self.regs.read_id(a64.UC_ARM64_REG_PSTATE))
        iss = FSC_DEBUG | (WNR if write else 0)
        self._take(
            SyncException(EC_WATCHPOINT_LOW if el0 else EC_WATCHPOINT_CUR, iss, pc, va), pc, "watchpoint", va
        )

    def _skip(self) -> int:
        """Done with an MRS/MSR of a register Unicorn lacks: step over it (engine notes 0.9)."""
        regs = self.regs
        regs.write_id(a64.UC_ARM64_REG_PC, regs.read_id(a64.UC_ARM64_REG_PC) + 4)
        return 1

    def on_mrs(self, uc, reg: int, cp, _user) -> int:
        """Serve counter and timer reads from the VM clock, ICC_* from the vGIC; let every
        other MRS run normally."""
        if cp.op0 != 3:
            return 0
        if cp.crn == 9 or (cp.crn == 14 and cp.crm >= 8):
            value = self.vcpu.pmu.read((3, cp.op1, cp.crn, cp.crm, cp.op2))
            if value is None:
                return 0
            self.regs.write_id(reg, value)
            return self._skip()
        if cp.op1 == 0:
            crn, crm = cp.crn, cp.crm
            if (crn == 12 and crm >= 8) or (crn == 4 and crm == 6):
                chip = self.vm.irqchip
                if chip is None:
                    return 0
                value = chip.sysreg_read(self.vcpu, (3, 0, crn, crm, cp.op2))
                if value is None:
                    return 0
                self.regs.write_id(reg, value)
                return self._skip()
            return 0
        if cp.op1 != 3 or cp.crn != 14:
            return 0
        crm, op2 = cp.crm, cp.op2
        if crm == 0 and op2 in _VIRT_COUNTER_OP2:
            value = self.clock.virtual_counter
            self.clock.tick_event()
        elif crm == 0 and op2 in _PHYS_COUNTER_OP2:
            value = self.clock.physical_counter
            self.clock.tick_event()
        elif crm in _TIMER_CRMS and op2 in _TIMER_OP2S:
            value = self.vcpu.timers.read(crm, op2)
        else:
            return 0
        self.regs.write_id(reg, value)
        return 1
