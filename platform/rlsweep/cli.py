"""The `rlsweep` command. Input is parsed and validated before Ray (or torch) is imported, so `--help`
and bad-input errors are quick: one line naming the file and key, exit code 2, nothing created."""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlsweep import metrics as M
from rlsweep import verbosity
from rlsweep.config import ConfigError, ExperimentConfig, TrackingConfig, flatten, load_experiment
from rlsweep.interrupts import interrupt_on_termination

if TYPE_CHECKING:  # imported where used: `--help` and bad input stay quick
    from rlsweep.tracking.store import Store

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also print what Ray, Tune, Optuna, MLflow and the MLflow server say")
    p = argparse.ArgumentParser(prog="rlsweep", description="Tune reinforcement-learning hyperparameters.",
                                parents=[common])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def address_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--address", default=None, metavar="ADDRESS",
                        help="join this Ray cluster (host:port of its head, or auto on one of its nodes); default $RAY_ADDRESS, "
                             "else a local Ray")
        sp.add_argument("--wait-for-resources", action="store_true", default=argparse.SUPPRESS,
                        help="on a joined cluster, let trials bigger than it is now wait for nodes (an autoscaler "
                             "that Ray does not report); default: refused, exit 2")

    def experiment_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("experiment", help="experiment YAML, e.g. experiments/cartpole_ppo.yaml")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set stop.env_steps=20000 (repeatable)")
        address_arg(sp)

    t = sub.add_parser("train", parents=[common], help="train one trial of an experiment through Ray Tune")
    experiment_args(t)
    t.add_argument("--seed", type=int, default=None, help="override the experiment's seed")
    t.add_argument("--restore", metavar="CHECKPOINT", default=None,
                   help="continue from a checkpoint directory or an MLflow artifact URI (runs:/<id>/...)")

    s = sub.add_parser("sweep", parents=[common], help="search hyperparameters with Optuna through Ray Tune, tracked in MLflow")
    experiment_args(s)
    s.add_argument("--space", default=None, help="search space YAML (default: the experiment's sweep.search_space)")
    s.add_argument("--trials", type=int, default=None, help="number of trials (default: sweep.trials)")
    s.add_argument("--name", default=None, help="sweep name (default: <experiment>-<date>-<time>)")

    r = sub.add_parser("resume", parents=[common], help="continue an interrupted sweep")
    r.add_argument("sweep", metavar="NAME_OR_PATH", help="a sweep name under --results-dir, or its directory")
    r.add_argument("--results-dir", default="results")
    address_arg(r)

    b = sub.add_parser("best", parents=[common], help="write a sweep's best trial as an experiment file")
    b.add_argument("sweep", metavar="NAME_OR_PATH", help="a sweep name under --results-dir, or its directory")
    b.add_argument("-o", "--output", default=None, help="write here (default: print); never overwrites a file")
    b.add_argument("--results-dir", default="results")

    e = sub.add_parser("evaluate", parents=[common], help="play deterministic episodes with a checkpoint's policy (no Ray)")
    e.add_argument("checkpoint", help="a checkpoint directory or an MLflow artifact URI (runs:/<id>/...)")
    e.add_argument("--episodes", type=int, default=None, help="default: the experiment's evaluation.episodes")
    e.add_argument("--seed", type=int, default=0, help="seeds the evaluation episodes")
    e.add_argument("--tracking-uri", default=None, help="store for runs:/ URIs (default: as `ui` finds it)")

    u = sub.add_parser("ui", parents=[common], help="start the MLflow UI on rlsweep's store")
    u.add_argument("experiment", nargs="?", default=None, help="use this experiment's tracking settings")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--create", action="store_true", help="start on an empty store where none exists yet")
    return p


def _fmt(v: object) -> str:
    return M.text(v, digits=6)


