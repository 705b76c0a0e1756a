"""Search-space files: validation against the experiment schema, and what Optuna suggests."""

import optuna
import pytest

from rlsweep.config import ConfigError, load_experiment
from rlsweep.search_space import load_search_space, tunable_keys

EXP = "experiments/cartpole_ppo.yaml"


def space(tmp_path, text, exp=EXP):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return load_search_space(p, load_experiment(exp).model_dump(mode="json"), exp)


@pytest.mark.parametrize("name", ["ppo_core", "ppo_wide"])
def test_shipped_spaces_validate_and_suggest_values_in_bounds(name):
    s = load_search_space(f"search_spaces/{name}.yaml", load_experiment(EXP).model_dump(mode="json"), EXP)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        cfg = s.suggest(trial)
        assert 1e-4 <= cfg["ppo/lr"] <= 3e-3
        assert 0.95 <= cfg["ppo/gamma"] <= 0.999  # gamma itself, also when 1 - gamma is what is sampled
        assert cfg["ppo/train_batch_size"] in (512, 1024, 2048, 4096)
        study.tell(trial, 0.0)
    assert {"ppo.lr", "ppo.gamma", "ppo.train_batch_size"} <= set(s.params)


def test_complement_is_sampled_on_a_log_scale(tmp_path):
    s = space(tmp_path, "ppo.gamma: {type: loguniform, low: 0.9, high: 0.999, complement: true}\n")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    gammas = []
    for _ in range(400):
        t = study.ask()
        gammas.append(s.suggest(t)["ppo/gamma"])
        assert "1-ppo.gamma" in t.params and "ppo.gamma" not in t.params
    # log-uniform 1-gamma in [0.001, 0.1]: half the mass below 0.01, i.e. gamma above 0.99
    assert 0.4 < sum(g > 0.99 for g in gammas) / len(gammas) < 0.6


def test_list_choices_and_ints(tmp_path):
    s = space(tmp_path, "policy.hidden_sizes: {type: choice, values: [[8], [16, 16]]}\n"
                        "ppo.num_epochs: {type: int, low: 2, high: 8, step: 2}\n")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        cfg = s.suggest(study.ask())
        seen.add(tuple(cfg["policy/hidden_sizes"]))
        assert cfg["ppo/num_epochs"] in (2, 4, 6, 8)
    assert seen == {(8,), (16, 16)}


@pytest.mark.parametrize("text,fragment", [
    ("ppo.learning_rate: {type: uniform, low: 0, high: 1}\n", "unknown parameter 'ppo.learning_rate' (tunable keys: seed,"),
    ("ppo.lr: {type: uniform, low: 0.1, high: 0.01}\n", "parameter 'ppo.lr': low (0.1) must be below high (0.01)"),
    ("ppo.lr: {type: loguniform, low: -1, high: 0.01}\n", "a log scale needs positive bounds"),
    ("ppo.gamma: {type: loguniform, low: 0.9, high: 1.0, complement: true}\n", "1 - high = 0"),
    ("ppo.lr: {type: gaussian, low: 0, high: 1}\n", "unknown type 'gaussian' (expected uniform, loguniform, int or choice)"),
    ("ppo.lr: {low: 0, high: 1}\n", "missing 'type'"),
    ("ppo.train_batch_size: {type: choice, values: []}\n", "parameter 'ppo.train_batch_size': values"),
    ("ppo.lr: {type: uniform, low: 0, high: 1, scale: 2}\n", "scale: unknown field"),
    ("ppo.lr: 0.001\n", "expected a mapping"),
    ("ppo.gamma: {type: uniform, low: 0.9, high: 1.5}\n", "invalid experiment (ppo.gamma=1.5)"),
    ("ppo.minibatch_size: {type: choice, values: [256, 2048]}\n", "minibatch_size (2048) must divide train_batch_size (1024)"),
    ("{}\n", "no parameters"),
    ("ppo.minibatch_size: {type: int, low: 64, high: 128}\n",
     "invalid experiment (ppo.minibatch_size=65): "),
    ("ppo.minibatch_size: {type: uniform, low: 64, high: 128}\n",
     "uniform draws fractional numbers but ppo.minibatch_size is an integer: use {type: int"),
    ("ppo.num_epochs: {type: loguniform, low: 2, high: 8}\n", "ppo.num_epochs is an integer"),
    ("ppo.lr: {type: uniform, low: 0, high: .inf}\n", "finite number"),
])
def test_bad_spaces_are_one_clear_error(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as e:
        space(tmp_path, text)
    assert "space.yaml" in str(e.value) and fragment in str(e.value), str(e.value)


def test_tunable_keys_are_schema_leaves():
    keys = tunable_keys()
    assert "ppo.lr" in keys and "policy.hidden_sizes" in keys and "sweep.trials" in keys
    assert "ppo" not in keys and "name" not in keys


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
def test_every_sampler_drives_the_wide_space(sampler):
    from rlsweep.tuning.searcher import make_sampler

    cfg = load_experiment(EXP, [f"sweep.sampler={sampler}", "sweep.n_startup_trials=2", "sweep.seed=4"])
    s = load_search_space("search_spaces/ppo_wide.yaml", cfg.model_dump(mode="json"), EXP)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    seen = []
    for i in range(5):
        trial = study.ask()
        seen.append(s.suggest(trial))
        study.tell(trial, float(i))
    assert len({round(c["ppo/lr"], 12) for c in seen}) >= 3  # a search, not a constant (GP may exploit a bound)
    assert all(0.95 <= c["ppo/gamma"] <= 0.999 for c in seen)
    # the same seed gives the same suggestions
    again = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    first = again.ask()
    assert s.suggest(first) == seen[0]


def test_a_valid_int_range_and_the_suggestion_check(tmp_path):
    s = space(tmp_path, "ppo.minibatch_size: {type: int, low: 128, high: 256, step: 128}\n"
                        "ppo.num_epochs: {type: int, low: 1, high: 12}\n")
    assert s.check({"ppo": {"minibatch_size": 256, "num_epochs": 3}}) is None
    problem = s.check({"ppo": {"minibatch_size": 384, "num_epochs": 3}})
    assert "minibatch_size (384) must divide train_batch_size (1024)" in problem


def test_env_choices_are_built_before_the_sweep_starts(tmp_path):
    """A choice of env kwargs the env rejects could never start a trial: refused when the space is read,
    naming the choice (each distinct env setting is built once)."""
    ok = space(tmp_path, "env.kwargs: {type: choice, values: [{}, {sutton_barto_reward: true}]}\n")
    assert ok.params
    with pytest.raises(ConfigError, match=r"the space allows an env that cannot be built \(env.kwargs=\{'bogus': 1\}\)"):
        space(tmp_path, "env.kwargs: {type: choice, values: [{}, {bogus: 1}]}\n")
