"""ABI coverage: which SMCCC functions and return codes runs exercised, against the profile.

The table is everything the profile's KVM answers in the kernel (its explicit function
switch, the EL2 workaround fast path, and the PSCI functions of its default version plus
the 0.1 ids), grouped by service. Coverage can come from traces of runs in this process
(the pytest kit's ``--emu-coverage`` subscribes to ``emu.kvm.vm.on_vm_created``), from JSON
Lines traces, or from running programs (``emu coverage``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from emu.abi import smccc
from emu.abi.trace import Trace
from emu.kvm.caps import Cap
from emu.kvm.profiles import Profile, get_profile
from emu.smccc import psci
from emu.smccc.decode import describe_result


def _group(fid: int) -> str:
    if fid in psci.NAMES:
        return (
            "PSCI 0.1 (KVM ids)" if fid >= psci.KVM_PSCI_FN_BASE and fid <= psci.KVM_PSCI_MIGRATE else "PSCI"
        )
    if smccc.TRNG_VERSION <= fid <= smccc.TRNG_RND32 or fid == smccc.TRNG_RND64:
        return "TRNG"
    return smccc.owner_name(smccc.FidFields.of(fid).owner)


def in_kernel_functions(profile: Profile) -> dict[int, str]:
    """Every function id the profile's KVM answers itself (or turns into a system event),
    with its group: the switch, the EL2 fast path, and PSCI up to the newest version the
    profile accepts (SYSTEM_RESET2 from 1.1, SYSTEM_OFF2 from 1.3, SYSTEM_SUSPEND where
    the capability exists) plus the 0.1 ids."""
    fids = set(profile.handlers) | set(profile.hvc_fast_path) | set(psci.IMPLEMENTED_0_1)
    newest = max(profile.psci_versions)
    if newest >= psci.PSCI_1_0:
        fids |= psci.IMPLEMENTED_1_0
    if newest >= psci.PSCI_1_1:
        fids |= {psci.SYSTEM_RESET2, psci.SYSTEM_RESET2_64}
    if newest >= psci.PSCI_1_3:
        fids |= {psci.SYSTEM_OFF2, psci.SYSTEM_OFF2_64}
    if Cap.ARM_SYSTEM_SUSPEND in profile.enableable_caps:
        fids |= {psci.SYSTEM_SUSPEND, psci.SYSTEM_SUSPEND64}
    return {fid: _group(fid) for fid in sorted(fids)}


@dataclass
class Coverage:
    """Functions and return codes seen, per profile."""

    traces: list[Trace] = field(default_factory=list)

    def add(self, trace: Trace) -> None:
        self.traces.append(trace)

    def seen(self) -> dict[str, dict[int, set[str]]]:
        """profile -> fid -> decoded results seen (in-kernel answers and VMM answers)."""
        out: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        for trace in self.traces:
            for event in trace.hypercalls:
                results = out[trace.profile][event.fid]
                results.add("exit" if event.result is None else describe_result(event.fid, event.result))
        return out

    def report(self) -> dict[str, Any]:
        """Per profile and group: functions covered out of the table, missing ones, results."""
        seen = self.seen()
        report: dict[str, Any] = {}
        for name in sorted(seen) or []:
            table = in_kernel_functions(get_profile(name))
            groups: dict[str, Any] = {}
            for fid, group in table.items():
                entry = groups.setdefault(group, {"functions": 0, "covered": 0, "missing": [], "results": {}})
                entry["functions"] += 1
                if fid in seen[name]:
                    entry["covered"] += 1
                    entry["results"][smccc.name_of(fid)] = sorted(seen[name][fid])
                else:
                    entry["missing"].append(smccc.name_of(fid))
            outside = sorted(smccc.name_of(f) for f in seen[name] if f not in table)
            report[name] = {
                "groups": groups,
                "covered": sum(g["covered"] for g in groups.values()),
                "functions": len(table),
                "forwarded_or_unhandled": outside,
            }
        return report


def report_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for profile, data in report.items():
        lines.append(
            f"ABI coverage, profile {profile}: {data['covered']}/{data['functions']} in-kernel functions"
        )
        for group, g in data["groups"].items():
            lines.append(
                f"  {group:<20} {g['covered']:>2}/{g['functions']:<2}"
                + (f"  missing: {', '.join(g['missing'])}" if g["missing"] else "")
            )
            for function, results in g["results"].items():
                lines.append(f"      {function:<28} {', '.join(results)}")
        if data["forwarded_or_unhandled"]:
            lines.append(
                f"  not in the table (forwarded/unhandled): {', '.join(data['forwarded_or_unhandled'])}"
            )
    return lines or ["ABI coverage: no hypercalls recorded"]
