"""Ctrl-C during training: a request to stop at the end of the step in progress, not an exception inside it.

A ``KeyboardInterrupt`` raised in the middle of a step could land between the optimizer's update and the
scheduler's, or between an update and its checkpoint, leaving nothing consistent to save. So while a
:class:`StopRequest` is active, SIGINT only sets :attr:`StopRequest.requested`; the run (``dpo_teach.train.run``)
looks at it when the step is complete, writes a checkpoint of that step and stops. The checkpoint is the one an
uninterrupted run would have written there (weights, optimizer, scheduler and the random streams as the next step
would find them), so resuming from it continues bit for bit, dropout included. A second Ctrl-C raises
``KeyboardInterrupt`` at once, as usual, for a step too long to wait for: the last checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

MESSAGE = b"\nCtrl-C: stopping after this step, with a checkpoint of it (Ctrl-C again to stop at once)\n"


class StopRequest:
    """Within ``with StopRequest(...)``, the first SIGINT sets :attr:`requested` instead of raising (module docstring).

    Signals reach only the main thread; in any other thread this does nothing and Ctrl-C keeps its usual effect.
    """

    def __init__(self, announce: bool) -> None:
        self.announce = announce
        """Print :data:`MESSAGE` when Ctrl-C arrives (the main process of several)."""
        self.requested = False
        self._previous = None  # the handler to restore; None while none is installed here

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            # a handler installed outside Python reads as None: Python's own, KeyboardInterrupt, is the closest
            self._previous = signal.signal(signal.SIGINT, self._on_interrupt) or signal.default_int_handler
        return self

    def __exit__(self, *exception) -> None:
        self.release()

    def release(self) -> None:
        """Give Ctrl-C back its previous effect from now on (again: a no-op)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_interrupt(self, signum: int, frame) -> None:
        self.requested = True
        self.release()  # the next Ctrl-C does what it did before: stop at once
        if self.announce:
            with contextlib.suppress(OSError):
                os.write(2, MESSAGE)  # a raw write: print() could re-enter a write the signal interrupted
