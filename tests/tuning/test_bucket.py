"""Results in a bucket (`tuning.bucket`): the URI's rules, and a sweep's mirror against the team stack's
real S3 server (SeaweedFS): what the driver pushes, what it pulls, what it sets right after a verify."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import time

import pytest

from rlsweep.config import ConfigError
from rlsweep.tuning import bucket
from rlsweep.tuning.bucket import Bucket, Mirror
from rlsweep.tuning.retention import KEPT, Retainer, restore
from tests.conftest import stack_bucket, stack_s3_env


def test_a_bucket_uri_keeps_its_endpoint_and_refuses_credentials(tmp_path, monkeypatch):
    b = Bucket.parse("s3://team/sweeps/?endpoint_override=h:9&scheme=http")
    assert b.location == "s3://team/sweeps"
    child = b.child("one")
    assert child.uri == "s3://team/sweeps/one?endpoint_override=h:9&scheme=http" and child.name == "one"
    for query in ("access_key=AKIDEXAMPLE", "secret_key=wJalrXUtnFEMI", "session_token=FwoGZXIvYXdz"):
        with pytest.raises(ConfigError, match="must not be in the URI") as e:
            Bucket.parse(f"s3://team/sweeps?endpoint_override=h:9&{query}")
        assert query.split("=")[1] not in str(e.value)
    with pytest.raises(ConfigError, match="a user or password must not be in the URI") as e:
        Bucket.parse("s3://AKIDEXAMPLE:wJalrXUtnFEMI@team/sweeps")
    assert "wJalrXUtnFEMI" not in str(e.value)
    with pytest.raises(ConfigError, match="no bucket name"):
        Bucket.parse("s3:///sweeps")
    with pytest.raises(ConfigError, match="only s3://"):
        Bucket.parse("gs://team/sweeps")

    # the mirror: per endpoint, bucket and prefix, under this machine's cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert child.mirror() == tmp_path / "cache/rlsweep/buckets/h_9/team/sweeps/one"
    # a study file in another machine's mirror is this machine's mirror of it; other URLs stay
    assert bucket.relocate("sqlite:////home/other/.cache/rlsweep/buckets/h_9/team/sweeps/one/optuna.db") == \
        f"sqlite:///{tmp_path}/cache/rlsweep/buckets/h_9/team/sweeps/one/optuna.db"
    assert bucket.relocate("sqlite:////srv/optuna.db") == "sqlite:////srv/optuna.db"
    # how MLflow's runs name a sweep: its URI where it is mirrored, its path otherwise (and back)
    folder = child.mirror()
    folder.mkdir(parents=True)
    assert bucket.tag_of(folder) == str(folder) and bucket.remote_of(folder) is None
    bucket.claim(folder, child)
    assert bucket.tag_of(folder) == child.uri and bucket.folder_of(child.uri) == folder
    assert bucket.tag_of(folder / "confirm") == child.child("confirm").uri  # its confirmation round
    assert bucket.storage_of(folder) == child.uri and bucket.storage_of(tmp_path) == str(tmp_path)
    # an object whose key would lead out of the sweep's folder is never pulled (`pull` refuses the sweep)
    assert bucket.escapes("trial_x/../../../escaped") and bucket.escapes("/etc/x") and not bucket.escapes("a/b..c")


@pytest.mark.xdist_group("stack")
@pytest.mark.slow
def test_the_mirror_against_a_real_bucket(stack, tmp_path, monkeypatch):
    """Pushes what the driver writes (never what is local only), pulls what Tune stored (not over the
    driver's own newer files unless asked), drops what Tune deleted there, and after a verify sets the
    bucket as the mirror is; a signed copy leaves the bucket only after GRACE_S."""
    for k, v in stack_s3_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    b = Bucket.parse(stack_bucket(stack, f"unit-{secrets.token_hex(4)}")).child("sweep")
    bucket.check(b)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ConfigError, match="cannot write there") as e:
        bucket.check(b)
    assert "wrong" not in str(e.value) and len(str(e.value).splitlines()) == 1
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack_s3_env()["AWS_SECRET_ACCESS_KEY"])
    fs, path = b.filesystem()

    def stored() -> dict[str, bytes]:
        import pyarrow.fs

        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
        return {i.path[len(path) + 1:]: fs.open_input_stream(i.path).read() for i in infos
                if i.type == pyarrow.fs.FileType.File}

    def put(rel: str, data: bytes) -> None:  # as Tune or a trial would
        with fs.open_output_stream(f"{path}/{rel}") as f:
            f.write(data)

    def study(value: str) -> bytes:  # an SQLite file (the study's is pushed as a consistent snapshot)
        import sqlite3
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            con = sqlite3.connect(f"{d}/s.db")
            con.execute("CREATE TABLE t (v TEXT)")
            con.execute("INSERT INTO t VALUES (?)", (value,))
            con.commit()
            con.close()
            return open(f"{d}/s.db", "rb").read()

    def study_value(data: bytes) -> str:
        import sqlite3
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".db") as f:
            f.write(data)
            f.flush()
            con = sqlite3.connect(f.name)
            try:
                return con.execute("SELECT v FROM t").fetchone()[0]
            finally:
                con.close()

    first = tmp_path / "first"
    for rel, data in {"rlsweep_sweep.json": b"{}", "optuna.db": study("one"), ".rlsweep_manifest.json": b"m1",
                      ".rlsweep_signed/aa": b"copy", ".rlsweep_signed/manifest.json": b"m1",
                      ".rlsweep_running": b"123", ".rlsweep_journal/t.jsonl": b"[]", "trial_x/result.json": b"{}",
                      "confirm/confirms.json": b"[]"}.items():
        (first / rel).parent.mkdir(parents=True, exist_ok=True)
        (first / rel).write_bytes(data)
    bucket.claim(first, b)
    mirror = Mirror(first, b)
    mirror.push_changed()
    assert set(stored()) == {"rlsweep_sweep.json", "optuna.db", ".rlsweep_manifest.json", ".rlsweep_signed/aa",
                             ".rlsweep_signed/manifest.json", bucket.LEASE}  # (the driver's lease, renewed)
    assert stored()[".rlsweep_manifest.json"] == b"m1" and study_value(stored()["optuna.db"]) == "one"
    (first / "optuna.db").write_bytes(study("two"))
    os.utime(first / "optuna.db", ns=(1, 1))  # (changed: its stamp differs from the one pushed)
    (first / ".rlsweep_signed/aa").unlink()
    mirror.push_changed()
    assert study_value(stored()["optuna.db"]) == "two" and ".rlsweep_signed/aa" in stored()  # still named, maybe
    monkeypatch.setattr(bucket, "GRACE_S", 0.0)
    mirror.push_changed()
    assert ".rlsweep_signed/aa" not in stored()

    # Tune's objects (its state, a trial's checkpoints), pulled into another machine's mirror
    put("tuner.pkl", b"tuner")
    put("trial_x/params.pkl", b"params")
    put("trial_x/result.json", b'{"a": 1}')
    put("trial_x/checkpoint_000001/learner.pt", b"w1")
    put("trial_x/checkpoint_000002/learner.pt", b"w2")
    put(".rlsweep_running", b"999")  # (what is local only, were it there, is not pulled)
    put(".rlsweep_journal/t.jsonl", b"[1]")
    second = b.mirror()
    bucket.pull(b, second)
    assert (second / "tuner.pkl").read_bytes() == b"tuner" and study_value((second / "optuna.db").read_bytes()) == "two"
    assert (second / "trial_x/checkpoint_000001/learner.pt").read_bytes() == b"w1"
    assert not (second / ".rlsweep_running").exists() and not (second / ".rlsweep_journal").exists()
    assert bucket.remote_of(second) == b
    # Tune deleted a checkpoint there: gone here too; a newer driver file here is kept unless the
    # bucket is to win (a resume that holds the sweep's lock)
    fs.delete_dir(f"{path}/trial_x/checkpoint_000001")
    (second / "optuna.db").write_bytes(study("newer here"))
    bucket.pull(b, second)
    assert not (second / "trial_x/checkpoint_000001/learner.pt").exists()
    assert study_value((second / "optuna.db").read_bytes()) == "newer here"
    bucket.pull(b, second, remote_wins=True)
    assert study_value((second / "optuna.db").read_bytes()) == "two"

    # what a verify set right here goes back: a file moved aside is deleted there, a changed one uploaded;
    # nothing verify does not check is touched
    (second / "tuner.pkl").unlink()
    (second / "trial_x/params.pkl").write_bytes(b"params, signed")
    (second / "trial_x/result.json").write_bytes(b'{"a": 2}')
    shutil.rmtree(second / "trial_x/checkpoint_000002")
    bucket.push_fixes(second)
    after = stored()
    assert "tuner.pkl" not in after and after["trial_x/params.pkl"] == b"params, signed"
    assert after["trial_x/result.json"] == b'{"a": 1}' and after["trial_x/checkpoint_000002/learner.pt"] == b"w2"
    assert study_value(after["optuna.db"]) == "two"

    # checkpoints Tune deletes stay in the bucket until no signed state names them, as in a folder
    r = Retainer(second)
    r.keep(f"{path}/trial_x/checkpoint_000002")
    r.keep(f"{tmp_path}/elsewhere/checkpoint_000001")  # not the sweep's: ignored
    assert stored()[f"{KEPT}/trial_x/checkpoint_000002/learner.pt"] == b"w2"
    fs.delete_dir(f"{path}/trial_x/checkpoint_000002")  # Tune lets it go; a driver killed now...
    assert restore(second) == ["trial_x/checkpoint_000002 put back: Tune had deleted it after the last state signed"]
    after = stored()
    assert after["trial_x/checkpoint_000002/learner.pt"] == b"w2" and not any(k.startswith(KEPT) for k in after)
    r.keep_all()
    assert f"{KEPT}/trial_x/checkpoint_000002/learner.pt" in stored()
    r.drop()  # the sweep's final state signed
    assert not any(k.startswith(KEPT) for k in stored()) and "trial_x/checkpoint_000002/learner.pt" in stored()

    # one driver at a time: a fresh lease of another driver is refused, naming it; a lapsed one, or one
    # of a process gone from this machine, is taken over
    def lease(host: str, pid: int, age: float) -> None:
        put(bucket.LEASE, json.dumps({"host": host, "pid": pid, "at": time.time() - age}).encode())

    lease("elsewhere", 4242, 5)
    with pytest.raises(ConfigError, match=r"sweep s is running on elsewhere in process 4242 \(its lease in s3://"):
        bucket.take_lease(b, "s")
    lease("elsewhere", 4242, bucket.LEASE_S + 1)
    bucket.take_lease(b, "s")
    assert json.loads(stored()[bucket.LEASE])["pid"] == os.getpid()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lease(socket.gethostname(), dead.pid, 1)
    bucket.take_lease(b, "s")
    bucket.drop_lease(b)
    assert bucket.LEASE not in stored()

    # nothing under a place: nothing made here
    empty = b.child("nothing")
    bucket.pull(empty, tmp_path / "empty")
    assert not (tmp_path / "empty").exists() and not bucket.exists(empty)


@pytest.mark.xdist_group("stack")
@pytest.mark.slow
def test_a_checkpoint_in_a_bucket_is_evaluated_from_its_uri(stack, tmp_path, monkeypatch):
    """The checkpoint URI a run kept in a bucket prints (`s3://...?endpoint_override=...`) is what
    `evaluate` (and `train --restore`, through the same fetch) takes: fetched with the environment's
    keys; a place with nothing stored is one line."""
    import pyarrow.fs

    from rlsweep.config import validate
    from rlsweep.engine.training import Training
    from rlsweep.engine.workers import LocalWorkers
    from rlsweep.ppo import checkpoint
    from tests.conftest import cli_env, rlsweep, small_config

    cfg = validate(small_config(workers=0))
    t = Training(cfg, LocalWorkers(cfg))
    t.iterate()
    checkpoint.write(tmp_path / "ckpt", *t.state())
    t.close()
    for k, v in stack_s3_env().items():
        monkeypatch.setenv(k, v)
    place = Bucket.parse(stack_bucket(stack, f"ckpt-{secrets.token_hex(4)}"))
    b = place.child("checkpoint_000001")
    fs, path = b.filesystem()
    pyarrow.fs.copy_files(str(tmp_path / "ckpt"), path, destination_filesystem=fs)
    env = cli_env(**stack_s3_env())
    r = rlsweep("evaluate", b.uri, "--episodes", "2", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("CartPole-v1: 2 episodes, deterministic actions, seed 0"), r.stdout
    r = rlsweep("evaluate", place.child("nothing").uri, env=env, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and f"{place.location}/nothing: nothing is stored there" in lines[0], \
        r.stderr
