"""RedisCache under faults: a real redis-server that dies, stalls, drops or refuses us.

What is checked (README "RedisCache API", its Failures and the error table of "Errors";
ARCHITECTURE "Failure model"):
- once connected, a failing request gives what the reference gives -- get -> None,
  get_many -> {}, delete/exists -> False, set/set_many/clear -> CacheError,
  get_stats -> {"type": "redis", "error": ...} -- and no await hangs;
- after the fault ends the cache works again with no user action (reconnect), and the
  replies of requests that failed are never handed to later requests;
- cancelling awaiting tasks, disconnect() under load, and failures leak nothing
  (refcounts, tracemalloc, glibc malloc, CacheAwaitable objects).

Every fault is real: SIGKILL / SIGSTOP of the server process (a stall), CLIENT KILL,
requirepass, maxclients, the server's idle timeout, a closed port, a listener that never
answers. Nothing asserts on time except hang detection: every await is bounded by
``HANG`` (many times the socket_timeout), every "works again" poll by ``RECOVER``. No
verdict depends on how fast anything runs: a test waits for the state it needs (the
server stopped, requests on the connection, counters reached, workers running) instead
of sleeping, and a stall lasts until the test ends it.
"""
from __future__ import annotations

import asyncio
import collections
import gc
import json
import random
import socket
import sys
import threading
import time

import pytest

from bruno_memory_c import CacheError, RedisCache
from bruno_memory_c.testing import RedisServer, _encode
from tests.support import (
    ALL_TRANSPORTS, HANG, RECOVER, STALL, TIMEOUT, awaitables_alive, bounded_by, cache_maker,
    memory_growth, on_the_connection,
    run_script, sent_to, stalled, until, wait_in_flight_zero,
)
from tests.support.leakmeter import native_heap_bytes

PREFIX = "flt:"
# Commands each request sends (what stats()["commands"] counts once the request is on
# the connection): clear()'s first step is DBSIZE + SCAN.
COMMANDS = {"get": 1, "get_many": 1, "exists": 1, "delete": 1, "set": 1, "set_many": 1,
            "clear": 2}


pytestmark = pytest.mark.usefixtures("quiet_cache_logger")
#: Every test on a redis_server (or a server_options one) runs over plaintext and over
#: TLS (conftest.py): the same faults, the same outcomes.
TRANSPORTS = ALL_TRANSPORTS


# ---------------------------------------------------------------------- helpers


