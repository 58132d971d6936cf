"""The ``dpo-teach`` command (also ``python -m dpo_teach``).

    dpo-teach bandit [--out DIR] [--seed N] [--threads N]

prints the exact-optimum checks of the tabular bandit as a table, writes them to
``DIR/bandit_checks.csv`` and draws ``DIR/bandit.png``. It exits with status 1 if any check fails.

    dpo-teach sft --config FILE [--key value ...]
    dpo-teach dpo --config FILE [--key value ...]

train with ``dpo_teach.train`` (run them under ``accelerate launch`` for several processes);
``--help`` lists every option with its documentation and default.

    dpo-teach bench [--steps N] [--warmup N] [--batch-size N] [--threads N] [--rounds N] [--quick] [--out DIR]

times a DPO step of this trainer (online and precomputed reference) against a bare PyTorch step and,
when ``trl`` is installed, TRL's DPOTrainer, on the same tiny GPT-2 and batches (``dpo_teach.bench``).

    dpo-teach gpu-check [--size paper|tiny] [--device cuda|cpu] [--out DIR]

on a CUDA GPU, measures the bench at gpt2-large size in bf16, 50 DPO steps of the paper preset and sampling
(``dpo_teach.gpu_check``); without one it says so and exits 0.

    dpo-teach frontier [--preset tiny|gpt2|paper] [--out DIR] [--quick] [--replace] [--seeds K] [--dry-run]

runs the reward-KL frontier of the DPO paper (Fig. 2 left, ``dpo_teach.frontier``): SFT, preference
pairs, DPO at several beta, PPO with the ground-truth reward and with a reward model, Preferred-FT and
Unlikelihood, each evaluated every few steps. Writes ``DIR/results.csv`` and ``DIR/frontier.png`` and
prints a summary; an interrupted sweep continues where it stopped when run again. A directory holding a
sweep of other settings is refused, naming them, unless ``--replace`` is given. With ``--dry-run`` it runs
every stage at the preset's shapes for a step instead, measures each, and prints the GPU bill of the whole
sweep (``dpo_teach.frontier.dry_run``).

Every command prints the project's own errors (``dpo_teach.errors``: bad data, config or options, a
run directory it will not continue, a full disk) as one line saying what to change, and exits with 2
for a problem with the command or its input, 1 for one that arose while running; ``--debug`` shows the
traceback instead. Ctrl-C stops a training run after its current step, with a checkpoint, prints the
command that resumes it and exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import errno
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from dpo_teach import bandit, io, plots, verify
from dpo_teach.errors import DataError, DpoTeachError
from dpo_teach.machine import describe
from dpo_teach.train.config import DPOConfig, SFTConfig
from dpo_teach.train.options import add_config_arguments, config_from_arguments


def _bandit(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = io.make_directory(args.out, "--out")
    print(f"dpo-teach bandit: exact-optimum checks (seed {args.seed}, {args.threads} torch thread(s))\n")
    start = time.perf_counter()
    rows = verify.run_checks(seed=args.seed)
    print(verify.format_table(rows))

    largest = [row for row in rows if row.contexts == 100 and row.responses == 50 and row.iterations]
    slowest = max(row.seconds for row in largest if row.name.startswith("max|pi_DPO"))
    print(f"\nslowest DPO solve at C=100, K=50: {slowest:.3f} s (target < 1 s on one core)")

    table_path = out / "bandit_checks.csv"
    with table_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[field.name for field in dataclasses.fields(verify.Check)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)

    beta = 0.5
    pi_ref, reward = bandit.random_instance(100, 10, seed=args.seed)
    solved = bandit.solve(pi_ref, bandit.bradley_terry(reward), beta)
    figure = plots.bandit_figure(pi_ref, bandit.optimal_policy(pi_ref, reward, beta), solved.policy, beta)
    figure_path = out / "bandit.png"
    figure.savefig(figure_path, dpi=120)

    failed = [row for row in rows if not row.passed]
    print(f"wrote {table_path} and {figure_path}; total {time.perf_counter() - start:.1f} s")
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    # imported here so that `dpo-teach bandit` does not pay for importing transformers
    from accelerate import PartialState

    from dpo_teach.train.dpo import train_dpo
    from dpo_teach.train.sft import train_sft

    trainer = {"sft": train_sft, "dpo": train_dpo}[args.command]
    config = config_from_arguments(args.config_class, args)
    final = trainer(config)
    if PartialState().is_main_process:
        print(f"final model: {final}; metrics: {Path(config.output_dir) / 'metrics.jsonl'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    # imported here so that the other commands do not pay for it
    from dpo_teach import bench

    options = {name: getattr(args, name) for name in ("steps", "warmup", "batch_size", "threads", "rounds")}
    summary = bench.run_bench(bench.config_from_arguments(args.quick, **options), Path(args.out) if args.out else None)
    print(bench.format_report(summary))
    if args.out:
        print(f"\nwrote {Path(args.out) / 'bench.json'}")
    return 0


def _gpu_check(args: argparse.Namespace) -> int:
    # imported here so that the other commands do not pay for it
    from dpo_teach import gpu_check

    report = gpu_check.run_gpu_check(args.size, args.device, Path(args.out) if args.out else None)
    if report is not None:
        print(f"\n{gpu_check.format_report(report)}")
        if args.out:
            print(f"wrote {Path(args.out) / 'gpu_check.json'}")
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from dpo_teach.frontier.dry_run import run_dry_run
    from dpo_teach.frontier.dry_run_report import format_report
    from dpo_teach.frontier.presets import preset

    if args.quick:
        raise SystemExit("dpo-teach frontier: --dry-run runs the preset's own shapes; drop --quick")
    out = Path(args.out or f"runs/frontier-{args.preset}-dry-run")
    report = run_dry_run(preset(args.preset), out)
    print(f"\n{format_report(report)}\n\nwrote {out / 'dry_run.json'}")
    return 0


def _frontier(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    # imported here so that `dpo-teach bandit` does not pay for importing transformers
    from dpo_teach.frontier import processes, report, statistics
    from dpo_teach.frontier.presets import preset, quick
    from dpo_teach.frontier.results import summary_table
    from dpo_teach.frontier.stage import replacing
    from dpo_teach.frontier.sweep import run_frontier
    from dpo_teach.train.run import make_accelerator

    config = quick(preset(args.preset)) if args.quick else preset(args.preset)
    out = io.make_directory(args.out or f"runs/frontier-{args.preset}{'-quick' if args.quick else ''}", "--out")
    earlier = _earlier_runs(out / "run.json")  # read first: a run.json that cannot be kept stops nothing later
    started = time.perf_counter()
    accelerator = make_accelerator(config.mixed_precision)  # this command owns the processes: one accelerator
    with replacing() if args.replace else contextlib.nullcontext():
        rows = run_frontier(config, out, accelerator=accelerator, seeds=args.seeds)  # every process sweeps
    if accelerator.is_main_process:
        size = "quick" if args.quick else "full"
        figure = plots.frontier_figure(
            rows, statistics.envelopes(rows), title=f"reward-KL frontier, {args.preset} preset ({size} size)"
        )
        figure.savefig(out / "frontier.png", dpi=120)
        claims = statistics.paper_claims(out, rows)
        io.write_text_atomically(out / "claims.json", json.dumps(claims, indent=2) + "\n")
        seconds = time.perf_counter() - started
        facts = {"preset": args.preset, "size": size, "seeds": args.seeds, "seconds_this_invocation": round(seconds, 1)}
        facts |= {"processes": accelerator.num_processes, "machine": describe(torch.get_num_threads())}
        record = report.run_record(config, out, rows, **facts)
        if earlier is not None:  # the first invocation's facts stay; this one joins the reruns
            record |= {key: earlier[key] for key in facts if key in earlier}
            record["reruns"] = [*earlier.get("reruns", []), facts]
        io.write_text_atomically(out / "run.json", json.dumps(record, indent=2) + "\n")
        print(f"\n{summary_table(rows)}\n\n{statistics.format_claims(claims)}\n")
        print(f"wrote {out / 'results.csv'}, frontier.png, claims.json and run.json in {seconds:.0f} s")
    processes.wait_for_everyone()
    accelerator.end_training()
    return 0


def _earlier_runs(path: Path) -> dict | None:
    """The record of ``run.json`` (the first invocation that finished the sweep, and ``reruns``), or None."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise DataError(
            f"{path}: not JSON ({error}); move it away, since this run's record is appended to it"
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object (the record of earlier runs); move it away")
    return record