def _load(args: argparse.Namespace, seed: int | None = None) -> ExperimentConfig:
    from rlsweep.envs import space_info
    from rlsweep.tracking.store import take_credentials

    cfg = load_experiment(args.experiment, args.overrides, seed=seed)
    cfg.tracking.uri = take_credentials(cfg.tracking.uri)  # a password stays out of params, files and Ray
    try:
        space_info(cfg.env)  # unknown env ids, bad kwargs and unsupported spaces fail here
    except ConfigError as e:
        raise ConfigError(f"{args.experiment}: {e}") from None
    if not os.environ.get("RAY_ADDRESS"):  # the local Ray will have at most this machine's CPUs
        try:
            cfg.check_fits(os.cpu_count() or 1, None, "this machine")
        except ConfigError as e:
            raise ConfigError(f"{args.experiment}: {e}") from None
    return cfg


def _check_store(cfg: ExperimentConfig) -> str:
    """Opens the tracking store: the last check, once every other input is known to be good."""
    from rlsweep.tracking.store import check_store, resolve_uri

    uri = resolve_uri(cfg.tracking)
    check_store(uri)
    return uri


def _restore_tags(ref: str | None, local: str | None) -> dict[str, str]:
    """Where a `train --restore` run continued from: the checkpoint as given, its run, its env steps."""
    if ref is None or local is None:
        return {}
    from rlsweep.ppo import checkpoint
    from rlsweep.tracking.store import TAG_RESTORED_FROM, TAG_RESTORED_RUN, TAG_RESTORED_STEP

    tags = {TAG_RESTORED_FROM: ref if _is_mlflow_uri(ref) else str(Path(ref).resolve()),
            TAG_RESTORED_STEP: str(checkpoint.read(local)[1].get("env_steps", ""))}
    if ref.startswith("runs:/"):
        tags[TAG_RESTORED_RUN] = ref.removeprefix("runs:/").split("/", 1)[0]
    return tags


def _is_mlflow_uri(ref: str) -> bool:
    return ref.startswith(("runs:/", "mlflow-artifacts:/", "models:/"))


def _fetch_checkpoint(ref: str, cfg: ExperimentConfig, uri: str, scratch: str) -> str:
    """A local checkpoint directory for `--restore` (MLflow artifact URIs are downloaded into `scratch`)."""
    from rlsweep.ppo import checkpoint

    local = _download(ref, uri, scratch) if _is_mlflow_uri(ref) else ref
    checkpoint.check(local, cfg.model_dump(mode="json"))
    return str(Path(local).resolve())


def _download(ref: str, uri: str, dest: str) -> str:
    """An MLflow artifact URI downloaded into `dest` (a temporary folder the caller removes)."""
    import mlflow.artifacts

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=dest, tracking_uri=uri)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{ref}: cannot download ({first})") from None


