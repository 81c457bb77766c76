"""Host processes emu starts (assemblers, campaign workers) end when emu ends.

``die_with_parent`` is for the child side: on Linux it asks the kernel to SIGKILL the
process when the thread that started it dies (prctl PR_SET_PDEATHSIG), so a killed emu,
``kill -9`` included, leaves nothing running behind it. Elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int | None = None) -> None:
    """Be killed when the parent dies; with ``parent`` (its pid, read before this process
    started), exit at once if it is already gone (it died before the request took hold)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(0)
