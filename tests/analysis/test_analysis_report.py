"""`etrm compare` and `etrm report`; the report is opened in headless Chromium (Playwright)."""

import json
import shutil

import pytest

from etrm.analysis.report import compare, encoder_efficiency, write_report
from etrm.cli import main
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


def test_encoder_efficiency_worked_example():
    # ETRM 14.5%, oracle 35.5%, no context 4.5%: (14.5 - 4.5) / (35.5 - 4.5) = 10 / 31.
    efficiency = encoder_efficiency(0.145, 0.355, 0.045)
    assert efficiency.value == pytest.approx(10 / 31) and str(efficiency) == "0.32"
    assert encoder_efficiency(0.025, 0.355, 0.045).value == pytest.approx(-2 / 31)  # under the floor
    assert encoder_efficiency(0.045, 0.355, 0.045).value == 0
    # Exactly 10 points is enough, though 0.35 - 0.25 falls short of 0.10 in floating point.
    assert encoder_efficiency(0.30, 0.35, 0.25).value == pytest.approx(0.5)


def test_encoder_efficiency_is_not_reported_under_10_points():
    efficiency = encoder_efficiency(0.10, 0.12, 0.05)  # the oracle 7 points over the floor
    assert efficiency.value is None
    assert str(efficiency) == "not reported: oracle - none = 7.0 points (< 10)"
    assert encoder_efficiency(0.10, 0.12, 0.05, min_gap=0.05).value == pytest.approx(5 / 7)


def _summary_only(run_dir, name: str, pass2: float):
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({
        "run_name": name, "model_type": "etrm", "encoder": "standard", "steps": 10, "wall_minutes": 1.0,
        "train_eval": {}, "test_eval": {"pass@2": pass2, "num_tasks": 200}}))
    return str(run_dir)


def test_compare_efficiency_against_an_oracle_and_a_no_context_run(tmp_path, capsys):
    runs = [_summary_only(tmp_path / name, name, score) for name, score in (("a", 0.145), ("b", 0.045))]
    bounds = [_summary_only(tmp_path / name, name, score) for name, score in (("oracle", 0.355), ("none", 0.045))]
    assert main(["compare", *runs, "--efficiency", *bounds]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| verdict | encoder efficiency |")
    assert lines[2].startswith("| a |") and lines[2].endswith("| 0.32 |")
    assert lines[3].startswith("| b |") and lines[3].endswith("| 0.00 |")
    assert "oracle" in lines[-1] and "0.355" in lines[-1] and "0.045" in lines[-1]
    narrow = _summary_only(tmp_path / "narrow", "narrow", 0.10)  # an oracle 5.5 points over the floor
    table = compare(runs, bounds=(narrow, bounds[1]))
    assert "| not reported: oracle - none = 5.5 points (< 10) |" in table


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


def test_pass_at_2_by_family_sums_each_family_s_tasks():
    import numpy as np

    from etrm.analysis.report import pass_at_2_by_family
    from etrm.core.errors import EtrmError
    from etrm.data.tasks import Task

    grid = np.zeros((2, 2), dtype=np.int64)

    def task(task_id, rule):
        return Task(task_id, [(grid, grid)], [(grid, grid)], rule=rule)

    tasks = [task("a", (("translate", (0, 1)),)), task("b", (("translate", (1, 0)),)),
             task("c", (("dihedral", 3),)), task("d", (("dihedral", 1), ("translate", (1, 1))))]
    per_task = {"a": {"pass@2": 1.0}, "b": {"pass@2": 0.5}, "c": {"pass@2": 0.0}, "d": {"pass@2": 1.0}}
    assert pass_at_2_by_family(per_task, tasks) == {"dihedral": (0.0, 1), "dihedral+translate": (1.0, 1),
                                                    "translate": (1.5, 2)}
    with pytest.raises(EtrmError, match="task e: no generating rule"):
        pass_at_2_by_family({**per_task, "e": {"pass@2": 1.0}}, tasks)
