"""The one rule for the best trial."""

import math

from rlsweep.ranking import best, rank


def row(tid, value, steps=None):
    return {"trial_id": tid, "m": value, "env_steps": steps}


def test_max_and_min():
    rows = [row("a", 1.0), row("b", 3.0), row("c", 2.0)]
    assert [r["trial_id"] for r in rank(rows, "m", "max")] == ["b", "c", "a"]
    assert [r["trial_id"] for r in rank(rows, "m", "min")] == ["a", "c", "b"]


def test_non_finite_and_missing_values_are_not_ranked():
    rows = [row("a", math.nan), row("b", math.inf), {"trial_id": "c"}, row("d", "500"), row("e", -1.0)]
    assert [r["trial_id"] for r in rank(rows, "m", "max")] == ["e"]
    assert best([row("a", math.nan)], "m", "max") is None
    assert best([], "m", "min") is None


def test_ties_go_to_fewer_env_steps_then_the_earlier_trial_whatever_the_input_order():
    rows = [row("t3", 500.0, 20_000), row("t1", 500.0, 13_000), row("t2", 500.0, 13_000), row("t0", 400.0, 1)]
    for order in (rows, rows[::-1], rows[1:] + rows[:1]):
        assert [r["trial_id"] for r in rank(order, "m", "max")] == ["t1", "t2", "t3", "t0"]
    assert best([row("x", 1.0), row("y", 1.0, 5)], "m", "min")["trial_id"] == "y"  # unknown steps rank last


def trial_folder(sweep, tid, tag=None, results=(), checkpoints=(), params=None):
    """A trial folder as Tune leaves it: its JSON logger's result lines and params, its checkpoints."""
    import json

    d = sweep / f"trial_{tid}"
    d.mkdir(parents=True)
    config = params or {"ppo": {"lr": 0.1}}
    (d / "params.json").write_text(json.dumps(config))
    lines = [json.dumps({**r, "trial_id": tid, "experiment_tag": tag, "config": config}) for r in results]
    if lines:
        (d / "result.json").write_text("\n".join(lines) + "\n")
    from rlsweep.ppo import checkpoint

    for i in checkpoints:  # whole, as rankings pick only those
        checkpoint.write(d / f"checkpoint_{i:06d}", b"learner", {"iterations": i})
    return d


def test_sweep_rows_are_each_trials_latest_result_in_start_order(tmp_path):
    from rlsweep.ranking import ranked_rows, sweep_rows

    trial_folder(tmp_path, "x_00010", "10_lr=0.1", [{"m": 1.0, "env_steps": 64}], checkpoints=(1,))
    trial_folder(tmp_path, "x_00002", "2_lr=0.2", [{"m": 1.0, "env_steps": 64}, {"m": 5.0, "env_steps": 128}],
                 checkpoints=(1, 2, 10))
    trial_folder(tmp_path, "x_00003")  # started, failed before its first result
    (tmp_path / "trial_x_00004").mkdir()  # never started: no config yet
    rows = sweep_rows(tmp_path)
    assert [r["number"] for r in rows] == ["002", "010", "x_00003"]  # the sweep's count, not the id's order
    assert rows[0]["m"] == 5.0 and rows[0]["env_steps"] == 128 and rows[0]["config"] == {"ppo": {"lr": 0.1}}
    assert rows[0]["checkpoint"] == str(tmp_path / "trial_x_00002" / "checkpoint_000010")
    assert rows[2]["checkpoint"] is None and "m" not in rows[2]
    assert [r["trial_id"] for r in ranked_rows(tmp_path, "m", "max")] == ["x_00002", "x_00010"]
    assert [r["trial_id"] for r in ranked_rows(tmp_path, "m", "min")] == ["x_00010", "x_00002"]


def test_a_corrupt_result_log_is_named(tmp_path):
    import pytest

    from rlsweep.config import ConfigError
    from rlsweep.ranking import sweep_rows

    d = trial_folder(tmp_path, "y_00000", "1", [{"m": 1.0}])
    with open(d / "result.json", "a") as f:
        f.write('{"m": 2.0, "trial_id": "y_000')  # cut off mid-write
    with pytest.raises(ConfigError, match=r"trial_y_00000/result.json: the last result is not valid"):
        sweep_rows(tmp_path)


def test_a_confirmation_that_disagrees_with_the_search_decides_the_winner_and_best_exports_it(tmp_path):
    """Search: A beats B beats C. Confirmed on fresh seeds: B beats A (A's search score was luck); C
    was not confirmed. The winner is B, ranked by its confirmed score ahead of A; C comes after every
    confirmed one, whatever its search score; `rlsweep best` writes B and says it was confirmed."""
    import json

    from rlsweep.commands.best import best as best_command
    from rlsweep.commands.record import SWEEP_FILE
    from rlsweep.ranking import CONFIRM_DIR, CONFIRM_ORDER, ranked_rows

    sweep = tmp_path / "s"
    config = {"name": "x", "env": {"id": "CartPole-v1"}, "stop": {"env_steps": 1000}}
    a, b, c = ({**config, "ppo": {"lr": lr}} for lr in (0.1, 0.2, 0.3))
    trial_folder(sweep, "s_00001", "1_lr=0.1", [{"m": 500.0, "env_steps": 1000}], params=a)
    trial_folder(sweep, "s_00002", "2_lr=0.2", [{"m": 450.0, "env_steps": 1000}], params=b)
    trial_folder(sweep, "s_00003", "3_lr=0.3", [{"m": 400.0, "env_steps": 1000}], params=c)
    confirm = sweep / CONFIRM_DIR
    confirm.mkdir()
    (confirm / CONFIRM_ORDER).write_text(json.dumps(["s_00001", "s_00002"]))  # the search's top two, in order
    fresh = {"seed": 1_000_000, "sweep": {"seeds_per_trial": 5}}
    trial_folder(confirm, "c_00001", "1", [{"m": 300.0, "m_ci_low": 250.0, "m_ci_high": 350.0, "env_steps": 1000}],
                 params={**a, **fresh}, checkpoints=(1,))
    trial_folder(confirm, "c_00002", "2", [{"m": 440.0, "m_ci_low": 420.0, "m_ci_high": 460.0, "env_steps": 1000}],
                 params={**b, **fresh}, checkpoints=(1,))
    ranked = ranked_rows(sweep, "m", "max")
    assert [r["trial_id"] for r in ranked] == ["s_00002", "s_00001", "s_00003"]
    winner = ranked[0]
    assert winner["confirmed_m"] == 440.0 and winner["m"] == 450.0 and winner["confirmed_trial_id"] == "c_00002"
    assert winner["confirmed_seeds"] == list(range(1_000_000, 1_000_005))
    assert winner["confirmed_checkpoint"] == str(confirm / "trial_c_00002" / "checkpoint_000001")
    assert "confirmed_m" not in ranked[2]

    (sweep / SWEEP_FILE).write_text(json.dumps({"name": "s", "metric": "m", "mode": "max"}))
    out = best_command(str(sweep), output=str(tmp_path / "best.yaml"))
    assert out.row["trial_id"] == "s_00002"
    text = (tmp_path / "best.yaml").read_text()
    assert text.startswith(f"# best trial {out.row['number']} (trial id s_00002) of sweep s: m = 450.0; confirmed on fresh seeds (trial c_00002): "
                           "m = 440.0\n")
    assert "lr: 0.2" in text and "seed: 0" in text  # B's configuration, on the experiment's own seed
