"""README claims without a test of their own, each pinned against real servers (README).

Every test names the README section and passage it checks (in the banner above it). What the server received is read from the
server itself (``INFO commandstats`` after ``CONFIG RESETSTAT``, the ``MONITOR`` stream with
the server's own timestamps, accepted connections on a socket of ours), never from the
cache under test alone. No assertion is on how fast anything is: the timing claims of the
README (statistics flushed once a second, the reconnect backoff) are checked as what they
are — minimums and cadences — with liveness margins above them.

Tests that measure the I/O thread's own timers (the flush cadence, the backoff) are
synchronous and run one event loop: those timers live on the I/O thread and do not
depend on the loop (and each takes several seconds, which both loops would double).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import socket
import threading
import time

import pytest
import pytest_asyncio

from bruno_memory_c import CacheError, InMemoryCache, MultiLevelCache, RedisCache
from bruno_memory_c.testing import RedisServer

from tests.support import (
    LOGGER, REPO, bounded_by, cache_maker, reset_server_stats, run_python, run_script,
    server_calls,
)
from tests.support.reference import reference_classes

PREFIX = "rc:"
HANG = 30.0  # a liveness bound: nothing here may take anywhere near this long

make = cache_maker(prefix=PREFIX)
bounded = bounded_by(HANG)


# ---------------------------------------------------------------------- helpers


class TimedMonitor:
    """The server's MONITOR stream, read on a thread of its own: every command the
    server executes, in order, with the server's own timestamp. (tests.support.Monitor
    reads the same stream on demand, without the timestamps.)"""

    LINE = re.compile(rb"^\+(\d+\.\d+) \[(\d+) ([^\]]*)\] (.*)$")
    ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')

    def __init__(self, server: RedisServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        self.file = self.sock.makefile("rb")
        assert self.file.readline() == b"+OK\r\n"
        self.sock.settimeout(None)
        self.server = server
        self.events: list[tuple[float, str, list[str]]] = []  # (time, client, args)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.file:
                m = self.LINE.match(line.rstrip(b"\r\n"))
                if m is None:
                    continue
                args = [a.decode("utf-8", "replace") for a in self.ARG.findall(m.group(4))]
                with self.lock:
                    self.events.append((float(m.group(1)), m.group(3).decode(), args))
        except (OSError, ValueError):
            pass

    def sync(self) -> None:
        """Wait until everything the server executed so far has been read: the stream
        is in execution order, so a marker sent now shows up after all of it."""
        marker = f"monitor-sync-{time.monotonic_ns()}"
        self.server.command("ECHO", marker)
        deadline = time.monotonic() + HANG
        while True:
            with self.lock:
                if any(args[:2] == ["ECHO", marker] for _, _, args in self.events):
                    return
            assert time.monotonic() < deadline, "MONITOR stream stalled"
            time.sleep(0.01)

    def commands(self, name: str, key: str | None = None) -> list[tuple[float, list[str]]]:
        with self.lock:
            return [(t, args) for t, _, args in self.events
                    if args and args[0].upper() == name and (key is None or args[1:2] == [key])]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


# ============================================================================
# Differences from bruno-memory, 2: "Expiry uses a monotonic clock, so a wall-clock
# change neither expires nor resurrects entries."
#
# The machine's clock is not ours to change. A tiny LD_PRELOAD shim
# (tests/scripts/walljump.c, compiled by the walljump fixture of dropin/conftest.py)
# shifts what the process (tests/scripts/wall_clock_jump.py) reads from the wall clock
# (clock_gettime on CLOCK_REALTIME and its variants, gettimeofday, time) by an offset
# the script sets at run time; CLOCK_MONOTONIC passes through untouched. The reference
# (bruno-memory 0.1.5's InMemoryCache, on time.time()) runs in the same process and is
# fooled both ways, which shows the jump really happened where a cache could see it.
# ============================================================================


def test_a_wall_clock_jump_neither_expires_nor_resurrects(walljump, redis_server, loop_name):
    env = dict(os.environ)
    # ASan's runtime, when the suite runs under it, must stay first.
    env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD", ""), walljump]))
    proc = run_script("wall_clock_jump", loop_name, redis_server.port, walljump, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    # The jump happened, to the wall clock only.
    assert 3599 < out["wall_step"] < 3601 + HANG, out
    assert -3601 - HANG < out["back_wall_step"] < -3599, out
    assert 0 <= out["monotonic_step"] < HANG, out

    # An hour ahead: the reference expires an entry with a minute left (its get, its
    # exists and its periodic sweep); ours, and MultiLevelCache's L1 (set directly, or
    # promoted from L2), keep serving it.
    assert out["ahead"] == {"ours": "v", "reference": None, "multilevel_l1": "v",
                            "promoted": "p"}, out
    assert out["ahead_exists"] == {"ours": True, "reference": False,
                                   "multilevel_l1": True}, out
    # the promoted copy answered, from L1
    assert out["ahead_promoted_from"] == {"l1_hits": 1, "l2_hits": 0, "misses": 0}, out
    assert out["ahead_expirations"] == {"ours": 0, "reference": 2, "multilevel_l1": 0}, out
    # [size, expirations] of started caches whose periodic sweep ran after the jump
    assert out["swept"] == {"ours": [2, 0], "reference": [0, 2]}, out

    # An hour back, after the ttl passed: the reference resurrects the entry; ours and
    # MultiLevelCache's L1 (a promoted copy too) do not, and count an expiration.
    assert out["back"] == {"ours": None, "reference": "v", "multilevel_l1": None,
                           "promoted_l1": None}, out
    assert out["back_expirations"] == {"ours": 1, "reference": 0, "multilevel_l1": 1,
                                       "promoted_l1": 1}, out


# ============================================================================
# RedisCache API: "Read-only attributes: the constructor's arguments (...), stats_key
# (prefix + "stats"), and connected (also _connected, the reference's name)."
# ============================================================================

READ_ONLY = {
    "host": "h.example", "port": 1234, "db": 3, "password": "pw", "username": "user",
    "prefix": "app:", "default_ttl": 60, "max_connections": 7, "pool_size": 5,
    "max_overflow": 2, "unix_socket_path": "/tmp/redis-readme.sock", "socket_timeout": 1.5,
    "connect_timeout": 2.5, "max_reply_bytes": 1 << 20,
}


@pytest.mark.parametrize("subclass", [False, True], ids=["RedisCache", "subclass"])
def test_redis_cache_read_only_attributes(subclass):
    cls = type("Mine", (RedisCache,), {}) if subclass else RedisCache
    cache = cls(**READ_ONLY)
    expected = dict(READ_ONLY, stats_key="app:stats", connected=False, _connected=False)
    for name, value in expected.items():
        assert getattr(cache, name) == value, name
        assert type(getattr(cache, name)) is type(value), name
    for name, value in expected.items():
        with pytest.raises(AttributeError):
            setattr(cache, name, value)
        with pytest.raises(AttributeError):
            setattr(cache, name, "other")
        with pytest.raises(AttributeError):
            delattr(cache, name)
    # Nothing changed (and none of the failed assignments landed anywhere).
    assert {name: getattr(cache, name) for name in expected} == expected
    if subclass:
        assert not set(vars(cache)) & set(expected), vars(cache)


async def test_connected_follows_the_connection_and_stays_read_only(redis_server):
    cache = make(redis_server)
    assert (cache.connected, cache._connected) == (False, False)
    await bounded(cache.connect())
    assert (cache.connected, cache._connected) == (True, True)
    for name in ("connected", "_connected"):
        with pytest.raises(AttributeError):
            setattr(cache, name, False)
        with pytest.raises(AttributeError):
            delattr(cache, name)
    assert cache.connected is True
    await bounded(cache.disconnect())
    assert (cache.connected, cache._connected) == (False, False)


# ============================================================================
# "get costs one round trip, not two: statistics increments are batched" (Differences
# 5; and the introduction: the reference "pays two round trips per get (the value, then
# a HINCRBY for statistics)").
# ============================================================================


async def test_a_get_is_one_get_command_in_one_write(redis_server):
    cache = make(redis_server)
    await bounded(cache.connect())
    await bounded(cache.set("k", [1]))
    await bounded(cache.get_stats())  # no increments left pending
    hits, misses = 200, 100
    reset_server_stats(redis_server)
    before = cache.stats()
    started = time.monotonic()
    for _ in range(hits):
        assert await bounded(cache.get("k")) == [1]
    for _ in range(misses):
        assert await bounded(cache.get("absent")) is None
    after = cache.stats()
    calls = server_calls(redis_server)
    elapsed = time.monotonic() - started
    hincrby = calls.pop("hincrby", 0)

    # The server ran one GET per get, and nothing else but the batched increments.
    assert calls == {"get": hits + misses}, calls
    # At most one flush (a HINCRBY for hits, one for misses) per second that passed.
    assert hincrby <= 2 * (int(elapsed) + 2), (hincrby, elapsed)
    # On the client side: one command per get (plus the flushes the client sent), and
    # one write each — a flush may share a write with a get, never adds a round trip.
    sent = after["commands"] - before["commands"]
    writes = after["batches"] - before["batches"]
    assert hits + misses <= sent <= hits + misses + hincrby, (sent, hincrby)
    assert hits + misses <= writes <= hits + misses + hincrby, (writes, hincrby)
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (hits, misses)

    # Everything counted reaches the hash (get_stats() flushes what is pending).
    stats = await bounded(cache.get_stats())
    assert (stats["hits"], stats["misses"]) == (hits, misses)
    await bounded(cache.disconnect())


@pytest.mark.filterwarnings("ignore:Call to deprecated:DeprecationWarning")  # redis-py's
async def test_the_reference_pays_a_hincrby_per_get(redis_server):
    """The README's comparison, measured the same way: bruno-memory 0.1.5's RedisCache
    sends GET then HINCRBY for every get."""
    ref = reference_classes()["RedisCache"](host="127.0.0.1", port=redis_server.port,
                                            prefix=PREFIX)
    await bounded(ref.connect())
    try:
        await bounded(ref.set("k", [1]))
        reset_server_stats(redis_server)
        for _ in range(20):
            assert await bounded(ref.get("k")) == [1]
        assert server_calls(redis_server) == {"get": 20, "hincrby": 20}
    finally:
        await bounded(ref.disconnect())


# ============================================================================
# RedisCache API table: what each method sends — "get_many ... (one MGET)", "set_many
# ... (one pipeline)", "clear() ... deletes every key under the prefix (SCAN + DEL)",
# and every other method one command, in one write.
# ============================================================================

METHOD_COMMANDS = [
    # (name, call, commands the server runs, writes, result)
    ("set", lambda c: c.set("a", {"v": 1}, ttl=60), {"set": 1}, 1, None),
    ("set-fractional-ttl", lambda c: c.set("b", 2, ttl=0.5), {"set": 1}, 1, None),
    ("get", lambda c: c.get("a"), {"get": 1}, 1, {"v": 1}),
    ("exists", lambda c: c.exists("a"), {"exists": 1}, 1, True),
    ("delete", lambda c: c.delete("b"), {"del": 1}, 1, True),
    ("get_many", lambda c: c.get_many(["a", "b", "c", "d"]), {"mget": 1}, 1, {"a": {"v": 1}}),
    ("set_many", lambda c: c.set_many({"x": 1, "y": [2], "z": "3"}, ttl=60), {"set": 3}, 1, None),
]


async def test_each_method_sends_what_the_table_says_in_one_write(redis_server):
    cache = make(redis_server)
    await bounded(cache.connect())
    for name, call, commands, writes, result in METHOD_COMMANDS:
        for _ in range(5):  # a sample no unrelated statistics flush landed in
            await bounded(cache.get_stats())  # sends the increments pending: none is due
            reset_server_stats(redis_server)
            before = cache.stats()
            got = await bounded(call(cache))
            after = cache.stats()
            calls = server_calls(redis_server)
            if "hincrby" not in calls:
                break
        assert got == result, name
        assert calls == commands, (name, calls)
        assert after["commands"] - before["commands"] == sum(commands.values()), name
        assert after["batches"] - before["batches"] == writes, name
    await bounded(cache.set_many({f"k{i}": i for i in range(50)}))
    reset_server_stats(redis_server)
    await bounded(cache.clear())
    calls = server_calls(redis_server)
    assert calls.keys() <= {"dbsize", "scan", "del"} and calls["scan"] >= 1, calls
    assert calls["del"] >= 1, calls
    # (the earlier gets' statistics may be flushed once a second, at any moment)
    assert set(redis_server.command("KEYS", PREFIX + "*")) <= {(PREFIX + "stats").encode()}
    await bounded(cache.disconnect())


# ============================================================================
# RedisCache, Statistics: "each process counts its hits and misses and adds them to the
# Redis hash prefix + "stats" (fields hits, misses) with HINCRBY at least once a second"
# (and Differences 5: "batched (at least once a second)").
# ============================================================================

#: Beyond the one second of the claim: the I/O thread's wake-up and the write, on a
#: loaded machine. Not a speed assumption: the flush is a timer, not work.
FLUSH_MARGIN = 1.0


def test_statistics_reach_the_hash_about_once_a_second_while_busy(redis_server):
    monitor = TimedMonitor(redis_server)
    stats_key = PREFIX + "stats"

    async def main():
        cache = make(redis_server)
        await bounded(cache.connect())
        await bounded(cache.set("k", 1))
        gets = 0
        busy_until = time.monotonic() + 4.5
        while time.monotonic() < busy_until:  # busy: gets all the time, 4.5 s long
            await bounded(asyncio.gather(*(cache.get("k") for _ in range(10))))
            gets += 10
            await asyncio.sleep(0.005)
        last_get = time.monotonic()
        # Liveness: the hash shows every get within the claim's second (plus margin).
        while True:
            stored = redis_server.command("HGET", stats_key, "hits")
            if stored is not None and int(stored) == gets:
                break
            assert time.monotonic() - last_get < 1.0 + FLUSH_MARGIN + 1.0, (stored, gets)
            await asyncio.sleep(0.01)
        await bounded(cache.disconnect())
        return gets

    try:
        gets = asyncio.run(main())
        monitor.sync()
        get_times = [t for t, _ in monitor.commands("GET", PREFIX + "k")]
        flushes = monitor.commands("HINCRBY", stats_key)
    finally:
        monitor.close()

    assert len(get_times) == gets
    # Only hits: each flush is one HINCRBY of the hits field, and they add up.
    assert all(args[2] == "hits" for _, args in flushes), flushes
    assert sum(int(args[3]) for _, args in flushes) == gets
    flush_times = [t for t, _ in flushes]

    first, last = get_times[0], get_times[-1]
    window = last - first
    during = [t for t in flush_times if first <= t <= last]
    # About once a second while busy: as many flushes as seconds in the window, give
    # or take one for where the window starts and ends in the flush period.
    assert window / 1.0 - 1 <= len(during) <= window / 1.0 + 1, (window, during)
    # ... and not more often: consecutive flushes about a second apart (by the server's
    # timestamps, which a server descheduled on a loaded machine shifts; a flush per
    # get, per write or per batch would be milliseconds apart).
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert gaps and min(gaps) >= 0.5, gaps
    # After the last get, its increment arrives within the second of the claim.
    after_last = [t for t in flush_times if t >= last]
    assert after_last and after_last[0] - last <= 1.0 + FLUSH_MARGIN, (last, after_last)


# ============================================================================
# RedisCache, Failures: "The next connection is made when a request needs one ...
# after a backoff of 50 ms doubling to 2 s — whatever the cause ... While backing off
# after a failed attempt, requests fail fast with its error."
# ============================================================================


class HangUpListener:
    """A listening socket of ours that accepts each connection and closes it at once:
    every attempt of the cache fails (its handshake sees the connection closed), and
    each is counted, with the time it was accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[float] = []
        self.lock = threading.Lock()
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self.done:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            # Taken before the close, so before the client can see the failure its
            # backoff starts from: the gap to the next accept is at least the backoff.
            with self.lock:
                self.accepted.append(time.monotonic())
            conn.close()

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def close(self) -> None:
        self.done = True
        self.thread.join(5)
        self.sock.close()


