"""Decoded names, arguments and return codes as the CLI prints them."""

from __future__ import annotations

import pytest

from emu.abi.smccc import name_of
from emu.smccc.decode import describe_call, describe_result

M = (1 << 64) - 1


@pytest.mark.parametrize(
    "fid, args, text",
    [
        (0xC4000003, [0, 1, 0x40080100, 0x2A], "PSCI_CPU_ON64(target=0x1, entry=0x40080100, ctx=0x2a)"),
        (0x84000000, [0], "PSCI_VERSION()"),
        (0x84000004, [0, 3, 1], "PSCI_AFFINITY_INFO(target=0x3, level=0x1)"),
        (0xC2000001, [0, 1, 2, 3, 4, 5], "SIP64:0x0001(x1=0x1, x2=0x2, x3=0x3, x4=0x4, x5=0x5)"),
    ],
)
def test_describe_call(fid, args, text) -> None:
    assert describe_call(fid, args) == text


@pytest.mark.parametrize(
    "fid, x0, text",
    [
        (0xC4000003, 0, "SUCCESS"),
        (0xC4000003, -4 & M, "ALREADY_ON (-4)"),
        (0x84000004, 1, "OFF"),
        (0x84000000, 0x10000, "0x10000"),
        (0x80000001, -2 & M, "NOT_REQUIRED (-2)"),
        (0x84000053, -2 & M, "INVALID_PARAMETER (-2)"),
        (0x80000000, -1 & M, "NOT_SUPPORTED (-1)"),
        (0x80000001, 0, "SUCCESS"),
    ],
)
def test_describe_result(fid, x0, text) -> None:
    assert describe_result(fid, x0) == text


@pytest.mark.parametrize(
    "fid, name",
    [
        (0xC4000020, "SDEI_VERSION"),
        (0x95C1BA60, "KVM_PSCI_0_1_CPU_ON"),
        (0x8600FF01, "VENDOR_HYP_CALL_UID"),
        (0x04000000, "STD32_YIELDING:0x0000"),
        (0xF2000001, "TRUSTED_OS64:0x0001"),
        (0xC7000000, "RESERVED64:0x0000"),
    ],
)
def test_names(fid, name) -> None:
    assert name_of(fid) == name
