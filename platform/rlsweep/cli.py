"""The `rlsweep` command: parses the command line, runs the command's module (`rlsweep.commands`), and
prints the outcome it returns.

Input is parsed and validated before Ray (or torch) is imported, so `--help` and bad-input errors are
quick: one line naming the file and key, exit code 2, nothing created.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rlsweep import metrics as M
from rlsweep import timeline, verbosity
from rlsweep.config import ConfigError, flatten
from rlsweep.interrupts import interrupt_on_termination

if TYPE_CHECKING:  # the commands are imported where used: `--help` and bad input stay quick
    from rlsweep.commands.sweep import SweepOutcome

EXIT_BAD_INPUT = 2
VERBOSE_LOG_DRAIN_S = 1.5
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

    def experiment_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("experiment", help="experiment YAML, e.g. experiments/cartpole_ppo.yaml")

    def set_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set stop.env_steps=20000 (repeatable)")

    t = sub.add_parser("train", parents=[common], help="train one trial of an experiment through Ray Tune")
    experiment_arg(t)
    t.add_argument("--seed", type=int, default=None, help="override the experiment's seed")
    t.add_argument("--seeds", type=int, default=None, metavar="K",
                   help="train K agents side by side on seeds seed..seed+K-1 (default 1: the experiment's "
                        "sweep.seeds_per_trial is for sweeps)")
    t.add_argument("--restore", metavar="CHECKPOINT", default=None,
                   help="continue from a checkpoint: a directory, an MLflow artifact URI (runs:/<id>/...), a "
                   "registered model (models:/NAME@champion) or a place in a bucket (s3://...)")
    set_arg(t)
    address_arg(t)  # (flags in the order people need them: the cluster's last)

    s = sub.add_parser("sweep", parents=[common], help="search hyperparameters with Optuna through Ray Tune, tracked in MLflow")
    experiment_arg(s)
    s.add_argument("--trials", type=int, default=None, help="number of trials (default: sweep.trials)")
    s.add_argument("--name", default=None, help="sweep name (default: <experiment>-<date>-<time>)")
    s.add_argument("--space", default=None, help="search space YAML (default: the experiment's sweep.search_space)")
    set_arg(s)
    address_arg(s)

    r = sub.add_parser("resume", parents=[common], help="continue an interrupted sweep")
    r.add_argument("sweep", metavar="NAME_OR_PATH", help="a sweep name under --results-dir, or its directory")
    r.add_argument("--results-dir", default="results")
    address_arg(r)

    b = sub.add_parser("best", parents=[common], help="write a sweep's best trial as an experiment file")
    b.add_argument("sweep", metavar="NAME_OR_PATH", help="a sweep name under --results-dir, or its directory")
    b.add_argument("-o", "--output", default=None, help="write here (default: print); never overwrites a file")
    b.add_argument("--results-dir", default="results")
    b.add_argument("--register", default=None, metavar="NAME",
                   help="also register the winner's policy as a new version of the MLflow model NAME, alias champion")

    e = sub.add_parser("evaluate", parents=[common], help="play deterministic episodes with a checkpoint's policy (no Ray)")
    e.add_argument("checkpoint", help="a checkpoint directory, an MLflow artifact URI (runs:/<id>/...), a "
                   "registered model (models:/NAME@champion) or a place in a bucket (s3://...)")
    e.add_argument("--episodes", type=int, default=None, help="default: the experiment's evaluation.episodes")
    e.add_argument("--seed", type=int, default=0, help="seeds the evaluation episodes")
    e.add_argument("--tracking-uri", default=None, help="store for runs:/ URIs (default: as `ui` finds it)")
    e.add_argument("--video", default=None, metavar="FILE.gif",
                   help="also write a GIF of a deterministic episode (the first agent, on --seed); never overwrites")

    u = sub.add_parser("ui", parents=[common], help="start the MLflow UI on rlsweep's store")
    u.add_argument("experiment", nargs="?", default=None, help="use this experiment's tracking settings")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--create", action="store_true", help="start on an empty store where none exists yet")

    k = sub.add_parser("stack", parents=[common], help="start, check or stop docker-compose.yml's team stack as plain "
                       "processes on 127.0.0.1 (no Docker)")
    k.add_argument("action", choices=["up", "status", "down", "restart"])
    k.add_argument("service", nargs="?", default=None, help="restart: the service (e.g. postgres, mlflow, ray-worker-1)")
    k.add_argument("--compose", default="docker-compose.yml", metavar="FILE", help="default ./docker-compose.yml")
    k.add_argument("--dir", default=".rlsweep-stack", metavar="DIR",
                   help="its data, logs and pids (default ./.rlsweep-stack; the data stays between up and down)")
    k.add_argument("--workers", type=int, default=1, metavar="N", help="Ray worker nodes besides the head (default 1)")
    k.add_argument("--cpus-per-node", type=float, default=None, metavar="N",
                   help="CPUs each Ray node offers (default: Ray counts the machine's)")
    return p


def _fmt(v: object) -> str:
    return M.text(v, digits=6)


def _self_command() -> str:
    """How to run rlsweep again from here: `rlsweep` when it is on PATH, else its full path."""
    import shutil

    exe = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("rlsweep")
    if exe is not None and exe.name == "rlsweep" and (on_path is None or Path(on_path).resolve() != exe):
        return str(exe)
    return "rlsweep"


# -- commands: run the command's module, print its outcome -------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """`rlsweep train`: runs `commands.train.train` and prints its outcome; the exit code."""
    from rlsweep.commands.train import train
    from rlsweep.tracking.store import redact

    out = train(args.experiment, args.overrides, seed=args.seed, restore=args.restore, seeds=args.seeds)
    if out.interrupted:
        then = (f"continue it with: {_self_command()} train {args.experiment} --restore {out.checkpoint}"
                if out.checkpoint else "it saved no checkpoint yet (see checkpoint_frequency)"
                if out.started else "its trial never started")
        why = f" ({redact(out.why_interrupted)})" if out.why_interrupted else ""
        print(f"interrupted after {out.metrics.get(M.ENV_STEPS, 0)} env steps{why}; {then}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"finished: {out.stop_reason or 'stopped'}" if out.error is None else f"failed: {out.error}")
    for k in (M.ENV_STEPS, M.TRAINING_ITERATION, M.EPISODE_RETURN_MEAN, M.EVAL_RETURN_MEAN, M.EVAL_RETURN_STD,
              M.EXPLAINED_VARIANCE, M.ENV_STEPS_PER_S, M.TIME_TOTAL_S):
        if k in out.metrics:
            print(f"  {k:<22} {M.shown(out.metrics, k, digits=6)}")
    print(f"checkpoint: {out.checkpoint}")
    print(f"trial dir:  {out.trial_dir}")
    print(f"mlflow run: {out.run_id} at {redact(out.store)}")
    return 0 if out.error is None else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    """`rlsweep sweep`: prepares the sweep (every input checked before Ray), says what it starts, runs it
    and prints what it came to; the exit code.
    """
    from rlsweep.commands.sweep import prepare, run_sweep

    p = prepare(args.experiment, args.overrides, space=args.space, trials=args.trials, name=args.name)
    print(f"sweep {p.name}: {p.cfg.sweep.trials} trials of {args.experiment} over {p.space.source} "
          f"({', '.join(p.space.params)}); results in {p.directory}", flush=True)
    return _print_sweep(run_sweep(p))


def cmd_resume(args: argparse.Namespace) -> int:
    """`rlsweep resume`: continues an interrupted sweep (a finished one is left as it is); the exit code."""
    from rlsweep.commands.sweep import plan_resume, resume_sweep

    p = plan_resume(args.sweep, args.results_dir)
    if p.finished:
        print(f"sweep {p.record.name} has finished: nothing to resume, nothing changed "
              f"(`{_self_command()} best {p.record.argument}` shows its best trial)")
        return 0
    print(f"resuming sweep {p.record.name} from {p.record.argument}", flush=True)
    return _print_sweep(resume_sweep(p))


def _print_sweep(out: SweepOutcome) -> int:
    """The sweep's closing lines: interrupted (and how to go on), or its top trials and best trial."""
    from rlsweep.tracking.runs import trial_run_name
    from rlsweep.tracking.store import redact, trials_link, ui_link

    r, me = out.record, _self_command()
    store = r.store()
    if out.store_error is not None:
        print(f"sweep {r.name} interrupted: the tracking store {redact(store.uri)} cannot be reached "
              f"({out.store_error}); once it is back, continue with: {me} resume {r.argument}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not out.finished:
        print(f"sweep {r.name} interrupted ({out.done}/{r.trials} trials done, {out.failed} of them failed); "
              f"continue it with: {me} resume {r.argument}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if out.out_of_time:
        print(f"sweep {r.name}: the time budget of {r.time_budget_s:g} s ended it after {out.done} trials",
              file=sys.stderr)
    print(f"sweep {r.name} done: {out.done - out.failed} trials finished, {out.failed} failed")
    best = out.best
    if best is None:
        print("no trial reported the metric; nothing to recommend")
        return 1
    from rlsweep.ranking import CONFIRMED, checkpoint_of
    from rlsweep.tracking.model import ALIAS, TAG_MODEL

    params = list(r.params)
    confirmed = CONFIRMED + r.metric
    first = "; confirmed on fresh seeds first, by that score" if confirmed in best else ""
    print(f"top trials by {r.metric} ({r.mode}{first}; ties: fewer env steps, then the earlier trial):")
    for i, row in enumerate(out.rows[:5], 1):
        name = trial_run_name(row["number"], row["config"], params)
        score = M.shown(row, r.metric, digits=6)
        if confirmed in row:
            score = f"confirmed {M.shown(row, confirmed, digits=6)} (search {score})"
        print(f"  {i}. {name:<48} {score:>10}  {row.get(M.ENV_STEPS, 0):>9,} env steps")
    flat = {k: v for k, v in flatten(best["config"]).items() if k in params}
    print(f"best trial:  {best['number']} (trial id {best['trial_id']}) with {r.metric} = {M.shown(best, r.metric, digits=6)} "
          f"after {best.get(M.ENV_STEPS)} env steps")
    if confirmed in best:
        print(f"confirmed:   {r.metric} = {M.shown(best, confirmed, digits=6)} on "
              f"{len(best[CONFIRMED + 'seeds'])} fresh seeds (trial id "
              f"{best['confirmed_trial_id']}, run {out.confirmation_runs.get(best['confirmed_trial_id'])})")
    print("its config: " + ", ".join(f"{k}={_fmt(v)}" for k, v in flat.items()))
    print(f"checkpoint:  {checkpoint_of(best)}")
    print(f"mlflow run:  {out.runs.get(best['trial_id'])} (experiment {store.experiment}, {redact(store.uri)})")
    model = out.parent_tags.get(TAG_MODEL)
    if model:
        name = model.split(" version ", 1)[0]
        print(f"model:       {model}" + ("" if model.startswith("not registered") else
                                        f"; play it with: {me} evaluate models:/{name}@{ALIAS} "
                                        f"--tracking-uri {shlex.quote(redact(store.uri))}"))
    server = store.uri.startswith(("http://", "https://"))
    base = store.uri if server else "http://127.0.0.1:5000"
    ui = "" if server else f" (after `{me} ui`)"
    print(f"in MLflow{ui}:")
    print(f"  its trials, best first   {trials_link(base, out.experiment_id, out.parent_run_id, r.metric, r.mode)}")
    print(f"  their curves, overlaid   "
          f"{trials_link(base, out.experiment_id, out.parent_run_id, r.metric, r.mode, charts=True)}")
    print(f"  the sweep (its summary)  {ui_link(base, out.experiment_id, out.parent_run_id)}")
    print(f"next: {me} best {r.argument} -o best.yaml   |   {me} ui   (compare the runs in MLflow)")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """`rlsweep best`: prints the best trial's experiment file, or says where `-o` wrote it."""
    from rlsweep.commands.best import best
    from rlsweep.ranking import CONFIRMED, checkpoint_of

    out = best(args.sweep, args.results_dir, args.output, args.register)
    me, row = _self_command(), out.row
    checkpoint = checkpoint_of(row)
    if out.written_to:
        confirmed = row.get(CONFIRMED + out.record.metric)
        also = "" if confirmed is None else f", confirmed on fresh seeds: {_fmt(confirmed)}"
        print(f"wrote {out.written_to} (trial {row['number']}, trial id {row['trial_id']}, {out.record.metric} = "
              f"{_fmt(row[out.record.metric])}{also}); run it with: {me} train {out.written_to}")
        where = sys.stdout
    else:
        print(out.text, end="")
        where = sys.stderr  # stdout is the experiment file alone
    if checkpoint:
        print(f"its checkpoint: {checkpoint}; play it with: {me} evaluate {checkpoint}", file=where)
    if out.registered:
        from rlsweep.tracking.model import ALIAS
        from rlsweep.tracking.store import redact

        print(f"registered {out.registered}; play it with: {me} evaluate models:/{args.register}@{ALIAS} "
              f"--tracking-uri {shlex.quote(redact(out.record.tracking_uri or ''))}", file=where)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`rlsweep evaluate`: prints what a checkpoint's policy scored."""
    from rlsweep.commands.evaluate import evaluate

    out = evaluate(args.checkpoint, args.episodes, args.seed, args.tracking_uri, args.video)
    agents = f"{out.agents} agents (seeds {out.seed}..{out.seed + out.agents - 1}) x " if out.agents > 1 else ""
    print(f"{out.env_id}: {agents}{out.episodes} episodes, {'deterministic' if out.deterministic else 'sampled'} "
          f"actions, seed {out.seed}")
    width = max(map(len, out.metrics), default=0)
    for k, v in out.metrics.items():
        print(f"  {k:<{width}} {_fmt(v)}")
    if out.target is not None:
        mean = _fmt(out.metrics[M.EVAL_RETURN_MEAN])
        if out.agents > 1:
            print(f"target: {out.at_target} of {out.agents} agents meet the experiment's target return "
                  f"{_fmt(out.target)} on these episodes")
        elif out.at_target:
            print(f"target: meets the experiment's target return {_fmt(out.target)} ({M.EVAL_RETURN_MEAN} {mean})")
        else:
            print(f"target: below the experiment's target return {_fmt(out.target)} on these episodes "
                  f"({M.EVAL_RETURN_MEAN} {mean}); a trial stops at the first evaluation that reaches it")
    if out.film is not None:
        sys.stdout.flush()  # the scores are out before a renderer runs
        video = out.film()
        if isinstance(video, str):
            print(f"rlsweep: note: {video}", file=sys.stderr)
        else:
            print(f"video: {video.describe()}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """`rlsweep ui`: prints where the UI is and the links into it, then serves it until Ctrl-C."""
    from rlsweep.commands import ui
    from rlsweep.tracking.store import redact

    p = ui.plan(args.experiment, args.host, args.port, args.create)
    if p.port_error is not None:
        print(f"rlsweep: error: {p.port_error}", file=sys.stderr)
        return 1
    print(f"the store is a server already: open {redact(p.uri)}" if p.server else
          f"MLflow UI on {redact(p.uri)}: {p.base}  (Ctrl-C stops it)", flush=True)
    for line in p.links:
        print(line, flush=True)
    print("  (MLflow 3 opens an experiment in its GenAI view: the link above, or its 'Model training' switch, "
          "shows the runs table)", flush=True)
    return 0 if p.server else ui.serve(p)


def cmd_stack(args: argparse.Namespace) -> int:
    """`rlsweep stack`: the team stack's services started (up), listed (status), one restarted (restart) or
    all stopped (down)."""
    from rlsweep.commands import stack
    from rlsweep.stack import native

    directory = Path(args.dir)
    if args.action == "up":
        state = stack.up(Path(args.compose), directory, args.workers, args.cpus_per_node)
        print(f"the team stack is up (stop it with: rlsweep stack down --dir {args.dir}):")
    elif args.action == "restart":
        stack.restart(directory, args.service)
        return 0
    elif args.action == "status":
        state = native.read_state(directory.resolve())
        running = native.alive(state)
        for name in state["services"]:
            print(f"  {name:<12} {'running' if name in running else 'NOT RUNNING'}  (pid {state['services'][name]['pid']})")
        if len(running) < len(state["services"]):
            print(f"rlsweep: error: {len(state['services']) - len(running)} of the stack's services are not running "
                  f"(logs in {directory / 'logs'})", file=sys.stderr)
            return 1
    else:
        native.stop(directory)
        print("the team stack is stopped (its data stays in " f"{directory / 'volumes'})")
        return 0
    for line in stack.usage_lines(state):
        print(line)
    return 0


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "resume": cmd_resume, "best": cmd_best,
            "evaluate": cmd_evaluate, "ui": cmd_ui, "stack": cmd_stack}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one `rlsweep` command line: parses it, sets up the process (signals, verbosity, MLflow's
    and Ray's variables) and dispatches.

    Args:
        argv: the arguments (default: the process's own).

    Returns:
        The exit code: 0, 1 (the command failed), 2 (bad input: one line on stderr) or 130
        (interrupted).
    """
    timeline.mark("imported")
    args = _parser().parse_args(argv)
    interrupt_on_termination()
    verbosity.set_verbose(getattr(args, "verbose", False))
    if getattr(args, "address", None):  # ray.init() joins RAY_ADDRESS, and Ray's own tools read it too
        os.environ["RAY_ADDRESS"] = args.address
    if getattr(args, "wait_for_resources", False):
        os.environ["RLSWEEP_WAIT_FOR_RESOURCES"] = "1"  # ray_session.WAIT_ENV (importing it here would import Ray)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(verbosity.level()))  # not a line per migration
    if not verbosity.verbose():  # rlsweep's own lines only: no download progress bars (evaluate runs:/...)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # rlsweep prints its own links
    # rlsweep's writer retries failed MLflow calls itself (tracking.outage_s), without holding up
    # training: MLflow's own retries (7, about two minutes per call) would only block it
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if not os.environ.get("RAY_ADDRESS"):
        # a local Ray enables token authentication by default and warns about it on every start; asking
        # for it explicitly (before Ray is imported: it reads this once) keeps it on without the warning.
        # Joining a cluster follows the cluster's setting.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    elif os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        # Ray never turns token authentication on for an explicit address by itself: a token given is
        # one to use (the team stack's Ray asks for its RAY_AUTH_TOKEN)
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
    except OSError as e:  # a full disk where rlsweep or Tune writes, outside a trial (see tuning/full_disk.py)
        from rlsweep.tuning.full_disk import no_space

        if not no_space(str(e)):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"rlsweep: error: no space left on device{where}; what was written before is kept: free space, "
              "then run the command again", file=sys.stderr)
        return 1


def entry() -> None:
    """The console script: `main`, then a quick exit.

    Once Ray is shut down and the streams are flushed nothing is left to do, but the interpreter's
    teardown of what a sweep imports (Ray, MLflow, Optuna, scikit-learn, matplotlib) takes seconds.
    """
    code = main()
    timeline.mark("command_done")
    if "ray" in sys.modules:
        import ray

        if verbosity.verbose() and ray.is_initialized():
            # Ray forwards what its actors log from their log files, a moment later: with -v, the trial
            # actor's last lines (its final checkpoint) would otherwise be lost with the exit
            time.sleep(VERBOSE_LOG_DRAIN_S)
        ray.shutdown()
    timeline.mark("ray_shut_down")
    if "sqlalchemy" in sys.modules:  # (mlflow.db whole, without its write-ahead log beside it)
        from rlsweep.compat import close_sqlite_stores

        close_sqlite_stores()
    timeline.write()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
