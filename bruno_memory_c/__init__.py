"""bruno_memory_c: the asyncio caches of bruno-memory, in C.

A drop-in replacement for ``bruno_memory.utils.cache``: ``InMemoryCache`` (LRU + TTL),
``RedisCache`` (Redis over a background C I/O thread) and ``MultiLevelCache`` (an L1
in front of an L2). Every data method returns an awaitable that works wherever the
reference's coroutine does.
"""
from ._core import CacheAwaitable, CacheError, InMemoryCache, MultiLevelCache, RedisCache
from ._install import install
from ._interface import CacheInterface

__version__ = "0.1.0"

#: As in bruno_memory.utils.cache; RedisCache needs no optional package here.
REDIS_AVAILABLE = True

CacheInterface.register(InMemoryCache)
CacheInterface.register(RedisCache)
CacheInterface.register(MultiLevelCache)

__all__ = [
    "CacheAwaitable",
    "CacheError",
    "CacheInterface",
    "InMemoryCache",
    "MultiLevelCache",
    "REDIS_AVAILABLE",
    "RedisCache",
    "__version__",
    "install",
]
