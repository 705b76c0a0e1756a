"""Where a run came from (`tracking.provenance`) and the sweep's reproducibility checklist
(`tracking.report.checklist`)."""

import subprocess

import pytest

from rlsweep.tracking import provenance
from rlsweep.tracking.report import checklist


@pytest.fixture
def fresh(monkeypatch):
    provenance.tags.cache_clear()
    yield
    provenance.tags.cache_clear()


def git(folder, *args):
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_runs_provenance_names_its_commit_and_whether_the_tree_had_changes(tmp_path, monkeypatch, fresh):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["/venv/bin/rlsweep", "sweep", "e.yaml", "--set", "tracking.uri=http://u:hunter2@h:5000"])
    tags = provenance.tags()
    assert provenance.TAG_GIT_COMMIT not in tags  # not a git checkout
    assert tags["rlsweep.command"] == "rlsweep sweep e.yaml --set tracking.uri=http://u:***@h:5000"
    assert tags["rlsweep.version.rlsweep"] and tags["rlsweep.version.mlflow"] and int(tags["rlsweep.cpus"]) >= 1

    git(tmp_path, "init", "-q")
    (tmp_path / "e.yaml").write_text("name: a\n")
    git(tmp_path, "add", "e.yaml")
    git(tmp_path, "commit", "-qm", "first")
    provenance.tags.cache_clear()
    tags = provenance.tags()
    assert tags[provenance.TAG_GIT_COMMIT] == git(tmp_path, "rev-parse", "HEAD") and tags["rlsweep.git_dirty"] == "false"
    (tmp_path / "e.yaml").write_text("name: b\n")
    provenance.tags.cache_clear()
    assert provenance.tags()["rlsweep.git_dirty"] == "true"
    assert provenance.command_line(["/x/platform/rlsweep/cli.py", "train", "a b.yaml"]) == "rlsweep train 'a b.yaml'"


def test_the_checklist_names_space_budget_seeds_winner_and_the_command_that_reruns_it(fresh):
    def row(number, seed, k, score, confirmed=None):
        r = {"trial": number, "trial_id": f"id{number}", "mlflow_run_id": f"run{number}", "eval_return_mean": score,
             "config": {"seed": seed, "sweep": {"seeds_per_trial": k}, "ppo": {"lr": 0.001 * int(number)},
                        "stop": {"env_steps": 4096, "target_return": None}}}
        if confirmed is not None:
            r["confirmed_eval_return_mean"] = confirmed
        return r

    rows = [row("001", 0, 4, 300.0), row("002", 0, 4, 450.0, confirmed=420.0)]
    logged = {"search_space": "search_spaces/ppo_core.yaml", "trials": "8", "max_concurrent": "2", "sampler": "tpe",
              "sampler_seed": "7", "scheduler": "asha", "mode": "max"}
    text = checklist(rows, [rows[1], rows[0]], "eval_return_mean", logged, "s", "/r/my sweep", ["ppo.lr"],
                     [1_000_000, 1_000_001])
    for fragment in ("# Reproducibility checklist: sweep s", "search space: search_spaces/ppo_core.yaml (keys: ppo.lr)",
                     "budget: 8 trials asked, 2 started, at most 2 at once", "sampler: tpe (seed 7); scheduler: asha",
                     "each trial's stop: env_steps=4096\n", "tuning seeds (the search's agents): 0-3",
                     "confirmation seeds (no search agent had one): 1000000-1000001",
                     "trial 002 (trial id id002, MLflow run run002): eval_return_mean = 450.0, confirmed on fresh "
                     "seeds = 420.0", "its searched values: ppo.lr=0.002",
                     "rerun it: `rlsweep best '/r/my sweep' -o best.yaml && rlsweep train best.yaml`",
                     "- rlsweep.version.ray: "):
        assert fragment in text, (fragment, text)
    assert "no trial reported eval_return_mean" in checklist([], [], "eval_return_mean", {}, "s", "/r", [], [])
