"""Config loading: unknown keys, bounds, cross-field checks and --set overrides."""

import pytest

from rlsweep.config import ConfigError, apply_overrides, flatten, load_experiment, parse_override

BASE = """\
name: t
env: {id: CartPole-v1}
ppo: {train_batch_size: 64, minibatch_size: 32}
rollouts: {num_rollout_workers: 1, num_envs_per_worker: 4}
stop: {env_steps: 1000}
"""


@pytest.fixture
def exp(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(BASE)
    return p


def test_shipped_experiments_validate():
    for name in ("cartpole_ppo", "pendulum_ppo"):
        cfg = load_experiment(f"experiments/{name}.yaml")
        assert cfg.name == name


def test_overrides_and_seed(exp):
    cfg = load_experiment(exp, ["stop.env_steps=20000", "ppo.lr=1e-3", "policy.hidden_sizes=[8, 8]"], seed=7)
    assert cfg.stop.env_steps == 20000 and cfg.ppo.lr == 1e-3 and cfg.policy.hidden_sizes == [8, 8]
    assert cfg.seed == 7
    assert cfg.rollout_length == 16


@pytest.mark.parametrize("override,fragment", [
    ("stop.foo=1", "unknown key 'stop.foo' (valid keys here: target_return, episode_return, env_steps, time_s)"),
    ("bogus=1", "unknown key 'bogus'"),
    ("ppo.gamma=0", "key 'ppo.gamma': Input should be greater than 0"),
    ("ppo.gamma=1.5", "key 'ppo.gamma': Input should be less than or equal to 1"),
    ("ppo.minibatch_size=48", "minibatch_size (48) must divide train_batch_size (64)"),
    ("ppo.train_batch_size=30", "must divide train_batch_size (30)"),
    ("rollouts.num_envs_per_worker=5", "must be a multiple of"),
    ("rollouts.num_rollout_workers=-1", "key 'rollouts.num_rollout_workers': Input should be greater than or equal to 0"),
    ("ppo.lr=fast", "key 'ppo.lr': Input should be a valid number"),
    ("ppo.anneal_lr=true", None),
    ("policy.hidden_sizes=[]", "non-empty list"),
    ("env.vectorization=threads", "key 'env.vectorization'"),
])
def test_bad_values_name_file_and_key(exp, override, fragment):
    if fragment is None:  # a valid override
        load_experiment(exp, [override])
        return
    with pytest.raises(ConfigError) as e:
        load_experiment(exp, [override])
    assert str(exp) in str(e.value) and fragment in str(e.value)


def test_anneal_needs_an_env_step_budget(exp):
    with pytest.raises(ConfigError, match="anneal_lr needs stop.env_steps"):
        load_experiment(exp, ["ppo.anneal_lr=true", "stop.env_steps=null", "stop.target_return=1"])


def test_evaluation_off_excludes_what_needs_it(exp):
    assert load_experiment(exp, ["evaluation.interval=0", "sweep.metric=env_steps"]).evaluation.interval == 0
    with pytest.raises(ConfigError, match="target_return is on the evaluation mean"):
        load_experiment(exp, ["evaluation.interval=0", "stop.target_return=400", "sweep.metric=episode_return_mean"])
    with pytest.raises(ConfigError, match="sweep.metric eval_return_mean needs evaluation.interval > 0"):
        load_experiment(exp, ["evaluation.interval=0", "sweep.metric=eval_return_mean"])


def test_a_cost_metric_needs_its_target_and_budget_and_mode_min(exp):
    with pytest.raises(ConfigError, match="env_steps_to_target needs stop.target_return"):
        load_experiment(exp, ["sweep.metric=env_steps_to_target", "sweep.mode=min"])
    with pytest.raises(ConfigError, match=r"time_to_target_s needs stop.target_return .* and stop.time_s"):
        load_experiment(exp, ["sweep.metric=time_to_target_s", "sweep.mode=min", "stop.target_return=400"])
    with pytest.raises(ConfigError, match="is a cost: set sweep.mode: min"):
        load_experiment(exp, ["sweep.metric=env_steps_to_target", "stop.target_return=400"])
    cfg = load_experiment(exp, ["sweep.metric=env_steps_to_target", "sweep.mode=min", "stop.target_return=400"])
    assert cfg.sweep.metric == "env_steps_to_target"


def test_stop_needs_a_criterion(exp):
    with pytest.raises(ConfigError, match="set at least one of"):
        load_experiment(exp, ["stop.env_steps=null"])
    assert load_experiment(exp, ["stop.env_steps=null", "stop.episode_return=475"]).stop.episode_return == 475


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        load_experiment(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_experiment(listy)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\n")
    with pytest.raises(ConfigError, match="missing required key 'env'"):
        load_experiment(missing)


def test_alias_bombs_and_duplicate_keys_are_refused_at_once(tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"  # 9^9 strings once expanded ("billion laughs")
    bomb.write_text("name: x\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi", strict=True)))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb.yaml: not valid YAML \(line 3, column \d+\): aliases \(\*a\) are not"):
        load_experiment(bomb)
    assert time.monotonic() - t0 < 1
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: x\nenv: {id: CartPole-v1}\nppo:\n  lr: 0.1\n  gamma: 0.9\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML \(line 6, column 3\): key 'lr' appears twice"):
        load_experiment(twice)
    with pytest.raises(ConfigError, match=r"--set 'env.kwargs=\{a: 1, a: 2\}': key 'a' appears twice"):
        parse_override("env.kwargs={a: 1, a: 2}")
    assert parse_override("env.kwargs={a: 1, b: [1, 2]}") == (["env", "kwargs"], {"a": 1, "b": [1, 2]})


def test_one_rule_for_names(exp):
    from rlsweep.config import check_name

    assert check_name("cartpole_ppo-2026.12", "--name") == "cartpole_ppo-2026.12"
    for bad in ("réseau", "a b", "a/b", "..", "", "x" * 201):
        with pytest.raises(ConfigError, match="use ASCII letters"):
            check_name(bad, "--name")
    with pytest.raises(ConfigError, match="key 'name'"):
        load_experiment(exp, ["name=réseau"])


def test_parse_override_forms():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=1e-3") == (["a"], 0.001)
    assert parse_override("a=hello") == (["a"], "hello")
    assert parse_override("a=null") == (["a"], None)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3, "f": {}}) == {"a.b": 1, "a.c.d": 2, "e": 3, "f": {}}


