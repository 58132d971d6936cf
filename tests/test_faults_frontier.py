"""Faults of the frontier sweep, issue 12 items 1 and 10: a rerun with other settings changes nothing of a finished
sweep (it is refused, naming the settings, unless --replace), and a rerun with the same settings reuses everything and
appends its record to run.json."""

from __future__ import annotations

import json
import shutil

import pytest
from accelerate.state import AcceleratorState
from fault_helpers import snapshot
from test_frontier_sweep import TRAINER_FUNCTIONS, toy_sweep

from dpo_teach import cli
from dpo_teach.errors import DataError
from dpo_teach.frontier import stage


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A finished `dpo-teach frontier --quick` sweep at toy size (tests/test_frontier_sweep.py), made once."""
    out = tmp_path_factory.mktemp("frontier") / "sweep"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dpo_teach.frontier.presets.quick", toy_sweep)
        assert cli.main(["frontier", "--quick", "--out", str(out)]) == 0
    AcceleratorState._reset_state(reset_partial_state=True)  # as after every test (conftest): the next may use bf16
    return out


def test_1_a_rerun_with_other_settings_changes_nothing_of_a_finished_sweep(finished_sweep, tmp_path, capsys):
    """Item 1: rerunning a finished quick sweep as the gpt2 preset (whose Hub model cannot even be fetched here) or at
    full size is refused before anything is touched, naming the settings that differ and --replace: every file of
    the sweep stays byte for byte as it was, and the same settings then still reuse everything."""
    out = tmp_path / "sweep"
    shutil.copytree(finished_sweep, out)
    before = snapshot(out)
    other_settings = (("gpt2", "corpus: 'synthetic' -> 'stanfordnlp/imdb'"), ("tiny", "eval_reviews: 16 -> 500"))
    for preset, differing in other_settings:
        capsys.readouterr()
        assert cli.main(["frontier", "--preset", preset, "--out", str(out)]) == 2
        printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dpo-teach")]
        assert len(printed) == 1 and printed[0].startswith(
            f"dpo-teach frontier: error: {out / 'sft'} holds a finished stage of other settings ("
        )
        assert differing in printed[0] and "nothing was changed" in printed[0] and "--replace" in printed[0]
        assert snapshot(out) == before
        AcceleratorState._reset_state(reset_partial_state=True)  # the gpt2 preset trains in bf16, the toy one in fp32


def test_1_replace_is_what_lets_a_sweep_recompute_stages_of_other_settings(tmp_path, monkeypatch):
    """Item 1, --replace: the sweep runs within stage.replacing() (whose effect tests/test_frontier_task.py checks),
    and without the flag it does not."""
    seen = []

    def record_and_stop(*args, **kwargs):
        seen.append(stage._REPLACING.get())
        raise DataError("stopped by the test")

    monkeypatch.setattr("dpo_teach.frontier.sweep.run_frontier", record_and_stop)
    assert cli.main(["frontier", "--quick", "--out", str(tmp_path), "--replace"]) == 2
    assert cli.main(["frontier", "--quick", "--out", str(tmp_path)]) == 2
    assert seen == [True, False]


def test_10_a_rerun_of_a_finished_frontier_keeps_the_first_record_and_appends_its_own(
    finished_sweep, tmp_path, monkeypatch
):
    """Item 10, run.json: rerunning a finished sweep (moved to another directory) trains and evaluates nothing, leaves
    every stage and results.csv as they were, and run.json keeps the first run's record (its time) with the rerun's
    appended under "reruns"."""
    out = tmp_path / "sweep"
    shutil.copytree(finished_sweep, out)
    before = snapshot(out)
    first = json.loads((out / "run.json").read_text())
    assert "reruns" not in first
    for target in [
        *(f"dpo_teach.frontier.methods.{name}" for name in TRAINER_FUNCTIONS),
        "dpo_teach.frontier.task.train_reward_model",
        "dpo_teach.frontier.sweep.SentimentTask.evaluate",
    ]:
        monkeypatch.setattr(target, lambda *args, target=target, **kwargs: pytest.fail(f"{target} ran"))
    monkeypatch.setattr("dpo_teach.frontier.presets.quick", toy_sweep)
    for rerun in range(2):
        assert cli.main(["frontier", "--quick", "--out", str(out)]) == 0
        record = json.loads((out / "run.json").read_text())
        assert {key: value for key, value in record.items() if key != "reruns"} == first
        assert [entry["size"] for entry in record["reruns"]] == ["quick"] * (rerun + 1)
    after = snapshot(out)
    unchanged = [name for name in before if name not in ("run.json", "frontier.png")]
    assert {name: after[name] for name in unchanged} == {name: before[name] for name in unchanged}
    assert after.keys() == before.keys()
