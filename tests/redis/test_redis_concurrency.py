"""RedisCache under concurrency and across lifecycles (README "RedisCache API", Failures).

Against a real redis-server (ARCHITECTURE "RedisCache: the picture", "Awaitables for
Redis"; README "Differences from bruno-memory", 5):

- Many tasks, one cache: every result is the caller's own (replies are matched to
  requests in order), none is lost, and requests are pipelined (stats() shows more than
  one command per write) -- no request is lost at any concurrency, beyond the 65,536 in
  flight too (the backlog).
- One cache shared by several event loops in several threads (asyncio and uvloop mixed),
  including the multi-step operations (get_stats and clear page through SCAN).
- fork(): the child uses the parent's cache object in a new loop (README Failures: "the
  child gets its own I/O thread and connection"); the parent keeps working, also while
  its I/O thread was busy when it forked.
- Interpreter exit with a connected cache and requests in flight: exit status 0, no crash,
  no hang (every exit scenario runs in a subprocess with a timeout).

Nothing asserts on time beyond hang detection (HANG, subprocess timeouts), and no
verdict depends on how fast anything runs: phases wait for the state they need (every
loop served, every loop failed, readers running, requests on the connection).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import threading
import time

import pytest

from bruno_memory_c import CacheError
from tests.support import (
    ALL_TRANSPORTS, LOOP_FACTORIES, bounded_by, cache_maker, run_on_new_loop, run_script, until, wait_until,
)

HANG = 60.0     # bound on whole concurrent phases (hang detection only)
PREFIX = "cc:"
LOGGER = logging.getLogger("bruno_memory_c")
pytestmark = pytest.mark.usefixtures("quiet_cache_logger")
#: Every test on a redis_server runs over plaintext and over TLS (conftest.py).
TRANSPORTS = ALL_TRANSPORTS

make_cache = cache_maker(prefix=PREFIX, socket_timeout=10.0, connect_timeout=5.0)
bounded = bounded_by(HANG)


def depth(before: dict, after: dict) -> float:
    """Mean pipeline depth (commands per write) between two stats() snapshots."""
    batches = after["batches"] - before["batches"]
    assert batches > 0, (before, after)
    return (after["commands"] - before["commands"]) / batches


def assert_clean_exit(proc: subprocess.CompletedProcess, marker: str = "ok") -> None:
    detail = f"rc={proc.returncode}\nstdout={proc.stdout[-2000:]}\nstderr={proc.stderr[-4000:]}"
    assert proc.returncode == 0, detail
    assert marker in proc.stdout, detail
    assert "Fatal Python error" not in proc.stderr, detail
    assert "Traceback" not in proc.stderr, detail


# ----------------------------------------------------------------- many tasks, one loop


async def test_1000_tasks_x_50_gets_each(redis_server):
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    ntasks, nkeys = 1000, 50

    def value(t, i):
        return {"task": t, "i": i, "s": f"{t}/{i}" * (1 + (t + i) % 5)}

    for t0 in range(0, ntasks, 100):
        await bounded(cache.set_many({f"t{t}:{i}": value(t, i)
                                      for t in range(t0, t0 + 100) for i in range(nkeys)}))
    before = cache.stats()

    async def task(t):
        wrong = []
        for i in range(nkeys):
            v = await cache.get(f"t{t}:{i}")
            if v != value(t, i):
                wrong.append((i, v))
        return wrong

    results = await bounded(asyncio.gather(*(task(t) for t in range(ntasks))))
    after = cache.stats()
    assert results == [[]] * ntasks
    assert after["hits"] - before["hits"] == ntasks * nkeys
    assert after["misses"] == before["misses"]
    assert after["errors"] == 0 and after["in_flight"] == 0
    assert after["commands"] - before["commands"] >= ntasks * nkeys
    assert depth(before, after) > 1, (before, after)


async def test_gather_20000_gets_in_order(redis_server):
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    n = 20_000
    for start in range(0, n, 5000):
        await bounded(cache.set_many({f"g{i}": i for i in range(start, start + 5000)}))
    before = cache.stats()
    got = await bounded(asyncio.gather(*(cache.get(f"g{i}") for i in range(n))))
    after = cache.stats()
    assert got == list(range(n))
    assert after["hits"] - before["hits"] == n
    assert after["errors"] == 0
    assert depth(before, after) > 1, (before, after)
    # And with absent keys interleaved: misses are None, in their places.
    got = await bounded(asyncio.gather(*(cache.get(f"g{i}" if i % 3 else f"absent{i}")
                                         for i in range(n))))
    assert got == [i if i % 3 else None for i in range(n)]


async def test_beyond_max_in_flight_nothing_lost(redis_server):
    """100,000 requests issued before any is awaited: more than the 65,536 allowed in
    flight, the rest wait in the backlog; none fails, all are right and in order.
    socket_timeout=None: the first 65,536 are sent at once, and their replies would
    otherwise be due within socket_timeout of that however slow the machine is."""
    cache = make_cache(redis_server, socket_timeout=None)
    await bounded(cache.connect())
    await bounded(cache.set_many({f"b{i}": i for i in range(1000)}))
    n = 100_000
    aws = [cache.get(f"b{i % 1000}") for i in range(n)]
    got = []
    for aw in aws:
        got.append(await bounded(aw))
    assert got == [i % 1000 for i in range(n)]
    assert cache.stats()["errors"] == 0
    assert cache.stats()["in_flight"] == 0


async def test_mixed_operations_many_tasks(redis_server):
    """500 tasks each run a script of set/get/exists/get_many/delete/set_many on their own
    keys, all at once: every answer is the one the task's own history implies."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())

    async def task(t):
        k, k2 = f"m{t}", f"m{t}b"
        for round_ in range(10):
            v = [t, round_, "x" * (t % 17)]
            await cache.set(k, v)
            assert await cache.get(k) == v
            assert await cache.exists(k) is True
            await cache.set_many({k2: {"t": t, "r": round_}})
            assert await cache.get_many([k, k2, f"none{t}"]) == {k: v, k2: {"t": t, "r": round_}}
            assert await cache.delete(k) is True
            assert await cache.delete(k) is False
            assert await cache.get(k) is None
            assert await cache.exists(k) is False
        return t

    assert await bounded(asyncio.gather(*(task(t) for t in range(500)))) == list(range(500))
    assert cache.stats()["errors"] == 0


