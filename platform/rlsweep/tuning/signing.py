"""Keeping a sweep directory safe to resume while Tune writes it: a Tune callback that signs Tune's
state (`integrity.Signer`) and keeps checkpoints until no signed state names them (`retention`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ray import tune

from rlsweep.tuning.bucket import refresh
from rlsweep.tuning.integrity import Signer
from rlsweep.tuning.retention import Retainer


class SignTuneState(tune.Callback):
    """Signs a sweep's Tune state (`integrity.Signer`) whenever Tune may have written it: after each
    step of Tune's loop (Tune snapshots its state just before), after a trial error, and at the end;
    keeps each checkpoint recoverable until a signed state no longer names it (`retention.Retainer`)."""

    def __init__(self, directory: str | Path):
        self.signer = Signer(directory)
        self.retainer = Retainer(directory)

    def __setstate__(self, state: dict) -> None:  # a sweep started before checkpoints were kept has none
        self.__dict__.update(state)
        if "retainer" not in state:
            self.retainer = Retainer(self.signer.directory)

    def _find_staging(self, trials: list) -> None:
        """Tune's driver staging folder for this sweep (`<Ray session>/artifacts/<time>/<name>/
        driver_artifacts`, the parent of each trial's `local_path`): signing there keeps up with Tune's
        writes (see `integrity.Signer`). Fenced by tests/e2e/test_sweep.py's SIGKILL test."""
        if self.signer.staging is not None:
            return
        for trial in trials:
            if getattr(trial, "local_path", None):
                self.signer.staging = Path(trial.local_path).parent
                return

    def setup(self, **info: Any) -> None:
        """Tune starts (or resumes): sign what is there, keep every checkpoint there is. (A sweep kept
        in a bucket: what Tune wrote there directly, its `tuner.pkl`, is fetched into the mirror first.)"""
        try:
            refresh(self.signer.directory)
        except Exception as e:  # noqa: BLE001 - signed as it is here; `resume` pulls the rest
            print(f"rlsweep: {e}", file=sys.stderr)
        self.signer.sign()
        self.retainer.keep_all()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        """Keeps the new checkpoint before Tune registers it (and deletes older ones)."""
        self.retainer.keep(checkpoint.path)  # before Tune registers it, and deletes older ones

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """After each step of Tune's loop (Tune snapshots its state just before): sign it, and
        let go of the checkpoints no signed state names any more.
        """
        self._find_staging(trials)
        self.signer.sign(trials=False)
        self.retainer.prune(self.signer.state_signed_at)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Signs the failed trial's error file."""
        self.signer.sign()  # its error.pkl

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Signs Tune's final snapshot and drops every kept checkpoint."""
        self.signer.sign()  # Tune's final snapshot, taken just before
        self.retainer.drop()

