"""Core: the newer asyncio features on every supported Python (README "The awaitable").

Under asyncio and uvloop (ARCHITECTURE "Python versions"):

- eager tasks (``asyncio.eager_task_factory``, 3.12+): a ready result (in-memory work)
  finishes an eager task at its creation; a pending one (Redis) suspends it, and it
  resumes with the result. On 3.11, which has no eager tasks, the same property is
  checked on the step an eager task takes at creation: the first ``send``.
- ``asyncio.timeout()`` around a request the server cannot answer;
- ``asyncio.Runner(loop_factory=...)``, one cache used across several runs and runners;
- ``TaskGroup`` cancelling its tasks while their Redis requests are in flight.

The server is frozen with SIGSTOP where a request must stay in flight: it cannot
answer until SIGCONT, so no verdict depends on how fast anything runs.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import pytest

from bruno_memory_c import InMemoryCache, MultiLevelCache, RedisCache
from tests.support import until

HAS_EAGER = hasattr(asyncio, "eager_task_factory")
HANG = 30.0  # a wait for a state taking this long is a hang


def eager_factory(loop):
    """asyncio.eager_task_factory for asyncio's loop. uvloop (0.23) calls a task
    factory with an ``eager_start=`` keyword that 3.12/3.13's eager_task_factory does
    not accept, so under uvloop the same factory is spelled out: an asyncio.Task
    started eagerly (what eager_task_factory makes)."""
    if isinstance(loop, asyncio.BaseEventLoop):
        return asyncio.eager_task_factory

    def factory(loop, coro, *, eager_start=None, **kw):
        return asyncio.Task(coro, loop=loop, eager_start=True, **kw)

    return factory


@contextlib.contextmanager
def frozen(server):
    """The server process stopped (SIGSTOP) for the block: it reads and answers
    nothing until SIGCONT, which the block's end always sends."""
    server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


def redis(server, **kw) -> RedisCache:
    kw.setdefault("prefix", "v:")
    kw.setdefault("socket_timeout", 60)
    return RedisCache.from_url(server.url, **kw)


# ---------------------------------------------------------------------- eager tasks


async def test_eager_task_ready_result_finishes_at_creation():
    cache = InMemoryCache()
    await cache.set("k", "v")
    loop = asyncio.get_running_loop()
    if HAS_EAGER:
        loop.set_task_factory(eager_factory(loop))
        try:
            hit = asyncio.create_task(cache.get("k"))
            miss = asyncio.create_task(cache.get("absent"))
            many = asyncio.create_task(cache.get_many(["k", "absent"]))
        finally:
            loop.set_task_factory(None)
        # Finished inside create_task: no loop iteration has run since.
        assert hit.done() and miss.done() and many.done()
        assert (hit.result(), miss.result(), many.result()) == ("v", None, {"k": "v"})
    else:
        assert sys.version_info < (3, 12)
        # What an eager task does at creation is its first step: send(None).
        with pytest.raises(StopIteration) as stop:
            cache.get("k").send(None)
        assert stop.value.value == "v"


async def test_eager_task_pending_result_suspends_and_resumes(redis_server):
    cache = redis(redis_server)
    await cache.set("k", [1, 2])
    multi = MultiLevelCache(InMemoryCache(), cache)
    loop = asyncio.get_running_loop()

    async def through_a_coroutine():
        return await cache.get("k")

    if HAS_EAGER:
        loop.set_task_factory(eager_factory(loop))
        try:
            direct = asyncio.create_task(cache.get("k"))
            nested = asyncio.create_task(through_a_coroutine())
            l2_read = asyncio.create_task(multi.get("k"))       # L1 miss: to Redis
        finally:
            loop.set_task_factory(None)
        assert not direct.done() and not nested.done() and not l2_read.done()
        assert await direct == [1, 2]
        assert await nested == [1, 2]
        assert await l2_read == [1, 2]
        # now an L1 hit: ready, so an eager task finishes at creation
        loop.set_task_factory(eager_factory(loop))
        try:
            l1_hit = asyncio.create_task(multi.get("k"))
        finally:
            loop.set_task_factory(None)
        assert l1_hit.done() and l1_hit.result() == [1, 2]
    else:
        assert sys.version_info < (3, 12)
        aw = cache.get("k")
        fut = aw.send(None)                 # the first step parks on a future
        assert isinstance(fut, asyncio.Future) and not fut.done()
        await until(fut.done, "the future resolved", HANG)  # by the I/O thread's reply
        with pytest.raises(StopIteration) as stop:
            aw.send(None)
        assert stop.value.value == [1, 2]
    await cache.disconnect()


# ---------------------------------------------------------------------- asyncio.timeout


async def test_asyncio_timeout_around_an_unanswered_request(redis_server):
    cache = redis(redis_server)
    await cache.set("k", "v")
    with frozen(redis_server):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await cache.get("k")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await cache.set("k2", "v2")
        assert cache.stats()["in_flight"] == 2   # still waiting on the server
    # the abandoned requests complete quietly; the cache goes on working
    await until(lambda: cache.stats()["in_flight"] == 0, "nothing in flight", HANG)
    assert await cache.get("k") == "v"
    assert await cache.get("k2") == "v2"     # the set was sent: it is not undone
    await cache.disconnect()


async def test_asyncio_timeout_does_not_touch_ready_results():
    cache = InMemoryCache()
    async with asyncio.timeout(0):           # already expired deadline
        await cache.set("k", 1)              # never suspends, so never cancelled
        assert await cache.get("k") == 1


# ---------------------------------------------------------------------- Runner


def test_runner_with_loop_factory(redis_server, loop_factory):
    cache = redis(redis_server)
    multi = MultiLevelCache(InMemoryCache(), cache)
    for round_ in range(3):   # one cache, several runners (loops) one after the other
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(multi.set("k", round_))
            assert runner.run(cache.get("k")) == round_
            assert runner.run(multi.get("k")) == round_
            runner.run(multi.set("k", round_ + 10))
            got = runner.run(asyncio.wait_for(cache.get_many(["k"]), 30))
            assert got == {"k": round_ + 10}
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(cache.disconnect())
    assert cache.stats()["in_flight"] == 0


# ---------------------------------------------------------------------- TaskGroup


async def test_taskgroup_cancels_tasks_with_requests_in_flight(redis_server):
    cache = redis(redis_server)
    await cache.set_many({f"k{i}": i for i in range(100)})
    multi = MultiLevelCache(InMemoryCache(), cache)
    started = asyncio.Event()

    async def fail_when_all_sent():
        await until(lambda: cache.stats()["in_flight"] == 150, "150 requests in flight", HANG)
        started.set()
        raise ValueError("boom")

    with frozen(redis_server):
        with pytest.raises(ExceptionGroup) as group:
            async with asyncio.TaskGroup() as tg:
                for i in range(100):
                    tg.create_task(cache.get(f"k{i}"))
                for i in range(50):
                    tg.create_task(multi.get(f"k{i}"))
                tg.create_task(fail_when_all_sent())
        assert started.is_set()
        assert [type(e) for e in group.value.exceptions] == [ValueError]
    # Every cancelled request still completes (quietly) once the server answers.
    await until(lambda: cache.stats()["in_flight"] == 0, "nothing in flight", HANG)
    assert await cache.get("k7") == 7
    assert await multi.get("k7") == 7
    await cache.disconnect()
