"""Configs of the trainers: one dataclass per trainer, each field documented, checked in ``__post_init__``.

Defaults that come from a paper quote it. "paper" is the DPO paper (Rafailov et al. 2023, App. B):
RMSprop, learning rate 1e-6, 150 warmup steps, batch size 64, beta 0.1; the authors' code clips
gradients at norm 10.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dpo_teach.data import TRUNCATION_MODES
from dpo_teach.errors import require
from dpo_teach.losses import PREFERENCE_LOSSES

FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
"""The values each annotated field type accepts: an int is a float, as in Python; a bool is no int (although Python
says so), and 2.5 and 16.0 are no ints."""


def check_field_types(config) -> None:
    """Require every field of the dataclass ``config`` to hold a value of its annotated type (:data:`FIELD_TYPES`)
    and every float field a finite one, so a config is checked whatever it came from (a YAML file, the command
    line, Python) and ``batch_size: true`` or ``learning_rate: inf`` stops before any training."""
    for field in dataclasses.fields(config):
        value, expected = getattr(config, field.name), field.type  # a str: `from __future__ import annotations`
        accepted = isinstance(value, FIELD_TYPES[expected]) and (isinstance(value, bool) == (expected == "bool"))
        article = "an" if expected == "int" else "a"
        require(accepted, field.name, f"must be {article} {expected}, got {value!r} ({type(value).__name__})")
        if expected == "float":
            require(math.isfinite(value), field.name, f"must be a finite number, got {value}")


OPTIMIZERS = ("rmsprop", "adamw")
LR_SCHEDULES = ("constant", "linear")
DTYPES = ("float32", "bfloat16", "float16")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """What every trainer shares: the loop, the optimizer, checkpoints and logging."""

    output_dir: str = "runs/train"
    """Run directory: metrics.jsonl, checkpoints/, and the final model in final/."""
    model: str = ""
    """Path or Hub name of the model to train (AutoModelForCausalLM); the Python API also takes a model object."""
    model_dtype: str = "float32"
    """dtype the model's weights are loaded in: 'float32', 'bfloat16' or 'float16'."""
    train_data: str = ""
    """Training examples: a JSONL file or a directory written by datasets' save_to_disk."""
    eval_data: str = ""
    """Held-out examples in the same format; empty turns evaluation off."""
    skip_invalid: bool = False
    """Skip (and count) invalid examples (a line that is not JSON or not UTF-8, a missing or empty field) instead of
    stopping at the first one."""
    max_length: int = 512  # the DPO authors' code
    """Longest prompt + completion in tokens; longer examples are truncated."""
    max_prompt_length: int = 256  # the DPO authors' code
    """Longest prompt in tokens when an example must be truncated: a longer prompt is then cut to this many tokens by
    truncation_mode (the run prints how many were), never refused."""
    truncation_mode: str = "keep_end"
    """Which end of a too-long prompt to keep: 'keep_end' (the words the completion continues) or 'keep_start'."""
    disable_dropout: bool = True  # the DPO authors' code and TRL
    """Set every dropout probability to 0, so the policy's log-probs are deterministic functions of its weights."""
    max_steps: int = 1000
    """Optimizer steps to take (an epoch ends when the data run out; the next one reshuffles). A resumed run may
    raise it; one below the steps already taken is refused."""
    batch_size: int = 64  # paper App. B
    """Examples per optimizer step, over all processes and accumulation steps."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; each process runs batch_size / (processes * this) examples at once."""
    learning_rate: float = 1e-6  # paper App. B
    """Peak learning rate, reached after the warmup and then held."""
    optimizer: str = "rmsprop"  # paper App. B
    """'rmsprop' (the paper's) or 'adamw'."""
    weight_decay: float = 0.0
    """Decoupled weight decay for AdamW (RMSprop: L2 added to the gradient)."""
    warmup_steps: int = 150  # paper App. B
    """Linear warmup from 0 to learning_rate over this many steps."""
    lr_schedule: str = "constant"  # the DPO authors' code: warmup, then constant
    """After the warmup: 'constant', or 'linear' decay to 0 at max_steps (CleanRL's anneal_lr for PPO)."""
    max_grad_norm: float = 10.0  # the DPO authors' code
    """Clip the global gradient norm to this; 0 turns clipping off."""
    mixed_precision: str = "no"
    """'no', 'bf16' or 'fp16' autocast for forward passes; log-probs are always computed in fp32."""
    seed: int = 0
    """Seeds the data order (per epoch), dropout and everything else random."""
    eval_every: int = 100
    """Evaluate on the held-out examples every this many steps (and at the end); 0 turns it off."""
    eval_batch_size: int = 16
    """Examples per evaluation forward pass, per process."""
    save_every: int = 100
    """Write a checkpoint every this many steps (and at the end); 0 writes only the end."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep; older ones are deleted once a newer one is complete."""
    delete_checkpoints_at_end: bool = False
    """Once the run has finished and written final/ (the weights and the tokenizer, no optimizer state), delete its
    checkpoints. gpt2-large's final/ is 3.1 GB where a checkpoint is 9.3 GB with RMSprop, 12.4 GB with AdamW and 22 GB
    for PPO; the price is that a finished run can no longer be continued by raising max_steps."""
    log_with: str = ""
    """Also send metrics to these accelerate trackers, comma-separated: 'tensorboard', 'wandb'."""
    resume: bool = True
    """Continue from the newest checkpoint in output_dir that loads (a broken one is named and skipped), if it was
    written with these settings and inputs (training data content, starting model, tokenizer); otherwise refuse."""
    progress_bar: bool = True
    """Show a tqdm progress bar (works in a terminal and in Jupyter)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require(self.model_dtype in DTYPES, "model_dtype", f"must be one of {DTYPES}, got {self.model_dtype!r}")
        require(self.max_length > 1, "max_length", f"must be > 1, got {self.max_length}")
        require(
            0 < self.max_prompt_length < self.max_length,
            "max_prompt_length",
            f"must be in (0, max_length={self.max_length}), got {self.max_prompt_length}",
        )
        require(
            self.truncation_mode in TRUNCATION_MODES,
            "truncation_mode",
            f"must be one of {TRUNCATION_MODES}, got {self.truncation_mode!r}",
        )
        require(self.max_steps > 0, "max_steps", f"must be > 0, got {self.max_steps}")
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        require(
            self.gradient_accumulation_steps > 0,
            "gradient_accumulation_steps",
            f"must be > 0, got {self.gradient_accumulation_steps}",
        )
        require(
            self.batch_size % self.gradient_accumulation_steps == 0,
            "batch_size",
            f"{self.batch_size} is not divisible by gradient_accumulation_steps={self.gradient_accumulation_steps}",
        )
        require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        require(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(
            self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
        )
        require(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        require(
            self.mixed_precision in MIXED_PRECISION,
            "mixed_precision",
            f"must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}",
        )
        for name in ("eval_every", "save_every"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(self.eval_batch_size > 0, "eval_batch_size", f"must be > 0, got {self.eval_batch_size}")
        require(self.keep_checkpoints > 0, "keep_checkpoints", f"must be > 0, got {self.keep_checkpoints}")

    @property
    def trackers(self) -> list[str]:
        return [name.strip() for name in self.log_with.split(",") if name.strip()]


@dataclass
class DPOConfig(TrainConfig):
    """DPO and its variants: any loss of ``dpo_teach.losses`` by name."""

    beta: float = 0.1  # paper App. B
    """KL strength beta of the loss (DPO Eq. 7)."""
    loss: str = "dpo"
    """One of dpo_teach.losses.PREFERENCE_LOSSES: dpo, ipo, hinge, robust, simpo."""
    label_smoothing: float = 0.0
    """eps of cDPO (loss='dpo') or rDPO (loss='robust'); 0 is plain DPO."""
    simpo_gamma: float = 0.5
    """SimPO's target margin gamma (loss='simpo' only)."""
    average_logps: bool = False
    """Use per-token mean instead of summed completion log-probs (SimPO's choice; TRL's for IPO)."""
    nll_weight: float = 0.0
    """Add nll_weight * (per-token NLL of the chosen completion), RPO's term; 0 turns it off."""
    precompute_ref: bool = True
    """Compute the reference log-probs in one pass before training and cache them on disk, so no reference
    model is in memory while training. False runs a frozen reference copy next to the policy (online)."""
    reference_cache_dir: str = ""
    """Directory of the precomputed reference log-probs (keyed by the reference's weights, the data and the
    precision, so runs may share it); empty means OUTPUT/reference."""
    reference: str = ""
    """Path or Hub name of the reference model; empty means the initial policy is the reference (as in the paper,
    where both start from the SFT model)."""
    reference_dtype: str = ""
    """dtype of the reference's weights; empty means the policy's (a lower-precision reference makes the rewards
    non-zero at step 0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        require(
            self.loss in PREFERENCE_LOSSES, "loss", f"must be one of {sorted(PREFERENCE_LOSSES)}, got {self.loss!r}"
        )
        require(0 <= self.label_smoothing < 0.5, "label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        require(self.nll_weight >= 0, "nll_weight", f"must be >= 0, got {self.nll_weight}")
        require(
            self.loss != "simpo" or self.average_logps,
            "average_logps",
            "must be true for loss='simpo' (SimPO is defined on per-token mean log-probs)",
        )
        require(
            self.reference_dtype in ("", *DTYPES),
            "reference_dtype",
            f"must be empty or one of {DTYPES}, got {self.reference_dtype!r}",
        )

    def loss_kwargs(self) -> dict:
        """Keyword arguments of the chosen loss function beyond the four log-probs and beta."""
        if self.loss in ("dpo", "robust"):
            return {"label_smoothing": self.label_smoothing}
        if self.loss == "simpo":
            return {"gamma": self.simpo_gamma}
        return {}


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning (causal-LM loss), for pretraining the tiny model, SFT and Preferred-FT."""

    learning_rate: float = 1e-4
    """Peak learning rate (a small model from scratch wants far more than DPO's 1e-6)."""
    optimizer: str = "adamw"
    """'adamw' or 'rmsprop'."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm; 0 turns clipping off."""
    completion_only: bool = True
    """Score only completion tokens (prompt masked); False scores whole texts."""


