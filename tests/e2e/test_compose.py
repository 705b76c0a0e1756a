"""The team stack's files, checked for structure: docker-compose.yml, the Dockerfile, .env.example.

No Docker engine exists on the development and CI machines, so the images are never built here; the
services' command lines are proven by running them (tests/e2e/test_team_stack.py starts the stack from
this file without Docker). What this checks is what only Docker would use: how each service is built,
healthchecks and the order they impose, loopback-only ports, no credential in the file, every required
variable documented in .env.example, and the README's `rlsweep` line.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from rlsweep.cli import _parser
from rlsweep.stack import compose
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ONE_SHOT: set[str] = set()  # services that run once and exit
BIN = Path(sys.executable).parent


def test_the_stack_has_its_services_built_from_this_checkout():
    assert set(SERVICES) == {"postgres", "s3", "mlflow", "ray-head", "ray-worker"}
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.M))
    assert {"rlsweep", "mlflow"} <= stages
    for name, target in {"mlflow": "mlflow", "ray-head": "rlsweep", "ray-worker": "rlsweep"}.items():
        build = SERVICES[name]["build"]
        assert build["context"] == "." and build["target"] == target, name
    # installed at build time: no container pip-installs at start (slow, and fails offline)
    for name, svc in SERVICES.items():
        assert "pip install" not in yaml.safe_dump(svc), name
    # the head and every worker share the results volume at one path (resume, best and the checks
    # of shared storage read it from the head)
    assert SERVICES["ray-head"]["volumes"] == SERVICES["ray-worker"]["volumes"] == ["results:/rlsweep/results"]
    assert "container_name" not in SERVICES["ray-worker"] and "ports" not in SERVICES["ray-worker"]  # scalable


def test_every_long_running_service_has_a_healthcheck_and_waits_for_what_it_needs():
    for name, svc in SERVICES.items():
        if name not in ONE_SHOT:
            assert svc.get("healthcheck", {}).get("test"), name
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, (name, dep)
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert how == {"condition": expected}, (name, dep, how)
    order = {name: set(svc.get("depends_on") or {}) for name, svc in SERVICES.items()}
    assert order["mlflow"] == {"postgres", "s3"}
    assert order["ray-head"] == {"mlflow"} and order["ray-worker"] == {"ray-head"}


def test_ports_are_published_on_loopback_only():
    published = [(name, p) for name, svc in SERVICES.items() for p in svc.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_no_credential_in_the_file_and_every_variable_in_env_example():
    used = compose.variables_used(COMPOSE)
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    required = {k for k, v in used.items() if v == "?"}
    assert required <= set(example) <= set(used), (required - set(example), set(example) - set(used))
    secret = re.compile(r"PASSWORD|SECRET|_KEY$")
    for name, svc in SERVICES.items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if secret.search(key):
                # from .env, with no default a stack could silently start with
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*|:-)\}", str(value)), (name, key, value)
    for key, value in example.items():
        if secret.search(key):
            assert value == "", key  # the example ships no password
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def _flags(command: list[str]) -> list[str]:
    return [a.split("=")[0] for a in command if a.startswith("--")]


def _help(*command: str) -> str:
    return subprocess.run([str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True,
                          timeout=120).stdout


def test_the_mlflow_server_command_has_the_basic_auth_switch():
    """The stack test runs this command; the basic-auth switch it may add is checked here."""
    script = SERVICES["mlflow"]["entrypoint"][-1].replace("$$", "$")
    command = shlex.split(script.split("exec ", 1)[1])
    assert command[:2] == ["mlflow", "server"]
    text = _help("mlflow", "server")
    flags = _flags(command) + ["--app-name"]  # the basic-auth switch adds it
    for flag in flags:
        assert re.search(rf"\s{flag}\b", text), flag
    assert "--serve-artifacts" in command and "s3://mlflow" in command  # clients need no S3 keys
    assert "mlflow[auth]" in (ROOT / "Dockerfile").read_text()  # what the basic-auth app imports


def test_the_readme_and_compose_rlsweep_lines_parse_with_the_cli():
    lines = [line for line in (ROOT / "docker-compose.yml").read_text().splitlines() if "exec ray-head rlsweep" in line]
    lines += [line for line in (ROOT / "README.md").read_text().splitlines() if "exec ray-head rlsweep" in line]
    assert len(lines) >= 2
    for line in lines:
        argv = shlex.split(line.split("exec ray-head rlsweep", 1)[1].split("#")[0])
        args = _parser().parse_args(argv)
        assert args.address == "auto"
        if getattr(args, "experiment", None):
            assert (ROOT / args.experiment).exists(), args.experiment
