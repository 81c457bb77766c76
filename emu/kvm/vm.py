"""A virtual machine: guest RAM, its vCPUs, capabilities and the modelled KVM they trap into.

``Vm`` is the VM file descriptor of the KVM API: ``check_extension``, ``enable_cap``,
``create_vcpu``. Guest RAM is one anonymous shared mapping that every vCPU's Unicorn
instance maps at ``RAM_BASE`` (the QEMU ``virt`` layout), so all vCPUs see one memory.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emu import rendering
from emu.abi.exits import Exit, MpState, StopExit, StopReason, SystemEventExit
from emu.abi.trace import HypercallEvent, PowerEvent, PsciEvent, Trace
from emu.arm.asm import assemble
from emu.arm.clock import NS_PER_INSN, VirtualClock
from emu.arm.host import HostCpu
from emu.arm.syshook import FLAG_CODE, FLAG_TLB, Maintenance, native
from emu.errors import ImageError, KvmError
from emu.kvm import one_reg
from emu.kvm.caps import Cap
from emu.kvm.debug import DebuggerHandle, GuestDebug
from emu.kvm.filter import KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER, SmcccFilter, pack_filter
from emu.kvm.irqchip import Irqchip
from emu.kvm.limits import RunLimits
from emu.kvm.profiles import DEFAULT_PROFILE, Profile, get_profile
from emu.kvm.scheduler import DEFAULT_QUANTUM, make_scheduler, rng_state, set_rng_state
from emu.kvm.snapshot import (
    RamImage,
    Snapshot,
    SnapshotError,
    Snapshottable,
    changed_pages,
    check_compatible,
    damaged,
    emu_version,
    map_image,
    unicorn_version,
)
from emu.kvm.vcpu import MmioDevice, Vcpu
from emu.kvm_model import KvmModel
from emu.smccc.call import ServiceVcpu
from emu.smccc.psci import PSCI_0_1

RAM_BASE = 0x4000_0000
DEFAULT_RAM_SIZE = 128 << 20
LOAD_ADDR = 0x4008_0000
PAGE = 0x1000
# With a vGIC, the longest slice: a timer armed inside a slice fires at its end at the
# latest, so this bounds how late (in instructions, hence virtual ns) a tick can be.
TIMER_SLICE_INSNS = 1 << 16
# arm64's KVM_MAX_VCPUS (VGIC_V3_MAX_CPUS, v5.13): KVM_CREATE_VCPU refuses more (-EINVAL).
KVM_MAX_VCPUS = 512
# Host memory one vCPU's Unicorn instance takes once created (about 3.3 MiB measured,
# before any guest code is translated; bench/smp_boot.py).
VCPU_FOOTPRINT = 4 << 20


def _mib(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size} bytes"


def _check_host_memory(mem_size: int, cpus: int) -> None:
    """Refuse a VM the host cannot hold before allocating any of it (ENOMEM).

    Guest RAM is mapped lazily, so the kernel would accept it and the run would end in
    the OOM killer instead, after every vCPU had been built.
    """
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) << 10
    except (OSError, KeyError, ValueError):
        return
    needed = mem_size + cpus * VCPU_FOOTPRINT
    if needed > available:
        raise KvmError(
            errno.ENOMEM,
            f"{_mib(mem_size)} of guest RAM and {cpus} vCPU{'s' * (cpus != 1)} need about {_mib(needed)} of host "
            f"memory, but only {_mib(available)} is available",
        )


class _ClassOrInstance:
    """``Vm.load(path)`` reads a snapshot file; ``vm.load(image, address)`` loads an image."""

    def __init__(self, on_class: str, on_instance: str) -> None:
        self.on_class = on_class
        self.on_instance = on_instance

    def __get__(self, instance: object, owner: type) -> Callable[..., Any]:
        if instance is None:
            return getattr(owner, self.on_class)  # type: ignore[no-any-return]
        return getattr(instance, self.on_instance)  # type: ignore[no-any-return]


# Called with every new VM once it is built; tools subscribe (the pytest kit's ABI coverage).
on_vm_created: list[Callable[[Vm], None]] = []
# Called with a VM once ``restore`` has put it back into a snapshot's state (it has a new trace).
on_vm_restored: list[Callable[[Vm], None]] = []
# ``serve_gdb(vm, port, host, wait=..., timeout=...)``: the debugger front end, registered by
# the tools layer (emu.tools.gdb) when ``emu`` is imported.
gdb_front_end: Callable[..., DebuggerHandle] | None = None


class Vm:
    """A VM under one modelled kernel (``profile``), with its RAM, vCPUs and run limits.

    ``cpus`` creates that many vCPUs up front: vCPU 0 runnable, the others powered off
    (KVM_ARM_VCPU_POWER_OFF), waiting for PSCI CPU_ON. ``seed`` makes everything the
    model draws (TRNG entropy, the random schedule) reproducible; ``schedule`` is
    ``"rr"`` or ``"random"`` with quanta of about ``quantum`` instructions;
    ``max_insns`` and ``timeout`` bound every run (see ``emu.limits``); ``trace_insns``
    records every executed instruction in the trace (slow; nothing is hooked without it).
    """

    # The VM's components that snapshot themselves, by attribute (each has snapshot() and
    # restore(data), plain data in between); vCPUs, devices, scheduler and trace come apart.
    SNAPSHOT_PARTS = ("clock", "limits", "model", "smccc_filter", "fw_bitmaps")

    def __init__(
        self,
        profile: str | Profile = DEFAULT_PROFILE,
        *,
        cpus: int = 0,
        mem_size: int = DEFAULT_RAM_SIZE,
        seed: int = 0,
        schedule: str = "rr",
        quantum: int = DEFAULT_QUANTUM,
        host: HostCpu | None = None,
        max_insns: int | None = None,
        timeout: float | None = None,
        trace_insns: bool = False,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        if mem_size <= 0 or mem_size % PAGE:
            raise ValueError(f"memory size must be a positive multiple of 4 KiB, not {mem_size:#x}")
        if cpus > KVM_MAX_VCPUS:
            raise KvmError(errno.EINVAL, f"KVM_CREATE_VCPU: at most {KVM_MAX_VCPUS} vCPUs, not {cpus}")
        _check_host_memory(mem_size, cpus)
        self.ram_base = RAM_BASE
        self.ram_size = mem_size
        try:
            self._ram = mmap.mmap(-1, mem_size)
        except OSError as err:
            raise KvmError(
                errno.ENOMEM, f"cannot allocate {_mib(mem_size)} of guest RAM: {err.strerror}"
            ) from None
        self.ram_address = ctypes.addressof(ctypes.c_char.from_buffer(self._ram))
        self.ram_buffer = self._ram
        self.host = host or HostCpu()
        self.seed = seed
        self.clock = VirtualClock()
        self.entropy = random.Random(seed)
        self.limits = RunLimits(max_insns, timeout)
        self.scheduler = make_scheduler(schedule, seed, quantum)
        # Everything the run records, in order (emu.trace).
        self.trace = Trace(profile=self.profile.name)
        # Called with each hypercall answered in the kernel, as it happens (e.g. to stream them).
        self.on_event: Callable[[HypercallEvent], None] | None = None
        self.vcpus: list[Vcpu] = []
        self._by_id: dict[int, Vcpu] = {}
        self.psci_version = self.profile.psci_default_version
        # Enabled capabilities (KVM_ENABLE_CAP); read directly on the trap path.
        self.caps: set[Cap] = set()
        # Translation cache per vCPU instance (Unicorn reserves 1 GiB by default).
        self.tcg_buffer_size = 16 << 20
        self.trace_insns = trace_insns
        # MMIO devices every vCPU maps (the VMM adds them: add_device).
        self.devices: list[MmioDevice] = []
        # The in-kernel interrupt controller (create_gic); None: no irqchip, as before
        # KVM_CREATE_DEVICE.
        self.irqchip: Irqchip | None = None
        # Broadcast TLB / instruction-cache maintenance not yet applied, per vCPU index.
        self.maintenance = Maintenance()
        # The SMCCC filter (v6.4+, ref 6.2) and the bitmap registers (v5.19+, ref 7).
        self.smccc_filter = SmcccFilter()
        self.fw_bitmaps = one_reg.FirmwareBitmaps()
        self.model = KvmModel(self)
        # Upper layers' state that snapshots carry (name -> snapshot()/restore()), e.g. the VMM's.
        self.extensions: dict[str, Snapshottable] = {}
        # The snapshot RAM is a copy-on-write view of, if any (Vm.restore).
        self._ram_image: RamImage | None = None
        # The attached debugger, if any (``emu.kvm.debug.GuestDebug``); consulted per slice.
        self.debug: GuestDebug | None = None
        for i in range(cpus):
            self.create_vcpu(i, power_off=i > 0)
        for hook in on_vm_created:
            hook(self)

    # -- capabilities --------------------------------------------------------------------

    def _cap(self, cap: Cap | int) -> Cap | None:
        """A ``Cap`` is a name; a plain number means what this profile numbers it (ref 6.1)."""
        if isinstance(cap, Cap):
            return cap if cap in self.profile.cap_numbers else None
        return self.profile.cap_by_number(int(cap))

    def check_extension(self, cap: Cap | int) -> int:
        """KVM_CHECK_EXTENSION: the profile's value, 0 for anything it does not know."""
        known = self._cap(cap)
        return 0 if known is None else self.profile.caps.get(known, 0)

    def cap_number(self, cap: Cap) -> int | None:
        """The KVM_CAP_* number this profile gives ``cap`` (None: it has no such capability)."""
        return self.profile.cap_numbers.get(cap)

    def enable_cap(self, cap: Cap | int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM; -EINVAL for caps that cannot be enabled, as KVM."""
        known = self._cap(cap)
        if known is None:
            name = cap.kvm_name if isinstance(cap, Cap) else str(cap)
            raise KvmError(
                errno.EINVAL, f"KVM_ENABLE_CAP: profile {self.profile.name} has no capability {name}"
            )
        cap = known
        if cap not in self.profile.enableable_caps:
            raise KvmError(
                errno.EINVAL,
                f"KVM_ENABLE_CAP: {cap.kvm_name} cannot be enabled under profile {self.profile.name}",
            )
        if flags:
            raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP: {cap.kvm_name} takes no flags")
        if cap == Cap.ARM_PSCI_TO_USER and Cap.ARM_HVC_TO_USER not in self.caps:
            # RFC 5/5: r is preset to -EINVAL unless HVC_TO_USER was enabled first.
            raise KvmError(
                errno.EINVAL,
                "KVM_ENABLE_CAP: KVM_CAP_ARM_PSCI_TO_USER needs KVM_CAP_ARM_HVC_TO_USER enabled first",
            )
        self.caps.add(cap)

    @property
    def system_suspend_enabled(self) -> bool:
        """KVM_ARCH_FLAG_SYSTEM_SUSPEND_ENABLED (KVM_CAP_ARM_SYSTEM_SUSPEND, v5.19+)."""
        return Cap.ARM_SYSTEM_SUSPEND in self.caps

    @property
    def has_run(self) -> bool:
        """kvm_vm_has_ran_once(): some vCPU has entered KVM_RUN."""
        return self.limits.ran_once

    # -- VM device attributes: the SMCCC filter (v6.4+) ------------------------------------

    def _check_attr(self, group: int, attr: int, what: str) -> None:
        if not self.profile.smccc_filter:
            raise KvmError(errno.ENXIO, f"{what}: profile {self.profile.name} has no VM attributes")
        if group != KVM_ARM_VM_SMCCC_CTRL or attr != KVM_ARM_VM_SMCCC_FILTER:
            raise KvmError(errno.ENXIO, f"{what}: no attribute {attr} in group {group}")

    def has_device_attr(self, group: int, attr: int) -> None:
        """KVM_HAS_DEVICE_ATTR on the VM: returns if the attribute exists, else ENXIO."""
        self._check_attr(group, attr, "KVM_HAS_DEVICE_ATTR")

    def set_device_attr(self, group: int, attr: int, data: bytes) -> None:
        """KVM_SET_DEVICE_ATTR on the VM; ``data`` is the ``struct kvm_smccc_filter``."""
        self._check_attr(group, attr, "KVM_SET_DEVICE_ATTR")
        self.smccc_filter.set_raw(bytes(data), self.has_run)

    def set_smccc_filter(self, base: int, nr_functions: int, action: int) -> None:
        """Send [base, base + nr_functions) to ``action`` (``SmcccFilterAction``), as
        KVM_SET_DEVICE_ATTR(KVM_ARM_VM_SMCCC_FILTER) does, with the same errors."""
        self.set_device_attr(
            KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER, pack_filter(base, nr_functions, action)
        )

    def cap_enabled(self, cap: Cap) -> bool:
        return cap in self.caps

    @property
    def enabled_caps(self) -> tuple[Cap, ...]:
        return tuple(sorted(self.caps))

    # -- vCPUs ---------------------------------------------------------------------------------

    def create_vcpu(
        self, vcpu_id: int | None = None, *, power_off: bool = False, psci_0_2: bool = True
    ) -> Vcpu:
        """KVM_CREATE_VCPU + KVM_ARM_VCPU_INIT (features POWER_OFF and PSCI_0_2)."""
        if vcpu_id is None:
            vcpu_id = len(self.vcpus)
        if any(v.id == vcpu_id for v in self.vcpus):
            raise KvmError(errno.EEXIST, f"KVM_CREATE_VCPU: vCPU {vcpu_id} already exists")
        if not 0 <= vcpu_id < (1 << 20):
            raise KvmError(errno.EINVAL, f"KVM_CREATE_VCPU: bad vCPU id {vcpu_id}")
        chip = self.irqchip
        if chip is not None:
            if chip.initialized:
                raise KvmError(errno.EBUSY, "KVM_CREATE_VCPU: the vGIC is already initialised")
            chip.check_vcpus(len(self.vcpus) + 1)
        if len(self.vcpus) >= KVM_MAX_VCPUS:
            raise KvmError(errno.EINVAL, f"KVM_CREATE_VCPU: the VM already has {KVM_MAX_VCPUS} vCPUs")
        vcpu = Vcpu(self, vcpu_id, power_off=power_off, psci_0_2=psci_0_2)
        self.vcpus.append(vcpu)
        for other in self.vcpus:
            for hook in other.trap.insn_hooks:
                hook.vcpus_changed()
        self._by_id[vcpu_id] = vcpu
        return vcpu

    def vcpu(self, vcpu_id: int) -> Vcpu:
        """The vCPU with this id."""
        try:
            return self._by_id[vcpu_id]
        except KeyError:
            raise KeyError(f"no vCPU {vcpu_id}") from None

    def vcpu_by_affinity(self, affinity: int) -> Vcpu | None:
        """kvm_mpidr_to_vcpu(): the vCPU whose MPIDR affinity fields equal ``affinity``."""
        for vcpu in self.vcpus:
            if vcpu.mpidr & 0xFF_00FF_FFFF == affinity:
                return vcpu
        return None

    def psci_version_for(self, vcpu: ServiceVcpu) -> int:
        """kvm_psci_version(): 0.1 without the PSCI_0_2 vCPU feature, else the VM's version."""
        return self.psci_version if vcpu.psci_0_2 else PSCI_0_1

    def set_psci_version(self, version: int) -> None:
        """Write KVM_REG_ARM_PSCI_VERSION through every vCPU (one without the PSCI_0_2
        feature only accepts 0.1); with no vCPU yet, as a PSCI_0_2 vCPU would."""
        if not self.vcpus:
            if version not in self.profile.psci_versions:
                raise KvmError(
                    errno.EINVAL,
                    f"KVM_REG_ARM_PSCI_VERSION: {version:#x} not supported by profile {self.profile.name}",
                )
            self.psci_version = version
        for vcpu in self.vcpus:
            vcpu.set_one_reg(one_reg.KVM_REG_ARM_PSCI_VERSION, version)

    # -- interrupts --------------------------------------------------------------------------

    def create_gic(self, version: int = 3) -> Irqchip:
        """KVM_CREATE_DEVICE(KVM_DEV_TYPE_ARM_VGIC_V2 or _V3) at QEMU virt's addresses.

        The vGIC is initialised (sized for the vCPUs created so far) at the first run.
        """
        if self.irqchip is not None:
            raise KvmError(errno.EEXIST, "KVM_CREATE_DEVICE: the VM already has a vGIC")
        chip = Irqchip(self, version)
        self.irqchip = chip
        for vcpu in self.vcpus:
            vcpu.set_virq(False)
            for region in chip.mappings(vcpu):
                vcpu.map_device(region)
        return chip

    def irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: drive an SPI (``emu.kvm.irqchip.kvm_irq(intid)``) or a vCPU's PPI."""
        if self.irqchip is None:
            raise KvmError(errno.ENXIO, "KVM_IRQ_LINE: the VM has no in-kernel irqchip")
        self.irqchip.irq_line(irq, level)

    def slice_length(self, count: int) -> int:
        """Instructions for the next slice: with a vGIC, time is counted in instructions and
        a slice ends at the next timer deadline, so ticks arrive at a fixed instruction."""
        chip = self.irqchip
        if chip is None:
            return count
        if not native():
            # Unicorn's count= cannot be shortened once running: bound how late a timer
            # armed inside the slice can fire.
            count = min(count, TIMER_SLICE_INSNS) if count else TIMER_SLICE_INSNS
        elif not count:
            count = self.limits.slice_insns
        deadline = chip.next_deadline_ns()
        if deadline is not None:
            count = max(1, min(count, (deadline - self.clock.ns) // NS_PER_INSN))
        return count

    def after_slice(self) -> None:
        """Time moved on: the timers' interrupt outputs follow."""
        chip = self.irqchip
        if chip is not None:
            chip.update_timers()

    def broadcast(self, source: object, *, tlb: bool = False, code: bool = False) -> None:
        """Inner-shareable maintenance by ``source``: the other vCPUs flush before they run."""
        flags = (FLAG_TLB if tlb else 0) | (FLAG_CODE if code else 0)
        index = next((v.index for v in self.vcpus if v is source), -1)
        self.maintenance.broadcast(index, len(self.vcpus), flags)

    def broadcast_code_page(self, source: object, va: int) -> None:
        """IC IVAU by ``source``: the others drop code translated from the page of ``va``
        (a virtual address; Linux cleans through its kernel mapping, the same on every vCPU)."""
        page = va & ~(PAGE - 1)
        for vcpu in self.vcpus:
            if vcpu is not source:
                vcpu.stale_code_page(page)

    def note_power_change(self, vcpu: Vcpu, by: ServiceVcpu | None) -> None:
        self.trace.add(PowerEvent(self.clock.ns, vcpu.id, vcpu.power, None if by is None else by.id))

    @property
    def hypercalls(self) -> list[HypercallEvent]:
        """Every trapped HVC/SMC, in order."""
        return self.trace.hypercalls

    @property
    def psci_events(self) -> list[PsciEvent]:
        return self.trace.psci

    @property
    def power_events(self) -> list[PowerEvent]:
        return self.trace.power

    # -- running -------------------------------------------------------------------------------

    def run(self) -> Exit:
        """Run the VM's vCPUs until one needs userspace, a fault, or a run limit.

        A single vCPU runs free (``Vcpu.run``). Several take turns in instruction quanta
        chosen by the scheduler; blocked vCPUs wake when their timers fire (virtual time
        jumps ahead when every runnable vCPU is blocked), and the run stops as ``idle``
        when every vCPU is off or waiting with nothing that could wake it.
        """
        if not self.vcpus:
            raise KvmError(errno.EINVAL, "KVM_RUN: the VM has no vCPUs")
        chip = self.irqchip
        if chip is not None:
            chip.init()
        if len(self.vcpus) == 1:
            return self.vcpus[0].run()
        limits = self.limits
        if not limits.started:
            limits.start()
        while True:
            runnable = [v for v in self.vcpus if not v.sleeping]
            if not runnable:
                woke = self._wake_earliest()
                if isinstance(woke, SystemEventExit):
                    return woke
                if not woke:
                    return StopExit(
                        None,
                        StopReason.IDLE,
                        "idle: every vCPU is powered off or "
                        "waiting for an interrupt, and nothing can wake one",
                    )
                continue
            vcpu, quantum = self.scheduler.pick(runnable)
            limit = limits.reached()
            if limit is not None:
                return StopExit(vcpu.id, *limit)
            if limits.max_insns is not None:
                quantum = min(quantum, limits.max_insns - limits.charged)
            if chip is not None:
                quantum = self.slice_length(quantum)
            exit_ = vcpu.run_slice(quantum)
            if chip is not None:
                chip.update_timers()
            if exit_ is not None:
                return exit_
            for other in self.vcpus:
                if chip is None and other.wait is not None and other.timer_fired():
                    other.wake_on_timer()
                elif other.mp_state is MpState.SUSPENDED and other.timer_fired():
                    return other.wake_from_suspend() or StopExit(other.id, StopReason.IDLE, "idle")

    def serve_gdb(
        self, port: int = 0, host: str = "127.0.0.1", *, wait: bool = True, timeout: float | None = None
    ) -> object:
        """Let gdb debug this VM over TCP (``target remote HOST:PORT``), every vCPU a thread.

        Returns at once with a handle (``.port``, ``.finish(status)``); the runs that follow
        stop for the debugger, and with ``wait`` the first one waits for it before the
        first instruction. Loopback only unless ``host`` says otherwise.
        """
        if gdb_front_end is None:
            raise RuntimeError("no gdb front end registered (import emu)")
        return gdb_front_end(self, port, host, wait=wait, timeout=timeout)

    def _wake_earliest(self) -> bool | SystemEventExit:
        """Everything is blocked: jump virtual time to the first timer that can wake a vCPU
        (a SUSPENDED one wakes with a WAKEUP exit for userspace)."""
        chip = self.irqchip
        if chip is not None:
            # With a vGIC a timer wakes its vCPU through the PPI: move to the next deadline
            # and let the vGIC say whom it woke. Deadlines already passed cannot help.
            blocked = [
                v
                for v in self.vcpus
                if (v.wait is not None and v.mp_state != MpState.STOPPED) or v.mp_state is MpState.SUSPENDED
            ]
            deadline = chip.next_deadline_ns(blocked)
            if deadline is None:
                return False
            self.clock.ns = deadline
            chip.update_timers()
            for vcpu in blocked:
                if vcpu.mp_state is MpState.SUSPENDED and vcpu.timer_fired():
                    return vcpu.wake_from_suspend() or False
            return True
        waiting = [
            (v.timers.wake_time_ns(), v.id, v)
            for v in self.vcpus
            if v.wait is not None or v.mp_state is MpState.SUSPENDED
        ]
        candidates = [(t, i, v) for t, i, v in waiting if t is not None]
        if not candidates:
            return False
        first = min(candidates)[2]
        if first.mp_state is MpState.SUSPENDED:
            return first.wake_from_suspend() or False
        first.wake_on_timer()
        return True

    # -- memory -------------------------------------------------------------------------------

    def add_device(self, device: MmioDevice) -> None:
        """Map an MMIO device into every vCPU, present and future."""
        self.devices.append(device)
        for vcpu in self.vcpus:
            vcpu.map_device(device)

    def in_ram(self, address: int, size: int = 1) -> bool:
        return self.ram_base <= address and address + size <= self.ram_base + self.ram_size

    def _check_range(self, address: int, size: int) -> int:
        offset = address - self.ram_base
        if offset < 0 or size < 0 or offset + size > self.ram_size:
            end = self.ram_base + self.ram_size
            raise ImageError(
                f"{size:#x} bytes at {address:#x} do not fit in guest RAM [{self.ram_base:#x}, {end:#x})"
            )
        return offset

    def write_memory(self, address: int, data: bytes) -> None:
        """Write guest RAM; vCPUs drop translated code for the range (engine notes 0.7)."""
        offset = self._check_range(address, len(data))
        if not data:
            return
        self._ram[offset : offset + len(data)] = data
        for vcpu in self.vcpus:
            vcpu.uc.ctl_remove_cache(address, address + len(data))

    def read_memory(self, address: int, size: int) -> bytes:
        offset = self._check_range(address, size)
        return self._ram[offset : offset + size]

    def load_image(self, image: bytes, address: int = LOAD_ADDR) -> None:
        """Copy a flat image into guest RAM at ``address``."""
        if not image:
            raise ImageError("empty image: there is nothing to load")
        self.write_memory(address, image)

    def load_asm(self, source: str, address: int = LOAD_ADDR) -> bytes:
        """Assemble ``source`` for ``address``, load it there and return the bytes."""
        image = assemble(source, address)
        self.load_image(image, address)
        return image

    # -- snapshots (emu.kvm.snapshot) ------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Everything a run depends on, now (between runs): continuing from ``restore`` of it
        gives the same run, byte for byte, as continuing this VM."""
        meta = {
            "emu": emu_version(),
            "unicorn": unicorn_version(),
            "profile": self.profile.name,
            "vcpus": [v.id for v in self.vcpus],
            "ram_base": self.ram_base,
            "mem_size": self.ram_size,
            "schedule": self.scheduler.name,
            "quantum": self.scheduler.quantum,
            "seed": self.seed,
            "max_insns": self.limits.max_insns,
            "trace_insns": self.trace_insns,
            "gic": None if self.irqchip is None else self.irqchip.version,
        }
        devices = []
        for device in self.devices:
            take = getattr(device, "snapshot", None)
            if take is not None:
                devices.append({"type": type(device).__name__, "base": device.base, "state": take()})
        state = {
            "vm": {
                "seed": self.seed,
                "psci_version": self.psci_version,
                "caps": sorted(int(c) for c in self.caps),
                "entropy": rng_state(self.entropy),
            },
            **{name: getattr(self, name).snapshot() for name in self.SNAPSHOT_PARTS},
            "scheduler": self.scheduler.snapshot(),
            "trace": self.trace.snapshot(),
            "vcpus": [v.snapshot() for v in self.vcpus],
            "irqchip": None if self.irqchip is None else self.irqchip.snapshot(),
            "devices": devices,
            "extensions": {name: part.snapshot() for name, part in self.extensions.items()},
        }
        ram = RamImage.capture(self._ram, self.ram_address, self._ram_image)
        # RAM becomes a copy-on-write view of the image: restoring it drops only what changed.
        map_image(self.ram_address, self.ram_size, ram)
        self._ram_image = ram
        return Snapshot(meta, state, ram)

    def restore(self, snap: Snapshot) -> None:
        """Put this VM back into the state ``snap`` was taken in (same profile, RAM size, vCPUs).

        vCPUs the snapshot has and this VM lacks are created; the run limits keep this
        VM's budget and timeout but restart the wall clock.
        """
        check_compatible(snap.meta)
        meta, state = snap.meta, snap.state
        if meta["profile"] != self.profile.name:
            raise SnapshotError(f"snapshot is of a {meta['profile']} VM, this one is {self.profile.name}")
        if meta["mem_size"] != self.ram_size or meta["ram_base"] != self.ram_base:
            raise SnapshotError(
                f"snapshot has {meta['mem_size'] >> 20} MiB of RAM, this VM {self.ram_size >> 20} MiB"
            )
        ids = list(meta["vcpus"])
        have = [v.id for v in self.vcpus]
        if have != ids[: len(have)]:
            raise SnapshotError(f"snapshot has vCPUs {ids}, this VM {have}")
        for vcpu_id in ids[len(have) :]:
            self.create_vcpu(vcpu_id)
        changed: list[int] | None = None  # None: any page may differ
        if self._ram_image is snap.ram:
            changed = [self.ram_base + o for o in changed_pages(self._ram, snap.ram, self.ram_address)]
            self._ram.madvise(mmap.MADV_DONTNEED)
        else:
            map_image(self.ram_address, self.ram_size, snap.ram)
            self._ram_image = snap.ram
        vm = state["vm"]
        self.seed = vm["seed"]
        self.psci_version = vm["psci_version"]
        self.caps.clear()
        self.caps.update(Cap(c) for c in vm["caps"])
        set_rng_state(self.entropy, vm["entropy"])
        for name in self.SNAPSHOT_PARTS:
            getattr(self, name).restore(state[name])
        schedule = state["scheduler"]
        if schedule["name"] != self.scheduler.name:
            self.scheduler = make_scheduler(schedule["name"], self.seed, schedule["quantum"])
        self.scheduler.restore(schedule)
        # A new trace: whoever kept the old one (e.g. ABI coverage) keeps what it recorded.
        self.trace = Trace(profile=self.profile.name)
        self.trace.restore(state["trace"])
        for vcpu, data in zip(self.vcpus, state["vcpus"], strict=True):
            vcpu.restore(data, changed)
        if (self.irqchip is None) != (state["irqchip"] is None):
            raise SnapshotError(
                "snapshot has an in-kernel vGIC, this VM none"
                if self.irqchip is None
                else "snapshot has no in-kernel vGIC, this VM has one"
            )
        if self.irqchip is not None:
            self.irqchip.restore(state["irqchip"])
        for data in state["devices"]:
            device = next(
                (d for d in self.devices if type(d).__name__ == data["type"] and d.base == data["base"]), None
            )
            if device is not None:
                device.restore(data["state"])  # type: ignore[attr-defined]
        for name, data in state["extensions"].items():
            part = self.extensions.get(name)
            if part is not None:
                part.restore(data)
        for vcpu in self.vcpus:
            vcpu.trap.bind_trace(self.trace)
        for hook in on_vm_restored:
            hook(self)

    def save(self, path: str | Path) -> Snapshot:
        """Snapshot this VM into ``path`` (format: ``emu.kvm.snapshot``); returns the snapshot."""
        snap = self.snapshot()
        snap.save(path)
        return snap

    @classmethod
    def from_snapshot(cls, snap: Snapshot, *, timeout: float | None = None) -> Vm:
        """A new VM in the state of ``snap``. Devices and VMM extensions are the caller's:
        state for ones the VM does not have is ignored (``emu.vmm.machine.Machine.from_snapshot``
        brings the whole machine back, console included)."""
        vm = cls.for_snapshot(snap, timeout=timeout)
        vm.restore(snap)
        return vm

    @classmethod
    def for_snapshot(cls, snap: Snapshot, *, timeout: float | None = None) -> Vm:
        """A new VM shaped like the one ``snap`` was taken of (profile, RAM, vCPUs, caps),
        not yet restored: callers attach devices first, then ``restore(snap)``."""
        check_compatible(snap.meta)
        meta = snap.meta
        vm = cls(
            meta["profile"],
            mem_size=meta["mem_size"],
            seed=meta["seed"],
            schedule=meta["schedule"],
            quantum=meta["quantum"],
            max_insns=meta["max_insns"],
            timeout=timeout,
            trace_insns=meta["trace_insns"],
        )
        for vcpu_id in meta["vcpus"]:
            vm.create_vcpu(vcpu_id, power_off=vcpu_id != meta["vcpus"][0])
        if meta["gic"] is not None:
            vm.create_gic(meta["gic"])
        vm.caps.update(Cap(c) for c in snap.state["vm"]["caps"])
        return vm

    @staticmethod
    def _load_snapshot(path: str | Path, *, timeout: float | None = None) -> Vm:
        """``Vm.load(path)``: the VM saved in ``path`` (``vm.save``)."""
        with damaged(path):
            return Vm.from_snapshot(Snapshot.load(path), timeout=timeout)

    load = _ClassOrInstance("_load_snapshot", "load_image")

    def reseed(self, seed: int, schedule: str | None = None) -> None:
        """Draw TRNG entropy and the schedule from ``seed`` from now on (``schedule``: rr or
        random, default unchanged). Right after a boot snapshot, before anything has drawn
        from them, this is the VM ``Vm(seed=seed, schedule=...)`` would have booted."""
        self.seed = seed
        self.entropy = random.Random(seed)
        self.scheduler = make_scheduler(schedule or self.scheduler.name, seed, self.scheduler.quantum)

    def close(self) -> None:
        """Stop the watchdog; the VM must not run afterwards."""
        self.limits.close()

    def __repr__(self) -> str:
        return (
            f"Vm(profile={self.profile.name!r}, mem={self.ram_size >> 20} MiB, "
            f"vcpus={len(self.vcpus)}, caps={[c.flag_name for c in self.enabled_caps]})"
        )

    def _repr_pretty_(self, printer: rendering.PrettyPrinter, cycle: bool) -> None:
        printer.text(repr(self) + "".join(f"\n  {v!r}" for v in self.vcpus))

    def _repr_html_(self) -> str:
        return rendering.html(self)
