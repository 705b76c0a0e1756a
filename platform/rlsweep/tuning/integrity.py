"""Resume trusts only what rlsweep wrote: an HMAC-signed manifest over the files Tune unpickles.

`rlsweep resume` hands a sweep directory to `Tuner.restore`, which unpickles Tune's state in it
(`tuner.pkl`, `experiment_state-*.json`, the searcher's `searcher-state-*.pkl`, trials' `*.pkl`): a
directory copied from elsewhere, or edited, would be code. While a sweep runs, the driver signs those
files after each change: `.rlsweep_manifest.json` holds their SHA-256 and an HMAC-SHA256 of that list
under a per-user key kept outside the directory (`$XDG_CONFIG_HOME/rlsweep/resume.key`, mode 0600;
`RLSWEEP_KEY_FILE` names another). The sweep-level files are also copied, as signed, into
`.rlsweep_signed/`, so a driver killed between Tune's write and the next signature resumes from the
state signed a moment before.

Before `Tuner.restore`, `verify` checks the manifest's HMAC, then each file Tune would unpickle: a
file as signed is used; a sweep-level file that changed since is replaced by its signed copy (with a
note); a trial's unsigned pickle is moved aside into `.rlsweep_untrusted/` (Tune needs none of them to
go on); anything else is refused. No Ray here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rlsweep.config import ConfigError
from rlsweep.ranking import CONFIRM_DIR

MANIFEST = ".rlsweep_manifest.json"
SIGNED = ".rlsweep_signed"
BACKUP = "manifest.json"  # in SIGNED/: the same manifest, where Tune's uploads never write (see `verify`)
UNTRUSTED = ".rlsweep_untrusted"
# what Tune unpickles (or reads to decide what to unpickle) on restore, relative to the sweep directory
SWEEP_PATTERNS = ("*.pkl", "experiment_state-*.json", "*-state-*.json", "search_gen_state-*.json")
TRIAL_PATTERNS = ("*/*.pkl",)


def key_path() -> Path:
    """Where this user's signing key is (`load_key` makes it there).

    `$RLSWEEP_KEY_FILE`, else `rlsweep/resume.key` under `$XDG_CONFIG_HOME` (default ~/.config).
    """
    if os.environ.get("RLSWEEP_KEY_FILE"):
        return Path(os.environ["RLSWEEP_KEY_FILE"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "rlsweep" / "resume.key"


def load_key(create: bool) -> bytes | None:
    """This user's signing key; made (32 random bytes, 0600) on first use when `create`."""
    path = key_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) < 16:
        raise ConfigError(f"{path}: not an rlsweep signing key (too short); remove it to make a new one")
    return key


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mac(key: bytes, files: dict[str, str]) -> str:
    return hmac.new(key, json.dumps(files, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _scan(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    # a sweep's confirmation round is a Tune run of its own inside the sweep directory, signed apart
    return sorted({p for pattern in patterns for p in directory.glob(pattern)
                   if p.is_file() and p.relative_to(directory).parts[0] != CONFIRM_DIR})


def _write_atomic(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """`data` into `path` whole or not at all (a temporary file renamed; in `tmp_dir`, on the same
    filesystem, where the folder is one that another process lists and copies meanwhile)."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.tmp"
    try:
        tmp.write_bytes(data)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: the part written is freed again
        raise
    tmp.replace(path)


class Signer:
    """Signs a sweep directory's Tune state as it changes (cheap when nothing did: a stat per file).

    `staging`: where Tune writes its sweep-level state first (it uploads that folder into the sweep
    directory in the background). A sweep-level file found there is signed as written there, so the
    manifest always holds Tune's latest state, however late its upload lands: a driver killed before
    it does resumes from that state's signed copy, never from an older one whose checkpoints Tune may
    already have deleted (`sweep.keep_checkpoints`).
    """

    def __init__(self, directory: str | Path, staging: Path | None = None):
        self.directory = Path(directory)
        self.staging = staging
        self._mirror: Any = None  # a mirrored sweep's pushes to its bucket (`tuning.bucket`)
        self._key: bytes | None = None
        self._seen: dict[str, tuple[int, int, str]] = {}  # rel path -> (mtime_ns, size, sha256)
        self._trials_at = 0.0
        self._manifest: tuple[bytes, tuple[int, int]] | None = None  # as last written, and its stat

    def sign(self, trials: bool = True) -> None:
        """Signs what changed; trials' files are scanned at most once a second unless `trials` is forced.

        On a full disk the manifest stays as last signed (a resume goes on from that state; rlsweep
        names the full disk where a trial fails, `full_disk.StopOnFullDisk`). A mirrored sweep's signed
        files then go to its bucket (`tuning.bucket.Mirror`), with the record and the study; while the
        bucket does not answer they wait for the next signature."""
        try:
            self._sign(trials)
        except OSError as e:
            from rlsweep.tuning.full_disk import no_space

            if not no_space(str(e)):
                raise
        self._push()

    def _push(self) -> None:
        from rlsweep.tuning.bucket import Mirror, remote_of

        if self._mirror is None:
            bucket = remote_of(self.directory)  # (marked once the sweep's folder is made)
            if bucket is None:
                return
            self._mirror = Mirror(self.directory, bucket)
        try:
            self._mirror.push_changed()
            self._push_failed = False
        except Exception as e:  # noqa: BLE001 - the bucket's own words; a Tune callback must not fail on it
            if not getattr(self, "_push_failed", False):
                print(f"rlsweep: {self._mirror.bucket.location} does not answer ({str(e).strip().splitlines()[0][:200]}); "
                      "the signed state is pushed once it does", file=sys.stderr, flush=True)
            self._push_failed = True

    def _sign(self, trials: bool) -> None:
        if self._key is None:
            self._key = load_key(create=True)
        d = self.directory
        if not d.is_dir():  # nothing written yet
            return
        now = time.monotonic()
        scan_trials = trials or now - self._trials_at >= 1.0
        paths = {p.relative_to(d).as_posix(): p for p in _scan(d, SWEEP_PATTERNS)}
        if self.staging is not None and self.staging.is_dir():  # Tune's latest, maybe not uploaded yet
            paths.update({p.relative_to(self.staging).as_posix(): p for p in _scan(self.staging, SWEEP_PATTERNS)})
        if scan_trials:
            self._trials_at = now
            paths.update({p.relative_to(d).as_posix(): p for p in _scan(d, TRIAL_PATTERNS)})
            if self.staging is not None and self.staging.is_dir():  # (a sweep in a bucket has its trials' here)
                paths.update({p.relative_to(self.staging).as_posix(): p for p in _scan(self.staging, TRIAL_PATTERNS)})
        changed, current = False, {}
        for rel, p in paths.items():
            try:
                st = p.stat()
            except FileNotFoundError:  # replaced between the scan and now (Tune writes temp-and-rename)
                continue
            seen = self._seen.get(rel)
            if seen is None or seen[:2] != (st.st_mtime_ns, st.st_size):
                data = p.read_bytes()
                seen = (st.st_mtime_ns, st.st_size, hashlib.sha256(data).hexdigest())
                if "/" not in rel:  # the signed copy a killed driver resumes from, by content
                    (d / SIGNED).mkdir(exist_ok=True)
                    if not (d / SIGNED / seen[2]).exists():
                        _write_atomic(d / SIGNED / seen[2], data)
                changed = True
            current[rel] = seen
        if not scan_trials:  # trials' files as last scanned
            current.update({rel: v for rel, v in self._seen.items() if "/" in rel})
        if not changed and current.keys() == self._seen.keys() and self._manifest_intact():
            return
        self._seen = current
        files = {rel: v[2] for rel, v in current.items()}
        data = json.dumps({"files": files, "mac": _mac(self._key, files)}, indent=1).encode()
        # into the staging folder too: Tune uploads it over the sweep directory's, and after a resume it
        # holds the manifest Tune downloaded then
        if self.staging is not None and self.staging.is_dir():
            # (its temporary file beside the folder, not in it: Tune's upload lists the folder meanwhile)
            _write_atomic(self.staging / MANIFEST, data, tmp_dir=self.staging.parent)
        (d / SIGNED).mkdir(exist_ok=True)
        _write_atomic(d / SIGNED / BACKUP, data)
        _write_atomic(d / MANIFEST, data)
        st = (d / MANIFEST).stat()
        self._manifest = (data, (st.st_mtime_ns, st.st_size))
        for copy in (d / SIGNED).glob("*"):  # copies of states no longer signed
            if copy.name not in files.values() and copy.name != BACKUP:
                copy.unlink(missing_ok=True)

    @property
    def state_signed_at(self) -> float:
        """The time of the Tune snapshot (`experiment_state-*.json`) signed last; 0 before any."""
        times = [v[0] for rel, v in self._seen.items() if rel.startswith("experiment_state-")]
        return max(times, default=0) / 1e9

    def _manifest_intact(self) -> bool:
        """Whether the sweep directory still holds the manifest as last written (not overwritten)."""
        if self._manifest is None:
            return False
        try:
            st = (self.directory / MANIFEST).stat()
        except FileNotFoundError:
            return False
        return (st.st_mtime_ns, st.st_size) == self._manifest[1]

    def __getstate__(self) -> dict:  # Tune pickles callbacks into tuner.pkl: never the key
        from rlsweep.tuning.bucket import remote_of

        bucket = remote_of(self.directory)
        return {"directory": self.directory, "bucket": bucket.uri if bucket else None}

    def __setstate__(self, state: dict) -> None:
        from rlsweep.tuning.bucket import Bucket

        # a mirrored sweep resumed on another machine: its mirror there
        bucket = state.get("bucket")
        self.__init__(Bucket(bucket).mirror() if bucket else state["directory"])


def take_backup_manifest(directory: str | Path) -> None:
    """A sweep pulled from a bucket (`tuning.bucket`): its manifest as rlsweep last wrote it. Tune's
    upload of its staging folder may have brought a manifest a moment older over the one rlsweep
    pushed; the backup in SIGNED/ is written by rlsweep alone (and checked by `verify` as any manifest)."""
    d = Path(directory)
    try:
        _read_manifest(d / SIGNED / BACKUP)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return
    shutil.copyfile(d / SIGNED / BACKUP, d / MANIFEST)


def _read_manifest(path: Path) -> tuple[dict, str]:
    manifest = json.loads(path.read_text())
    files, mac = manifest["files"], manifest["mac"]
    assert isinstance(files, dict) and isinstance(mac, str)
    return files, mac


def verify(directory: str | Path) -> list[str]:
    """Makes the directory hold only what rlsweep signed (see the module's docstring); the notes to
    show; a ConfigError when it cannot."""
    d = Path(directory)
    refuse = f"sweep {d} cannot be resumed safely: "
    notes = []
    try:
        files, mac = _read_manifest(d / MANIFEST)
    except FileNotFoundError:
        raise ConfigError(refuse + f"it has no {MANIFEST} (not written by this version of rlsweep); "
                          "Tune's state in it would be unpickled unchecked") from None
    except (ValueError, KeyError, TypeError, AssertionError):
        # Tune's upload of its staging folder copies the manifest over this one, not atomically: on a
        # full disk the copy is cut short. rlsweep's own copy, written whole or not at all, stands in
        try:
            files, mac = _read_manifest(d / SIGNED / BACKUP)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise ConfigError(refuse + f"{MANIFEST} is not a manifest rlsweep wrote") from None
        shutil.copyfile(d / SIGNED / BACKUP, d / MANIFEST)
        notes.append(f"{MANIFEST} was cut short (a full disk?); its signed copy in {SIGNED}/ is used")
    key = load_key(create=False)
    if key is None or not hmac.compare_digest(_mac(key, files), mac):
        raise ConfigError(refuse + f"its signature does not match this user's key ({key_path()}): it was "
                          "written by another user or machine, or edited. Resume it where it was made, "
                          "or copy that key file here if you trust the directory") from None
    for p in _scan(d, SWEEP_PATTERNS) + _scan(d, TRIAL_PATTERNS):
        rel = p.relative_to(d).as_posix()
        if files.get(rel) == _sha256(p):
            continue
        if "/" in rel:  # a trial's pickle Tune wrote after the last signature (or planted): set aside
            dest = d / UNTRUSTED / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            p.replace(dest)
            notes.append(f"{rel} was not signed; moved to {UNTRUSTED}/")
        elif rel in files:
            copy = d / SIGNED / files[rel]
            if not copy.is_file() or _sha256(copy) != files[rel]:
                raise ConfigError(refuse + f"{rel} changed after rlsweep signed it and no signed copy is left")
            shutil.copyfile(copy, p)
            notes.append(f"{rel} changed after it was signed (the driver stopped mid-write?); using the signed copy")
        else:
            (d / UNTRUSTED).mkdir(exist_ok=True)
            p.replace(d / UNTRUSTED / rel)
            notes.append(f"{rel} was not signed; moved to {UNTRUSTED}/")
    for rel, digest in files.items():
        if "/" not in rel and not (d / rel).exists():
            copy = d / SIGNED / digest
            if not copy.is_file() or _sha256(copy) != digest:
                raise ConfigError(refuse + f"{rel} is missing")
            shutil.copyfile(copy, d / rel)
            notes.append(f"{rel} was missing; using the signed copy")
    return notes