MAX_SEED = 2**63 - 1
"""Largest --seed of `dpo-teach bandit` (int64): its instances use seed + a few offsets, below torch's 2^64 limit."""


def _int_in(low: int, high: int | None):
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None), else a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every option documented in ``--help``."""
    parser = argparse.ArgumentParser(prog="dpo-teach", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bandit_parser = commands.add_parser(
        "bandit",
        help="check DPO, IPO and cDPO against their analytic optima on random tabular bandits",
        description="Solve the DPO loss family on random tabular bandits and check each solution against its "
        "analytic optimum (DPO: pi_ref exp(r / beta) / Z). Prints a table, writes a CSV and a figure.",
    )
    bandit_parser.add_argument("--out", default="runs/bandit", help="directory for the CSV and figure")
    bandit_parser.add_argument(
        "--seed", type=_int_in(0, MAX_SEED), default=0, help=f"seed of the random instances, 0 to {MAX_SEED} (int64)"
    )
    bandit_parser.add_argument(
        "--threads",
        type=_int_in(1, None),
        default=1,
        help="torch CPU threads (>= 1); the timing target is for one core",
    )
    bandit_parser.set_defaults(handler=_bandit)
    for name, config_class, summary in (
        ("sft", SFTConfig, "supervised fine-tuning: the causal-LM loss on completions or whole texts"),
        ("dpo", DPOConfig, "preference optimization with any loss of dpo_teach.losses (DPO by default)"),
    ):
        train_parser = commands.add_parser(
            name,
            help=summary,
            description=f"{summary}. Options come from a YAML --config file, overridden by --options. "
            "Run under `accelerate launch` for several processes or GPUs.",
        )
        add_config_arguments(train_parser, config_class)
        train_parser.set_defaults(handler=_train, config_class=config_class)
    bench_parser = commands.add_parser(
        "bench",
        help="ms per DPO step of this trainer vs a bare PyTorch step and TRL, on one tiny GPT-2",
        description="Time a DPO step of this trainer (online and precomputed reference), a bare PyTorch step and, "
        "when trl is installed, TRL's DPOTrainer, on the same tiny GPT-2, data and batches, each variant in its own "
        "process. Prints median ms/step, peak memory and their ratios with the machine; exits 0 when the bench ran, "
        "whether or not the timing targets are met.",
    )
    for option, default, text in (
        ("--steps", 20, "measured steps per variant and round, after the warm-up"),
        ("--warmup", 3, "steps dropped at the start of every process"),
        ("--batch-size", 8, "preference pairs per step"),
        ("--threads", 1, "torch CPU threads of every variant"),
        ("--rounds", 3, "rounds of all variants, their order rotated each round"),
    ):
        bench_parser.add_argument(option, type=int, default=None, help=f"{text} (default {default})")
    bench_parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (seconds per variant)")
    bench_parser.add_argument("--out", default=None, help="also write DIR/bench.json, with every step's time")
    bench_parser.set_defaults(handler=_bench)
    check_parser = commands.add_parser(
        "gpu-check",
        help="on a CUDA GPU: the bench at gpt2-large size in bf16, 50 DPO steps of the paper preset, sampling speed",
        description="Measure one CUDA GPU with the paper preset in a few minutes: the bench (this trainer vs a bare "
        "PyTorch step vs TRL) at gpt2-large's shape in bf16, 50 DPO steps of the paper preset on random-weight "
        "stand-ins (ms/step, tokens/s, MFU, peak memory) and one batch of sampling. Without a CUDA GPU it says so, "
        "measures nothing and exits 0.",
    )
    check_parser.add_argument("--size", default="paper", choices=["paper", "tiny"], help="paper (default) or tiny")
    check_parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"],
        help="cuda (default); cpu runs the same code on a machine without a GPU (with --size tiny: the tests)",
    )  # fmt: skip
    check_parser.add_argument("--out", default=None, help="also write OUT/gpu_check.json (metrics for scripts)")
    check_parser.set_defaults(handler=_gpu_check)
    frontier_parser = commands.add_parser(
        "frontier",
        help="the DPO paper's reward-KL frontier: DPO, PPO and the baselines on the sentiment task",
        description="Run the controlled-sentiment task's sweep (DPO paper Fig. 2 left): SFT, preference pairs, DPO "
        "at several beta, PPO with the ground-truth reward and with a reward model at several target KLs, "
        "Preferred-FT and Unlikelihood. Every run is evaluated (ground-truth reward and sequence KL on held-out "
        "prompts) every few steps. Writes OUT/results.csv and OUT/frontier.png; run it again to continue an "
        "interrupted sweep.",
    )
    frontier_parser.add_argument(
        "--preset", default="tiny", choices=["tiny", "gpt2", "paper"], help="task preset (default tiny: offline, CPU)"
    )
    frontier_parser.add_argument("--out", default=None, help="run directory (default runs/frontier-PRESET[-quick])")
    frontier_parser.add_argument(
        "--quick", action="store_true", help="shrink every size: the whole sweep in minutes, for CI and smoke tests"
    )
    frontier_parser.add_argument(
        "--seeds", type=_int_in(1, None), default=1,
        help="train every run with seeds 0..K-1 (results.csv's seed column; default 1)",
    )  # fmt: skip
    frontier_parser.add_argument(
        "--replace",
        action="store_true",
        help="recompute (deleting them) the stages of OUT that were made with other settings; without it such a "
        "directory is refused, naming the settings that differ, and nothing in it changes",
    )
    frontier_parser.add_argument(
        "--dry-run", action="store_true",
        help="run every stage at the preset's shapes for a step, each in its own process, measuring time, peak "
        "memory, FLOPs and disk, and print the GPU bill of the whole sweep (OUT/dry_run.json; default OUT "
        "runs/frontier-PRESET-dry-run)",
    )  # fmt: skip
    frontier_parser.set_defaults(handler=_frontier)
    for command_parser in commands.choices.values():
        command_parser.add_argument(
            "--debug", action="store_true", help="show the full traceback of an error instead of one line"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; returns the exit status.

    The project's own errors are printed as one line on stderr and give their ``exit_code`` (2: the command or its
    input, 1: a failure while running), a full disk anywhere gives 1, Ctrl-C gives 130 with the command that
    resumes; ``--debug`` raises them with their traceback instead. Anything else is a bug and keeps its traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.handler(args)
    resume = f"to resume, run the same command again: {shlex.join(['dpo-teach', *argv])}"
    warnings.formatwarning = _one_line_warning
    try:
        return args.handler(args)
    except DpoTeachError as error:
        print(f"dpo-teach {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"dpo-teach {args.command}: error: disk full writing {error.filename}; free space, {resume}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as error:
        stopped = str(error) or "interrupted; finished checkpoints, stages and evaluations are kept"
        print(f"\ndpo-teach {args.command}: {stopped}; {resume}", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = _python_format


_python_format = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """dpo-teach's own warnings as one line, without the source line; others as Python formats them."""
    if "dpo_teach" in Path(filename).parts:
        return f"warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)
