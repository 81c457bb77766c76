"""TRNG firmware interface 1.0 (Arm DEN0098) as arch/arm64/kvm/trng.c implements it.

Entropy comes from the VM's seeded generator instead of the host's get_random_long, so a
run is reproducible from its seed; the bit layout in x1..x3 is KVM's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.abi import smccc

if TYPE_CHECKING:
    from emu.smccc.call import Call

TRNG_VERSION_1_0 = 0x10000
TRNG_SUCCESS = 0
TRNG_NOT_SUPPORTED = -1
TRNG_INVALID_PARAMETER = -2
TRNG_NO_ENTROPY = -3

# UUID 0d21e000-4384-11eb-8070-5244554e5a4c as KVM returns it: the 16 UUID bytes read
# as four little-endian words (trng.c: le32_to_cpu(u[i])).
TRNG_UUID_WORDS = (0x00E0_210D, 0xEB11_8443, 0x4452_7080, 0x4C5A_4E55)

_TRNG_IDS = (smccc.TRNG_VERSION, smccc.TRNG_FEATURES, smccc.TRNG_GET_UUID, smccc.TRNG_RND32, smccc.TRNG_RND64)


def version(call: Call) -> None:
    call.answer(TRNG_VERSION_1_0)


def features(call: Call) -> None:
    # trng.c switches on smccc_get_arg1(), an unsigned long: all 64 bits of x1 must match.
    call.answer(TRNG_SUCCESS if call.args[1] in _TRNG_IDS else TRNG_NOT_SUPPORTED)


def get_uuid(call: Call) -> None:
    call.answer(*TRNG_UUID_WORDS)


def rnd32(call: Call) -> None:
    _rnd(call, 32)


def rnd64(call: Call) -> None:
    _rnd(call, 64)


def _rnd(call: Call, size: int) -> None:
    """Return N = (u32)x1 bits of entropy; N > 3*size is INVALID_PARAMETER, N = 0 is allowed."""
    num_bits = call.args[1] & smccc.MASK32
    if num_bits > 3 * size:
        call.answer(TRNG_INVALID_PARAMETER)
        return
    rng = call.vm.entropy
    words = [rng.getrandbits(64) for _ in range((num_bits + 63) // 64)]
    words += [0] * (3 - len(words))
    bits = (words[0] | words[1] << 64 | words[2] << 128) & ((1 << num_bits) - 1)
    w0, w1, w2 = bits & smccc.MASK64, (bits >> 64) & smccc.MASK64, bits >> 128
    if size == 32:
        # x1 = bits 95:64, x2 = bits 63:32, x3 = bits 31:0
        call.answer(TRNG_SUCCESS, w1 & smccc.MASK32, w0 >> 32, w0 & smccc.MASK32)
    else:
        call.answer(TRNG_SUCCESS, w2, w1, w0)