# -- commands ---------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from rlsweep.ppo import checkpoint

    cfg = _load(args, seed=args.seed)
    if args.restore and not _is_mlflow_uri(args.restore):
        checkpoint.check(args.restore, cfg.model_dump(mode="json"))
    uri = _check_store(cfg)
    from rlsweep.tracking.store import redact
    from rlsweep.tuning.driver import run_train

    with tempfile.TemporaryDirectory(prefix="rlsweep-checkpoint-") as scratch:
        restore = _fetch_checkpoint(args.restore, cfg, uri, scratch) if args.restore else None
        out = run_train(cfg, restore_from=restore, tags=_restore_tags(args.restore, restore))
    keys = [M.ENV_STEPS, M.TRAINING_ITERATION, M.EPISODE_RETURN_MEAN, M.EVAL_RETURN_MEAN, M.EVAL_RETURN_STD,
            M.EXPLAINED_VARIANCE, M.ENV_STEPS_PER_S, M.TIME_TOTAL_S]
    if out.interrupted:
        then = (f"continue it with: {_self_command()} train {args.experiment} --restore {out.checkpoint}"
                if out.checkpoint else "it saved no checkpoint yet (see checkpoint_frequency)"
                if out.started else "its trial never started")
        why = f" ({redact(out.why_interrupted)})" if out.why_interrupted else ""
        print(f"interrupted after {out.metrics.get(M.ENV_STEPS, 0)} env steps{why}; {then}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"finished: {out.stop_reason or 'stopped'}" if out.error is None else f"failed: {out.error}")
    for k in keys:
        if k in out.metrics:
            print(f"  {k:<22} {_fmt(out.metrics[k])}")
    print(f"checkpoint: {out.checkpoint}")
    print(f"trial dir:  {out.trial_dir}")
    print(f"mlflow run: {out.run_id} at {redact(uri)}")
    return 0 if out.error is None else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from rlsweep.commands.sweep import plan
    from rlsweep.search_space import load_search_space

    overrides = list(args.overrides)
    if args.trials is not None:
        overrides.append(f"sweep.trials={args.trials}")
    args.overrides = overrides
    cfg = _load(args)
    space_file = args.space or cfg.sweep.search_space
    space = load_search_space(space_file, cfg.model_dump(mode="json"), args.experiment)
    p = plan(cfg, space, args.name)
    _check_store(cfg)

    from rlsweep.commands.sweep import run_sweep

    print(f"sweep {p.name}: {cfg.sweep.trials} trials of {args.experiment} over {space_file} "
          f"({', '.join(space.params)}); results in {p.directory}", flush=True)
    return _sweep_outcome(run_sweep(p), p.directory)


def cmd_resume(args: argparse.Namespace) -> int:
    from rlsweep.commands.sweep import find_sweep, read_meta, resume_sweep
    from rlsweep.tracking.store import check_store, take_credentials

    directory = find_sweep(args.sweep, args.results_dir)
    meta = read_meta(directory, full=True)
    check_store(take_credentials(meta["tracking_uri"]))
    from rlsweep.tracking.store import TAG_DIR, TAG_KIND, TAG_STATUS

    tracker = _sweep_store(meta).tracker()
    parent = tracker.find(**{TAG_KIND: "sweep", TAG_DIR: str(directory)})
    if parent is not None and tracker.tags(parent).get(TAG_STATUS) == "finished":
        print(f"sweep {meta['name']} has finished: nothing to resume, nothing changed "
              f"(`{_self_command()} best {directory}` shows its best trial)")
        return 0
    print(f"resuming sweep {meta['name']} from {directory}", flush=True)
    return _sweep_outcome(resume_sweep(directory), directory)


def _sweep_store(meta: dict) -> Store:
    """The MLflow store and experiment a sweep's record names."""
    from rlsweep.tracking.store import Store, experiment_name

    return Store(meta["tracking_uri"], experiment_name(ExperimentConfig.model_validate(meta["experiment"])))


def _sweep_outcome(results, directory: Path) -> int:
    """What the sweep came to, as MLflow records it (the statuses the tracker wrote, not Tune's, which
    calls a trial stopped by Ctrl-C 'TERMINATED')."""
    from rlsweep.commands.sweep import read_meta
    from rlsweep.ranking import best as best_row
    from rlsweep.ranking import rank
    from rlsweep.tracking.store import (
        TAG_DIR,
        TAG_KIND,
        TAG_STATUS,
        TAG_TRIAL,
        redact,
        trial_number,
        trial_run_name,
        ui_link,
    )

    meta = read_meta(directory)
    store = _sweep_store(meta)
    try:
        tracker = store.tracker()
        parent = tracker.find(**{TAG_KIND: "sweep", TAG_DIR: str(directory)})
        children = {r.tags.get(TAG_TRIAL): r for r in tracker.search(**{TAG_KIND: "trial", TAG_DIR: str(directory)})}
        parent_status = tracker.tags(parent).get(TAG_STATUS) if parent else None
    except Exception as e:  # noqa: BLE001 - the store went away: what Tune saved is still resumable
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        print(f"sweep {meta['name']} interrupted: the tracking store {redact(store.uri)} cannot be reached "
              f"({first}); once it is back, continue with: {_self_command()} resume {directory}", file=sys.stderr)
        return EXIT_INTERRUPTED
    statuses = [r.tags.get(TAG_STATUS) for r in children.values()]
    done = sum(s in ("finished", "stopped early", "error") for s in statuses)
    failed = statuses.count("error")
    if parent_status != "finished":
        print(f"sweep {meta['name']} interrupted ({done}/{meta['trials']} trials done, {failed} of them failed); "
              f"continue it with: {_self_command()} resume {directory}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if done < meta["trials"] and meta.get("time_budget_s"):
        print(f"sweep {meta['name']}: the time budget of {meta['time_budget_s']:g} s ended it after {done} trials",
              file=sys.stderr)
    print(f"sweep {meta['name']} done: {done - failed} trials finished, {failed} failed")
    rows = [{**r.metrics, "config": r.config, "checkpoint": r.checkpoint} for r in results if r.metrics]
    best = best_row(rows, meta["metric"], meta["mode"])
    if best is None:
        print("no trial reported the metric; nothing to recommend")
        return 1
    print(f"top trials by {meta['metric']} ({meta['mode']}; ties: fewer env steps, then the earlier trial):")
    for i, row in enumerate(rank(rows, meta["metric"], meta["mode"])[:5], 1):
        name = trial_run_name(trial_number(row.get("experiment_tag"), row["trial_id"]), row["config"], meta["params"])
        print(f"  {i}. {name:<48} "
              f"{_fmt(row[meta['metric']]):>10}  {row.get(M.ENV_STEPS, 0):>9,} env steps")
    flat = {k: v for k, v in flatten(best["config"]).items() if k in meta["params"]}
    run = children.get(best["trial_id"])
    number = trial_number(best.get("experiment_tag"), best["trial_id"])
    print(f"best trial:  {number} (trial id {best['trial_id']}) with {meta['metric']} = {_fmt(best[meta['metric']])} "
          f"after {best.get(M.ENV_STEPS)} env steps")
    print("its config: " + ", ".join(f"{k}={_fmt(v)}" for k, v in flat.items()))
    print(f"checkpoint:  {best['checkpoint'].path if best['checkpoint'] else None}")
    print(f"mlflow run:  {run.run_id if run else None} (experiment {store.experiment}, {redact(store.uri)})")
    server = store.uri.startswith(("http://", "https://"))
    base = store.uri if server else "http://127.0.0.1:5000"
    ui = "" if server else f" (after `{_self_command()} ui`)"
    print(f"in MLflow{ui}: the trials {ui_link(base, tracker.experiment_id)}")
    print(f"               the sweep  {ui_link(base, tracker.experiment_id, parent)}")
    print(f"next: {_self_command()} best {directory} -o best.yaml   |   {_self_command()} ui   (compare the runs in MLflow)")
    return 0


def _self_command() -> str:
    """How to run rlsweep again from here: `rlsweep` when it is on PATH, else its full path."""
    import shutil

    exe = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("rlsweep")
    if exe is not None and exe.name == "rlsweep" and (on_path is None or Path(on_path).resolve() != exe):
        return str(exe)
    return "rlsweep"


def cmd_best(args: argparse.Namespace) -> int:
    import json

    from rlsweep.commands.sweep import find_sweep, read_meta
    from rlsweep.ranking import best as best_row
    from rlsweep.tracking.report import best_config_yaml

    directory = find_sweep(args.sweep, args.results_dir)
    meta = read_meta(directory)
    if args.output:
        out = Path(args.output)
        if out.exists() or out.is_symlink():
            raise ConfigError(f"-o {args.output}: file exists; rlsweep never overwrites it (pick another path)")
        if not out.parent.is_dir():
            raise ConfigError(f"-o {args.output}: folder {out.parent} does not exist")
    rows = []
    for trial_dir in sorted(directory.glob("trial_*")):
        results = trial_dir / "result.json"
        lines = results.read_text().splitlines() if results.is_file() else []
        if lines:
            try:
                last = json.loads(lines[-1])
                config = last["config"]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{results}: the last result is not valid (corrupt or truncated)") from None
            rows.append({"trial_id": last["trial_id"], meta["metric"]: last.get(meta["metric"], math.nan),
                         M.ENV_STEPS: last.get(M.ENV_STEPS), "config": config})
    top = best_row(rows, meta["metric"], meta["mode"])
    if top is None:
        raise ConfigError(f"sweep {directory}: no trial has reported {meta['metric']} yet")
    text = best_config_yaml(top, meta["name"], meta["metric"])
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        try:  # whole or not at all, and never over a file or link that appeared meanwhile
            os.link(tmp, out)
        except FileExistsError:
            raise ConfigError(f"-o {args.output}: file exists; rlsweep never overwrites it (pick another path)") from None
        finally:
            tmp.unlink()
        print(f"wrote {args.output} (trial {top['trial_id']}, {meta['metric']} = {_fmt(top[meta['metric']])}); "
              f"run it with: rlsweep train {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="rlsweep-checkpoint-") as scratch:
        return _evaluate(args, scratch)


def _evaluate(args: argparse.Namespace, scratch: str) -> int:
    from rlsweep.ppo import checkpoint
    from rlsweep.tracking.store import check_store, resolve_uri

    ref = args.checkpoint
    if _is_mlflow_uri(ref):
        uri = args.tracking_uri or resolve_uri(TrackingConfig())
        check_store(uri, must_exist=True)  # an unreachable server fails in seconds; no empty store is made
        ref = _download(ref, uri, scratch)
    checkpoint.check(ref)
    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes}: expected at least 1")
    cfg, weights, stats = checkpoint.load_policy(ref)
    if args.episodes is not None:
        cfg = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"episodes": args.episodes})})

    from rlsweep.engine.rollout import Evaluator

    evaluator = Evaluator(cfg.model_copy(update={"seed": args.seed}))
    try:
        result = evaluator.evaluate(weights, stats, iteration=0)
    finally:
        evaluator.close()
    print(f"{cfg.env.id}: {cfg.evaluation.episodes} episodes, "
          f"{'deterministic' if cfg.evaluation.deterministic else 'sampled'} actions, seed {args.seed}")
    for k, v in result.items():
        print(f"  {k:<22} {_fmt(v)}")
    return 0


