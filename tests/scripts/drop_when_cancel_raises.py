"""A started InMemoryCache dropped when its cleanup timer's cancel() raises
(inmemory/test_inmemory.py). Prints "survived" if its dealloc does not crash.

    python -m tests.scripts.drop_when_cancel_raises asyncio|uvloop
"""
import asyncio
import gc
import sys

import uvloop

from bruno_memory_c import InMemoryCache


class BadHandle:
    def __init__(self, handle):
        self.handle = handle

    def cancel(self):
        self.handle.cancel()
        raise RuntimeError("cancel failed")


async def main():
    loop = asyncio.get_running_loop()
    orig = loop.call_later
    loop.call_later = lambda delay, cb, *args: BadHandle(orig(delay, cb, *args))
    cache = InMemoryCache(cleanup_interval=10)
    await cache.start()
    del loop.call_later
    del cache
    gc.collect()
    print("survived", flush=True)


(uvloop.run if sys.argv[1] == "uvloop" else asyncio.run)(main())
