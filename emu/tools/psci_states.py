"""PSCI across vCPUs as a Hypothesis state machine: calls from random vCPUs, invariants after each.

Every vCPU runs the same guest stub, ``hvc #0`` then a WFI loop, with x0..x3 set by the
VMM (``KVM_SET_ONE_REG``) and the vCPU made runnable (``KVM_SET_MP_STATE``) for each call,
so each rule is a real trapped call answered by the profile's KVM. Rules: CPU_ON, a
CPU_ON race (several callers, one target, interleaved by the seeded random scheduler),
CPU_OFF, AFFINITY_INFO, PSCI_VERSION, SYSTEM_OFF, and running the VM once every vCPU is off.
Invariants: every vCPU's power state is the one the model predicts; a CPU_ON race has
exactly one SUCCESS when its target was off (none when it was on); AFFINITY_INFO agrees
with the power state; after SYSTEM_OFF every vCPU is stopped and none runs again.
Each program starts from the same booted VM, restored from its snapshot and reseeded.
``psci_state_machine(profile)`` builds the class; ``run_psci_state_machine`` runs it.
"""

from __future__ import annotations

from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from emu.abi import smccc
from emu.abi.exits import MpState, StopExit, SystemEventExit
from emu.kvm.profiles import get_profile
from emu.kvm.vcpu import reset_mpidr
from emu.kvm.vm import LOAD_ADDR, Vm
from emu.smccc import psci
from emu.tools.campaign import Booted, warm

# hvc #0; park: wfi; b park
STUB = bytes.fromhex("020000d4") + bytes.fromhex("7f2003d5") + bytes.fromhex("ffffff17")
PARK = LOAD_ADDR + 4
_R = psci.PsciRet


def _s(value: int) -> int:
    return smccc.s64(value)


def _booted_stub(profile: str, cpus: int) -> Booted:
    """A VM with the stub loaded, before its first run."""
    vm = Vm(get_profile(profile), cpus=cpus, mem_size=8 << 20, schedule="random", quantum=3, timeout=5.0)
    vm.load(STUB)
    return Booted(vm)


