"""docker-compose.yml read as compose reads it, for starting its services as plain processes.

Pure: no process is started here. `services()` interpolates the file (`${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}`, `$$`) with the
variables given, maps each named volume's mount path to a folder, and returns what each service runs:
its entrypoint and command, environment, working directory, healthcheck and what it waits for.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlsweep.config import ConfigError

_REF = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|(\w+))")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    """One service as a process: `argv` (entrypoint + command), `env` (its environment section),
    `cwd` (working_dir, mapped), `health` (the healthcheck's argv, or None), `health_s` (how long the
    healthcheck may take to pass: start period + interval x retries), `waits_for` (service -> condition),
    `image`, `volumes` (mount path -> folder) and `stop_signal` (what stops it gracefully)."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None
    health: list[str] | None
    health_s: float
    waits_for: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, Path] = field(default_factory=dict)
    stop_signal: str = "SIGTERM"


def read(path: Path) -> dict[str, Any]:
    """The compose file, parsed (YAML anchors and merge keys resolved)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it as a compose file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ConfigError(f"{path}: no `services` mapping: not a compose file")
    return doc


def variables_used(doc: dict[str, Any]) -> dict[str, str | None]:
    """Every variable the file interpolates -> `?` where the file requires it (no default), else None."""
    found: dict[str, str | None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            for m in _REF.finditer(node):
                name = m.group(2) or m.group(5)
                if name:
                    required = "?" if (m.group(3) or "").endswith("?") else None
                    found[name] = found.get(name) or required
                if m.group(4):
                    walk(m.group(4))

    walk(doc.get("services"))  # (extension fields such as x-rlsweep are merged into them by YAML)
    return found


def interpolate(text: str, values: dict[str, str], where: str) -> str:
    """`text` with compose's variable references replaced; a required variable unset is a ConfigError."""

    def one(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        value = values.get(name)
        unset, empty = value is None, not value
        if op in (":-", "-"):
            return interpolate(arg, values, where) if (empty if op == ":-" else unset) else value or ""
        if op in (":?", "?"):
            if empty if op == ":?" else unset:
                raise ConfigError(f"{where}: {name} is not set ({arg or 'required'})")
            return value or ""
        if op in (":+", "+"):
            return "" if (empty if op == ":+" else unset) else interpolate(arg, values, where)
        return value or ""

    return _REF.sub(one, text)


def _resolve(node: Any, values: dict[str, str], where: str) -> Any:
    if isinstance(node, dict):
        return {k: _resolve(v, values, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, values, where) for v in node]
    if isinstance(node, str):
        return interpolate(node, values, where)
    return node


def _seconds(text: Any, default: float) -> float:
    if text is None:
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(text))
    if not m:
        raise ConfigError(f"a compose duration {text!r}: expected e.g. 5s, 1m")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _map_path(text: str, mounts: dict[str, Path]) -> str:
    """A container path under a volume's mount point -> the same path under its folder (as a whole
    argument, or the value after `=`)."""
    head, sep, value = text.rpartition("=") if "=" in text and not text.startswith("/") else ("", "", text)
    for mount, folder in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if value == mount or value.startswith(mount + "/"):
            return head + sep + str(folder) + value[len(mount):]
    return text


def services(path: Path, values: dict[str, str], volumes_dir: Path) -> dict[str, Service]:
    """What each service of the compose file at `path` runs, with `values` for its variables, its named
    volumes as folders of `volumes_dir`."""
    doc = read(path)
    out: dict[str, Service] = {}
    for name, raw in doc["services"].items():
        where = f"{path.name}: services.{name}"
        svc = _resolve(raw, values, where)
        mounts: dict[str, Path] = {}
        for spec in svc.get("volumes") or []:
            source, _, target = str(spec).partition(":")
            if target and not source.startswith((".", "/")):
                mounts[target.split(":")[0]] = volumes_dir / source
        env = {str(k): "" if v is None else str(v) for k, v in (svc.get("environment") or {}).items()}
        env = {k: _map_path(v, mounts) for k, v in env.items()}
        argv = [_map_path(a, mounts) for a in _argv(svc.get("entrypoint")) + _argv(svc.get("command"))]
        if not argv:
            raise ConfigError(f"{where}: no entrypoint or command to run without its image")
        check = svc.get("healthcheck") or {}
        test = _argv(check.get("test"))
        health = None
        if test and test[0] == "CMD":
            health = test[1:]
        elif test and test[0] == "CMD-SHELL":
            health = ["sh", "-c", " ".join(test[1:])]
        health_s = _seconds(check.get("start_period"), 0) + _seconds(check.get("interval"), 30) * int(
            check.get("retries", 3))
        waits = {dep: (how or {}).get("condition", "service_started") for dep, how in
                 (svc.get("depends_on") or {}).items()} if isinstance(svc.get("depends_on"), dict) else \
            {dep: "service_started" for dep in svc.get("depends_on") or []}
        cwd = Path(_map_path(svc["working_dir"], mounts)) if svc.get("working_dir") else None
        out[name] = Service(name, str(svc.get("image", "")), argv, env, cwd, health, health_s, waits, mounts,
                            str(svc.get("stop_signal", "SIGTERM")))
    return out


def start_order(found: dict[str, Service]) -> list[str]:
    """The services in an order where each comes after everything it waits for."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ConfigError(f"services {' -> '.join((*path, name))}: they wait for each other")
        if name not in found:
            raise ConfigError(f"service {path[-1]} waits for {name}, which the file does not define")
        for dep in found[name].waits_for:
            visit(dep, (*path, name))
        order.append(name)

    for name in found:
        visit(name, ())
    return order


def native_values(doc: dict[str, Any], given: dict[str, str], free_port: Any) -> dict[str, str]:
    """The variables for a native start: `given` (from .env and the environment), every *_HOST and
    BIND_HOST on loopback, every *_PORT a free port (`free_port()`) unless given."""
    values = dict(given)
    for name in variables_used(doc):
        if name.endswith("_HOST"):
            values[name] = LOOPBACK
        elif name.endswith("_PORT") and not values.get(name):
            values[name] = str(free_port())
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """A compose `.env` file: KEY=VALUE lines (quotes stripped), comments and blank lines skipped."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.removeprefix("export ").partition("=")
        if not eq or not re.fullmatch(r"\w+", key.strip()):
            raise ConfigError(f"{path}:{n}: expected KEY=VALUE, got {line[:60]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out