async def test_several_caches_one_loop(redis_server):
    """Caches with different prefixes and databases share the I/O thread; each sees only
    its own keys."""
    caches = [make_cache(redis_server, prefix=f"p{i}:", db=i % 3) for i in range(6)]
    for c in caches:
        await bounded(c.connect())

    async def use(i, c):
        await c.set_many({f"k{j}": [i, j] for j in range(200)})
        got = await asyncio.gather(*(c.get(f"k{j}") for j in range(200)))
        assert got == [[i, j] for j in range(200)]

    await bounded(asyncio.gather(*(use(i, c) for i, c in enumerate(caches))))
    for c in caches:
        await bounded(c.disconnect())


# ------------------------------------------------------------ several loops and threads


def _run_loop(kind: str, coro):
    """Run coro on a fresh loop of the kind ("asyncio"/"uvloop")."""
    return run_on_new_loop(LOOP_FACTORIES[kind], coro)


def _threads(targets, timeout=HANG):
    """Run each target in its own thread; re-raise the first failure; detect hangs."""
    errors = []

    def wrap(fn):
        def inner():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 -- reported below
                errors.append(e)
        return inner

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_one_cache_several_loops_in_threads(redis_server):
    """One RedisCache, six threads, each running its own loop (asyncio and uvloop
    alternately), all at once: every result right."""
    cache = make_cache(redis_server)
    kinds = ["asyncio", "uvloop"] * 3

    def worker(n, kind):
        async def main():
            await cache.set_many({f"th{n}:{i}": [n, i] for i in range(300)})

            async def task(j):
                for i in range(j, 300, 30):
                    assert await cache.get(f"th{n}:{i}") == [n, i]
                    if i % 7 == 0:
                        await cache.set(f"th{n}:{i}", [n, i])
                        assert await cache.exists(f"th{n}:{i}") is True
                got = await cache.get_many([f"th{n}:{i}" for i in range(j, 300, 30)])
                assert got == {f"th{n}:{i}": [n, i] for i in range(j, 300, 30)}

            for _ in range(3):
                await asyncio.gather(*(task(j) for j in range(30)))
            stats = await cache.get_stats()
            assert stats["type"] == "redis" and "error" not in stats, stats
            return n

        def run():
            assert _run_loop(kind, asyncio.wait_for(main(), HANG)) == n
        return run

    _threads([worker(n, kind) for n, kind in enumerate(kinds)])
    assert cache.stats()["errors"] == 0
    assert cache.stats()["in_flight"] == 0