make_cache = cache_maker(prefix=PREFIX, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
bounded = bounded_by(HANG)


async def works(cache: RedisCache, tag: str) -> bool:
    """Does a set followed by a get round-trip right now?"""
    value = [tag, random.random()]
    try:
        await bounded(cache.set(f"probe:{tag}", value))
    except CacheError:
        return False
    return await bounded(cache.get(f"probe:{tag}")) == value


async def wait_until_works(cache: RedisCache, limit: float = RECOVER) -> int:
    """Poll (bounded) until the cache works again; returns the attempts it took."""
    deadline = time.monotonic() + limit
    attempt = 0
    while True:
        attempt += 1
        if await works(cache, f"w{attempt}"):
            return attempt
        assert time.monotonic() < deadline, f"no recovery within {limit}s: {cache.stats()}"
        await asyncio.sleep(0.05)


async def connect_when_answered(cache: RedisCache, limit: float = RECOVER) -> None:
    """connect() again and again (bounded, 0.1 s apart) until it succeeds: the server
    came back (restarted, or its port freed); AssertionError after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        try:
            await bounded(cache.connect())
            return
        except CacheError:
            assert time.monotonic() < deadline, f"connect() failing after {limit}s"
            await asyncio.sleep(0.1)


async def assert_error_table(cache: RedisCache) -> None:
    """Every method fails as the reference's does, one after the other, and promptly."""
    assert await bounded(cache.get("k")) is None
    assert await bounded(cache.get_many(["k", "k2"])) == {}
    assert await bounded(cache.delete("k")) is False
    assert await bounded(cache.exists("k")) is False
    with pytest.raises(CacheError, match="Failed to set cache key"):
        await bounded(cache.set("k", 1))
    with pytest.raises(CacheError, match="Failed to set multiple keys"):
        await bounded(cache.set_many({"k": 1, "k2": 2}))
    with pytest.raises(CacheError, match="Failed to clear cache"):
        await bounded(cache.clear())
    stats = await bounded(cache.get_stats())
    assert stats["type"] == "redis" and "error" in stats, stats


async def assert_error_table_concurrently(cache: RedisCache, n: int = 50) -> None:
    """The same, with many requests of every kind failing at once."""
    aws = []
    for i in range(n):
        aws += [cache.get(f"k{i}"), cache.get_many([f"k{i}", "x"]), cache.delete(f"k{i}"),
                cache.exists(f"k{i}"), cache.set(f"k{i}", i), cache.set_many({f"k{i}": i})]
    aws.append(cache.clear())
    results = await bounded(asyncio.gather(*aws, return_exceptions=True))
    for i in range(n):
        get, many, delete, exists, set_, set_many = results[6 * i:6 * i + 6]
        assert get is None and many == {} and delete is False and exists is False, results
        assert isinstance(set_, CacheError) and isinstance(set_many, CacheError), results
    assert isinstance(results[-1], CacheError), results[-1]


async def store_distinct(cache: RedisCache, n: int, tag: str = "d") -> dict:
    """n keys with distinct values, stored; returns {key: value}."""
    data = {f"{tag}{i}": {"i": i, "tag": tag, "pad": "x" * (i % 13)} for i in range(n)}
    await bounded(cache.set_many(data))
    return data


async def assert_all_readable(cache: RedisCache, data: dict) -> None:
    keys = list(data)
    got = await bounded(asyncio.gather(*(cache.get(k) for k in keys)))
    assert got == [data[k] for k in keys]


# ------------------------------------------------------- the error table, once connected


async def test_error_table_after_server_killed(redis_server):
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    await bounded(cache.set("k", "v"))
    before = cache.stats()
    redis_server.kill()
    await assert_error_table(cache)           # the connection has just failed
    await assert_error_table_concurrently(cache)
    await asyncio.sleep(3 * TIMEOUT)          # reconnect attempts, backoff
    await assert_error_table(cache)
    await assert_error_table_concurrently(cache)
    after = cache.stats()
    assert after["errors"] > before["errors"]
    assert after["connected"] is False
    assert cache.connected  # connect() succeeded and nobody called disconnect()
    await wait_in_flight_zero(cache)
    await asyncio.to_thread(redis_server.restart)
    await wait_until_works(cache)
    assert cache.stats()["reconnects"] > before["reconnects"]
    await bounded(cache.disconnect())


async def test_error_table_while_server_frozen(redis_server):
    """SIGSTOP: the kernel still accepts connections, nothing ever answers. Requests in
    flight and requests waiting for a (re)connection all give up by socket_timeout."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 100)
    with stalled(redis_server):
        await assert_error_table(cache)
        await assert_error_table_concurrently(cache)
        assert cache.stats()["timeouts"] > 0
    await wait_until_works(cache)
    await assert_all_readable(cache, data)
    await wait_in_flight_zero(cache)


async def test_error_table_while_reconnect_is_refused_by_auth(redis_server):
    """The server starts requiring a password and drops us: every reconnection fails in
    its handshake (NOAUTH). Requests fail per the table; once the password is removed
    again, the cache reconnects by itself."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 50)
    redis_server.command("CONFIG", "SET", "requirepass", "later-pw")
    redis_server.password = "later-pw"
    try:
        assert redis_server.command("CLIENT", "KILL", "TYPE", "normal") >= 1
        await assert_error_table(cache)
        await assert_error_table_concurrently(cache)
    finally:
        redis_server.command("CONFIG", "SET", "requirepass", "")
        redis_server.password = None
    await wait_until_works(cache)
    await assert_all_readable(cache, data)


# ------------------------------------------------------------------ kill -9 under load


async def test_kill9_mid_load_then_restart(redis_server):
    """Many tasks loop over get/set/exists/get_many on their own keys; the server is
    SIGKILLed under them and restarted on the same port. Every await returns (a right
    value, None/False/{} or CacheError), none hangs, and the cache works again. The
    phases follow the load's progress, not the clock: every worker has had an answer
    before the kill, every worker has seen a failure before the restart, and every
    worker has had a right value from the new server before the load stops."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    before = cache.stats()
    stop = False
    seen = collections.Counter()
    nworkers = 200
    phase = {"name": "before"}
    progress = {name: set() for name in ("before", "dead", "after")}

    async def worker(w: int) -> int:
        key, n, last_attempt = f"w{w}", 0, -1
        while not stop:
            n += 1
            op = n % 5
            failed = False
            if op == 0:
                last_attempt = n
                try:
                    assert await bounded(cache.set(key, [w, n])) is None
                    seen["set ok"] += 1
                except CacheError:
                    seen["set failed"] += 1
                    failed = True
            elif op == 1:
                r = await bounded(cache.get_many([key, "nothing"]))
                assert r == {} or (list(r) == [key] and r[key][0] == w
                                   and r[key][1] <= last_attempt), r
            elif op == 2:
                assert await bounded(cache.exists(key)) in (True, False)
            else:
                v = await bounded(cache.get(key))
                if v is None:
                    seen["get none"] += 1
                    failed = True
                else:
                    # Our own value: a failed set may still have been applied, so any
                    # value up to the last one attempted, never another key's.
                    assert v[0] == w and v[1] <= last_attempt, (w, v, last_attempt)
                    seen["get ok"] += 1
            if phase["name"] == "dead" and failed:
                progress["dead"].add(w)
            elif phase["name"] != "dead" and not failed and op >= 3:
                progress[phase["name"]].add(w)  # its value, read from a live server
            if failed:
                await asyncio.sleep(0.002)  # fail-fast loops must not starve the loop
        return n

    workers = [asyncio.create_task(worker(w)) for w in range(nworkers)]
    try:
        await until(lambda: len(progress["before"]) == nworkers, "every worker served",
                    HANG)
        phase["name"] = "dead"
        redis_server.kill()
        await until(lambda: len(progress["dead"]) == nworkers,
                    "every worker saw the dead server", HANG)
        await asyncio.to_thread(redis_server.restart)
        phase["name"] = "after"
        await wait_until_works(cache)
        await until(lambda: len(progress["after"]) == nworkers,
                    "every worker served by the new server", RECOVER)
    finally:
        stop = True
        counts = await bounded(asyncio.gather(*workers), 60)
    assert min(counts) > 0
    assert seen["set failed"] + seen["get none"] >= nworkers, seen
    after = cache.stats()
    assert after["errors"] > before["errors"]
    assert after["reconnects"] > before["reconnects"]
    await wait_in_flight_zero(cache)
    # Every worker's key works again, no user action needed.
    await bounded(cache.set_many({f"w{w}": [w, -1] for w in range(nworkers)}))
    got = await bounded(asyncio.gather(*(cache.get(f"w{w}") for w in range(nworkers))))
    assert got == [[w, -1] for w in range(nworkers)]


async def test_kill9_repeatedly(redis_server):
    """Several crash/restart cycles, each with gets certainly in flight when the server
    dies (sent to it while it was stalled, so unanswered): each of them fails (None),
    and each time the cache comes back by itself."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    for cycle in range(3):
        data = await store_distinct(cache, 30, tag=f"c{cycle}_")
        await assert_all_readable(cache, data)
        with stalled(redis_server):
            commands = cache.stats()["commands"]
            pending = [asyncio.ensure_future(cache.get(k)) for k in data]
            await on_the_connection(cache, commands, len(data))
            redis_server.kill()
        results = await bounded(asyncio.gather(*pending))
        assert results == [None] * len(data)
        assert await bounded(cache.get("x")) is None
        await asyncio.to_thread(redis_server.restart)
        await wait_until_works(cache)
    assert cache.stats()["reconnects"] >= 3


async def test_kill9_unix_socket():
    """The same over a unix socket: the socket file disappears with the server and comes
    back with the restart."""
    server = RedisServer(unix_socket=True).start()
    try:
        cache = RedisCache(unix_socket_path=server.unix_path, prefix=PREFIX,
                           socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
        await bounded(cache.connect())
        data = await store_distinct(cache, 50)
        with stalled(server):  # the gets are certainly in flight when it dies
            commands = cache.stats()["commands"]
            pending = [asyncio.ensure_future(cache.get(k)) for k in data]
            await on_the_connection(cache, commands, len(data))
            server.kill()
        got = await bounded(asyncio.gather(*pending))
        assert got == [None] * len(data)
        await assert_error_table(cache)
        await asyncio.to_thread(server.restart)
        await wait_until_works(cache)
        assert cache.stats()["reconnects"] >= 1
        await bounded(cache.disconnect())
    finally:
        server.close()


async def test_reconnect_keeps_db_and_password(server_options):
    """A reconnection authenticates and selects the database again: after our
    connection is killed, writes still land in db 2, and need the password."""
    server = RedisServer(password="pw-db", **server_options).start()
    try:
        cache = make_cache(server, password="pw-db", db=2)
        await bounded(cache.connect())
        await bounded(cache.set("before", 1))
        for _ in range(2):
            assert server.command("CLIENT", "KILL", "TYPE", "normal") >= 1
            await wait_until_works(cache)
        await bounded(cache.set("after", 2))
        assert await bounded(cache.get_many(["before", "after"])) == {"before": 1, "after": 2}
        keyspace = server.command("INFO", "keyspace").decode()
        assert "db2:keys=" in keyspace and "db0:" not in keyspace, keyspace
        assert cache.stats()["reconnects"] >= 2
        await bounded(cache.disconnect())
    finally:
        server.close()


async def test_100k_requests_while_server_frozen(redis_server):
    """More requests than may be in flight (the rest wait in the backlog), all while
    nothing answers: every one gives up (get -> None), none hangs, then all is well."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    await bounded(cache.set("a", 1))
    with stalled(redis_server):
        aws = [cache.get("a") for _ in range(100_000)]
        got = []
        for aw in aws:
            got.append(await bounded(aw))
        assert got == [None] * len(aws)
    await wait_until_works(cache)
    await wait_in_flight_zero(cache)
    assert await bounded(cache.get("a")) == 1


# --------------------------------------------------------------------------- stalls


async def test_stall_longer_than_socket_timeout(redis_server):
    """A server that stops answering for longer than socket_timeout (here: until the
    test is done): every request fails per the table (the first ones time out on the
    connection, then the reconnection attempts time out), and afterwards the replies the
    server finally sends for the abandoned requests reach nobody."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 200)
    before = cache.stats()
    with stalled(redis_server):
        got = await bounded(asyncio.gather(*(cache.get(k) for k in data)))
        assert got == [None] * len(data)
        with pytest.raises(CacheError):
            await bounded(cache.set("k", 1))
        assert await bounded(cache.exists("d1")) is False
        assert await bounded(cache.get_many(list(data)[:10])) == {}
        assert cache.stats()["timeouts"] > before["timeouts"]
    await wait_until_works(cache)
    # The replies the stalled server finally sent for the abandoned requests were not
    # handed to anybody else: every key reads its own value.
    await assert_all_readable(cache, data)
    await wait_in_flight_zero(cache)


async def test_stall_shorter_than_socket_timeout_is_not_an_error(redis_server):
    """Requests sent to a server that stalls, and resumes well within socket_timeout,
    are answered: no error, no timeout. The stall ends once all of them are on the
    connection (sent while the server was stopped)."""
    cache = make_cache(redis_server, socket_timeout=30.0, connect_timeout=30.0)
    await bounded(cache.connect())
    data = await store_distinct(cache, 100)
    with stalled(redis_server):
        commands = cache.stats()["commands"]
        reading = asyncio.ensure_future(asyncio.gather(*(cache.get(k) for k in data)))
        await on_the_connection(cache, commands, len(data))
        assert not reading.done()
    assert await bounded(reading, 60) == list(data.values())
    assert cache.stats()["timeouts"] == 0 and cache.stats()["errors"] == 0


async def test_stall_with_continuous_load(redis_server):
    """Stalls hit while requests stream in: the ones caught give up, the rest are
    right, and afterwards everything is right again. Each stall lasts until requests
    have failed in it, and the next begins once requests are answered again."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 50)
    keys = list(data)
    stop = False
    results = collections.Counter()

    async def reader(i):
        while not stop:
            k = keys[(i * 7 + results["n"]) % len(keys)]
            results["n"] += 1
            v = await bounded(cache.get(k))
            if v is None:
                results["none"] += 1
                await asyncio.sleep(0.005)
            else:
                assert v == data[k]
                results["ok"] += 1

    readers = [asyncio.create_task(reader(i)) for i in range(50)]
    try:
        for _ in range(2):
            ok = results["ok"]
            await until(lambda: results["ok"] >= ok + 100, "reads answered", RECOVER)
            none = results["none"]
            with stalled(redis_server):
                await until(lambda: results["none"] >= none + 50, "reads failed in the stall",
                            HANG)
    finally:
        stop = True
        await bounded(asyncio.gather(*readers), 60)
    assert results["ok"] >= 200 and results["none"] >= 100, results
    await wait_until_works(cache)
    await assert_all_readable(cache, data)


# ----------------------------------------------------------------------- CLIENT KILL


async def test_client_kill_in_flight_then_reconnect(redis_server):
    """Our connection is killed three times under a continuous load: each kill finds it
    connected (and kills exactly it), the load goes on, the cache reconnects by itself
    each time, and every value read is the right one."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 100)
    keys = list(data)
    before = cache.stats()
    stop = False
    seen = collections.Counter()

    async def worker(i):
        n = 0
        while not stop:
            n += 1
            k = keys[(i + n) % len(keys)]
            if n % 4 == 0:
                try:
                    await bounded(cache.set(k, data[k]))
                    seen["set ok"] += 1
                except CacheError:
                    seen["set failed"] += 1
                continue
            v = await bounded(cache.get(k))
            if v is None:
                seen["none"] += 1
            else:
                assert v == data[k], (k, v)
                seen["ok"] += 1

    workers = [asyncio.create_task(worker(i)) for i in range(100)]
    killed = []
    try:
        for round_ in range(3):
            # The load is answered on a connection made after the previous kill.
            await until(lambda: cache.stats()["reconnects"] >= before["reconnects"] + round_,
                        "reconnected", RECOVER)
            ok = seen["ok"]
            await until(lambda: seen["ok"] >= ok + 100 and cache.stats()["connected"],
                        "reads answered", RECOVER)
            killed.append(await asyncio.to_thread(redis_server.command, "CLIENT", "KILL",
                                                  "TYPE", "normal"))
        await until(lambda: cache.stats()["reconnects"] >= before["reconnects"] + 3,
                    "reconnected after the last kill", RECOVER)
    finally:
        stop = True
        await bounded(asyncio.gather(*workers), 60)
    assert killed == [1, 1, 1]  # our one connection each time (CLIENT KILL skips its own)
    await wait_until_works(cache)
    await assert_all_readable(cache, data)
    await wait_in_flight_zero(cache)


def _raw_send(server: RedisServer, *args) -> socket.socket:
    """Send one command on a fresh connection (TLS if the server's is) without waiting
    for its reply."""
    sock = server.connect(10)
    sock.sendall(_encode(*args))
    return sock


async def test_client_kill_with_requests_certainly_in_flight(redis_server):
    """Deterministic: the server is stalled while our requests go out on our connection
    and a CLIENT KILL queues up on another; when it resumes it reads them in one pass
    and kills us before any reply of ours is written. Every request in flight fails per
    the table, and the next ones work."""
    cache = make_cache(redis_server, socket_timeout=30.0, connect_timeout=30.0)
    await bounded(cache.connect())
    data = await store_distinct(cache, 100)
    before = cache.stats()
    # The killer's connection is accepted (and answered) before the server stalls, so
    # that its command is read in the same pass as ours when the server resumes.
    killer = _raw_send(redis_server, "PING")
    assert killer.recv(64).startswith(b"+PONG")
    try:
        with stalled(redis_server):
            aws = [cache.get(k) for k in data]
            aws += [cache.get_many(list(data)[:3]), cache.exists("d1"),
                    cache.delete("nothing"), cache.set("x1", 1), cache.set_many({"x2": 2}),
                    cache.clear()]
            gathered = asyncio.ensure_future(asyncio.gather(*aws, return_exceptions=True))
            commands = len(data) * COMMANDS["get"] + sum(COMMANDS[name] for name in (
                "get_many", "exists", "delete", "set", "set_many", "clear"))
            await on_the_connection(cache, before["commands"], commands)
            kill = _encode("CLIENT", "KILL", "TYPE", "normal")
            killer.sendall(kill)
            sent_to(redis_server, killer.getsockname()[1], len(kill))
            assert not gathered.done()
        results = await bounded(gathered)
        assert killer.recv(64) == b":1\r\n"  # it killed our connection
    finally:
        killer.close()
    assert results[:100] == [None] * 100
    assert results[100:103] == [{}, False, False]
    assert all(isinstance(r, CacheError) for r in results[103:]), results[103:]
    assert cache.stats()["errors"] - before["errors"] >= len(results)
    await wait_until_works(cache)
    await assert_all_readable(cache, data)
    assert cache.stats()["reconnects"] > before["reconnects"]


async def test_client_kill_while_idle(redis_server):
    """Dropped while nobody was using it: the next requests work (at worst after the
    reconnection: the first may fail per the table)."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 20)
    assert redis_server.command("CLIENT", "KILL", "TYPE", "normal") >= 1
    await wait_until_works(cache)
    await assert_all_readable(cache, data)


# ------------------------------------------------------------------- refused connects


async def test_wrong_password_then_right_password(server_options):
    server = RedisServer(password="s3cret-pw", **server_options).start()
    try:
        wrong = make_cache(server, password="not-it")
        for _ in range(2):  # and again, from the backoff state
            with pytest.raises(CacheError) as info:
                await bounded(wrong.connect())
            msg = str(info.value)
            assert msg.startswith("Redis connection failed: "), msg
            assert "WRONGPASS" in msg or "invalid password" in msg, msg
        assert not wrong.connected

        anonymous = make_cache(server)
        with pytest.raises(CacheError) as info:
            await bounded(anonymous.connect())
        assert str(info.value).startswith("Redis connection failed: ")
        assert "NOAUTH" in str(info.value), str(info.value)

        right = make_cache(server, password="s3cret-pw")
        await bounded(right.connect())
        await bounded(right.set("a", [1, "two"]))
        assert await bounded(right.get("a")) == [1, "two"]

        acl = make_cache(server, username="default", password="s3cret-pw")
        await bounded(acl.connect())
        assert await bounded(acl.get("a")) == [1, "two"]

        url = RedisCache.from_url(server.url, prefix=PREFIX, socket_timeout=TIMEOUT,
                                  connect_timeout=TIMEOUT)
        await bounded(url.connect())
        assert await bounded(url.get("a")) == [1, "two"]
        for c in (right, acl, url):
            await bounded(c.disconnect())
    finally:
        server.close()


async def test_closed_port(reserved_port):
    port = reserved_port.port
    cache = RedisCache(host="127.0.0.1", port=port, socket_timeout=TIMEOUT,
                       connect_timeout=TIMEOUT)
    for _ in range(3):  # first attempt, then from the backoff state
        with pytest.raises(CacheError) as info:
            await bounded(cache.connect())
        assert str(info.value).startswith("Redis connection failed: "), str(info.value)
        assert not cache.connected
    # A data method called before connect() connects first, as the reference does:
    # the connection failure is raised.
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        await bounded(cache.get("k"))
    results = await bounded(asyncio.gather(cache.connect(), cache.get("k"),
                                           return_exceptions=True))
    assert all(isinstance(r, CacheError) for r in results), results
    # Once something listens there, connect() succeeds.
    reserved_port.release()
    server = RedisServer(port=port)
    try:
        await asyncio.to_thread(server.restart)
        await connect_when_answered(cache)
        assert await works(cache, "port-now-open")
        await bounded(cache.disconnect())
    finally:
        server.close()


class SilentListener:
    """A TCP listener that accepts connections and never answers (or closes at once)."""

    def __init__(self, close_at_once: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.close_at_once = close_at_once
        self.conns: list[socket.socket] = []
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.1)
        while not self.done:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.close_at_once:
                conn.close()
            else:
                self.conns.append(conn)

    def close(self):
        self.done = True
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("close_at_once", [False, True], ids=["silent", "hangs-up"])
async def test_server_that_never_answers(close_at_once):
    listener = SilentListener(close_at_once)
    try:
        cache = RedisCache(host="127.0.0.1", port=listener.port, socket_timeout=TIMEOUT,
                           connect_timeout=TIMEOUT)
        for _ in range(2):
            with pytest.raises(CacheError, match="^Redis connection failed: "):
                await bounded(cache.connect())
        with pytest.raises(CacheError, match="^Redis connection failed: "):
            await bounded(cache.get("k"))
        results = await bounded(asyncio.gather(*(cache.connect() for _ in range(20)),
                                               return_exceptions=True))
        assert all(isinstance(r, CacheError) for r in results), results
    finally:
        listener.close()


async def test_maxclients_reached_then_freed(server_options):
    server = RedisServer(extra_args=("--maxclients", "1"), **server_options).start()
    hog = None
    try:
        hog = server.connect(10)
        hog.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert hog.recv(64).startswith(b"+PONG")  # the one slot is ours
        cache = make_cache(server)
        for _ in range(2):
            with pytest.raises(CacheError) as info:
                await bounded(cache.connect())
            assert str(info.value).startswith("Redis connection failed: "), str(info.value)
        assert not cache.connected
        hog.close()
        hog = None
        await connect_when_answered(cache)
        assert await works(cache, "slot-free")
        await bounded(cache.disconnect())
    finally:
        if hog is not None:
            hog.close()
        server.close()


async def test_server_closes_idle_connections(server_options):
    """(Over TLS the server's close comes with its close_notify.)"""
    server = RedisServer(extra_args=("--timeout", "1"), **server_options).start()
    try:
        cache = make_cache(server)
        await bounded(cache.connect())
        data = await store_distinct(cache, 20)
        for cycle in range(2):
            # idle: the server closes our connection after a second (the cache sees it)
            await until(lambda: not cache.stats()["connected"], "closed by the server",
                        RECOVER)
            await wait_until_works(cache)  # the first request may fail, then it works
            await assert_all_readable(cache, data)
            assert cache.stats()["reconnects"] >= cycle + 1
        await bounded(cache.disconnect())
    finally:
        server.close()


# ----------------------------------------------------------------------- cancellation


async def test_cancel_at_random_moments(redis_server):
    cache = make_cache(redis_server, socket_timeout=5.0, connect_timeout=5.0)
    await bounded(cache.connect())
    data = await store_distinct(cache, 200)
    keys = list(data)
    rng = random.Random(20240611)

    async def via_coroutine(k):
        return await cache.get(k)

    for _round in range(6):
        tasks, expected = [], []
        to_cancel = []
        for i in range(600):
            k = keys[rng.randrange(len(keys))]
            mode = i % 5
            if mode == 0:
                t = asyncio.ensure_future(asyncio.wait_for(
                    cache.get(k), rng.choice([0, 1e-6, 1e-4, 1e-3, 0.01, 1.0])))
            elif mode == 1:
                t = asyncio.create_task(via_coroutine(k))
                to_cancel.append(t)
            elif mode == 2:
                t = asyncio.ensure_future(cache.get(k))  # the awaitable itself as a task
                to_cancel.append(t)
            elif mode == 3:
                t = asyncio.ensure_future(asyncio.wait_for(
                    cache.get(k), rng.choice([0, 1e-4, 0.01])))
            else:
                t = asyncio.ensure_future(cache.get(k))  # left alone: must be right
            tasks.append(t)
            expected.append(k)
        await asyncio.sleep(0)
        rng.shuffle(to_cancel)
        half = len(to_cancel) // 2
        for t in to_cancel[:half]:
            t.cancel()
        await asyncio.sleep(rng.random() * 0.003)
        for t in to_cancel[half:]:
            t.cancel()
        results = await bounded(asyncio.gather(*tasks, return_exceptions=True), 30)
        for r, k in zip(results, expected):
            if isinstance(r, (asyncio.CancelledError, asyncio.TimeoutError)):
                continue
            assert not isinstance(r, BaseException), r
            assert r == data[k], (k, r)
    await wait_in_flight_zero(cache)
    await assert_all_readable(cache, data)
    assert cache.stats()["errors"] == 0


async def test_cancel_other_operations(redis_server):
    """Cancel set/set_many/delete/exists/clear/connect awaits mid-way (get_many and
    get_stats: see test_cancel_get_many_and_get_stats, run in a subprocess)."""
    cache = make_cache(redis_server, socket_timeout=5.0, connect_timeout=5.0)
    await bounded(cache.connect())
    await bounded(cache.set_many({f"many{i}": i for i in range(5000)}))
    makers = [lambda i: cache.set(f"s{i}", i), lambda i: cache.set_many({f"m{i}": i}),
              lambda i: cache.delete(f"s{i}"), lambda i: cache.exists(f"s{i}"),
              lambda i: cache.connect(), lambda i: cache.clear()]
    for delay in (0, 0.0005, 0.002):
        tasks = [asyncio.ensure_future(makers[i % len(makers)](i)) for i in range(120)]
        await asyncio.sleep(delay)
        for t in tasks:
            t.cancel()
        results = await bounded(asyncio.gather(*tasks, return_exceptions=True), 30)
        assert not [r for r in results
                    if isinstance(r, BaseException)
                    and not isinstance(r, asyncio.CancelledError)], results
    await wait_in_flight_zero(cache)
    assert await works(cache, "after-cancel")


@pytest.mark.parametrize("what", ["get_many-task", "get_many-close", "get_many-wait_for",
                                  "get_stats-task"])
def test_cancel_get_many_and_get_stats(redis_server, loop_name, what):
    """Cancelling an awaited get_many/get_stats is safe at any moment (README Failures:
    "Cancelling an awaiting task is safe at any moment"). Run in a subprocess: this used to crash
    (SIGSEGV: the late reply's handler read the context the cancellation had freed)."""
    proc = run_script("cancel_mid_request", redis_server.port, what, loop_name,
                      server=redis_server)
    assert proc.returncode == 0 and "ok 0" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


async def test_shield_keeps_the_request(redis_server):
    cache = make_cache(redis_server, socket_timeout=5.0, connect_timeout=5.0)
    await bounded(cache.connect())
    data = await store_distinct(cache, 100)
    inner = [asyncio.ensure_future(cache.get(k)) for k in data]
    outer = [asyncio.ensure_future(asyncio.shield(t)) for t in inner]
    await asyncio.sleep(0)
    for t in outer:
        t.cancel()
    await asyncio.gather(*outer, return_exceptions=True)
    assert await bounded(asyncio.gather(*inner)) == list(data.values())


async def test_cancel_while_server_stalled(redis_server):
    """Tasks cancelled while their requests sit unanswered in a stalled server: the
    cancelled ones raise CancelledError, the others time out (None)."""
    cache = make_cache(redis_server, socket_timeout=1.0)
    await bounded(cache.connect())
    data = await store_distinct(cache, 100)
    with stalled(redis_server):
        commands = cache.stats()["commands"]
        tasks = [asyncio.ensure_future(cache.get(k)) for k in data]
        await on_the_connection(cache, commands, len(data))
        assert all(t.cancel() for t in tasks[::2])  # all still waiting for a reply
        results = await bounded(asyncio.gather(*tasks, return_exceptions=True))
        assert results[1::2] == [None] * 50
        assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
    await wait_until_works(cache)
    await wait_in_flight_zero(cache)
    await assert_all_readable(cache, data)


async def test_dropped_unawaited_requests(redis_server):
    """Awaitables dropped without being awaited still complete; nothing stays in flight."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 50)
    for i in range(2000):
        cache.get(f"d{i % 50}")
        if i % 10 == 0:
            cache.set(f"x{i}", i)
    await asyncio.sleep(0)
    await wait_in_flight_zero(cache)
    await assert_all_readable(cache, data)
    assert await bounded(cache.get("x1990")) == 1990


# ------------------------------------------------------------------------ disconnect


async def test_disconnect_under_load(redis_server):
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 100)
    keys = list(data)
    gets = [asyncio.ensure_future(cache.get(keys[i % 100])) for i in range(3000)]
    sets = [asyncio.ensure_future(cache.set(keys[i % 100], data[keys[i % 100]]))
            for i in range(300)]
    others = [asyncio.ensure_future(aw) for aw in
              (cache.get_many(keys), cache.exists(keys[0]), cache.delete("nothing"))]
    await asyncio.sleep(0)
    await bounded(cache.disconnect())  # returns promptly
    assert not cache.connected
    got = await bounded(asyncio.gather(*gets))
    # Each request made before disconnect() either got its answer first or failed.
    assert all(v is None or v == data[keys[i % 100]] for i, v in enumerate(got))
    for r in await bounded(asyncio.gather(*sets, return_exceptions=True)):
        assert r is None or isinstance(r, CacheError), r
    many, exists, deleted = await bounded(asyncio.gather(*others))
    assert many in ({}, data)
    assert exists in (True, False) and deleted is False
    await wait_in_flight_zero(cache)
    # A method called again connects again (reference: connect() if not connected).
    assert await bounded(cache.get(keys[5])) == data[keys[5]]
    assert cache.connected
    await assert_all_readable(cache, data)
    await bounded(cache.disconnect())


async def test_disconnect_fails_the_requests_in_flight(redis_server):
    """disconnect() with requests certainly in flight (on the connection, unanswered:
    the server is stalled): it returns at once, and every one of them fails per the
    table; a later call connects again and finds what was stored."""
    cache = make_cache(redis_server, socket_timeout=30.0, connect_timeout=30.0)
    await bounded(cache.connect())
    data = await store_distinct(cache, 100)
    keys = list(data)
    with stalled(redis_server):
        commands = cache.stats()["commands"]
        gets = [asyncio.ensure_future(cache.get(k)) for k in keys]
        sets = [asyncio.ensure_future(cache.set(k, data[k])) for k in keys[:10]]
        others = [asyncio.ensure_future(aw) for aw in
                  (cache.get_many(keys), cache.exists(keys[0]), cache.delete("nothing"))]
        await on_the_connection(cache, commands, len(keys) + 10 + 3)
        await bounded(cache.disconnect())  # no statistics to flush: closes at once
        assert not cache.connected
        assert await bounded(asyncio.gather(*gets)) == [None] * len(keys)
        for r in await bounded(asyncio.gather(*sets, return_exceptions=True)):
            assert isinstance(r, CacheError), r
        assert await bounded(asyncio.gather(*others)) == [{}, False, False]
        await wait_in_flight_zero(cache)
    assert await bounded(cache.get(keys[5])) == data[keys[5]]
    assert cache.connected
    # (the server, resumed, still ran what it had been sent: the same values again)
    await assert_all_readable(cache, data)
    await bounded(cache.disconnect())


async def test_disconnect_twice_concurrently_with_requests(redis_server):
    """Two disconnect()s behind gets on a stalled server: both return None, and the
    gets, made before them and unanswered, fail."""
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    data = await store_distinct(cache, 20)
    with stalled(redis_server):
        aws = [cache.get(k) for k in data] + [cache.disconnect(), cache.disconnect()]
        results = await bounded(asyncio.gather(*aws, return_exceptions=True))
    assert results == [None] * (len(data) + 2)
    assert await bounded(cache.disconnect()) is None
    await bounded(cache.connect())
    await assert_all_readable(cache, data)


async def test_disconnect_with_server_dead(redis_server):
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    redis_server.kill()
    assert await bounded(cache.get("k")) is None
    assert await bounded(cache.disconnect()) is None
    assert not cache.connected
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        await bounded(cache.connect())
    await asyncio.to_thread(redis_server.restart)
    await connect_when_answered(cache)
    assert await works(cache, "after-dead-disconnect")


async def test_connect_disconnect_races_while_server_frozen(redis_server):
    """connect()/disconnect()/data calls racing while nothing answers, a connect()
    cancelled while connecting: every await ends (CacheError or None), and once the
    server answers again, connect() works and the cache is usable."""
    cache = make_cache(redis_server, connect_timeout=1.0)
    # connect_timeout far beyond the test: its connect() can only end by cancellation
    connecting = make_cache(redis_server, connect_timeout=600.0)
    with stalled(redis_server):
        results = await bounded(asyncio.gather(
            cache.connect(), cache.get("a"), cache.disconnect(), cache.connect(),
            cache.set("a", 1), return_exceptions=True))
        assert isinstance(results[0], CacheError) and isinstance(results[3], CacheError)
        assert isinstance(results[1], CacheError) and isinstance(results[4], CacheError)
        assert results[2] is None
        assert not cache.connected
        # A connect() cancelled while its handshake waits at the stalled server (its
        # connection accepted by the kernel, its PING sent and unread).
        ports = set(redis_server.unread_bytes())
        task = asyncio.ensure_future(connecting.connect())
        await until(lambda: any(n > 0 for port, n in redis_server.unread_bytes().items()
                                if port not in ports), "the handshake sent", HANG)
        assert not task.done()
        task.cancel()
        assert isinstance((await asyncio.gather(task, return_exceptions=True))[0],
                          asyncio.CancelledError)
    await connect_when_answered(cache)
    assert await bounded(asyncio.gather(*(cache.connect() for _ in range(10)))) == [None] * 10
    results = await bounded(asyncio.gather(cache.disconnect(), cache.connect(),
                                           return_exceptions=True))
    assert results[0] is None
    await wait_until_works(cache)
    await wait_in_flight_zero(cache)
    # The cancelled connect()'s attempt completed once the server answered: the cache
    # is connected without another connect(), and works.
    await until(lambda: connecting.stats()["connected"], "the cancelled attempt finished",
                RECOVER)
    assert await works(connecting, "after-cancelled-connect")
    await bounded(connecting.disconnect())


async def test_async_with_under_load_and_reuse(redis_server):
    """Leaving `async with` disconnects: the gets still in flight then (sent to a
    stalled server, unanswered) fail; the next `async with` connects again."""
    cache = make_cache(redis_server)
    for round_ in range(3):
        async with cache as c:
            assert c is cache
            data = await store_distinct(cache, 50, tag=f"r{round_}_")
            stall = redis_server.stall(STALL)
            pending = [asyncio.ensure_future(cache.get(k)) for k in data]
        got = await bounded(asyncio.gather(*pending))
        stall.cancel()
        assert got == [None] * len(data)
        assert not cache.connected
        async with cache:
            await assert_all_readable(cache, data)
    await wait_in_flight_zero(cache)


# ------------------------------------------------------------------------ big values


async def test_16mb_value_while_small_requests_in_flight(redis_server):
    cache = make_cache(redis_server, socket_timeout=30.0, connect_timeout=5.0)
    await bounded(cache.connect())
    small = await store_distinct(cache, 200)
    keys = list(small)
    unit = "".join(chr(0x61 + i % 26) for i in range(1000)) + "é€\U0001F600\"\\\n"
    big = (unit * (16 * 1024 * 1024 // len(unit) + 1))[:16 * 1024 * 1024]
    aws = [cache.get(keys[i % 200]) for i in range(1000)]
    aws.insert(500, cache.set("big", big))
    aws += [cache.get(keys[i % 200]) for i in range(1000)]
    results = await bounded(asyncio.gather(*aws), 120)
    assert results[500] is None
    del results[500]
    assert results == [small[keys[i % 200]] for i in range(1000)] * 2
    aws = [cache.get(keys[i % 200]) for i in range(1000)]
    aws.insert(300, cache.get("big"))
    aws.insert(700, cache.get_many(["big", keys[0]]))
    results = await bounded(asyncio.gather(*aws), 120)
    assert results[300] == big
    assert results[700] == {"big": big, keys[0]: small[keys[0]]}
    del results[700], results[300]
    assert results == [small[keys[i % 200]] for i in range(1000)]
    assert cache.stats()["errors"] == 0
    assert redis_server.command("STRLEN", PREFIX + "big") == len(json.dumps(big))


async def test_16mb_value_when_server_dies_mid_transfer(redis_server):
    """The server dies while 64 MB of writes are on their way to it (it is stalled
    once the transfer has begun: what it has not read fills the socket buffers, the
    rest waits in our output buffer): every read and write in flight fails."""
    cache = make_cache(redis_server, socket_timeout=30.0)
    await bounded(cache.connect())
    big = "x" * (16 * 1024 * 1024)
    await bounded(cache.set("big", big), 60)
    with stalled(redis_server):
        ports = set(redis_server.unread_bytes())
        reading = [asyncio.ensure_future(cache.get("big")) for _ in range(4)]
        writing = [asyncio.ensure_future(cache.set(f"big{i}", big)) for i in range(4)]
        # (our connection is the only one; its port is among those already open)
        # (more than the gets' few bytes: a write's bytes are arriving)
        await until(lambda: sum(redis_server.unread_bytes().values()) > 8192,
                    "the transfer under way", HANG)
        assert set(redis_server.unread_bytes()) == ports
        redis_server.kill()
    assert await bounded(asyncio.gather(*reading), 60) == [None] * 4
    for r in await bounded(asyncio.gather(*writing, return_exceptions=True), 60):
        assert isinstance(r, CacheError), r
    await asyncio.to_thread(redis_server.restart)
    await wait_until_works(cache)
    await wait_in_flight_zero(cache)


# ----------------------------------------------------------------------------- leaks


def malloc_in_use() -> int:
    """Bytes the C allocator has handed out (glibc's, or AddressSanitizer's under
    make test-asan): what the I/O thread allocates (requests, replies, buffers) is not
    seen by tracemalloc."""
    return native_heap_bytes()


async def mixed_load(cache, n: int, workers: int = 100, key_obj=None, value_obj=None):
    """n requests from `workers` tasks: get/set/exists/delete/get_many on own keys.
    Failures are allowed (the leak tests also run it against a dead server)."""

    async def worker(w):
        key = key_obj if key_obj is not None else f"L{w}"
        value = value_obj if value_obj is not None else [w, "v"]
        for j in range(n // workers):
            op = j % 8
            if op == 0:
                try:
                    await cache.set(key, value)
                except CacheError:
                    pass
            elif op == 1:
                await cache.exists(key)
            elif op == 2:
                await cache.get_many([key, "absent"])
            elif op == 3:
                await cache.delete("absent")
            else:
                await cache.get(key)

    await bounded(asyncio.gather(*(worker(w) for w in range(workers))), 300)


async def test_refcounts_stable_across_success_and_failure(redis_server):
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    key = "".join(["refcount-", "key"])      # a fresh, uninterned str
    value = {"list": [1, 2, 3], "s": "v"}    # stored as JSON, never kept
    keys = [key, "".join(["other-", "key"])]

    async def cycles(n):
        for _ in range(n):
            try:
                await cache.set(key, value)
            except CacheError:
                pass
            try:
                await cache.set_many({key: value})
            except CacheError:
                pass
            await cache.get(key)
            await cache.exists(key)
            await cache.get_many(keys)
            await cache.delete(key)

    await cycles(50)  # warm-up
    gc.collect()
    base = [sys.getrefcount(o) for o in (key, value, keys, cache)]
    await cycles(500)
    await wait_in_flight_zero(cache)
    gc.collect()
    assert [sys.getrefcount(o) for o in (key, value, keys, cache)] == base
    redis_server.kill()
    await cycles(300)  # every request fails now
    await wait_in_flight_zero(cache)
    gc.collect()
    assert [sys.getrefcount(o) for o in (key, value, keys, cache)] == base
    await asyncio.to_thread(redis_server.restart)
    await wait_until_works(cache)
    await cycles(50)
    await wait_in_flight_zero(cache)
    gc.collect()
    assert [sys.getrefcount(o) for o in (key, value, keys, cache)] == base


async def test_refcounts_of_cancelled_and_timed_out_requests(redis_server):
    cache = make_cache(redis_server, socket_timeout=TIMEOUT)
    await bounded(cache.connect())
    key = "".join(["cancel-", "key"])
    value = ["".join(["cancel-", "value"])]
    base = [sys.getrefcount(key), sys.getrefcount(value), sys.getrefcount(cache)]
    for _ in range(20):
        tasks = [asyncio.ensure_future(cache.get(key)) for _ in range(50)]
        tasks += [asyncio.ensure_future(cache.set(key, value)) for _ in range(10)]
        await asyncio.sleep(0)
        for t in tasks[::2]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        del tasks
    with stalled(redis_server):  # timeouts too
        got = await bounded(asyncio.gather(*(cache.get(key) for _ in range(50))))
        assert got == [None] * 50
    await wait_until_works(cache)
    await wait_in_flight_zero(cache)
    gc.collect()
    assert [sys.getrefcount(key), sys.getrefcount(value), sys.getrefcount(cache)] == base


async def assert_memory_flat(cache, requests: int) -> None:
    """Runs `requests` mixed requests (after the caller's warm-up) and asserts that Python
    memory, native memory and the live awaitables did not grow with them."""
    traced, native, awaitables = await memory_growth(cache, lambda: mixed_load(cache, requests))
    assert traced < 3 * 1024 * 1024, traced
    assert native < 16 * 1024 * 1024, native
    assert awaitables <= 0


@pytest.mark.topologies("standalone", "cluster")
async def test_memory_flat_over_200k_requests(redis_server):
    cache = make_cache(redis_server, socket_timeout=10.0, connect_timeout=5.0)
    await bounded(cache.connect())
    await mixed_load(cache, 40_000)  # warm-up: free lists, buffers, rings at size
    await assert_memory_flat(cache, 200_000)
    assert cache.stats()["errors"] == 0


async def test_memory_flat_while_every_request_fails(redis_server):
    cache = make_cache(redis_server)
    await bounded(cache.connect())
    redis_server.kill()
    await mixed_load(cache, 10_000)  # warm-up, against the dead server
    await assert_memory_flat(cache, 60_000)
    assert cache.stats()["errors"] > 0


async def test_dropping_caches_releases_them(redis_server):
    """A cache dropped while connected (and with requests just finished, or failed) is
    freed, and many such caches do not accumulate memory or awaitables."""
    import weakref

    async def one(i, kill_conn):
        cache = make_cache(redis_server)
        await bounded(cache.connect())
        await bounded(cache.set("k", i))
        assert await bounded(cache.get("k")) == i
        if kill_conn:
            redis_server.command("CLIENT", "KILL", "TYPE", "normal")
            await bounded(cache.get("k"))
        await wait_in_flight_zero(cache)
        return weakref.ref(cache)

    def server_clients():
        return redis_server.command("CLIENT", "LIST").count(b"\n")

    base_clients = server_clients()
    refs = [await one(i, i % 3 == 0) for i in range(10)]
    gc.collect()
    assert all(r() is None for r in refs)
    # Their connections are closed by the I/O thread once nobody uses the caches.
    deadline = time.monotonic() + RECOVER
    while server_clients() > base_clients:
        assert time.monotonic() < deadline, redis_server.command("CLIENT", "LIST")
        await asyncio.sleep(0.05)
    aw_before = awaitables_alive()
    malloc_before = malloc_in_use()
    for i in range(60):
        await one(i, i % 3 == 0)
    gc.collect()
    assert awaitables_alive() <= aw_before
    assert malloc_in_use() - malloc_before < 16 * 1024 * 1024


async def test_never_connected_failures_leak_nothing(closed_port):
    """A cache that never manages to connect (closed port): every data method raises
    the connection failure (reference: connect() first), and nothing accumulates."""
    cache = RedisCache(host="127.0.0.1", port=closed_port, socket_timeout=0.3,
                       connect_timeout=0.3)
    key = "".join(["never-", "connected"])
    value = ["".join(["never-", "stored"])]

    async def cycles(n):
        for _ in range(n):
            for aw in (cache.get(key), cache.set(key, value), cache.exists(key),
                       cache.get_many([key]), cache.delete(key), cache.set_many({key: value}),
                       cache.clear(), cache.connect()):
                with pytest.raises(CacheError, match="^Redis connection failed: "):
                    await bounded(aw)

    await cycles(20)
    gc.collect()
    base = [sys.getrefcount(key), sys.getrefcount(value), sys.getrefcount(cache)]
    traced, _, awaitables = await memory_growth(cache, lambda: cycles(1500))
    assert traced < 1024 * 1024, traced
    assert [sys.getrefcount(key), sys.getrefcount(value), sys.getrefcount(cache)] == base
    assert awaitables <= 0


async def test_disconnect_with_a_command_sent_after_it_does_not_wait_for_the_timeout(redis_server):
    """A command made right after disconnect() in the same loop iteration must not keep
    the disconnect waiting for socket_timeout (review finding; hang check only)."""
    cache = RedisCache(host="127.0.0.1", port=redis_server.port, **redis_server.tls_kwargs,
                       socket_timeout=30)
    await cache.connect()
    await cache.get("a")  # one pending statistics increment to flush at disconnect
    got = asyncio.ensure_future(cache.get("x"))
    closing = asyncio.ensure_future(cache.disconnect())
    setting = asyncio.ensure_future(cache.set("y", 1))
    done, pending = await asyncio.wait({got, closing, setting}, timeout=10)
    assert not pending, "disconnect() waited for socket_timeout"
    assert closing.result() is None


async def test_order_is_kept_past_the_in_flight_limit(redis_server):
    """Past MAX_IN_FLIGHT (65,536) requests wait in a backlog; they must still reach
    Redis after the older requests batched on the loop, in the order they were made
    (review finding). 70,000 set/get pairs on one key: each get reads the value of the
    set made just before it, which it can only do if every request reached Redis in
    order. socket_timeout=None: no reply is ever late, however slow the machine (a
    reply is due socket_timeout after its request is *sent*, and the first 65,536 are
    sent at once), so the verdict is about order only; hang detection bounds the
    whole."""
    cache = RedisCache(host="127.0.0.1", port=redis_server.port, socket_timeout=None,
                       **redis_server.tls_kwargs)
    await bounded(cache.connect())
    n = 70_000
    aws = []
    for i in range(n):
        aws += [cache.set("k", i), cache.get("k")]
    assert cache.stats()["in_flight"] == 2 * n  # all made before any is answered
    results = await bounded(asyncio.gather(*aws), 600)
    assert results == [x for i in range(n) for x in (None, i)]
    assert cache.stats()["errors"] == 0 and cache.stats()["timeouts"] == 0
    await bounded(cache.disconnect())
