"""Ground-truth rewards for the sentiment task: a sentiment score of each text.

A reward is a callable ``reward(texts: list[str]) -> torch.Tensor`` of shape ``(N,)``, float32, on
the CPU. As in the paper (Sec. 6.1), the reward scores the whole review the policy produced:
callers pass full texts, ``prompt + completion``, never the completion alone.

- :class:`VaderReward`, the ``tiny`` preset's ground truth: p(positive) = (VADER compound + 1) / 2.
- :class:`ClassifierReward`, any Hugging Face sequence classifier: the paper's
  ``siebert/sentiment-roberta-large-english`` (``output="prob"``) or TRL's
  ``lvwerra/distilbert-imdb`` (``output="logit"``).
- :func:`make_reward` builds one from a config string.
"""

from __future__ import annotations

import torch

OUTPUTS = ("prob", "logit")


class VaderReward:
    """VADER sentiment (Hutto & Gilbert 2014) as a probability of "positive": ``(compound + 1) / 2`` in [0, 1].

    Why it is the tiny preset's ground truth: it runs offline and instantly on a CPU (its lexicon
    ships inside the ``vaderSentiment`` wheel), it is deterministic, and its scores are readable
    (every word's valence can be looked up in ``SentimentIntensityAnalyzer().lexicon``).

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
        self.output, self.batch_size, self.max_length = output, batch_size, max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path).to(self.device).eval()
        self.positive_index = _label_index(self.model.config, positive_label, name_or_path)

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
