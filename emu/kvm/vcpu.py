"""One virtual CPU: a Unicorn AArch64 instance at EL1h, set up so HVC and SMC trap like on KVM.

``Vcpu.run()`` is KVM_RUN: it executes the guest until something needs userspace and
returns the exit (``emu.exits``). Registers are read and written between runs with
``get_reg``/``set_reg``/``get_regs``/``set_regs``; ``mp_state`` is KVM_GET/SET_MP_STATE.
Several vCPUs are driven together by ``Vm.run()``, which calls ``run_slice``.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, UC_PROT_ALL, UC_PROT_EXEC
from unicorn import arm64_const as a64
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.unicorn_py3.arch.arm64 import UcAArch64
from unicorn.unicorn_py3.unicorn import Uc, UcContext, uclib

from emu import rendering
from emu.abi.exits import Exit, MpState, Power, StopExit, StopReason, SystemEvent, SystemEventExit, Wait
from emu.arm import syshook
from emu.arm.clock import NS_PER_INSN
from emu.arm.debug import Watchpoints
from emu.arm.disasm import disasm_one
from emu.arm.pmu import Pmu
from emu.arm.regs import RegisterFile, Registers, rawlib, reg_id
from emu.arm.syshook import FLAG_CODE, FLAG_TLB, InsnCounter
from emu.arm.timer import GenericTimers
from emu.errors import EmuError, KvmError
from emu.kvm import one_reg
from emu.kvm.debug import GuestDebug
from emu.kvm.irqchip import Irqchip
from emu.kvm.limits import RunLimits
from emu.smccc.call import ServiceVcpu
from emu.trap import TrapHandler, TrapVm


class MmioDevice(Protocol):
    """A device the VMM emulates at ``base`` for ``size`` bytes (KVM_EXIT_MMIO, kept in-process)."""

    base: int
    size: int

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class VcpuVm(TrapVm, Protocol):
    """What a vCPU needs of its VM (``emu.kvm.vm.Vm``) beyond the trap path's view."""

    limits: RunLimits
    devices: list[MmioDevice]
    # KVM_REG_ARM_PSCI_VERSION's VM-wide value and the bitmap registers (emu.kvm.one_reg).
    psci_version: int
    fw_bitmaps: one_reg.FirmwareBitmaps
    ram_address: int
    tcg_buffer_size: int
    debug: GuestDebug | None

    @property
    def irqchip(self) -> Irqchip | None: ...

    def note_power_change(self, vcpu: Vcpu, by: ServiceVcpu | None) -> None: ...

    def slice_length(self, count: int) -> int: ...

    def after_slice(self) -> None: ...

    @property
    def has_run(self) -> bool: ...


# PSTATE for EL1h with D, A, I, F masked: KVM's reset state and CPU_ON entry state (ref 4.6).
PSTATE_EL1H_DAIF = 0x3C5
# MPIDR_EL1 bit 31 is RES1.
MPIDR_RES1 = 1 << 31
# SCTLR_EL1 after KVM_ARM_VCPU_INIT and CPU_ON (sys_regs.c reset_val for SCTLR_EL1).
SCTLR_EL1_RESET = 0x00C5_0078
# SCTLR_EL1.EE: data accesses at EL1 are big-endian; SCTLR_EL1.M: stage 1 translation on.
SCTLR_EE = 1 << 25
SCTLR_M = 1 << 0
PAGE = 0x1000
LAST_ADDRESS = (1 << 64) - 1
# An address guest code never executes: the ``until`` of emu_start (engine notes 0.4).
NEVER = 0xFFFF_FFFF_FFFF_FFFC
# A64 WFI.
WFI = 0xD503_207F
# More pages than this pending from IC IVAU: drop all translated code instead.
MAX_CODE_PAGES = 256

# Called through the argtypes-free library handle with ready-made ctypes arguments.
_emu_start = rawlib.uc_emu_start
_emu_stop = rawlib.uc_emu_stop
_vmem_read = rawlib.uc_vmem_read
_u32 = struct.Struct("<I").unpack_from
_NEVER = ctypes.c_uint64(NEVER)
_NO_TIMEOUT = ctypes.c_uint64(0)
_UNCOUNTED = ctypes.c_size_t(0)
_PC = a64.UC_ARM64_REG_PC
_RUNNABLE = MpState.RUNNABLE
_SUSPENDED = MpState.SUSPENDED