@dataclass
class PPOConfig(TrainConfig):
    """PPO for language models (``dpo_teach.train.ppo``; each detail and its source in docs/ppo.md).

    One step is one rollout (``batch_size`` prompts in a seeded order, one sampled completion each) followed by
    ``ppo_epochs`` passes over it in ``num_minibatches`` shuffled minibatches, one optimizer update each.
    Defaults quote their source: Ziegler et al. 2019 (the lm-human-preferences code: train_policy.py, and
    launch.py for its sentiment runs), TRL's classic PPOConfig, CleanRL's ppo.py.

    Prompts and the reward function are arguments of ``train_ppo`` and checkpoints are evaluated by the caller,
    so these TrainConfig fields are unused: ``train_data``, ``eval_data``, ``skip_invalid``, ``max_length``,
    ``max_prompt_length``, ``truncation_mode``, ``eval_every``, ``eval_batch_size``.
    """

    batch_size: int = 64  # Ziegler et al. 2019 (PpoHParams.batch_size)
    """Rollouts (prompts, one completion each) per step, over all processes."""
    learning_rate: float = 1e-5  # Ziegler et al. 2019's sentiment runs (ppo.lr), TRL's classic PPOConfig
    """Learning rate of the policy and the value model (one optimizer over both)."""
    optimizer: str = "adamw"  # Adam in Ziegler et al. 2019 and TRL; AdamW with weight_decay 0 is Adam
    """'adamw' or 'rmsprop'."""
    warmup_steps: int = 0  # TRL's classic PPOTrainer has no warmup
    """Linear warmup over this many PPO steps (the learning rate changes once per step, not per update)."""
    max_grad_norm: float = 1.0  # TRL's current PPOTrainer (transformers' TrainingArguments default)
    """Clip the gradient norm of policy and value model together, at every update; 0 turns clipping off."""
    max_new_tokens: int = 48  # dpo_teach.sentiment.sampling.SamplingConfig's: rollouts as long as evaluation's
    """Longest completion in tokens (EOS included); a completion cut there is scored as it is, without a penalty."""
    ppo_epochs: int = 4  # Ziegler et al. 2019 (noptepochs), TRL's classic PPOConfig
    """Passes over each rollout."""
    num_minibatches: int = 4  # CleanRL's ppo.py (Ziegler et al. 2019: 1 minibatch of 64 per GPU)
    """Minibatches per pass; each holds batch_size / (num_minibatches * processes) sequences per process."""
    clip_range: float = 0.2  # Ziegler et al. 2019 (cliprange), TRL's classic PPOConfig
    """eps of the clipped policy loss: the ratio pi / pi_old is clipped to [1 - eps, 1 + eps]."""
    clip_range_value: float = 0.2  # Ziegler et al. 2019 (cliprange_value), TRL's classic PPOConfig
    """How far a value prediction may move from the rollout's before its loss is clipped."""
    vf_coef: float = 0.1  # Ziegler et al. 2019, TRL's classic PPOConfig
    """Weight of the value loss: loss = policy loss + vf_coef * value loss."""
    gamma: float = 1.0  # Ziegler et al. 2019, TRL's classic PPOConfig
    """Discount of GAE; 1: a completion is a short episode scored only at its end."""
    lam: float = 0.95  # Ziegler et al. 2019, TRL's classic PPOConfig
    """lambda of GAE: 1 gives Monte-Carlo returns, 0 one-step TD errors."""
    whiten_advantages: bool = True  # Ziegler et al. 2019, TRL's classic PPOTrainer
    """Normalize each rollout's advantages to mean 0 and variance 1 over its completion tokens."""
    init_kl_coef: float = 0.2  # Ziegler et al. 2019 (RewardHParams.kl_coef), TRL's classic PPOConfig
    """beta of the per-token KL penalty -beta * (log pi - log pi_ref) at the first step."""
    adaptive_kl: bool = True  # Ziegler et al. 2019's sentiment runs, TRL's classic PPOConfig
    """Adapt beta so the sequence KL approaches target_kl (Ziegler et al. 2019, Sec. 2.2); False keeps it fixed."""
    target_kl: float = 6.0  # Ziegler et al. 2019's sentiment runs, TRL's classic PPOConfig
    """Sequence KL(pi || pi_ref) in nats that the adaptive controller steers towards."""
    kl_horizon: int = 10000  # Ziegler et al. 2019, TRL's classic PPOConfig
    """Horizon of the adaptive controller, in sequences: beta changes by at most 20% * batch_size / horizon a step."""
    kl_lookahead: int = 0  # Ziegler et al. 2019: the controller reads the last KL
    """PPO steps ahead at which the controller reads the KL's trend (a line through the last kl_window KLs); unused
    with adaptive_kl: false."""
    kl_window: int = 16  # this toolkit's choice (no paper has a lookahead): a line through 16 steps' KLs
    """How many of the last PPO steps' KLs the lookahead's line is fitted to (unused when kl_lookahead is 0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.gradient_accumulation_steps == 1,
            "gradient_accumulation_steps",
            f"must be 1 for PPO (num_minibatches splits a rollout), got {self.gradient_accumulation_steps}",
        )
        for name in ("max_new_tokens", "ppo_epochs", "num_minibatches", "kl_horizon"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        require(self.kl_lookahead >= 0, "kl_lookahead", f"must be >= 0, got {self.kl_lookahead}")
        require(self.kl_window >= 3, "kl_window", f"must be >= 3 (a line through at least 3 KLs), got {self.kl_window}")
        require(
            self.batch_size % self.num_minibatches == 0,
            "num_minibatches",
            f"batch_size={self.batch_size} rollouts cannot be split into {self.num_minibatches} equal minibatches",
        )
        for name in ("clip_range", "clip_range_value", "target_kl"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        require(self.vf_coef >= 0, "vf_coef", f"must be >= 0, got {self.vf_coef}")
        for name in ("gamma", "lam"):
            require(0 <= getattr(self, name) <= 1, name, f"must be in [0, 1], got {getattr(self, name)}")
        require(
            self.init_kl_coef > 0 or (self.init_kl_coef == 0 and not self.adaptive_kl),
            "init_kl_coef",
            f"must be > 0 (or 0 with adaptive_kl: false, no KL penalty), got {self.init_kl_coef}",
        )


@dataclass
class RewardModelConfig(TrainConfig):
    """A Bradley-Terry reward model on the preference pairs, the first stage of RLHF (PPO-RM on the frontier).

    Paper App. C.1: the RLHF reward model has the policy's architecture (gpt2-large), is trained for 3 epochs on
    the preference pairs, and the checkpoint with the highest validation accuracy is kept. ``max_steps`` sets the
    length, as in every trainer: 3 epochs are ``3 * pairs / batch_size`` steps. The optimizer settings are not in
    the paper; these are common reward-model choices (AdamW, a learning rate between SFT's and DPO's).
    """

    model: str = ""
    """Path or Hub name of the model to start from (the SFT policy): loaded as a sequence classifier with one
    output (AutoModelForSequenceClassification, num_labels=1) whose new score head is initialized from ``seed``."""
    learning_rate: float = 1e-5
    """Peak learning rate."""
    optimizer: str = "adamw"
    """'adamw' or 'rmsprop'."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm; 0 turns clipping off."""
    keep_best: bool = True  # paper App. C.1
    """final/ holds the weights of the evaluation with the highest held-out accuracy (earliest on ties), not the
    last ones; needs held-out pairs and eval_every > 0. The chosen step is in final/best.json."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            not self.keep_best or self.eval_every > 0,
            "keep_best",
            "needs evaluations to choose from: set eval_every > 0 (and eval_data), or keep_best: false",
        )


@dataclass
class UnlikelihoodConfig(TrainConfig):
    """The unlikelihood baseline of the DPO paper (Sec. 6; Welleck et al. 2019): likelihood of the chosen
    completion, token-level unlikelihood of the rejected one (``dpo_teach.losses.unlikelihood_loss``).

    The optimizer settings are the paper's App. B defaults, which hold for every experiment unless noted.
    """

    alpha: float = 1.0  # the largest of the DPO paper's sweep, {0.05, 0.1, 0.5, 1}
    """Weight of the unlikelihood term; 0 is supervised fine-tuning on the chosen completions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha >= 0, "alpha", f"must be >= 0, got {self.alpha}")


@dataclass
class ClassifierConfig(TrainConfig):
    """A sequence classifier on labelled texts (``{"text", "label"}``): the tiny preset's ground-truth sentiment
    reward, trained on the synthetic corpus's latent ratings as siebert/sentiment-roberta-large-english was trained
    on people's reviews. The settings are common choices for a small classifier trained from scratch, not a
    paper's: AdamW, a linear decay, a short warmup."""

    max_length: int = 128
    """Tokens kept of each text (its start)."""
    max_prompt_length: int = 1
    """Unused: a text has no prompt (1 keeps it below any max_length, as every config's must be)."""
    learning_rate: float = 2e-3
    """Peak learning rate."""
    optimizer: str = "adamw"
    """'adamw' or 'rmsprop'."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    lr_schedule: str = "linear"
    """'linear' decay to 0 at max_steps, or 'constant'."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm; 0 turns clipping off."""
