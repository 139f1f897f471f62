"""Run the examples of the "Cache Utilities" documentation page against bruno_memory_c.

`make demo` runs this file. Each example is the documentation's code, as written,
inside an async function (the page uses top-level await); names the page leaves
undefined (`data`) are given small values here.
"""
import asyncio

from bruno_memory_c.utils import InMemoryCache


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


async def main() -> None:
    await in_memory_caching()
    await lru_eviction()
    await ttl_management()
    await batch_operations()
    print("demo: all examples ran")


if __name__ == "__main__":
    asyncio.run(main())
