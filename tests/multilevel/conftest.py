"""MultiLevelCache tests (README "MultiLevelCache API"; ARCHITECTURE "MultiLevelCache"):
the fixture of the fault and leak tests."""
from __future__ import annotations

import asyncio

import pytest_asyncio

from bruno_memory_c import CacheError, InMemoryCache, MultiLevelCache
from tests.support import HANG, TIMEOUT, cache_maker


@pytest_asyncio.fixture
async def make_ml(request):
    """make_ml(server, l1_size=1000, promote_on_hit=True, coherent=None, **l2_kw) ->
    (MultiLevelCache, l1,
    l2): L2 is our RedisCache on 127.0.0.1 at the port of server (a RedisServer, over its
    transport, or a port number) under the test module's PREFIX, with
    socket_timeout and connect_timeout TIMEOUT unless l2_kw says otherwise; every L2 made
    is disconnected when the test ends (disconnect is idempotent and works with the
    server dead)."""
    make_l2 = cache_maker(prefix=request.module.PREFIX, socket_timeout=TIMEOUT,
                          connect_timeout=TIMEOUT)
    made = []

    def make(server, l1_size: int = 1000, promote_on_hit: bool = True,
             coherent: bool | None = None, **kw):
        l1 = InMemoryCache(max_size=l1_size)
        l2 = make_l2(server, **kw)
        made.append(l2)
        m = MultiLevelCache(l1, l2, promote_on_hit=promote_on_hit, coherent=coherent)
        return m, l1, l2

    yield make
    for l2 in made:
        try:
            await asyncio.wait_for(l2.disconnect(), HANG)
        except CacheError:
            pass
