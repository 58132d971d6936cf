"""The methods on the frontier (DPO paper Sec. 6.1, Fig. 2 left) and how each one is trained.

Every method starts from the SFT policy, which is also its reference pi_ref:

- **DPO(beta)**: the DPO loss on the preference pairs (``dpo_teach.train.dpo``);
- **PPO-GT(target KL)**: PPO with the ground-truth reward, the paper's "oracle" upper baseline;
- **PPO-RM(target KL)**: PPO with a Bradley-Terry reward model trained on the same pairs (RLHF);
- **Preferred-FT**: supervised fine-tuning on the chosen completions only;
- **Unlikelihood(alpha)**: likelihood of the chosen completion, unlikelihood of the rejected one.

A :class:`Method` names one run; :func:`trainer` gives its trainer's config and a function that trains it with
the task's accelerator and the callbacks it is given (the sweep's evaluation of the run's curve), resuming
from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dpo_teach.frontier.presets import TaskConfig
from dpo_teach.frontier.task import STAGE_CHECKPOINTS, SentimentTask
from dpo_teach.train.config import TrainConfig
from dpo_teach.train.dpo import train_dpo
from dpo_teach.train.ppo import train_ppo
from dpo_teach.train.run import Callback
from dpo_teach.train.sft import train_sft
from dpo_teach.train.unlikelihood import train_unlikelihood


@dataclass(frozen=True)
class Method:
    """One run of the sweep: a method and the value of its hyper-parameter (none for Preferred-FT)."""

    method: str
    """One of the keys of :data:`TRAINERS` ('dpo', 'ppo-gt', 'ppo-rm', 'preferred-ft', 'unlikelihood'), or 'sft'
    for the starting point every run shares."""
    parameter: str = ""
    """Name of the swept hyper-parameter: 'beta' (DPO), 'target_kl' (PPO), 'alpha' (Unlikelihood)."""
    value: float | None = None
    """Its value."""
    overrides: tuple[tuple[str, object], ...] = ()
    """Other fields of the trainer's config to replace, as (name, value) pairs, e.g. ``(("loss", "ipo"),)``:
    a variant outside the sweep (notebook 6's exercises), in a run directory of its own."""
    seed: int = 0
    """The trainer's seed (``dpo-teach frontier --seeds K`` repeats every run with seeds 0..K-1)."""

    @property
    def run(self) -> str:
        """Directory name of the run, e.g. ``dpo-beta-0.1`` (``dpo-beta-0.1-loss-ipo`` with an override,
        ``dpo-beta-0.1-seed-1`` with another seed)."""
        name = self.method if self.value is None else f"{self.method}-{self.parameter}-{self.value:g}"
        parts = [name, *(f"{field}-{value:g}" if isinstance(value, float) else f"{field}-{value}"
                         for field, value in self.overrides)]  # fmt: skip
        return "-".join(parts + ([f"seed-{self.seed}"] if self.seed else []))


def sweep_methods(config: TaskConfig, seeds: int = 1) -> list[Method]:
    """The training runs of the sweep for ``config``, in the order they are trained, each with seeds 0..seeds-1."""
    runs = []
    for seed in range(seeds):
        runs += [Method("dpo", "beta", beta, seed=seed) for beta in config.dpo_betas]
        runs += [Method("ppo-gt", "target_kl", target, seed=seed) for target in config.ppo_target_kls]
        runs += [Method("ppo-rm", "target_kl", target, seed=seed) for target in config.ppo_target_kls]
        runs.append(Method("preferred-ft", seed=seed))
        runs += [Method("unlikelihood", "alpha", alpha, seed=seed) for alpha in config.unlikelihood_alphas]
    return runs


def initial_kl_coef(target_kl: float) -> float:
    """PPO's starting KL coefficient for a target KL, for a reward standardized to variance 1.

    The KL-regularized optimum pi* = pi_ref exp(r / beta) / Z (DPO paper Eq. 4) is at
    KL(pi* || pi_ref) = E_pi*[r] / beta - log Z = Var_ref(r) / (2 beta^2) + O(beta^-3), expanding log Z in 1 / beta.
    With Var(r) = 1, beta_0 = 1 / sqrt(2 target) is the coefficient whose optimum has the target KL, to that order:
    the adaptive controller starts where it should end and only corrects."""
    if target_kl <= 0:
        raise ValueError(f"target_kl: must be > 0, got {target_kl}")
    return (2.0 * target_kl) ** -0.5


def _chosen_completions(path: Path) -> list[dict]:
    """Preferred-FT's data: ``{"prompt", "completion"}`` with the chosen completion of every pair."""
    pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {"prompt": pair["prompt"], "completion": pair["chosen"], "completion_ended": pair.get("chosen_ended", True)}
        for pair in pairs
    ]


