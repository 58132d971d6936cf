"""The sentiment task end to end, one stage at a time, each cached in the run directory.

    corpus -> tokenizer -> SFT policy (= pi_ref) -> prompts -> K samples per prompt -> rewards
    -> preference pairs -> reward model; evaluation (reward and KL on held-out prompts)

:class:`SentimentTask` computes a stage the first time it is asked for and reuses it afterwards. A
stage that writes files (tokenizer, SFT, pairs, reward model) records a hash of its inputs in
``RUN/<stage>/stage.json``: unchanged inputs reuse the finished stage, or resume an interrupted one
from its last checkpoint; changed inputs start it afresh. The methods trained on these stages (DPO and
the baselines) are the frontier's (``dpo_teach.frontier.methods`` and ``sweep``). Every preset runs this
same code, in one process or under ``accelerate launch``: every process trains and samples with the one
accelerator of the task, the main one writes the files (``dpo_teach.frontier.processes``).
"""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path

import torch
from accelerate import Accelerator

from dpo_teach import io
from dpo_teach.frontier import processes
from dpo_teach.frontier.presets import TaskConfig
from dpo_teach.frontier.stage import Stage
from dpo_teach.sampling import sample
from dpo_teach.sentiment.corpus import Review, imdb_corpus, synthetic_corpus
from dpo_teach.sentiment.evaluate import Evaluation, evaluate
from dpo_teach.sentiment.labels import labelled_texts
from dpo_teach.sentiment.models import tiny_classifier, tiny_gpt2, train_tokenizer
from dpo_teach.sentiment.pairs import build_pairs, save_pairs
from dpo_teach.sentiment.prompts import make_prompts
from dpo_teach.sentiment.rewards import StandardizedReward, label_agreement, make_reward
from dpo_teach.train.classifier import train_classifier
from dpo_teach.train.models import load_causal_lm, load_tokenizer
from dpo_teach.train.reward_model import train_reward_model
from dpo_teach.train.run import make_accelerator
from dpo_teach.train.sft import train_sft

STAGE_CHECKPOINTS = {"keep_checkpoints": 1, "delete_checkpoints_at_end": True}
"""Checkpoints of every trainer the frontier runs (its stages and its methods): the newest one, to resume an interrupted
stage from, deleted once the stage's final weights are written. A finished stage is never resumed (changed inputs
start it afresh), so a paper-preset sweep keeps final weights only (README: disk)."""

HELD_OUT_PAIR_FRACTION = 0.05
"""The first 5% of the pair prompts are held out: every pair whose prompt text is one of theirs goes to DPO's
evaluation (loss, reward accuracy, margins). Short prefixes repeat, so the held-out share of pairs is larger."""


