"""`rlsweep stack` on bad input: one line, exit 2, nothing started or created."""

import pytest

from rlsweep.cli import main
from tests.conftest import ROOT


@pytest.fixture
def no_secrets(monkeypatch, tmp_path):
    for name in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY_ID", "S3_SECRET_KEY", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    compose_file = tmp_path / "docker-compose.yml"  # no .env beside it
    compose_file.write_text((ROOT / "docker-compose.yml").read_text())
    return compose_file


def test_a_password_missing_from_env_is_named_and_nothing_starts(no_secrets, tmp_path, capsys):
    code = main(["stack", "up", "--compose", str(no_secrets), "--dir", str(tmp_path / "stack")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["rlsweep: error: docker-compose.yml: services.postgres.environment.POSTGRES_PASSWORD: "
                                 "POSTGRES_PASSWORD is not set (set POSTGRES_PASSWORD in .env)"], err
    assert not (tmp_path / "stack").exists()


def test_env_file_beside_the_compose_file_is_read_and_the_environment_wins(no_secrets, monkeypatch):
    from rlsweep.commands.stack import given_variables

    (no_secrets.parent / ".env").write_text("POSTGRES_PASSWORD=from-file\nS3_SECRET_KEY=file\n")
    monkeypatch.setenv("S3_SECRET_KEY", "from-env")
    given = given_variables(no_secrets)
    assert given["POSTGRES_PASSWORD"] == "from-file" and given["S3_SECRET_KEY"] == "from-env"


@pytest.mark.parametrize("argv, says", [
    (["stack", "status"], "no stack was started from "),
    (["stack", "down"], "no stack was started from "),
    (["stack", "up", "--compose", "nope.yml"], "nope.yml: no such compose file"),
    (["stack", "up", "--workers", "-1"], "--workers -1: expected 0 or more"),
])
def test_bad_stack_commands_are_one_line(argv, says, tmp_path, capsys):
    code = main([*argv, "--dir", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err