def _ui_links(uri: str, base: str, experiment: str | None) -> list[str]:
    """Links to the Runs page of `experiment` (else of every experiment with runs) and to its latest
    sweep's parent run."""
    from mlflow.tracking import MlflowClient

    from rlsweep.tracking.store import ui_link

    client = MlflowClient(uri)
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        experiments = [found] if found is not None else []
    else:
        experiments = client.search_experiments()
    lines = []
    for exp in experiments:
        if not client.search_runs([exp.experiment_id], max_results=1):
            continue
        lines.append(f"  runs of {exp.name}: {ui_link(base, exp.experiment_id)}")
        sweeps = client.search_runs([exp.experiment_id], "tags.`rlsweep.kind` = 'sweep'", max_results=1,
                                    order_by=["attributes.start_time DESC"])
        if sweeps:
            run = sweeps[0]
            lines.append(f"    its latest sweep, {run.info.run_name}: "
                         f"{ui_link(base, exp.experiment_id, run.info.run_id)}")
    return lines


def cmd_ui(args: argparse.Namespace) -> int:
    import socket

    from rlsweep.tracking.store import experiment_name, redact, resolve_uri

    cfg = load_experiment(args.experiment) if args.experiment else None
    uri = resolve_uri(cfg.tracking if cfg else TrackingConfig())
    server = uri.startswith(("http://", "https://"))
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is not None and not db.exists() and not args.create:
        raise ConfigError(f"no MLflow store at {db}: run a sweep first, point at a store (an experiment file's "
                          "tracking section, or $MLFLOW_TRACKING_URI), or pass --create for an empty one")
    if not server:
        with socket.socket() as probe:
            try:
                probe.bind((args.host, args.port))
            except OSError as e:
                print(f"rlsweep: error: {args.host}:{args.port} is in use ({e.strerror}): pick another with --port",
                      file=sys.stderr)
                return 1
    base = uri if server else f"http://{args.host}:{args.port}"
    print(f"the store is a server already: open {redact(uri)}" if server else
          f"MLflow UI on {redact(uri)}: {base}  (Ctrl-C stops it)", flush=True)
    if db is None or db.exists():
        for line in _ui_links(uri, base, experiment_name(cfg) if cfg else None):
            print(line, flush=True)
    print("  (MLflow 3 opens an experiment in its GenAI view: the link above, or its 'Model training' switch, "
          "shows the runs table)", flush=True)
    if server:
        return 0
    return _serve(uri, args.host, args.port)