def _mmio_read(uc: Uc, offset: int, size: int, device: MmioDevice) -> int:
    return device.read(offset, size)


def _mmio_write(uc: Uc, offset: int, size: int, value: int, device: MmioDevice) -> None:
    device.write(offset, size, value)


def _context_data_size(raw: bytes) -> int:
    """A saved uc_context starts with the size of the CPU state that follows its header."""
    size: int = struct.unpack_from("N", raw)[0]
    return size


def reset_mpidr(vcpu_id: int) -> int:
    """KVM's default MPIDR_EL1 for a vCPU index (sys_regs.c reset_mpidr, ref 4.7).

    Aff0 holds 16 CPUs (GICv3 SGI target lists), Aff1 and Aff2 the rest.
    """
    aff0 = vcpu_id & 0xF
    aff1 = (vcpu_id >> 4) & 0xFF
    aff2 = (vcpu_id >> 12) & 0xFF
    return MPIDR_RES1 | (aff2 << 16) | (aff1 << 8) | aff0


def _cpr(op0: int, op1: int, crn: int, crm: int, op2: int) -> tuple[int, int, int, int, int]:
    return (op0, op1, crn, crm, op2)


SCR_EL3 = _cpr(3, 6, 1, 1, 0)
HCR_EL2 = _cpr(3, 4, 1, 1, 0)
VMPIDR_EL2 = _cpr(3, 4, 0, 0, 5)
SCTLR_EL1 = _cpr(3, 0, 1, 0, 0)
# SCR_EL3: NS | HCE | RW, so EL2 exists, HVC traps and EL1 is AArch64 (engine notes 0.2).
SCR_NS_HCE_RW = 0x501
# HCR_EL2.RW: EL1 is AArch64 (without it QEMU walks and enters EL1 as AArch32).
HCR_RW = 1 << 31
# HCR_EL2.TWI: WFI traps to EL2, as in KVM's HCR_GUEST_FLAGS; Unicorn reports it as an
# undefined-instruction exception at the WFI (engine notes 3), which trap.py recognises.
HCR_TWI = 1 << 13
# HCR_EL2.IMO routes IRQs to EL2, where VI then injects a virtual IRQ the engine takes at
# the guest's vectors (engine notes 5, "IRQ injection").
HCR_IMO = 1 << 4
HCR_VI = 1 << 7


