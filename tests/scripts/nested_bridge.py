"""A bridge made by Python code run while another bridge for the same loop is being
made (see core/test_reentrancy.py). Prints "ok" if the requests in flight on it when
its loop closed were dropped and the cache they held was freed."""
import asyncio
import gc
import time
import weakref

from bruno_memory_c import RedisCache
from bruno_memory_c.testing import RedisServer

with RedisServer() as server:
    a = RedisCache.from_url(server.url, socket_timeout=5)
    b = RedisCache.from_url(server.url, socket_timeout=5)
    c = RedisCache.from_url(server.url, socket_timeout=5)
    kept = []

    class Key:
        def __format__(self, spec):
            return "k"

        def __del__(self):
            # Runs inside the sweep of b's bridge making: c makes a bridge for the same
            # (running) loop, and its request is still in flight when that loop closes.
            kept.append(c.get("slow"))

    l1 = asyncio.new_event_loop()

    async def fire():
        a.get(Key())  # never awaited

    l1.run_until_complete(fire())
    time.sleep(0.3)  # a's reply waits on l1's bridge
    l1.close()
    server.proc.send_signal(__import__("signal").SIGSTOP)  # "slow" stays in flight
    try:
        async def main():
            try:
                await asyncio.wait_for(b.get("x"), 0.2)
            except asyncio.TimeoutError:
                pass

        asyncio.run(main())  # closes the loop with c's request in flight
    finally:
        server.proc.send_signal(__import__("signal").SIGCONT)
    kept.clear()
    deadline = time.monotonic() + 30
    while c.stats()["in_flight"] > 0:  # other loops' sweeps drop it
        assert time.monotonic() < deadline, c.stats()
        asyncio.run(b.get("x"))
    ref = weakref.ref(c)
    del c
    gc.collect()
    assert ref() is None, "the cache is still held"
print("ok")