def test_server_killed_under_several_loops(redis_server):
    """Loops in four threads hammer one cache; the server is SIGKILLed and restarted:
    every await in every loop returns (right value, None or CacheError), every loop
    sees its requests fail while the server is dead, and every loop sees the cache work
    again. The server is killed once every loop has been served, and restarted once
    every loop has seen a failure."""
    cache = make_cache(redis_server, socket_timeout=0.5, connect_timeout=0.5)
    nloops = 4
    phase = {"name": "before", "stop": False}
    lock = threading.Lock()
    progress = {"before": set(), "dead": set()}
    recovered = []

    def note(name, n):
        with lock:
            progress[name].add(n)

    def worker(n, kind):
        async def main():
            await cache.connect()
            data = {f"k{n}:{i}": [n, i] for i in range(50)}
            await cache.set_many(data)
            keys = list(data)
            j = 0
            while not phase["stop"]:
                j += 1
                k = keys[j % 50]
                name = phase["name"]
                v = await asyncio.wait_for(cache.get(k), 10)
                assert v is None or v == data[k], (k, v)
                if v is not None and name == "before":
                    note("before", n)
                elif v is None and name == "dead":
                    note("dead", n)  # (asked once the server was dead)
                if j % 10 == 0:
                    try:
                        await asyncio.wait_for(cache.set(k, data[k]), 10)
                    except CacheError:
                        await asyncio.sleep(0.01)
                if v is None:
                    await asyncio.sleep(0.005)
            # Works again in this loop too (bounded).
            deadline = time.monotonic() + 15
            while True:
                try:
                    await asyncio.wait_for(cache.set(f"back{n}", n), 10)
                    if await asyncio.wait_for(cache.get(f"back{n}"), 10) == n:
                        break
                except CacheError:
                    pass
                assert time.monotonic() < deadline, cache.stats()
                await asyncio.sleep(0.05)
            recovered.append(n)

        return lambda: _run_loop(kind, main())

    def conductor():
        try:
            wait_until(lambda: len(progress["before"]) == nloops, "every loop served")
            phase["name"] = "dead"
            redis_server.kill()
            wait_until(lambda: len(progress["dead"]) == nloops, "every loop failed")
            redis_server.restart()
        finally:
            phase["stop"] = True

    _threads([worker(n, kind) for n, kind in enumerate(["asyncio", "uvloop"] * 2)]
             + [conductor])
    assert progress == {"before": {0, 1, 2, 3}, "dead": {0, 1, 2, 3}}
    assert sorted(recovered) == [0, 1, 2, 3]
    assert cache.stats()["reconnects"] >= 1
    assert cache.stats()["in_flight"] == 0


def test_multistep_operations_while_other_loops_use_the_cache(redis_server):
    """get_stats() and clear() page through SCAN in several round trips. Each follow-up
    must be delivered to the loop that awaits it even when other threads' loops use the
    same cache in between."""
    cache = make_cache(redis_server)
    total = 12_000

    async def fill():
        for start in range(0, total, 3000):
            await cache.set_many({f"s{i}": i for i in range(start, start + 3000)})
    _run_loop("asyncio", fill())

    stop = threading.Event()
    sizes = []
    rounds: dict[str, int] = {}  # each reader's completed rounds (written by it only)
    finished: list[str] = []
    lock = threading.Lock()

    def readers_progressed(names, since=None):
        """Every reader in `names` completed a round (since the snapshot `since`)."""
        return all(rounds.get(n, 0) > (since or {}).get(n, 0) for n in names)

    def stats_user(kind, readers):
        def run():
            async def main():
                for _ in range(15):
                    # the other loops use the cache between (and during) these calls
                    seen = dict(rounds)
                    s = await asyncio.wait_for(cache.get_stats(), 30)
                    assert "error" not in s, s
                    sizes.append(s["size"])
                    await until(lambda: readers_progressed(readers, seen), "readers ran",
                                HANG)
            try:
                wait_until(lambda: readers_progressed(readers), "readers started", HANG)
                _run_loop(kind, main())
            except BaseException:
                stop.set()
                raise
            with lock:
                finished.append(kind)
                if len(finished) == 2:  # the readers run until both are done
                    stop.set()
        return run

    def get_user(kind, n):
        def run():
            async def main():
                name = f"get{n}"
                while not stop.is_set():
                    got = await asyncio.gather(*(cache.get(f"s{i}") for i in range(n, n + 40)))
                    assert got == list(range(n, n + 40))
                    rounds[name] = rounds.get(name, 0) + 1
            _run_loop(kind, asyncio.wait_for(main(), HANG))
        return run

    readers = ["get0", "get100"]
    _threads([stats_user("asyncio", readers), get_user("uvloop", 0), get_user("asyncio", 100),
              stats_user("uvloop", readers)])
    assert len(sizes) == 30 and all(s >= total for s in sizes), sizes
    assert all(rounds[n] >= 15 for n in readers), rounds

    # clear() in one loop while two other loops keep reading (absent keys now).
    stop.clear()
    rounds.clear()

    def clearer(readers):
        async def main():
            seen = dict(rounds)
            await asyncio.wait_for(cache.clear(), 30)
            await until(lambda: readers_progressed(readers, seen), "readers ran", HANG)
        try:
            wait_until(lambda: readers_progressed(readers), "readers started", HANG)
            _run_loop("uvloop", main())
        finally:
            stop.set()

    def reader(kind):
        def run():
            async def main():
                while not stop.is_set():
                    got = await cache.get_many([f"s{i}" for i in range(5)])
                    assert set(got) <= {f"s{i}" for i in range(5)}
                    rounds[kind] = rounds.get(kind, 0) + 1
            _run_loop(kind, asyncio.wait_for(main(), HANG))
        return run

    _threads([lambda: clearer(["asyncio", "uvloop"]), reader("asyncio"), reader("uvloop")])
    assert all(rounds[n] >= 2 for n in ("asyncio", "uvloop")), rounds
    # (the pattern also matches the statistics hash, flushed once a second at any moment)
    assert set(redis_server.command("KEYS", PREFIX + "s*")) <= {(PREFIX + "stats").encode()}


