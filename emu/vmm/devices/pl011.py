"""Arm PL011 UART (transmit side), at QEMU virt's 0x09000000: the guest console.

Bytes written to the data register go to the VM's console at once (and to a sink, e.g.
the CLI's stdout, so nothing is lost if the guest stops abruptly). The flag register
always says "transmit FIFO empty, receive FIFO empty"; there is no input. As in QEMU's
model, every transmitted byte raises the TX interrupt status (the FIFO drains at once);
UARTICR clears it, UARTIMSC masks it, and the masked status drives ``irq(level)`` (the
VMM connects it to SPI 1 through KVM_IRQ_LINE). The identification registers read as
QEMU's PL011, so drivers that probe the PrimeCell IDs find one.
"""

from __future__ import annotations

from collections.abc import Callable

PL011_BASE = 0x0900_0000
PL011_SIZE = 0x1000

UARTDR = 0x000
UARTFR = 0x018
UARTIBRD = 0x024
UARTFBRD = 0x028
UARTLCR_H = 0x02C
UARTCR = 0x030
UARTIFLS = 0x034
UARTIMSC = 0x038
UARTRIS = 0x03C
UARTMIS = 0x040
UARTICR = 0x044

FR_RXFE = 1 << 4
FR_TXFE = 1 << 7
INT_TX = 1 << 5

# PeriphID0..3 and PCellID0..3 at 0xFE0..0xFFC (QEMU hw/char/pl011.c, "arm" variant).
_ID = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)

_RESET = {UARTCR: 0x300, UARTIFLS: 0x12}


class PL011:
    """One PL011; ``output`` collects what the guest transmitted."""

    base = PL011_BASE
    size = PL011_SIZE
    compatible = ("arm,pl011", "arm,primecell")

    def __init__(
        self, sink: Callable[[bytes], None] | None = None, irq: Callable[[bool], None] | None = None
    ) -> None:
        self.output = bytearray()
        self.sink = sink
        self.irq = irq
        self._regs = dict(_RESET)
        self._level = False

    def read(self, offset: int, size: int) -> int:
        if offset == UARTFR:
            return FR_TXFE | FR_RXFE
        if offset == UARTDR:
            return 0
        if 0xFE0 <= offset <= 0xFFC:
            return _ID[(offset - 0xFE0) // 4]
        if offset == UARTMIS:
            return self._regs.get(UARTRIS, 0) & self._regs.get(UARTIMSC, 0)
        return self._regs.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == UARTDR:
            byte = bytes((value & 0xFF,))
            self.output += byte
            if self.sink is not None:
                self.sink(byte)
            self._regs[UARTRIS] = self._regs.get(UARTRIS, 0) | INT_TX
        elif offset == UARTICR:
            self._regs[UARTRIS] = self._regs.get(UARTRIS, 0) & ~value
        elif offset not in (UARTFR, UARTRIS, UARTMIS):
            self._regs[offset] = value
        self._update()

    def _update(self) -> None:
        level = bool(self._regs.get(UARTRIS, 0) & self._regs.get(UARTIMSC, 0))
        if level != self._level:
            self._level = level
            if self.irq is not None:
                self.irq(level)

    def reset(self) -> None:
        self._regs = dict(_RESET)
        self._update()
