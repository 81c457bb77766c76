"""A GDB Remote Serial Protocol stub: debug every vCPU of a VM as one program's threads.

Why not ``udbserver`` (0.3.0, a Rust ``gdbstub`` 0.7 behind a ctypes call, tried with
gdb-multiarch 13): it takes one ``Uc`` handle and serves it as gdb's single thread (its target is
``SingleThreadBase``, thread ``p01.01``), so several Unicorn instances cannot be threads. Its
target.xml is just ``<architecture>aarch64</architecture>`` (no fpu feature, no cpsr width of
our choosing); it has Z0-Z4, no-ack and ``vCont;c;C;s;S``, but no ``qRcmd`` ("Target does not
support this command") and no ``qThreadExtraInfo``. It runs the whole session inside a Unicorn
code hook on the emulating thread, blocking ``emu_start`` while gdb holds the stop, so emu's
scheduler cannot keep control; and it listens on 0.0.0.0.

So this package speaks the protocol itself, against :class:`~emu.tools.gdb.target.Target`:

* :mod:`.rsp` - framing, acks, escapes, Ctrl-C;
* :mod:`.target_xml` - the AArch64 description (core + fpu) and the register layout;
* :mod:`.target` - the interface a VM adapter implements, and :class:`StopEvent`;
* :mod:`.server` - :class:`GdbServer` / :class:`GdbSession`, the all-stop packet loop.
"""

from emu.tools.gdb.server import GdbServer, GdbSession, Outcome
from emu.tools.gdb.target import BreakpointKind, StopEvent, StopReason, Target

__all__ = ["BreakpointKind", "GdbServer", "GdbSession", "Outcome", "StopEvent", "StopReason", "Target"]
