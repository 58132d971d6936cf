"""dpo-teach: learn Direct Preference Optimization by checking every step.

The library map of DESIGN.md, from the bottom up (a module imports only modules above it in this list,
checked by the import-linter contracts in pyproject.toml):

- ``errors``: the project's own errors; ``io``: atomic writes;
- ``losses`` (the DPO loss family and the other pair losses), ``rl`` (PPO's math), ``logprobs`` (the one
  log-prob implementation);
- ``data`` (examples, validation, tokenization, padding, collation), ``sampling`` (ancestral sampling);
- ``newton`` and ``bandit`` (the tabular world with its exact optimum), ``verify`` (the bandit's checks);
- ``train`` (one training run shared by the SFT, DPO, reward-model, Unlikelihood and PPO trainers);
- ``sentiment`` (the GPT-2 sentiment task's pieces); ``frontier`` (presets, stages, methods, the sweep);
- ``bench`` and ``machine`` (``dpo-teach bench``), ``footprint`` and ``gpus`` (what work costs, measured here and
  priced on a datasheet GPU), ``gpu_check`` (``dpo-teach gpu-check``), ``plots`` (figures), ``cli`` (``dpo-teach``).
"""

__version__ = "0.1.0"
