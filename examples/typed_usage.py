"""A typed tour of bruno_memory_c: the three caches, checked by ``mypy --strict``.

    python examples/typed_usage.py                    # runs it
    python -m mypy --strict examples/typed_usage.py   # type-checks it (no ignores)

The Redis parts use the server named by REDIS_URL (every key under a prefix of their
own, removed afterwards), or else a throwaway redis-server started on a free port and
stopped afterwards (``bruno_memory_c.testing.RedisServer``; needs ``redis-server`` on
the PATH).

The data methods are typed as ``async def`` (the package's stubs): what they return
can be awaited, gathered, wrapped in a task or run by ``asyncio.run``, and a cache can
be passed wherever a class with the same ``async def`` methods is expected.
"""
from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeAlias

from bruno_memory_c import CacheError, InMemoryCache, MultiLevelCache, RedisCache
from bruno_memory_c.testing import RedisServer, free_port

#: Any of the three: they share the data methods and stats().
Cache: TypeAlias = InMemoryCache | RedisCache | MultiLevelCache


async def exercise(cache: Cache, label: str) -> dict[str, Any]:
    """The API the three caches share, with the answers checked."""
    await cache.set("user:1", {"name": "Ada"}, ttl=60)
    await cache.set_many({"a": 1, "b": [2, 3]}, ttl=30.5)   # ttl: int or float seconds

    user: Any | None = await cache.get("user:1")
    assert user == {"name": "Ada"}, user
    found: dict[str, Any] = await cache.get_many(["a", "b", "missing"])
    assert found == {"a": 1, "b": [2, 3]}, found
    assert await cache.get("missing") is None

    assert await cache.exists("a")
    deleted: bool = await cache.delete("a")
    assert deleted and not await cache.exists("a")

    # What the methods return works wherever asyncio takes a coroutine.
    both: list[Any | None] = await asyncio.gather(*(cache.get(k) for k in ("b", "user:1")))
    assert both == [[2, 3], {"name": "Ada"}], both
    task: asyncio.Task[Any | None] = asyncio.create_task(cache.get("b"))
    assert await task == [2, 3]
    await asyncio.wait_for(cache.clear(), timeout=10)
    assert await cache.get("b") is None

    stats: dict[str, Any] = cache.stats()             # plain call, hit_rate a fraction
    hit_rate: float = stats["hit_rate"]
    assert 0.0 < hit_rate < 1.0, stats
    summary: dict[str, Any] = await cache.get_stats()  # awaitable
    print(f"{label}: hit rate {hit_rate:.2%}, get_stats()['type'] = {summary['type']!r}")
    return stats


async def in_memory() -> None:
    cache = InMemoryCache(max_size=1000, default_ttl=3600, cleanup_interval=60)
    await cache.start()                 # sweep expired entries every 60 s
    assert cache.running
    await exercise(cache, "InMemoryCache")
    cache.max_size = 2                  # settable attributes
    cache.default_ttl = None
    for i in range(3):
        await cache.set(i, f"v{i}")     # any hashable key
    assert await cache.get(0) is None   # evicted: least recently used
    evictions: int = cache.stats()["evictions"]
    print(f"InMemoryCache: max_size={cache.max_size}, evictions={evictions}, "
          f"cleanup every {cache.cleanup_interval} s")
    await cache.stop()
    assert not cache.running


async def redis(url: str, prefix: str) -> None:
    async with RedisCache.from_url(url, prefix=prefix + "redis:", socket_timeout=5.0) as cache:
        assert cache.connected
        await exercise(cache, "RedisCache")
        try:
            await cache.set("bad", {1, 2})       # a set: JSON cannot encode it
        except CacheError as error:
            print(f"RedisCache: CacheError as documented: {error}")
        else:
            raise AssertionError("set() of a value JSON cannot encode did not raise")
        assert not await cache.exists("bad")     # nothing was written
        errors: int = cache.stats()["errors"]
        print(f"RedisCache: stats key {cache.stats_key!r}, errors={errors}")
    assert not cache.connected

    # Nothing listens on this port: connecting raises CacheError.
    nowhere = RedisCache(host="127.0.0.1", port=free_port(), connect_timeout=2.0)
    try:
        await nowhere.connect()
    except CacheError as error:
        print(f"RedisCache: unreachable server: {error}")
    else:
        raise AssertionError("connect() to a closed port did not raise")
    finally:
        await nowhere.disconnect()


class DictLevel:
    """A level of one's own: any class with these async methods can be an L1 or L2."""

    def __init__(self) -> None:
        self.data: dict[Hashable, Any] = {}

    async def get(self, key: Hashable) -> Any | None:
        return self.data.get(key)

    async def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        self.data[key] = value

    async def delete(self, key: Hashable) -> bool:
        return self.data.pop(key, None) is not None

    async def exists(self, key: Hashable) -> bool:
        return key in self.data

    async def clear(self) -> None:
        self.data.clear()

    async def get_many(self, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        return {k: self.data[k] for k in keys if k in self.data}

    async def set_many(self, items: Mapping[Hashable, Any], ttl: float | None = None) -> None:
        self.data.update(items)

    async def get_stats(self) -> dict[str, Any]:
        return {"type": "dict", "size": len(self.data)}


async def multi_level(url: str, prefix: str) -> None:
    l1 = InMemoryCache(max_size=100)
    l2 = RedisCache.from_url(url, prefix=prefix + "ml:")
    cache = MultiLevelCache(l1_cache=l1, l2_cache=l2, promote_on_hit=True)
    await cache.start()                           # L1 cleanup + L2 connect
    try:
        await exercise(cache, "MultiLevelCache")

        await cache.set("key", "value", ttl=300)  # both levels
        assert await cache.get("key") == "value"  # L1 hit
        await l1.delete("key")
        assert await cache.get("key") == "value"  # L2 hit, promoted into L1
        assert await l1.get("key") == "value"
        stats = cache.stats()
        l1_hits: int = stats["l1_hits"]
        l2_hits: int = stats["l2_hits"]
        assert l1_hits >= 1 and l2_hits >= 1, stats
        print(f"MultiLevelCache: L1 hits {l1_hits}, L2 hits {l2_hits}, "
              f"promotions {stats['promotions']}")

        try:
            await cache.set("bad", {1, 2})        # L1 takes it, L2 (JSON) refuses
        except CacheError as error:
            print(f"MultiLevelCache: CacheError from L2: {error}")
        else:
            raise AssertionError("set() of a value JSON cannot encode did not raise")
        await cache.clear()
    finally:
        await cache.stop()                        # L1 cleanup off + L2 disconnect

    # Over a level of one's own (awaited as bruno-memory awaits its levels).
    custom = MultiLevelCache(InMemoryCache(), DictLevel())
    await exercise(custom, "MultiLevelCache over DictLevel")


async def remove_keys(url: str, prefix: str) -> None:
    """Leave nothing behind on a shared server (statistics hashes included)."""
    async with RedisCache.from_url(url, prefix=prefix) as cache:
        await cache.clear()


async def tour(url: str, prefix: str) -> None:
    await in_memory()
    await redis(url, prefix)
    await multi_level(url, prefix)
    await remove_keys(url, prefix)
    print("typed_usage: done")


def main() -> None:
    url = os.environ.get("REDIS_URL")
    prefix = f"bruno-memory-c-typed:{uuid.uuid4().hex[:8]}:"
    if url:
        asyncio.run(tour(url, prefix))
        return
    with RedisServer() as server:
        print(f"(a throwaway redis-server on port {server.port})")
        asyncio.run(tour(server.url, prefix))


if __name__ == "__main__":
    main()
