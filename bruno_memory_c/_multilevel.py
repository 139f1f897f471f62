"""The generic path of MultiLevelCache: levels that are not our own C caches.

When L2 is anything but our ``RedisCache`` (the reference's ``RedisCache``, an
``unittest.mock.AsyncMock(spec=RedisCache)``, a user's class) or L1 is anything but
our ``InMemoryCache``, the C type hands the call to these coroutines. They await the
levels exactly as bruno-memory 0.1.5's ``MultiLevelCache`` does: the same methods,
the same arguments (ttl positionally), the same order, and ``if mlc.l2:`` as the test
for an L2. They add only the counting behind ``MultiLevelCache.stats()``.

Over our own two levels the C type does everything itself, ``clear``, ``get_stats``,
``start`` and ``stop`` included; only ``start()`` called with no running loop comes here
then (it has two steps to defer).
"""
from __future__ import annotations

from typing import Any


async def get(mlc: Any, key: Any) -> Any:
    value = await mlc.l1.get(key)
    if value is not None:
        mlc._count(1, 0, 0, 0, 0)
        return value
    return await get_from_l2(mlc, key)


async def get_from_l2(mlc: Any, key: Any) -> Any:
    """The rest of get() after an L1 miss (C answers L1 hits of our InMemoryCache)."""
    if mlc.l2:
        try:
            value = await mlc.l2.get(key)
        except Exception:
            mlc._count(0, 0, 1, 1, 0)  # no answer: a miss, and an L2 error
            raise
        except BaseException:
            mlc._count(0, 0, 1, 0, 0)  # cancelled before the answer: a miss
            raise
        mlc._count(0, value is not None, value is None, 0, 0)
        if value is not None and mlc.promote_on_hit:
            await mlc.l1.set(key, value)
            mlc._count(0, 0, 0, 0, 1)
        return value
    mlc._count(0, 0, 1, 0, 0)
    return None


async def _l2_call(mlc: Any, awaitable: Any) -> Any:
    try:
        return await awaitable
    except Exception:
        mlc._count(0, 0, 0, 1, 0)
        raise


async def set(mlc: Any, key: Any, value: Any, ttl: Any = None) -> None:  # noqa: A001
    await mlc.l1.set(key, value, ttl)
    if mlc.l2:
        await _l2_call(mlc, mlc.l2.set(key, value, ttl))


async def delete(mlc: Any, key: Any) -> bool:
    l1_result = await mlc.l1.delete(key)
    l2_result = await _l2_call(mlc, mlc.l2.delete(key)) if mlc.l2 else False
    return l1_result or l2_result


async def exists(mlc: Any, key: Any) -> bool:
    if await mlc.l1.exists(key):
        return True
    if mlc.l2 and await _l2_call(mlc, mlc.l2.exists(key)):
        return True
    return False


async def clear(mlc: Any) -> None:
    mlc._clear_begin()  # no L2 read overlapping the clear promotes (fast path)
    try:
        await mlc.l1.clear()
        if mlc.l2:
            await _l2_call(mlc, mlc.l2.clear())
    finally:
        mlc._clear_end()


async def get_many(mlc: Any, keys: Any) -> Any:
    result = await mlc.l1.get_many(keys)
    if mlc.l2:
        # The reference's `[k for k in keys if k not in result]`, counting as it goes
        # (one count per position of keys, as the fast path counts).
        missing = []
        hits = 0
        for k in keys:
            if k not in result:
                missing.append(k)
            else:
                hits += 1
        mlc._count(hits, 0, 0, 0, 0)
        if missing:
            try:
                l2_results = await mlc.l2.get_many(missing)
            except Exception:
                mlc._count(0, 0, len(missing), 1, 0)  # no answer: misses, an L2 error
                raise
            except BaseException:
                mlc._count(0, 0, len(missing), 0, 0)  # cancelled before the answer
                raise
            result.update(l2_results)
            found = sum(1 for k in missing if k in l2_results)
            mlc._count(0, found, len(missing) - found, 0, 0)
            if mlc.promote_on_hit and l2_results:
                await mlc.l1.set_many(l2_results)
                mlc._count(0, 0, 0, 0, len(l2_results))
    elif isinstance(result, dict) and isinstance(keys, (list, tuple)):
        # Counted only when that cannot change what the levels see: another
        # iterable may be spent, another result may record the lookups.
        hits = sum(1 for k in keys if k in result)
        mlc._count(hits, 0, len(keys) - hits, 0, 0)
    return result


async def set_many(mlc: Any, items: Any, ttl: Any = None) -> None:
    await mlc.l1.set_many(items, ttl)
    if mlc.l2:
        await _l2_call(mlc, mlc.l2.set_many(items, ttl))


async def get_stats(mlc: Any) -> dict[str, Any]:
    l1_stats = await mlc.l1.get_stats()
    stats = {"type": "multi_level", "l1": l1_stats}
    if mlc.l2:
        stats["l2"] = await mlc.l2.get_stats()
    return stats


async def start(mlc: Any) -> None:
    await mlc.l1.start()
    if mlc.l2:
        await mlc.l2.connect()


async def stop(mlc: Any) -> None:
    await mlc.l1.stop()
    if mlc.l2:
        await mlc.l2.disconnect()