def psci_state_machine(profile: str, cpus: int = 4) -> type[RuleBasedStateMachine]:
    p = get_profile(profile)

    class PsciStates(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.vm: Vm | None = None
            self.on: set[int] = {0}
            self.shut_down = False

        @initialize(seed=st.integers(0, 2**16))
        def boot(self, seed: int) -> None:
            booted = warm(f"psci-states:{p.name}:{cpus}", lambda: _booted_stub(p.name, cpus))
            self.vm = booted.fresh(seed, "random")

        # -- making calls through the guest ---------------------------------------------

        def _arm(self, i: int, x0: int, *args: int) -> None:
            vcpu = self.vm.vcpus[i]  # type: ignore[union-attr]
            vcpu.mp_state = MpState.RUNNABLE  # wake it from its WFI
            vcpu.set_regs(**{f"x{n}": v for n, v in enumerate((x0, *args, 0, 0, 0)[:4])})
            vcpu.pc = LOAD_ADDR

        def call(self, i: int, x0: int, *args: int) -> int | SystemEventExit:
            self._arm(i, x0, *args)
            vcpu = self.vm.vcpus[i]  # type: ignore[union-attr]
            exit_ = vcpu.run()
            if isinstance(exit_, SystemEventExit):
                return exit_
            assert isinstance(exit_, StopExit) and exit_.reason.value == "idle", exit_
            return _s(vcpu.get_reg("x0"))

        def boot_secondary(self, i: int) -> None:
            """Let a vCPU that CPU_ON started run to its park loop: before v5.15 its reset is
            applied when it first runs, over anything the VMM wrote to its registers."""
            vcpu = self.vm.vcpus[i]  # type: ignore[union-attr]
            stop = vcpu.run()
            assert isinstance(stop, StopExit) and stop.reason.value == "idle", stop
            assert vcpu.pc == PARK + 4 and vcpu.get_reg("x0") == i, "CPU_ON's entry point or context id"

        def running(self) -> bool:
            return not self.shut_down and bool(self.on)

        def expected_cpu_on(self, target: int) -> int:
            if target >= cpus:
                return _R.INVALID_PARAMS
            return _R.ALREADY_ON if target in self.on else _R.SUCCESS

        # -- rules ------------------------------------------------------------------------

        @precondition(lambda self: self.running())
        @rule(data=st.data(), cpu=st.integers(0, cpus))
        def cpu_on(self, data: st.DataObject, cpu: int) -> None:
            target = cpu
            caller = data.draw(st.sampled_from(sorted(self.on)), label="caller")
            expected = self.expected_cpu_on(target)
            got = self.call(
                caller, psci.CPU_ON64, reset_mpidr(target) & psci.MPIDR_HWID_BITMASK, PARK, target
            )
            assert got == expected, f"CPU_ON({target}) from {caller}: {got}, expected {expected}"
            if got == _R.SUCCESS:
                self.on.add(target)
                self.boot_secondary(target)

        @precondition(lambda self: self.running() and len(self.on) >= 2)
        @rule(data=st.data(), cpu=st.integers(0, cpus - 1))
        def cpu_on_race(self, data: st.DataObject, cpu: int) -> None:
            target = cpu
            callers = data.draw(
                st.lists(st.sampled_from(sorted(self.on)), min_size=2, unique=True), label="callers"
            )
            was_on = target in self.on
            vm = self.vm
            assert vm is not None
            for i in callers:
                self._arm(i, psci.CPU_ON64, reset_mpidr(target) & psci.MPIDR_HWID_BITMASK, PARK, 0)
            for i in sorted(self.on - set(callers)):
                vm.vcpus[i].mp_state = MpState.RUNNABLE
                vm.vcpus[i].pc = PARK
            stop = vm.run()
            assert isinstance(stop, StopExit) and stop.reason.value == "idle", stop
            results = [_s(vm.vcpus[i].get_reg("x0")) for i in callers]
            wins = results.count(_R.SUCCESS)
            assert wins == (0 if was_on else 1), f"CPU_ON race on {target} from {callers}: {results}"
            assert all(r in (_R.SUCCESS, _R.ALREADY_ON) for r in results), results
            self.on.add(target)

        @precondition(lambda self: self.running())
        @rule(data=st.data())
        def cpu_off(self, data: st.DataObject) -> None:
            caller = data.draw(st.sampled_from(sorted(self.on)), label="caller")
            got = self.call(caller, psci.CPU_OFF)
            assert got == _R.SUCCESS, got
            self.on.discard(caller)

        @precondition(lambda self: self.running())
        @rule(data=st.data(), cpu=st.integers(0, cpus), level=st.integers(0, 4))
        def affinity_info(self, data: st.DataObject, cpu: int, level: int) -> None:
            target = cpu
            caller = data.draw(st.sampled_from(sorted(self.on)), label="caller")
            got = self.call(
                caller, psci.AFFINITY_INFO64, reset_mpidr(target) & psci.MPIDR_HWID_BITMASK, level
            )
            mask = psci.MPIDR_HWID_BITMASK & ~((1 << (8 * level)) - 1) if level <= 3 else 0
            aff = reset_mpidr(target) & mask
            group = [i for i in range(cpus) if reset_mpidr(i) & mask == aff]
            expected: int
            if level > 3 or not group:
                expected = _R.INVALID_PARAMS
            else:
                expected = psci.AffinityState.ON if set(group) & self.on else psci.AffinityState.OFF
            assert got == expected, f"AFFINITY_INFO({target}, level {level}): {got}, expected {expected}"

        @precondition(lambda self: self.running())
        @rule(data=st.data())
        def version(self, data: st.DataObject) -> None:
            caller = data.draw(st.sampled_from(sorted(self.on)), label="caller")
            assert self.call(caller, psci.PSCI_VERSION) == p.psci_default_version

        @precondition(lambda self: self.running())
        @rule(data=st.data())
        def system_off(self, data: st.DataObject) -> None:
            caller = data.draw(st.sampled_from(sorted(self.on)), label="caller")
            got = self.call(caller, psci.SYSTEM_OFF)
            assert isinstance(got, SystemEventExit) and got.type.name == "SHUTDOWN", got
            self.shut_down = True
            self.on.clear()

        @precondition(lambda self: self.shut_down or not self.on)
        @rule()
        def run_with_every_vcpu_off(self) -> None:
            vm = self.vm
            assert vm is not None
            calls = len(vm.hypercalls)
            stop = vm.run()
            assert isinstance(stop, StopExit) and stop.reason.value == "idle", stop
            assert len(vm.hypercalls) == calls, "a vCPU ran with every vCPU off (after CPU_OFF or SYSTEM_OFF)"

        # -- invariants ---------------------------------------------------------------------

        @invariant()
        def power_states_match(self) -> None:
            if self.vm is None:
                return
            actual = {v.id for v in self.vm.vcpus if v.mp_state != MpState.STOPPED}
            assert actual == self.on, f"vCPUs on: {sorted(actual)}, expected {sorted(self.on)}"

    PsciStates.__name__ = PsciStates.__qualname__ = f"PsciStates_{p.name.replace('-', '_').replace('.', '_')}"
    return PsciStates


def run_psci_state_machine(profile: str, examples: int, seed: int, steps: int = 20) -> str | None:
    """Run the state machine; None if every invariant held, else Hypothesis' minimal failing program."""
    from hypothesis import HealthCheck, Phase
    from hypothesis import seed as with_seed

    machine = psci_state_machine(profile)
    config = Settings(
        max_examples=examples,
        stateful_step_count=steps,
        database=None,
        deadline=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=False,
    )

    def test() -> None:
        run_state_machine_as_test(machine, settings=config)

    try:
        with_seed(seed)(test)()
    except AssertionError as err:
        notes = getattr(err, "__notes__", [])
        return "\n".join([str(err), *notes])
    return None