def test_loops_come_and_go(redis_server, loop_factory):
    """Loops closed with requests still pending do not disturb later loops."""
    cache = make_cache(redis_server)

    async def abandon(round_):
        await cache.connect()
        await cache.set("k", round_)
        assert await cache.get("k") == round_
        for _ in range(500):
            cache.get("k")  # never awaited; the loop closes under them

    for round_ in range(5):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(abandon(round_))

    async def check():
        got = await asyncio.gather(*(cache.get("k") for _ in range(200)))
        assert got == [4] * 200

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(check())


def test_requests_of_a_closed_loop_are_released(redis_server, loop_factory):
    """Requests left pending when their loop closed are released once their replies
    come back, even if the program goes on with a single loop afterwards. The replies
    come back after the next loop started: the server is stalled until then."""
    import gc
    import weakref

    cache = make_cache(redis_server)
    stall = None

    async def abandon():
        nonlocal stall
        await cache.connect()
        await cache.set("k", "v")
        stall = redis_server.stall(3600)
        commands = cache.stats()["commands"]
        for _ in range(100):
            cache.get("k")  # never awaited; the loop closes under them
        await until(lambda: cache.stats()["commands"] >= commands + 100,
                    "the gets on the connection", HANG)

    async def later():
        got = cache.get("k")  # a new loop, used from now on
        stall.cancel()  # now the replies come back
        assert await got == "v"
        await until(lambda: cache.stats()["in_flight"] == 0, "the old requests released",
                    HANG)

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(abandon())
        assert cache.stats()["in_flight"] == 100
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(later())
    finally:
        if stall is not None:
            stall.cancel()
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None


def test_same_cache_sequential_runs(redis_server, loop_factory):
    """asyncio.run() after asyncio.run(): the cache follows the running loop."""
    cache = make_cache(redis_server)
    for round_ in range(10):
        async def main():
            await cache.set("r", round_)
            got = await asyncio.gather(*(cache.get("r") for _ in range(100)))
            assert got == [round_] * 100
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())


# ----------------------------------------------------------------------------- fork


@pytest.mark.parametrize("mode", ["idle", "busy", "in-loop"])
def test_fork_child_uses_the_same_cache(redis_server, loop_name, mode):
    proc = run_script("fork_child", redis_server.port, loop_name, mode, server=redis_server)
    assert_clean_exit(proc)


# ------------------------------------------------------------------ interpreter exit


@pytest.mark.parametrize("mode", ["unawaited", "sys.exit-in-loop", "stalled-server",
                                  "loop-not-closed", "daemon-thread-loop", "atexit-use",
                                  "cycle"])
def test_interpreter_exit_with_requests_in_flight(redis_server, loop_name, mode):
    try:
        proc = run_script("exit_in_flight", redis_server.port, loop_name, mode,
                          redis_server.proc.pid, timeout=60, server=redis_server)
    finally:  # "stalled-server" leaves the server stopped (SIGSTOP)
        redis_server.proc.send_signal(signal.SIGCONT)
    assert_clean_exit(proc)
    # The server is fine afterwards, and so is a new process.
    assert redis_server.command("PING") == "PONG"
