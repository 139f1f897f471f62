"""bruno_memory_c: the asyncio caches of bruno-memory, in C.

A drop-in replacement for ``bruno_memory.utils.cache``: ``InMemoryCache`` (LRU + TTL),
with ``RedisCache`` and ``MultiLevelCache`` to follow. Every data method returns an
awaitable that works wherever the reference's coroutine does.
"""
from . import _core
from ._asyncmethods import AsyncMethodsMeta as _AsyncMethodsMeta
from ._core import CacheAwaitable, CacheError, InMemoryCache, RedisCache
from ._interface import CacheInterface

# Async methods read from the class look like `async def` to asyncio, inspect and
# unittest.mock (AsyncMock(spec=InMemoryCache)); instances are untouched.
_core._set_metatype(InMemoryCache, _AsyncMethodsMeta)
_core._set_metatype(RedisCache, _AsyncMethodsMeta)

__version__ = "0.1.0"

#: As in bruno_memory.utils.cache; RedisCache needs no optional package here.
REDIS_AVAILABLE = True

CacheInterface.register(InMemoryCache)
CacheInterface.register(RedisCache)

__all__ = [
    "CacheAwaitable",
    "CacheError",
    "CacheInterface",
    "InMemoryCache",
    "REDIS_AVAILABLE",
    "RedisCache",
    "__version__",
]
