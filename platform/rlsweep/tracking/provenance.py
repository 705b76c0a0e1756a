"""Where a run came from, on every run rlsweep makes (train, trial, sweep parent): the git commit of the
folder it was run from and whether its tree had changes, the command line, the versions of rlsweep and
the libraries it stands on, the host and its CPU and GPU counts. Computed once per driver process.
MLflow's own `mlflow.source.git.commit` and `mlflow.source.name` are set too, so its UI shows them
on the run page. No Ray, no MLflow here.
"""

from __future__ import annotations

import functools
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

PACKAGES = ("rlsweep", "ray", "torch", "gymnasium", "optuna", "mlflow", "numpy")
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own: its run page shows it
TAG_SOURCE = "mlflow.source.name"
TAG_GIT_DIRTY = "rlsweep.git_dirty"
TAG_COMMAND = "rlsweep.command"
TAG_HOST = "rlsweep.host"
TAG_CPUS = "rlsweep.cpus"
TAG_GPUS = "rlsweep.gpus"
TAG_VERSION = "rlsweep.version."  # + a package's name


def _git(folder: Path) -> tuple[str, bool] | None:
    """(commit, whether the tree has changes) of the git checkout `folder` is in, or None."""
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, no commit yet
        return None
    return commit, dirty


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _gpus() -> int:
    """This machine's NVIDIA GPUs (without importing torch, which the driver does not need)."""
    if "torch" in sys.modules:
        try:
            return int(sys.modules["torch"].cuda.device_count())
        except Exception:  # noqa: BLE001
            pass
    folder = Path("/proc/driver/nvidia/gpus")
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def command_line(argv: list[str] | None = None) -> str:
    """The command as the user typed it, its program as `rlsweep`, any password in a URI as `***`."""
    from rlsweep.tracking.store import redact

    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name in ("rlsweep", "cli.py", "__main__.py") or argv[0] == "-m"):
        argv = ["rlsweep", *argv[1:]]
    return redact(shlex.join(argv))


@functools.cache
def tags() -> dict[str, str]:
    """The provenance tags of this process's runs."""
    out = {TAG_COMMAND: command_line()[:5000], TAG_SOURCE: "rlsweep", TAG_HOST: socket.gethostname(),
           TAG_CPUS: str(os.cpu_count() or 0), TAG_GPUS: str(_gpus())}
    git = _git(Path.cwd())
    if git is not None:
        out[TAG_GIT_COMMIT], dirty = git[0], git[1]
        out[TAG_GIT_DIRTY] = str(dirty).lower()
    for package in PACKAGES:
        v = _version(package)
        if v is not None:
            out[TAG_VERSION + package] = v
    return out
