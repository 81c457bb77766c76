"""VMM side of firmware/hotadd.S: userspace PSCI that refuses a CPU until it is plugged.

emu's userspace PSCI (enabled by KVM_CAP_ARM_PSCI_TO_USER) asks ``cpu_on_policy`` before
every CPU_ON: None lets it proceed, a PSCI return code refuses it. vCPU 2 starts "not
present"; the first request for it is refused with DENIED and, as an operator would,
the VMM then plugs it in, so the guest's retry succeeds. ``snapshot``/``restore`` let a
snapshot of the run (``emu run --save``) carry which vCPUs are plugged in.
"""

from emu.vmm.user_psci import HotplugPolicy

policy = HotplugPolicy(present={0, 1})


def cpu_on_policy(caller, target):
    verdict = policy(caller, target)
    if verdict is not None:
        policy.plug(target.id)
    return verdict


# Snapshots of the run carry the policy's state (which vCPUs are plugged in).
def snapshot():
    return policy.snapshot()


def restore(state):
    policy.restore(state)
