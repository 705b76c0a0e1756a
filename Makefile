# `make sweep` and `make test` create the virtualenv and install what they need when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# A CPU build of this torch may already sit in pip's find-links (it does on the project's CI
# machines); installing it first satisfies the project's `torch>=` bound without a multi-GB
# CUDA download. Elsewhere pip simply downloads this version.
TORCH ?= torch==2.13.0

.PHONY: venv sweep train test test-fast test-unit test-e2e lint bench bench-rllib-venv bench-atari-venv bench-atari clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,all]"
	rm -f $(VENV)/.installed-* && touch $@

sweep: venv  ## the main job: an Optuna sweep of PPO on CartPole, tracked in ./mlflow.db
	$(BIN)/rlsweep sweep experiments/cartpole_ppo.yaml --space search_spaces/ppo_core.yaml
	@echo "Compare the trials in the MLflow UI: $(BIN)/rlsweep ui   (then open http://127.0.0.1:5000)"

train: venv
	$(BIN)/rlsweep train experiments/cartpole_ppo.yaml

test: venv  ## the whole suite, slow tests included: two workers (most of a test's time is waiting on processes)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

test-unit: venv  ## the in-process tests (tests/e2e runs the commands in subprocesses)
	$(BIN)/python -m pytest -q -n 2 --ignore=tests/e2e

test-e2e: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup tests/e2e

lint: venv
	$(BIN)/ruff check platform tests benchmarks

bench: venv bench-rllib-venv
	$(BIN)/python -m pip install --quiet -e ".[dev,all,bench]"
	$(BIN)/python benchmarks/cartpole_time_to_solve.py
	$(BIN)/python benchmarks/sweep_vs_rllib.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/seeds_cost.py
	$(BIN)/python benchmarks/seeds_holdup.py
	$(BIN)/python benchmarks/mujoco_parity.py
	$(BIN)/python benchmarks/start_time.py
	$(BIN)/python benchmarks/cnn_acting.py
	$(BIN)/python benchmarks/pbt.py

# RLlib pins an older gymnasium than rlsweep allows: its peer runs in a virtualenv of its own.
bench-rllib-venv: .venv-rllib/.installed
.venv-rllib/.installed:
	test -x .venv-rllib/bin/python || $(PYTHON) -m venv .venv-rllib
	.venv-rllib/bin/python -m pip install --quiet "$(TORCH)"
	.venv-rllib/bin/python -m pip install --quiet "ray[rllib,tune]==2.60.0" optuna pillow
	touch $@

# The Atari peers in their own virtualenv, on the gymnasium CleanRL pins (0.29; ale-py 0.9 ships the
# ROMs that CleanRL's ale-py 0.8 downloads), with this project's torch: CleanRL's ppo_atari.py (from a
# checkout of github.com/vwxyzjn/cleanrl: CLEANRL=path/to/cleanrl) and SB3's CnnPolicy PPO
bench-atari-venv: .venv-atari-peers/.installed
.venv-atari-peers/.installed:
	test -x .venv-atari-peers/bin/python || $(PYTHON) -m venv .venv-atari-peers
	.venv-atari-peers/bin/python -m pip install --quiet "$(TORCH)"
	.venv-atari-peers/bin/python -m pip install --quiet "gymnasium==0.29.1" "ale-py==0.9.1" \
		"stable-baselines3==2.3.2" "opencv-python-headless<5" tyro tensorboard
	# ale-py 0.8 registered its games with gymnasium at start-up (an entry point), 0.9 on import: a .pth
	# imports it, so CleanRL's script runs as written
	echo "import ale_py" > "$$(.venv-atari-peers/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/ale_py_games.pth"
	touch $@

CLEANRL ?= ../cleanrl
bench-atari: venv bench-atari-venv
	$(BIN)/python benchmarks/atari.py --cleanrl $(CLEANRL)

clean:
	rm -rf results .pytest_cache
