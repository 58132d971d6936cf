"""``python -m dpo_teach`` is the ``dpo-teach`` command."""

from dpo_teach.cli import main

raise SystemExit(main())
