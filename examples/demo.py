"""Run the examples of the "Cache Utilities" documentation page against bruno_memory_c.

`make demo` runs this file. Each example is the documentation's code, as written,
inside an async function (the page uses top-level await); names the page leaves
undefined (`data`, `user_data`) are given small values here. The Redis examples use
the server named by REDIS_URL or, when it is not set, a throwaway redis-server started
on a free port (and stopped afterwards).
"""
import asyncio
import contextlib
import os
from urllib.parse import urlsplit

from bruno_memory_c.utils import InMemoryCache, RedisCache


async def in_memory_caching() -> None:
    print("== In-Memory Caching")
    # Create cache with max 1000 items
    cache = InMemoryCache(max_size=1000)

    # Set with TTL
    await cache.set("key1", "value1", ttl=300)  # 5 minutes

    # Get value
    value = await cache.get("key1")

    # Batch operations
    await cache.set_many({
        "key2": "value2",
        "key3": "value3"
    }, ttl=600)

    values = await cache.get_many(["key1", "key2", "key3"])

    # Statistics
    stats = cache.stats()
    print(f"Hit rate: {stats['hit_rate']:.2%}")

    assert value == "value1"
    assert values == {"key1": "value1", "key2": "value2", "key3": "value3"}
    print("value:", value)
    print("values:", values)
    print("stats():", stats)
    print("get_stats():", await cache.get_stats())


async def lru_eviction() -> None:
    print("== LRU Eviction")
    cache = InMemoryCache(max_size=100)

    # When cache is full, least recently accessed items are evicted
    for i in range(150):
        await cache.set(f"key{i}", f"value{i}")

    # Only last 100 items remain
    stats = await cache.get_stats()
    assert stats["size"] == 100 and stats["evictions"] == 50
    assert await cache.get("key49") is None and await cache.get("key50") == "value50"
    print("size:", stats["size"], "evictions:", stats["evictions"])


async def ttl_management() -> None:
    print("== TTL Management")
    data = {"user": "ada", "scopes": ["read"]}
    cache = InMemoryCache(
        max_size=1000,
        cleanup_interval=60  # Check every 60 seconds
    )
    await cache.start()

    # Set short TTL for temporary data
    await cache.set("temp", data, ttl=10)

    assert await cache.get("temp") == data
    # A short ttl, to watch an entry expire without waiting 10 seconds.
    await cache.set("blink", "gone soon", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await cache.get("blink") is None
    await cache.stop()
    print("stats():", cache.stats())


async def batch_operations() -> None:
    print("== Batch Operations")
    cache = InMemoryCache()
    data = {f"item{i}": i for i in range(100)}

    # Slower: individual sets
    for key, value in data.items():
        await cache.set(key, value)

    # Faster: batch set
    await cache.set_many(data, ttl=300)

    found = await cache.get_many(list(data))
    assert found == data
    print("entries:", len(found), "hit rate:", f"{cache.stats()['hit_rate']:.2%}")


async def redis_caching(host: str, port: int) -> None:
    print("== Redis Caching")
    user_data = {"name": "Ada", "roles": ["admin"]}
    # Create Redis cache
    cache = RedisCache(
        host=host,
        port=port,
        prefix="myapp:"
    )

    await cache.connect()

    # Use same API as InMemoryCache
    await cache.set("session:123", user_data, ttl=3600)
    data = await cache.get("session:123")

    assert data == user_data
    print("data:", data)
    print("get_stats():", await cache.get_stats())
    stats = cache.stats()
    print(f"Hit rate: {stats['hit_rate']:.2%}")
    await cache.clear()
    await cache.disconnect()


@contextlib.contextmanager
def redis_location():
    """(host, port) of REDIS_URL, or of a throwaway server started here."""
    url = os.environ.get("REDIS_URL")
    if url:
        parts = urlsplit(url)
        yield parts.hostname or "localhost", parts.port or 6379
        return
    from bruno_memory_c.testing import RedisServer

    with RedisServer() as server:
        print(f"(started a throwaway redis-server on port {server.port})")
        yield "127.0.0.1", server.port


async def main(host: str | None = None, port: int | None = None) -> None:
    await in_memory_caching()
    await lru_eviction()
    await ttl_management()
    await batch_operations()
    if host is not None:
        await redis_caching(host, port)
    print("demo: all examples ran")


if __name__ == "__main__":
    with redis_location() as (host, port):
        asyncio.run(main(host, port))
