"""dpo-teach: learn Direct Preference Optimization by checking every step.

Modules (see DESIGN.md): ``losses`` (the DPO loss family), ``bandit`` (the tabular world with its
exact optimum), ``newton`` (the solver ``bandit`` uses), ``plots``, ``cli``.
"""

__version__ = "0.1.0"
