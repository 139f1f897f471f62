"""Interpreter exit with a connected RedisCache and requests in flight
(redis/test_redis_concurrency.py). Prints "ok" (then the interpreter exits); the test
checks the exit status, and that nothing crashed or hung.

    python -m tests.scripts.exit_in_flight PORT asyncio|uvloop MODE SERVER_PID

MODE: unawaited, sys.exit-in-loop, stalled-server (the server SIGSTOPped: the test
resumes it), loop-not-closed, daemon-thread-loop, atexit-use, cycle.
"""
import asyncio
import os
import signal
import sys
import threading
import time
from bruno_memory_c import RedisCache
from tests.scripts import server_kwargs
port, loop_name, mode, server_pid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])

def new_loop():
    if loop_name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()

def run(coro):
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)

cache = RedisCache(host="127.0.0.1", port=port, socket_timeout=5, connect_timeout=5,
                   prefix="exit:", **server_kwargs())
keep = []

def stop_server(pid):  # SIGSTOP the server (the test resumes it), wait until stopped
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 60
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
            states.append(stat[stat.rindex(b")") + 2:][:1])
        if all(s == b"T" for s in states):
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.001)

async def on_the_connection(n, since):
    deadline = time.monotonic() + 60
    while cache.stats()["commands"] < since + n:
        assert time.monotonic() < deadline, cache.stats()
        await asyncio.sleep(0.001)

async def start_requests(n=2000):
    await cache.connect()
    await cache.set("k", "v")
    for i in range(n):
        keep.append(cache.get("k"))
        if i % 10 == 0:
            keep.append(cache.set(f"k{i}", i))
    await asyncio.sleep(0)  # handed to the I/O thread

if mode == "unawaited":
    run(start_requests())
elif mode == "sys.exit-in-loop":
    async def main():
        await start_requests()
        keep.extend(asyncio.ensure_future(cache.get("k")) for _ in range(500))
        await asyncio.sleep(0)
        print("ok", flush=True)
        sys.exit(0)
    run(main())
elif mode == "stalled-server":
    async def main():
        await start_requests(10)
        stop_server(server_pid)
        since = cache.stats()["commands"]
        keep.extend(cache.get("k") for _ in range(500))
        keep.extend(asyncio.ensure_future(cache.get("k")) for _ in range(100))
        await on_the_connection(600, since)  # written, unanswered
        print("ok", flush=True)
        sys.exit(0)
    run(main())
elif mode == "loop-not-closed":
    loop = new_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(start_requests())
    keep.append(loop)  # exits with the loop open and requests in flight
elif mode == "daemon-thread-loop":
    def forever(busy):
        async def main():
            await cache.connect()
            while True:
                await asyncio.gather(*(cache.get("k") for _ in range(100)))
                busy.set()
        run(main())
    busy = [threading.Event() for _ in range(2)]
    for b in busy:
        threading.Thread(target=forever, args=(b,), daemon=True).start()
    for b in busy:  # exit while both loops are in full swing
        assert b.wait(60), "a loop never got going"
elif mode == "atexit-use":
    import atexit
    def at_exit():
        async def main():
            await cache.set("bye", 1)
            assert await cache.get("bye") == 1
            keep.extend(cache.get("k") for _ in range(100))
        run(main())
    atexit.register(at_exit)
    run(start_requests())
elif mode == "cycle":
    class Holder:
        pass
    h = Holder()
    h.cache = cache
    h.self = h
    async def main():
        await start_requests()
        h.pending = [h.cache.get("k") for _ in range(200)]
    run(main())
    del cache
print("ok")
