"""The sentiment task's presets: one config per row of the presets table in DESIGN.md.

``tiny`` runs everything offline on a CPU in minutes: a synthetic review corpus, a BPE tokenizer and
a small GPT-2 trained here, VADER as the reward. ``gpt2`` and ``paper`` use the Hub (GPT-2, IMDb,
the paper's sentiment classifier) and the paper's hyper-parameters (DPO paper Sec. 6.1, App. B-C).
The code that runs a preset is the same for all three (``dpo_teach.frontier.task``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dpo_teach.sampling import SamplingConfig
from dpo_teach.sentiment.models import TinyClassifier, TinyGPT2
from dpo_teach.train.config import (
    ClassifierConfig,
    DPOConfig,
    PPOConfig,
    RewardModelConfig,
    SFTConfig,
    UnlikelihoodConfig,
)


@dataclass
class TaskConfig:
    """Where the corpus, the models and the reward come from, and the size of every stage."""

    preset: str
    """Name of the preset this config started from."""
    corpus: str = "synthetic"
    """'synthetic' (made by dpo_teach, offline) or an IMDb-format dataset: a Hub name or a save_to_disk directory."""
    num_train_reviews: int = 20_000
    """Synthetic corpus only: reviews in the train split (SFT data and the prompts of the preference pairs)."""
    num_test_reviews: int = 5_000
    """Synthetic corpus only: reviews in the test split (held-out perplexity and evaluation prompts)."""
    corpus_seed: int = 0
    """Seed of the synthetic corpus."""
    model: str = ""
    """Hub name or path of the pretrained policy to fine-tune; empty trains the tiny GPT-2 from scratch."""
    vocab_size: int = 2048
    """Tiny preset: vocabulary of the BPE tokenizer trained on the corpus."""
    shape: TinyGPT2 = field(default_factory=TinyGPT2)
    """Tiny preset: layers, width, heads and context of the GPT-2 trained from scratch."""
    reward: str = "classifier"
    """Ground-truth reward: 'classifier' (a sentiment classifier trained here on the corpus's labels: synthetic
    corpus only), 'vader', or the Hub name or path of a sentiment classifier."""
    reward_positive_label: str = "POSITIVE"
    """Classifier reward: the label whose probability (or logit) is the reward."""
    reward_output: str = "prob"
    """Classifier reward: 'prob' (the paper's p(positive)) or 'logit'."""
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    """``reward: classifier``: training of the ground-truth classifier on the train reviews (output_dir is set)."""
    classifier_shape: TinyClassifier = field(default_factory=TinyClassifier)
    """``reward: classifier``: its layers and width."""
    classifier_eval_reviews: int = 1_000
    """``reward: classifier``: test reviews (whole and as prefixes) on which its accuracy is reported."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning of the policy on the train reviews (whole texts); output_dir is set per run."""
    sft_eval_reviews: int = 500
    """Held-out test reviews on which the SFT perplexity is reported."""
    min_prompt_tokens: int = 2  # paper Sec. 6.1
    """Shortest review prefix used as a prompt, in tokens."""
    max_prompt_tokens: int = 8  # paper Sec. 6.1
    """Longest review prefix used as a prompt, in tokens."""
    num_pair_prompts: int = 1_000
    """Train-review prefixes from which preference pairs are sampled."""
    samples_per_prompt: int = 4  # paper App. C.1
    """Completions sampled from the SFT policy per prompt; every pair of them is labelled (6 pairs for 4)."""
    num_eval_prompts: int = 200
    """Test-review prefixes on which reward and KL are evaluated."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling of completions (pairs and evaluation): pure ancestral sampling, so KL estimates are unbiased."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """DPO on the pairs; output_dir is set per run."""
    dpo_betas: tuple[float, ...] = (0.05, 0.1, 1.0, 5.0)
    """Frontier: one DPO run per beta (the other DPO fields come from ``dpo``)."""
    pair_epochs: float | None = None
    """Frontier: train DPO, Preferred-FT and Unlikelihood for this many epochs of their pairs (max_steps from the
    number of training pairs and the batch size); None keeps each config's max_steps."""
    ppo_target_kls: tuple[float, ...] = (3.0, 6.0, 9.0, 12.0)  # paper Sec. 6.1
    """Frontier: one PPO run per target KL (nats per completion) with the ground-truth reward, and one with the
    reward model; the adaptive KL controller steers each run toward its target from the coefficient
    ``dpo_teach.frontier.methods.initial_kl_coef`` gives. Both rewards are standardized on SFT samples."""
    best_of_n: tuple[int, ...] = (2, 4, 8, 16)
    """Frontier: best-of-N from the SFT policy under the ground-truth reward, the yardstick of every method: N samples
    per held-out prompt, the best one kept; its KL is at most log N - (N - 1) / N."""
    unlikelihood_alphas: tuple[float, ...] = (0.05, 0.1, 0.5, 1.0)  # the DPO paper's sweep (UnlikelihoodConfig.alpha)
    """Frontier: one Unlikelihood run per weight alpha of its unlikelihood term."""
    preferred_ft: SFTConfig = field(default_factory=SFTConfig)
    """Frontier: Preferred-FT, supervised fine-tuning of the SFT policy on the chosen completions."""
    unlikelihood: UnlikelihoodConfig = field(default_factory=UnlikelihoodConfig)
    """Frontier: the Unlikelihood baseline (alpha is set per run from ``unlikelihood_alphas``)."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """Frontier: the Bradley-Terry reward model on the pairs, PPO-RM's reward."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """Frontier: PPO (target_kl is set per run from ``ppo_target_kls``)."""
    frontier_eval_every: int = 100  # paper Sec. 6.1: checkpoints evaluated every 100 training steps
    """Frontier: evaluate every run's policy every this many trainer steps (and at its last step)."""
    ppo_eval_every: int = 100  # paper Sec. 6.1, as above
    """Frontier: evaluate every PPO run every this many PPO steps (rollouts) and at its last step."""

    @property
    def mixed_precision(self) -> str:
        """The precision of every trainer of the task: they share one accelerator, and accelerate allows one
        precision per process, so the trainers' ``mixed_precision`` fields must agree (the classifier's only when
        it is trained: ``reward: classifier``)."""
        trainers = ("sft", "dpo", "preferred_ft", "unlikelihood", "reward_model", "ppo")
        trainers += ("classifier",) if self.reward == "classifier" else ()
        values = {name: getattr(self, name).mixed_precision for name in trainers}
        if len(set(values.values())) > 1:
            raise ValueError(f"mixed_precision: the trainers of one task must share it, got {values}")
        return values["sft"]


def _tiny() -> TaskConfig:
    """Sized for a 2-core CPU: the whole frontier in 17 minutes (``make demo`` 18-19), each run traced as a curve.

    - Ground truth: a 2-layer classifier trained here on the corpus's labels (whole reviews and prefixes), read as
      p(positive) like the paper's siebert classifier.
    - The paper's DPO settings (RMSprop at lr 1e-6 for a pretrained GPT-2) barely move a 4-layer model trained from
      scratch; AdamW at 1e-4 moves it as far as the paper's runs go, and every pair-based method uses it, so they
      differ only in their loss. Each trains one epoch of its pairs (1,000 prompts, 6 pairs each), evaluated every
      28 steps (6 points). (The first frontier of this preset found 1.7 epochs of 4,000 pairs over-fitted; not
      committed.)
    - PPO: targets of 0.05, 0.1 and 0.2 nats per token, the paper's range, times the 32-token completions; rewards
      standardized on SFT samples; from the coefficient that holds the target for a standardized reward
      (``methods.initial_kl_coef``) the controller may move it 5% per rollout (horizon = 4 batches), comparing the
      target with the KL's trend read 8 rollouts ahead (the line through the last 16 rollouts' KLs); 48 rollouts of 64,
      evaluated every 8; 2 epochs of 2 minibatches per rollout. lr 2e-4: at 5e-4 the first rollouts moved the policy ~3
      nats, the controller then drove its coefficient up 1,000-fold and the run ended at 2.2x its target; at 1e-4 the
      controller first cut the coefficient 15-fold and the KL oscillated. The horizon: with horizon = batch (20% per
      rollout) the coefficient fell 8-fold while the policy had not yet moved (the KL is below target at first whatever
      the coefficient), then PPO-RM at 3.2 nats swung from 2.6 to 9.0 nats and ended at 1.6x its target (the committed
      run two before the current one); on that run's SFT policy and pairs, at 10 batches (2%) it could not catch the
      drift (PPO-RM ended at 1.28x for 1.6 and 1.17x for 3.2 nats), at 4 batches PPO-RM at 3.2 nats ended at 0.89x. The
      lookahead: reading the last KL (Ziegler et al.), the controller still cut the coefficient 2-5-fold while the
      policy travelled, and the previous committed run, of that design, ended PPO-RM at 1.28x, 1.17x and 1.31x (PPO-GT
      1.04x, 1.05x, 0.97x). On that run's SFT policy, pairs and reward model, the six runs with the lookahead ended
      within 0.87x-1.13x of their targets for seed 0 and 0.87x-1.09x for seed 1; letting beta fall at half the rate it
      rises instead gave 0.96x-1.28x and 0.88x-1.17x, both together 0.84x-1.01x and 0.85x-0.93x. The current committed
      run, with the lookahead, ended all six within 0.97x-1.10x (README).
    - Unlikelihood at alpha 0.1 and 1: 0.05 gave the curve of 0.1 (the paper's sweep has both), 0.5 one between.
    - SFT trains on the first 48 tokens of each review (45.7 tokens per review on average instead of 69.7): the
      task reads at most 8 prompt + 32 completion tokens, and truncation leaves the training target at every
      position below 48 as it was (EOS is appended before truncation, so a cut review teaches no ending).
    - Every checkpoint is evaluated on 200 held-out prompts. The first full run of this design, with 400 prompts,
      1,500 pair prompts and a third Unlikelihood run, was on course for ~30 minutes; cutting those to 256, 1,000 and
      two brought the frontier to 1,230 s (on a machine another job shared). Run alone with 256 prompts in one
      sampling batch and DPO-like runs evaluated every 28 steps, it still spent 267 s before its first DPO run and
      599 s before its second PPO run; SFT on 48 tokens and 200 prompts brought those to 139 s and 452 s. The README
      gives the committed run's time.
    """
    sampling = SamplingConfig(max_new_tokens=32, batch_size=256)  # all 200 evaluation prompts in one generate call
    classifier = ClassifierConfig(
        max_steps=400, batch_size=64, eval_every=200, eval_batch_size=256, save_every=200, max_length=128,
    )  # fmt: skip  # 0.6 epoch of the 40,000 texts (20,000 reviews whole and as prefixes)
    sft = SFTConfig(
        max_steps=600, batch_size=32, learning_rate=2e-3, warmup_steps=50, completion_only=False, max_length=48,
        max_prompt_length=16, eval_every=200, eval_batch_size=64, save_every=200,
    )  # fmt: skip  # the first 48 tokens of each review: the task never reads past 8 + 32 (see the docstring)
    pair_settings = dict(
        batch_size=32, learning_rate=1e-4, warmup_steps=10, max_length=64, max_prompt_length=16, eval_every=40,
        eval_batch_size=64,
    )  # fmt: skip  # DPO, Preferred-FT and Unlikelihood alike: the methods differ only in their loss
    dpo = DPOConfig(optimizer="adamw", **pair_settings)
    preferred_ft = SFTConfig(**pair_settings)
    unlikelihood = UnlikelihoodConfig(optimizer="adamw", **pair_settings)
    reward_model = RewardModelConfig(
        max_steps=190, batch_size=32, learning_rate=1e-4, warmup_steps=10, max_length=64, max_prompt_length=16,
        eval_every=50, eval_batch_size=64,
    )  # fmt: skip  # one epoch of the ~6,000 training pairs (the paper's three would triple its time)
    ppo = PPOConfig(
        max_steps=48, batch_size=64, max_new_tokens=sampling.max_new_tokens, learning_rate=2e-4,
        ppo_epochs=2, num_minibatches=2, kl_horizon=256, kl_lookahead=8, kl_window=16, eval_every=0,
    )  # fmt: skip
    tokens = sampling.max_new_tokens
    return TaskConfig(
        preset="tiny", classifier=classifier, sft=sft, sampling=sampling, dpo=dpo, preferred_ft=preferred_ft,
        unlikelihood=unlikelihood, reward_model=reward_model, ppo=ppo, pair_epochs=1.0,
        ppo_target_kls=(0.05 * tokens, 0.1 * tokens, 0.2 * tokens), unlikelihood_alphas=(0.1, 1.0),
        frontier_eval_every=28, ppo_eval_every=8, num_pair_prompts=1_000, num_eval_prompts=200,
    )  # fmt: skip


def _hub(preset: str, model: str) -> TaskConfig:
    """The paper's setup on the Hub: IMDb, a GPT-2 SFT'd on it, the siebert classifier's p(positive)."""
    sampling = SamplingConfig(max_new_tokens=48, batch_size=64)
    sft = SFTConfig(
        max_steps=25_000 // 64,  # one epoch of IMDb's 25,000 train reviews (paper App. C.1)
        batch_size=64, learning_rate=5e-5, warmup_steps=150, completion_only=False, max_length=512,
        max_prompt_length=256, eval_every=100, eval_batch_size=32, save_every=100, mixed_precision="bf16",
    )  # fmt: skip
    dpo = DPOConfig(max_length=512, max_prompt_length=64, mixed_precision="bf16")  # paper App. B defaults
    preferred_ft = SFTConfig(
        max_steps=dpo.max_steps, batch_size=64, learning_rate=1e-6, optimizer="rmsprop", warmup_steps=150,
        max_length=512, max_prompt_length=64, mixed_precision="bf16",
    )  # fmt: skip  # App. B: these settings hold for every experiment unless noted otherwise
    unlikelihood = UnlikelihoodConfig(max_length=512, max_prompt_length=64, mixed_precision="bf16")  # App. B
    reward_model = RewardModelConfig(
        max_steps=3 * 25_000 * 6 // 64,  # three epochs of the 6 pairs of 25,000 prompts (fewer after ties drop)
        batch_size=64, max_length=512, max_prompt_length=64, eval_every=200, mixed_precision="bf16",
    )  # fmt: skip
    ppo = PPOConfig(max_steps=1_000, max_new_tokens=sampling.max_new_tokens, mixed_precision="bf16")
    return TaskConfig(
        preset=preset, corpus="stanfordnlp/imdb", model=model, reward="siebert/sentiment-roberta-large-english",
        sft=sft, sampling=sampling, num_pair_prompts=25_000, num_eval_prompts=1_000, dpo=dpo,
        preferred_ft=preferred_ft, unlikelihood=unlikelihood, reward_model=reward_model, ppo=ppo,
    )  # fmt: skip


PRESETS = {"tiny": _tiny, "gpt2": lambda: _hub("gpt2", "gpt2"), "paper": lambda: _hub("paper", "gpt2-large")}


def preset(name: str) -> TaskConfig:
    """A fresh copy of the preset ``name`` (``tiny``, ``gpt2`` or ``paper``), safe to modify."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


def quick(config: TaskConfig) -> TaskConfig:
    """``config`` with every size of the sweep shrunk so the whole frontier runs in a few minutes on 2 CPU cores
    (``dpo-teach frontier --quick``, run in CI). Same stages, methods and code; too small to read much into."""
    config.num_train_reviews, config.num_test_reviews, config.sft_eval_reviews = 4_000, 400, 100
    config.shape = TinyGPT2(n_layer=2, n_embd=64, n_head=2, n_positions=128)
    config.classifier = replace(config.classifier, max_steps=200, eval_every=100, save_every=100)  # 81% held out
    config.classifier_eval_reviews = 200
    config.sft = replace(config.sft, max_steps=150, eval_every=75, save_every=75)
    config.num_pair_prompts, config.num_eval_prompts = 300, 64
    shrink = config.sampling.max_new_tokens / 24  # completions of 24 tokens: the KL targets per token are kept
    config.sampling = replace(config.sampling, max_new_tokens=24)
    config.ppo_target_kls = tuple(round(target / shrink, 6) for target in config.ppo_target_kls)
    config.dpo = replace(config.dpo, warmup_steps=5)  # one epoch of the ~1,600 training pairs (pair_epochs)
    config.preferred_ft = replace(config.preferred_ft, warmup_steps=5)
    config.unlikelihood = replace(config.unlikelihood, warmup_steps=5)
    config.reward_model = replace(config.reward_model, max_steps=30, warmup_steps=5, eval_every=10)
    config.ppo = replace(config.ppo, max_steps=12, max_new_tokens=config.sampling.max_new_tokens)
    config.frontier_eval_every, config.ppo_eval_every = 10, 2
    return config