def test_each_bundle_must_fit_one_node_with_all_it_asks_for(exp):
    """Ray places a bundle on one node: enough CPUs on one node and a GPU on another is not enough."""
    cfg = load_experiment(exp, ["learners.num_learners=2", "learners.cpus_per_learner=4", "learners.gpus_per_learner=1",
                                "resources.learner_cpus=1"])
    assert [b for _, b in cfg.bundles()] == [{"CPU": 1}, {"CPU": 0.5}, {"CPU": 0.25}, {"CPU": 4, "GPU": 1},
                                             {"CPU": 4, "GPU": 1}]
    assert (cfg.trial_cpus, cfg.trial_gpus) == (9.75, 2)
    cfg.check_bundles_fit([{"CPU": 2}, {"CPU": 6, "GPU": 1}], "here")
    with pytest.raises(ConfigError) as e:
        cfg.check_bundles_fit([{"CPU": 8}, {"CPU": 2, "GPU": 1}], "here")
    assert str(e.value) == ("learners.cpus_per_learner 4 and learners.gpus_per_learner 1: one process of a trial asks "
                            "for 4 CPUs and 1 GPUs on one node but no node here has that (the most on one: 8 CPUs and 1 "
                            "GPUs): lower learners.cpus_per_learner and learners.gpus_per_learner, or add larger nodes")
    with pytest.raises(ConfigError, match=r"^resources.learner_cpus 1: .* \(the most on one: 0.5 CPUs\)"):
        cfg.check_bundles_fit([{"CPU": 0.5, "GPU": 4}], "here")


def test_a_rule_across_keys_says_which_keys_to_change():
    """`train --set stop.target_return=null` on the shipped experiment: the line names what to set."""
    with pytest.raises(ConfigError) as e:
        load_experiment("experiments/cartpole_ppo.yaml", ["stop.target_return=null"])
    assert str(e.value).startswith("experiments/cartpole_ppo.yaml: sweep.metric env_steps_to_target needs")
    assert "rank by another metric (e.g. sweep.metric=eval_return_mean with sweep.mode=max" in str(e.value)
    assert "<top level>" not in str(e.value)
    cfg = load_experiment("experiments/cartpole_ppo.yaml", ["stop.target_return=null", "sweep.metric=eval_return_mean",
                                                            "sweep.mode=max"])
    assert cfg.stop.target_return is None
