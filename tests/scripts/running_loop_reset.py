"""Python code that sets the running loop again while a cache looks up its bridge (see
core/test_reentrancy.py). Prints "ok" if the process survives it."""
import asyncio
import gc
import time

from bruno_memory_c import RedisCache
from bruno_memory_c.testing import RedisServer


class Key:
    def __format__(self, spec):
        return "k"

    def __del__(self):
        # What a nested run (nest_asyncio) does on entry: set the running loop again,
        # which on 3.11 replaces (and frees) the holder object rc_bridge had read.
        loop = asyncio.get_running_loop()
        asyncio._set_running_loop(None)
        asyncio._set_running_loop(loop)


with RedisServer() as server:
    a = RedisCache.from_url(server.url)
    b = RedisCache.from_url(server.url)
    l1 = asyncio.new_event_loop()

    async def fire():
        a.get(Key())  # submitted through l1's bridge, never awaited

    l1.run_until_complete(fire())
    time.sleep(0.3)  # its reply waits, undrained, on l1's bridge
    l1.close()
    gc.collect()

    async def main():
        # a new loop: its bridge is made by sweeping, which drops a's request (Key.__del__)
        return await b.get("x")

    assert asyncio.run(main()) is None
print("ok")
