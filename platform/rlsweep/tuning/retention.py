"""Checkpoints Tune deleted stay recoverable until a signed Tune state no longer names them.

Tune deletes a trial's checkpoints beyond `sweep.keep_checkpoints` the moment a new one is
registered, but snapshots its own state (which names each trial's latest checkpoint) at most once a
second. A driver killed in between resumes from a state naming a checkpoint that is gone, and that
trial fails. So every checkpoint a trial reports is hard-linked (no copy where the filesystem links)
into `<sweep>/.rlsweep_kept/<trial>/<checkpoint>`; once Tune has deleted the original and a state
snapshotted after that has been signed (`integrity.Signer`), the link goes too. `restore` puts back,
before `Tuner.restore`, what a killed driver left deleted. No Ray here.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

KEPT = ".rlsweep_kept"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


class Retainer:
    """Keeps hard links to a sweep's checkpoints until no signed Tune state can name them.

    `directory`: the sweep directory. See the module's docstring for why.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._gone: dict[Path, float] = {}  # kept copy -> when its original was first seen deleted

    def keep(self, checkpoint: str | Path) -> None:
        """Links a checkpoint folder of one of the sweep's trials (once)."""
        src = Path(checkpoint)
        try:
            rel = src.resolve().relative_to(self.directory.resolve())
        except ValueError:  # not under the sweep's folder (a restore from elsewhere)
            return
        dst = self.directory / KEPT / rel
        if dst.exists() or not src.is_dir():
            return
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
        tmp.rename(dst)

    def keep_all(self) -> None:
        """Every checkpoint folder already there (a resumed sweep's)."""
        for ckpt in self.directory.glob("*/checkpoint_*"):
            if ckpt.is_dir() and not ckpt.name.endswith(".tmp"):
                self.keep(ckpt)

    def prune(self, state_signed_at: float) -> None:
        """Drops the kept copies whose original Tune deleted before the snapshot of its state that was
        signed last (`state_signed_at`, its file's time): no signed state can name them any more."""
        now = time.time()
        for dst in self.directory.glob(f"{KEPT}/*/checkpoint_*"):
            if (self.directory / dst.relative_to(self.directory / KEPT)).exists():
                continue
            if self._gone.setdefault(dst, now) < state_signed_at:
                shutil.rmtree(dst, ignore_errors=True)
                self._gone.pop(dst, None)

    def drop(self) -> None:
        """All of them: the sweep's final state is signed (it ended, or stopped cleanly)."""
        shutil.rmtree(self.directory / KEPT, ignore_errors=True)
        self._gone.clear()

    def __getstate__(self) -> dict:  # Tune pickles callbacks into tuner.pkl
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])


def restore(directory: str | Path) -> list[str]:
    """Before `Tuner.restore`: puts back each kept checkpoint whose original is gone (the state a
    killed driver left signed may name it); returns a note per checkpoint put back."""
    d = Path(directory)
    notes = []
    for dst in sorted(d.glob(f"{KEPT}/*/checkpoint_*")):
        original = d / dst.relative_to(d / KEPT)
        if not original.exists() and original.parent.is_dir():
            dst.rename(original)
            notes.append(f"{original.relative_to(d)} put back: Tune had deleted it after the last state signed")
    return notes
