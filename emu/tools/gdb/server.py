"""The stub itself: one gdb connection, all-stop, served against a :class:`~.target.Target`.

:class:`GdbServer` listens and accepts one connection; :class:`GdbSession` runs the packet loop
over any connected socket (the server's, or one end of a socketpair in tests).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable
from typing import ClassVar, Literal

from emu.errors import EmuError
from emu.tools.gdb import rsp
from emu.tools.gdb.target import (
    FINAL_REASONS,
    SIGINT,
    SIGTRAP,
    Z_KINDS,
    BreakpointKind,
    StopEvent,
    Target,
)
from emu.tools.gdb.target_xml import ANNEXES, PC, REGISTERS

Outcome = Literal["detached", "killed", "exited", "disconnected"]

PACKET_SIZE = 0x4000
_MAX_MEMORY = (PACKET_SIZE - 16) // 2  # bytes per m reply (two hex digits a byte)
_MONITOR_CHUNK = 512  # text bytes per O packet

OK, EMPTY = b"OK", b""
E_GENERIC = b"E01"  # no such thread, target refused, malformed packet
E_FAULT = b"E14"  # EFAULT: the address is not mapped

SUPPORTED = (
    f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;QStartNoAckMode+;vContSupported+;swbreak+;hwbreak+"
).encode("ascii")

_STOP_FIELDS = {
    "breakpoint": "swbreak:;",
    "hw-breakpoint": "hwbreak:;",
}
_QUERY_NAME = re.compile(r"[qQ][A-Za-z]+")
_WATCH_FIELDS = {"watch": "watch", "rwatch": "rwatch", "awatch": "awatch"}


class _Malformed(Exception):
    """A packet that does not parse: answered with an error, never raised to the caller."""


def _int(text: str | bytes, what: str = "number") -> int:
    try:
        return int(text, 16)
    except (TypeError, ValueError):
        raise _Malformed(f"bad {what} {text!r}") from None


def parse_thread_id(text: str) -> int:
    """gdb thread id -> -1 (all), 0 (any), or a positive thread id; ``pPID.TID`` accepted."""
    if text.startswith("p"):
        text = text.partition(".")[2] or "-1"
    if text == "-1":
        return -1
    value = _int(text, "thread id")
    if value < 0:
        raise _Malformed(f"bad thread id {text!r}")
    return value


def stop_reply(stop: StopEvent) -> bytes:
    """The stop reply packet gdb expects for ``stop`` (vCPU ids shown as thread id vCPU + 1)."""
    if stop.reason == "exited":
        return b"W%02x" % ((stop.exit_status or 0) & 0xFF)
    if stop.reason == "terminated":
        return b"X%02x" % ((stop.signal if stop.signal is not None else 9) & 0xFF)
    if stop.reason == "interrupt":
        sig = SIGINT
    elif stop.reason == "signal":
        sig = stop.signal if stop.signal is not None else SIGTRAP
    else:
        sig = SIGTRAP
    text = f"T{sig & 0xFF:02x}thread:{stop.tid + 1:x};"
    if stop.reason in _STOP_FIELDS:
        text += _STOP_FIELDS[stop.reason]
    elif stop.reason in _WATCH_FIELDS:
        text += f"{_WATCH_FIELDS[stop.reason]}:{stop.address:x};"
    return text.encode("ascii")


def encode_registers(values: list[int]) -> bytes:
    """The ``g`` reply: every register little-endian at its description width, as hex."""
    if len(values) != len(REGISTERS):
        raise ValueError(f"target gave {len(values)} registers, the description has {len(REGISTERS)}")
    return b"".join(
        rsp.hex_encode((value & ((1 << reg.bits) - 1)).to_bytes(reg.size, "little"))
        for reg, value in zip(REGISTERS, values, strict=False)
    )


def decode_registers(payload: bytes) -> list[int]:
    """The inverse of :func:`encode_registers` (a ``G`` packet's payload)."""
    try:
        raw = rsp.hex_decode(payload)
    except ValueError:
        raise _Malformed("register data is not hex") from None
    if len(raw) != sum(reg.size for reg in REGISTERS):
        raise _Malformed(f"register data is {len(raw)} bytes")
    values, offset = [], 0
    for reg in REGISTERS:
        values.append(int.from_bytes(raw[offset : offset + reg.size], "little"))
        offset += reg.size
    return values


class GdbSession:
    """The packet loop for one connected debugger. :meth:`run` returns how the session ended.

    ``timeout`` bounds each socket read/write (``None``: no bound, for a person at the gdb
    prompt). ``trace(direction, payload)``, if given, sees every packet ("<" in, ">" out).
    """

    def __init__(
        self,
        target: Target,
        sock: socket.socket,
        *,
        timeout: float | None = None,
        trace: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.target = target
        self.conn = rsp.Connection(sock, timeout)
        self._trace = trace
        threads = target.threads()
        first = threads[0] if threads else 0
        self.general_tid = first  # vCPU id for g/p/m and friends (Hg)
        self.continue_tid: int | None = None  # vCPU id for c/s (Hc); None = all
        self.last_stop = StopEvent(first, "signal", signal=SIGTRAP)
        self.breakpoints: set[tuple[BreakpointKind, int, int]] = set()
        self.outcome: Outcome | None = None
        self._gone = False  # the target exited: nothing left to touch

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        try:
            while self.outcome is None:
                try:
                    packet = self.conn.recv_packet()
                    if self._trace:
                        self._trace("<", packet)
                    try:
                        reply = self.handle(packet)
                    except _Malformed:
                        reply = E_GENERIC
                    if reply is not None:
                        self._send(reply)
                except rsp.ConnectionClosed:
                    self._end("exited" if self._gone else "disconnected")
        finally:
            self.conn.close()
        return self.outcome or "disconnected"

    def _send(self, payload: bytes) -> None:
        if self._trace:
            self._trace(">", payload)
        self.conn.send_packet(payload)

    def _end(self, outcome: Outcome) -> None:
        """Leave the target clean: take out what gdb inserted, then let it go (or not)."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self._gone:
            return
        for kind, addr, length in sorted(self.breakpoints):
            self.target.remove_breakpoint(kind, addr, length)
        self.breakpoints.clear()
        if outcome == "killed":
            self.target.kill()
        elif outcome in ("detached", "disconnected"):
            self.target.detach()

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, packet: bytes) -> bytes | None:
        """The reply to one packet (``None``: send nothing, e.g. after ``k``)."""
        if not packet:
            return EMPTY
        head = chr(packet[0])
        if head == "X":
            return self._write_binary(packet)
        text = packet.decode("latin-1")
        simple = self._SIMPLE.get(head)
        if simple is not None:
            return simple(self, text)
        if head == "q" or head == "Q":
            return self._query(text)
        if head == "v":
            return self._v_packet(text)
        return EMPTY

    # -- queries -----------------------------------------------------------------------------

    def _query(self, text: str) -> bytes | None:
        match = _QUERY_NAME.match(text)
        name = match.group() if match else text
        args = text[len(name) + 1 :]
        if name == "qSupported":
            return SUPPORTED
        if name == "QStartNoAckMode":
            # This OK still travels under acks; everything after it does not.
            self._send(OK)
            self.conn.ack_mode = False
            return None
        if name == "qAttached":
            return b"1"
        if name == "qfThreadInfo":
            threads = self._threads()
            if not threads:
                return b"l"
            return b"m" + ",".join(f"{tid + 1:x}" for tid in threads).encode("ascii")
        if name == "qsThreadInfo":
            return b"l"
        if name == "qC":
            return f"QC{self.general_tid + 1:x}".encode("ascii")
        if name == "qThreadExtraInfo":
            tid = self._vcpu(parse_thread_id(args))
            if tid is None:
                return E_GENERIC
            return rsp.hex_encode(self.target.thread_info(tid).encode("utf-8"))
        if name == "qXfer":
            return self._xfer(args)
        if name == "qRcmd":
            return self._monitor(args)
        if name == "qSymbol":
            return OK
        return EMPTY

    def _xfer(self, args: str) -> bytes:
        obj, _, rest = args.partition(":")
        op, _, rest = rest.partition(":")
        annex, _, span = rest.rpartition(":")
        if obj != "features" or op != "read":
            return EMPTY
        document = ANNEXES.get(annex)
        if document is None:
            return b"E00"
        offset_text, _, length_text = span.partition(",")
        offset, length = _int(offset_text, "offset"), _int(length_text, "length")
        chunk = document[offset : offset + length]
        more = offset + length < len(document)
        return (b"m" if more else b"l") + rsp.escape(chunk)

    def _monitor(self, args: str) -> bytes:
        try:
            command = rsp.hex_decode(args).decode("utf-8", "replace")
        except ValueError:
            raise _Malformed("monitor command is not hex") from None
        try:
            output = self.target.monitor(command)
        except EmuError as err:
            output = f"{err}\n"
        data = output.encode("utf-8")
        for start in range(0, len(data), _MONITOR_CHUNK):
            self._send(b"O" + rsp.hex_encode(data[start : start + _MONITOR_CHUNK]))
        return OK

    # -- threads -----------------------------------------------------------------------------

    def _threads(self) -> list[int]:
        return [] if self._gone else list(self.target.threads())

    def _vcpu(self, gdb_tid: int) -> int | None:
        """A specific gdb thread id -> its vCPU id, or None if there is no such thread."""
        if gdb_tid <= 0:
            return None
        tid = gdb_tid - 1
        return tid if tid in self._threads() else None

    def _set_thread(self, text: str) -> bytes:
        op, gdb_tid = text[1:2], parse_thread_id(text[2:])
        if op not in ("g", "c"):
            return EMPTY
        if gdb_tid in (0, -1):
            if op == "c":
                self.continue_tid = None
            return OK  # "any" / "all" for g: keep the current thread
        tid = self._vcpu(gdb_tid)
        if tid is None:
            return E_GENERIC
        if op == "g":
            self.general_tid = tid
        else:
            self.continue_tid = tid
        return OK

    def _thread_alive(self, text: str) -> bytes:
        return OK if self._vcpu(parse_thread_id(text[1:])) is not None else E_GENERIC

    def _halt_reason(self, text: str) -> bytes:
        return stop_reply(self.last_stop)

    # -- registers ---------------------------------------------------------------------------

    def _read_all(self, text: str) -> bytes:
        if self._gone:
            return E_GENERIC
        return encode_registers(self.target.read_registers(self.general_tid))

    def _write_all(self, text: str) -> bytes:
        if self._gone:
            return E_GENERIC
        values = decode_registers(text[1:].encode("ascii"))
        old = self.target.read_registers(self.general_tid)
        for num, (now, new) in enumerate(zip(old, values, strict=False)):
            if now & ((1 << REGISTERS[num].bits) - 1) != new:
                self.target.write_register(self.general_tid, num, new)
        return OK

    def _read_one(self, text: str) -> bytes:
        num = _int(text[1:], "register number")
        if self._gone or num >= len(REGISTERS):
            return E_GENERIC
        reg = REGISTERS[num]
        value = self.target.read_registers(self.general_tid)[num] & ((1 << reg.bits) - 1)
        return rsp.hex_encode(value.to_bytes(reg.size, "little"))

    def _write_one(self, text: str) -> bytes:
        num_text, sep, value_text = text[1:].partition("=")
        num = _int(num_text, "register number")
        if not sep or self._gone or num >= len(REGISTERS):
            return E_GENERIC
        reg = REGISTERS[num]
        try:
            raw = rsp.hex_decode(value_text)
        except ValueError:
            raise _Malformed("register value is not hex") from None
        if len(raw) != reg.size:
            return E_GENERIC
        self.target.write_register(self.general_tid, num, int.from_bytes(raw, "little"))
        return OK

    # -- memory ------------------------------------------------------------------------------

    @staticmethod
    def _addr_len(text: str) -> tuple[int, int]:
        addr_text, sep, len_text = text.partition(",")
        if not sep:
            raise _Malformed(f"expected ADDR,LENGTH in {text!r}")
        return _int(addr_text, "address"), _int(len_text, "length")

    def _read_memory(self, text: str) -> bytes:
        addr, length = self._addr_len(text[1:])
        if self._gone:
            return E_GENERIC
        if length == 0:
            return EMPTY
        data = self.target.read_memory(self.general_tid, addr, min(length, _MAX_MEMORY))
        if not data:
            return E_FAULT
        return rsp.hex_encode(data)

    def _write_memory(self, text: str) -> bytes:
        header, sep, hex_data = text[1:].partition(":")
        if not sep:
            raise _Malformed("M packet without data")
        addr, length = self._addr_len(header)
        try:
            data = rsp.hex_decode(hex_data)
        except ValueError:
            raise _Malformed("M packet data is not hex") from None
        return self._store(addr, length, data)

    def _write_binary(self, packet: bytes) -> bytes:
        header, sep, raw = packet[1:].partition(b":")
        if not sep:
            return E_GENERIC
        addr, length = self._addr_len(header.decode("latin-1"))
        try:
            data = rsp.unescape(raw)
        except ValueError:
            return E_GENERIC
        return self._store(addr, length, data)

    def _store(self, addr: int, length: int, data: bytes) -> bytes:
        if len(data) != length:
            return E_GENERIC
        if self._gone:
            return E_GENERIC
        if length == 0:
            return OK  # gdb probes X support with an empty write
        return OK if self.target.write_memory(self.general_tid, addr, data) else E_FAULT

    # -- breakpoints and watchpoints ---------------------------------------------------------

    def _breakpoint(self, text: str) -> bytes:
        insert = text[0] == "Z"
        fields = text[1:].partition(";")[0].split(",")
        if len(fields) != 3:
            raise _Malformed(f"bad breakpoint packet {text!r}")
        kind = Z_KINDS.get(_int(fields[0], "breakpoint type"))
        if kind is None:
            return EMPTY
        if self._gone:
            return E_GENERIC
        key = (kind, _int(fields[1], "address"), _int(fields[2], "length"))
        # Idempotent both ways, as the protocol asks: gdb may repeat a packet it thinks was lost.
        if insert:
            if key not in self.breakpoints:
                if not self.target.add_breakpoint(*key):
                    return E_GENERIC
                self.breakpoints.add(key)
        elif key in self.breakpoints:
            self.target.remove_breakpoint(*key)
            self.breakpoints.discard(key)
        return OK

    # -- running -----------------------------------------------------------------------------

    def _resume(self, step_tid: int | None) -> bytes | None:
        """Run the target until it stops; the reply is the stop packet."""
        if self._gone:
            return stop_reply(self.last_stop)
        interrupt = threading.Event()
        with self.conn.watch_interrupt(interrupt):
            stop = self.target.resume(step_tid, interrupt)
        self.last_stop = stop
        if stop.reason in FINAL_REASONS:
            self._gone = True
            self.breakpoints.clear()
        else:
            self.general_tid = stop.tid
        if self.conn.closed:
            self._end("exited" if self._gone else "disconnected")
            return None
        return stop_reply(stop)

    def _continue_or_step(self, text: str) -> bytes | None:
        op = text[0]
        args = text[1:]
        if op in ("C", "S"):  # the signal to deliver is meaningless here
            args = args.partition(";")[2]
        tid = self.continue_tid if self.continue_tid is not None else self.general_tid
        if args:
            if self._gone:
                return E_GENERIC
            self.target.write_register(tid, PC, _int(args, "address"))
        return self._resume(tid if op in ("s", "S") else None)

    def _v_packet(self, text: str) -> bytes | None:
        if text == "vCont?":
            return b"vCont;c;C;s;S"
        if text.startswith("vCont;"):
            return self._vcont(text[len("vCont;") :])
        if text.startswith("vKill"):
            try:
                self._send(OK)
            finally:
                self._end("killed")
            return None
        return EMPTY  # vMustReplyEmpty, vFile, vRun ... all unsupported

    def _vcont(self, actions_text: str) -> bytes | None:
        actions: list[tuple[str, int]] = []  # (action letter, gdb thread id or -1)
        for item in actions_text.split(";"):
            action, _, tid_text = item.partition(":")
            letter = action[:1]
            if letter not in ("c", "C", "s", "S"):
                return E_GENERIC
            actions.append((letter.lower(), parse_thread_id(tid_text) if tid_text else -1))
        # Each thread takes the leftmost action naming it (or naming all threads).
        stepping: list[int] = []
        running = False
        for tid in self._threads():
            for letter, gdb_tid in actions:
                if gdb_tid in (-1, 0) or gdb_tid == tid + 1:
                    if letter == "s":
                        stepping.append(tid)
                    else:
                        running = True
                    break
        if len(stepping) > 1:
            return E_GENERIC  # all-stop steps one thread at a time
        if stepping:
            return self._resume(stepping[0])  # the others stay stopped for that one instruction
        if running or self._gone:
            return self._resume(None)
        return E_GENERIC

    def _kill(self, text: str) -> None:
        self._end("killed")
        return None

    def _detach(self, text: str) -> None:
        try:
            self._send(OK)
        finally:
            self._end("detached")  # even if gdb hung up without waiting for the OK
        return None

    _SIMPLE: ClassVar[dict[str, Callable[[GdbSession, str], bytes | None]]] = {
        "?": _halt_reason,
        "H": _set_thread,
        "T": _thread_alive,
        "g": _read_all,
        "G": _write_all,
        "p": _read_one,
        "P": _write_one,
        "m": _read_memory,
        "M": _write_memory,
        "Z": _breakpoint,
        "z": _breakpoint,
        "c": _continue_or_step,
        "C": _continue_or_step,
        "s": _continue_or_step,
        "S": _continue_or_step,
        "k": _kill,
        "D": _detach,
    }


class GdbServer:
    """Listen on ``host:port`` (``port=0``: pick a free one, see :attr:`port`) for one gdb.

    The socket is bound when the object is made, so the port can be handed to gdb before
    :meth:`serve` blocks. Loopback only unless told otherwise: the stub has no authentication.
    """

    def __init__(
        self,
        target: Target,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout: float | None = None,
        accept_timeout: float | None = None,
        trace: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.accept_timeout = accept_timeout
        self.trace = trace
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]

    def serve(self) -> Outcome:
        """Accept one connection, run its session to the end, stop listening.

        Raises ``TimeoutError`` if nobody connects within ``accept_timeout``.
        """
        try:
            self._listener.settimeout(self.accept_timeout)
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                raise TimeoutError(f"no debugger connected to {self.host}:{self.port}") from None
        finally:
            self._listener.close()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return GdbSession(self.target, sock, timeout=self.timeout, trace=self.trace).run()

    def close(self) -> None:
        """Stop listening; an :meth:`serve` blocked in accept (another thread) returns."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() does not
        self._listener.close()

    def __enter__(self) -> GdbServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