def _mean_and_std(rewards: torch.Tensor) -> dict[str, float]:
    """``reward_mean`` and ``reward_std`` (ddof 1) of ``(N,)`` rewards."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    return {"reward_mean": rewards.mean().item(), "reward_std": rewards.std().item()}


def _fields(config, *excluded: str) -> dict:
    return {key: value for key, value in dataclasses.asdict(config).items() if key not in excluded}


class SentimentTask:
    """The stages of the task for one :class:`TaskConfig`, computed on demand and cached under ``run_dir``."""

    def __init__(
        self, config: TaskConfig, run_dir: str | Path, progress_bar: bool = True, accelerator: Accelerator | None = None
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress_bar = progress_bar
        self._accelerator = accelerator

    @cached_property
    def accelerator(self) -> Accelerator:
        """The one accelerator every trainer of the task is given: the caller's, or one made here with the preset's
        precision. The trainers never end it; under ``accelerate launch`` its owner (the caller) does."""
        return self._accelerator or make_accelerator(self.config.mixed_precision)

    @property
    def sampling_progress_bar(self) -> bool:
        """Sampling bars on the main process only: every process samples the same prompts (the trainers show
        their own bars on the main process only)."""
        return self.progress_bar and processes.is_main_process()

    @cached_property
    def corpus(self) -> dict[str, list[Review]]:
        """``{"train": [...], "test": [...]}`` reviews: synthetic (seeded) or an IMDb-format dataset."""
        config = self.config
        if config.corpus == "synthetic":
            return synthetic_corpus(config.num_train_reviews, config.num_test_reviews, config.corpus_seed)
        return imdb_corpus(config.corpus)

    def _corpus_inputs(self) -> dict:
        config = self.config
        return {
            "corpus": config.corpus,
            **({"train": config.num_train_reviews, "test": config.num_test_reviews, "seed": config.corpus_seed}
               if config.corpus == "synthetic" else {}),
        }  # fmt: skip

    @cached_property
    def tokenizer(self):
        """The pretrained model's tokenizer, or (tiny) a BPE trained on the train reviews, cached."""
        if self.config.model:
            return load_tokenizer(self.config.model)
        stage = Stage(self.run_dir / "tokenizer", {**self._corpus_inputs(), "vocab_size": self.config.vocab_size})
        if not stage.done:
            stage.start()
            if processes.is_main_process():
                texts = [review.text for review in self.corpus["train"]]
                train_tokenizer(texts, self.config.vocab_size).save_pretrained(stage.directory)
            stage.finish()
        return load_tokenizer(str(stage.directory))

    @cached_property
    def reward(self):
        """The ground-truth reward: ``reward(texts) -> (N,)``, scored on prompt + completion: VADER, the classifier
        trained here (``"classifier"``, :meth:`ground_truth_classifier`) or a classifier by name or path."""
        config = self.config
        if config.reward == "vader":
            return make_reward("vader")
        name = str(self.ground_truth_classifier()) if config.reward == "classifier" else config.reward
        return make_reward(
            name, positive_label=config.reward_positive_label, output=config.reward_output,
            device=self.accelerator.device,
        )  # fmt: skip

    def reward_inputs(self) -> list:
        """What the ground-truth reward depends on: its settings, and the trained classifier's output id."""
        config = self.config
        trained = [Stage.output_id(self.ground_truth_classifier().parent)] if config.reward == "classifier" else []
        return [config.reward, config.reward_positive_label, config.reward_output, *trained]

    def ground_truth_classifier(self) -> Path:
        """Directory of the ground truth of ``reward: classifier``: a sentiment classifier trained here on the train
        reviews' labels (whole reviews and prefixes, ``dpo_teach.sentiment.labels``), the tiny preset's analogue of
        siebert/sentiment-roberta-large-english, saved as a Hugging Face model and read the same way, p(POSITIVE).
        ``summary.json`` beside it gives its held-out accuracy on test reviews, whole and as prefixes, and VADER's
        on the same texts."""
        config = self.config
        inputs = {**self._corpus_inputs(), "vocab_size": config.vocab_size, "model": config.model}
        inputs |= {"shape": dataclasses.asdict(config.classifier_shape), "eval_reviews": config.classifier_eval_reviews}
        inputs["classifier"] = _fields(config.classifier, "output_dir", "progress_bar")
        stage = Stage(self.run_dir / "reward-classifier", inputs)
        if not stage.done:
            stage.start()
            train = labelled_texts(self.corpus["train"], self.tokenizer, seed=config.corpus_seed)
            test_reviews = self.corpus["test"][: config.classifier_eval_reviews]
            held_out = labelled_texts(test_reviews, self.tokenizer, seed=config.corpus_seed + 1)
            model = tiny_classifier(self.tokenizer, config.classifier_shape, seed=config.classifier.seed)
            classifier = dataclasses.replace(
                config.classifier, output_dir=str(stage.directory), progress_bar=self.progress_bar
            )
            final = train_classifier(classifier, model, self.tokenizer, train, held_out, self.accelerator)
            if processes.is_main_process():
                summary = {"kind": "classifier trained here", **self._agreements(final, held_out)}
                io.write_text_atomically(stage.directory / "summary.json", json.dumps(summary, indent=2))
            stage.finish()
        return stage.directory / "final"

    def _agreements(self, classifier_dir: Path, held_out: list[dict]) -> dict:
        """Held-out accuracy of the trained classifier and of VADER against the reviews' labels, on whole reviews
        (even rows of ``held_out``) and on their prefixes (odd rows); a score of exactly 0.5 counts one half."""
        readers = {
            "classifier": make_reward(str(classifier_dir), positive_label="POSITIVE", device=self.accelerator.device),
            "vader": make_reward("vader"),
        }
        report = {"eval_texts": len(held_out) // 2}
        for part, rows in (("whole_reviews", held_out[0::2]), ("prefixes", held_out[1::2])):
            texts, labels = [row["text"] for row in rows], torch.tensor([row["label"] for row in rows])
            for name, reader in readers.items():
                report[f"{name}_accuracy_{part}"] = label_agreement(reader(texts), labels)
        return report

    def sft_policy(self) -> Path:
        """Directory of the SFT policy (pi_ref of every method): trained on the train reviews as whole texts, each
        cut to the SFT config's ``max_length`` tokens (EOS appended before the cut)."""
        config = self.config
        inputs = {**self._corpus_inputs(), "vocab_size": config.vocab_size, "model": config.model}
        inputs |= {"shape": dataclasses.asdict(config.shape), "eval_reviews": config.sft_eval_reviews}
        inputs["sft"] = _fields(config.sft, "output_dir", "progress_bar")
        stage = Stage(self.run_dir / "sft", inputs)
        if not stage.done:
            stage.start()
            model = load_causal_lm(config.model) if config.model else tiny_gpt2(self.tokenizer, config.shape)
            train = [{"text": review.text} for review in self.corpus["train"]]
            held_out = [{"text": review.text} for review in self.corpus["test"][: config.sft_eval_reviews]]
            sft = dataclasses.replace(
                config.sft, output_dir=str(stage.directory), progress_bar=self.progress_bar, **STAGE_CHECKPOINTS
            )
            train_sft(sft, model, self.tokenizer, train, held_out, accelerator=self.accelerator)
            stage.finish()
        return stage.directory / "final"

    def load_policy(self, directory: str | Path) -> torch.nn.Module:
        """A saved policy in eval mode on this process's device (a GPU when there is one), for sampling and
        evaluation; the trainers move the models they train themselves."""
        return load_causal_lm(str(directory)).to(self.accelerator.device).eval()

    def sft_model(self) -> torch.nn.Module:
        """A fresh copy of the SFT policy in train mode: the starting point of every method."""
        return self.load_policy(self.sft_policy()).train()

    def sft_id(self) -> str:
        """Output id of the SFT stage (computing it first if needed)."""
        return Stage.output_id(self.sft_policy().parent)

    def upstream_ids(self, method: str) -> dict[str, str]:
        """Output ids of the stages a method's run uses: the SFT policy always, the pairs unless it is PPO with the
        ground-truth reward (which needs only prompts), and the reward model for PPO-RM."""
        ids = {"sft": self.sft_id()}
        if method != "ppo-gt":
            ids["pairs"] = Stage.output_id(self.preference_pairs()[0].parent)
        if method == "ppo-rm":
            ids["reward_model"] = Stage.output_id(self.reward_model().parent)
        return ids

    def evaluation_inputs(self) -> dict:
        """What an evaluation depends on besides the policy: prompts, sampling and the ground-truth reward."""
        config = self.config
        return {
            "prompts": self.eval_prompts, "sampling": dataclasses.asdict(config.sampling),
            "reward": self.reward_inputs(),
        }  # fmt: skip

    @cached_property
    def pair_prompts(self) -> list[str]:
        """Prefixes of train reviews (2-8 tokens) from which the preference pairs are sampled."""
        texts = [review.text for review in self.corpus["train"]]
        prompts = make_prompts(texts, self.tokenizer, self.config.min_prompt_tokens, self.config.max_prompt_tokens)
        return prompts[: self.config.num_pair_prompts]

    @cached_property
    def eval_prompts(self) -> list[str]:
        """Prefixes of test reviews on which every policy is evaluated."""
        texts = [review.text for review in self.corpus["test"]]
        prompts = make_prompts(texts, self.tokenizer, self.config.min_prompt_tokens, self.config.max_prompt_tokens)
        return prompts[: self.config.num_eval_prompts]

    def preference_pairs(self) -> tuple[Path, Path]:
        """``train.jsonl`` and ``eval.jsonl`` of labelled pairs: K SFT samples per prompt, every pair of them.

        Every process samples and labels the same pairs; the main one writes them."""
        config = self.config
        sft_dir = self.sft_policy()
        inputs = {"sft": Stage.output_id(sft_dir.parent), "prompts": self.pair_prompts}
        inputs |= {"samples_per_prompt": config.samples_per_prompt, "sampling": dataclasses.asdict(config.sampling)}
        inputs["held_out_fraction"] = HELD_OUT_PAIR_FRACTION
        inputs["reward"] = self.reward_inputs()
        stage = Stage(self.run_dir / "pairs", inputs)
        train_path, eval_path = stage.directory / "train.jsonl", stage.directory / "eval.jsonl"
        if not stage.done:
            stage.start()
            samples = sample(
                self.load_policy(sft_dir), self.tokenizer, self.pair_prompts, config.sampling,
                config.samples_per_prompt, self.sampling_progress_bar,
            )  # fmt: skip
            rewards = self.reward(samples.texts)  # (N,)
            held_out_prompts = set(self.pair_prompts[: max(1, int(HELD_OUT_PAIR_FRACTION * len(self.pair_prompts)))])
            pairs, ties = build_pairs(samples, rewards)
            if processes.is_main_process():
                save_pairs([pair for pair in pairs if pair["prompt"] not in held_out_prompts], train_path)
                save_pairs([pair for pair in pairs if pair["prompt"] in held_out_prompts], eval_path)
                rows = [
                    {"prompt": prompt, "completion": completion, "ended": ended, "reward": reward}
                    for prompt, completion, ended, reward in zip(
                        samples.prompts, samples.completions, samples.ended, rewards.tolist(), strict=True
                    )
                ]
                io.write_text_atomically(stage.directory / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
                summary = {"samples": len(samples.texts), "pairs": len(pairs), "ties_dropped": ties}
                summary |= {"ended": sum(samples.ended), **_mean_and_std(rewards)}
                io.write_text_atomically(stage.directory / "summary.json", json.dumps(summary, indent=2))
            stage.finish()
        return train_path, eval_path

    @cached_property
    def num_train_pairs(self) -> int:
        """How many training pairs the pairs stage wrote (one per line of ``train.jsonl``)."""
        return sum(1 for line in self.preference_pairs()[0].read_text().splitlines() if line.strip())

    def sft_samples(self) -> list[dict]:
        """The SFT policy's samples behind the pairs: ``prompt``, ``completion``, ``ended`` and ground-truth
        ``reward`` of each of the K per prompt."""
        path = self.preference_pairs()[0].parent / "samples.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def reward_model(self) -> Path:
        """Directory of the Bradley-Terry reward model trained on the pairs from the SFT policy (PPO-RM's reward)."""
        train_path, eval_path = self.preference_pairs()
        inputs = {"pairs": Stage.output_id(train_path.parent), "sft": self.sft_id()}
        inputs["reward_model"] = _fields(self.config.reward_model, "output_dir", "progress_bar")
        stage = Stage(self.run_dir / "reward-model", inputs)
        if not stage.done:
            stage.start()
            config = dataclasses.replace(
                self.config.reward_model, model=str(self.sft_policy()), output_dir=str(stage.directory),
                progress_bar=self.progress_bar, **STAGE_CHECKPOINTS,
            )  # fmt: skip  # the trainer loads the SFT policy with a new score head, seeded by config.seed
            final = train_reward_model(config, None, self.tokenizer, str(train_path), str(eval_path), self.accelerator)
            scores = self._reward_model_reader(final)([row["prompt"] + row["completion"] for row in self.sft_samples()])
            if processes.is_main_process():  # its scores of the SFT samples, to standardize them for PPO
                io.write_text_atomically(stage.directory / "sft-scores.json", json.dumps(_mean_and_std(scores)))
            stage.finish()
        return stage.directory / "final"

    def _reward_model_reader(self, directory: Path):
        return make_reward(str(directory), positive_label=0, output="logit", device=self.accelerator.device)

    def ppo_reward(self, which: str) -> StandardizedReward:
        """PPO's reward: the ground truth (``"ground truth"``, PPO-GT) or the reward model's logit (``"reward
        model"``, PPO-RM), standardized to mean 0 and standard deviation 1 on the SFT policy's samples behind the
        pairs, so that a KL coefficient means the same for both (the paper's PPO normalizes its rewards)."""
        if which == "ground truth":
            statistics = json.loads((self.preference_pairs()[0].parent / "summary.json").read_text())
            return StandardizedReward(self.reward, statistics["reward_mean"], statistics["reward_std"])
        if which == "reward model":
            directory = self.reward_model()
            statistics = json.loads((directory.parent / "sft-scores.json").read_text())
            return StandardizedReward(self._reward_model_reader(directory), statistics["reward_mean"],
                                      statistics["reward_std"])  # fmt: skip
        raise ValueError(f"which: {which!r}; expected 'ground truth' or 'reward model'")

    @cached_property
    def reference(self) -> torch.nn.Module:
        """The SFT policy loaded once: pi_ref of every evaluation (the frontier evaluates many checkpoints)."""
        return self.load_policy(self.sft_policy())

    def evaluate(self, policy: str | Path | torch.nn.Module, num_samples_per_prompt: int = 1) -> Evaluation:
        """Mean ground-truth reward and KL(pi || pi_ref) of a policy's samples on the held-out prompts: ``policy`` is
        a saved policy's directory or a model (a trainer's, prepared or not). Every process computes the same
        evaluation."""
        model = self.load_policy(policy) if isinstance(policy, str | Path) else self.accelerator.unwrap_model(policy)
        return evaluate(
            model, self.reference, self.tokenizer, self.eval_prompts, self.reward, self.config.sampling,
            num_samples_per_prompt, self.sampling_progress_bar,
        )  # fmt: skip
