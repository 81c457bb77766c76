"""Errors a user can cause, each printable as one line that names the cause."""

from __future__ import annotations

import errno as _errno


class EmuError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""


class AsmError(EmuError):
    """Assembly source that cannot be assembled (or not assembled safely)."""

    def __init__(self, message: str, line: int | None = None, text: str | None = None) -> None:
        self.line = line
        self.text = text
        self.reason = message
        where = f"line {line}: " if line is not None else ""
        shown = f": {text.strip()}" if text and text.strip() else ""
        super().__init__(f"{where}{message}{shown}")


class KvmError(EmuError):
    """An ioctl-style failure, carrying the errno KVM would have returned."""

    def __init__(self, err: int, message: str) -> None:
        self.errno = err
        super().__init__(f"{message} (-{_errno.errorcode.get(err, err)})")


class ImageError(EmuError):
    """A guest image or file that cannot be loaded."""


def unreadable(name: str, err: OSError) -> ImageError:
    """The one line for an input file ``name`` that ``open`` or ``read`` refused."""
    if isinstance(err, FileNotFoundError):
        return ImageError(f"{name}: no such file")
    if isinstance(err, IsADirectoryError):
        return ImageError(f"{name}: is a directory")
    return ImageError(f"{name}: {err.strerror}")


class VmmError(EmuError):
    """User-supplied VMM code (``--vmm``) failed."""
