"""Cancelling an awaited get_many or get_stats at any moment of its request
(redis/test_redis_faults.py): 40 times, then the cache must still answer, and nothing
may stay in flight. Prints "ok <requests in flight>" if the process survives.

    python -m tests.scripts.cancel_mid_request PORT WHAT asyncio|uvloop

WHAT: get_many-task, get_many-close, get_many-wait_for, get_stats-task.
"""
import asyncio
import sys
import time

from bruno_memory_c import RedisCache
from tests.scripts import server_kwargs
port, what, loop_name = int(sys.argv[1]), sys.argv[2], sys.argv[3]

async def main():
    cache = RedisCache(host="127.0.0.1", port=port, socket_timeout=5, connect_timeout=5,
                       **server_kwargs())
    await cache.connect()
    await cache.set_many({f"d{i}": i for i in range(20000)})  # get_stats: 20 SCAN pages
    for i in range(40):
        if what == "get_many-task":
            t = asyncio.ensure_future(cache.get_many(["d1", "d2"]))
            await asyncio.sleep(0)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
        elif what == "get_many-close":
            cache.get_many(["d1", "d2"]).close()  # abandoned while pending
            await asyncio.sleep(0.002)
        elif what == "get_many-wait_for":
            try:
                await asyncio.wait_for(cache.get_many(["d1", "d2"]), 0)
            except asyncio.TimeoutError:
                pass
        elif what == "get_stats-task":
            t = asyncio.ensure_future(cache.get_stats())
            await asyncio.sleep(0.002)  # mid-way through the SCAN pages
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
    assert await cache.get_many(["d1", "d2"]) == {"d1": 1, "d2": 2}
    # the 20,000 keys and the statistics hash (get_stats() flushes the hits first)
    assert (await cache.get_stats())["size"] == 20001
    # whatever was cancelled finishes (hang bound only): nothing stays in flight
    deadline = time.monotonic() + 30
    while cache.stats()["in_flight"] != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    print("ok", cache.stats()["in_flight"])

if loop_name == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
