"""`rlsweep best`: a sweep's best trial as an experiment file that `rlsweep train` runs as is.

The story: find the sweep (pulled from its bucket, where it is kept in one) and read its record, rank its trials (`ranking.ranked_rows`, the rows every
other report of the best trial uses), and write the winner's config, never over an existing file.
No Ray; no MLflow either, unless `--register` makes the winner a registered MLflow Model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsweep.commands.record import SweepRecord, find_sweep
from rlsweep.config import ConfigError, check_name, first_line


@dataclass(frozen=True)
class BestOutcome:
    """The best trial of a sweep: its row, its experiment file's text, and where it was written (None:
    not written, to be printed)."""

    record: SweepRecord
    row: dict[str, Any]
    text: str
    written_to: str | None = None
    registered: str | None = None  # with --register: `NAME version N (@champion)`


def _refuse_existing(output: str) -> None:
    out = Path(output)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"-o {output}: file exists; rlsweep never overwrites it (pick another path)")
    if not out.parent.is_dir():
        raise ConfigError(f"-o {output}: folder {out.parent} does not exist")


def best(name_or_path: str, results_dir: str = "results", output: str | None = None,
         register: str | None = None) -> BestOutcome:
    """The best trial of the sweep `name_or_path` (a directory, or a name under `results_dir`).

    Args:
        output: write the experiment file here, whole or not at all; never over a file or link.
        register: also log the winner's policy as an MLflow Model on the sweep's parent run and register
            it as a new version of this registered model, alias `champion` (`tracking.model`).

    Returns:
        The best trial and its experiment file.
    """
    from rlsweep.ranking import ranked_rows
    from rlsweep.tracking.report import best_config_yaml
    from rlsweep.tuning.bucket import refresh

    if register is not None:
        check_name(register, "--register")
    directory = find_sweep(name_or_path, results_dir)
    refresh(directory)  # (a bucket's mirror named by its path: what Tune stored there since)
    record = SweepRecord.read(directory, full=register is not None)
    if output:
        _refuse_existing(output)
    ranked = ranked_rows(directory, record.metric, record.mode)
    if not ranked:
        raise ConfigError(f"sweep {directory}: no trial has reported {record.metric} yet")
    registered = _register(record, ranked[0], register) if register is not None else None
    text = best_config_yaml(ranked[0], record.name, record.metric)
    if output:
        out = Path(output)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        try:  # whole or not at all, and never over a file or link that appeared meanwhile
            os.link(tmp, out)
        except FileExistsError:
            raise ConfigError(f"-o {output}: file exists; rlsweep never overwrites it (pick another path)") from None
        finally:
            tmp.unlink()
    return BestOutcome(record, ranked[0], text, output, registered)


def _register(record: SweepRecord, row: dict[str, Any], name: str) -> str:
    """The winner's model on the sweep's parent run, registered as `name`@champion (see `best`)."""
    from rlsweep.ranking import checkpoint_of
    from rlsweep.tracking.model import log_and_register
    from rlsweep.tracking.runs import TAG_DIR, TAG_KIND
    from rlsweep.tracking.store import check_store, redact
    from rlsweep.tuning.bucket import tag_of

    checkpoint = checkpoint_of(row)
    if not checkpoint:
        raise ConfigError(f"--register {name}: the best trial ({row['number']}) has no checkpoint to make a model of")
    store = record.store()
    check_store(store.uri, must_exist=True)
    tracker = store.tracker()
    parent = tracker.find(**{TAG_KIND: "sweep", TAG_DIR: tag_of(record.directory)})
    if parent is None:
        raise ConfigError(f"--register {name}: sweep {record.name} has no parent run in {redact(store.uri)} "
                          f"(experiment {store.experiment}) to log the model to")
    try:
        return log_and_register(tracker, parent, checkpoint, name, folder=f"model-{name}")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a store without a registry, a refused name: one line
        raise ConfigError(f"--register {name}: {redact(store.uri)} did not register it ({first_line(e)})") from None
