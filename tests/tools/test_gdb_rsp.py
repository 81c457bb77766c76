"""The stub's pure parts: framing, escapes, the parser, the target description, stop replies."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from emu.tools.gdb import rsp
from emu.tools.gdb.server import decode_registers, encode_registers, stop_reply
from emu.tools.gdb.target import StopEvent, Target
from emu.tools.gdb.target_xml import REGISTERS, TARGET_XML
from tests.tools.gdb_fake import FakeTarget


def test_frame_and_checksum():
    assert rsp.frame(b"OK") == b"$OK#9a"
    assert rsp.frame(b"") == b"$#00"
    assert rsp.checksum(b"qSupported") == 0x37


def test_escape_round_trip_covers_every_byte():
    data = bytes(range(256))
    escaped = rsp.escape(data)
    assert b"$" not in escaped and b"#" not in escaped and b"*" not in escaped
    assert rsp.unescape(escaped) == data
    assert rsp.escape(b"a}b") == b"a}]b"


def test_unescape_rejects_a_dangling_escape():
    with pytest.raises(ValueError):
        rsp.unescape(b"ab}")


def test_hex_helpers():
    assert rsp.hex_encode(b"\x00\xff") == b"00ff"
    assert rsp.hex_decode("00ff") == b"\x00\xff"
    with pytest.raises(ValueError):
        rsp.hex_decode("0")


def test_parser_takes_any_chunking():
    stream = b"+$g#67-\x03$m1000,4#8e"
    whole = rsp.PacketParser().feed(stream)
    parser = rsp.PacketParser()
    bytewise = [event for i in range(len(stream)) for event in parser.feed(stream[i : i + 1])]
    assert whole == bytewise
    assert [e.kind for e in whole] == ["ack", "packet", "nack", "interrupt", "packet"]
    assert whole[1].data == b"g" and whole[4].data == b"m1000,4"
    assert all(e.valid for e in whole)


def test_parser_flags_a_bad_checksum_and_keeps_going():
    events = rsp.PacketParser().feed(b"$g#00$g#67$g#zz")
    assert [(e.data, e.valid) for e in events] == [(b"g", False), (b"g", True), (b"g", False)]


def test_parser_keeps_escapes_and_an_escaped_hash_inside_the_packet():
    payload = b"X0,2:}#}]"
    events = rsp.PacketParser().feed(rsp.frame(payload))
    assert events == [rsp.Event("packet", payload, True)]


def test_parser_drops_noise_between_packets():
    assert [e.kind for e in rsp.PacketParser().feed(b"garbage$?#3f")] == ["packet"]


def test_target_xml_numbering_and_widths():
    root = ET.fromstring(TARGET_XML.decode())
    assert root.findtext("architecture") == "aarch64"
    features = {f.get("name"): f for f in root.findall("feature")}
    assert list(features) == ["org.gnu.gdb.aarch64.core", "org.gnu.gdb.aarch64.fpu"]
    regs = [reg for f in features.values() for reg in f.findall("reg")]
    names = [r.get("name") for r in regs]
    assert names == (
        [f"x{i}" for i in range(31)] + ["sp", "pc", "cpsr"] + [f"v{i}" for i in range(32)] + ["fpsr", "fpcr"]
    )
    assert [int(r.get("regnum")) for r in regs] == list(range(68))
    bits = {r.get("name"): int(r.get("bitsize")) for r in regs}
    assert bits["x0"] == bits["x30"] == bits["sp"] == bits["pc"] == 64
    assert bits["cpsr"] == bits["fpsr"] == bits["fpcr"] == 32
    assert bits["v0"] == bits["v31"] == 128
    assert {r.get("type") for r in regs if r.get("name").startswith("v")} == {"vec128"}
    fpu = features["org.gnu.gdb.aarch64.fpu"]
    assert [u.get("id") for u in fpu.findall("union")][-1] == "vec128"
    assert [(r.name, r.bits) for r in REGISTERS] == [(n, bits[n]) for n in names]


def test_register_block_round_trip():
    values = [(1 << reg.bits) - 1 - i for i, reg in enumerate(REGISTERS)]
    encoded = encode_registers(values)
    assert len(encoded) == 2 * (33 * 8 + 4 + 32 * 16 + 2 * 4)
    assert decode_registers(encoded) == values
    # Little-endian, at the description width: cpsr takes 4 bytes right after pc.
    block = encode_registers([0] * 32 + [0x40080000, 0x3C5] + [0] * 34)
    assert block[32 * 16 : 34 * 16 - 8] == b"0000084000000000c5030000"


def test_register_block_masks_to_width():
    values = [0] * 68
    values[33] = -1
    assert encode_registers(values)[33 * 16 : 33 * 16 + 8] == b"ffffffff"


@pytest.mark.parametrize(
    "stop, reply",
    [
        (StopEvent(1, "breakpoint", 0x40080010), b"T05thread:2;swbreak:;"),
        (StopEvent(0, "hw-breakpoint", 0x40080010), b"T05thread:1;hwbreak:;"),
        (StopEvent(2, "watch", 0x2000), b"T05thread:3;watch:2000;"),
        (StopEvent(2, "rwatch", 0x2004), b"T05thread:3;rwatch:2004;"),
        (StopEvent(2, "awatch", 0x2008), b"T05thread:3;awatch:2008;"),
        (StopEvent(9, "step"), b"T05thread:a;"),
        (StopEvent(0, "interrupt"), b"T02thread:1;"),
        (StopEvent(0, "signal", signal=11), b"T0bthread:1;"),
        (StopEvent(0, "exited", exit_status=3), b"W03"),
        (StopEvent(0, "exited"), b"W00"),
        (StopEvent(0, "terminated", signal=9), b"X09"),
    ],
)
def test_stop_replies(stop, reply):
    assert stop_reply(stop) == reply


def test_stop_event_checks_its_fields():
    with pytest.raises(ValueError):
        StopEvent(0, "watch")
    with pytest.raises(ValueError):
        StopEvent(0, "signal")
    with pytest.raises(ValueError):
        StopEvent(0, "crashed")  # type: ignore[arg-type]


def test_the_fake_is_a_target():
    assert isinstance(FakeTarget(1), Target)
