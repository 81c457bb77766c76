"""Helper process for ``emu.asm``: runs keystone so that its crashes cannot take the caller down.

Protocol: one JSON request per line on stdin, ``{"source": str, "address": int}``; one JSON
reply per line on stdout, ``{"ok": true, "hex": ...}`` or ``{"ok": false, "errno": n,
"message": ..., "diagnostic": ...}`` where ``diagnostic`` is what LLVM printed to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

# emu.arm.asm runs this file in isolated mode and says where it found keystone.
if os.environ.get("EMU_ASM_KEYSTONE_PATH"):
    sys.path.insert(0, os.environ["EMU_ASM_KEYSTONE_PATH"])

import keystone

# Address space for keystone: far more than any program it may produce needs, so a
# runaway is stopped by the kernel rather than by the host running out of memory.
_MEMORY_LIMIT = 4 << 30


def _assemble(ks: keystone.Ks, source: str, address: int, diag_fd: int) -> dict:
    os.ftruncate(diag_fd, 0)
    os.lseek(diag_fd, 0, os.SEEK_SET)
    saved = os.dup(2)
    os.dup2(diag_fd, 2)
    try:
        encoding, _ = ks.asm(source, address)
        code = bytes(encoding or b"")
        if len(code) > _max_bytes():
            reply = {
                "ok": False,
                "errno": None,
                "message": f"the program is {len(code)} bytes, more than the {_max_bytes() >> 20} MiB allowed",
            }
        else:
            reply = {"ok": True, "hex": code.hex()}
    except keystone.KsError as err:
        reply = {"ok": False, "errno": err.errno, "message": str(err)}
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    if not reply["ok"]:
        os.lseek(diag_fd, 0, os.SEEK_SET)
        text = os.read(diag_fd, 4096).decode(errors="replace")
        first = next((ln for ln in text.splitlines() if ln.startswith("error:")), "")
        reply["diagnostic"] = first.removeprefix("error:").strip()
    return reply


def _max_bytes() -> int:
    return int(os.environ.get("EMU_ASM_MAX_BYTES", 64 << 20))


def _bound_to_parent() -> None:
    """Cap this helper's memory and make sure its parent is still there (Linux)."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass
    # emu.arm.asm starts this process with PR_SET_PDEATHSIG = SIGKILL; if the parent died
    # before that took effect, nobody is left to answer.
    parent = os.environ.get("EMU_ASM_PARENT")
    if parent is not None and os.getppid() != int(parent):
        sys.exit(0)  # the parent died before the death signal was armed


def main() -> None:
    _bound_to_parent()
    ks = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
    with tempfile.TemporaryFile() as diag:
        for line in sys.stdin.buffer:
            request = json.loads(line)
            reply = _assemble(ks, request["source"], request["address"], diag.fileno())
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
