"""The session loop, packet by packet, over a socketpair against the fake target."""

from __future__ import annotations

import socket
import threading
from collections import deque

import pytest

from emu.errors import EmuError
from emu.tools.gdb import GdbServer, GdbSession, StopEvent, rsp
from emu.tools.gdb.target_xml import CPSR, PC, TARGET_XML
from tests.tools.gdb_fake import ENTRY, FakeTarget, Scripted

TIMEOUT = 10.0


class Client:
    """gdb's side of the wire, by hand: send a packet, read the reply, ack as gdb would."""

    def __init__(self, target: FakeTarget, *, ack: bool = False) -> None:
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.sock.settimeout(TIMEOUT)
        self.session = GdbSession(target, theirs, timeout=TIMEOUT)
        self.outcome: str | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.parser = rsp.PacketParser()
        self.events: deque[rsp.Event] = deque()
        self.ack = True
        if not ack:
            assert self.cmd(b"QStartNoAckMode") == b"OK"
            self.ack = False

    def _serve(self) -> None:
        self.outcome = self.session.run()

    def event(self) -> rsp.Event:
        while not self.events:
            chunk = self.sock.recv(4096)
            assert chunk, "stub closed the connection"
            self.events.extend(self.parser.feed(chunk))
        return self.events.popleft()

    def send(self, payload: bytes) -> None:
        self.sock.sendall(rsp.frame(payload))
        if self.ack:
            assert self.event().kind == "ack"

    def recv(self) -> bytes:
        event = self.event()
        assert event.kind == "packet" and event.valid, event
        if self.ack:
            self.sock.sendall(b"+")
        return event.data

    def cmd(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv()

    def finish(self) -> str | None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "session did not end"
        self.sock.close()
        return self.outcome


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget(3, off=(2,))


@pytest.fixture
def client(target):
    c = Client(target)
    yield c
    if c.thread.is_alive():
        c.sock.close()
        c.thread.join(TIMEOUT)


# -- framing and acks ---------------------------------------------------------------------------


def test_ack_mode_until_no_ack_is_asked_for(target):
    c = Client(target, ack=True)
    c.sock.sendall(rsp.frame(b"?"))
    assert c.event().kind == "ack"
    assert c.recv() == b"T05thread:1;"
    assert c.cmd(b"QStartNoAckMode") == b"OK"
    c.ack = False
    c.sock.sendall(rsp.frame(b"qC"))
    assert c.event() == rsp.Event("packet", b"QC1", True)  # no '+' in front any more
    c.sock.sendall(rsp.frame(b"D"))
    assert c.recv() == b"OK"
    assert c.finish() == "detached"


def test_bad_checksum_is_nacked_and_resent(target):
    c = Client(target, ack=True)
    c.sock.sendall(b"$qC#00")
    assert c.event().kind == "nack"
    assert c.cmd(b"qC") == b"QC1"


def test_reply_is_resent_after_a_nack(target):
    c = Client(target, ack=True)
    c.sock.sendall(rsp.frame(b"qC"))
    assert c.event().kind == "ack"
    assert c.event().data == b"QC1"
    c.sock.sendall(b"-")
    assert c.event().data == b"QC1"
    c.sock.sendall(b"+")
    assert c.cmd(b"qAttached") == b"1"


# -- queries ------------------------------------------------------------------------------------


def test_qsupported(client):
    features = client.cmd(b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+").split(b";")
    assert features[0].startswith(b"PacketSize=")
    assert set(features[1:]) == {
        b"qXfer:features:read+",
        b"QStartNoAckMode+",
        b"vContSupported+",
        b"swbreak+",
        b"hwbreak+",
    }


def test_target_xml_in_chunks(client):
    document, offset = b"", 0
    while True:
        reply = client.cmd(b"qXfer:features:read:target.xml:%x,%x" % (offset, 0x301))
        document += rsp.unescape(reply[1:])
        offset += 0x301
        if reply[:1] == b"l":
            break
        assert reply[:1] == b"m"
    assert document == TARGET_XML
    assert client.cmd(b"qXfer:features:read:target.xml:%x,10" % (len(TARGET_XML) + 5)) == b"l"
    assert client.cmd(b"qXfer:features:read:other.xml:0,10") == b"E00"
    assert client.cmd(b"qXfer:libraries:read::0,10") == b""


def test_threads(client):
    assert client.cmd(b"qfThreadInfo") == b"m1,2,3"
    assert client.cmd(b"qsThreadInfo") == b"l"
    assert client.cmd(b"qC") == b"QC1"
    assert client.cmd(b"qAttached") == b"1"
    assert client.cmd(b"T2") == b"OK"
    assert client.cmd(b"T4") == b"E01"
    assert client.cmd(b"T0") == b"E01"
    info = client.cmd(b"qThreadExtraInfo,3")
    assert rsp.hex_decode(info).decode() == "vCPU 2, MPIDR 0x80000002, off (cannot be resumed)"
    assert client.cmd(b"qThreadExtraInfo,9") == b"E01"
    assert client.cmd(b"Hg2") == b"OK"
    assert client.cmd(b"qC") == b"QC2"
    assert client.cmd(b"Hg0") == b"OK"  # "any": stays on thread 2
    assert client.cmd(b"qC") == b"QC2"
    assert client.cmd(b"Hg7") == b"E01"
    assert client.cmd(b"Hc-1") == b"OK"
    assert client.cmd(b"Hgp1.3") == b"OK"  # multiprocess form, in case gdb uses it
    assert client.cmd(b"qC") == b"QC3"


def test_unknown_and_malformed_packets(client):
    assert client.cmd(b"vMustReplyEmpty") == b""
    assert client.cmd(b"qTStatus") == b""
    assert client.cmd(b"!") == b""
    assert client.cmd(b"mzz,4") == b"E01"
    assert client.cmd(b"m1000") == b"E01"
    assert client.cmd(b"Hgxyz") == b"E01"
    assert client.cmd(b"qSymbol::") == b"OK"


# -- registers ----------------------------------------------------------------------------------


def _reg(client: Client, num: int) -> int:
    return int.from_bytes(rsp.hex_decode(client.cmd(b"p%x" % num)), "little")


def test_registers_per_thread(client, target):
    block = client.cmd(b"g")
    assert block[:16] == (0x1000).to_bytes(8, "little").hex().encode()
    assert client.cmd(b"Hg2") == b"OK"
    assert _reg(client, 0) == 0x2000
    assert _reg(client, 30) == 0x2000 + 30
    assert _reg(client, PC) == ENTRY + 0x100
    assert client.cmd(b"p21") == b"c5030000"  # cpsr: 4 bytes
    assert len(client.cmd(b"p22")) == 32  # v0: 16 bytes
    assert _reg(client, 0x22) == 0x00112233445566778899AABBCCDDEEFF
    assert client.cmd(b"p43") == b"00000003"  # fpcr
    assert client.cmd(b"p44") == b"E01"  # past the last register


def test_write_registers(client, target):
    assert client.cmd(b"Hg3") == b"OK"
    assert client.cmd(b"P5=3412000000000000") == b"OK"
    assert target.regs[2][5] == 0x1234
    assert client.cmd(b"P21=00000000") == b"OK"
    assert target.regs[2][CPSR] == 0
    assert client.cmd(b"P21=0000") == b"E01"  # wrong width
    block = bytearray(rsp.hex_decode(client.cmd(b"g")))
    block[8 * 7 : 8 * 8] = (0xABCD).to_bytes(8, "little")
    target.calls.clear()
    assert client.cmd(b"G" + rsp.hex_encode(bytes(block))) == b"OK"
    assert target.regs[2][7] == 0xABCD
    assert [c for c in target.calls if c[0] == "write_register"] == [("write_register", 2, 7, 0xABCD)]
    assert client.cmd(b"G00") == b"E01"


# -- memory -------------------------------------------------------------------------------------


def test_read_memory(client, target):
    assert client.cmd(b"m1000,4") == b"10111213"
    assert client.cmd(b"m101e,8") == b"2e2f"  # runs into unmapped memory
    assert client.cmd(b"m5000,4") == b"E14"
    assert client.cmd(b"mffffffffffffffff,4") == b"E14"
    assert client.cmd(b"m1000,0") == b""
    assert client.cmd(b"Hg2") == b"OK"
    client.cmd(b"m1000,4")
    assert target.calls[-1] == ("read_memory", 1, 0x1000, 4)  # through the selected thread


def test_write_memory(client, target):
    assert client.cmd(b"M1004,2:aabb") == b"OK"
    assert client.cmd(b"m1004,2") == b"aabb"
    assert client.cmd(b"M5000,1:00") == b"E14"
    assert client.cmd(b"M1004,2:aa") == b"E01"  # length disagrees with data
    assert client.cmd(b"X1000,0:") == b"OK"  # gdb's probe for X
    data = b"$#}*\x03ok"
    assert client.cmd(b"X1008,%x:" % len(data) + rsp.escape(data)) == b"OK"
    assert client.cmd(b"m1008,%x" % len(data)) == rsp.hex_encode(data)
    assert client.cmd(b"X5000,1:\x00") == b"E14"


# -- breakpoints --------------------------------------------------------------------------------


def test_breakpoints_and_watchpoints(client, target):
    for z, kind in enumerate(["sw", "hw", "write", "read", "access"]):
        assert client.cmd(b"Z%d,40080010,4" % z) == b"OK"
        assert (kind, 0x40080010, 4) in target.breakpoints
    assert client.cmd(b"Z0,40080010,4") == b"OK"  # again: no second insertion
    assert [c for c in target.calls if c[0] == "add_breakpoint"].count(
        ("add_breakpoint", "sw", 0x40080010, 4)
    ) == 1
    assert client.cmd(b"Z0,40080020,4;X1,0f") == b"OK"  # a condition is ignored
    assert ("sw", 0x40080020, 4) in target.breakpoints
    assert client.cmd(b"z2,40080010,4") == b"OK"
    assert ("write", 0x40080010, 4) not in target.breakpoints
    assert client.cmd(b"z2,40080010,4") == b"OK"  # idempotent
    assert client.cmd(b"Z0,dead0000,4") == b"E01"  # the target said no
    assert client.cmd(b"Z5,1000,4") == b""  # not a kind we know
    assert client.cmd(b"Z0,1000") == b"E01"


# -- running ------------------------------------------------------------------------------------


def test_continue_to_breakpoint_then_step_one_thread(target):
    target.script.append(Scripted(StopEvent(1, "breakpoint", 0x40080010), pc=0x40080010))
    c = Client(target)
    assert c.cmd(b"Z0,40080010,4") == b"OK"
    assert c.cmd(b"vCont?") == b"vCont;c;C;s;S"
    assert c.cmd(b"vCont;c") == b"T05thread:2;swbreak:;"
    assert c.cmd(b"qC") == b"QC2"  # the stopped thread is current
    assert _reg(c, PC) == 0x40080010
    others = (target.regs[0][PC], target.regs[2][PC])
    assert c.cmd(b"vCont;s:2;c") == b"T05thread:2;"
    assert [call for call in target.calls if call[0] == "resume"][-1] == ("resume", 1)
    assert target.regs[1][PC] == 0x40080014
    assert (target.regs[0][PC], target.regs[2][PC]) == others  # the others stayed stopped
    assert c.cmd(b"vCont;c:1;s:3") == b"T05thread:3;"  # leftmost action per thread
    assert c.cmd(b"vCont;s:1;s:2") == b"E01"  # all-stop: one step at a time
    assert c.cmd(b"vCont;t") == b"E01"


def test_legacy_continue_and_step(target):
    target.script.append(Scripted(StopEvent(0, "hw-breakpoint", 0x40080040), pc=0x40080040))
    c = Client(target)
    assert c.cmd(b"Hc3") == b"OK"
    assert c.cmd(b"s") == b"T05thread:3;"
    assert target.regs[2][PC] == ENTRY + 0x204
    assert c.cmd(b"S05") == b"T05thread:3;"
    assert c.cmd(b"Hc-1") == b"OK"
    assert c.cmd(b"Hg1") == b"OK"
    assert c.cmd(b"c40080030") == b"T05thread:1;hwbreak:;"
    assert ("write_register", 0, PC, 0x40080030) in target.calls


@pytest.mark.parametrize("reason, field", [("watch", b"watch"), ("rwatch", b"rwatch"), ("awatch", b"awatch")])
def test_watchpoint_stops(target, reason, field):
    target.script.append(Scripted(StopEvent(1, reason, 0x2000), writes={0x2000: b"\x2a"}))
    c = Client(target)
    assert c.cmd(b"Z2,2000,4") == b"OK"
    assert c.cmd(b"c") == b"T05thread:2;" + field + b":2000;"


def test_ctrl_c_while_running(target):
    c = Client(target)
    c.send(b"vCont;c")
    _wait_until_running(target)
    c.sock.sendall(b"\x03")
    assert c.recv() == b"T02thread:1;"
    assert c.cmd(b"?") == b"T02thread:1;"


def test_ctrl_c_in_the_same_write_as_the_resume(target):
    c = Client(target)
    c.sock.sendall(rsp.frame(b"c") + b"\x03")
    assert c.recv() == b"T02thread:1;"


def test_ctrl_c_while_stopped_is_ignored(client):
    client.sock.sendall(b"\x03")
    assert client.cmd(b"qC") == b"QC1"


def test_signal_stop(target):
    target.script.append(Scripted(StopEvent(2, "signal", signal=11)))
    c = Client(target)
    assert c.cmd(b"c") == b"T0bthread:3;"


def test_exit_ends_the_program(target):
    target.script.append(Scripted(StopEvent(0, "exited", exit_status=3)))
    c = Client(target)
    assert c.cmd(b"Z0,40080010,4") == b"OK"
    assert c.cmd(b"vCont;c") == b"W03"
    assert c.cmd(b"?") == b"W03"
    assert c.cmd(b"qfThreadInfo") == b"l"
    assert c.cmd(b"g") == b"E01"
    assert c.cmd(b"m1000,4") == b"E01"
    c.sock.close()
    assert c.finish() == "exited"
    assert not target.detached and not target.killed
    assert ("remove_breakpoint", "sw", 0x40080010, 4) not in target.calls


def test_terminated(target):
    target.script.append(Scripted(StopEvent(0, "terminated", signal=9)))
    c = Client(target)
    assert c.cmd(b"c") == b"X09"


# -- monitor, kill, detach ----------------------------------------------------------------------


def _monitor(c: Client, command: bytes) -> tuple[bytes, bytes]:
    c.send(b"qRcmd," + rsp.hex_encode(command))
    out = b""
    while True:
        reply = c.recv()
        if not reply.startswith(b"O") or reply == b"OK":
            return out, reply
        out += rsp.hex_decode(reply[1:])


def test_monitor(client, target):
    assert _monitor(client, b"hello") == (b"hello from the fake target\n", b"OK")
    assert ("monitor", "hello") in target.calls
    target.monitor_output["long"] = "x" * 2000 + "\n"
    assert _monitor(client, b"long") == (b"x" * 2000 + b"\n", b"OK")
    target.monitor_output["quiet"] = ""
    assert client.cmd(b"qRcmd," + rsp.hex_encode(b"quiet")) == b"OK"
    assert client.cmd(b"qRcmd,zz") == b"E01"


def test_monitor_errors_are_shown_not_raised(target):
    def monitor(command: str) -> str:
        raise EmuError("no such vCPU: 7")

    target.monitor = monitor
    c = Client(target)
    assert _monitor(c, b"vcpu 7") == (b"no such vCPU: 7\n", b"OK")


def test_kill(client, target):
    assert client.cmd(b"Z0,40080010,4") == b"OK"
    client.send(b"k")
    assert client.finish() == "killed"
    assert target.killed and not target.detached
    assert not target.breakpoints


def test_vkill(client, target):
    assert client.cmd(b"vKill;a410") == b"OK"
    assert client.finish() == "killed"
    assert target.killed


def test_detach_leaves_the_target_clean(client, target):
    assert client.cmd(b"Z1,40080010,4") == b"OK"
    assert client.cmd(b"Z3,2000,8") == b"OK"
    assert client.cmd(b"D") == b"OK"
    assert client.finish() == "detached"
    assert target.detached and not target.breakpoints


def test_hang_up_detaches(client, target):
    assert client.cmd(b"Z0,40080010,4") == b"OK"
    client.sock.close()
    assert client.finish() == "disconnected"
    assert target.detached and not target.breakpoints


def test_hang_up_while_running_stops_the_target(target):
    c = Client(target)
    c.send(b"c")
    _wait_until_running(target)
    c.sock.close()
    assert c.finish() == "disconnected"
    assert target.detached


def test_idle_timeout_ends_the_session():
    ours, theirs = socket.socketpair()
    with ours:
        assert GdbSession(FakeTarget(1), theirs, timeout=0.2).run() == "disconnected"


# -- the listening server -----------------------------------------------------------------------


def test_server_on_an_ephemeral_port():
    target = FakeTarget(2)
    server = GdbServer(target, timeout=TIMEOUT, accept_timeout=TIMEOUT)
    assert server.host == "127.0.0.1" and server.port > 0
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(server.serve()), daemon=True)
    thread.start()
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(rsp.frame(b"qfThreadInfo"))
        reply = b""
        while not reply.endswith(b"#%02x" % rsp.checksum(b"m1,2")):
            chunk = sock.recv(100)
            assert chunk
            reply += chunk
        assert reply == b"+" + rsp.frame(b"m1,2")
        sock.sendall(b"+" + rsp.frame(b"D"))
        while b"#" not in (data := sock.recv(100)):
            assert data
    thread.join(TIMEOUT)
    assert result == ["detached"]


def test_server_accept_timeout():
    server = GdbServer(FakeTarget(1), accept_timeout=0.05)
    with pytest.raises(TimeoutError):
        server.serve()


def _wait_until_running(target: FakeTarget) -> None:
    """Block (bounded) until the fake is inside a resume that only Ctrl-C or a hang-up ends."""
    assert target.running.wait(TIMEOUT), f"the target never ran; saw {target.calls}"
