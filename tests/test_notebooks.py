"""The analysis notebooks: jupytext percent-format sources, executed headlessly by
`make notebooks`; `make report` beside them, both on a tiny study made here."""

from __future__ import annotations

import ast
import re
import subprocess

import jupytext
import nbformat
import pytest

from charlstm.analysis.notebooks import notebook_sources
from tests.conftest import REPO, run_make, study_with_every_state

NOTEBOOKS = notebook_sources(REPO / "analysis")
PARAMETERS = {"study", "experiment", "storage", "tracking_uri"}


def test_notebook_sources_are_percent_scripts_with_the_shared_parameters():
    assert [p.stem for p in NOTEBOOKS] == ["01-compare-runs", "02-study-insights", "03-scaling"]
    for path in NOTEBOOKS:
        text = path.read_text()
        nb = jupytext.reads(text, fmt="py:percent")
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        names = {t.id for node in ast.parse(tagged[0].source).body for t in node.targets}
        assert names >= PARAMETERS, (path.name, names)
        assert not re.search(r"\b[0-9a-f]{32}\b", text), f"{path.name} names a run id"
        assert nb.cells[0].cell_type == "markdown"


def test_no_notebook_json_is_kept_in_git():
    """The .py files are the notebooks: an .ipynb in analysis/ is a local artefact (ignored)."""
    listed = subprocess.run(["git", "ls-files", "analysis"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    assert not [f for f in listed.stdout.split() if f.endswith(".ipynb")]
    ignored = subprocess.run(["git", "check-ignore", "-q", "analysis/scratch.ipynb"], cwd=REPO)
    assert ignored.returncode == 0


@pytest.mark.slow
def test_make_notebooks_and_make_report_on_a_tiny_study(corpus, tmp_path):
    study_with_every_state(corpus, tmp_path)
    run_make("notebooks", "report", STUDY="tiny", STORAGE=str(tmp_path / "studies" / "journal.log"),
             NB_OUT=str(tmp_path / "out"), REPORTS=str(tmp_path / "reports"))
    assert (tmp_path / "reports" / "tiny" / "report.html").is_file()

    expected_images = {"01-compare-runs": 5, "02-study-insights": 5, "03-scaling": 0}  # two complete trials: no fit worth drawing
    for name, n_images in expected_images.items():
        nb = nbformat.read(tmp_path / "out" / "tiny" / f"{name}.ipynb", as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert 'study = "tiny"' in injected[0].source
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], name
        assert sum("image/png" in o.get("data", {}) for o in outputs) == n_images, name
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "2 complete of 5 runs" in text
    assert "no fit of val bits/char against parameters is shown: 2 complete trial(s)" in text
