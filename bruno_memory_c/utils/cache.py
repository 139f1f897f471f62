"""Mirror of ``bruno_memory.utils.cache``: same names, C implementations."""
from bruno_memory_c import (  # noqa: F401
    REDIS_AVAILABLE,
    CacheError,
    CacheInterface,
    InMemoryCache,
    MultiLevelCache,
    RedisCache,
)

__all__ = ["CacheError", "CacheInterface", "InMemoryCache", "MultiLevelCache", "REDIS_AVAILABLE", "RedisCache"]
