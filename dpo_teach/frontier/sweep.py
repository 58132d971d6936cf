"""The sweep behind ``dpo-teach frontier``: train every method, evaluate its checkpoints, write the table.

    SFT policy (step 0 of every method) -> for each run of ``sweep_methods(config)``:
        train, evaluating the policy at steps e, 2e, ... and at the trainer's max_steps
    -> RUN/results.csv (one row per evaluated checkpoint) -> frontier.png (``dpo_teach.plots``)

Each run is a stage (``dpo_teach.frontier.stage``) keyed on its trainer's config, the upstream stages
it uses and the evaluation settings. The evaluation is a callback of the trainer's run
(``dpo_teach.train.run``): the trainer calls it after every step and it evaluates the policy in memory at
the run's evaluation steps, before the checkpoint written there. A sweep killed at any moment resumes from
the last checkpoint (resuming is exact, see ``dpo_teach.train.checkpoint``), and a finished evaluation is
never redone.

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

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from dpo_teach import io
from dpo_teach.frontier import processes
from dpo_teach.frontier.methods import Method, eval_every, sweep_methods, trainer
from dpo_teach.frontier.presets import TaskConfig
from dpo_teach.frontier.results import append_row, read_rows, write_results
from dpo_teach.frontier.stage import Stage
from dpo_teach.frontier.task import SentimentTask
from dpo_teach.sentiment.evaluate import Evaluation, best_of_n

EVALUATIONS = "evaluations.jsonl"
BEST_OF_N = "best-of-n"


def evaluation_steps(max_steps: int, eval_every: int) -> list[int]:
    """Steps at which a run is evaluated: every ``eval_every`` steps and at ``max_steps``."""
    if eval_every <= 0:
        raise ValueError(f"frontier_eval_every / ppo_eval_every: must be > 0, got {eval_every}")
    return sorted({*range(eval_every, max_steps + 1, eval_every), max_steps})


def _row(method: Method, step: int, evaluation: Evaluation) -> dict:
    return {
        "method": method.method, "parameter": method.parameter, "value": method.value, "seed": method.seed,
        "run": method.run, "step": step, "reward": evaluation.mean_reward, "reward_sem": evaluation.reward_sem,
        "kl": evaluation.kl, "kl_sem": evaluation.kl_sem, "kl_log_ratio": evaluation.kl_log_ratio,
        "kl_log_ratio_sem": evaluation.kl_log_ratio_sem, "samples": evaluation.num_samples,
    }  # fmt: skip


def _evaluate_into(
    task: SentimentTask, stage: Stage, method: Method, step: int, policy: Path | torch.nn.Module
) -> dict:
    """Evaluate ``policy`` (a saved directory or a model); append its row to the stage's evaluations and keep its
    samples beside them. Every process evaluates; the main one writes, and every process returns the row as written."""
    evaluation = task.evaluate(policy)
    evaluations = stage.directory / EVALUATIONS
    if processes.is_main_process():
        samples = stage.directory / "samples" / f"step-{step:08d}.jsonl"
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.write_text("".join(json.dumps(sample) + "\n" for sample in evaluation.samples))
        row = _row(method, step, evaluation)
        append_row(evaluations, row)
        if task.progress_bar:  # with the bars off (a notebook), one line per run is enough
            tqdm.write(f"  {method.run} step {step}: reward {row['reward']:.3f}, KL {row['kl']:.2f} nats")  # under bars
    processes.wait_for_everyone()
    return read_rows(evaluations)[-1]


class CurveEvaluation:
    """The callback that traces a run's curve: at each of ``steps`` not yet evaluated, the policy's reward and KL on
    the held-out prompts (one row of ``evaluations.jsonl``, its samples beside it), logged as ``eval/frontier/*``."""

    def __init__(self, task: SentimentTask, stage: Stage, method: Method, steps: list[int]) -> None:
        self.task, self.stage, self.method, self.steps = task, stage, method, set(steps)
        self.evaluated = {row["step"] for row in read_rows(stage.directory / EVALUATIONS)}  # an interrupted stage's

    def __call__(self, step: int, model: torch.nn.Module) -> dict[str, float] | None:
        if step not in self.steps or step in self.evaluated:
            return None
        row = _evaluate_into(self.task, self.stage, self.method, step, model)
        self.evaluated.add(step)
        return {"frontier/reward": row["reward"], "frontier/kl": row["kl"]}


def evaluate_reference(task: SentimentTask) -> list[dict]:
    """The SFT policy's row (step 0, KL 0 up to sampling noise): where every method starts."""
    method = Method("sft")
    stage = Stage(task.run_dir / "sft-evaluation", {"sft": task.sft_id(), "evaluation": task.evaluation_inputs()})
    if not stage.done:
        stage.start()
        _evaluate_into(task, stage, method, 0, task.sft_policy())
        stage.finish()
    return read_rows(stage.directory / EVALUATIONS)


def evaluate_best_of_n(task: SentimentTask) -> list[dict]:
    """Best-of-N from the SFT policy on the held-out prompts for every N of ``best_of_n``: the yardstick rows."""
    config = task.config
    if not config.best_of_n:
        return []
    sampling = dataclasses.replace(config.sampling, seed=config.sampling.seed + 1)  # other draws than the SFT row's
    inputs = {"sft": task.sft_id(), "evaluation": task.evaluation_inputs(), "ns": list(config.best_of_n)}
    stage = Stage(task.run_dir / BEST_OF_N, {**inputs, "sampling": dataclasses.asdict(sampling)})
    if not stage.done:
        stage.start()
        results = best_of_n(
            task.reference, task.tokenizer, task.eval_prompts, task.reward, sampling, config.best_of_n,
            task.sampling_progress_bar,
        )  # fmt: skip
        if processes.is_main_process():
            rows = []
            for result in results:
                method = Method(BEST_OF_N, "n", result.n)
                rows.append({
                    "method": method.method, "parameter": method.parameter, "value": result.n, "seed": 0,
                    "run": method.run, "step": 0, "reward": result.mean_reward, "reward_sem": result.reward_sem,
                    "kl": result.kl_bound, "kl_sem": 0.0, "kl_log_ratio": None, "kl_log_ratio_sem": None,
                    "samples": len(result.samples) * result.n,
                })  # fmt: skip
                samples = stage.directory / "samples" / f"n-{result.n:08d}.jsonl"
                io.write_text_atomically(samples, "".join(json.dumps(row) + "\n" for row in result.samples))
                if task.progress_bar:
                    print(f"  best-of-{result.n}: reward {result.mean_reward:.3f}, KL <= {result.kl_bound:.2f}")
            io.write_text_atomically(stage.directory / EVALUATIONS, "".join(json.dumps(r) + "\n" for r in rows))
        stage.finish()
    return read_rows(stage.directory / EVALUATIONS)


def train_method(task: SentimentTask, method: Method) -> tuple[Path, list[dict]]:
    """Train ``method`` (or reuse its finished stage), evaluating it at each of its evaluation steps; returns its final
    policy's directory and its rows."""
    config, train = trainer(task, method)
    steps = evaluation_steps(config.max_steps, eval_every(task.config, method))
    inputs = {"upstream": task.upstream_ids(method.method), "evaluation": task.evaluation_inputs(), "steps": steps}
    unkeyed = ("progress_bar", "reference_cache_dir")  # change no result; the cache's path moves with the sweep
    inputs["trainer"] = {key: value for key, value in dataclasses.asdict(config).items() if key not in unkeyed}
    stage = Stage(task.run_dir / method.run, inputs)
    if not stage.done:
        stage.start()
        train(
            dataclasses.replace(config, output_dir=str(stage.directory / "train")),
            [CurveEvaluation(task, stage, method, steps)],
        )
        stage.finish()
    return stage.directory / "train" / "final", read_rows(stage.directory / EVALUATIONS)


def run_frontier(
    config: TaskConfig,
    out: str | Path,
    progress_bar: bool = True,
    accelerator: Accelerator | None = None,
    seeds: int = 1,
) -> list[dict]:
    """Run the whole sweep of ``config`` in ``out`` (reusing what is there); returns the rows of results.csv.

    ``accelerator`` (the caller's, passed to every trainer) defaults to one made by the task; ``seeds`` repeats every
    training run with seeds 0..seeds-1. Under ``accelerate launch`` every process calls this and gets the same
    rows; the main process writes the file.
    """
    out = Path(out)
    task = SentimentTask(config, out, progress_bar, accelerator)
    methods = sweep_methods(config, seeds)
    started = time.perf_counter()
    processes.print_main(
        f"frontier: preset {config.preset}, {len(methods)} runs, evaluated every {config.frontier_eval_every} steps "
        f"(PPO: every {config.ppo_eval_every} rollouts), {processes.state().num_processes} process(es)"
    )
    rows = evaluate_reference(task) + evaluate_best_of_n(task)
    for index, method in enumerate(methods, start=1):
        processes.print_main(f"[{index}/{len(methods)}] {method.run} ({time.perf_counter() - started:.0f} s so far)")
        rows += train_method(task, method)[1]
        if processes.is_main_process():
            write_results(rows, out / "results.csv")
    if processes.is_main_process():
        write_results(rows, out / "results.csv")
    return rows
