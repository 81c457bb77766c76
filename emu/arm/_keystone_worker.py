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

import keystone


def _assemble(ks: keystone.Ks, source: str, address: int, diag_fd: int) -> dict:
    os.ftruncate(diag_fd, 0)
    os.lseek(diag_fd, 0, os.SEEK_SET)
    saved = os.dup(2)
    os.dup2(diag_fd, 2)
    try:
        encoding, _ = ks.asm(source, address)
        reply = {"ok": True, "hex": bytes(encoding or b"").hex()}
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


def main() -> None:
    ks = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
    with tempfile.TemporaryFile() as diag:
        for line in sys.stdin:
            request = json.loads(line)
            reply = _assemble(ks, request["source"], request["address"], diag.fileno())
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
