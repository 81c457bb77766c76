"""GDB Remote Serial Protocol framing: ``$data#cs`` packets, acks, binary escapes, Ctrl-C.

The pure functions build and take apart packets; :class:`PacketParser` turns a byte stream into
events; :class:`Connection` puts both over a socket, with the ack handshake until
``QStartNoAckMode`` turns it off, and a reader that watches for the interrupt byte while the
target runs.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections import deque
from dataclasses import dataclass

INTERRUPT = 0x03
_ESCAPE = 0x7D  # '}'
_MUST_ESCAPE = frozenset(b"$#}*")
_MAX_RESENDS = 3


class ConnectionClosed(Exception):
    """The debugger went away (end of stream, reset, or no traffic within the timeout)."""


def checksum(data: bytes) -> int:
    """The modulo-256 sum of a packet's payload."""
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    """``$data#cs``: the payload must already be escaped where it carries binary data."""
    return b"$" + data + b"#" + b"%02x" % checksum(data)


def escape(data: bytes) -> bytes:
    """Escape ``$ # } *`` as ``}`` followed by the byte XOR 0x20 (binary replies)."""
    out = bytearray()
    for byte in data:
        if byte in _MUST_ESCAPE:
            out += bytes((_ESCAPE, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo :func:`escape` (the payload of ``X`` packets). A trailing lone ``}`` is an error."""
    out = bytearray()
    it = iter(data)
    for byte in it:
        if byte == _ESCAPE:
            try:
                out.append(next(it) ^ 0x20)
            except StopIteration:
                raise ValueError("binary data ends inside an escape") from None
        else:
            out.append(byte)
    return bytes(out)


def hex_encode(data: bytes) -> bytes:
    return data.hex().encode("ascii")


def hex_decode(text: bytes | str) -> bytes:
    """Bytes from hex digits; ``ValueError`` on anything else (odd length, non-hex)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return bytes.fromhex(text)


@dataclass(frozen=True)
class Event:
    """One thing read off the wire: a packet (``data``, checksum verdict), an ack, a nack, or Ctrl-C."""

    kind: str  # "packet" | "ack" | "nack" | "interrupt"
    data: bytes = b""
    valid: bool = True


class PacketParser:
    """Incremental parser: :meth:`feed` bytes in any chunking, get the completed events back.

    Outside a packet, ``+`` / ``-`` are acks, 0x03 is an interrupt, anything else is noise and
    dropped. Inside a packet, bytes are taken as they are (escapes stay escaped: only the command
    knows whether its payload is binary) until ``#`` and two checksum digits.
    """

    def __init__(self) -> None:
        self._state = "idle"  # idle | data | cs1 | cs2
        self._data = bytearray()
        self._cs = bytearray()
        self._after_escape = False

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        for byte in chunk:
            if self._state == "idle":
                if byte == ord("$"):
                    self._state = "data"
                    self._data.clear()
                    self._after_escape = False
                elif byte == ord("+"):
                    events.append(Event("ack"))
                elif byte == ord("-"):
                    events.append(Event("nack"))
                elif byte == INTERRUPT:
                    events.append(Event("interrupt"))
            elif self._state == "data":
                # The byte after an escape ``}`` is payload whatever it is, even ``#``.
                if byte == ord("#") and not self._after_escape:
                    self._state = "cs1"
                    self._cs.clear()
                else:
                    self._after_escape = byte == _ESCAPE and not self._after_escape
                    self._data.append(byte)
            else:
                self._cs.append(byte)
                if self._state == "cs1":
                    self._state = "cs2"
                else:
                    self._state = "idle"
                    data = bytes(self._data)
                    try:
                        valid = int(self._cs.decode("ascii"), 16) == checksum(data)
                    except ValueError:
                        valid = False
                    events.append(Event("packet", data, valid))
        return events


class Connection:
    """One debugger connection: packets in and out, acks while they are on, Ctrl-C while running.

    ``timeout`` bounds every blocking read and write on the socket (``None``: wait for ever, as
    an interactive debugger at its prompt needs). Running out of it raises :class:`ConnectionClosed`.
    """

    def __init__(self, sock: socket.socket, timeout: float | None = None) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)
        self._parser = PacketParser()
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()
        self.ack_mode = True
        self.closed = False

    # -- reading -----------------------------------------------------------------------------

    def _fill(self) -> None:
        """Block for more bytes and parse them into the event queue."""
        if self.closed:
            raise ConnectionClosed("connection closed")
        try:
            chunk = self._sock.recv(4096)
        except (TimeoutError, OSError) as err:
            self.closed = True
            raise ConnectionClosed(str(err) or type(err).__name__) from None
        if not chunk:
            self.closed = True
            raise ConnectionClosed("end of stream")
        with self._lock:
            self._events.extend(self._parser.feed(chunk))

    def _next_event(self) -> Event:
        while True:
            with self._lock:
                if self._events:
                    return self._events.popleft()
            self._fill()

    def recv_packet(self) -> bytes:
        """The next well-formed packet's payload, acked if acks are on.

        Stray acks and Ctrl-C bytes that arrive while the target is stopped are dropped; a packet
        with a bad checksum is nacked (ack mode) so the debugger resends it, or dropped (no-ack).
        """
        while True:
            event = self._next_event()
            if event.kind != "packet":
                continue
            if not event.valid:
                if self.ack_mode:
                    self._send_raw(b"-")
                continue
            if self.ack_mode:
                self._send_raw(b"+")
            return event.data

    # -- writing -----------------------------------------------------------------------------

    def _send_raw(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionClosed("connection closed")
        try:
            self._sock.sendall(data)
        except (TimeoutError, OSError) as err:
            self.closed = True
            raise ConnectionClosed(str(err) or type(err).__name__) from None

    def send_packet(self, data: bytes | str) -> None:
        """Send one packet; with acks on, wait for ``+`` and resend on ``-`` (a few times)."""
        if isinstance(data, str):
            data = data.encode("ascii")
        framed = frame(data)
        for _ in range(_MAX_RESENDS + 1):
            self._send_raw(framed)
            if not self.ack_mode:
                return
            while True:
                event = self._next_event()
                if event.kind == "ack":
                    return
                if event.kind == "nack":
                    break
                if event.kind == "packet":
                    # The debugger gave up waiting and sent something new: keep it for later.
                    with self._lock:
                        self._events.appendleft(event)
                    return
        raise ConnectionClosed("debugger keeps rejecting a packet")

    # -- while the target runs ---------------------------------------------------------------

    def watch_interrupt(self, interrupt: threading.Event) -> InterruptWatch:
        """Context manager: while inside, a Ctrl-C (or the debugger hanging up) sets ``interrupt``."""
        return InterruptWatch(self, interrupt)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class InterruptWatch:
    """A reader thread over the connection's socket for as long as the target runs.

    It waits with ``select`` on the socket and on a wake-up socket that :meth:`__exit__` writes
    to, so it ends as soon as the target has stopped, without polling. Bytes that are not the
    interrupt (nothing in all-stop mode, in practice) stay queued for the session.
    """

    def __init__(self, conn: Connection, interrupt: threading.Event) -> None:
        self._conn = conn
        self._interrupt = interrupt
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="gdb-interrupt-watch", daemon=True)

    def __enter__(self) -> InterruptWatch:
        conn = self._conn
        # A Ctrl-C that came in the same read as the resume packet is already parsed.
        with conn._lock:
            if any(event.kind == "interrupt" for event in conn._events):
                conn._events = deque(e for e in conn._events if e.kind != "interrupt")
                self._interrupt.set()
        if conn.closed:
            self._interrupt.set()
        else:
            self._thread.start()
        return self

    def _run(self) -> None:
        conn = self._conn
        while True:
            try:
                readable, _, _ = select.select([conn._sock, self._wake_r], [], [])
            except (OSError, ValueError):
                conn.closed = True
                self._interrupt.set()
                return
            if self._wake_r in readable:
                return
            try:
                chunk = conn._sock.recv(4096)
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if not chunk:
                conn.closed = True
                self._interrupt.set()
                return
            with conn._lock:
                for event in conn._parser.feed(chunk):
                    if event.kind == "interrupt":
                        self._interrupt.set()
                    else:
                        conn._events.append(event)

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.ident is not None:  # started
            self._wake_w.send(b"x")
            self._thread.join()
        self._wake_r.close()
        self._wake_w.close()
