"""The one callback contract of every long operation in model/: progress, cancel, log and warnings.

    cb = Callbacks(progress=lambda fraction, message: ..., is_canceled=lambda: ..., log=print)
    fuse_time_series(..., callbacks=cb)

Every field has a no-op default, so ``Callbacks()`` (or passing nothing) runs silently. A long
operation calls ``cb.check("what was stopped")`` at its safe points: when ``is_canceled()`` is
true it raises ``Canceled``, the one exception every operation raises on cancel, after which no
output of that operation is left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class Canceled(Exception):
    """The user canceled; the operation stopped and left no output behind."""


def _no_progress(fraction: float, message: str) -> None:
    return None


def _not_canceled() -> bool:
    return False


def _no_log(message: str) -> None:
    return None


@dataclass(frozen=True)
class Callbacks:
    """progress(fraction 0..1, message), is_canceled() -> bool, log(message), warn(message): a
    result is likely poor (shown as a warning, not an error)."""

    progress: Callable[[float, str], None] = _no_progress
    is_canceled: Callable[[], bool] = _not_canceled
    log: Callable[[str], None] = _no_log
    warn: Callable[[str], None] = _no_log

    def check(self, message: str = "Canceled: no output was written.") -> None:
        """Raises ``Canceled(message)`` when the user has asked to stop."""
        if self.is_canceled():
            raise Canceled(message)


def callbacks_or_default(callbacks: Callbacks | None) -> Callbacks:
    return callbacks if callbacks is not None else Callbacks()
