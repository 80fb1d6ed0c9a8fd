"""What researchers look at, rendered by a real browser (Debian's headless chromium driven
through chromedriver): the study report and the MLflow UI. Screenshots go to the test's temp dir.

Skips where chromium or chromedriver is missing, with the reason; never under CI=true
(.ci/run installs both)."""

from __future__ import annotations

import sys
from pathlib import Path

from charlstm.cli import main
from tests.conftest import free_port, running_server, study_with_every_state, wait_for


def test_report_page_renders_every_image_without_console_errors(corpus, tmp_path, browser):
    study_with_every_state(corpus, tmp_path)
    assert main(["report", "tiny", "--length", "40", "--no-log"]) == 0
    page = tmp_path / "analysis" / "reports" / "tiny" / "report.html"
    browser.get(page.as_uri())
    assert wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
    images = browser.execute_script(
        "return [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0, i.naturalWidth])")
    assert len(images) == 10  # 5 charlstm plots (no scaling fit for 2 trials) + 5 Optuna views
    assert all(ok for _, ok, _ in images), [alt for alt, ok, _ in images if not ok]
    assert all(width > 300 for _, _, width in images)
    text = browser.find_element("tag name", "body").text
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        assert state in text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(height + 100, 16000))
    assert browser.save_screenshot(str(tmp_path / "report.png"))


def test_mlflow_ui_shows_the_parent_run_with_its_children(corpus, tmp_path, browser):
    study, uri = study_with_every_state(corpus, tmp_path)
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri,
           "--default-artifact-root", str(tmp_path / "mlartifacts"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(uri).get_run(study.user_attrs["mlflow_parent_run_id"])
    children = [f"tiny-trial-{t.number:04d}" for t in study.trials]
    with running_server(cmd, f"http://127.0.0.1:{port}") as url:
        browser.get(f"{url}/#/experiments/{parent.info.experiment_id}/runs")
        body = lambda: browser.find_element("tag name", "body").text  # noqa: E731
        assert wait_for(lambda: "study-tiny" in body()), body()[:2000]
        # the runs table lists the parent with its children folded: unfold them
        assert not any(name in body() for name in children)
        expand = browser.find_elements("css selector", f"[row-id='{parent.info.run_id}'] button")
        assert expand, "no expander on the parent row"
        expand[0].click()
        assert wait_for(lambda: all(name in body() for name in children), timeout=30), body()[:2000]
        assert f"{len(children) + 1} matching runs" in body()
        assert browser.save_screenshot(str(tmp_path / "mlflow-ui.png"))