BACKOFFS = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]  # 50 ms doubling, capped at 2 s


def measure_backoff() -> tuple[list[float], list[str], list[tuple[str, str]]]:
    """One series of connect() attempts against a HangUpListener: (the times the
    listener accepted them, each connect()'s error, [(a get's error during the backoff
    that followed, that attempt's error)])."""
    listener = HangUpListener()
    errors: list[str] = []
    fail_fast: list[tuple[str, str]] = []

    async def main():
        # connect_timeout above the 2 s cap: each connect() made during a backoff waits
        # for its end and then makes exactly one attempt.
        cache = RedisCache(host="127.0.0.1", port=listener.port, connect_timeout=5.0,
                           socket_timeout=5.0)
        for attempt in range(len(BACKOFFS) + 1):
            with pytest.raises(CacheError, match="^Redis connection failed: ") as failed:
                await bounded(cache.connect())
            errors.append(str(failed.value))
            accepted = listener.count()
            if BACKOFFS[min(attempt, len(BACKOFFS) - 1)] >= 0.4:
                # A request during the backoff fails at once, with the attempt's error,
                # and makes no attempt of its own.
                with pytest.raises(CacheError, match="^Redis connection failed: ") as info:
                    await bounded(cache.get("k"))
                fail_fast.append((str(info.value), str(failed.value)))
                assert listener.count() == accepted, "a request during a backoff connected"

    try:
        asyncio.run(main())
        return list(listener.accepted), errors, fail_fast
    finally:
        listener.close()


