"""examples/quickstart.ipynb executes top to bottom, without pytest (outputs are not kept in git)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_outputs_are_stripped_in_git() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_executes_without_pytest(monkeypatch) -> None:
    # The kernel runs as a notebook user's would, with only the plot extra: pytest cannot be
    # imported there (tests/support/no_pytest/sitecustomize.py).
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests" / "support" / "no_pytest"))
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "PSCI_VERSION() " in html or "PSCI_VERSION()" in html
    text = "".join(o.get("text", "") for o in outputs)
    assert "guest saw 42" in text and "ABI coverage, profile rfc-2021" in text
    assert "3 of 11 calls differ between rfc-2021, linux-5.15, linux-6.1, linux-6.6, linux-6.13" in text
    assert "0x10003" in html and "linux-6.13" in html
    assert any("image/png" in o.get("data", {}) for o in outputs)