_SERVER_NOISE = ("Registry store URI not provided", "[MLflow] Security middleware enabled with default settings")


def _forward(stream: Any, to: Any) -> None:
    for line in stream:
        if not line.startswith(_SERVER_NOISE):
            to.write(line)
            to.flush()


def _serve(uri: str, host: str, port: int) -> int:
    """The MLflow server, lean: one worker, no job runner (its GenAI jobs spawn a dozen processes), no
    access log. Its processes form their own group, stopped together however this one ends (Ctrl-C,
    SIGTERM, SIGHUP): none is left holding the port."""
    import signal

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if not verbosity.verbose():
        cmd += ["--uvicorn-opts", "--log-level warning"]
        env["PYTHONWARNINGS"] = "ignore::DeprecationWarning,ignore:starlette.middleware.wsgi is deprecated"
    quiet = not verbosity.verbose()
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


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "resume": cmd_resume, "best": cmd_best,
            "evaluate": cmd_evaluate, "ui": cmd_ui}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    interrupt_on_termination()
    verbosity.set_verbose(getattr(args, "verbose", False))
    if getattr(args, "address", None):  # ray.init() joins RAY_ADDRESS, and Ray's own tools read it too
        os.environ["RAY_ADDRESS"] = args.address
    if getattr(args, "wait_for_resources", False):
        os.environ["RLSWEEP_WAIT_FOR_RESOURCES"] = "1"  # tuning.WAIT_ENV (importing it here would import Ray)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(verbosity.level()))  # not a line per migration
    # rlsweep's writer retries failed MLflow calls itself (tracking.outage_s), without holding up
    # training: MLflow's own retries (7, about two minutes per call) would only block it
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if not os.environ.get("RAY_ADDRESS"):
        # a local Ray enables token authentication by default and warns about it on every start; asking
        # for it explicitly (before Ray is imported: it reads this once) keeps it on without the warning.
        # Joining a cluster follows the cluster's setting.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    logging.getLogger("alembic").setLevel(verbosity.level())
    if os.environ.get("MLFLOW_TRACKING_URI"):  # user:password@ in it: into MLflow's credential variables
        from rlsweep.tracking.store import take_credentials

        os.environ["MLFLOW_TRACKING_URI"] = take_credentials(os.environ["MLFLOW_TRACKING_URI"])
    if getattr(args, "tracking_uri", None):
        from rlsweep.tracking.store import take_credentials

        args.tracking_uri = take_credentials(args.tracking_uri)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"rlsweep: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rlsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    """The console script: `main`, then a quick exit.

    Once Ray is shut down and the streams are flushed nothing is left to do, but the interpreter's
    teardown of what a sweep imports (Ray, MLflow, Optuna, scikit-learn, matplotlib) takes seconds.
    """
    code = main()
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
