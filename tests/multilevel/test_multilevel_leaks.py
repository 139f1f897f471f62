"""MultiLevelCache gives back what it takes, on every path (README "MultiLevelCache API").

The MultiLevelCache counterpart of inmemory/test_leaks.py (InMemoryCache) and the leak
tests of redis/test_redis_faults.py (RedisCache); ARCHITECTURE "Failure model". Each path through the fast path (our InMemoryCache in
front of our RedisCache, all in C) is exercised: L1 hits, L2 hits with promotion, misses,
set, set_many, get_many, delete, exists, awaitables never awaited (with and without a
running loop), tasks cancelled mid-flight, requests timing out on a stalled server,
requests failing on a dead one, a loop closed under requests in flight; then the generic
path with an AsyncMock L2 and the L1-only path. After a warm-up:
- `sys.getrefcount` of keys, values, the caches and the types is back at its baseline;
- tracemalloc's traced memory, and the C allocator's (tests/support/leakmeter.py's
  native_heap_bytes(): the I/O thread's requests, replies and vias, which tracemalloc
  cannot see), stay under small bounds;
- CacheAwaitable objects do not accumulate;
- a MultiLevelCache in a reference cycle (in its own L1, ...) is collected.

Every check works in the normal build and in the ASan build (PYTHONMALLOC=malloc, where
sys.getallocatedblocks() is 0 and glibc's mallinfo2() sees nothing: the C allocator is
measured there by ASan's own statistics; see tests/support/leakmeter.py).
"""
from __future__ import annotations

import asyncio
import gc
import sys
import time
import weakref
from unittest.mock import AsyncMock

import pytest

from bruno_memory_c import CacheAwaitable, CacheError, InMemoryCache, MultiLevelCache, RedisCache
from bruno_memory_c.testing import RedisServer, free_port
from tests.support import (
    HANG, RECOVER, TIMEOUT, awaitables_alive, bounded_by, cache_maker, drive,
    wait_in_flight_zero,
)
from tests.support.leakmeter import Growth

rc = sys.getrefcount
PREFIX = "mll:"          # (also the make_ml fixture's, multilevel/conftest.py)
# L2 failures are logged by design, and captured records would hold the keys counted here.
pytestmark = pytest.mark.usefixtures("quiet_cache_logger")