class Vcpu:
    """A vCPU of a ``Vm``; create it with ``vm.create_vcpu(id)``."""

    def __init__(self, vm: VcpuVm, vcpu_id: int, *, power_off: bool = False, psci_0_2: bool = True) -> None:
        self.vm = vm
        self.id = vcpu_id
        # Position in the VM's vCPU list (the vGIC's CPU number, the maintenance flags' slot).
        self.index = len(vm.vcpus)
        self._maintenance = vm.maintenance.flags
        # Pages whose translated code IC IVAU on another vCPU made stale (virtual addresses).
        self._code_pages: set[int] = set()
        self.psci_0_2 = psci_0_2
        self.mpidr = reset_mpidr(vcpu_id)
        self.esr = 0
        self._pvtime_ipa: int | None = None
        # A CPU_ON reset waiting for this vCPU's next run (profiles before v5.15).
        self._pending_reset: tuple[int, int, bool] | None = None
        self.timers = GenericTimers(vm.clock)
        # Instructions this vCPU retired in finished slices (see ``retired``).
        self.instructions = 0
        self.pmu = Pmu(cycles=lambda: self.vm.clock.ns, instructions=self.retired)
        self._mp_state = MpState.STOPPED if power_off else MpState.RUNNABLE
        self.wait: Wait | None = None
        self._power = self.power
        self._exit: Exit | None = None
        self._counting = False
        self._insn_buf = ctypes.c_uint32()
        self._insn_ref = ctypes.byref(self._insn_buf)
        # SCTLR_EL1.M as last written (tracked by the MSR hook): with the MMU off, guest
        # virtual addresses are RAM offsets and instructions are read from the buffer.
        self.mmu_enabled = False
        # A context buffer of this engine, reused by ``restore``.
        self._context: UcContext | None = None

        uc = UcAArch64(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_tcg_buffer_size(vm.tcg_buffer_size)
        uc.cpr_write(*SCR_EL3, uc.cpr_read(*SCR_EL3) | SCR_NS_HCE_RW)
        self._hcr = HCR_RW | HCR_TWI | (HCR_IMO if vm.irqchip is not None else 0)
        uc.cpr_write(*HCR_EL2, self._hcr)
        uc.cpr_write(*VMPIDR_EL2, self.mpidr)
        uc.mem_map_ptr(vm.ram_base, vm.ram_size, UC_PROT_ALL, vm.ram_address)
        self.uc = uc
        for device in vm.devices:
            self.map_device(device)
        if vm.irqchip is not None:
            for region in vm.irqchip.mappings(self):
                self.map_device(region)
        self._h = ctypes.c_void_p(uc._uch.value)
        self.regs = RegisterFile(uc)
        self._sctlr_reset = SCTLR_EL1_RESET
        uc.cpr_write(*SCTLR_EL1, SCTLR_EL1_RESET)
        self.regs.write_id(a64.UC_ARM64_REG_PSTATE, PSTATE_EL1H_DAIF)
        self.watchpoints = Watchpoints(self, self.stop)
        self.trap = TrapHandler(self)
        self.trap.install(uc)
        # Counting by translation block, for virtual time tied to instructions (with a vGIC).
        self.counter = InsnCounter(uc) if syshook.native() else None
        self._live: InsnCounter | None = None
        self._synced = 0

    @property
    def memory(self) -> VcpuVm:
        """Guest physical memory (the VM's RAM), for the architecture code."""
        return self.vm

    def map_device(self, device: MmioDevice) -> None:
        """Route this vCPU's accesses to ``device``'s range to its read/write handlers."""
        self.uc.mmio_map(device.base, device.size, _mmio_read, device, _mmio_write, device)

    # -- KVM_RUN ------------------------------------------------------------------------

    def run(self) -> Exit:
        """Run this vCPU alone until an exit for userspace, a fault or a run limit.

        Without an instruction budget the guest runs free (no instruction counting), the
        fastest mode. A vCPU blocked in WFI resumes when one of its timers fires.
        """
        vm = self.vm
        limits = vm.limits
        if not limits.started:
            limits.start()
        while True:
            if self.sleeping:
                if self._mp_state is _SUSPENDED:
                    return self.wake_from_suspend() or self._idle()
                if not self.wake_on_timer():
                    return self._idle()
                if self.sleeping:
                    continue
            limit = limits.reached()
            if limit is not None:
                return StopExit(self.id, *limit)
            count = vm.slice_length(limits.slice())
            exit_ = self.run_slice(count)
            vm.after_slice()
            if exit_ is not None:
                return exit_

    def run_slice(self, count: int) -> Exit | None:
        """One ``emu_start`` of at most ``count`` instructions (0: until something stops it).

        Returns the exit a hook posted, or None when the slice ran out, the vCPU went to
        sleep, or the watchdog stopped it. Budget and virtual time are charged here: a full
        counted slice in full, a slice cut short by a hook or a fault as one instruction
        (exceptions delivered on the way are charged as they happen, ``TrapHandler._take``).
        With a vGIC and no budget, the C block counter (``emu.arm.syshook.InsnCounter``)
        counts instead, exactly, and the clock follows it during the slice (``sync_clock``).
        With a debugger attached (``vm.debug``) the slice may pause for it on the way; it is
        counted and charged the same way, by the block counter or as a count= slice.
        """
        vm = self.vm
        debug = vm.debug
        trap = self.trap
        trap.cut_short = False
        counter = self.counter
        if counter is not None and count and vm.irqchip is not None and vm.limits.max_insns is None:
            counter.start(count)
            self._synced = 0
            self._live = counter
            try:
                exit_ = self.execute(0) if debug is None else debug.run_slice(self, count, counter)
            finally:
                self.sync_clock()
                counter.finish()
                self._live = None
                vm.limits.charge(counter.executed)
                self.instructions += counter.executed
            return exit_
        exit_ = self.execute(count) if debug is None else debug.run_slice(self, count)
        if count:
            ran = 1 if exit_ is not None or self.sleeping or trap.cut_short else count
            vm.limits.charge(ran)
            vm.clock.advance(ran)
            self.instructions += ran
        return exit_

    def execute(self, count: int) -> Exit | None:
        """One ``emu_start`` of at most ``count`` instructions, charging nothing."""
        if count and not self._counting:
            self._start_counting()
        uc = self.uc
        if self._maintenance[self.index] or self._code_pages:
            self._apply_maintenance()
        if self._pending_reset is not None:
            self.reset(*self._pending_reset)  # v5.13: KVM_REQ_VCPU_RESET on the next KVM_RUN
        limits = self.vm.limits
        regs = self.regs
        self._exit = None
        uc._hook_exception = None
        pc = regs.resume_pc
        if pc is None:
            pc = regs.read_id(_PC)
        regs.resume_pc = None
        trap = self.trap
        limits.watched = self._h
        status = _emu_start(
            self._h, ctypes.c_uint64(pc), _NEVER, _NO_TIMEOUT, ctypes.c_size_t(count) if count else _UNCOUNTED
        )
        limits.watched = None
        if uc._hook_exception is not None:
            err, uc._hook_exception = uc._hook_exception, None
            raise err
        if self.watchpoints.hit is not None:
            trap.take_watchpoint()
        if status != 0 and trap.pending_abort is not None:
            trap.take_pending_abort()
            trap.cut_short = True
            status = 0
        exit_ = self._exit
        if exit_ is not None:
            self._exit = None
        elif status != 0:
            raise EmuError(
                f"vCPU {self.id}: Unicorn stopped with error {status}: {uclib.uc_strerror(status).decode()}"
            )
        return exit_

    def retired(self) -> int:
        """Instructions retired so far, including the running slice's (as counted)."""
        counter = self._live
        return self.instructions + (counter.executed if counter is not None else 0)

    def sync_clock(self) -> None:
        """Inside a counted slice: move the VM clock on by the instructions run so far."""
        counter = self._live
        if counter is not None:
            executed = counter.executed
            if executed != self._synced:
                self.vm.clock.ns += (executed - self._synced) * NS_PER_INSN
                self._synced = executed

    def end_slice_at_deadline(self) -> None:
        """A timer was (re)programmed during the slice: stop at its deadline at the latest,
        so the tick arrives at its virtual time, not at the end of the slice."""
        counter, chip = self._live, self.vm.irqchip
        if counter is None or chip is None:
            return
        deadline = chip.next_deadline_ns()
        if deadline is not None:
            counter.lower_limit(self._synced + max(1, (deadline - self.vm.clock.ns) // NS_PER_INSN))

    def set_hypercall_hook(self, hook: Callable[[str, int, int], bool] | None) -> None:
        """``hook(conduit, pc, fid)`` sees each HVC/SMC before the model; True stops the guest
        on it, unanswered (guest debugging, ``emu.kvm.debug``)."""
        self.trap.hypercall_hook = hook

    def _idle(self) -> StopExit:
        if self._mp_state == MpState.STOPPED:
            why = "vCPU is powered off (mp_state STOPPED) and nothing can power it on"
        else:
            why = "vCPU is waiting for an interrupt (WFI or CPU_SUSPEND) and none can arrive"
        return StopExit(self.id, StopReason.IDLE, f"idle: {why}")

    def stale_code_page(self, page: int) -> None:
        """Another vCPU invalidated instruction-cache lines of this (virtual) page."""
        pages = self._code_pages
        if len(pages) < MAX_CODE_PAGES:
            pages.add(page)
        else:
            pages.clear()
            self.vm.maintenance.flags[self.index] |= FLAG_CODE

    def _apply_maintenance(self) -> None:
        flags = self.vm.maintenance.take(self.index)
        if flags & FLAG_TLB:
            self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        if flags & FLAG_CODE:
            self.uc.ctl_flush_tb()
            self._code_pages.clear()
        elif self._code_pages:
            for page in sorted(self._code_pages):
                # IC IVAU may name any VA, the last page of the address space too. The engine
                # takes [page, end) with a 64-bit end above the start: there, end is a byte
                # short of 2^64, still past the start of every instruction in the page.
                self.uc.ctl_remove_cache(page, min(page + PAGE, LAST_ADDRESS))
            self._code_pages.clear()

    @property
    def stale_tlb(self) -> bool:
        """Another vCPU broadcast TLB maintenance this vCPU has not applied yet."""
        return bool(self.vm.maintenance.flags[self.index] & FLAG_TLB)

    @property
    def stale_code(self) -> bool:
        """Another vCPU broadcast instruction-cache maintenance not applied yet."""
        return bool(self.vm.maintenance.flags[self.index] & FLAG_CODE)

    def _start_counting(self) -> None:
        # A counted run after count-less runs of the same code hangs unless the translated
        # blocks are dropped first (engine notes 0.5). A VM's budget is fixed at creation,
        # so this happens at most once per vCPU.
        self.uc.ctl_flush_tb()
        self._counting = True

    # -- power state: used by the trap path, the model and the scheduler -------------------

    def post_exit(self, exit_: Exit) -> None:
        """Stop the guest and make ``run()`` return ``exit_``."""
        self._exit = exit_
        _emu_stop(self._h)

    def stop(self) -> None:
        _emu_stop(self._h)

    @property
    def counting(self) -> bool:
        """Slices run with Unicorn's instruction counter (an instruction budget is set)."""
        return self._counting

    @property
    def sleeping(self) -> bool:
        """Powered off or blocked (CPU_OFF, SYSTEM_OFF, CPU_SUSPEND, WFI): it cannot run now."""
        return self._mp_state is not _RUNNABLE or self.wait is not None

    @property
    def power(self) -> Power:
        """The power state as PSCI sees it: on, off, suspended (CPU_SUSPEND) or halted (WFI)."""
        if self._mp_state == MpState.STOPPED:
            return Power.OFF
        if self._mp_state == MpState.SUSPENDED or self.wait is Wait.CPU_SUSPEND:
            return Power.SUSPENDED
        if self.wait is not None:
            return Power.HALTED
        return Power.ON

    def _changed(self, by: ServiceVcpu | None) -> None:
        power = self.power
        if power is not self._power:
            self._power = power
            self.vm.note_power_change(self, by)

    def power_off(self, by: ServiceVcpu | None = None) -> None:
        """CPU_OFF / SYSTEM_OFF: mp_state STOPPED, the vCPU sleeps (KVM_REQ_SLEEP)."""
        self._mp_state = MpState.STOPPED
        self.wait = None
        self._changed(self if by is None else by)

    def wait_for_interrupt(self, reason: Wait) -> None:
        """Block until an interrupt: WFI, or CPU_SUSPEND which KVM implements as WFI."""
        self.wait = reason
        self._changed(self)

    def set_virq(self, level: bool) -> None:
        """The vGIC's IRQ line for this vCPU: HCR_EL2.VI, taken by the engine when unmasked."""
        self._hcr = self._hcr | HCR_IMO | HCR_VI if level else self._hcr & ~HCR_VI
        self.uc.cpr_write(*HCR_EL2, self._hcr)

    def interrupt_wake(self) -> None:
        """An interrupt became pending: a vCPU blocked in WFI or CPU_SUSPEND runs again."""
        if self._mp_state == MpState.RUNNABLE and self.wait is not None:
            self.wait = None
            self._changed(None)

    def wakeup_pending(self) -> bool:
        """Would a WFI return at once? An interrupt pending (even one PSTATE masks) says yes."""
        chip = self.vm.irqchip
        if chip is None:
            return self.timer_fired()
        chip.update_timer(self)
        return chip.pending(self) or self.timer_fired()

    def wake_on_timer(self) -> bool:
        """A blocked vCPU whose timer can fire: move time on to that point and wake it.

        With a vGIC the timer reaches the vCPU as its PPI, so time moves on to the next
        deadline and the vCPU wakes only if that raised its IRQ line. True if time moved
        or the vCPU woke, False if nothing can wake it.
        """
        if self._mp_state != MpState.RUNNABLE or self.wait is None:
            return False
        chip = self.vm.irqchip
        if chip is not None:
            if self.wakeup_pending():
                self.interrupt_wake()
                return True
            deadline = chip.next_deadline_ns([self])
            if deadline is None:
                return False
            self.vm.clock.ns = deadline
            chip.update_timers()
            return True
        when = self.timers.wake_time_ns()
        if when is None:
            return False
        clock = self.vm.clock
        clock.ns = max(clock.ns, when)
        self.wait = None
        self._changed(None)
        return True

    def wake_from_suspend(self) -> SystemEventExit | None:
        """KVM_MP_STATE_SUSPENDED (v5.19 kvm_vcpu_suspend): WFI in the kernel; a wake event
        exits with SYSTEM_EVENT WAKEUP (ndata 0) and the state stays SUSPENDED until userspace
        makes the vCPU RUNNABLE. None if nothing can wake it."""
        when = self.timers.wake_time_ns()
        if when is None:
            return None
        clock = self.vm.clock
        clock.ns = max(clock.ns, when)
        return SystemEventExit(self.id, SystemEvent.WAKEUP, 0, ())

    def timer_fired(self) -> bool:
        """True if an enabled, unmasked timer has expired by now (WFI would not block)."""
        when = self.timers.wake_time_ns()
        return when is not None and when <= self.vm.clock.ns

    def reset(self, pc: int, x0: int = 0, big_endian: bool = False) -> None:
        """KVM_ARM_VCPU_INIT, then PC and x0: the architectural reset a (re)started vCPU gets.

        GPRs and the EL1 state KVM resets are cleared, PSTATE is EL1h with DAIF masked,
        the MMU is off, timers are disabled, data endianness is ``big_endian`` (ref 4.6).
        """
        self._pending_reset = None
        regs = self.regs
        for i in range(31):
            regs.write(f"x{i}", 0)
        for name in ("sp", "sp_el0", "sp_el1", "elr_el1", "esr_el1", "far_el1", "vbar_el1"):
            regs.write(name, 0)
        sctlr = (self._sctlr_reset & ~SCTLR_EE) | (SCTLR_EE if big_endian else 0)
        regs.write_id(a64.UC_ARM64_REG_PSTATE, PSTATE_EL1H_DAIF)
        # Any cpr_write also rebuilds QEMU's cached hflags after the PSTATE write.
        self.uc.cpr_write(*SCTLR_EL1, sctlr)
        self.mmu_enabled = False
        self.timers.reset()
        self.pmu.reset()
        self.watchpoints.reset()
        regs.write("pc", pc)
        regs.write("x0", x0)
        self.uc.ctl_flush_tb()
        self.wait = None

    def psci_reset(
        self, entry: int, context_id: int, big_endian: bool, by: ServiceVcpu | None = None
    ) -> None:
        """CPU_ON: reset the powered-off target to the entry point, then RUNNABLE (ref 4.4).

        Before v5.15 the reset waited for the target's next KVM_RUN, so a VMM reading its
        registers in between saw the old ones; since then they are reset at once.
        """
        if self.vm.profile.cpu_on_reset_at_run:
            self._pending_reset = (entry, context_id, big_endian)
        else:
            self.reset(entry, context_id, big_endian)
        self._mp_state = MpState.RUNNABLE
        self._changed(by)

    def is_big_endian(self) -> bool:
        return bool(self.uc.cpr_read(*SCTLR_EL1) & SCTLR_EE)

    # -- KVM_GET/SET_MP_STATE -------------------------------------------------------------

    @property
    def mp_state(self) -> MpState:
        if self._mp_state == MpState.RUNNABLE and self.wait is Wait.HALTED:
            return MpState.HALTED
        return self._mp_state

    @mp_state.setter
    def mp_state(self, state: MpState | int) -> None:
        # The RFC's HALTED is in the profile's list without any capability (RFC 3/5).
        allowed = self.vm.profile.settable_mp_states
        try:
            new = MpState(state)
        except ValueError:
            new = None
        if new is None or new not in allowed:
            raise KvmError(
                errno.EINVAL,
                f"KVM_SET_MP_STATE: state {new if new is not None else state} not accepted by profile "
                f"{self.vm.profile.name}",
            )
        if new == MpState.HALTED:
            self._mp_state = MpState.RUNNABLE
            self.wait = Wait.HALTED
        else:
            self._mp_state = new
            self.wait = None
        self._changed(None)

    # -- KVM_ARM_VCPU_PVTIME_IPA ------------------------------------------------------------

    @property
    def pvtime_ipa(self) -> int | None:
        """The stolen-time structure's IPA (vCPU attribute KVM_ARM_VCPU_PVTIME_IPA)."""
        return self._pvtime_ipa

    @pvtime_ipa.setter
    def pvtime_ipa(self, ipa: int) -> None:
        # kvm_arm_pvtime_set_attr(): 64-byte aligned, set once, inside a memslot (ref 6.3).
        if ipa % 64:
            raise KvmError(errno.EINVAL, f"KVM_ARM_VCPU_PVTIME_IPA: {ipa:#x} is not 64-byte aligned")
        if self._pvtime_ipa is not None:
            raise KvmError(errno.EEXIST, "KVM_ARM_VCPU_PVTIME_IPA: already set")
        if not self.vm.in_ram(ipa):
            raise KvmError(errno.EINVAL, f"KVM_ARM_VCPU_PVTIME_IPA: {ipa:#x} is not guest RAM")
        self._pvtime_ipa = ipa

    # -- KVM_GET/SET_ONE_REG, KVM_GET_REG_LIST ------------------------------------------------

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG with KVM's register ids (``emu.kvm.one_reg``); ENOENT if unknown."""
        return one_reg.get_one_reg(self, reg_id)

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG: core registers, or firmware registers with KVM's checks."""
        one_reg.set_one_reg(self, reg_id, value)

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: the ids emu models under this vCPU's profile."""
        return one_reg.reg_list(self)

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This vCPU between runs: the engine's CPU context (every register, system
        registers included) and what KVM keeps beside it."""
        return {
            "id": self.id,
            "psci_0_2": self.psci_0_2,
            "mpidr": self.mpidr,
            "esr": self.esr,
            "pvtime_ipa": self._pvtime_ipa,
            "pending_reset": None if self._pending_reset is None else list(self._pending_reset),
            "mp_state": int(self._mp_state),
            "wait": None if self.wait is None else self.wait.value,
            "power": self._power.value,
            "mmu_enabled": self.mmu_enabled,
            "resume_pc": self.regs.resume_pc,
            "timers": self.timers.snapshot(),
            "maintenance": int(self._maintenance[self.index]),
            "code_pages": sorted(self._code_pages),
            "instructions": self.instructions,
            "hcr": self._hcr,
            "pmu": self.pmu.snapshot(),
            "context": self._save_context(),
        }

    def restore(self, data: dict[str, Any], changed: Sequence[int] | None = None) -> None:
        """Back to ``snapshot()``'s state. RAM changed under the engine: code translated from
        the ``changed`` pages (physical addresses; None: from anywhere) is dropped, and the TLB."""
        if data["id"] != self.id:
            raise KvmError(errno.EINVAL, f"vCPU {self.id}: snapshot is of vCPU {data['id']}")
        uc = self.uc
        if changed is None:
            uc.ctl_flush_tb()
        elif changed:
            # Translated blocks are found by physical address, the cache call translates the
            # address it is given: with the MMU off (until the context is restored) they agree.
            uc.cpr_write(*SCTLR_EL1, uc.cpr_read(*SCTLR_EL1) & ~SCTLR_M)
            for address in changed:
                uc.ctl_remove_cache(address, address + PAGE)
        self._restore_context(data["context"])
        self.psci_0_2 = data["psci_0_2"]
        self.mpidr = data["mpidr"]
        self.esr = data["esr"]
        self._pvtime_ipa = data["pvtime_ipa"]
        pending = data["pending_reset"]
        self._pending_reset = None if pending is None else (pending[0], pending[1], bool(pending[2]))
        self._mp_state = MpState(data["mp_state"])
        self.wait = None if data["wait"] is None else Wait(data["wait"])
        self._power = Power(data["power"])
        self.mmu_enabled = data["mmu_enabled"]
        self.regs.resume_pc = data["resume_pc"]
        self.timers.restore(data["timers"])
        self._exit = None
        self.trap.pending_abort = None
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        self._maintenance[self.index] = data["maintenance"]
        self._code_pages = set(data["code_pages"])
        self.instructions = data["instructions"]
        self._hcr = data["hcr"]
        self.pmu.restore(data["pmu"])

    def _save_context(self) -> bytes:
        raw = bytes(self.uc.context_save())
        return raw[len(raw) - _context_data_size(raw) :]

    def _restore_context(self, data: bytes) -> None:
        if self._context is None:
            self._context = self.uc.context_save()
        context = self._context
        size = context.size
        header = size - _context_data_size(bytes(context)[:8])
        if len(data) != size - header:
            raise KvmError(
                errno.EINVAL,
                f"vCPU {self.id}: snapshot CPU context is {len(data)} bytes, this engine's is {size - header}",
            )
        ctypes.memmove(context.context.value + header, data, len(data))
        self.uc.context_restore(context)

    # -- registers and memory ------------------------------------------------------------

    def get_reg(self, name: str) -> int:
        return self.regs.read(name)

    def set_reg(self, name: str, value: int) -> None:
        self.regs.write(name, value)

    def get_regs(self) -> Registers:
        """Snapshot of x0..x30, sp, pc and pstate (a dict that displays as a table)."""
        return self.regs.snapshot()

    def set_regs(self, **values: int) -> None:
        """Write registers by name, e.g. ``set_regs(x0=0, x1=5, pc=0x40080000)``."""
        for name in values:
            reg_id(name)
        self.regs.write_many(values.items())

    def complete_hypercall(self, *results: int) -> None:
        """Write a userspace answer to a ``HypercallExit``: ``results`` go to x0, x1, ... (at most 4)."""
        if not 1 <= len(results) <= 4:
            raise ValueError("a hypercall answer is 1 to 4 values for x0..x3")
        self.regs.write_x([r & 0xFFFF_FFFF_FFFF_FFFF for r in results])

    @property
    def pc(self) -> int:
        return self.regs.read_id(_PC)

    @pc.setter
    def pc(self, value: int) -> None:
        self.regs.write_id(_PC, value)

    def read_insn(self, va: int) -> int | None:
        """The 32-bit instruction at virtual address ``va`` (None if it cannot be read)."""
        if not self.mmu_enabled:
            offset = va - self.vm.ram_base
            if 0 <= offset <= self.vm.ram_size - 4:
                word: int = _u32(self.vm.ram_buffer, offset)[0]
                return word
        if _vmem_read(self._h, ctypes.c_uint64(va), UC_PROT_EXEC, self._insn_ref, ctypes.c_size_t(4)) != 0:
            return None
        return self._insn_buf.value

    def disasm(self, va: int) -> str:
        insn = self.read_insn(va)
        if insn is None:
            return "<unmapped>"
        return disasm_one(insn.to_bytes(4, "little"), va)

    def __repr__(self) -> str:
        return f"Vcpu(id={self.id}, mpidr={self.mpidr:#x}, mp_state={self.mp_state.name}, power={self.power.value})"

    def _repr_pretty_(self, printer: rendering.PrettyPrinter, cycle: bool) -> None:
        printer.text(f"{self!r}\n{self.get_regs()!r}")

    def _repr_html_(self) -> str:
        return rendering.html(self)
