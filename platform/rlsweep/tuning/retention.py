"""Checkpoints Tune deleted stay recoverable until a signed Tune state no longer names them.

Tune deletes a trial's checkpoints beyond `sweep.keep_checkpoints` the moment a new one is
registered, but snapshots its own state (which names each trial's latest checkpoint) at most once a
second. A driver killed in between resumes from a state naming a checkpoint that is gone, and that
trial fails. So every checkpoint a trial reports is hard-linked (no copy where the filesystem links)
into `<sweep>/.rlsweep_kept/<trial>/<checkpoint>`; once Tune has deleted the original and a state
snapshotted after that has been signed (`integrity.Signer`), the link goes too. `restore` puts back,
before `Tuner.restore`, what a killed driver left deleted. A sweep kept in a bucket (`tuning.bucket`)
keeps its checkpoints the same way there, as copies the bucket's server makes. No Ray here.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

KEPT = ".rlsweep_kept"
BUCKET_PRUNE_S = 5.0  # a bucket is listed to prune at most this often (a folder: at every step)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


class _Folder:
    """A sweep directory's checkpoints, as paths relative to it."""

    prune_every_s = 0.0

    def __init__(self, directory: Path):
        self.root = directory

    def rel(self, checkpoint: str) -> str | None:
        try:
            return Path(checkpoint).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:  # not under the sweep's folder (a restore from elsewhere)
            return None

    def checkpoints(self, under: str = "") -> list[str]:
        base = self.root / under if under else self.root
        return sorted(p.relative_to(self.root).as_posix() for p in base.glob("*/checkpoint_*")
                      if p.is_dir() and not p.name.endswith(".tmp"))

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def copy(self, src: str, dst: str) -> None:
        tmp = self.root / Path(dst).with_name(f".{Path(dst).name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.root / src, tmp, copy_function=_link_or_copy)
        tmp.rename(self.root / dst)

    def remove(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)

    def move(self, src: str, dst: str) -> None:
        (self.root / src).rename(self.root / dst)


class _Bucket:
    """A sweep's checkpoints in its bucket (copied by the server, `S3FileSystem.copy_file`)."""

    prune_every_s = BUCKET_PRUNE_S

    def __init__(self, place: Any):
        self.fs, self.base = place.filesystem()

    def rel(self, checkpoint: str) -> str | None:
        return checkpoint[len(self.base) + 1:] if checkpoint.startswith(self.base + "/") else None

    def _files(self, rel: str) -> list[str]:
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(f"{self.base}/{rel}", recursive=True,
                                                               allow_not_found=True))
        return [i.path for i in infos if i.type == pyarrow.fs.FileType.File]

    def checkpoints(self, under: str = "") -> list[str]:
        found = set()
        for path in self._files(under) if under else self._files(""):
            parts = path[len(self.base) + 1:].split("/")
            depth = 1 if under else 0  # `under`/trial/checkpoint_.../file, or trial/checkpoint_.../file
            if len(parts) > depth + 2 and parts[depth + 1].startswith("checkpoint_") and \
                    (under or parts[0].startswith("trial_")):
                found.add("/".join(parts[:depth + 2]))
        return sorted(found)

    def exists(self, rel: str) -> bool:
        return bool(self._files(rel))

    def copy(self, src: str, dst: str) -> None:
        from rlsweep.ppo.checkpoint import STATE_FILE

        files = sorted(self._files(src), key=lambda p: p.endswith("/" + STATE_FILE))  # its checksum last
        for path in files:
            self.fs.copy_file(path, f"{self.base}/{dst}{path[len(self.base) + 1 + len(src):]}")

    def remove(self, rel: str) -> None:
        for path in self._files(rel):
            self.fs.delete_file(path)

    def move(self, src: str, dst: str) -> None:
        self.copy(src, dst)
        self.remove(src)


def _place(directory: Path) -> _Folder | _Bucket:
    from rlsweep.tuning.bucket import remote_of

    b = remote_of(directory)
    return _Bucket(b) if b is not None else _Folder(directory)


class Retainer:
    """Keeps hard links to a sweep's checkpoints until no signed Tune state can name them.

    `directory`: the sweep directory. See the module's docstring for why.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._where: _Folder | _Bucket | None = None
        self._gone: dict[str, float] = {}  # kept copy -> when its original was first seen deleted
        self._pruned_at = 0.0

    @property
    def _store(self) -> _Folder | _Bucket:
        if self._where is None:  # (a sweep's folder is marked as a bucket's mirror once it is made)
            self._where = _place(self.directory)
        return self._where

    def keep(self, checkpoint: str | Path) -> None:
        """Links a checkpoint folder of one of the sweep's trials (once)."""
        rel = self._store.rel(str(checkpoint))
        if rel is None or self._store.exists(f"{KEPT}/{rel}") or not self._store.exists(rel):
            return
        self._store.copy(rel, f"{KEPT}/{rel}")

    def keep_all(self) -> None:
        """Every checkpoint folder already there (a resumed sweep's)."""
        for rel in self._store.checkpoints():
            self.keep(self._full(rel))

    def _full(self, rel: str) -> str:
        store = self._store
        return f"{store.base}/{rel}" if isinstance(store, _Bucket) else str(self.directory / rel)

    def prune(self, state_signed_at: float) -> None:
        """Drops the kept copies whose original Tune deleted before the snapshot of its state that was
        signed last (`state_signed_at`, its file's time): no signed state can name them any more."""
        now = time.time()
        if now - self._pruned_at < self._store.prune_every_s:
            return
        self._pruned_at = now
        for kept in self._store.checkpoints(KEPT):
            if self._store.exists(kept.removeprefix(f"{KEPT}/")):
                continue
            if self._gone.setdefault(kept, now) < state_signed_at:
                self._store.remove(kept)
                self._gone.pop(kept, None)

    def drop(self) -> None:
        """All of them: the sweep's final state is signed (it ended, or stopped cleanly)."""
        self._store.remove(KEPT)
        self._gone.clear()

    def __getstate__(self) -> dict:  # Tune pickles callbacks into tuner.pkl
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])


def restore(directory: str | Path) -> list[str]:
    """Before `Tuner.restore`: puts back each kept checkpoint whose original is gone (the state a
    killed driver left signed may name it); returns a note per checkpoint put back."""
    store = _place(Path(directory))
    notes = []
    for kept in store.checkpoints(KEPT):
        original = kept.removeprefix(f"{KEPT}/")
        if not store.exists(original) and store.exists(original.rsplit("/", 1)[0]):
            store.move(kept, original)
            notes.append(f"{original} put back: Tune had deleted it after the last state signed")
    return notes
