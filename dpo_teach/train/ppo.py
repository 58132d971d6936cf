"""PPO for language models (Ziegler et al. 2019; Stiennon et al. 2020), on the same accelerate pieces as DPO.

The trainer knows no task: prompts and a reward function ``reward(texts) -> (N,)`` come in as arguments.
One step (docs/ppo.md gives each detail and its source; every formula is in ``dpo_teach.rl``):

1. rollout: the step's ``batch_size`` prompts, one completion each by pure ancestral sampling from the
   current policy, seeded by (seed, step);
2. score: ``reward(prompt + completion)``; without gradients, the policy's log-probs (pi_old), the
   reference's (pi_ref, a frozen copy of the initial policy) and the value model's values, per token;
3. per-token rewards r_t = -beta (log pi_old - log pi_ref) plus the score at the last token, beta from the KL
   controller; advantages by GAE (gamma, lambda), whitened over the rollout; returns = advantages + values;
4. ``ppo_epochs`` passes over ``num_minibatches`` shuffled minibatches: clipped policy loss + vf_coef * clipped
   value loss, one backward, gradient clipping, one optimizer update (policy and value model together);
5. the KL controller sees the rollout's mean sequence KL.

Everything around the update (resume, metrics, the progress bar, checkpoints, callbacks such as an
evaluation, the finish) is the :class:`~dpo_teach.train.run.TrainingRun` that every trainer shares.
Metrics (docs/metrics.md) go to ``metrics.jsonl``, the trackers and the progress bar. Checkpoints are
written at step boundaries (``dpo_teach.train.checkpoint``): ``step-N/policy`` loads with
``from_pretrained``; ``step-N/state`` holds both models and the optimizer, ``trainer_state.json`` the KL
controller, so a resumed run continues exactly (the rollouts depend only on (seed, step) and the weights).

The trainer knows no task, so the PPO that trains GPT-2 is the one checked against the closed-form
optimum pi_ref exp(r / beta) / Z on one-token completions (tests/test_train_ppo_optimum.py).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from dpo_teach.errors import ConfigError, NonFiniteError
from dpo_teach.rl import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
    whiten,
)
from dpo_teach.sampling import SamplingConfig, sample
from dpo_teach.train.config import PPOConfig
from dpo_teach.train.fingerprint import data_fingerprint
from dpo_teach.train.loop import micro_batch_indices
from dpo_teach.train.models import disable_dropout, load_causal_lm, load_tokenizer
from dpo_teach.train.rollout import Batch, make_value_model, rollout_batch, rollout_logps, token_values
from dpo_teach.train.run import Callback, TrainingRun, build_optimizer, learning_rate_schedule, step_generator

Reward = Callable[[list[str]], torch.Tensor]


def make_kl_controller(config: PPOConfig) -> AdaptiveKLController | FixedKLController:
    """Ziegler et al. 2019's adaptive controller (Sec. 2.2), optionally reading the KL ahead, or a fixed coefficient."""
    if config.adaptive_kl:
        return AdaptiveKLController(
            config.init_kl_coef, config.target_kl, config.kl_horizon, config.kl_lookahead, config.kl_window
        )
    return FixedKLController(config.init_kl_coef)


