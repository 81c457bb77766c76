"""The timeline picture: one lane per vCPU over guest virtual time (``Trace.plot``).

Bars show each vCPU's power state (off / on / suspended / halted), markers the hypercalls
labelled with their function, ticks the interrupts raised and taken, vertical lines the
userspace exits and system events.
Needs matplotlib (``pip install 'hvc-emu[plot]'``).
"""

from __future__ import annotations

from pathlib import Path

from emu import rendering
from emu.abi.exits import HypercallExit, Power
from emu.abi.trace import Trace
from emu.errors import EmuError

COLORS = {Power.ON: "#2e8b57", Power.OFF: "#d3d3d3", Power.SUSPENDED: "#6a5acd", Power.HALTED: "#f4a460"}
MAX_LABELS_PER_LANE = 40


def _short(name: str) -> str:
    return name.removeprefix("PSCI_").removeprefix("SMCCC_")


def plot_timeline(trace: Trace, path: str | Path | None = None, ax=None):
    """Draw ``trace``; save to ``path`` if given. Returns the matplotlib Figure."""
    try:
        import matplotlib

        if path is not None and ax is None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise EmuError("the timeline needs matplotlib: pip install 'hvc-emu[plot]'") from None

    vcpus = trace.vcpus or [0]
    end = max(trace.end_ns, 1)
    span = end * 1.04
    if ax is None:
        fig, ax = plt.subplots(figsize=(12, 1.2 + 0.7 * len(vcpus)))
    else:
        fig = ax.figure
    lane = {v: i for i, v in enumerate(vcpus)}
    us = 1 / 1000

    # Power-state bars, from the initial state through every change.
    for vcpu in vcpus:
        state = trace.initial_power.get(vcpu, Power.OFF)
        start = 0
        for event in trace.power:
            if event.vcpu != vcpu:
                continue
            ax.barh(
                lane[vcpu],
                (event.time_ns - start) * us,
                left=start * us,
                height=0.5,
                color=COLORS[state],
                edgecolor="none",
            )
            state, start = event.power, event.time_ns
        ax.barh(
            lane[vcpu],
            (span - start) * us,
            left=start * us,
            height=0.5,
            color=COLORS[state],
            edgecolor="none",
        )

    # Hypercalls as markers with their function's name (thinned if a lane is crowded).
    for vcpu in vcpus:
        calls = [e for e in trace.hypercalls if e.vcpu == vcpu]
        step = max(1, len(calls) // MAX_LABELS_PER_LANE)
        for i, call in enumerate(calls):
            ax.plot(call.time_ns * us, lane[vcpu], marker="v", color="black", markersize=5)
            if i % step == 0:
                ax.annotate(
                    _short(call.name),
                    (call.time_ns * us, lane[vcpu] + 0.28),
                    fontsize=6,
                    rotation=45,
                    ha="left",
                    va="bottom",
                )

    # Interrupts taken (acknowledged) as small ticks under the lane: timer PPIs, IPIs, SPIs.
    for what, color, dy in (("acked", "#8e44ad", 0.3), ("raised", "#d4a6e8", 0.36)):
        taken = [(e.time_ns, e.vcpu) for e in trace.interrupts if e.what == what and e.vcpu is not None]
        points = [(t, lane[v]) for t, v in taken if v in lane]
        if points:
            ax.scatter(
                [t * us for t, _ in points],
                [y + dy for _, y in points],
                marker="|",
                s=12,
                color=color,
                linewidths=0.6,
            )

    # Userspace exits and VM-wide events as vertical lines.
    for call in trace.hypercalls:
        if isinstance(call.exit, HypercallExit):
            ax.axvline(call.time_ns * us, color="#1f77b4", linewidth=0.6, linestyle=":")
    for vm_event in trace.vm_events:
        if vm_event.what in ("system_event", "reboot"):
            ax.axvline(vm_event.time_ns * us, color="#c0392b", linewidth=1.2)
            ax.annotate(
                vm_event.detail,
                (vm_event.time_ns * us, len(vcpus) - 0.4),
                fontsize=7,
                color="#c0392b",
                ha="right",
            )

    ax.set_yticks(range(len(vcpus)), [f"vCPU {v}" for v in vcpus])
    ax.set_ylim(-0.6, len(vcpus) - 0.2)
    ax.set_xlim(0, span * us)
    ax.invert_yaxis()
    ax.set_xlabel("guest virtual time (us)")
    ax.set_title(f"emu timeline ({trace.profile or 'profile ?'}, {len(trace.hypercalls)} hypercalls)")
    handles = [Patch(color=c, label=p.value) for p, c in COLORS.items()]
    handles.append(Patch(color="#c0392b", label="system event"))
    if trace.interrupts:
        handles.append(Patch(color="#8e44ad", label="interrupt taken"))
        handles.append(Patch(color="#d4a6e8", label="interrupt raised"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def register() -> None:
    """Make ``Trace.plot`` draw this timeline."""
    rendering.register(Trace, plot=plot_timeline)
