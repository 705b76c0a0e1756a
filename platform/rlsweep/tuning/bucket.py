"""Results on object storage: `results_dir: s3://bucket/prefix`, for a cluster whose nodes share no disk.

Tune stores a sweep in the bucket itself (its `storage_path` is the URI): each trial uploads its
checkpoints from the node it runs on, and the driver uploads Tune's state and the trials' result logs.
An S3-compatible server is named the way Ray documents storage URIs, in the URI's query:
`s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http` (pyarrow ignores AWS_ENDPOINT_URL).

Everything else rlsweep does with a sweep directory (rank it, sign and verify Tune's state, keep the
Optuna study, write `best`) works on a local folder, so the driver keeps a *mirror* of the sweep:
`$XDG_CACHE_HOME/rlsweep/buckets/<endpoint>/<bucket>/<prefix>/<name>`, marked by `.rlsweep_bucket`
(the sweep's URI). What rlsweep writes there (its record, the study, the signed manifest and its
signed copies, the confirmation order) is pushed to the bucket as it changes (`Mirror.push_changed`);
what Tune wrote is pulled before it is read (`refresh`). A sweep can be resumed or ranked from another
machine with nothing but the bucket: a missing mirror is pulled whole.

Credentials never appear in the URI (it is stored in Tune's state and in MLflow): the driver and every
Ray node take them from their own environment as any AWS client does (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance role). No Ray, no MLflow here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from rlsweep.config import ConfigError, first_line

SCHEME = "s3"
MARK = ".rlsweep_bucket"  # in a mirror: the sweep's URI
MANIFESTS = (".rlsweep_manifest.json", ".rlsweep_signed/manifest.json")  # (`integrity`: MANIFEST, its backup)
GRACE_S = 60.0  # how long a signed copy stays in the bucket after the manifest stopped naming it
# the query keys that would carry a secret into Tune's state and MLflow
SECRET_KEYS = ("access_key", "secret_key", "session_token", "role_arn", "external_id")
# what the driver writes into a sweep directory, or its confirmation round's (pushed to the bucket)
DRIVER_FILES = ("rlsweep_sweep.json", "optuna.db", ".rlsweep_manifest.json", ".rlsweep_signed/*", "confirms.json")
LEASE = ".rlsweep_lease.json"  # in the bucket: which driver runs the sweep (`take_lease`)
LEASE_S = 60.0  # a lease not renewed for this long is let go (its driver's machine was lost)
RENEW_S = 10.0
# driver-local only: never pushed, never pulled
LOCAL_ONLY = (".rlsweep_running", ".rlsweep_journal", MARK, ".rlsweep_untrusted", ".rlsweep_kept", LEASE)


def is_uri(path: str | Path) -> bool:
    """Whether a results_dir (or sweep) is a bucket URI rather than a folder."""
    return str(path).startswith(f"{SCHEME}://")


@dataclass(frozen=True)
class Bucket:
    """A place in a bucket: `uri` is `s3://bucket/key/prefix[?query]`."""

    uri: str

    @classmethod
    def parse(cls, uri: str, what: str = "results_dir") -> Bucket:
        """A bucket URI, checked: `s3://`, a bucket name, no credentials in the query. A ConfigError
        names `what` otherwise."""
        parts = urlsplit(uri)
        if parts.scheme != SCHEME:
            raise ConfigError(f"{what} {uri}: only s3:// URIs are object storage (or give a folder)")
        if not parts.netloc:
            raise ConfigError(f"{what} {uri}: no bucket name (expected s3://BUCKET/PREFIX)")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        secret = [k for k in query if k in SECRET_KEYS] + (["a user or password"] if "@" in parts.netloc else [])
        if secret:
            raise ConfigError(f"{what}: {', '.join(secret)} must not be in the URI (it is stored in Tune's state "
                              "and in MLflow): set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment of "
                              "the driver and of every Ray node")
        return cls(uri)

    @property
    def _parts(self) -> Any:
        return urlsplit(self.uri)

    @property
    def location(self) -> str:
        """`s3://bucket/prefix`, without the query (what a person reads)."""
        p = self._parts
        return f"{SCHEME}://{p.netloc}{p.path.rstrip('/')}"

    @property
    def name(self) -> str:
        """The last part of the key (a sweep's name)."""
        return self._parts.path.rstrip("/").rsplit("/", 1)[-1]

    def child(self, name: str) -> Bucket:
        """The place `name` under this one (its query kept)."""
        p = self._parts
        return Bucket(f"{SCHEME}://{p.netloc}{p.path.rstrip('/')}/{name}" + (f"?{p.query}" if p.query else ""))

    def filesystem(self) -> tuple[Any, str]:
        """(pyarrow filesystem, path in it), as Ray resolves a storage URI."""
        import pyarrow.fs

        try:
            return pyarrow.fs.FileSystem.from_uri(self.uri)
        except Exception as e:  # noqa: BLE001 - pyarrow's own message says which part it refused
            raise ConfigError(f"results_dir {self.uri}: {first_line(e)}") from None

    def mirror(self) -> Path:
        """The driver's local folder for this place (see the module's docstring)."""
        p = self._parts
        endpoint = dict(parse_qsl(p.query)).get("endpoint_override", "aws").replace(":", "_").replace("/", "_")
        return mirrors() / endpoint / p.netloc / p.path.strip("/")


def mirrors() -> Path:
    """Where this machine keeps its mirrors of sweeps in buckets."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlsweep" / "buckets"


def relocate(url: str) -> str:
    """A SQLite URL of a file in a mirror (a sweep's Optuna study), as this machine keeps that mirror:
    a sweep resumed on another machine finds its study in the mirror made there."""
    prefix, marker = "sqlite:///", "/rlsweep/buckets/"
    if not url.startswith(prefix) or marker not in url:
        return url
    return prefix + str(mirrors() / url.split(marker, 1)[1])


def check(b: Bucket, what: str = "results_dir") -> None:
    """Before Ray starts: the bucket answers, these credentials may write, read and delete there (a
    probe object comes and goes). A ConfigError in one line otherwise."""
    fs, path = b.filesystem()
    probe = f"{path}/.rlsweep_probe_{secrets.token_hex(4)}"
    try:
        with fs.open_output_stream(probe) as f:
            f.write(b"rlsweep")
        with fs.open_input_stream(probe) as f:
            f.read()
        fs.delete_file(probe)
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError with S3's own words
        raise ConfigError(f"{what} {b.location}: cannot write there ({first_line(e)}); the endpoint is set by "
                          "?endpoint_override=HOST:PORT&scheme=http, the credentials by AWS_ACCESS_KEY_ID / "
                          "AWS_SECRET_ACCESS_KEY") from None


def _listing(fs: Any, path: str) -> dict[str, Any]:
    """Every object under `path`: relative path -> its FileInfo."""
    import pyarrow.fs

    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot list {path} in its bucket ({first_line(e)})") from None
    return {i.path[len(path):].lstrip("/"): i for i in infos if i.type == pyarrow.fs.FileType.File}


def exists(b: Bucket) -> bool:
    """Whether anything is stored under this place."""
    fs, path = b.filesystem()
    return bool(_listing(fs, path))


def _local_only(rel: str) -> bool:
    return any(part in LOCAL_ONLY for part in rel.split("/"))


def _driver_file(rel: str) -> bool:
    from fnmatch import fnmatch

    rel = rel.removeprefix("confirm/")
    return any(fnmatch(rel, pattern) for pattern in DRIVER_FILES)


def pull(b: Bucket, local: Path, remote_wins: bool = False) -> None:
    """Makes `local` a mirror of what is stored under `b`: each object that is new or changed is
    downloaded (written whole, then renamed), a trial's file that is gone from the bucket (a checkpoint
    Tune deleted) is removed here. The driver's own files are downloaded only where missing here,
    unless `remote_wins` (no driver writes them meanwhile: a resume holding the sweep's lock)."""
    fs, path = b.filesystem()
    remote = {rel: i for rel, i in _listing(fs, path).items() if not _local_only(rel)}
    if not remote:  # nothing there (yet): nothing made here
        return
    unsafe = [rel for rel in remote if escapes(rel)]
    if unsafe:
        raise ConfigError(f"{b.location}: object {unsafe[0]!r} would be written outside the sweep's folder; "
                          "not a sweep rlsweep wrote")
    local.mkdir(parents=True, exist_ok=True)
    claim(local, b)
    for rel, info in list(remote.items()):
        dst = local / rel
        mtime_ns = int(info.mtime_ns or 0)
        try:
            st = dst.stat()
            if _driver_file(rel) and not remote_wins:
                continue
            if st.st_size == info.size and st.st_mtime_ns == mtime_ns:
                continue
        except FileNotFoundError:
            pass
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.pull")
        try:
            with fs.open_input_stream(info.path) as src, open(tmp, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
        except FileNotFoundError:  # deleted since the listing (a checkpoint Tune let go of)
            tmp.unlink(missing_ok=True)
            remote.pop(rel)
            continue
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        tmp.replace(dst)
    for p in local.glob("**/*"):  # what Tune deleted there (old checkpoints) goes here too
        rel = p.relative_to(local).as_posix()
        if p.is_file() and _in_trial(rel) and rel not in remote and not _local_only(rel):
            p.unlink()


def escapes(rel: str) -> bool:
    """Whether an object's key, relative to a sweep, would lead out of the sweep's folder here."""
    return rel.startswith("/") or ".." in rel.split("/")


def _in_trial(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] == "confirm":
        parts = parts[1:]
    return len(parts) > 1 and parts[0].startswith("trial_")


def remote_of(directory: str | Path) -> Bucket | None:
    """The bucket place a sweep directory (or its confirmation round's) mirrors, or None (a folder of
    its own)."""
    d = Path(directory)
    if (d / MARK).is_file():
        return Bucket((d / MARK).read_text().strip())
    if (d.parent / MARK).is_file():
        return Bucket((d.parent / MARK).read_text().strip()).child(d.name)
    return None


def uri_of(path: str, like: str) -> str:
    """A path in the bucket of `like` (a bucket URI) as a URI with `like`'s endpoint."""
    query = urlsplit(like).query
    return f"{SCHEME}://{path}" + (f"?{query}" if query else "")


def tag_of(directory: str | Path) -> str:
    """How MLflow's runs name a sweep directory (their `rlsweep.dir` tag): the URI of the bucket place it
    mirrors, the same from any machine, else its path."""
    b = remote_of(directory)
    return b.uri if b is not None else str(directory)


def folder_of(tag: str) -> Path:
    """The sweep directory on this machine that MLflow's `rlsweep.dir` tag names (`tag_of`)."""
    return Bucket(tag).mirror() if is_uri(tag) else Path(tag)


def storage_of(directory: str | Path) -> str:
    """Where Tune stores a sweep directory: its bucket URI, or the folder itself."""
    b = remote_of(directory)
    return b.uri if b is not None else str(directory)


def claim(directory: Path, b: Bucket) -> None:
    """Marks a folder as the mirror of `b` (once: the URI it was first given names the sweep in MLflow,
    however a later command spells it)."""
    if not (directory / MARK).is_file():
        (directory / MARK).write_text(b.uri)


def refresh(directory: Path) -> None:
    """Before reading a sweep directory: where it mirrors a bucket, what Tune stored there since."""
    b = remote_of(directory)
    if b is not None:
        pull(b, Path(directory))


class Mirror:
    """Pushes the driver's own files of a mirrored sweep directory to the bucket as they change."""

    def __init__(self, local: Path, b: Bucket):
        self.local, self.bucket = Path(local), b
        self._fs: tuple[Any, str] | None = None
        self._pushed: dict[str, tuple[int, int]] = {}  # rel path -> (mtime_ns, size) as pushed
        self._gone: dict[str, float] = {}  # rel path -> when it was first seen gone here
        self._leased_at = 0.0

    def push_changed(self) -> None:
        """Uploads each driver file that is new or changed since it was last pushed. A signed copy no
        longer here leaves the bucket `GRACE_S` later: Tune's upload of its staging folder may still
        bring a manifest a moment older than the one pushed, which names it. An OSError (the bucket
        went away) leaves the rest for the next call."""
        if self._fs is None:
            self._fs = self.bucket.filesystem()
        fs, path = self._fs
        clock = time.monotonic()
        # this driver still runs the sweep (`take_lease`; a confirmation round's folder is the sweep's)
        if clock - self._leased_at >= RENEW_S and not (self.local.parent / MARK).is_file():
            _write_lease(fs, path)
            self._leased_at = clock
        now: dict[str, tuple[int, int]] = {}
        for pattern in DRIVER_FILES:
            for p in self.local.glob(pattern):
                if p.is_file() and not p.name.endswith(".tmp"):
                    self._add(now, p)
        # the signed copies before the manifests that name them, the manifests last: the bucket never
        # holds a manifest without its copies (an upload that fails stops here; the next call goes on)
        for rel in sorted(now, key=lambda r: r in MANIFESTS):
            if self._pushed.get(rel) != now[rel]:
                _upload(fs, self.local / rel, f"{path}/{rel}")
                self._pushed[rel] = now[rel]
        for rel in set(self._pushed) - set(now):
            self._gone.setdefault(rel, clock)
            del self._pushed[rel]
        for rel, since in list(self._gone.items()):
            if rel in now:
                del self._gone[rel]
            elif clock - since >= GRACE_S:
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(f"{path}/{rel}")
                del self._gone[rel]

    def _add(self, into: dict[str, tuple[int, int]], p: Path) -> None:
        try:
            st = p.stat()
        except FileNotFoundError:
            return
        into[p.relative_to(self.local).as_posix()] = (st.st_mtime_ns, st.st_size)


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _write_lease(fs: Any, path: str) -> None:
    with fs.open_output_stream(f"{path}/{LEASE}") as f:
        f.write(json.dumps({**_me(), "at": time.time()}).encode())


def take_lease(b: Bucket, name: str) -> None:
    """This driver runs the sweep at `b`, or a ConfigError naming the driver (host and process) whose
    lease there is fresh: the lock on the driver's own machine (`record.SweepLock`) cannot keep a
    second machine out, and two drivers of one sweep would undo each other's work in the bucket. The
    lease is renewed while the sweep runs (`Mirror.push_changed`) and dropped when it ends; a driver
    whose machine was lost lets go `LEASE_S` after its last renewal."""
    fs, path = b.filesystem()
    try:
        with fs.open_input_stream(f"{path}/{LEASE}") as f:
            held = json.loads(f.read())
    except FileNotFoundError:
        held = None
    except ValueError:  # not a lease rlsweep wrote: taken over
        held = None
    except OSError as e:
        raise ConfigError(f"sweep {name} at {b.location}: cannot read its lease ({first_line(e)})") from None
    if isinstance(held, dict) and {k: held.get(k) for k in ("host", "pid")} != _me():
        age = time.time() - float(held.get("at") or 0)
        if age < LEASE_S and not (held.get("host") == _me()["host"] and not _alive(held.get("pid"))):
            raise ConfigError(f"sweep {name} is running on {held.get('host')} in process {held.get('pid')} (its lease in "
                              f"{b.location} was renewed {max(age, 0):.0f} s ago): wait for it to end, or stop it "
                              f"(Ctrl-C) and resume then; a lost machine's lease lapses {LEASE_S:.0f} s after its last "
                              "renewal")
    _write_lease(fs, path)


def _alive(pid: Any) -> bool:
    """Whether a process of this machine runs under `pid`."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def drop_lease(b: Bucket) -> None:
    """The sweep's driver lets go (it ended, or was stopped)."""
    fs, path = b.filesystem()
    with contextlib.suppress(OSError):
        fs.delete_file(f"{path}/{LEASE}")


def _upload(fs: Any, src: Path, dst: str) -> None:
    data = _sqlite_snapshot(src) if src.suffix == ".db" else src.read_bytes()
    with fs.open_output_stream(dst) as out:  # an S3 object appears whole or not at all
        out.write(data)


def _sqlite_snapshot(src: Path) -> bytes:
    """A consistent copy of a SQLite file another thread may be writing (the Optuna study)."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlsweep-db-") as scratch:
        copy = Path(scratch) / src.name
        with contextlib.closing(sqlite3.connect(f"file:{src}?mode=ro", uri=True)) as db, \
                contextlib.closing(sqlite3.connect(copy)) as out:
            db.backup(out)
        return copy.read_bytes()


def push_fixes(directory: Path) -> None:
    """After `integrity.verify` set a freshly pulled mirror right (a file put back from its signed copy,
    an unsigned one moved aside): the bucket gets the same, so that what Tune downloads on restore is
    what was verified. Of the files verify checks (what Tune unpickles), each that is gone here is
    removed there, each that changed here is uploaded; nothing else is touched."""
    from fnmatch import fnmatch

    from rlsweep.tuning.integrity import SWEEP_PATTERNS, TRIAL_PATTERNS

    b = remote_of(directory)
    if b is None:
        return
    fs, path = b.filesystem()

    def checked(rel: str) -> bool:
        return any(fnmatch(rel, p) and rel.count("/") == p.count("/") for p in SWEEP_PATTERNS + TRIAL_PATTERNS)

    remote = {rel: i for rel, i in _listing(fs, path).items()
              if checked(rel) and not _local_only(rel) and not _driver_file(rel)}
    for rel, info in remote.items():
        local = Path(directory) / rel
        try:
            st = local.stat()
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(info.path)
            continue
        if st.st_size != info.size or st.st_mtime_ns != int(info.mtime_ns or 0):
            _upload(fs, local, info.path)
