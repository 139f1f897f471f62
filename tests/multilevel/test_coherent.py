"""A coherent L1 (issue 14, work in progress): MultiLevelCache drops the L1 entries
that other clients change in Redis (README "MultiLevelCache API": coherence, to come).

Here the other client is a raw connection of the test (``redis_server.command``); the
tests with other OS processes, the cluster and the benchmarks are still to come.
Every wait is a poll with a deadline (no sleep decides a verdict)."""
from __future__ import annotations

import asyncio
import time

import pytest

from bruno_memory_c import InMemoryCache, MultiLevelCache
from tests.support import bounded_by, cache_maker, run_script, until

PREFIX = "coh:"
make_l2 = cache_maker(prefix=PREFIX, socket_timeout=5.0, connect_timeout=5.0)
bounded = bounded_by(30.0)


async def coherent_pair(redis_server, **kw):
    """A MultiLevelCache over a fresh L2, listening (the server tracks for it)."""
    l2 = make_l2(redis_server)
    ml = MultiLevelCache(InMemoryCache(), l2, **kw)
    await bounded(ml.set("ready", 1))
    if kw.get("coherent", True) is not False:
        await until(lambda: tracking_on(redis_server), "the server tracks for the cache")
    return ml, l2


def tracking_on(redis_server) -> bool:
    """Does a client of the server have tracking on (CLIENT LIST flag t)?"""
    for line in redis_server.command("CLIENT", "LIST").splitlines():
        flags = line.split(b"flags=")[1].split(b" ")[0]
        if b"t" in flags:
            return True
    return False


async def l1_has(ml, key) -> bool:
    return await ml.l1.exists(key)


async def l1_drops(ml, key, limit: float = 10.0) -> None:
    """Poll (1 ms apart, with a deadline) until L1 no longer holds key."""
    deadline = time.monotonic() + limit
    while await l1_has(ml, key):
        assert time.monotonic() < deadline, f"L1 still holds {key!r}"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("change", ["overwrite", "delete", "expire", "flushdb"])
async def test_another_clients_change_drops_the_l1_entry(redis_server, change):
    """A's L1 holds k (written through A); another client changes k in Redis: A's L1
    stops serving the old value (polled with a deadline), and A's get then reads what
    Redis has."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        await ml.set("k", "old")
        assert await ml.get("k") == "old" and await l1_has(ml, "k")
        if change == "overwrite":
            redis_server.command("SET", PREFIX + "k", '"new"')
        elif change == "delete":
            redis_server.command("DEL", PREFIX + "k")
        elif change == "expire":
            redis_server.command("PEXPIRE", PREFIX + "k", 1)
        else:
            redis_server.command("FLUSHDB")
        await l1_drops(ml, "k")
        if change == "expire":  # (PEXPIRE's own invalidation may come before the expiry)
            await until(lambda: redis_server.command("EXISTS", PREFIX + "k") == 0, "expired")
        assert await ml.get("k") == ("new" if change == "overwrite" else None)
        stats = ml.stats()
        assert stats["invalidations"] + stats["l1_flushes"] >= 1
    finally:
        await l2.disconnect()


@pytest.mark.parametrize("op", ["set", "delete"])
async def test_another_process_write_drops_the_l1_entry(redis_server, op):
    """Another OS process (tests/scripts/coherent_writer.py, our RedisCache) overwrites
    or deletes k and exits once Redis acknowledged it: A's L1 stops serving the old
    value (polled with a deadline) and A reads what that process wrote."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        await ml.set("k", "old")
        args = [str(redis_server.port), PREFIX, "k", op] + (['"new"'] if op == "set" else [])
        proc = await asyncio.to_thread(run_script, "coherent_writer", *args)
        assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
        await l1_drops(ml, "k")
        assert await ml.get("k") == ("new" if op == "set" else None)
    finally:
        await l2.disconnect()


async def test_own_writes_keep_their_l1_entry(redis_server):
    """NOLOOP: what A writes through itself is what its L1 holds: no invalidation."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        for i in range(20):
            await ml.set("k", i)
        await ml.set_many({"a": 1, "b": 2})
        redis_server.command("SET", PREFIX + "marker", "1")  # (one message, after ours)
        await until(lambda: ml.stats()["invalidations"] >= 1, "the marker's invalidation")
        assert ml.stats()["invalidations"] == 1
        assert await ml.l1.get("k") == 19 and await ml.l1.get("a") == 1
    finally:
        await l2.disconnect()


async def test_coherent_false_is_todays_behaviour(redis_server):
    ml, l2 = await coherent_pair(redis_server, coherent=False)
    try:
        await ml.set("k", "old")
        redis_server.command("SET", PREFIX + "k", '"new"')
        assert await ml.get("k") == "old"  # (served from L1, as bruno-memory does)
        assert not any(b"cmd=subscribe" in line
                       for line in redis_server.command("CLIENT", "LIST").splitlines())
    finally:
        await l2.disconnect()


def test_coherent_true_needs_our_levels():
    class L2:
        async def get(self, key):
            return None

    with pytest.raises(ValueError, match="coherent=True needs"):
        MultiLevelCache(InMemoryCache(), L2(), coherent=True)
    with pytest.raises(TypeError, match="coherent must be"):
        MultiLevelCache(InMemoryCache(), None, coherent=1)


async def test_a_lost_channel_flushes_the_l2_backed_entries(redis_server):
    """The subscriber connection killed (CLIENT KILL): once tracking is back, the L1
    entries that came from or went to L2 are dropped (what changed meanwhile is
    unknown), and the loss is counted as an L1 flush."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        await ml.set("k", 1)
        await ml.l1.set("local", 1)  # (never L2's: kept)
        clients = redis_server.command("CLIENT", "LIST").decode().splitlines()
        subscriber = next(c for c in clients if "cmd=subscribe" in c)
        redis_server.command("CLIENT", "KILL", "ID", subscriber.split()[0].split("=")[1])
        await until(lambda: ml.stats()["l1_flushes"] >= 1, "the flush after the loss", 10)
        assert not await l1_has(ml, "k")
        assert await ml.l1.get("local") == 1
        assert await ml.get("k") == 1  # (read again from L2)
    finally:
        await l2.disconnect()
