"""Where the MLflow store is, whether it can be used, and the credentials in its URI."""

import os
from pathlib import Path

import pytest

from rlsweep.config import ConfigError, TrackingConfig, validate
from rlsweep.tracking.store import (
    Store,
    check_store,
    experiment_name,
    local_artifact_root,
    redact,
    resolve_uri,
)
from tests.conftest import small_config


def test_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = TrackingConfig(local_dir=str(tmp_path))
    assert resolve_uri(local) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert local_artifact_root(resolve_uri(local), local) == (tmp_path / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri(local) == "http://127.0.0.1:5000"
    assert local_artifact_root("http://127.0.0.1:5000", local) is None
    assert resolve_uri(TrackingConfig(uri="sqlite:////x/y.db")) == "sqlite:////x/y.db"


def test_experiment_name_and_store():
    cfg = validate(small_config())
    assert experiment_name(cfg) == "test"
    cfg = validate(small_config(tracking={"experiment": "team-a", "uri": "sqlite:////tmp/z.db"}))
    assert experiment_name(cfg) == "team-a"
    assert Store.of(cfg) == Store("sqlite:////tmp/z.db", "team-a", (Path(".").resolve() / "mlartifacts").as_uri())


@pytest.mark.parametrize("setup, uri, fragment", [
    (None, "sqlite:///{tmp}/missing/mlflow.db", "does not exist"),
    (lambda t: (t / "x.db").write_text("not sqlite"), "sqlite:///{tmp}/x.db", "is not an SQLite database"),
    (None, "http://127.0.0.1:9", "cannot be reached"),
])
def test_check_store_says_why(tmp_path, setup, uri, fragment):
    if setup:
        setup(tmp_path)
    with pytest.raises(ConfigError, match=fragment):
        check_store(uri.format(tmp=tmp_path))


def test_check_store_accepts_a_new_sqlite_file(tmp_path):
    check_store(f"sqlite:///{tmp_path / 'new.db'}")
    assert not (tmp_path / "new.db").exists()  # checking creates nothing


def test_passwords_never_reach_a_message():
    assert redact("https://ann:s3cret@mlflow.example:5000/x") == "https://ann:***@mlflow.example:5000/x"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    with pytest.raises(ConfigError) as e:
        check_store("http://ann:s3cret@127.0.0.1:9")
    assert "s3cret" not in str(e.value) and "ann:***@127.0.0.1:9" in str(e.value)
    assert "cannot be reached" in str(e.value)  # the host was parsed past the credentials


def test_credentials_move_from_the_uri_into_mlflows_variables(monkeypatch):
    from rlsweep.tracking.store import take_credentials

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert take_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert take_credentials("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db" and take_credentials(None) is None
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ
    assert take_credentials("https://ann:p%40ss@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ann" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"


def test_check_store_sends_basic_auth_from_the_uri():
    """A real HTTP server on loopback that, like `mlflow server --app-name basic-auth`, wants credentials."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(b"ann:s3cret").decode()
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        check_store(f"http://ann:s3cret@127.0.0.1:{port}")
        with pytest.raises(ConfigError, match=r"ann:\*\*\*@127\.0\.0\.1"):
            check_store(f"http://ann:wrong@127.0.0.1:{port}")
        with pytest.MonkeyPatch.context() as mp:  # or from MLflow's variables
            mp.setenv("MLFLOW_TRACKING_USERNAME", "ann")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
            check_store(f"http://127.0.0.1:{port}")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
            with pytest.raises(ConfigError, match="cannot be reached"):
                check_store(f"http://127.0.0.1:{port}")
    finally:
        server.shutdown()
    assert seen[0][0] == "/health"
