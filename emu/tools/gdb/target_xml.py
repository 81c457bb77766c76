"""The AArch64 target description served to gdb, and the register layout it fixes.

:data:`REGISTERS` is the single source of truth: the XML is generated from it, and so are the
``g`` packet's layout and each ``p``/``P`` register's width. Numbering (XML order):
x0..x30 = 0..30, sp = 31, pc = 32, cpsr = 33 (32 bits), v0..v31 = 34..65 (128 bits),
fpsr = 66, fpcr = 67 (32 bits each).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str | None = None  # gdb type name in the description, or None for a plain integer

    @property
    def size(self) -> int:
        """Width in bytes, as it travels in ``g``/``p`` packets (little-endian)."""
        return self.bits // 8


CORE_REGISTERS: tuple[Register, ...] = (
    *(Register(f"x{i}", 64) for i in range(31)),
    Register("sp", 64, "data_ptr"),
    Register("pc", 64, "code_ptr"),
    Register("cpsr", 32, "cpsr_flags"),
)

FPU_REGISTERS: tuple[Register, ...] = (
    *(Register(f"v{i}", 128, "vec128") for i in range(32)),
    Register("fpsr", 32),
    Register("fpcr", 32),
)

REGISTERS: tuple[Register, ...] = CORE_REGISTERS + FPU_REGISTERS

REGNUM: dict[str, int] = {reg.name: num for num, reg in enumerate(REGISTERS)}
SP, PC, CPSR = REGNUM["sp"], REGNUM["pc"], REGNUM["cpsr"]
V0, FPSR, FPCR = REGNUM["v0"], REGNUM["fpsr"], REGNUM["fpcr"]

_CPSR_FLAGS = """\
  <flags id="cpsr_flags" size="4">
    <field name="SP" start="0" end="0"/>
    <field name="EL" start="2" end="3"/>
    <field name="nRW" start="4" end="4"/>
    <field name="F" start="6" end="6"/>
    <field name="I" start="7" end="7"/>
    <field name="A" start="8" end="8"/>
    <field name="D" start="9" end="9"/>
    <field name="BTYPE" start="10" end="11"/>
    <field name="SSBS" start="12" end="12"/>
    <field name="IL" start="20" end="20"/>
    <field name="SS" start="21" end="21"/>
    <field name="PAN" start="22" end="22"/>
    <field name="UAO" start="23" end="23"/>
    <field name="DIT" start="24" end="24"/>
    <field name="TCO" start="25" end="25"/>
    <field name="V" start="28" end="28"/>
    <field name="C" start="29" end="29"/>
    <field name="Z" start="30" end="30"/>
    <field name="N" start="31" end="31"/>
  </flags>
"""

# The views gdb offers of one 128-bit vector register: v0.d.f[1], v0.s.u[3], v0.b.s[15], v0.q.u ...
_VEC128 = """\
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v2u" type="uint64" count="2"/>
  <vector id="v2i" type="int64" count="2"/>
  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v4u" type="uint32" count="4"/>
  <vector id="v4i" type="int32" count="4"/>
  <vector id="v8f" type="ieee_half" count="8"/>
  <vector id="v8u" type="uint16" count="8"/>
  <vector id="v8i" type="int16" count="8"/>
  <vector id="v16u" type="uint8" count="16"/>
  <vector id="v16i" type="int8" count="16"/>
  <vector id="v1u" type="uint128" count="1"/>
  <vector id="v1i" type="int128" count="1"/>
  <union id="vnd">
    <field name="f" type="v2d"/>
    <field name="u" type="v2u"/>
    <field name="s" type="v2i"/>
  </union>
  <union id="vns">
    <field name="f" type="v4f"/>
    <field name="u" type="v4u"/>
    <field name="s" type="v4i"/>
  </union>
  <union id="vnh">
    <field name="f" type="v8f"/>
    <field name="u" type="v8u"/>
    <field name="s" type="v8i"/>
  </union>
  <union id="vnb">
    <field name="u" type="v16u"/>
    <field name="s" type="v16i"/>
  </union>
  <union id="vnq">
    <field name="u" type="v1u"/>
    <field name="s" type="v1i"/>
  </union>
  <union id="vec128">
    <field name="d" type="vnd"/>
    <field name="s" type="vns"/>
    <field name="h" type="vnh"/>
    <field name="b" type="vnb"/>
    <field name="q" type="vnq"/>
  </union>
"""


def _reg_lines(regs: tuple[Register, ...]) -> str:
    first = REGISTERS.index(regs[0])
    lines = []
    for num, reg in enumerate(regs, start=first):
        type_attr = f' type="{reg.type}"' if reg.type else ' type="int"'
        lines.append(f'  <reg name="{reg.name}" bitsize="{reg.bits}"{type_attr} regnum="{num}"/>\n')
    return "".join(lines)


def target_xml() -> str:
    """The whole description as one document (no ``xi:include``), as gdb reads ``target.xml``."""
    return (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">\n'
        '<target version="1.0">\n'
        "<architecture>aarch64</architecture>\n"
        '<feature name="org.gnu.gdb.aarch64.core">\n'
        + _CPSR_FLAGS
        + _reg_lines(CORE_REGISTERS)
        + "</feature>\n"
        '<feature name="org.gnu.gdb.aarch64.fpu">\n' + _VEC128 + _reg_lines(FPU_REGISTERS) + "</feature>\n"
        "</target>\n"
    )


TARGET_XML: bytes = target_xml().encode("ascii")

#: Documents served through ``qXfer:features:read:ANNEX:offset,length``.
ANNEXES: dict[str, bytes] = {"target.xml": TARGET_XML}
