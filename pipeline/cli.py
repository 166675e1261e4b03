"""The `gft` command line."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def _cmd_build_default(args: argparse.Namespace) -> int:
    from pipeline.core.shapes import SHAPES
    from pipeline.embedded import build_embedded_assets

    assets = build_embedded_assets(args.out, shape=SHAPES.get(args.shape))
    model = f"a base model of {args.shape}'s shape (random weights)" if args.shape else "tiny base model"
    print(f"embedded task, tokenizer and {model} written to {assets.root}")
    for name, path in {**assets.data_files, "base_model": assets.base_model}.items():
        print(f"  {name:<10} {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.driver.run import run, summary
    from pipeline.recipe.config import load_recipe

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.resume is None:
        config = load_recipe(args.recipe, overrides)
        result = run(config, verbose=args.verbose)
    else:
        run_dir, point, config = _resume_target(args.resume, args.recipe, overrides)
        if (run_dir / "eval.json").exists() and point is None:
            print(f"{run_dir} has finished (eval.json is there); nothing to resume")
            return 0
        result = run(config, run_dir=run_dir, resume=True, resume_point=point, verbose=args.verbose)
    print(summary(result, config.eval.pass_k))
    return 0


def _resume_target(resume: Path, recipe: str | None, overrides: list[str]):
    """(run folder, the resume point named or None, its recipe with ``overrides``) of ``--resume``."""
    from pipeline.core.errors import ConfigError
    from pipeline.core.resume import is_point, run_dir_of

    point = resume if is_point(resume) else None
    run_dir = run_dir_of(point) if point else resume
    if recipe:
        raise ConfigError(f"--resume continues the recipe saved in {run_dir}; give no recipe file")
    return run_dir, point, _resumed_config(run_dir, overrides)


def _resumed_config(run_dir: Path, overrides: list[str]):
    """The recipe a run was started with (``RUN_DIR/config.yaml``), plus ``overrides`` (say, a
    lower learning rate after a stop). The stages must stay the same ones, in the same order."""
    from pipeline.core.errors import ConfigError
    from pipeline.recipe.config import load_recipe

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a run folder?")
    before = load_recipe(saved)
    config = load_recipe(saved, overrides)
    if [(s.name, s.algorithm) for s in config.stages] != [(s.name, s.algorithm) for s in before.stages]:
        raise ConfigError("--resume: overrides may not add, remove or reorder stages")
    return config


def _eval_config(args: argparse.Namespace):
    """The RunConfig of an eval-only job: the checkpoint as the policy, benchmarks as eval sets."""
    from pipeline.core.errors import ConfigError
    from pipeline.driver.rollout_env import check_rollout_environment
    from pipeline.eval.benchmarks import BENCHMARKS
    from pipeline.recipe.config import RunConfig, validate

    config = RunConfig(name="eval", seed=args.seed)
    config.model.path, config.model.dtype = str(args.checkpoint), args.dtype
    names = [b for b in (args.benchmarks or "").split(",") if b]
    unknown = [b for b in names if b not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"--benchmarks: unknown {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    eval_files = {name: str(args.benchmark_dir / f"{name}.jsonl") for name in names}
    for entry in args.eval_file:
        name, _, path = entry.partition("=")
        if not name or not path:
            raise ConfigError(f"--eval-file: expected NAME=PATH, got {entry!r}")
        eval_files[name] = path
    if not eval_files:
        raise ConfigError("nothing to evaluate: give --benchmarks and/or --eval-file")
    config.data.eval_files, config.data.max_prompt_length = eval_files, args.max_prompt_length
    config.eval.splits, config.eval.max_prompts = list(eval_files), args.max_prompts
    config.eval.pass_k, config.eval.max_new_tokens = args.k, args.max_new_tokens
    config.rollout.backend, config.rollout.num_workers = args.backend, args.num_workers
    config.rollout.python = args.rollout_python
    config.rollout.temperature = args.temperature
    config.reward.function, config.reward.timeout_s = args.reward_function, args.reward_timeout
    if args.extraction:
        config.reward.extraction = args.extraction
    config.ray.address = args.address
    validate(config, training=False)
    check_rollout_environment(config)  # before the output folder is made
    return config


def _cmd_eval(args: argparse.Namespace) -> int:
    import time

    from pipeline.driver.evals import eval_summary, evaluate_checkpoint

    config = _eval_config(args)
    out = args.out or Path("runs") / "eval" / f"{args.checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = evaluate_checkpoint(config, out, verbose=args.verbose)
    except KeyboardInterrupt:  # nothing to finish: an eval is kept whole or not at all
        print(f"\ngft: interrupted: the eval stopped unfinished; {out} holds no results", file=sys.stderr)
        return 128 + signal.SIGINT
    print(eval_summary(results, config.eval.pass_k, out))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from pipeline.core.files import write_json_lines
    from pipeline.eval.rescore import format_summary, rescore
    from pipeline.rewards.verifiers import DEFAULT_EXTRACTION

    if args.reward_function and args.extraction:
        from pipeline.core.errors import ConfigError

        raise ConfigError("--extraction applies to the built-in verifiers; a --reward-function file finds answers its "
                          "own way")
    report = rescore(args.file, args.reward_function, args.timeout, args.workers, args.data_source,
                     args.extraction or DEFAULT_EXTRACTION)
    out = args.out or args.file.with_name(f"{args.file.stem}.scored.jsonl")
    write_json_lines(report.rows, out)
    print(format_summary(report.summary))
    if report.failures or report.timeouts:
        print(f"{report.failures} reward calls failed and {report.timeouts} timed out; they scored 0")
    print(f"scored rows: {out}")
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from pipeline.tools.dataprep import convert_gsm8k

    rows = convert_gsm8k(args.source, args.out, args.split)
    print(f"{rows} rows written to {args.out}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from pipeline.tools.dataprep import check_dataset, format_report

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    found = False
    for path in args.files:
        report = check_dataset(path, tokenizer, args.max_prompt_length if tokenizer else None, args.reward_fn_key)
        print(format_report(report, path))
        found |= bool(report.problems)
    return 1 if found else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import math
    import shlex

    from pipeline.core.errors import ConfigError, StopRequested
    from pipeline.driver import run as run_module
    from pipeline.recipe.config import load_recipe
    from pipeline.tools.compare import (
        STAGE_ONE_PIPELINES,
        SweepSettings,
        choose_lrs,
        execute,
        plan,
        seeds_per_pipeline,
        shared_inputs,
    )
    from pipeline.tools.report import Run, write_report

    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    recipe = load_recipe(args.recipe, overrides)
    seeds = seeds_per_pipeline(args.pipelines, recipe.seed, args.seeds)
    cache = args.out.resolve() / "runs"  # absolute, so the cache keys do not depend on the working directory
    try:
        sweep_lrs = sorted({float(lr) for lr in args.sweep_lr.split(",")}) if args.sweep_lr else []
    except ValueError:
        sweep_lrs = [math.nan]
    if not all(math.isfinite(lr) and lr > 0 for lr in sweep_lrs):
        raise ConfigError(f"--sweep-lr: expected comma-separated learning rates > 0, got {args.sweep_lr!r}")
    try:
        fractions = sorted({float(f) for f in args.data_fractions.split(",")}) if args.data_fractions else []
    except ValueError:
        fractions = [math.nan]
    if not all(0 < f <= 1 for f in fractions):
        raise ConfigError(f"--data-fractions: expected comma-separated shares in (0, 1], got {args.data_fractions!r}")
    if fractions and not any(name in STAGE_ONE_PIPELINES for name in seeds):
        raise ConfigError(f"--data-fractions: none of the pipelines {', '.join(seeds)} has a stage 1 to run on a "
                          f"share of the prompts; those that have: {', '.join(STAGE_ONE_PIPELINES)}")
    if args.eval_every < 0 or (sweep_lrs and args.val_prompts < 1):
        raise ConfigError("--eval-every must be >= 0 and --val-prompts >= 1")
    sweep = SweepSettings(args.sweep_seeds, args.sweep_extensions)
    if sweep_lrs and (sweep.seeds < 1 or sweep.extensions < 0):
        raise ConfigError("--sweep-seeds must be >= 1 and --sweep-extensions >= 0")
    shared = sorted(set(sweep.seed_list) & {s for wanted in seeds.values() for s in wanted})
    if sweep_lrs and shared:
        raise ConfigError(f"seeds {shared} are both sweep seeds (from {sweep.seed_list[0]}) and evaluation seeds: "
                          "a rate must not be chosen on the runs that evaluate it")
    inputs = shared_inputs(recipe, cache, args.val_prompts if sweep_lrs else 0)

    def run(config, **settings):
        try:
            return run_module.run(config, verbose=args.verbose, **settings)
        except StopRequested as err:  # Ctrl-C or SIGTERM: the comparison goes on, not only the run
            raise StopRequested(f"{err}\nOr run this comparison again; it reuses every run it finished and resumes "
                                f"this one: gft {shlex.join(args.argv)}", err.signum) from None

    choices = None
    if sweep_lrs:
        choices = choose_lrs(recipe, list(seeds), sweep_lrs, sweep, cache, inputs, run)
    lrs = {name: choice.lr for name, choice in choices.items()} if choices else None
    experiment = plan(recipe, seeds, args.eval_every, cache, inputs, lrs, tuple(f for f in fractions if f < 1))
    folders = execute(experiment, cache, run)
    runs = [Run.load(pipeline, seed, folder) for (pipeline, seed), folder in folders.items()]
    split = args.split or recipe.eval.splits[0]
    report = write_report(runs, args.out / "report", split, recipe.eval.pass_k, "gft " + shlex.join(args.argv),
                          choices)
    print(report.read_text().split("## The paper's direction")[0].strip())
    print(f"\nreport: {report} (and report.html beside it)")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.recipe.config import load_recipe
    from pipeline.tools.plan import format_plan, model_shape, plan

    config = load_recipe(args.recipe, args.overrides, check_paths=False)
    shape = model_shape(config, args.shape)
    result = plan(config, shape, args.gpus, args.gpu_memory)
    print(format_plan(result, shape))
    return 0 if result.fits else 1


def _plan_before_submitting(config, args: argparse.Namespace) -> None:
    """A recipe that asks for GPUs is planned (``gft plan``) on the GPUs ``--gpus`` and
    ``--gpu-memory`` name, and refused, with nothing submitted, if it cannot fit."""
    from pipeline.core.errors import ConfigError
    from pipeline.tools.plan import model_shape, plan

    if config.learner.num_gpus + config.rollout.num_gpus + config.teacher.num_gpus == 0:
        return
    if args.gpu_memory is None:
        print("gft: note: the recipe's memory was not planned: give --gpus and --gpu-memory to have it checked "
              "before it is submitted", file=sys.stderr)
        return
    result = plan(config, model_shape(config, args.shape), args.gpus, args.gpu_memory)
    if not result.fits:
        raise ConfigError(f"the recipe does not fit {result.gpus:g} GPUs of {args.gpu_memory:g} GiB, nothing was "
                          f"submitted: {'; '.join(result.problems())} (`gft plan` shows every term)")


def _cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.recipe.config import load_recipe
    from pipeline.tools.submit import follow, submit, submitted_recipe

    if args.resume is None:
        config = load_recipe(args.recipe, args.overrides)  # a bad recipe is refused here, before any upload
        output_dir = submitted_recipe(config)["output_dir"]
    else:  # the run folder must be where this machine and the cluster both see it
        run_dir, point, config = _resume_target(args.resume, args.recipe, args.overrides)
        if (run_dir / "eval.json").exists() and point is None:
            print(f"{run_dir} has finished (eval.json is there); nothing to resume")
            return 0
        output_dir = run_dir.resolve()
    _plan_before_submitting(config, args)
    job_id = submit(config, args.address, args.job_id, args.python, args.resume, args.overrides, args.stop_grace)
    print(f"gft: note: the job writes its run folder under {output_dir} on the cluster; that must be storage "
          "the cluster keeps and you can read (its working dir is deleted when the job ends)", file=sys.stderr)
    where = f"--address {args.address}"
    print(f"submitted job {job_id} to {args.address}\n"
          f"  status: gft status {job_id} {where}\n"
          f"  logs:   gft logs {job_id} {where} --follow\n"
          f"  stop:   gft stop {job_id} {where}")
    if args.no_wait:
        return 0
    print("following its logs; Ctrl-C stops following, not the job", flush=True)
    try:
        state, message = follow(args.address, job_id, sys.stdout)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} goes on", file=sys.stderr)
        return 130
    print(f"job {job_id}: {state}" + (f" ({message})" if message else ""))
    return 0 if state == "SUCCEEDED" else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.tools.submit import status

    state, message = status(args.address, args.job)
    print(f"{args.job}: {state}" + (f"\n{message}" if message else ""))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from pipeline.tools.submit import follow, logs

    if args.follow:
        follow(args.address, args.job, sys.stdout)
    else:
        print(logs(args.address, args.job), end="")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from pipeline.tools.submit import stop

    state, message = stop(args.address, args.job, args.timeout)
    print(f"{args.job}: {state}" + (f"\n{message}" if message else ""))
    return 0


def _add_compare_parser(commands, described: bool) -> None:
    """``described``: with its options, which name the pipelines. Naming them imports the training
    code (seconds), which only ``gft compare`` needs: ``gft status`` and its like answer without."""
    parser = commands.add_parser("compare", help="RL compatibility: GRPO from several initialisations, over seeds")
    parser.set_defaults(handler=_cmd_compare)
    if not described:
        return
    from pipeline.tools.compare import DEFAULT_PIPELINES, PIPELINES, SWEEP_FIRST_SEED

    parser.add_argument("recipe", nargs="?", help="recipe ending in stage 1 then grpo (default: the embedded default)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides of the recipe")
    parser.add_argument("--pipelines", default=",".join(DEFAULT_PIPELINES),
                        help=f"comma-separated, of {', '.join(PIPELINES)}; NAME:N gives that pipeline N seeds "
                             "instead of --seeds (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per pipeline (default: %(default)s)")
    parser.add_argument("--sweep-lr", metavar="LR,LR,...",
                        help="give each method the stage-1 (CHORD: its stage's) learning rate, of these (and of "
                             "those added beyond an edge where the best lies there), whose pipeline scores best on "
                             "val after GRPO, then run it")
    parser.add_argument("--sweep-seeds", type=int, default=2,
                        help=f"seeds per rate of the sweep, from {SWEEP_FIRST_SEED} (default: %(default)s)")
    parser.add_argument("--sweep-extensions", type=int, default=2,
                        help="rates added at most beyond each edge of the grid, each 4x past it, while the best "
                             "rate lies at that edge (default: %(default)s)")
    parser.add_argument("--val-prompts", type=int, default=512,
                        help="size of the val split --sweep-lr chooses on, sharing no problem with training: "
                             "the embedded task's held-out problems, or distinct training prompts held out "
                             "(default: %(default)s; a recipe's eval set named val is used instead)")
    parser.add_argument("--data-fractions", metavar="F,F,...",
                        help="data efficiency: also run each pipeline that has a stage 1 with it on these shares "
                             "of the distinct training prompts (the same steps), e.g. 0.25,0.5,1 (1: the main runs)")
    parser.add_argument("--eval-every", type=int, default=25, help="held-out eval every N steps of each stage")
    parser.add_argument("--split", help="eval split the report is about (default: the first of eval.splits)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"),
                        help="cache of finished runs (OUT/runs) and the report (OUT/report)")
    parser.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    _add_verbose_option(parser)


def _add_job_parsers(commands) -> None:
    from pipeline.tools.submit import DEFAULT_ADDRESS, STOP_GRACE_S, STOP_TIMEOUT_S, default_address

    address = {"default": default_address(),
               "help": f"the Ray head's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS, else {DEFAULT_ADDRESS})"}
    submit = commands.add_parser("submit", help="run a recipe on a Ray cluster as a job (Ray's Jobs API)")
    submit.add_argument("recipe", nargs="?", help="recipe YAML; omitted: the embedded default")
    submit.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. output_dir=/shared/runs")
    submit.add_argument("--address", **address)
    submit.add_argument("--job-id", help="the job's id (default: one Ray makes up); ids cannot be reused")
    submit.add_argument("--no-wait", action="store_true",
                        help="return once submitted; otherwise follow its logs and exit 0 only if it succeeds")
    submit.add_argument("--python", default="python",
                        help="the cluster's interpreter with this project's dependencies (default: python on "
                             "the PATH the head's `ray start` ran with); an absolute path where that is another")
    submit.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue a stopped or killed run (its folder on storage the cluster shares) as a job; "
                             "overrides apply to its saved recipe, as with gft run --resume")
    submit.add_argument("--gpus", type=int,
                        help="GPUs of the cluster the job may use, for the plan (default: as many as the recipe asks)")
    submit.add_argument("--gpu-memory", type=float, metavar="GIB",
                        help="memory of each GPU: a recipe that asks for GPUs is planned and refused if it cannot "
                             "fit (gft plan)")
    submit.add_argument("--shape", help="the model's shape for the plan, where model.path is not on this machine")
    submit.add_argument("--stop-grace", type=int, default=STOP_GRACE_S, metavar="S",
                        help="seconds `gft stop` lets the run finish its step and write a resume point before Ray "
                             "kills it (default: %(default)s)")
    submit.set_defaults(handler=_cmd_submit)
    for name, text, handler in [("status", "a submitted job's status and message", _cmd_status),
                                ("logs", "a submitted job's output", _cmd_logs),
                                ("stop", "stop a submitted job and print its new status", _cmd_stop)]:
        parser = commands.add_parser(name, help=text)
        parser.add_argument("job", help="the job id gft submit printed")
        parser.add_argument("--address", **address)
        if name == "logs":
            parser.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        if name == "stop":
            parser.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, metavar="S",
                                help="seconds to wait for the job to end (default: %(default)s)")
        parser.set_defaults(handler=handler)


def _add_eval_parser(commands) -> None:
    parser = commands.add_parser("eval", help="greedy accuracy and pass@k of a checkpoint on math benchmarks")
    parser.add_argument("checkpoint", type=Path, help="a Hugging Face model folder (e.g. RUN/checkpoints/gft)")
    parser.add_argument("--benchmarks", help="comma-separated, e.g. math_oai,amc23,aime24")
    parser.add_argument("--benchmark-dir", type=Path, default=Path("../shared/data/math_eval"),
                        help="folder of the benchmark .jsonl files (default: %(default)s)")
    parser.add_argument("--eval-file", action="append", default=[], metavar="NAME=PATH",
                        help="also evaluate a verl-layout parquet (repeatable)")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt for pass@k (default: 4)")
    parser.add_argument("--max-prompts", type=int, help="first N prompts of each benchmark (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--max-prompt-length", type=int, default=1024, help="longer prompts are skipped and listed")
    parser.add_argument("--temperature", type=float, default=1.0, help="for the pass@k samples")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--rollout-python", help="the rollout workers' interpreter (default: .venv-vllm's for vllm)")
    parser.add_argument("--num-workers", type=int, default=1, help="rollout workers")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--reward-function", help="a .py file with verl's compute_score (default: built-in)")
    parser.add_argument("--reward-timeout", type=float, default=10.0, help="seconds per reward call")
    _add_extraction_option(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/eval/CHECKPOINT-TIME)")
    parser.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    _add_verbose_option(parser)
    parser.set_defaults(handler=_cmd_eval)


def _add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="the roles' processes (vLLM, Ray, torch) write to this terminal, not to the run folder's "
                             "logs/")


def _add_extraction_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extraction", choices=["strict", "lenient"],
                        help="built-in verifier: strict (\\boxed{} or ####; the default) or lenient (then 'the answer "
                             "is', the last number)")


def _add_score_parser(commands) -> None:
    parser = commands.add_parser("score", help="re-score saved generations (.jsonl or .parquet) without a model")
    parser.add_argument("file", type=Path, help="rows with response and ground_truth (and data_source)")
    parser.add_argument("--reward-function", help="a .py file with verl's compute_score (default: built-in)")
    parser.add_argument("--data-source", default="math", help="for rows without one (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per reward call")
    _add_extraction_option(parser)
    parser.add_argument("--workers", type=int, default=1, help="scoring processes")
    parser.add_argument("--out", type=Path, help="scored JSON lines (default: FILE.scored.jsonl)")
    parser.set_defaults(handler=_cmd_score)


def _add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="prepare and check datasets").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    convert = data.add_parser("convert", help="raw GSM8K parquet -> verl-layout parquet, expert solutions included")
    convert.add_argument("source", type=Path, help="e.g. ../shared/data/gsm8k/train.parquet")
    convert.add_argument("--out", type=Path, required=True, help="verl-layout parquet to write")
    convert.add_argument("--split", help="split name stored in extra_info (default: the file name)")
    convert.set_defaults(handler=_cmd_data_convert)
    check = data.add_parser("check", help="validate verl-layout parquet files before a run; count their candidates")
    check.add_argument("files", type=Path, nargs="+")
    check.add_argument("--tokenizer", help="model folder; enables the prompt length check")
    check.add_argument("--max-prompt-length", type=int, default=1024)
    check.add_argument("--reward-fn-key", default="data_source",
                       help="the column of the reward's data_source (data.reward_fn_key; default: %(default)s)")
    check.set_defaults(handler=_cmd_data_check)


def _shape_names() -> list[str]:
    from pipeline.core.shapes import SHAPES

    return list(SHAPES)


def _add_plan_parser(commands) -> None:
    parser = commands.add_parser("plan", help="the memory a recipe needs per GPU, by role and term, and whether it fits")
    parser.add_argument("recipe", nargs="?", help="recipe YAML; omitted: the embedded default")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides of the recipe")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the job may use")
    parser.add_argument("--gpu-memory", type=float, required=True, metavar="GIB", help="memory of each GPU, GiB")
    parser.add_argument("--shape", help=f"the model's shape by name, where model.path is not on this machine: "
                                        f"{', '.join(_shape_names())} (default: model.path's config.json)")
    parser.set_defaults(handler=_cmd_plan)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; ``command``, the one to be run, is described in full (None: all)."""
    parser = argparse.ArgumentParser(
        prog="gft",
        description="Group Fine-Tuning then GRPO post-training on Ray (arXiv 2604.14258).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a recipe's stages (default: the embedded miniature)")
    run.add_argument("recipe", nargs="?", help="recipe YAML; omitted: the embedded default")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. stages.gft.lr=1e-6")
    run.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue a killed or stopped run from its latest resume point, or from the "
                          "point RUN_DIR/checkpoints/resume/step-... given instead")
    _add_verbose_option(run)
    run.set_defaults(handler=_cmd_run)

    build = commands.add_parser(
        "build-default", help="write the embedded task (parquet), tokenizer and tiny Qwen2 base model"
    )
    build.add_argument("--out", type=Path, default=Path("runs/embedded"), help="output folder")
    build.add_argument("--shape", choices=_shape_names(),
                       help="a base model of this real model's shape with random weights instead of the tiny one")
    build.set_defaults(handler=_cmd_build_default)
    _add_compare_parser(commands, described=command in (None, "compare"))
    _add_eval_parser(commands)
    _add_score_parser(commands)
    _add_data_parser(commands)
    _add_job_parsers(commands)
    _add_plan_parser(commands)
    return parser


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except OSError:  # a name too long to be a file's
        return False


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.errors import ConfigError, DataError, RoleFailed, StopRequested, TrainingStopped
    from pipeline.rewards.guard import RewardFunctionError
    from pipeline.tools.submit import JobError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    args.argv = argv
    # a recipe path and key=value overrides share the positional slots
    recipe = getattr(args, "recipe", None)
    if recipe and "=" in recipe and not _is_file(recipe):
        args.recipe, args.overrides = None, [recipe, *args.overrides]
    try:
        return args.handler(args)
    except (ConfigError, DataError, RewardFunctionError, JobError) as err:  # the user's input: fix and rerun
        print(f"gft: error: {err}", file=sys.stderr)
        return 2
    except StopRequested as err:  # SIGTERM or SIGINT, handled: 128 + its number, as a shell reports it
        print(f"gft: stopped: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt as err:
        stop = _stop_under_way(err)
        if stop is not None:  # a second signal while the first's stop ended the run: its resume point is written
            print(f"gft: stopped: {stop}", file=sys.stderr)
            return 128 + stop.signum
        print("\ngft: interrupted", file=sys.stderr)  # Ctrl-C outside a run's steps (starting up, an eval)
        return 128 + signal.SIGINT
    except (TrainingStopped, RoleFailed) as err:  # the run stopped; its last resume point is kept
        print(f"gft: stopped: {err}", file=sys.stderr)
        return 3


def _stop_under_way(err: BaseException) -> BaseException | None:
    """The stop that ``err`` interrupted on its way out, if any: a second Ctrl-C that lands while a
    stop closes the roles and the metric backends (seconds, on a loaded machine) replaces it."""
    from pipeline.core.errors import StopRequested

    while err is not None and not isinstance(err, StopRequested):
        err = err.__context__
    return err


def program() -> None:
    """``gft`` as a program: :func:`main`, then exit with its code. Ray's exit handlers (its
    ``ray.shutdown``) run after main returns; a Ctrl-C pressed meanwhile, once a stop has been
    reported, would only turn them into a traceback, so it is ignored from there on."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    program()
