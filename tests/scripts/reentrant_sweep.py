"""Requests dropped after their loop closed run Python code that sweeps the bridges
again (see core/test_reentrancy.py). Prints "ok <n>" when every dropped request's
key ran its __del__ — and the process did not crash doing it."""
import asyncio
import signal
import sys
import threading
import time

from bruno_memory_c import RedisCache
from bruno_memory_c.testing import RedisServer

N = 50      # requests per dead loop
LOOPS = 5   # dead loops: their bridges all wait on the list of retired bridges

with RedisServer() as server:
    cache = RedisCache.from_url(server.url, socket_timeout=30)
    other = RedisCache.from_url(server.url)
    nested = []

    class Key:
        def __format__(self, spec):
            return "k"

        def __del__(self):
            # Another thread with a loop of its own: making its bridge sweeps the
            # bridges, while the sweep dropping this key's request waits here.
            t = threading.Thread(target=lambda: nested.append(asyncio.run(other.get("x"))))
            t.start()
            t.join()

    async def fire():
        await cache.connect()
        server.proc.send_signal(signal.SIGSTOP)  # (again: no-op when stopped)
        for _ in range(N):
            cache.get(Key())  # fire and forget: still in flight when this loop closes

    for _ in range(LOOPS):
        asyncio.run(fire())
    # The cache used in another loop lets go of the dead loop's bridge, which only the
    # list of retired bridges then holds (its request times out here: still frozen).
    try:
        asyncio.run(asyncio.wait_for(cache.get("y"), 0.05))
    except asyncio.TimeoutError:
        pass
    server.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 60
    while cache.stats()["in_flight"] > 0:  # other loops' drains drop them
        assert time.monotonic() < deadline, cache.stats()
        asyncio.run(other.get("y"))
    assert nested == [None] * (N * LOOPS), nested
    print("ok", len(nested))
    sys.stdout.flush()