@torch.no_grad()
def collect_rollout(
    accelerator: Accelerator,
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    value_model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    reward: Reward,
    kl_coef: float,
    config: PPOConfig,
    step: int,
    seed: int,
) -> tuple[Batch, dict[str, float]]:
    """Steps 1-3 of the module docstring for this process's share of the rollout of ``step`` (0-based).

    Returns the rollout batch (module ``rollout``'s layout plus ``old_logps``, ``old_values``, ``advantages``,
    ``returns``, each ``(b, C)``) and this process's rollout metrics.
    """
    indices = micro_batch_indices(len(prompts), config, step, accelerator.num_processes, accelerator.process_index)[0]
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, batch_size=len(indices), seed=seed)
    with accelerator.autocast():  # step 1: sample under the precision that scores the samples below
        samples = sample(
            accelerator.unwrap_model(policy), tokenizer, [prompts[i] for i in indices], sampling, progress_bar=False
        )
    batch = rollout_batch(samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id)
    batch = {name: tensor.to(accelerator.device) for name, tensor in batch.items()}
    scores = torch.as_tensor(reward(samples.texts), dtype=torch.float32).to(accelerator.device)  # (b,) step 2
    if scores.shape != (len(indices),):
        raise ValueError(f"reward: returned shape {tuple(scores.shape)} for {len(indices)} texts; expected (N,)")
    if not torch.isfinite(scores).all():
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        raise NonFiniteError(
            f"the reward is not finite at step {step + 1} for texts {bad[:10]}, e.g. "
            f"{samples.texts[bad[0]]!r}: {scores[bad[0]].item()}"
        )

    parts = {"old_logps": [], "entropy": [], "ref_logps": [], "old_values": []}
    policy.eval()
    for rows in torch.arange(len(indices)).split(len(indices) // config.num_minibatches):  # bounded memory
        chunk = {name: tensor[rows] for name, tensor in batch.items()}
        with accelerator.autocast():
            logps, entropy = rollout_logps(policy, chunk, with_entropy=True)  # (m, C) each: log pi_old(y_t | .)
            ref_logps, _ = rollout_logps(reference, chunk)  # (m, C) log pi_ref(y_t | .)
            values = token_values(value_model, chunk)  # (m, C) V(x, y_<t)
        for name, part in zip(parts, (logps, entropy, ref_logps, values), strict=True):
            parts[name].append(part)
    old_logps, entropy, ref_logps, old_values = (torch.cat(part) for part in parts.values())  # (b, C) each
    mask = batch["mask"]  # (b, C)

    # Step 3. Ziegler et al. 2019 Eq. 2: r_t = -beta (log pi_old(y_t | .) - log pi_ref(y_t | .)), plus the score
    # r(x, y) at the last token
    rewards, kl = kl_penalized_rewards(scores, old_logps, ref_logps, mask, kl_coef)  # (b, C) each
    # GAE (Schulman et al. 2016, Eqs. 11-16): A_t = sum_l (gamma lambda)^l delta_{t+l},
    # delta_t = r_t + gamma V(s_{t+1}) - V(s_t); returns R_t = A_t + V(s_t)
    advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)  # (b, C) each
    if config.whiten_advantages:
        advantages = whiten(advantages, mask)
    batch.update(old_logps=old_logps, old_values=old_values, advantages=advantages, returns=returns)
    sequence_kl = kl.sum(dim=1)  # (b,) log pi(y | x) / pi_ref(y | x)
    metrics = {
        "reward/mean": scores.mean().item(),
        "kl/sequence": sequence_kl.mean().item(),
        "kl/coef": kl_coef,
        "objective/rlhf_reward": (scores - kl_coef * sequence_kl).mean().item(),
        "policy/entropy": masked_mean(entropy, mask).item(),
        "returns/mean": masked_mean(returns, mask).item(),
        "value/explained_variance": explained_variance(old_values, returns, mask),
        "completion/length": mask.sum(dim=1).mean().item(),
    }
    return batch, metrics