def test_reconnect_attempts_back_off_from_50ms_doubling_to_2s():
    """The attempts are counted where they arrive: a listening socket of ours. The gap
    between two accepted attempts is at least the backoff — no slack below (a backoff
    is a minimum; the accept is timed before the close the client's failure, and so its
    backoff, comes from). Above it, slack for the I/O thread's wake-up and our
    listener thread's: backoff x 1.25 + 0.3 s, which the next doubling exceeds, so the
    series must double and stop doubling at 2 s. A series spoilt by a stall of the
    machine (the listener not accepting in time: the attempt then times out, or a gap
    exceeds its slack) is measured again, at most twice; a gap below its backoff fails
    at once."""
    runs = []
    for _ in range(3):
        accepted, errors, fail_fast = measure_backoff()
        gaps = [b - a for a, b in zip(accepted, accepted[1:])]
        runs.append([round(g, 3) for g in gaps])
        # Requests during a backoff fail fast, with the error of the attempt before.
        assert len(fail_fast) == 6 and all(mine == theirs for mine, theirs in fail_fast), \
            fail_fast
        # Never sooner than the backoff.
        for gap, backoff in zip(gaps, BACKOFFS):
            assert gap >= backoff, (gaps, BACKOFFS)
        stalled = any("Timeout" in e for e in errors) or len(accepted) != len(BACKOFFS) + 1
        if not stalled and all(gap <= backoff * 1.25 + 0.3
                               for gap, backoff in zip(gaps, BACKOFFS)):
            break
    else:
        raise AssertionError(f"attempt gaps (s) {runs} against backoffs {BACKOFFS}")


