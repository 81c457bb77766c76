"""How emu objects show themselves in Jupyter and IPython, without knowing who draws them.

Low-layer classes (registers, exits, traces, the VM and its vCPUs) implement
``_repr_html_`` / ``_repr_pretty_`` by asking this registry; the tools layer
(``emu.tools.display``, ``emu.tools.timeline``) registers the renderers when ``emu`` is
imported. Data flows up, never a lower layer reaching up: nothing here imports emu.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any, Protocol

from emu.errors import EmuError


class PrettyPrinter(Protocol):
    """The part of IPython's pretty printer a ``_repr_pretty_`` uses."""

    def text(self, text: str) -> None: ...


_html: dict[type, Callable[[Any], str]] = {}
_text: dict[type, Callable[[Any], str]] = {}
_plotters: dict[type, Callable[..., Any]] = {}


def register(
    cls: type,
    *,
    html: Callable[[Any], str] | None = None,
    text: Callable[[Any], str] | None = None,
    plot: Callable[..., Any] | None = None,
) -> None:
    """Use ``html`` / ``text`` / ``plot`` to show instances of ``cls`` (and its subclasses)."""
    for table, renderer in ((_html, html), (_text, text), (_plotters, plot)):
        if renderer is not None:
            table[cls] = renderer


def _lookup(table: dict[type, Callable[..., Any]], obj: object) -> Callable[..., Any] | None:
    for cls in type(obj).__mro__:
        if cls in table:
            return table[cls]
    return None


def html(obj: object) -> str:
    """An HTML rendering of ``obj``: its registered renderer, else its escaped repr."""
    renderer = _lookup(_html, obj)
    if renderer is not None:
        return renderer(obj)
    return f"<pre>{escape(repr(obj))}</pre>"


def text(obj: object, default: Callable[[Any], str] = repr) -> str:
    """A text rendering of ``obj``: its registered renderer, else ``default(obj)``."""
    renderer = _lookup(_text, obj)
    return renderer(obj) if renderer is not None else default(obj)


def plot(obj: object, **options: Any) -> Any:
    """Draw ``obj`` with its registered plotter (the timeline for a trace)."""
    plotter = _lookup(_plotters, obj)
    if plotter is None:
        raise EmuError(f"no plotter is registered for {type(obj).__name__}")
    return plotter(obj, **options)
