"""Ground-truth rewards for the sentiment task: a sentiment score of each text.

A reward is a callable ``reward(texts: list[str]) -> torch.Tensor`` of shape ``(N,)``, float32, on
the CPU. As in the paper (Sec. 6.1), the reward scores the whole review the policy produced:
callers pass full texts, ``prompt + completion``, never the completion alone.

- :class:`ClassifierReward`, any Hugging Face sequence classifier: the paper's
  ``siebert/sentiment-roberta-large-english`` (``output="prob"``), the ``tiny`` preset's classifier trained
  here on the synthetic corpus (``dpo_teach.frontier.task.SentimentTask.ground_truth_classifier``), or TRL's
  ``lvwerra/distilbert-imdb`` (``output="logit"``).
- :class:`VaderReward`, a lexicon: p(positive) = (VADER compound + 1) / 2. An option, and notebook 6's lesson in
  what a policy optimized against a proxy finds.
- :func:`make_reward` builds one from a config string.
"""

from __future__ import annotations

import torch

OUTPUTS = ("prob", "logit")


class VaderReward:
    """VADER sentiment (Hutto & Gilbert 2014) as a probability of "positive": ``(compound + 1) / 2`` in [0, 1].

    It runs offline and instantly on a CPU (its lexicon ships inside the ``vaderSentiment`` wheel), it is
    deterministic, and its scores are readable (every word's valence can be looked up in
    ``SentimentIntensityAnalyzer().lexicon``). It was the tiny preset's ground truth until a classifier trained
    on the corpus replaced it: on this corpus it reads a third of short prefixes as exactly neutral.

    Its limits, which a policy optimized against it may exploit: it is a lexicon with rules, so it
    ignores words it does not list ("mediocre", "atrocious", "masterful" score 0), reads plot words as
    opinions ("murder", "funeral"), flips anything within three words after a negation ("nothing short
    of brilliant" scores negative), and its compound score saturates on long texts. Piling up
    positive words ("great wonderful superb") raises it without making a better review.
    """

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """``(N,)`` float32 scores in [0, 1], 0.5 for text with no sentiment."""
        compound = [self.analyzer.polarity_scores(text)["compound"] for text in texts]
        return (torch.tensor(compound, dtype=torch.float32) + 1) / 2


class ClassifierReward:
    """A sequence classifier's score of the positive class: its probability or its raw logit.

    ``output="prob"`` is the paper's reward, p(positive) from ``siebert/sentiment-roberta-large-english``
    (in [0, 1]); ``output="logit"`` is TRL's convention with ``lvwerra/distilbert-imdb`` (the positive
    logit, unbounded). ``positive_label`` is a label name from ``model.config.label2id`` or a class
    index. Texts longer than ``max_length`` tokens are truncated (their end is dropped). The model runs
    in eval mode, without gradients, ``batch_size`` texts at a time on ``device`` (default: CUDA if
    available, else CPU); scores come back on the CPU.
    """

    def __init__(
        self,
        name_or_path: str,
        positive_label: str | int = "POSITIVE",
        output: str = "prob",
        batch_size: int = 32,
        device: str | torch.device | None = None,
        max_length: int = 512,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}; expected one of {OUTPUTS}")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size={batch_size} and max_length={max_length} must be >= 1")
        self.output, self.batch_size = output, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path).to(self.device).eval()
        self.positive_index = _label_index(self.model.config, positive_label, name_or_path)
        # no more tokens than the model has positions (RoBERTa's 514 include 2 offsets; 512 is below them)
        self.max_length = min(max_length, getattr(self.model.config, "max_position_embeddings", max_length))

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """``(N,)`` float32 scores of the positive class, batch by batch."""
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**batch).logits.float()  # (B, num_labels)
            if self.output == "prob":
                scores.append(logits.softmax(dim=-1)[:, self.positive_index])  # (B,)
            else:
                scores.append(logits[:, self.positive_index])  # (B,)
        return torch.cat(scores).cpu() if scores else torch.zeros(0)


class StandardizedReward:
    """``(reward(texts) - mean) / std``: a reward with mean 0 and standard deviation 1 on the texts its statistics
    came from (PPO's rewards, standardized on the SFT policy's samples, so one KL coefficient means the same
    whatever the reward's scale)."""

    def __init__(self, reward, mean: float, std: float) -> None:
        if not std > 0:
            raise ValueError(f"std: must be > 0 to standardize by it, got {std}")
        self.reward, self.mean, self.std = reward, mean, std

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """``(N,)`` float32 standardized scores."""
        return ((self.reward(texts).double() - self.mean) / self.std).float()


def _label_index(config, positive_label: str | int, name_or_path: str) -> int:
    """The class index of ``positive_label`` (a name in ``config.label2id`` or an index)."""
    if isinstance(positive_label, int):
        if not 0 <= positive_label < config.num_labels:
            raise ValueError(
                f"{name_or_path}: positive_label={positive_label} is not a class index; "
                f"the model has {config.num_labels} classes (0..{config.num_labels - 1})"
            )
        return positive_label
    if positive_label not in config.label2id:
        raise ValueError(
            f"{name_or_path}: positive_label={positive_label!r} is not one of the model's labels "
            f"{sorted(config.label2id)}; pass one of them or a class index 0..{config.num_labels - 1}"
        )
    return int(config.label2id[positive_label])


def make_reward(spec: str, **classifier_options) -> VaderReward | ClassifierReward:
    """``"vader"`` -> :class:`VaderReward`; anything else is a classifier's Hub name or local directory.

    ``classifier_options`` (``positive_label``, ``output``, ...) go to :class:`ClassifierReward`.
    """
    if spec == "vader":
        if classifier_options:
            raise ValueError(f"the vader reward takes no options; got {sorted(classifier_options)}")
        return VaderReward()
    return ClassifierReward(spec, **classifier_options)


def label_agreement(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of texts whose score falls on their label's side of 1/2 (p(positive) > 1/2 for label 1,
    < 1/2 for label 0); a score of exactly 1/2 (VADER on a text it finds no sentiment in) counts one half.
    ``scores`` and ``labels`` ``(N,)``."""
    if scores.shape != labels.shape or scores.dim() != 1 or not len(scores):
        raise ValueError(
            f"scores and labels must be (N,) of one shape, got {tuple(scores.shape)}, {tuple(labels.shape)}"
        )
    agree = torch.where(labels.bool(), scores > 0.5, scores < 0.5).double() + 0.5 * (scores == 0.5).double()
    return agree.mean().item()
