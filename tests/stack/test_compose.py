"""The compose file read as `docker compose` reads it (interpolation, volumes, order), and the
repository's docker-compose.yml as `rlsweep stack up` turns it into command lines."""


import pytest

from rlsweep.config import ConfigError
from rlsweep.stack import compose
from tests.conftest import ROOT

FILE = ROOT / "docker-compose.yml"
GIVEN = {"POSTGRES_PASSWORD": "pg-secret-1", "S3_ACCESS_KEY_ID": "ak", "S3_SECRET_KEY": "sk", "RAY_AUTH_TOKEN": "tok"}


@pytest.mark.parametrize("text, values, expected", [
    ("${A}", {"A": "x"}, "x"),
    ("$A/b", {"A": "x"}, "x/b"),
    ("${A:-d}", {}, "d"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A-d}", {"A": ""}, ""),
    ("${A-d}", {}, "d"),
    ("${A:+alt}", {"A": "x"}, "alt"),
    ("${A:+alt}", {"A": ""}, ""),
    ("${A+alt}", {"A": ""}, "alt"),
    ("$${A} $$A", {"A": "x"}, "${A} $A"),
    ("${A:-${B}:1}", {"B": "b"}, "b:1"),
    ("$${M:+--app-name \"$$M\"}", {}, '${M:+--app-name "$M"}'),
    ("${UNSET}", {}, ""),
])
def test_interpolation_follows_compose(text, values, expected):
    assert compose.interpolate(text, values, "f") == expected


def test_a_required_variable_unset_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"^f: PW is not set \(set PW in \.env\)$"):
        compose.interpolate("${PW:?set PW in .env}", {"PW": ""}, "f")
    assert compose.interpolate("${PW?gone}", {"PW": ""}, "f") == ""


def test_variables_used_marks_the_required_ones():
    used = compose.variables_used(compose.read(FILE))
    assert {k for k, v in used.items() if v == "?"} == set(GIVEN)
    assert "POSTGRES_PORT" in used and "BIND_HOST" in used and used["MLFLOW_PORT"] is None


def test_native_values_put_hosts_on_loopback_and_ports_on_free_ones():
    doc = compose.read(FILE)
    ports = iter(range(40000, 40100))
    values = compose.native_values(doc, {**GIVEN, "MLFLOW_PORT": "5999"}, lambda: next(ports))
    assert values["MLFLOW_PORT"] == "5999"  # given: kept
    assert all(values[k] == "127.0.0.1" for k in values if k.endswith("_HOST"))
    assert values["BIND_HOST"] == "127.0.0.1"
    port_values = [int(values[k]) for k in values if k.endswith("_PORT") and k != "MLFLOW_PORT"]
    assert len(set(port_values)) == len(port_values) and all(40000 <= p < 40100 for p in port_values)


def test_the_repository_compose_file_as_command_lines(tmp_path):
    values = compose.native_values(compose.read(FILE), GIVEN, iter(range(41000, 41100)).__next__)
    found = compose.services(FILE, values, tmp_path)
    assert compose.start_order(found) == ["postgres", "s3", "mlflow", "ray-head", "ray-worker"]
    pg, s3, ml, head, worker = (found[n] for n in ("postgres", "s3", "mlflow", "ray-head", "ray-worker"))
    assert pg.env["PGDATA"] == str(tmp_path / "postgres") and pg.stop_signal == "SIGINT"
    assert pg.argv == ["postgres", "-p", values["POSTGRES_PORT"], "-c", "listen_addresses=127.0.0.1"]
    assert s3.argv[:3] == ["weed", "server", f"-dir={tmp_path / 's3'}"] and "-ip.bind=127.0.0.1" in s3.argv
    assert s3.env == {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk"}
    assert ml.argv[:2] == ["sh", "-c"] and ml.cwd == tmp_path / "mlflow-auth"
    script = ml.argv[2]
    assert f"--backend-store-uri \"postgresql+psycopg2://mlflow:$POSTGRES_PASSWORD@127.0.0.1:{values['POSTGRES_PORT']}/mlflow\"" in script
    assert "pg-secret-1" not in script  # the password reaches the server through its environment, not its argv
    assert ml.env["MLFLOW_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{values['S3_PORT']}"
    assert ml.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert ml.waits_for == {"postgres": "service_healthy", "s3": "service_healthy"}
    assert head.argv[:3] == ["ray", "start", "--head"] and f"--port={values['RAY_PORT']}" in head.argv
    assert worker.argv[2] == f"--address=127.0.0.1:{values['RAY_PORT']}"
    for ray in (head, worker):  # token authentication on every Ray process, with the one token
        assert ray.env["RAY_AUTH_MODE"] == "token" and ray.env["RAY_AUTH_TOKEN"] == "tok"
    assert head.env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{values['MLFLOW_PORT']}"
    assert head.volumes == {"/rlsweep/results": tmp_path / "results"}
    assert ml.health_s == 20 + 10 * 30


def test_a_compose_file_missing_a_password_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"services\.postgres\.environment\.POSTGRES_PASSWORD: POSTGRES_PASSWORD is not set"):
        compose.services(FILE, {**GIVEN, "POSTGRES_PASSWORD": ""}, tmp_path)


def test_services_that_wait_for_each_other_or_for_nothing_defined_are_refused(tmp_path):
    f = tmp_path / "c.yml"
    f.write_text("services:\n  a: {command: [x], depends_on: [b]}\n  b: {command: [y], depends_on: {a: {condition: service_healthy}}}\n")
    with pytest.raises(ConfigError, match="wait for each other"):
        compose.start_order(compose.services(f, {}, tmp_path))
    f.write_text("services:\n  a: {command: [x], depends_on: [nope]}\n")
    with pytest.raises(ConfigError, match="waits for nope, which the file does not define"):
        compose.start_order(compose.services(f, {}, tmp_path))
    f.write_text("volumes: {}\n")
    with pytest.raises(ConfigError, match="no `services` mapping"):
        compose.read(f)


def test_env_file_lines(tmp_path):
    f = tmp_path / ".env"
    f.write_text("# comment\n\nA=1\nexport B='two words'\nC=\"q\"\nD=\n")
    assert compose.read_env_file(f) == {"A": "1", "B": "two words", "C": "q", "D": ""}
    assert compose.read_env_file(tmp_path / "none") == {}
    f.write_text("A=1\nnot a line\n")
    with pytest.raises(ConfigError, match=r"\.env:2: expected KEY=VALUE"):
        compose.read_env_file(f)
