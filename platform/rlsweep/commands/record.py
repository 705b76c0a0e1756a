"""A sweep's directory and its record, `rlsweep_sweep.json`: what `resume` and `best` need, read once.

A sweep lives in `<results_dir>/<name>/`: Tune's experiment state and trials, `optuna.db` (the
study, unless `sweep.study_storage` names another storage) and the record, written before the first
trial starts.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsweep.config import ConfigError, ExperimentConfig

SWEEP_FILE = "rlsweep_sweep.json"
LOCK_FILE = ".rlsweep_running"  # held (flock) by the process that runs the sweep; holds its pid


def find_sweep(name_or_path: str, results_dir: str = "results") -> Path:
    """A sweep directory from a path or a name under results_dir; ConfigError if there is none. A
    sweep in a bucket (its `s3://` URI, or a name under an `s3://` results_dir) is pulled into its
    mirror here (`tuning.bucket`), which is returned."""
    from rlsweep.tuning import bucket

    if bucket.is_uri(name_or_path) or bucket.is_uri(results_dir):
        place = (bucket.Bucket.parse(name_or_path, "sweep") if bucket.is_uri(name_or_path)
                 else bucket.Bucket.parse(results_dir, "--results-dir").child(name_or_path))
        local = place.mirror()
        bucket.pull(place, local)
        if (local / SWEEP_FILE).is_file():
            return local
        raise ConfigError(f"no sweep at {place.location} (no {SWEEP_FILE} there)")
    for candidate in (Path(name_or_path), Path(results_dir) / name_or_path):
        if (candidate / SWEEP_FILE).is_file():
            return candidate.resolve()
    raise ConfigError(f"no sweep {name_or_path!r}: neither a sweep directory nor a sweep under "
                      f"{Path(results_dir).resolve()}")


@dataclass(frozen=True)
class SweepRecord:
    """A sweep's record.

    Args:
        directory: the sweep directory.
        name: the sweep's name.
        metric: the metric trials are ranked by; `mode` says which way ("max" or "min").
        trials: how many trials the sweep asked for.
        params: the searched keys.
        tracking_uri: the MLflow store (no password in it).
        cfg: the experiment (validated); None where `read` was not asked for it.
        time_budget_s: the sweep's time budget, if any.
    """

    directory: Path
    name: str
    metric: str
    mode: str
    trials: int | None = None
    params: tuple[str, ...] = ()
    tracking_uri: str | None = None
    cfg: ExperimentConfig | None = None
    time_budget_s: float | None = None

    @classmethod
    def read(cls, directory: Path, full: bool = False) -> SweepRecord:
        """The record in `directory`; a ConfigError when it is not what rlsweep wrote. `best` needs only
        the metric; `full`: everything `resume` needs, its experiment validated."""
        path = directory / SWEEP_FILE
        try:
            meta = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, OSError):
            raise ConfigError(f"{path}: not readable as a sweep record (corrupt or truncated)") from None
        keys = ("name", "metric", "mode") + (("experiment", "tracking_uri", "params", "trials") if full else ())
        missing = [k for k in keys if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise ConfigError(f"{path}: not a sweep record (no {', '.join(missing)})")
        cfg = None
        if full:
            try:
                cfg = ExperimentConfig.model_validate(meta["experiment"])
            except ValueError:
                raise ConfigError(f"{path}: its experiment is not valid (edited or corrupt)") from None
        return cls(directory=directory, name=meta["name"], metric=meta["metric"], mode=meta["mode"],
                   trials=meta.get("trials"), params=tuple(meta.get("params") or ()),
                   tracking_uri=meta.get("tracking_uri"), cfg=cfg, time_budget_s=meta.get("time_budget_s"))

    @staticmethod
    def write(directory: Path, fields: dict[str, Any]) -> None:
        """Writes the record whole (a temporary file, then renamed)."""
        tmp = directory / f".{SWEEP_FILE}.tmp"
        tmp.write_text(json.dumps(fields, indent=2))
        tmp.replace(directory / SWEEP_FILE)

    @property
    def argument(self) -> str:
        """The sweep as `resume` and `best` take it on a command line: its bucket URI (quoted) where it
        is kept in one (`tuning.bucket`), else its directory."""
        import shlex

        from rlsweep.tuning.bucket import remote_of

        place = remote_of(self.directory)
        return shlex.quote(place.uri) if place is not None else str(self.directory)

    def store(self) -> Any:
        """The MLflow store and experiment the sweep's runs are in (a full record only)."""
        from rlsweep.tracking.store import Store, experiment_name

        assert self.cfg is not None and self.tracking_uri is not None, "a full record"
        return Store(self.tracking_uri, experiment_name(self.cfg))


class SweepLock:
    """The one process that runs a sweep: an exclusive `flock` on `<sweep>/.rlsweep_running`, which
    holds that process's pid. The operating system lets go of it however the process ends (SIGKILL
    included), so a stale lock never blocks a resume. (On a network filesystem that does not carry
    locks across machines, two machines are not kept apart; a sweep kept in a bucket is also leased
    there, which keeps another machine's driver out: `tuning.bucket.take_lease`.)"""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self._file = None
        self._bucket = None

    def acquire(self, name: str) -> SweepLock:
        """Takes the lock, or a ConfigError naming the process that holds it."""
        f = open(self.path, "a+")  # noqa: SIM115 - held open for as long as the sweep runs
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"sweep {name} is running in process {holder} ({self.path.parent}): wait for it to "
                              "end, or stop it (Ctrl-C) and resume then") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        from rlsweep.tuning.bucket import remote_of, take_lease

        self._bucket = remote_of(self.path.parent)
        if self._bucket is not None:  # another machine's driver is kept out by a lease in the bucket
            try:
                take_lease(self._bucket, name)
            except BaseException:
                self.release()
                raise
        return self

    def release(self) -> None:
        """Lets go (the file stays: it is the lock's place, not its state)."""
        bucket, self._bucket = self._bucket, None
        if bucket is not None:
            from rlsweep.tuning.bucket import drop_lease

            drop_lease(bucket)
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
