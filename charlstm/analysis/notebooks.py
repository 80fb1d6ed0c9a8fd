"""The analysis notebooks: jupytext percent-format sources in ``analysis/``, executed
headlessly by papermill with a study's parameters injected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jupytext
import papermill as pm

from charlstm import names
from charlstm.errors import CharlstmError, ConfigError


def notebook_sources(folder: str | Path = "analysis") -> list[Path]:
    """The notebooks, in order: ``analysis/NN-name.py`` (jupytext percent format)."""
    return sorted(Path(folder).glob("[0-9][0-9]-*.py"))


def run_notebooks(parameters: dict[str, Any], folder: str | Path = "analysis",
                  out_dir: str | Path = names.DEFAULT_NOTEBOOKS_OUT, only: list[str] | None = None,
                  progress: bool = True) -> list[Path]:
    """Execute every notebook of ``folder`` with ``parameters`` injected after its
    ``parameters`` cell; the executed copies go to ``out_dir/<name>.ipynb``."""
    sources = [p for p in notebook_sources(folder) if not only or any(p.stem.startswith(o) for o in only)]
    if not sources:
        raise ConfigError(f"no notebooks (NN-name.py) in {folder}" + (f" matching {only}" if only else ""))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        out = out_dir / f"{src.stem}.ipynb"
        try:
            pm.execute_notebook(jupytext.read(src), str(out), parameters=parameters, kernel_name="python3",
                                cwd=str(Path.cwd()), progress_bar=progress, log_output=False)
        except pm.PapermillExecutionError as e:
            raise CharlstmError(f"{src.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                                f"(the executed notebook is {out})") from None
        written.append(out)
    return written
