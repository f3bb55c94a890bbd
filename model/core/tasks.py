"""Tasks a Dask scheduler can pass on without importing the plugin.

    executor.submit(pickle.loads, portable_call(function, *args))

A task goes to the scheduler as ``pickle.loads`` of bytes; unpickling them on the worker makes the
call (``PortableCall.__reduce__``), so only the workers import ``stsfusion``, and the task's own
exceptions come out of ``pickle.loads`` unchanged. In this process the same bytes run the same way.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any


class PortableCall:
    """``function(*args)``, made when the object is unpickled (``__reduce__``)."""

    def __init__(self, function: Callable, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def portable_call(function: Callable, *args: Any) -> bytes:
    """The bytes whose ``pickle.loads`` calls ``function(*args)``."""
    return pickle.dumps(PortableCall(function, *args), protocol=pickle.HIGHEST_PROTOCOL)
