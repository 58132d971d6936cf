"""The whole frontier sweep (``dpo-teach frontier``) under ``accelerate launch`` with 2 CPU processes (gloo DDP).

Every process trains and evaluates; the main one writes. The run must exit 0, really run 2 processes,
write results.csv with the same (run, step) rows as one process, each row once (two writers would append
every evaluation twice), and every process must return the same rows. Launched again, it reuses every stage.
The launch is the one of ``tests/test_train_distributed.py`` (``--cpu`` would start one process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_frontier_sweep import expected_rows, toy_sweep
from test_train_distributed import free_port

from dpo_teach.frontier import sweep
from dpo_teach.frontier.methods import sweep_methods
from dpo_teach.frontier.results import load_results, read_rows

SCRIPT = """
import json, sys
from pathlib import Path

sys.path.insert(0, {tests!r})
from test_frontier_sweep import toy_sweep

import dpo_teach.frontier.presets
from dpo_teach import cli
from dpo_teach.frontier import processes, sweep

dpo_teach.frontier.presets.quick = toy_sweep  # `--quick` gives the toy sweep, as in test_frontier_sweep's CLI test
run_frontier = sweep.run_frontier


def recording(config, out, progress_bar=True, accelerator=None, seeds=1):
    rows = run_frontier(config, out, progress_bar=False, accelerator=accelerator, seeds=seeds)
    state = processes.state()
    record = {{"process_index": state.process_index, "num_processes": state.num_processes, "rows": rows}}
    Path({ranks!r}, f"process-{{state.process_index}}.json").write_text(json.dumps(record))
    return rows


sweep.run_frontier = recording
sys.exit(cli.main(["frontier", "--preset", "tiny", "--quick", "--out", {out!r}]))
"""


def launch(tmp_path: Path, processes: int) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """``accelerate launch`` of the CLI's toy sweep in ``processes`` gloo processes; returns the run and its dirs."""
    out, ranks = tmp_path / "run", tmp_path / "ranks"
    ranks.mkdir(exist_ok=True)
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), ranks=str(ranks), out=str(out)))
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    finished = subprocess.run(
        [*command, str(script)], capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path
    )
    return finished, out, ranks


@pytest.mark.slow
def test_two_processes_run_the_sweep_of_one(tmp_path):
    finished, out, ranks = launch(tmp_path, processes=2)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]

    records = [json.loads((ranks / f"process-{index}.json").read_text()) for index in range(2)]
    assert [(record["process_index"], record["num_processes"]) for record in records] == [(0, 2), (1, 2)]
    assert records[0]["rows"] == records[1]["rows"]  # every process returns the main process's rows
    output = finished.stdout
    for trainer in ("SFT", "DPO", "RewardModel", "PPO", "Unlikelihood"):
        assert f"{trainer}: 2 process(es) on cpu" in output, trainer
    assert output.count("[1/") == 1 and output.count("frontier: preset tiny") == 1  # printed by one process
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    assert (out / "frontier.png").stat().st_size > 10_000

    config = toy_sweep()
    one = sweep.run_frontier(config, tmp_path / "one-process", progress_bar=False)
    expected = [(row["run"], row["step"]) for row in one]
    assert expected == expected_rows(config)
    saved = load_results(out / "results.csv")
    assert [(row["run"], row["step"]) for row in saved] == expected
    assert [(row["run"], row["step"]) for row in records[0]["rows"]] == expected
    for run in ("sft-evaluation", *(method.run for method in sweep_methods(config))):
        steps = [row["step"] for row in read_rows(out / run / "evaluations.jsonl")]
        assert steps == sorted(set(steps)), (run, steps)  # each evaluation appended once

    again, _, _ = launch(tmp_path, processes=2)  # every stage is done: nothing is trained or evaluated
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "process(es) on cpu" not in again.stdout and " step 0:" not in again.stdout
    assert [json.loads((ranks / f"process-{index}.json").read_text())["rows"] for index in range(2)] == [
        records[0]["rows"]
    ] * 2
    assert load_results(out / "results.csv") == saved
