"""`rlsweep stack up|status|down`: the team stack of docker-compose.yml as plain processes on 127.0.0.1,
for machines without Docker (`rlsweep.stack.native` runs them).

The variables come from the `.env` next to the compose file, then the environment (which wins), as
`docker compose` takes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlsweep.config import ConfigError
from rlsweep.stack import compose, native

DEFAULT_DIR = ".rlsweep-stack"


def given_variables(compose_file: Path) -> dict[str, str]:
    return {**compose.read_env_file(compose_file.parent / ".env"), **os.environ}


def up(compose_file: Path, directory: Path, workers: int, cpus_per_node: float | None, say: Any = print) -> dict[str, Any]:
    if not compose_file.is_file():
        raise ConfigError(f"{compose_file}: no such compose file (--compose; the repository's docker-compose.yml)")
    if workers < 0:
        raise ConfigError(f"--workers {workers}: expected 0 or more Ray worker nodes")
    extra: dict[str, list[str]] = {}
    if cpus_per_node is not None:
        if cpus_per_node <= 0:
            raise ConfigError(f"--cpus-per-node {cpus_per_node}: expected a positive number")
        n = f"--num-cpus={cpus_per_node:g}"
        extra = {"ray-head": [n], "ray-worker": [n]}
    say(f"starting the team stack of {compose_file} from {directory} (logs in {directory / 'logs'}):")
    return native.up(compose_file, directory, given_variables(compose_file), workers, extra, say)


def usage_lines(state: dict[str, Any]) -> list[str]:
    a = state.get("addresses") or native.addresses(state)
    lines = []
    if "MLFLOW_TRACKING_URI" in a:
        lines.append(f"  MLflow (UI and tracking)  {a['MLFLOW_TRACKING_URI']}")
    if "RAY_ADDRESS" in a:
        lines.append(f"  Ray cluster (its head)    {a['RAY_ADDRESS']}")
    if "S3_ENDPOINT" in a:
        lines.append(f"  S3 (SeaweedFS)            {a['S3_ENDPOINT']}")
    if "POSTGRES" in a:
        lines.append(f"  PostgreSQL                {a['POSTGRES']}")
    exports = " ".join(f"{k}={a[k]}" for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS") if k in a)
    lines += ["run sweeps on it with (RAY_AUTH_TOKEN as in .env: the stack's Ray wants that token):",
              f"  export {exports} RAY_AUTH_TOKEN=...", "  rlsweep sweep experiments/cartpole_ppo.yaml"]
    if "S3_ENDPOINT" in a:
        endpoint = a["S3_ENDPOINT"].split("://", 1)[1]
        lines += ["with results in the bucket, which no node needs a shared disk for (AWS_ACCESS_KEY_ID and "
                  "AWS_SECRET_ACCESS_KEY: the S3 keys in .env):",
                  f"  rlsweep sweep experiments/cartpole_ppo.yaml --set "
                  f"'results_dir=s3://results/sweeps?endpoint_override={endpoint}&scheme=http'"]
    return lines


def restart(directory: Path, service: str | None) -> int:
    if not service:
        raise ConfigError("rlsweep stack restart: name the service to restart (see `rlsweep stack status`)")
    state = native.read_state(directory.resolve())
    return native.restart(directory, given_variables(Path(state["compose"])), service, state)