# ============================================================================
# MultiLevelCache API: "an L1 miss is one pipelined request (GET + PTTL)" (and the
# benchmarks: "ours: one per L2 operation, GET+PTTL pipelined").
# ============================================================================


@pytest_asyncio.fixture
async def multilevel(redis_server):
    l1 = InMemoryCache()
    l2 = make(redis_server)
    m = MultiLevelCache(l1, l2)
    await bounded(m.start())
    yield m, l1, l2
    await bounded(m.stop())


@pytest.mark.parametrize("stored", [True, False], ids=["l2-hit", "miss"])
async def test_an_l1_miss_is_get_and_pttl_in_one_write(redis_server, multilevel, stored):
    m, l1, l2 = multilevel
    if stored:
        await bounded(l2.set("k", {"v": 1}, ttl=60))
    for _ in range(5):  # a sample an unrelated statistics flush did not land in
        await bounded(l1.clear())
        await bounded(l2.get_stats())  # sends what is pending: no flush is due
        reset_server_stats(redis_server)
        before = l2.stats()
        got = await bounded(m.get("k"))
        after = l2.stats()
        calls = server_calls(redis_server)
        if "hincrby" not in calls:
            break
    assert got == ({"v": 1} if stored else None)
    assert calls == {"get": 1, "pttl": 1}, calls
    assert after["batches"] - before["batches"] == 1, (before, after)
    assert after["commands"] - before["commands"] == 2, (before, after)
    # The answer was promoted (an L2 hit), and the next get is an L1 hit: nothing sent.
    if stored:
        assert await l1.get("k") == {"v": 1}
        reset_server_stats(redis_server)
        assert await m.get("k") == {"v": 1}
        assert server_calls(redis_server) == {}


