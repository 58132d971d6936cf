"""The sweep behind ``dpo-teach frontier``: train every method, evaluate its checkpoints, write the table.

    SFT policy (step 0 of every method) -> for each run of ``sweep_methods(config)``:
        train to step e, evaluate, train on to step 2e, evaluate, ... up to the trainer's max_steps
    -> RUN/results.csv (one row per evaluated checkpoint) -> frontier.png (``dpo_teach.plots``)

Each run is a stage (``dpo_teach.frontier.stage``) keyed on its trainer's config, the upstream stages
it uses and the evaluation settings. Training stops at every evaluation step and continues from the
checkpoint written there (resuming is exact, see ``dpo_teach.train.checkpoint``), so a sweep killed at
any moment loses at most the work since the last checkpoint, and a finished evaluation is never redone.

Under ``accelerate launch --num_processes N`` every process runs this whole sweep: it trains with the
others and evaluates every checkpoint like them; the main process alone writes the rows, the samples and
results.csv and prints, and every process returns the rows read back from the files
(``dpo_teach.frontier.processes``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from dpo_teach.config import TaskConfig
from dpo_teach.frontier import processes
from dpo_teach.frontier.methods import Method, eval_every, sweep_methods, trainer
from dpo_teach.frontier.results import append_row, read_rows, write_results
from dpo_teach.frontier.stage import Stage
from dpo_teach.frontier.task import SentimentTask
from dpo_teach.sentiment.evaluate import Evaluation

EVALUATIONS = "evaluations.jsonl"


def evaluation_steps(max_steps: int, eval_every: int) -> list[int]:
    """Steps at which a run is evaluated: every ``eval_every`` steps and at ``max_steps``."""
    if eval_every <= 0:
        raise ValueError(f"frontier_eval_every / ppo_eval_every: must be > 0, got {eval_every}")
    return sorted({*range(eval_every, max_steps + 1, eval_every), max_steps})


def _row(method: Method, step: int, evaluation: Evaluation) -> dict:
    return {
        "method": method.method, "parameter": method.parameter, "value": method.value, "run": method.run,
        "step": step, "reward": evaluation.mean_reward, "reward_sem": evaluation.reward_sem, "kl": evaluation.kl,
        "kl_sem": evaluation.kl_sem, "kl_log_ratio": evaluation.kl_log_ratio,
        "kl_log_ratio_sem": evaluation.kl_log_ratio_sem, "samples": evaluation.num_samples,
    }  # fmt: skip


def _evaluate_into(task: SentimentTask, stage: Stage, method: Method, step: int, policy_dir: Path) -> dict:
    """Evaluate ``policy_dir``; append its row to the stage's evaluations and keep its samples beside them.

    Every process evaluates; the main one writes, and every process returns the row as written."""
    evaluation = task.evaluate(policy_dir)
    evaluations = stage.directory / EVALUATIONS
    if processes.is_main_process():
        samples = stage.directory / "samples" / f"step-{step:08d}.jsonl"
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.write_text("".join(json.dumps(sample) + "\n" for sample in evaluation.samples))
        row = _row(method, step, evaluation)
        append_row(evaluations, row)
        print(f"  {method.run} step {step}: reward {row['reward']:.3f}, KL {row['kl']:.2f} nats", flush=True)
    processes.wait_for_everyone()
    return read_rows(evaluations)[-1]


def evaluate_reference(task: SentimentTask) -> list[dict]:
    """The SFT policy's row (step 0, KL 0 up to sampling noise): where every method starts."""
    method = Method("sft")
    stage = Stage(task.run_dir / "sft-evaluation", {"sft": task.sft_id(), "evaluation": task.evaluation_inputs()})
    if not stage.done:
        stage.start()
        _evaluate_into(task, stage, method, 0, task.sft_policy())
        stage.finish()
    return read_rows(stage.directory / EVALUATIONS)


def run_method(task: SentimentTask, method: Method) -> list[dict]:
    """Train ``method`` to each of its evaluation steps in turn and evaluate it there; returns its rows."""
    config, train = trainer(task, method)
    steps = evaluation_steps(config.max_steps, eval_every(task.config, method))
    inputs = {"upstream": task.upstream_ids(method.method), "evaluation": task.evaluation_inputs(), "steps": steps}
    inputs["trainer"] = {key: value for key, value in dataclasses.asdict(config).items() if key != "progress_bar"}
    stage = Stage(task.run_dir / method.run, inputs)
    if stage.done:
        return read_rows(stage.directory / EVALUATIONS)
    stage.start()
    rows = read_rows(stage.directory / EVALUATIONS)
    evaluated = {row["step"] for row in rows}
    for step in steps:
        if step in evaluated:
            continue
        policy_dir = train(dataclasses.replace(config, max_steps=step, output_dir=str(stage.directory / "train")))
        rows.append(_evaluate_into(task, stage, method, step, policy_dir))
    stage.finish()
    return rows


def run_frontier(config: TaskConfig, out: str | Path, progress_bar: bool = True) -> list[dict]:
    """Run the whole sweep of ``config`` in ``out`` (reusing what is there); returns the rows of results.csv.

    Under ``accelerate launch`` every process calls this and gets the same rows; the main process writes the file.
    """
    out = Path(out)
    task = SentimentTask(config, out, progress_bar)
    methods = sweep_methods(config)
    started = time.perf_counter()
    processes.print_main(
        f"frontier: preset {config.preset}, {len(methods)} runs, evaluated every {config.frontier_eval_every} steps "
        f"(PPO: every {config.ppo_eval_every} rollouts), {processes.state().num_processes} process(es)"
    )
    rows = evaluate_reference(task)
    for index, method in enumerate(methods, start=1):
        processes.print_main(f"[{index}/{len(methods)}] {method.run} ({time.perf_counter() - started:.0f} s so far)")
        rows += run_method(task, method)
        if processes.is_main_process():
            write_results(rows, out / "results.csv")
    if processes.is_main_process():
        write_results(rows, out / "results.csv")
    return rows
