"""``notebooks/benchmark.ipynb`` runs from top to bottom on the committed results and on a fresh one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = ROOT
NOTEBOOK = ROOT / "notebooks" / "benchmark.ipynb"


def execute(bench_dir: Path, monkeypatch):
    monkeypatch.setenv("REVSDE_BENCH_DIR", str(bench_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def text_of(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")


def test_the_notebook_draws_every_committed_result(monkeypatch):
    nb = execute(ROOT / "docs", monkeypatch)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    results = [p for p in (ROOT / "docs").glob("bench_*.json")
               if (json.loads(p.read_text()).get("records") or json.loads(p.read_text()).get("rows"))]
    assert f"drew {len(results)} figure(s)" in text_of(nb)
    assert "best fd" in text_of(nb) and "best psnr" in text_of(nb)


def test_the_notebook_reads_a_fresh_result(tmp_path, monkeypatch):
    rows = [{"label": label, "nfe": n, "target_nfe": n, "fd": value / n, "kid": 0.01 / n}
            for label, value in (("mrs 2 logsnr", 1.0), ("diffusers UniPC", 2.0)) for n in (5, 10)]
    (tmp_path / "bench_image.json").write_text(json.dumps({"task": "image", "rows": rows}))
    text = text_of(execute(tmp_path, monkeypatch))
    assert "1 result file(s)" in text and "drew 1 figure(s)" in text
    assert "NFE   10  best fd: 0.1  mrs 2 logsnr" in text