# ============================================================================
# "Use it under bruno-memory: install()": the notes on imports.
# ============================================================================


def make_importable_bruno_memory(root) -> None:
    """A bruno-memory whose package __init__ imports (a stand-in of the same shape),
    with a module of its own that imports the cache classes by name."""
    pkg = root / "bruno_memory"
    (pkg / "utils").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .utils import cache as _cache\n")
    (pkg / "exceptions.py").write_text("class CacheError(Exception):\n    pass\n")
    (pkg / "utils" / "__init__.py").write_text(
        "from bruno_memory.utils.cache import CacheInterface, InMemoryCache, "
        "MultiLevelCache, RedisCache\n")
    (pkg / "utils" / "cache.py").write_text(
        "import abc\nREDIS_AVAILABLE = False\n"
        "class CacheInterface(abc.ABC):\n    pass\n"
        "class InMemoryCache(CacheInterface):\n    pass\n"
        "class RedisCache(CacheInterface):\n    pass\n"
        "class MultiLevelCache(CacheInterface):\n    pass\n")
    imports = "from bruno_memory.utils.cache import InMemoryCache, MultiLevelCache, RedisCache\n"
    (pkg / "managers.py").write_text(imports)
    (root / "user_app.py").write_text(imports)
    (root / "late_app.py").write_text(imports)


