"""The links a sweep prints, opened as a person opens them: a real sweep's store, a real `rlsweep ui`, a
real headless Chromium (Debian's, driven by Playwright; `.ci/run` installs both where they are missing).

With RLSWEEP_SCREENSHOTS=DIR the pages are also saved there (the README's pictures come from here).
"""

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env, free_port, rlsweep, wait_http

CHROMIUM = os.environ.get("RLSWEEP_CHROMIUM", "/usr/bin/chromium")
EXP = """\
name: browsed
seed: 2
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 256, minibatch_size: 128, num_epochs: 2}}
rollouts: {{num_rollout_workers: 0, num_envs_per_worker: 8}}
evaluation: {{interval: 1, episodes: 4}}
stop: {{env_steps: 1536}}
resources: {{learner_cpus: 1}}
results_dir: {results}
tracking: {{local_dir: {store}}}
sweep: {{search_space: {space}, trials: 3, metric: eval_return_mean, mode: max, n_startup_trials: 3,
        seeds_per_trial: 1, max_concurrent: 2}}
"""


def shoot(page, name: str, tmp_path: Path) -> None:
    close = page.locator("button[aria-label='Close']")  # MLflow's assistant panel, when it opens, takes a third
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / f"{name}.png"))
    if os.environ.get("RLSWEEP_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["RLSWEEP_SCREENSHOTS"]) / f"{name}.png"))


@pytest.mark.slow
def test_every_printed_link_shows_what_it_says_in_a_real_browser(tmp_path):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM}: .ci/run installs Debian's `chromium`"
    (tmp_path / "space.yaml").write_text("ppo.lr: {type: loguniform, low: 0.0003, high: 0.01}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results", store=tmp_path, space=tmp_path / "space.yaml"))
    r = rlsweep("sweep", exp, "--name", "looked-at")
    assert r.returncode == 0, r.stderr[-3000:]
    printed = dict(re.findall(r"^  (its trials, best first|their curves, overlaid|the sweep \(its summary\))\s+(\S+)$",
                              r.stdout, re.M))
    assert len(printed) == 3, r.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("browsed")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep")
    trials = sorted((x for x in runs if x.data.tags.get("rlsweep.kind") == "trial"),
                    key=lambda x: -x.data.metrics["evaluation/eval_return_mean"])
    winner = client.get_run(parent.data.tags["rlsweep.best_run_id"]).info.run_name
    assert winner.endswith(" (winner)")  # marked where the table and the legends show it
    winner = winner.removesuffix(" (winner)")

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "ui", str(exp), "--port", str(port)], cwd=ROOT,
                          env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", ui)
        urllib.request.urlopen(base + "/", timeout=30).read()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 900})

            # the trials, best first: the runs table (model-training view), the sweep's trials and only them
            page.goto(printed["its trials, best first"].replace("http://127.0.0.1:5000", base))
            page.get_by_text("3 matching runs").wait_for(timeout=60_000)
            names = [t.info.run_name for t in trials]
            for n in names:  # the count shows before the table's rows have all been drawn
                page.get_by_text(n, exact=True).first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            assert "Run Name" in text and "Sort: evaluation/eval_return_mean" in text, text[:2000]
            assert all(n in text for n in names), (names, text[:2000])
            assert parent.info.run_name not in text.split("Run Name", 1)[1], text[:2000]
            ties = len({t.data.metrics["evaluation/eval_return_mean"] for t in trials}) < len(trials)
            if not ties:  # (runs with equal scores may come in either order)
                assert sorted(names, key=text.index) == names, (names, text[:2000])
            shoot(page, "runs_best_first", tmp_path)

            # their curves overlaid: the chart view of the same runs, the evaluation return among the charts
            page.goto(printed["their curves, overlaid"].replace("http://127.0.0.1:5000", base))
            page.get_by_text("Model metrics").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            text = page.inner_text("body")
            assert "eval_return_mean" in text and "3 matching runs" in text, text[:2000]
            # the chart sections, the answer first: the evaluation, then the episodes, the time, training
            found = [re.search(rf"^{name}\s*\(\d+\)", text, re.M) for name in ("evaluation", "rollouts", "timing", "training")]
            assert all(found), text
            assert [m.start() for m in found] == sorted(m.start() for m in found), text
            shoot(page, "curves_overlaid", tmp_path)

            # the sweep: its description leads with the winner, by name
            page.goto(printed["the sweep (its summary)"].replace("http://127.0.0.1:5000", base))
            page.get_by_text("Winner: trial").first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            assert f"Winner: trial {winner}" in text and "Description" in text, text[:2000]
            assert "best_eval_return_mean" in text
            page.get_by_text("Description").first.scroll_into_view_if_needed()
            shoot(page, "sweep_summary", tmp_path)
            browser.close()
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
