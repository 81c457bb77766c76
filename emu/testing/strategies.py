"""Hypothesis strategies for hypercalls, for your own tests (``pip install 'hvc-emu[fuzz]'``).

Fuzz your VMM's ``handle_hypercall`` with every call a guest can make::

    from hypothesis import given
    from emu.testing.strategies import smccc_calls
    from emu.tools.fuzz import run_case
    from emu.vmm.machine import Vmm

    @given(smccc_calls("rfc-2021", caps=("ARM_HVC_TO_USER",)))
    def test_my_vmm_answers_every_call(case):
        outcome = run_case(case, Vmm(handle_hypercall))
        assert not outcome.stop.startswith("host exception"), outcome.stop

``smccc_calls`` draws ``emu.tools.fuzz.Case`` values (conduit, immediate, x0..x17, caps),
``function_ids`` / ``register_values`` / ``arguments`` the parts; ``emu.tools.fuzz.expect``
and ``check_case`` hold KVM's rules, ``emu.tools.psci_states`` the PSCI state machine.
"""

from emu.tools.strategies import (
    arguments,
    cap_sets,
    filter_ranges,
    firmware_bitmaps,
    function_ids,
    in_kernel_ids,
    known_ids,
    neighbours,
    profiles,
    register_values,
    smccc_calls,
    x0_values,
)

__all__ = [
    "arguments",
    "cap_sets",
    "filter_ranges",
    "firmware_bitmaps",
    "function_ids",
    "in_kernel_ids",
    "known_ids",
    "neighbours",
    "profiles",
    "register_values",
    "smccc_calls",
    "x0_values",
]