def test_a_module_that_imported_before_install_keeps_its_classes_unless_bruno(tmp_path):
    """'A module that ran `from bruno_memory.utils.cache import ...` before install()
    keeps the classes it got unless it belongs to bruno-memory: call install() first.'"""
    make_importable_bruno_memory(tmp_path)
    proc = run_python(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import bruno_memory.managers, user_app
        import bruno_memory.utils.cache as cache
        names = ("InMemoryCache", "MultiLevelCache", "RedisCache")
        reference = {{n: getattr(cache, n) for n in names}}
        import bruno_memory_c
        bruno_memory_c.install()
        import late_app
        for n in names:
            ours = getattr(bruno_memory_c, n)
            assert getattr(user_app, n) is reference[n], n            # kept
            assert getattr(user_app, n) is not ours, n
            assert getattr(bruno_memory.managers, n) is ours, n       # bruno-memory's
            assert getattr(late_app, n) is ours, n                    # after install()
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_non_bruno_module_keeps_the_real_reference_classes():
    """The same with the installed bruno-memory 0.1.5 (its dependencies missing): a
    module outside bruno-memory that holds the reference classes keeps them."""
    proc = run_python("""
        import sys, types
        import bruno_memory_c
        from bruno_memory_c._install import _import_bruno_cache

        cache, _, _ = _import_bruno_cache()   # bruno-memory's cache module, loaded
        names = ("InMemoryCache", "MultiLevelCache", "RedisCache")
        reference = {n: getattr(cache, n) for n in names}
        assert all(c.__module__ == "bruno_memory.utils.cache" for c in reference.values())
        user = types.ModuleType("user_app")
        bruno = types.ModuleType("bruno_memory.managers_like")
        for module in (user, bruno):
            module.__dict__.update(reference)
            sys.modules[module.__name__] = module
        bruno_memory_c.install()
        for n in names:
            assert getattr(user, n) is reference[n], n
            assert getattr(bruno, n) is getattr(bruno_memory_c, n), n
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_with_dependencies_missing_only_the_cache_modules_import():
    """'When bruno-memory's own dependencies are missing, only its cache modules are
    loaded: `from bruno_memory.utils.cache import ...` and `from bruno_memory.utils
    import ...` work, while `import bruno_memory` (and `import bruno_memory.utils.cache`,
    which imports the package first) raises bruno-memory's own ImportError, naming the
    missing dependency.'"""
    # What bruno-memory itself raises here, without install(): its missing dependency.
    plain = run_python("""
        try:
            import bruno_memory
        except ImportError as e:
            print(type(e).__name__, e.name)
        else:
            print("imported", "-")
    """)
    assert plain.returncode == 0, plain.stderr
    kind, missing = plain.stdout.split()
    assert kind == "ModuleNotFoundError" and not missing.startswith("bruno_memory"), plain.stdout

    proc = run_python("""
        import json
        import bruno_memory_c
        bruno_memory_c.install()
        results = {}
        from bruno_memory.utils.cache import InMemoryCache, MultiLevelCache, RedisCache
        from bruno_memory.utils import InMemoryCache as U1, MultiLevelCache as U2, RedisCache as U3
        from bruno_memory.exceptions import CacheError
        assert (InMemoryCache, MultiLevelCache, RedisCache) == (
            bruno_memory_c.InMemoryCache, bruno_memory_c.MultiLevelCache, bruno_memory_c.RedisCache)
        assert (U1, U2, U3) == (InMemoryCache, MultiLevelCache, RedisCache)
        for statement in ("import bruno_memory", "import bruno_memory.utils.cache",
                          "import bruno_memory.utils"):
            try:
                exec(statement, {})
            except ImportError as e:
                results[statement] = [type(e).__name__, e.name, str(e)]
            else:
                results[statement] = "imported"
        # the cache modules still work afterwards
        from bruno_memory.utils.cache import InMemoryCache as again
        assert again is bruno_memory_c.InMemoryCache
        print(json.dumps(results))
    """)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    expected = ["ModuleNotFoundError", missing, f"No module named {missing!r}"]
    assert results == {"import bruno_memory": expected,
                       "import bruno_memory.utils.cache": expected,
                       "import bruno_memory.utils": expected}, results


def test_install_without_bruno_memory_says_so_in_one_line():
    """Troubleshooting: '`ImportError: bruno_memory_c.install() needs bruno-memory`'."""
    proc = run_python(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        import bruno_memory_c
        try:
            bruno_memory_c.install()
        except ImportError as e:
            print(type(e).__name__ + ": " + str(e))
    """, "-I", "-S")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ImportError: bruno_memory_c.install() needs bruno-memory")
    assert proc.stdout.count("\n") == 1


# ============================================================================
# "Testing your code against a real Redis" and Troubleshooting: "`FileNotFoundError:
# redis-server not found` from bruno_memory_c.testing: install it (...) or pass
# RedisServer(executable=...)".
# ============================================================================


def server_info(server: RedisServer) -> dict[str, str]:
    info = server.command("INFO", "server").decode()
    return dict(line.split(":", 1) for line in info.splitlines() if ":" in line)


def test_redis_server_from_an_explicit_executable(tmp_path, monkeypatch):
    real = shutil.which("redis-server")
    assert real
    link = tmp_path / "bin" / "my-redis-server"
    link.parent.mkdir()
    link.symlink_to(real)
    # Not on the PATH at all: only the explicit path can find it.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with RedisServer(executable=str(link)) as server:
        assert server.executable == str(link)
        info = server_info(server)
        assert info["executable"] == str(link)
        assert int(info["process_id"]) == server.proc.pid
        assert server.command("PING") == "PONG"


def test_redis_server_with_a_bad_executable_path(tmp_path):
    bad = tmp_path / "no" / "redis-server"
    server = RedisServer(executable=str(bad))
    with pytest.raises(FileNotFoundError) as info:
        with server:
            pass
    assert str(bad) in str(info.value)
    assert server.proc is None and not os.path.exists(server.dir)


def test_redis_server_not_on_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="^redis-server not found: install it"):
        RedisServer()


# ============================================================================
# Other README claims without a test of their own.
# ============================================================================


async def test_every_request_of_every_task_goes_over_one_connection(redis_server):
    """Introduction: 'pipelines every request of every task on one connection'; API:
    'max_connections, pool_size, max_overflow are accepted ...: every request of a cache
    is pipelined on one connection'."""

    def connections_received() -> int:
        return int(server_info_stats(redis_server)["total_connections_received"])

    first = connections_received()  # (each probe is a connection of its own)
    cache = make(redis_server, max_connections=2, pool_size=1, max_overflow=0)
    await bounded(cache.set("k", 1))

    async def task(i):
        for _ in range(20):
            assert await cache.get("k") == 1
        await cache.set(f"t{i}", i)
        assert await cache.get_many([f"t{i}", "k"]) == {f"t{i}": i, "k": 1}

    await bounded(asyncio.gather(*(task(i) for i in range(100))))
    clients = [line for line in redis_server.command("CLIENT", "LIST").decode().splitlines()
               if "cmd=client" not in line]
    assert len(clients) == 1, clients
    # Since the first probe: the cache's one connection, CLIENT LIST's and this probe's.
    assert connections_received() - first == 3
    await bounded(cache.disconnect())


def server_info_stats(server: RedisServer) -> dict[str, str]:
    info = server.command("INFO", "stats").decode()
    return dict(line.split(":", 1) for line in info.splitlines() if ":" in line)


async def test_errors_are_logged_with_the_reference_messages(redis_server, caplog):
    """'Errors are logged on the bruno_memory_c logger with the reference's messages
    (Error getting key ..., Error setting key ..., Error clearing cache: ..., Error
    getting stats: ..., Failed to connect to Redis: ..., ...)' and Troubleshooting: 'Set
    the bruno_memory_c logger ... to see the errors that get, get_many, delete and exists
    swallow'. Every method, failing on the server (an ACL user allowed to connect and
    nothing else), and a connection refused."""
    redis_server.command("ACL", "SETUSER", "limited", "on", ">pw", "~*", "+@all", "-get",
                         "-mget", "-del", "-exists", "-scan", "-hincrby", "-hgetall", "-set",
                         "-dbsize")
    cache = make(redis_server, username="limited", password="pw")
    await bounded(cache.connect())

    async def logged(call, *, raises=None):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            if raises:
                with pytest.raises(CacheError, match=raises):
                    await bounded(call())
                result = "raised"
            else:
                result = await bounded(call())
        records = [r for r in caplog.records if r.name == LOGGER]
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].levelno == logging.ERROR
        return result, records[0].getMessage()

    # (each call is made inside logged(): the work starts when a method is called)
    expected = [
        (lambda: cache.get("k1"), None, None, "Error getting key k1: "),
        (lambda: cache.exists("k2"), None, False, "Error checking key k2: "),
        (lambda: cache.delete("k3"), None, False, "Error deleting key k3: "),
        (lambda: cache.get_many(["a", "b"]), None, {}, "Error getting multiple keys: "),
        (lambda: cache.set("k4", 1), "^Failed to set cache key: ", "raised",
         "Error setting key k4: "),
        (lambda: cache.set_many({"a": 1}), "^Failed to set multiple keys: ", "raised",
         "Error setting multiple keys: "),
        (lambda: cache.clear(), "^Failed to clear cache: ", "raised", "Error clearing cache: "),
        (lambda: cache.get_stats(), None, None, "Error getting stats: "),
    ]
    for call, raises, result, message in expected:
        got, text = await logged(call, raises=raises)
        if message == "Error getting stats: ":
            assert set(got) == {"type", "error"} and got["type"] == "redis", got
            assert "NOPERM" in got["error"], got
        else:
            assert got == result, (message, got)
        assert text.startswith(message) and "NOPERM" in text, text
    await bounded(cache.disconnect())

    refused = make(redis_server, username="limited", password="wrong")
    got, text = await logged(refused.connect, raises="^Redis connection failed: .*WRONGPASS")
    assert text.startswith("Failed to connect to Redis: ") and "WRONGPASS" in text, text


async def test_a_stalled_server_gives_none_and_logs_the_timeout(redis_server, caplog):
    """Troubleshooting: '`get` returns `None` and the log says `Timeout reading from
    socket`: the server did not answer within socket_timeout ... The cache replaces the
    connection and carries on; cache.stats() counts timeouts, errors and reconnects.'"""
    cache = make(redis_server, socket_timeout=0.5)
    await bounded(cache.connect())
    await bounded(cache.set("k", 1))
    before = cache.stats()
    staller = redis_server.stall(3600)  # until the test ends it
    try:
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            assert await bounded(cache.get("k")) is None
        messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert messages == ["Error getting key k: Timeout reading from socket"], messages
    finally:
        await asyncio.to_thread(staller.cancel)
    assert await bounded(cache.get("k")) == 1  # carries on, over a new connection
    after = cache.stats()
    assert after["timeouts"] - before["timeouts"] == 1, after
    assert after["errors"] - before["errors"] == 1, after
    assert after["reconnects"] - before["reconnects"] == 1, after
    assert after["connected"] is True
    await bounded(cache.disconnect())
