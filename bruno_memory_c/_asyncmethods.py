"""Make the C methods look like ``async def`` methods to introspection.

``asyncio.iscoroutinefunction``, ``inspect.iscoroutinefunction`` (3.12+) and
``unittest.mock`` (``AsyncMock(spec=...)``, ``create_autospec``) decide whether a method
is async by inspecting the object found on the class. A C method descriptor cannot
carry the markers they look for, so the public classes get a metaclass whose
``__getattribute__`` hands out a marked wrapper when an async method is read *from the
class*. Reading it from an instance (``cache.get``) never involves the metaclass, so
calls keep CPython's fast path for C methods.
"""
from __future__ import annotations

import asyncio.coroutines
import functools
import inspect
import types
from typing import Any

_ASYNCIO_MARKER = getattr(asyncio.coroutines, "_is_coroutine", None)
_INSPECT_MARKER = getattr(inspect, "_is_coroutine_mark", None)  # Python 3.12+

#: Methods that return an awaitable (the reference's ``async def`` methods).
ASYNC_METHODS = frozenset(
    {
        "get", "set", "delete", "exists", "clear", "get_many", "set_many",
        "get_stats", "start", "stop", "connect", "disconnect", "__aenter__", "__aexit__",
    }
)


class AsyncMethod:
    """A C method read from its class, marked as a coroutine function.

    Calling it, or binding it with ``__get__``, behaves exactly like the C method.
    """

    def __init__(self, descriptor: Any) -> None:
        self.__wrapped__ = descriptor
        self.__name__ = descriptor.__name__
        self.__qualname__ = descriptor.__qualname__
        self.__doc__ = descriptor.__doc__
        self.__objclass__ = descriptor.__objclass__
        self.__text_signature__ = descriptor.__text_signature__
        if _ASYNCIO_MARKER is not None:
            self._is_coroutine = _ASYNCIO_MARKER
        if _INSPECT_MARKER is not None:
            self._is_coroutine_marker = _INSPECT_MARKER

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<async method {self.__qualname__!r} (C)>"

    @functools.cached_property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.__wrapped__)


class AsyncMethodsMeta(type):
    """Metaclass of the public cache classes; see the module docstring."""

    def __getattribute__(cls, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in ASYNC_METHODS and isinstance(attr, types.MethodDescriptorType):
            return AsyncMethod(attr)
        return attr