make_l2 = cache_maker(prefix=PREFIX, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
bounded = bounded_by(HANG)


# ---------------------------------------------------------------------- helpers


def fresh(*parts: str) -> str:
    """A new, uninterned str: its refcount is ours alone."""
    return "".join(parts)


async def wait_until_l2_takes_the_probe(m: MultiLevelCache, limit: float = RECOVER) -> None:
    """Write the one key "probe" through the cache until L2 takes it (set raises
    nothing): the same key at every attempt."""
    deadline = time.monotonic() + limit
    while True:
        try:
            await bounded(m.set("probe", 1))
            return
        except CacheError:
            assert time.monotonic() < deadline, m.stats()
            await asyncio.sleep(0.05)


async def settle(l2: RedisCache | None = None) -> None:
    """Every request finished, every callback run, every cycle collected."""
    if l2 is not None:
        await wait_in_flight_zero(l2)
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()


def refcounts(objects) -> list[int]:
    return [rc(o) for o in objects]


# ------------------------------------------------------------- refcounts, fast path


async def every_outcome(m: MultiLevelCache, l1: InMemoryCache, key: str, key2: str,
                        absent: str, value: list, many: list) -> None:
    """One round of every fast-path operation on these objects. Each L2 call may fail
    (the server may be dead or asleep): failures are absorbed as the contract says."""

    async def write(aw):
        try:
            await aw
        except CacheError:
            pass

    await write(m.set(key, value))
    await m.get(key)                      # L1 hit
    drive(l1.delete(key))
    await m.get(key)                      # L1 miss: L2 hit + promotion (or a failure)
    await m.get(absent)                   # miss
    await m.get_many(many)                # L1 hit, L2 part, misses
    await m.exists(key)
    await m.exists(absent)
    await write(m.set_many({key2: value, key: value}))
    await m.get_many(many)
    m.get(absent)                         # never awaited
    m.get_many([absent, key2])            # never awaited
    m.exists(absent)                      # never awaited
    task = asyncio.ensure_future(m.get(absent))
    task2 = asyncio.ensure_future(m.get_many([absent, key]))
    await asyncio.sleep(0)
    task.cancel()                         # cancelled mid-flight
    task2.cancel()
    await asyncio.gather(task, task2, return_exceptions=True)
    aw = m.get(absent)
    aw.close()                            # closed while pending
    del aw
    await m.delete(key2)
    await m.delete(key)


async def test_refcounts_every_outcome_up_down_and_back(redis_server, make_ml):
    m, l1, l2 = make_ml(redis_server.port, l1_size=100)
    await bounded(m.start())
    key, key2, absent = fresh("ref-", "key"), fresh("ref-", "key2"), fresh("ref-", "absent")
    value = [fresh("ref-", "value"), {"n": 1}]
    many = [key, key2, absent]
    objects = [key, key2, absent, value, many, m, l1, l2]

    async def rounds(n):
        for _ in range(n):
            await every_outcome(m, l1, key, key2, absent, value, many)
        await settle(l2)
        drive(l1.clear())
        gc.collect()

    await rounds(30)  # warm-up: free lists, buffers, the loop's bridge
    base = refcounts(objects)
    await rounds(300)
    stats = m.stats()
    assert stats["l2_hits"] > 0 and stats["promotions"] > 0 and stats["misses"] > 0
    assert refcounts(objects) == base, "server up"

    redis_server.kill()
    await rounds(300)  # every L2 request fails now
    assert m.stats()["l2_errors"] > 0
    assert refcounts(objects) == base, "server dead"

    await asyncio.to_thread(redis_server.restart)
    await wait_until_l2_takes_the_probe(m)
    await rounds(50)
    assert refcounts(objects) == base, "server back"


async def test_refcounts_of_timed_out_and_cancelled_reads(redis_server, make_ml):
    """Reads that time out in a sleeping server, some cancelled while they wait, some
    with a write of their key while they wait (so their answer must not promote)."""
    m, l1, l2 = make_ml(redis_server.port)
    await bounded(m.start())
    key = fresh("stall-", "key")
    value = [fresh("stall-", "value")]
    keys = [key, fresh("stall-", "other")]
    await bounded(l2.set(key, value))  # (in L2 only: reads of it go there)
    await settle(l2)
    objects = [key, value, keys, m, l1, l2]
    base = refcounts(objects)
    staller = redis_server.stall(3600)  # until the test ends it: every L2 part times out
    try:
        tasks = [asyncio.ensure_future(m.get(key)) for _ in range(40)]
        tasks += [asyncio.ensure_future(m.get_many(keys)) for _ in range(20)]
        tasks += [asyncio.ensure_future(m.exists(key)) for _ in range(10)]
        await asyncio.sleep(0.05)
        for t in tasks[::3]:
            t.cancel()
        try:
            await bounded(m.set(key, value))  # marks the reads stale; L2 part times out
        except CacheError:
            pass
        results = await bounded(asyncio.gather(*tasks, return_exceptions=True))
        assert all(r is None or r is False or r == {key: value} or r == {}
                   or isinstance(r, asyncio.CancelledError) for r in results), results
        del tasks, results
    finally:
        await asyncio.to_thread(staller.cancel)
    await wait_until_l2_takes_the_probe(m)
    await settle(l2)
    await bounded(m.clear())  # (L1 emptied, and the coherent L1's record of its keys)
    gc.collect()
    assert refcounts(objects) == base


async def test_unawaited_awaitables_in_a_running_loop(redis_server, make_ml):
    """Awaitables of every method, made and dropped without being awaited: they still
    complete, and hold nothing afterwards."""
    m, l1, l2 = make_ml(redis_server.port)
    await bounded(m.start())
    key, absent = fresh("unawaited-", "key"), fresh("unawaited-", "absent")
    value = {"v": [fresh("unawaited-", "value")]}
    batch = [key, absent]
    objects = [key, absent, value, batch, m, l1, l2]

    def fire(n):
        for i in range(n):
            m.set(key, value)
            m.get(key)
            drive(l1.delete(key))
            m.get(key)  # L1 miss
            m.get(absent)
            m.get_many(batch)
            m.exists(absent)
            m.set_many({key: value})
            m.delete(absent)

    fire(50)
    await settle(l2)
    drive(l1.clear())
    gc.collect()
    base = refcounts(objects)
    aw_base = awaitables_alive()
    fire(2000)
    await settle(l2)
    assert await bounded(m.get(key)) == value  # the last set completed, L1 and L2
    drive(l1.clear())
    gc.collect()
    assert refcounts(objects) == base
    assert awaitables_alive() <= aw_base


def test_unawaited_awaitables_without_a_loop(loop_factory):
    """Made with no running loop, an L2 request waits in its awaitable until awaited;
    dropped (or closed, thrown into, sent to outside a loop) it is freed unsent, its
    via and its read count with it. Afterwards the cache works normally."""
    server = RedisServer().start()
    try:
        l1 = InMemoryCache()
        l2 = make_l2(server.port)
        m = MultiLevelCache(l1, l2)
        key, absent = fresh("noloop-", "key"), fresh("noloop-", "absent")
        value = [fresh("noloop-", "value")]
        batch = [key, absent]
        objects = [key, absent, value, batch, m, l1, l2]
        base = None
        for i in range(501):
            if i == 1:  # (after a first round: the coherent L1 records each key once)
                gc.collect()
                base = refcounts(objects)
            m.get(absent)
            m.get_many(batch)
            m.exists(absent)
            m.delete(absent)
            aw = m.get(absent)
            aw.close()
            aw = m.get(absent)
            with pytest.raises(ValueError):
                aw.throw(ValueError)
            aw = m.get(absent)
            with pytest.raises(RuntimeError):
                aw.send(None)  # no running event loop
            del aw
            try:
                m.set(key, value)  # L1 written now; the L2 write is dropped unsent
            except CacheError:
                pass
            drive(l1.delete(key))
        gc.collect()
        assert refcounts(objects) == base
        assert l2.stats()["in_flight"] == 0

        async def afterwards():
            await m.set(key, value)
            drive(l1.delete(key))
            got = await m.get(key)  # an L2 hit, promoted: no stale read count left
            assert drive(l1.get(key)) == value
            await l2.disconnect()
            return got

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            assert runner.run(afterwards()) == value
        drive(l1.clear())
        del afterwards
        gc.collect()
        assert refcounts(objects) == base
    finally:
        server.close()


def test_loop_closed_with_reads_in_flight(loop_factory):
    """A loop that ends while L2 requests made through the cache are in flight: the
    requests are dropped with their loop, and nothing stays referenced.

    The release is lazy: requests of a closed loop's (retired) bridge are dropped when
    some later Redis request is made on any loop (bridge.c: sweep_retired). With only
    L1 hits afterwards they would stay in flight, holding their keys, the
    MultiLevelCache and the RedisCache; so the test makes one L2 request first."""
    server = RedisServer().start()
    try:
        l1 = InMemoryCache()
        l2 = make_l2(server.port)
        m = MultiLevelCache(l1, l2)
        key = fresh("closed-", "key")
        value = [fresh("closed-", "value")]
        objects = [key, value, m, l1, l2]

        async def setup():
            await m.set(key, value)
            drive(l1.clear())

        async def fire():
            for _ in range(300):
                m.get(key)
                m.get_many([key])
                m.exists(key)
                m.delete(fresh("nothing"))
                try:
                    m.set(fresh("other"), 1)
                except CacheError:
                    pass

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(setup())
        gc.collect()
        base = refcounts(objects)
        for _ in range(3):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(fire())  # returns at once: the loop closes under them

        async def one_l2_request():
            deadline = time.monotonic() + HANG
            while True:
                await l2.get(fresh("sweep"))  # sweeps the retired bridges
                if l2.stats()["in_flight"] == 0:
                    return
                assert time.monotonic() < deadline, l2.stats()
                await asyncio.sleep(0.05)

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(one_l2_request())
            runner.run(l2.disconnect())
        drive(l1.clear())  # anything promoted before the loops closed
        gc.collect()
        assert refcounts(objects) == base
    finally:
        server.close()


async def test_dropped_cache_with_reads_in_flight_is_freed(redis_server):
    """A MultiLevelCache dropped while its L2 reads are in flight lives until they
    finish (they refer to it), then is freed; its levels too."""
    refs = []
    for i in range(20):
        l1 = InMemoryCache()
        l2 = make_l2(redis_server.port)
        m = MultiLevelCache(l1, l2)
        await bounded(m.set("k", [i]))
        drive(l1.clear())
        for _ in range(20):
            m.get("k")
            m.get_many(["k", "x"])
        refs.append((weakref.ref(m), weakref.ref(l1), weakref.ref(l2)))
        del m, l1, l2
    deadline = time.monotonic() + HANG
    while any(r() is not None for trio in refs for r in trio):
        assert time.monotonic() < deadline, "caches not freed after their reads finished"
        await asyncio.sleep(0.02)
        gc.collect()


# ------------------------------------------------------------------- traced memory


async def mixed_load(m: MultiLevelCache, n: int, nkeys: int = 300, workers: int = 100):
    """n operations from `workers` tasks over nkeys shared keys (more keys than L1 holds,
    so L1 hits, L2 hits with promotion and misses all occur). Failures are allowed (the
    tests also run it against a dead server)."""

    async def worker(w):
        for j in range(n // workers):
            k = f"K{(w * 31 + j * 7) % nkeys}"
            op = j % 10
            if op == 0:
                try:
                    await m.set(k, [w, "v"])
                except CacheError:
                    pass
            elif op == 1:
                await m.exists(k)
            elif op == 2:
                await m.get_many([k, f"K{(w + j) % nkeys}", "absent"])
            elif op == 3:
                await m.delete(f"K{(w + j * 3) % nkeys}")
            elif op == 4:
                await m.get("absent")
            elif op == 5:
                try:
                    await m.set_many({k: [w], f"K{(w + 1) % nkeys}": {"w": w}})
                except CacheError:
                    pass
            else:
                await m.get(k)

    await bounded(asyncio.gather(*(worker(w) for w in range(workers))), 300)


async def test_memory_flat_l2_up(redis_server, make_ml):
    m, l1, l2 = make_ml(redis_server.port, l1_size=64, socket_timeout=10.0,
                        connect_timeout=5.0)
    await bounded(m.start())
    await mixed_load(m, 40_000)  # warm-up
    await settle(l2)
    before = m.stats()
    aw_before = awaitables_alive()
    with Growth() as growth:
        await mixed_load(m, 200_000)
        await settle(l2)
    after = m.stats()
    for name in ("l1_hits", "l2_hits", "misses", "promotions"):
        assert after[name] > before[name], (name, after)
    assert after["l2_errors"] == 0
    # 200,000 operations, most of them L2 requests: a leak of 4 bytes per operation
    # would be 800 KB. (Measured without a leak: tens of KB in either build; leaking
    # the 8 or 16 bytes of a request's reply array shows as 1.8 MB.)
    assert growth.traced < 512 * 1024, growth
    assert growth.native < 512 * 1024, growth
    assert awaitables_alive() <= aw_before


async def test_memory_flat_l2_down(redis_server, make_ml):
    m, l1, l2 = make_ml(redis_server.port, l1_size=64)
    await bounded(m.start())
    await mixed_load(m, 5_000)
    redis_server.kill()
    await mixed_load(m, 20_000)  # warm-up, against the dead server
    await settle(l2)
    errors = m.stats()["l2_errors"]
    aw_before = awaitables_alive()
    with Growth() as growth:
        await mixed_load(m, 150_000)
        await settle(l2)
    assert m.stats()["l2_errors"] > errors
    # a leak of 4 bytes per operation would be 600 KB
    assert growth.traced < 512 * 1024, growth
    assert growth.native < 512 * 1024, growth
    assert awaitables_alive() <= aw_before


async def test_memory_flat_under_cancellation(redis_server, make_ml):
    """Rounds of L1-miss reads and writes, half of them cancelled at once, half a moment
    later; memory and awaitables stay flat, nothing stays in flight."""
    m, l1, l2 = make_ml(redis_server.port, l1_size=16, socket_timeout=5.0)
    await bounded(m.start())
    await bounded(m.set_many({f"c{i}": [i] for i in range(200)}))

    async def rounds(n):
        for r in range(n):
            tasks = [asyncio.ensure_future(m.get(f"c{(r + i) % 200}")) for i in range(60)]
            tasks += [asyncio.ensure_future(m.get_many([f"c{i}", f"c{i + 1}", "x"]))
                      for i in range(0, 20)]
            tasks += [asyncio.ensure_future(m.set(f"c{i}", [i])) for i in range(10)]
            tasks += [asyncio.ensure_future(m.exists(f"z{i}")) for i in range(10)]
            await asyncio.sleep(0)
            for t in tasks[::2]:
                t.cancel()
            await asyncio.sleep(0.0005)
            for t in tasks[1::4]:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert not [x for x in results if isinstance(x, BaseException)
                        and not isinstance(x, asyncio.CancelledError)], results

    await rounds(30)
    await settle(l2)
    aw_before = awaitables_alive()
    with Growth() as growth:
        await rounds(300)
        await settle(l2)
    # 30,000 operations, most of them L2 requests, half cancelled: 8 bytes each
    # would be 240 KB (leaking a request's reply array shows as 450 KB)
    assert growth.traced < 256 * 1024, growth
    assert growth.native < 192 * 1024, growth
    assert awaitables_alive() <= aw_before
    assert m.stats()["l2_errors"] == 0


# ------------------------------------------------------------------ generic path


def mock_l2(fail_every: int = 0) -> AsyncMock:
    """An AsyncMock(spec=RedisCache) answering like a Redis holding "K0".."K9" (as
    [i]); with fail_every=n, every n-th get raises CacheError."""
    l2 = AsyncMock(spec=RedisCache)
    calls = {"n": 0}

    async def get(key):
        calls["n"] += 1
        if fail_every and calls["n"] % fail_every == 0:
            raise CacheError("L2 down")
        return [int(key[1:])] if key[:1] == "K" and key[1:].isdigit() and int(key[1:]) < 10 \
            else None

    async def get_many(keys):
        return {k: [int(k[1:])] for k in keys if k[:1] == "K" and int(k[1:]) < 10}

    l2.get.side_effect = get
    l2.get_many.side_effect = get_many
    l2.exists.return_value = False
    l2.delete.return_value = True
    l2.set.return_value = None
    l2.set_many.return_value = None
    return l2


async def generic_round(m: MultiLevelCache, l1: InMemoryCache, key: str, value, i: int):
    drive(l1.clear())
    await m.set(key, value)
    await m.get(key)                          # L1 hit
    await m.get(f"K{i % 10}")                 # L2 hit, promoted
    await m.get(f"K{10 + i % 10}")            # miss
    await m.get_many([key, f"K{(i + 1) % 10}", f"M{i % 10}"])
    await m.exists(key)
    await m.exists("absent")
    await m.set_many({key: value, "other": [i]})
    await m.delete(key)
    m.get("K3")                               # never awaited (a coroutine: closed)
    task = asyncio.ensure_future(m.get(f"K{i % 10}"))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_generic_path_asyncmock_memory_and_refcounts():
    """The generic path (an AsyncMock L2): the coroutines of _multilevel.py, promotion
    through l1.set, L2 failures raised and counted. The mock's call history is reset
    each round (it keeps every argument by design)."""
    l1 = InMemoryCache(max_size=50)
    l2 = mock_l2(fail_every=7)
    m = MultiLevelCache(l1, l2)
    key = fresh("generic-", "key")
    value = [fresh("generic-", "value")]
    objects = [key, value, m, l1]

    async def rounds(n):
        for i in range(n):
            try:
                await generic_round(m, l1, key, value, i)
            except CacheError:
                pass
            l2.reset_mock(return_value=False, side_effect=False)
        drive(l1.clear())
        await asyncio.sleep(0)
        gc.collect()

    import warnings
    with warnings.catch_warnings():
        # m.get() on the generic path is a coroutine: dropping it unawaited warns.
        warnings.simplefilter("ignore", RuntimeWarning)
        await rounds(200)
        base = refcounts(objects)
        aw_before = awaitables_alive()
        with Growth() as growth:
            await rounds(3000)
    s = m.stats()
    assert s["l2_hits"] > 0 and s["promotions"] > 0 and s["misses"] > 0
    assert s["l2_errors"] > 0
    assert growth.traced < 1024 * 1024, growth
    assert growth.native < 1024 * 1024, growth
    assert refcounts(objects) == base
    assert awaitables_alive() <= aw_before


async def test_generic_path_user_l2_class_refcounts():
    """A plain user class as L2 (no mock bookkeeping): exact refcounts of the key, the
    value and of what L2 hands back, which L1 holds after promotion and then drops."""

    class UserL2:
        def __init__(self):
            self.data = {}

        def __bool__(self):
            return True

        async def get(self, key):
            return self.data.get(key)

        async def set(self, key, value, ttl=None):
            self.data[key] = value

        async def get_many(self, keys):
            return {k: self.data[k] for k in keys if k in self.data}

        async def set_many(self, items, ttl=None):
            self.data.update(items)

        async def delete(self, key):
            return self.data.pop(key, None) is not None

        async def exists(self, key):
            return key in self.data

        async def clear(self):
            self.data.clear()

    l1 = InMemoryCache()
    l2 = UserL2()
    m = MultiLevelCache(l1, l2)
    key, key2 = fresh("user-", "key"), fresh("user-", "key2")
    value = [fresh("user-", "value")]
    objects = [key, key2, value, m, l1, l2]
    base = refcounts(objects)
    for _ in range(500):
        await m.set(key, value)
        drive(l1.delete(key))
        assert await m.get(key) is value          # L2 hit, promoted
        assert await m.get(key) is value          # L1 hit
        await m.set_many({key2: value})
        drive(l1.clear())
        assert await m.get_many([key, key2, "x"]) == {key: value, key2: value}
        await m.exists(key2)
        await m.delete(key)
        await m.delete(key2)
        drive(l1.clear())
    gc.collect()
    assert refcounts(objects) == base
    assert l2.data == {}


# ------------------------------------------------------------------ L1-only path


def test_l1_only_path_memory_flat():
    """MultiLevelCache(l1) with no L2: every method completes without suspending and
    allocates nothing lasting (tracemalloc and the C allocator; this was
    sys.getallocatedblocks(), 0 under the ASan build)."""
    l1 = InMemoryCache(max_size=64)
    m = MultiLevelCache(l1)
    keys = [f"key{i}" for i in range(128)]
    value = [fresh("l1only-", "value")]
    value_base = rc(value)

    def one_round(i):
        k = keys[i & 127]
        drive(m.set(k, value, ttl=0 if i & 8 else None))
        drive(m.get(k))
        drive(m.get(keys[(i * 7) & 127]))
        m.get(keys[(i * 5) & 127])             # never awaited
        m.exists(k).close()
        drive(m.delete(keys[(i * 3) & 127]))
        drive(m.get_many(keys[i & 63:(i & 63) + 8]))
        drive(m.set_many({keys[(i + 1) & 127]: value}))
        m.stats()
        try:
            m.get([])
        except TypeError:
            pass

    for i in range(5000):
        one_round(i)
    with Growth() as growth:
        for i in range(10_000):
            one_round(i)
    # a leak of 16 bytes per round would be 160 KB
    assert growth.traced < 64 * 1024, growth
    assert growth.native < 256 * 1024, growth
    drive(l1.clear())
    assert rc(value) == value_base


# ------------------------------------------------------------------ types, cycles


async def test_type_refcounts_stable(redis_server):
    l2 = make_l2(redis_server.port)
    await bounded(l2.connect())
    try:
        m = MultiLevelCache(InMemoryCache(), l2)
        for _ in range(200):
            await m.get("warm")
        await settle(l2)
        aw_base, mlc_base = rc(CacheAwaitable), rc(MultiLevelCache)
        for i in range(300):
            mm = MultiLevelCache(InMemoryCache(), l2)
            await mm.set("k", i)
            await mm.get("k")
            drive(mm.l1.clear())
            await mm.get("k")
            mm.get("nothing")
            await mm.get_many(["k", "x"])
            del mm
        await settle(l2)
        assert rc(CacheAwaitable) == aw_base
        assert rc(MultiLevelCache) == mlc_base
    finally:
        await bounded(l2.disconnect())


def test_cycle_through_own_l1_is_collected():
    l1 = InMemoryCache()
    m = MultiLevelCache(l1, None)
    marker = [fresh("marker")]
    drive(m.set("me", m))
    drive(m.set("box", [m, l1, marker]))
    refs = [weakref.ref(m), weakref.ref(l1)]
    marker_base = rc(marker)
    del m, l1
    gc.collect()
    assert all(r() is None for r in refs)
    assert rc(marker) == marker_base - 1  # the box's list is gone too


async def test_cycle_with_connected_l2_is_collected(redis_server):
    """A MultiLevelCache over a connected RedisCache, stored in its own L1 (and its L2
    stored there too), after L2 reads and promotions: collected, both levels with it."""
    refs = []
    for i in range(5):
        l1 = InMemoryCache()
        l2 = make_l2(redis_server.port)
        m = MultiLevelCache(l1, l2)
        await bounded(m.start())
        await bounded(m.set("k", [i]))
        drive(l1.clear())
        assert await bounded(m.get("k")) == [i]   # promoted
        drive(l1.set("me", m))
        drive(l1.set("levels", (l1, l2)))
        await wait_in_flight_zero(l2)
        refs.append((weakref.ref(m), weakref.ref(l1), weakref.ref(l2)))
        del m, l1, l2
    deadline = time.monotonic() + HANG
    while True:
        gc.collect()
        if all(r() is None for trio in refs for r in trio):
            break
        assert time.monotonic() < deadline, [[r() is None for r in t] for t in refs]
        await asyncio.sleep(0.02)


def test_cycle_through_subclass_attribute_is_collected():
    class Sub(MultiLevelCache):
        pass

    m = Sub(InMemoryCache(), None)
    m.me = m
    m.l1_ref = m.l1
    drive(m.set("me", m))
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def test_cycle_through_l1_swapped_levels_is_collected():
    """l1/l2 reassigned to caches that hold the MultiLevelCache: still collected."""
    a, b = InMemoryCache(), InMemoryCache()
    m = MultiLevelCache(a)
    drive(a.set("m", m))
    m.l1 = b
    drive(b.set("m", m))
    m.l2 = a  # an InMemoryCache as L2: the generic path, holding m too
    refs = [weakref.ref(x) for x in (m, a, b)]
    del m, a, b
    gc.collect()
    assert all(r() is None for r in refs)


def test_cycle_through_a_deferred_awaitable_is_collected():
    port = free_port()  # no server needed: the request is never sent
    l1 = InMemoryCache()
    l2 = make_l2(port)
    m = MultiLevelCache(l1, l2)
    aw = m.get("miss")  # no running loop: the L2 request waits in the awaitable
    drive(l1.set("pending", aw))  # m -> l1 -> aw -> request -> via -> m
    refs = [weakref.ref(m), weakref.ref(l1)]
    del aw, m, l1
    gc.collect()
    assert all(r() is None for r in refs)


# ------------------------------------------------------- never awaited: coroutines


def test_unawaited_clear_and_get_stats_complete_without_warning():
    import warnings

    l1 = InMemoryCache()
    m = MultiLevelCache(l1)
    drive(m.set("k", [1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.get_stats()
        m.clear()
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert l1.stats()["size"] == 0


def test_generic_path_methods_are_coroutines_run_when_awaited():
    """Documented: over any other L2 the methods are the reference's coroutines; like
    the reference's, they run when awaited (a set never awaited writes nothing)."""
    import asyncio

    l1 = InMemoryCache()
    l2 = mock_l2()
    m = MultiLevelCache(l1, l2)
    coro = m.set("k", [1])
    assert asyncio.iscoroutine(coro)
    coro.close()  # closed unawaited: nothing ran, nothing warns
    assert drive(l1.get("k")) is None
    l2.set.assert_not_called()
