"""The PL011 console: registers a driver probes, output kept even when the guest dies."""

from __future__ import annotations

from emu.vmm.boot import boot
from emu.vmm.devices.pl011 import FR_RXFE, FR_TXFE, PL011, UARTCR, UARTDR, UARTFR, UARTICR, UARTRIS
from tests.conftest import run_cli


def test_registers() -> None:
    uart = PL011()
    assert uart.read(UARTFR, 4) == FR_TXFE | FR_RXFE
    assert [uart.read(0xFE0 + 4 * i, 4) for i in range(8)] == [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
    assert uart.read(UARTCR, 4) == 0x300
    uart.write(UARTCR, 4, 0x301)
    assert uart.read(UARTCR, 4) == 0x301
    uart.write(UARTICR, 4, 0x7FF)
    assert uart.read(UARTRIS, 4) == 0
    uart.write(UARTDR, 4, 0x141)  # only the low byte is data
    assert uart.output == b"A"


def test_sink_sees_every_byte_at_once() -> None:
    seen = []
    uart = PL011(sink=seen.append)
    for ch in b"hi\n":
        uart.write(UARTDR, 4, ch)
    assert seen == [b"h", b"i", b"\n"]


DIES = """
    ldr x1, =0x09000000
    mov w2, #0x6f              // 'o'
    str w2, [x1]
    mov w2, #0x6b              // 'k'
    str w2, [x1]
    .word 0                    // undefined instruction, no vectors: the run stops here
"""


def test_console_is_not_lost_when_the_guest_stops_abruptly(tmp_program) -> None:
    path = tmp_program(DIES)
    doc = run_cli("run", path, "--json").json()
    assert doc["stop"]["reason"] == "fault" and doc["console"] == "ok"
    human = run_cli("run", path)
    assert human.status == 3
    assert human.stdout.splitlines()[1] == "ok"  # unterminated line, still printed


def test_boot_console_property() -> None:
    assert boot(source=DIES).console == "ok"
