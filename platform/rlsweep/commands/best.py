"""`rlsweep best`: a sweep's best trial as an experiment file that `rlsweep train` runs as is.

The story: find the sweep (pulled from its bucket, where it is kept in one) and read its record, rank its trials (`ranking.ranked_rows`, the rows every
other report of the best trial uses), and write the winner's config, never over an existing file.
No Ray, no MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsweep.commands.record import SweepRecord, find_sweep
from rlsweep.config import ConfigError


@dataclass(frozen=True)
class BestOutcome:
    """The best trial of a sweep: its row, its experiment file's text, and where it was written (None:
    not written, to be printed)."""

    record: SweepRecord
    row: dict[str, Any]
    text: str
    written_to: str | None = None


def _refuse_existing(output: str) -> None:
    out = Path(output)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"-o {output}: file exists; rlsweep never overwrites it (pick another path)")
    if not out.parent.is_dir():
        raise ConfigError(f"-o {output}: folder {out.parent} does not exist")


def best(name_or_path: str, results_dir: str = "results", output: str | None = None) -> BestOutcome:
    """The best trial of the sweep `name_or_path` (a directory, or a name under `results_dir`).

    Args:
        output: write the experiment file here, whole or not at all; never over a file or link.

    Returns:
        The best trial and its experiment file.
    """
    from rlsweep.ranking import ranked_rows
    from rlsweep.tracking.report import best_config_yaml
    from rlsweep.tuning.bucket import refresh

    directory = find_sweep(name_or_path, results_dir)
    refresh(directory)  # (a bucket's mirror named by its path: what Tune stored there since)
    record = SweepRecord.read(directory)
    if output:
        _refuse_existing(output)
    ranked = ranked_rows(directory, record.metric, record.mode)
    if not ranked:
        raise ConfigError(f"sweep {directory}: no trial has reported {record.metric} yet")
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
    return BestOutcome(record, ranked[0], text, output)
