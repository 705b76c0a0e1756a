"""`rlsweep ui`: the MLflow UI on rlsweep's store, with links straight to the runs.

The story: resolve the store as the experiment (or the environment) names it, refuse a missing store
or a busy port, list links to each experiment's Runs page and latest sweep, and run a lean MLflow
server in a process group of its own until Ctrl-C (a store that is a server already needs none).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsweep import verbosity
from rlsweep.config import ConfigError, TrackingConfig, load_experiment


@dataclass(frozen=True)
class UiPlan:
    """The store to show and how: `server` (the store is an MLflow server already: nothing to start),
    `base` (the UI's address), `links` (lines to print), `port_error` (the port cannot be used: why)."""

    uri: str
    host: str
    port: int
    base: str
    server: bool
    links: list[str] = field(default_factory=list)
    port_error: str | None = None


def plan(experiment: str | None, host: str = "127.0.0.1", port: int = 5000, create: bool = False) -> UiPlan:
    """Checks the store and the port, and gathers the links (before anything starts).

    Args:
        experiment: use this experiment file's tracking settings (default: $MLFLOW_TRACKING_URI, else
            ./mlflow.db).
        create: start on an empty store where none exists yet.
    """
    from rlsweep.tracking.store import experiment_name, resolve_uri

    cfg = load_experiment(experiment) if experiment else None
    uri = resolve_uri(cfg.tracking if cfg else TrackingConfig())
    server = uri.startswith(("http://", "https://"))
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is not None and not db.exists() and not create:
        raise ConfigError(f"no MLflow store at {db}: run a sweep first, point at a store (an experiment file's "
                          "tracking section, or $MLFLOW_TRACKING_URI), or pass --create for an empty one")
    if not server:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError as e:
                return UiPlan(uri, host, port, "", False, port_error=f"{host}:{port} is in use ({e.strerror}): "
                              "pick another with --port")
    base = uri if server else f"http://{host}:{port}"
    links = _links(uri, base, experiment_name(cfg) if cfg else None) if db is None or db.exists() else []
    return UiPlan(uri, host, port, base, server, links)


def _links(uri: str, base: str, experiment: str | None) -> list[str]:
    """Links to the Runs page of `experiment` (else of every experiment with runs), to its latest
    sweep's parent run and to that sweep's trials, best first."""
    from rlsweep.tracking.runs import TAG_KIND
    from rlsweep.tracking.store import trials_link, ui_link
    from rlsweep.tracking.tracker import Tracker

    lines = []
    for name in [experiment] if experiment is not None else Tracker.experiments(uri):
        try:
            tracker = Tracker(uri, name, create=False)
        except (LookupError, ConfigError):  # none by that name, or a deleted one: nothing to link
            continue
        if not tracker.search(max_results=1):
            continue
        lines.append(f"  runs of {name}: {ui_link(base, tracker.experiment_id)}")
        sweeps = tracker.search(max_results=1, **{TAG_KIND: "sweep"})
        if sweeps:
            latest = sweeps[0]
            lines.append(f"    its latest sweep, {latest.name}: {ui_link(base, tracker.experiment_id, latest.run_id)}")
            params = tracker.params(latest.run_id)  # the sweep's metric and mode are among them
            if params.get("metric") and params.get("mode") in ("min", "max"):
                lines.append(f"    its trials, best first: "
                             f"{trials_link(base, tracker.experiment_id, latest.run_id, params['metric'], params['mode'])}")
    return lines


_SERVER_NOISE = ("Registry store URI not provided", "[MLflow] Security middleware enabled with default settings")


def _forward(stream: Any, to: Any) -> None:
    for line in stream:
        if not line.startswith(_SERVER_NOISE):
            to.write(line)
            to.flush()


def serve(p: UiPlan) -> int:
    """The MLflow server, lean: one worker, no job runner (its GenAI jobs spawn a dozen processes), no
    access log. Its processes form their own group, stopped together however this one ends (Ctrl-C,
    SIGTERM, SIGHUP): none is left holding the port. Returns its exit code (0 after Ctrl-C)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", p.uri,
           "--host", p.host, "--port", str(p.port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": p.uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    quiet = not verbosity.verbose()
    if quiet:
        cmd += ["--uvicorn-opts", "--log-level warning"]
        env["PYTHONWARNINGS"] = "ignore::DeprecationWarning,ignore:starlette.middleware.wsgi is deprecated"
    pipe = subprocess.PIPE if quiet else None
    server = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=pipe, stderr=pipe, text=True)
    if quiet:  # what the server says, less the two lines it prints at every start
        for stream, to in ((server.stdout, sys.stdout), (server.stderr, sys.stderr)):
            threading.Thread(target=_forward, args=(stream, to), daemon=True).start()
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