Train = Callable[[TrainConfig, Sequence[Callback]], Path]
"""``train(config, callbacks) -> final model dir``: one method's trainer on the task's stages."""


def _dpo(task: SentimentTask, method: Method) -> tuple[TrainConfig, Train]:
    # every DPO run has the same reference (the SFT policy) and pairs: their log-probs are computed once
    config = dataclasses.replace(
        task.config.dpo, beta=method.value, reference_cache_dir=str(task.run_dir / "reference-cache")
    )

    def train(config: TrainConfig, callbacks: Sequence[Callback]) -> Path:
        train_path, eval_path = task.preference_pairs()
        return train_dpo(
            config, task.sft_model(), task.tokenizer, str(train_path), str(eval_path), task.accelerator, callbacks
        )

    return config, train


def _preferred_ft(task: SentimentTask, method: Method) -> tuple[TrainConfig, Train]:
    def train(config: TrainConfig, callbacks: Sequence[Callback]) -> Path:
        train_path, eval_path = task.preference_pairs()
        chosen, held_out = _chosen_completions(train_path), _chosen_completions(eval_path)
        return train_sft(config, task.sft_model(), task.tokenizer, chosen, held_out, task.accelerator, callbacks)

    return task.config.preferred_ft, train


def _unlikelihood(task: SentimentTask, method: Method) -> tuple[TrainConfig, Train]:
    def train(config: TrainConfig, callbacks: Sequence[Callback]) -> Path:
        train_path, eval_path = task.preference_pairs()
        return train_unlikelihood(
            config, task.sft_model(), task.tokenizer, str(train_path), str(eval_path), task.accelerator, callbacks
        )

    return dataclasses.replace(task.config.unlikelihood, alpha=method.value), train


def _ppo(task: SentimentTask, method: Method) -> tuple[TrainConfig, Train]:
    def train(config: TrainConfig, callbacks: Sequence[Callback]) -> Path:
        reward = task.ppo_reward("ground truth" if method.method == "ppo-gt" else "reward model")
        return train_ppo(
            config, task.sft_model(), task.tokenizer, task.pair_prompts, reward, accelerator=task.accelerator,
            callbacks=callbacks,
        )  # fmt: skip

    return dataclasses.replace(
        task.config.ppo, target_kl=method.value, init_kl_coef=initial_kl_coef(method.value)
    ), train


PAIR_METHODS = ("dpo", "preferred-ft", "unlikelihood")
"""The methods that learn from the preference pairs (``TaskConfig.pair_epochs`` sets their length)."""
TRAINERS = {"dpo": _dpo, "ppo-gt": _ppo, "ppo-rm": _ppo, "preferred-ft": _preferred_ft, "unlikelihood": _unlikelihood}
"""method -> (task, method) -> (its trainer config, a function training that config)."""


def eval_every(config: TaskConfig, method: Method) -> int:
    """Steps between evaluations of a run: PPO counts rollouts, the other trainers optimizer steps on pairs."""
    return config.ppo_eval_every if method.method.startswith("ppo") else config.frontier_eval_every


def trainer(task: SentimentTask, method: Method) -> tuple[TrainConfig, Train]:
    """The config of ``method``'s trainer, set to checkpoint at every evaluation step, and its train function."""
    if method.method not in TRAINERS:
        raise ValueError(f"method: unknown {method.method!r}; expected one of {sorted(TRAINERS)}")
    config, train = TRAINERS[method.method](task, method)
    if method.method in PAIR_METHODS and task.config.pair_epochs is not None:
        pairs = task.config.pair_epochs * task.num_train_pairs
        config = dataclasses.replace(config, max_steps=max(1, round(pairs / config.batch_size)))
    config = dataclasses.replace(
        config, **dict(method.overrides), seed=method.seed, save_every=eval_every(task.config, method),
        **STAGE_CHECKPOINTS, progress_bar=task.progress_bar, resume=True,
    )  # fmt: skip
    return config, train
