"""Mirror of ``bruno_memory.utils``: the cache classes."""
from bruno_memory_c.utils.cache import (  # noqa: F401
    REDIS_AVAILABLE,
    CacheError,
    CacheInterface,
    InMemoryCache,
    MultiLevelCache,
    RedisCache,
)

__all__ = ["CacheError", "CacheInterface", "InMemoryCache", "MultiLevelCache", "REDIS_AVAILABLE", "RedisCache"]
