"""A started InMemoryCache dropped while an exception is pending: it is a temporary on
the value stack when the expression raises (inmemory/test_inmemory.py). Prints "caught
ZeroDivisionError" then "survived" if its dealloc neither crashes nor loses the
exception.

    python -m tests.scripts.drop_while_raising asyncio|uvloop
"""
import asyncio
import sys

import uvloop

from bruno_memory_c import InMemoryCache


async def started():
    cache = InMemoryCache(cleanup_interval=10)
    await cache.start()
    return cache


async def main():
    try:
        pair = (await started(), 1 / 0)  # noqa: F841 (the cache: a temporary on the stack)
    except ZeroDivisionError:
        print("caught ZeroDivisionError", flush=True)
    print("survived", flush=True)


(uvloop.run if sys.argv[1] == "uvloop" else asyncio.run)(main())
