"""Shared storage on a joined cluster: every node must reach `results_dir` at the same path, since
checkpoints and Tune's state are written where a trial runs and read back where the driver is (resume,
best checkpoint). A probe task on each node writes a file there and the driver must see each one. A
bucket (`s3://`, `tuning.bucket`) is probed the same way, with each node's own credentials.

A module of its own on purpose: a probe task imports the module its function lives in on every node,
and this one imports no more than Ray and the config (the `tuning` package's `__init__` imports
nothing; the trainable's module would pull in torch and Ray Tune, tens of seconds on a loaded node)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import ray

from rlsweep.config import ConfigError

PROBE_TIMEOUT_S = 120.0
_FIX = ("every node must reach results_dir at the same path: a shared filesystem (NFS, a cloud volume) mounted "
        "there on each node")
_FIX_BUCKET = ("every node must reach the bucket's endpoint, with credentials in its own environment "
               "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, as the driver has them)")


def _bucket(directory: str) -> tuple[object, str] | None:
    """(filesystem, path) of a bucket results_dir (`tuning.bucket`, which imports no more than the
    config), or None for a folder."""
    from rlsweep.tuning.bucket import Bucket, is_uri

    return Bucket(directory).filesystem() if is_uri(directory) else None


def _probe(directory: str, token: str) -> str:
    """On one node: write a probe file into `directory`; returns its name."""
    name = f".rlsweep_probe_{token}_{ray.get_runtime_context().get_node_id()[:8]}"
    if (bucket := _bucket(directory)) is not None:
        fs, path = bucket
        with fs.open_output_stream(f"{path}/{name}") as f:
            f.write(token.encode())
        return name
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w") as f:
        f.write(token)
    return name


def check_shared_storage(directory: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Every alive node writes a file into `directory`; a ConfigError names the first node that could
    not write there, whose file the driver cannot see, or that did not answer within `timeout_s`.
    Every probe is waited for (or cancelled) before returning, so that none ends later as Ray's
    'Unhandled error' lines under the one rlsweep prints."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(4)
    bucket = _bucket(directory)
    fix = _FIX_BUCKET if bucket else _FIX
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(directory, token) for n in nodes]
    outcomes: dict = {}
    try:
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for ref in late:
            ray.cancel(ref, force=True)
        for ref in refs:
            try:
                outcomes[ref] = ray.get(ref, timeout=10 if ref in late else None)
            except Exception as e:  # the probe's own error (a cancelled one's is moot)
                outcomes[ref] = e
        for node, ref in zip(nodes, refs, strict=True):
            where = f"node {node['NodeID'][:8]} ({node.get('NodeManagerAddress', '?')})"
            if ref in late:
                raise ConfigError(f"results_dir {directory}: {where} did not answer a write probe within "
                                  f"{timeout_s:.0f} s (is the node overloaded or unreachable?)")
            got = outcomes[ref]
            if isinstance(got, Exception):
                text = str(got).strip()
                first = text.splitlines()[-1] if text else type(got).__name__
                raise ConfigError(f"results_dir {directory}: {where} cannot write there ({first}): {fix}")
            if not _reads(directory, bucket, got, token):
                raise ConfigError(f"results_dir {directory}: {where} wrote a file there that this machine "
                                  f"does not see: {fix}")
    finally:
        with contextlib.suppress(OSError):
            if bucket is None:
                for p in Path(directory).glob(f".rlsweep_probe_{token}_*"):
                    p.unlink(missing_ok=True)
            else:
                fs, path = bucket
                for name in (v for v in outcomes.values() if isinstance(v, str)):
                    fs.delete_file(f"{path}/{name}")


def _reads(directory: str, bucket: tuple | None, name: str, token: str) -> bool:
    """Whether this machine reads the probe file `name` with `token` in it."""
    if bucket is not None:
        fs, path = bucket
        try:
            with fs.open_input_stream(f"{path}/{name}") as f:
                return f.read().decode() == token
        except OSError:
            return False
    path = Path(directory) / name
    return path.exists() and path.read_text() == token

