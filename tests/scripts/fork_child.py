"""fork() with a RedisCache in use (redis/test_redis_concurrency.py): the child uses the
parent's cache object in a new loop of its own, while the parent keeps using it. Prints
"ok" if every read of both sides is right.

    python -m tests.scripts.fork_child PORT asyncio|uvloop idle|busy|in-loop

idle: fork with the cache connected and idle; busy: while two threads' loops keep its
I/O thread and bridges busy; in-loop: inside a running loop, with requests in flight.
"""
import asyncio
import os
import sys
import threading
import traceback
from bruno_memory_c import RedisCache
from tests.scripts import server_kwargs
port, loop_name, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def run(coro):
    if loop_name == "uvloop":
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)

cache = RedisCache(host="127.0.0.1", port=port, socket_timeout=10, connect_timeout=5,
                   prefix="fork:", **server_kwargs())
DATA = {f"f{i}": [i, "v"] for i in range(200)}

async def check(tag):
    got = await asyncio.gather(*(cache.get(k) for k in DATA))
    assert got == list(DATA.values()), (tag, got[:3])
    await cache.set(tag, os.getpid())
    assert await cache.get(tag) == os.getpid(), tag
    assert await cache.get_many(list(DATA)[:5]) == {k: DATA[k] for k in list(DATA)[:5]}

async def setup():
    await cache.connect()
    await cache.set_many(DATA)
    await check("parent-before")
run(setup())

def child_main():
    code = 1
    try:
        if mode == "in-loop":  # forked inside a running loop: use a fresh thread
            box = []
            t = threading.Thread(target=lambda: box.append(run(asyncio.wait_for(check("child"), 30))))
            t.start(); t.join(60)
            assert not t.is_alive() and box == [None]
        else:
            run(asyncio.wait_for(check("child"), 30))
            run(asyncio.wait_for(check("child-again"), 30))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)

def wait_child(pid):
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status

stop = threading.Event()
def hammer(busy):  # keeps the I/O thread and the bridges busy from other threads' loops
    async def main():
        while not stop.is_set():
            got = await asyncio.gather(*(cache.get(k) for k in list(DATA)[:50]))
            assert got == list(DATA.values())[:50]
            busy.set()
    run(main())
busy = [threading.Event() for _ in range(2)] if mode == "busy" else []
threads = [threading.Thread(target=hammer, args=(b,)) for b in busy]
for t in threads:
    t.start()
for b in busy:  # both hammering before the fork
    assert b.wait(60), "a hammer thread never got going"

if mode == "in-loop":
    async def forking():
        pending = [cache.get(k) for k in DATA]  # in flight while we fork
        pid = os.fork()
        if pid == 0:
            child_main()
        got = [await aw for aw in pending]
        assert got == list(DATA.values())
        await check("parent-during")
        return pid
    pid = run(forking())
else:
    pid = os.fork()
    if pid == 0:
        child_main()
    run(asyncio.wait_for(check("parent-during"), 30))

stop.set()
for t in threads:
    t.join(30)
    assert not t.is_alive()
wait_child(pid)
run(asyncio.wait_for(check("parent-after"), 30))
async def final():
    child = await cache.get("child")
    assert isinstance(child, int) and child not in (os.getpid(), 0), child
run(final())
print("ok")