def ppo_update(
    policy: torch.nn.Module,
    value_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    run: TrainingRun,
    step: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """Step 4: ``ppo_epochs`` passes over ``num_minibatches`` shuffled minibatches of ``batch``, one update each.

    Returns this process's means over the updates. A non-finite loss or gradient norm raises
    NonFiniteError before its update.
    """
    config, accelerator = run.config, run.accelerator
    policy.train()
    value_model.train()
    parameters = [*policy.parameters(), *value_model.parameters()]
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
    rollout_size = batch["mask"].shape[0]
    history = []
    for epoch in range(config.ppo_epochs):
        order = torch.randperm(rollout_size, generator=generator)
        for number, rows in enumerate(order.split(rollout_size // config.num_minibatches)):
            minibatch = {name: tensor[rows.to(tensor.device)] for name, tensor in batch.items()}
            mask = minibatch["mask"]  # (m, C)
            with accelerator.autocast():
                logps, _ = rollout_logps(policy, minibatch)  # (m, C), with grad: log pi_theta(y_t | .)
                values = token_values(value_model, minibatch)  # (m, C), with grad: V_phi(s_t)
            # Schulman et al. 2017 Eq. 7: L^CLIP = -E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)],
            # rho_t = pi_theta(y_t | .) / pi_old(y_t | .)
            pg_loss, pg_stats = clipped_policy_loss(
                logps, minibatch["old_logps"], minibatch["advantages"], mask, config.clip_range
            )
            # L^V = 1/2 E_t[max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)] (Huang et al. 2022)
            v_loss, v_stats = clipped_value_loss(
                values, minibatch["old_values"], minibatch["returns"], mask, config.clip_range_value
            )
            loss = pg_loss + config.vf_coef * v_loss  # L = L^CLIP + c_V L^V
            where = f" (PPO epoch {epoch + 1}, minibatch {number + 1})"
            run.check_finite("the loss", loss.item(), step, where)
            accelerator.backward(loss)
            grad_norm = float(accelerator.clip_grad_norm_(parameters, max_norm))
            run.check_gradient_norm(grad_norm, step, where)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.append(
                {
                    "loss/policy": pg_loss.item(),
                    "policy/approx_kl": pg_stats["approx_kl"].item(),
                    "policy/clipfrac": pg_stats["clipfrac"].item(),
                    "value/loss": v_loss.item(),
                    "value/clipfrac": v_stats["value_clipfrac"].item(),
                    "grad_norm": grad_norm,
                }
            )
    return {name: sum(update[name] for update in history) / len(history) for name in history[0]}


def train_ppo(
    config: PPOConfig,
    policy: torch.nn.Module | None,
    tokenizer,
    prompts: list[str],
    reward: Reward,
    value_model: torch.nn.Module | None = None,
    reference: torch.nn.Module | None = None,
    accelerator: Accelerator | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train ``policy`` by PPO to maximize ``reward`` with a KL penalty to ``reference``; returns the final model dir.

    ``policy`` and ``tokenizer`` default (None) to ``config.model``. ``reward(texts)`` scores prompt + completion
    strings, returning ``(N,)``. ``value_model`` defaults to ``rollout.make_value_model(policy)``; one passed in must
    map ``input_ids``, ``attention_mask``, ``position_ids`` to ``logits`` ``(B, T, 1)``. ``reference`` defaults to a
    frozen copy of the initial policy (the SFT model in RLHF). ``accelerator`` and ``callbacks`` (called with the
    policy) as in ``dpo_teach.train.dpo.train_dpo``.
    """
    with TrainingRun(config, accelerator, "PPO", callbacks) as run:
        accelerator = run.accelerator
        if accelerator.distributed_type == DistributedType.FSDP:  # generate() needs the whole policy on each process
            raise ConfigError(f"{accelerator.distributed_type} is not supported by the PPO trainer; use DDP")
        split = accelerator.num_processes * config.num_minibatches
        if config.batch_size % split:
            raise ConfigError(
                f"batch_size: {config.batch_size} rollouts cannot be split into {accelerator.num_processes} "
                f"processes x {config.num_minibatches} minibatches; choose a multiple of {split}"
            )
        passed = (policy is not None, tokenizer is not None)
        tokenizer = tokenizer or load_tokenizer(config.model)
        policy = policy or load_causal_lm(config.model, config.model_dtype)
        run.add_model_and_tokenizer(policy, tokenizer, *passed)
        run.add_input("prompts", data_fingerprint([{"prompt": prompt} for prompt in prompts]), "the prompts passed in")
        reference = copy.deepcopy(policy) if reference is None else reference  # before any update or resume
        value_model = make_value_model(policy) if value_model is None else value_model
        if config.disable_dropout:
            disable_dropout(policy)
            disable_dropout(value_model)
        reference.requires_grad_(False)
        reference.eval().to(accelerator.device)
        policy.to(accelerator.device)
        value_model.to(accelerator.device)
        optimizer = build_optimizer(torch.nn.ModuleList([policy, value_model]), config)  # one optimizer over both
        scheduler = learning_rate_schedule(optimizer, config)  # stepped once per PPO step
        policy, value_model, optimizer, scheduler = run.prepare(policy, value_model, optimizer, scheduler)
        controller = make_kl_controller(config)
        resumed = run.start(policy, tokenizer, f"{len(prompts)} prompts")
        if resumed:
            controller.load_state_dict(resumed["kl_controller"])
        for step in run.steps():
            started = time.perf_counter()
            generator = step_generator(config.seed, step)  # this step's sampling seeds, then minibatch orders
            seeds = torch.randint(2**62, (accelerator.num_processes,), generator=generator)
            batch, rollout_metrics = collect_rollout(
                accelerator, policy, reference, value_model, tokenizer, prompts, reward, controller.value, config,
                step, int(seeds[accelerator.process_index]),
            )  # fmt: skip  # steps 1-3
            update_metrics = ppo_update(policy, value_model, optimizer, batch, run, step, generator)  # step 4
            local = {**rollout_metrics, **update_metrics}
            local_values = torch.tensor(list(local.values()), dtype=torch.float64, device=accelerator.device)
            means = accelerator.reduce(local_values, reduction="mean")  # over processes; float64 keeps beta exact
            record = {"step": step + 1, **dict(zip(local, means.tolist(), strict=True))}
            controller.update(record["kl/sequence"], config.batch_size)  # step 5, on the mean over all processes
            record.update(lr=scheduler.get_last_lr()[0], step_seconds=time.perf_counter() - started)
            scheduler.step()
            run.log(
                record, reward=f"{record['reward/mean']:.3f}", kl=f"{record['kl/sequence']:.2f}",
                coef=f"{record['kl/coef']:.3g}",
            )  # fmt: skip
            trainer_state = {"prompts_seen": (step + 1) * config.batch_size, "kl_controller": controller.state_dict()}
            run.end_step(step, trainer_state)
        return run.finish()
