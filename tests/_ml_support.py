"""Shared by the MultiLevelCache fault and leak tests: L2 caches with short timeouts,
a fixture that makes multi-level caches and disconnects their L2s, hang bounds."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest
import pytest_asyncio

from bruno_memory_c import CacheError, InMemoryCache, MultiLevelCache, RedisCache

TIMEOUT = 0.5            # socket_timeout and connect_timeout of the L2 caches under test
HANG = 10.0              # any await taking this long is a hang
RECOVER = 15.0           # bound for "L2 is used again" after a fault ends
STALL = 3600.0           # a stall the test ends itself once it has checked
LOGGER = logging.getLogger("bruno_memory_c")


@pytest.fixture(autouse=True)
def quiet_cache_logger():
    """L2 failures are logged by design: thousands of records would slow the tests down
    (and captured records would hold references to the keys the leak tests count)."""
    old = LOGGER.level
    LOGGER.setLevel(logging.CRITICAL)
    yield
    LOGGER.setLevel(old)


def make_l2(port: int, prefix: str, **kw) -> RedisCache:
    kw.setdefault("socket_timeout", TIMEOUT)
    kw.setdefault("connect_timeout", TIMEOUT)
    return RedisCache(host="127.0.0.1", port=port, prefix=prefix, **kw)


def ml_fixture(prefix: str):
    """A `make_ml` fixture: make_ml(port, l1_size=1000, promote_on_hit=True, **l2_kw) ->
    (MultiLevelCache, l1, l2); every L2 made is disconnected when the test ends
    (disconnect is idempotent and works with the server dead)."""

    @pytest_asyncio.fixture
    async def make_ml():
        made = []

        def make(port: int, l1_size: int = 1000, promote_on_hit: bool = True, **kw):
            l1 = InMemoryCache(max_size=l1_size)
            l2 = make_l2(port, prefix, **kw)
            made.append(l2)
            return MultiLevelCache(l1, l2, promote_on_hit=promote_on_hit), l1, l2

        yield make
        for l2 in made:
            try:
                await asyncio.wait_for(l2.disconnect(), HANG)
            except CacheError:
                pass

    return make_ml


async def bounded(aw, limit: float = HANG):
    """Await with hang detection (asyncio.TimeoutError means: it hung)."""
    return await asyncio.wait_for(aw, limit)


async def wait_in_flight_zero(l2: RedisCache, limit: float = HANG) -> None:
    deadline = time.monotonic() + limit
    while l2.stats()["in_flight"] != 0:
        assert time.monotonic() < deadline, f"requests stuck in flight: {l2.stats()}"
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def stalled(server):
    """The server stopped for the whole block (RedisServer.stall(): returns once it has
    stopped; the kernel accepts connections and buffers what is sent, nothing is read
    or answered); the block's end resumes it."""
    stall = server.stall(STALL)
    try:
        yield stall
    finally:
        stall.cancel()
