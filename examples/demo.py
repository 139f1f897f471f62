"""Run the examples of the "Cache Utilities" documentation page against bruno_memory_c.

`make demo` runs this file. Each example is the documentation's code, as written,
inside an async function (the page uses top-level await); names the page leaves
undefined (`data`, `user_data`) are given small values here, and the page's
`create_backend("sqlite", ...)` is a small stand-in backend (below) so that the
cache-aside example runs without the rest of bruno-memory. The Redis examples use
the server named by REDIS_URL or, when it is not set, a throwaway redis-server started
on a free port (and stopped afterwards): the page's `host="localhost"` becomes
`**server`, that server's address (host, port, db, credentials). On a server of
REDIS_URL, every key the demo writes lives under a prefix of its own
(`bruno-memory-c-demo:<random>:`), and it removes what it wrote: the server may hold
someone's data. Every example prints its cache's statistics.
"""
import asyncio
import contextlib
import os
import uuid
from urllib.parse import parse_qs, unquote, urlsplit

from bruno_memory_c.utils import InMemoryCache, MultiLevelCache, RedisCache


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


async def redis_caching(server: dict, ns: str) -> None:
    print("== Redis Caching")
    user_data = {"name": "Ada", "roles": ["admin"]}
    # Create Redis cache
    cache = RedisCache(
        **server,                   # host="localhost" on the page
        prefix=ns + "myapp:"
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
    await cache.delete("session:123")  # leave nothing behind
    await cache.disconnect()


async def multi_level_caching(server: dict, ns: str) -> None:
    print("== Multi-Level Caching")
    # Create tiered cache
    cache = MultiLevelCache(
        l1_cache=InMemoryCache(max_size=100),  # Fast L1
        l2_cache=RedisCache(**server, prefix=ns + "bruno:cache:")   # Distributed L2
    )

    await cache.l2_cache.connect()

    # Checks L1 first, then L2, promotes to L1 on L2 hit
    value = await cache.get("key")

    # Writes to both levels
    await cache.set("key", "value", ttl=300)

    # Combined statistics
    stats = cache.stats()
    print(f"L1 hits: {stats['l1_hits']}")
    print(f"L2 hits: {stats['l2_hits']}")

    assert value is None  # nothing was stored yet
    # Beyond the page: an L1 hit, then an L2 hit promoted into L1.
    assert await cache.get("key") == "value"
    await cache.l1.delete("key")
    assert await cache.get("key") == "value" and await cache.l1.get("key") == "value"
    stats = cache.stats()
    assert (stats["l1_hits"], stats["l2_hits"], stats["misses"]) == (1, 1, 1)
    print(f"L1 hits: {stats['l1_hits']}, L2 hits: {stats['l2_hits']}, "
          f"misses: {stats['misses']}, hit rate: {stats['hit_rate']:.2%}")
    print("get_stats():", await cache.get_stats())
    await cache.delete("key")  # leave nothing behind

    await cache.l2_cache.disconnect()


async def connection_pooling(server: dict, ns: str) -> None:
    print("== Connection Pooling (Redis)")
    cache = RedisCache(
        **server,                   # host="localhost" on the page
        prefix=ns + "bruno:cache:",
        pool_size=10,  # Max 10 connections
        max_overflow=5  # Allow 5 extra if needed
    )
    # Every request is pipelined on one connection: 500 at once all succeed.
    await cache.set("k", "v", ttl=60)
    values = await asyncio.gather(*(cache.get("k") for _ in range(500)))
    assert values == ["v"] * 500
    stats = cache.stats()
    print(f"500 concurrent gets, hit rate: {stats['hit_rate']:.2%}, "
          f"pipeline depth: {stats['commands'] / stats['batches']:.1f}")
    await cache.delete("k")
    await cache.disconnect()


class StandInBackend:
    """A stand-in for bruno-memory's SQLite backend: the two calls the example makes."""

    def __init__(self, database_path: str) -> None:
        self.database_path = database_path
        self.calls = 0

    async def connect(self) -> None:
        pass

    async def retrieve_messages(self, conversation_id: str, limit: int) -> list:
        self.calls += 1
        await asyncio.sleep(0.01)  # a database round trip
        return [{"conversation": conversation_id, "n": i, "text": f"message {i}"}
                for i in range(min(limit, 3))]


def create_backend(kind: str, database_path: str) -> StandInBackend:
    assert kind == "sqlite"
    return StandInBackend(database_path)


async def integration_with_backend() -> None:
    print("== Integration with Backend")
    # Create backend with caching
    backend = create_backend("sqlite", database_path="memory.db")
    cache = InMemoryCache(max_size=500)

    await backend.connect()

    async def get_cached_messages(conv_id: str):
        """Get messages with caching."""
        cache_key = f"messages:{conv_id}"

        # Try cache first
        cached = await cache.get(cache_key)
        if cached:
            return cached

        # Fallback to backend
        messages = await backend.retrieve_messages(
            conversation_id=conv_id,
            limit=50
        )

        # Cache for 5 minutes
        await cache.set(cache_key, messages, ttl=300)
        return messages

    first = await get_cached_messages("conv-1")
    for _ in range(9):
        assert await get_cached_messages("conv-1") == first
    assert backend.calls == 1  # nine of ten reads came from the cache
    stats = cache.stats()
    print(f"backend calls: {backend.calls} of 10 reads, hit rate: {stats['hit_rate']:.2%}")


def server_options(url: str) -> dict:
    """RedisCache keyword arguments for a redis:// or unix:// URL."""
    parts = urlsplit(url)
    options: dict = {}
    if parts.scheme == "unix":
        options["unix_socket_path"] = unquote(parts.path)
        db = parse_qs(parts.query).get("db", ["0"])[0]
    else:
        options["host"] = parts.hostname or "localhost"
        options["port"] = parts.port or 6379
        db = parts.path.lstrip("/") or "0"
    options["db"] = int(db)
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    return options


@contextlib.contextmanager
def redis_location():
    """(server options, key namespace): REDIS_URL's server, or a throwaway one."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield server_options(url), f"bruno-memory-c-demo:{uuid.uuid4().hex[:8]}:"
        return
    from bruno_memory_c.testing import RedisServer

    with RedisServer() as server:
        print(f"(started a throwaway redis-server on port {server.port})")
        yield {"host": "127.0.0.1", "port": server.port}, ""


async def remove_statistics(server: dict, ns: str) -> None:
    """On a shared server, the statistics hashes the examples' caches created."""
    async with RedisCache(**server, prefix=ns) as cache:
        for prefix in ("myapp:", "bruno:cache:"):
            await cache.delete(prefix + "stats")


async def main(server: dict | None = None, ns: str = "") -> None:
    await in_memory_caching()
    await lru_eviction()
    await ttl_management()
    await batch_operations()
    await integration_with_backend()
    if server is not None:
        await redis_caching(server, ns)
        await multi_level_caching(server, ns)
        await connection_pooling(server, ns)
        if ns:
            await remove_statistics(server, ns)
    print("demo: all examples ran")


if __name__ == "__main__":
    with redis_location() as (server, ns):
        asyncio.run(main(server, ns))
