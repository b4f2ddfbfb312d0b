"""`etrm compare` and `etrm report`; the report is opened in headless Chromium (Playwright)."""

import json
import shutil

import pytest

from etrm.analysis.report import compare, write_report
from etrm.core.config import load_config
from etrm.train.loop import train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    train(load_config(tiny(run_dir, "run_name=report_run", "phase=overfit", "max_steps=4", "log_every=2",
                           "eval_every=2", "diagnostics_every=2")))
    return run_dir


def test_compare_table_has_one_row_per_run(finished, tmp_path):
    out = tmp_path / "compare.md"
    table = compare([finished, finished], out)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| run | model | encoder |") and len(lines) == 4
    summary = json.loads((finished / "summary.json").read_text())
    assert f"| {summary['train_eval']['token_accuracy']:.3f} |" in lines[2]
    assert out.read_text() == table


def test_report_is_self_contained(finished):
    page = write_report(finished).read_text()
    assert "report_run" in page and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: chromium); .ci/run installs it")
def test_report_renders_in_a_browser(finished):
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    path = write_report(finished)
    evaluated = json.loads((finished / "eval.json").read_text())
    solved = sum(task["pass@2"] > 0 for task in evaluated["per_task"].values())
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto(path.as_uri())
        assert "report_run" in page.inner_text("#summary")
        assert page.inner_text("#verdict").strip().startswith("Verdict (overfit)")
        widths = page.eval_on_selector_all("#figures img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) >= 5 and all(width > 100 for width in widths)
        assert page.locator(".card").count() == evaluated["num_tasks"]
        page.click("#show-solved")
        assert page.locator(".card:visible").count() == solved
        page.click("#show-unsolved")
        assert page.locator(".card:visible").count() == evaluated["num_tasks"] - solved
        page.click("#show-all")
        assert page.locator(".card:visible").count() == evaluated["num_tasks"]
        browser.close()
