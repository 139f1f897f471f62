"""RedisCache through Redis Sentinel (README "Sentinel"; ARCHITECTURE "Sentinel: how a connection
finds its primary", "Failure model").

Real processes (``bruno_memory_c.testing.SentinelGroup``: a primary, a replica and three
sentinels, quorum 2, down-after 1000 ms, failover-timeout 3000 ms) for the contract, the
URL form, sentinel authentication, ``SENTINEL FAILOVER`` (the +switch-master path), a
SIGKILLed primary under load, and MultiLevelCache over it; a fake sentinel (a thread
here) for what real sentinels do not do on demand: naming a replica (the ROLE check),
naming another server after a -READONLY reply. Options are checked without servers.

Nothing asserts on time except hang detection (``bounded``) and "fails quickly" (all
sentinels down: within connect_timeout plus a margin); the failover test prints the
time from the kill to the first successful write.
"""
from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import time

import pytest

from bruno_memory_c import CacheError, InMemoryCache, MultiLevelCache, RedisCache
from bruno_memory_c.testing import RedisServer, SentinelGroup, _encode, refused_port
from tests.support import bounded_by, forked_ok, run_python, until, HANG, RECOVER

pytestmark = pytest.mark.usefixtures("quiet_cache_logger")

bounded = bounded_by(HANG)
TIMEOUT = 1.0  # socket_timeout and connect_timeout of the caches under test
SERVICE = "mymaster"


def threads_named(name: str) -> int:
    """Threads of this process called `name` (/proc: the C threads are not Python's)."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                n += f.read().strip() == name
        except OSError:
            pass
    return n


def open_sockets() -> int:
    """Sockets this process has open."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def sentinel_cache(group: SentinelGroup, **kw) -> RedisCache:
    kw = {"socket_timeout": TIMEOUT, "connect_timeout": TIMEOUT, "prefix": "snt:", **kw}
    return RedisCache(sentinels=group.sentinels, service_name=group.service_name,
                      password=group.password, **kw)


@pytest.fixture(scope="module")
def group():
    with SentinelGroup(SERVICE) as g:
        yield g


@pytest.fixture(scope="module")
def auth_group():
    with SentinelGroup(SERVICE, password="data pw@:/", sentinel_password="s3ntinel") as g:
        yield g


# ---------------------------------------------------------------------- a fake sentinel


class FakeSentinel:
    """A sentinel that names whatever ``self.address`` says (None: it does not know the
    service), keeps SUBSCRIBE connections open without a message, and counts questions."""

    def __init__(self) -> None:
        self.address: tuple[str, int] | None = None
        self.raw_reply: bytes | None = None  # sent as it is instead of the address
        self.asked = 0
        self.auth: list[list[str]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        from bruno_memory_c.testing import _read_reply
        f = conn.makefile("rb")
        try:
            while True:
                cmd = [a.decode() for a in _read_reply(f)]
                if cmd[0].upper() == "AUTH":
                    self.auth.append(cmd[1:])
                    conn.sendall(b"+OK\r\n")
                elif cmd[0].upper() == "SENTINEL":
                    self.asked += 1
                    if self.raw_reply is not None:
                        conn.sendall(self.raw_reply)
                    elif self.address is None:
                        conn.sendall(b"*-1\r\n")
                    else:
                        conn.sendall(_encode(self.address[0], self.address[1]))
                elif cmd[0].upper() == "SUBSCRIBE":
                    conn.sendall(b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n")
                else:
                    conn.sendall(b"-ERR unknown command\r\n")
        except (OSError, ConnectionError, RuntimeError, IndexError, TypeError):
            pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def fake_sentinel():
    s = FakeSentinel()
    yield s
    s.close()


# ---------------------------------------------------------------------- options


def test_options_attributes_and_repr():
    c = RedisCache(sentinels=[("127.0.0.1", 26379), ["h2", 26380]], service_name="mymaster",
                   sentinel_username="su", sentinel_password="secret-s", password="secret-d")
    assert c.sentinels == (("127.0.0.1", 26379), ("h2", 26380))
    assert c.service_name == "mymaster"
    assert c.sentinel_username == "su" and c.sentinel_password == "secret-s"
    r = repr(c)
    assert "sentinel:mymaster@127.0.0.1:26379,h2:26380" in r
    assert "secret" not in r
    for name in ("sentinels", "service_name", "sentinel_username", "sentinel_password"):
        with pytest.raises(AttributeError):
            setattr(c, name, None)
    plain = RedisCache()
    assert plain.sentinels is None and plain.service_name is None
    assert plain.sentinel_username is None and plain.sentinel_password is None


@pytest.mark.parametrize("kw, exc, text", [
    ({"host": "h"}, ValueError, "not both"),
    ({"port": 6380}, ValueError, "not both"),
    ({"unix_socket_path": "/tmp/x.sock"}, ValueError, "not both"),
    ({"service_name": None}, ValueError, "service_name"),
    ({"service_name": ""}, ValueError, "service_name"),
    ({"service_name": 3}, TypeError, "service_name"),
    ({"sentinels": []}, ValueError, "1 to 64"),
    ({"sentinels": "h:1"}, TypeError, "list of (host, port)"),
    ({"sentinels": 5}, TypeError, "list of (host, port)"),
    ({"sentinels": [("h",)]}, ValueError, "(host, port)"),
    ({"sentinels": ["h:1"]}, TypeError, "(host, port)"),
    ({"sentinels": [("h", "1")]}, TypeError, "port"),
    ({"sentinels": [("h", 0)]}, ValueError, "port"),
    ({"sentinels": [("h", True)]}, TypeError, "port"),
    ({"sentinels": [(b"h", 1)]}, TypeError, "host"),
    ({"sentinels": [("", 1)]}, ValueError, "host"),
    ({"sentinels": [("h\0", 1)]}, ValueError, "NUL"),
    ({"sentinel_password": 1}, TypeError, "sentinel_password"),
    ({"sentinels": [("h", 1)] * 65}, ValueError, "1 to 64"),
])
def test_bad_options(kw, exc, text):
    args = {"sentinels": [("127.0.0.1", 26379)], "service_name": "m", **kw}
    with pytest.raises(exc, match=None) as info:
        RedisCache(**args)
    assert text in str(info.value)


def test_sentinel_options_need_sentinels():
    with pytest.raises(ValueError, match="service_name needs sentinels"):
        RedisCache(service_name="m")
    with pytest.raises(ValueError, match="need sentinels"):
        RedisCache(sentinel_password="x")


def test_url_forms():
    c = RedisCache.from_url("redis+sentinel://:pw@127.0.0.1:26379,h2/mymaster/3"
                            "?sentinel_password=sp&socket_timeout=2")
    assert c.sentinels == (("127.0.0.1", 26379), ("h2", 26379))
    assert (c.service_name, c.db, c.password, c.sentinel_password) == ("mymaster", 3, "pw", "sp")
    assert c.socket_timeout == 2.0 and not c.ssl
    with pytest.raises(ValueError, match="service name"):
        RedisCache.from_url("redis+sentinel://h:1")
    with pytest.raises(ValueError, match="ssl_"):
        RedisCache.from_url("redis+sentinel://h:1/m?ssl_cert_reqs=none")
    with pytest.raises(ValueError, match="bad port"):
        RedisCache.from_url("redis+sentinel://h:x/m")
    tls = RedisCache.from_url("rediss+sentinel://h:1/m?ssl_cert_reqs=none")
    assert tls.ssl and "tls:sentinel:m@h:1" in repr(tls)
    assert RedisCache.from_url("redis+sentinel://h:1/m?ssl=true&ssl_cert_reqs=none").ssl


# ---------------------------------------------------------------------- all down


async def test_all_sentinels_down_fails_quickly():
    with refused_port() as p1, refused_port() as p2:
        c = RedisCache(sentinels=[("127.0.0.1", p1), ("127.0.0.1", p2)], service_name=SERVICE,
                       connect_timeout=2.0, socket_timeout=2.0)
        t = time.monotonic()
        with pytest.raises(CacheError) as info:
            await bounded(c.connect())
        elapsed = time.monotonic() - t
        msg = str(info.value)
        assert msg.startswith("Redis connection failed: ")
        assert "no sentinel answered" in msg and str(p1) in msg and str(p2) in msg
        assert elapsed < 2.0 + 1.0, elapsed  # within connect_timeout (plus a margin)
        # Requests on a cache not connected connect first, and raise as connect()
        # does (the reference's behaviour), without hanging.
        with pytest.raises(CacheError, match="no sentinel answered"):
            await bounded(c.get("k"))
        with pytest.raises(CacheError):
            await bounded(c.set("k", 1))
        await c.disconnect()


async def test_silent_sentinel_bounded_by_connect_timeout():
    """A sentinel that accepts and never answers costs its share of connect_timeout; the
    next one is asked within it."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        with refused_port() as p2:
            c = RedisCache(sentinels=[("127.0.0.1", silent.getsockname()[1]),
                                      ("127.0.0.1", p2)],
                           service_name=SERVICE, connect_timeout=1.0, socket_timeout=1.0)
            t = time.monotonic()
            with pytest.raises(CacheError, match="no sentinel answered|Timeout asking"):
                await bounded(c.connect())
            assert time.monotonic() - t < 1.0 + 1.0
            await c.disconnect()
    finally:
        silent.close()


# ---------------------------------------------------------------------- through sentinels


async def test_contract_through_sentinels(group):
    c = sentinel_cache(group)
    async with c:
        await c.clear()
        await c.set("a", {"x": 1})
        assert await c.get("a") == {"x": 1}
        assert await c.exists("a") is True
        await c.set_many({"b": 2, "c": [3]}, ttl=60)
        assert await c.get_many(["a", "b", "c", "nope"]) == {"a": {"x": 1}, "b": 2, "c": [3]}
        assert await c.delete("b") is True
        assert await c.delete("b") is False
        assert await c.exists("b") is False
        # On the primary the sentinels name.
        assert group.primary().command("GET", "snt:a") == b'{"x": 1}'
        await c.clear()
        assert await c.get_many(["a", "c"]) == {}
        assert c.stats()["connected"] is True
    assert c.stats()["connected"] is False


async def test_url_through_sentinels(group):
    c = RedisCache.from_url(group.url, prefix="snturl:", socket_timeout=TIMEOUT,
                            connect_timeout=TIMEOUT)
    assert c.service_name == SERVICE and c.sentinels == tuple(group.sentinels)
    async with c:
        await c.set("k", "v")
        assert await c.get("k") == "v"


async def test_sentinel_auth(auth_group):
    c = sentinel_cache(auth_group, sentinel_password=auth_group.sentinel_password)
    async with c:
        await c.set("k", 1)
        assert await c.get("k") == 1
    url = RedisCache.from_url(auth_group.url, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
    async with url:
        assert await url.get("snt:k") is None  # (another prefix) but it answers
        await url.set("k2", 2)
    # Without the sentinels' password, or a wrong one: no sentinel answers, and none of
    # the passwords appears in the message.
    for kw in ({}, {"sentinel_password": "wrong"}):
        bad = sentinel_cache(auth_group, **kw)
        with pytest.raises(CacheError) as info:
            await bounded(bad.connect())
        msg = str(info.value)
        assert "no sentinel answered" in msg
        assert "NOAUTH" in msg or "WRONGPASS" in msg or "invalid" in msg, msg
        assert "wrong" not in msg.replace("WRONGPASS", "") and "s3ntinel" not in msg
        await bad.disconnect()


async def test_switch_master_followed(group):
    """SENTINEL FAILOVER: the sentinels promote the replica and announce it
    (+switch-master); the watcher makes the cache drop the old primary, and writes go to
    the new one without user action."""
    c = sentinel_cache(group)
    await c.connect()
    await c.set("before", 1)
    old = group.primary()
    group.failover()
    t0 = time.monotonic()
    new = await asyncio.to_thread(group.wait_primary_changed, old.port)
    # Every write from now on must reach the new primary; the first may still fail (in
    # flight on the old one) or wait for the reconnect.
    ok_at = None
    token = os.urandom(8).hex()
    deadline = time.monotonic() + RECOVER
    while ok_at is None:
        assert time.monotonic() < deadline, f"writes never reached the new primary {c.stats()}"
        try:
            await bounded(c.set("after", token))
            if new.command("GET", "snt:after") == f'"{token}"'.encode():
                ok_at = time.monotonic()
        except CacheError:
            pass
        await asyncio.sleep(0.01)
    print(f"\nSENTINEL FAILOVER: first write on the new primary {ok_at - t0:.2f}s after "
          f"the request")
    assert await c.get("before") == 1  # replicated before the failover
    await until(lambda: c.stats()["reconnects"] >= 1, "a reconnect", RECOVER)
    await c.disconnect()


async def test_replica_named_is_refused_then_primary_used(fake_sentinel):
    """A sentinel naming a replica: the handshake's ROLE check fails the attempt
    (CacheError), every attempt asks again, and once it names the primary the cache
    works without user action."""
    with RedisServer() as primary:
        extra = ("--replicaof", "127.0.0.1", str(primary.port))
        with RedisServer(extra_args=extra) as replica:
            fake_sentinel.address = ("127.0.0.1", replica.port)
            c = RedisCache(sentinels=[("127.0.0.1", fake_sentinel.port)],
                           service_name=SERVICE, socket_timeout=TIMEOUT,
                           connect_timeout=TIMEOUT)
            with pytest.raises(CacheError) as info:
                await bounded(c.connect())
            assert "is not the primary of 'mymaster'" in str(info.value)
            assert "slave" in str(info.value)
            with pytest.raises(CacheError):
                await bounded(c.set("k", 1))
            asked = fake_sentinel.asked
            fake_sentinel.address = ("127.0.0.1", primary.port)

            async def write_ok():
                try:
                    await bounded(c.set("k", 1))
                    return True
                except CacheError:
                    return False

            deadline = time.monotonic() + RECOVER
            while not await write_ok():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert fake_sentinel.asked > asked
            assert primary.command("GET", "bruno:cache:k") == b"1"
            await c.disconnect()


async def test_sentinel_username_and_tls_data_connection(fake_sentinel, tmp_path):
    """sentinel_username/sentinel_password go to the sentinels (AUTH user password), the
    data server's own password does not; with ssl=True the data connection to the
    address the sentinel names is TLS (the certificate checked against that address)."""
    from bruno_memory_c.testing import make_tls_files
    files = make_tls_files(str(tmp_path / "tls"))
    with RedisServer(tls=True, tls_files=files, password="data-pw") as server:
        fake_sentinel.address = ("127.0.0.1", server.port)
        c = RedisCache(sentinels=[("127.0.0.1", fake_sentinel.port)], service_name=SERVICE,
                       sentinel_username="watcher", sentinel_password="s-pw",
                       password="data-pw", socket_timeout=TIMEOUT, connect_timeout=TIMEOUT,
                       **server.tls_kwargs)
        assert c.ssl and "tls:sentinel:mymaster@" in repr(c)
        async with c:
            await c.set("k", "v")
            assert await c.get("k") == "v"
        assert server.command("GET", "bruno:cache:k") == b'"v"'
        assert fake_sentinel.auth and all(a == ["watcher", "s-pw"] for a in fake_sentinel.auth)


async def test_unknown_service(fake_sentinel):
    fake_sentinel.address = None
    c = RedisCache(sentinels=[("127.0.0.1", fake_sentinel.port)], service_name="nope",
                   connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)
    with pytest.raises(CacheError, match="does not know service 'nope'"):
        await bounded(c.connect())
    await c.disconnect()


@pytest.mark.parametrize("reply, text", [
    # hiredis 0.14 would allocate 2 GB of element pointers for this header at once: the
    # scanner costs it before the reader sees it
    (b"*268435455\r\n", "protocol error"),
    (b"*2\r\n$9\r\n127.0.0.1\r\n$7\r\n6379abc\r\n", "unexpected reply"),
    (b"*2\r\n$9\r\n127.0.0.1\r\n$10\r\n4294973675\r\n", "unexpected reply"),
    (b"*2\r\n$9\r\n127.0.0.1\r\n$5\r\n99999\r\n", "unexpected reply"),
    (b"*2\r\n$9\r\n127.0.0.1\r\n$2\r\n-1\r\n", "unexpected reply"),
    (b"*2\r\n$9\r\n127.0.0.1\r\n:6379\r\n", "unexpected reply"),
    (b"$3\r\nabc\r\n", "unexpected reply"),
], ids=["huge-array", "port-suffix", "port-wraps", "port-too-big", "port-negative",
        "port-int", "not-an-array"])
async def test_hostile_sentinel_replies_fail_the_attempt(fake_sentinel, reply, text):
    """A sentinel's reply that is not a host and a port of 1 to 65535 in digits fails
    the attempt with a message, whatever it declares (nothing is allocated for it)."""
    fake_sentinel.raw_reply = reply
    c = RedisCache(sentinels=[("127.0.0.1", fake_sentinel.port)], service_name="m",
                   connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)
    with pytest.raises(CacheError) as info:
        await bounded(c.connect())
    assert "no sentinel answered" in str(info.value) and text in str(info.value), info.value
    await c.disconnect()


def test_a_sentinels_list_changed_while_it_is_read():
    """Reading a pair runs its own Python code; emptying the caller's list from there
    changes nothing for the cache (it reads a copy), and nothing crashes."""
    sentinels: list = []

    class Pair:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            sentinels.clear()
            return ("127.0.0.1", 26379)[i]

    sentinels.extend([Pair(), ("127.0.0.1", 26380)])
    c = RedisCache(sentinels=sentinels, service_name="m")
    assert c.sentinels == (("127.0.0.1", 26379), ("127.0.0.1", 26380))


async def test_a_sentinel_password_for_sentinels_without_one(group):
    """AUTH to a sentinel that has no password answers an error the data connection
    already takes as success; so does the sentinel query."""
    c = sentinel_cache(group, sentinel_password="not-needed")
    async with c:
        await c.set("k", 1)
        assert await c.get("k") == 1


async def test_readonly_reply_drops_and_reasks(fake_sentinel):
    """The primary is demoted under us (REPLICAOF, no sentinel telling): the write that
    meets -READONLY fails (CacheError, as any connection failure), the connection is
    dropped, and the next attempt asks the sentinel, which names the new primary."""
    with RedisServer() as a, RedisServer() as b:
        fake_sentinel.address = ("127.0.0.1", a.port)
        c = RedisCache(sentinels=[("127.0.0.1", fake_sentinel.port)], service_name=SERVICE,
                       socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
        await c.set("k", 1)
        asked = fake_sentinel.asked
        a.command("REPLICAOF", "127.0.0.1", str(b.port))
        fake_sentinel.address = ("127.0.0.1", b.port)
        with pytest.raises(CacheError, match="READONLY"):
            await bounded(c.set("k", 2))
        await bounded(c.set("k", 3))  # a new connection, to b
        assert fake_sentinel.asked > asked
        assert b.command("GET", "bruno:cache:k") == b"3"
        await c.disconnect()


async def test_multilevel_over_sentinel(group):
    l2 = sentinel_cache(group, prefix="sntml:")
    m = MultiLevelCache(InMemoryCache(), l2)
    await l2.connect()
    await m.set("k", {"v": 1})
    assert await m.get("k") == {"v": 1}
    other = MultiLevelCache(InMemoryCache(), l2)
    assert await other.get("k") == {"v": 1}  # from L2, promoted
    assert other.stats()["l2_hits"] == 1
    assert await other.get("k") == {"v": 1}
    assert other.stats()["l1_hits"] == 1
    assert await m.delete("k") is True
    assert await other.l2.get("k") is None
    await l2.disconnect()


async def test_coherent_multilevel_across_a_failover():
    """A coherent MultiLevelCache over Sentinel: across a failover the tracking follows
    the primary (the old one's channel lost: the L2-backed entries are dropped once it
    is back on the new one), and another client's write on the new primary drops the
    entry A read there, with no use of L2 by A in between. (A group of its own: one
    settled since its last failover, whose replica acknowledges the write first.)"""
    with SentinelGroup(SERVICE) as group:
        await failover_with_a_coherent_l1(group)


async def failover_with_a_coherent_l1(group) -> None:
    l2 = sentinel_cache(group, prefix="sntco:")
    m = MultiLevelCache(InMemoryCache(), l2)
    try:
        await bounded(m.start())
        await m.set("k", "old")
        old = group.primary()
        # (replicated first: a failover would lose a write its replica never had)
        await until(lambda: old.command("WAIT", 1, 100) == 1, "k replicated", RECOVER)
        group.failover()
        new = await asyncio.to_thread(group.wait_primary_changed, old.port)
        await until(lambda: m.stats()["l1_flushes"] >= 1, "the flush on the new primary",
                    RECOVER)
        assert not await m.l1.exists("k")
        # (replicated; read again from the new primary once it answers, promoted)
        await eventually_equal(lambda: m.get("k"), "old")
        heard = m.stats()["invalidations"]
        assert new.command("SET", "sntco:k", '"new"') == "OK"
        await until(lambda: m.stats()["invalidations"] > heard, "the new primary's message",
                    RECOVER)
        assert not await m.l1.exists("k")
        assert await bounded(m.get("k")) == "new"
    finally:
        await l2.disconnect()


async def eventually_equal(call, expected, limit: float = RECOVER) -> None:
    """await call() until it gives `expected` (a failover's first requests may fail)."""
    deadline = time.monotonic() + limit
    while (got := await bounded(call())) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, not {expected!r}"
        await asyncio.sleep(0.01)


async def test_watcher_thread_and_sockets_freed(group):
    """The watcher runs while the cache is connected and ends on disconnect() and when
    the cache is dropped; the sockets go with it."""
    gc.collect()  # caches of earlier tests: their watchers end too
    await until(lambda: threads_named("bruno-sentinel") == 0, "earlier watchers ended", HANG)
    sockets = open_sockets()
    c = sentinel_cache(group)
    await c.connect()
    await until(lambda: threads_named("bruno-sentinel") == 1, "the watcher started")
    assert open_sockets() > sockets
    await c.disconnect()
    await until(lambda: threads_named("bruno-sentinel") == 0, "the watcher ended", HANG)
    await until(lambda: open_sockets() == sockets, "sockets closed", HANG)
    await c.connect()  # again: a new watcher
    await until(lambda: threads_named("bruno-sentinel") == 1, "the watcher again")
    await c.set("k", 1)
    del c
    await until(lambda: threads_named("bruno-sentinel") == 0, "the watcher ended", HANG)
    await until(lambda: open_sockets() == sockets, "sockets closed", HANG)


def test_fork_child_uses_its_own_connection(group):
    """A forked child's cache asks the sentinels itself (the parent's watcher and sockets
    are not the child's) and the parent keeps working."""

    async def parent_use(c):
        await c.set("fork", "parent")
        return await c.get("fork")

    async def child():
        await c.set("fork", "child")
        return await c.get("fork")

    c = sentinel_cache(group, prefix="sntfork:")
    assert asyncio.run(parent_use(c)) == "parent"
    assert forked_ok(lambda: asyncio.run(child()) == "child")
    assert asyncio.run(parent_use(c)) == "parent"
    asyncio.run(c.disconnect())


def test_interpreter_exit_with_a_live_sentinel_cache(group):
    """Exit with a connected cache (its watcher subscribed, requests just made) and with
    one still asking a sentinel that never answers (its resolver thread blocked in a
    read): no hang, no crash, nothing printed."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        proc = run_python(f"""
            import asyncio
            from bruno_memory_c import RedisCache
            async def main():
                global keep, other
                keep = RedisCache(sentinels={group.sentinels!r}, service_name={SERVICE!r})
                await keep.set("exit", 1)
                assert await keep.get("exit") == 1
                other = RedisCache(sentinels=[("127.0.0.1", {silent.getsockname()[1]})],
                                   service_name="x", connect_timeout=30)
                task = asyncio.get_running_loop().create_task(other.connect())
                await asyncio.sleep(0.2)  # (the task is cancelled when the loop ends)
            asyncio.run(main())
            print("ok")
        """)
    finally:
        silent.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok" and not proc.stderr


# ---------------------------------------------------------------------- failover under load


async def test_failover_under_load_sigkill():
    """100 tasks of mixed get/set; the primary is SIGKILLed. Every await returns (a
    value, None, or CacheError for a set: the error table) within HANG; after the
    sentinels promote the replica, writes work again without user action. Prints the
    time from the kill to the first successful write."""
    with SentinelGroup(SERVICE) as g:
        c = sentinel_cache(g, prefix="sntload:")
        await c.connect()
        await c.set_many({f"k{i}": i for i in range(100)})
        stop = asyncio.Event()
        killed_at: list[float] = []
        first_ok_after_kill: list[float] = []
        outcomes = {"value": 0, "none": 0, "set_ok": 0, "set_error": 0}
        bad: list[object] = []

        async def worker(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                if n % 2:
                    v = await bounded(c.get(f"k{i}"))
                    if v is None:
                        outcomes["none"] += 1
                    elif isinstance(v, int):
                        outcomes["value"] += 1
                    else:
                        bad.append(v)
                else:
                    try:
                        started = time.monotonic()
                        assert await bounded(c.set(f"k{i}", n)) is None
                        outcomes["set_ok"] += 1
                        if killed_at and started > killed_at[0] and not first_ok_after_kill:
                            first_ok_after_kill.append(time.monotonic())
                    except CacheError:
                        outcomes["set_error"] += 1
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(worker(i)) for i in range(100)]
        await until(lambda: outcomes["set_ok"] > 500, "load running")
        old = g.primary()
        old.kill()
        killed_at.append(time.monotonic())
        await until(lambda: outcomes["set_error"] > 0 or first_ok_after_kill,
                    "the kill noticed", HANG)
        new = await asyncio.to_thread(g.wait_primary_changed, old.port)
        await until(lambda: bool(first_ok_after_kill), "a write after the failover", 60)
        before = outcomes["set_ok"]
        await until(lambda: outcomes["set_ok"] > before + 200, "writes keep working", RECOVER)
        stop.set()
        await bounded(asyncio.gather(*tasks))
        assert not bad
        print(f"\nfailover (SIGKILL): first successful write {first_ok_after_kill[0] - killed_at[0]:.2f}s "
              f"after the kill; outcomes {outcomes}; stats {c.stats()}")
        await c.set("final", 1)
        assert new.command("GET", "sntload:final") == b"1"
        await c.disconnect()


# ---------------------------------------------------------------------- TLS to the sentinels


@pytest.fixture(scope="module")
def tls_group():
    with SentinelGroup(SERVICE, tls=True) as g:
        yield g


def tls_sentinel_cache(group: SentinelGroup, **kw) -> RedisCache:
    return sentinel_cache(group, **{**group.tls_kwargs, **kw})


def watcher_subscribed(group: SentinelGroup) -> bool:
    """Some sentinel has a client subscribed (the watcher: sentinels subscribe to
    nothing on each other). The sentinels speak TLS only, so it came over TLS."""
    return any(b"cmd=subscribe" in group.sentinel_command(i, "CLIENT", "LIST")
               for i in range(len(group.sentinels)))


def test_sentinel_ssl_options(tmp_path):
    plain = RedisCache(sentinels=[("127.0.0.1", 26379)], service_name="m")
    assert plain.sentinel_ssl is False and RedisCache().sentinel_ssl is False
    c = RedisCache(sentinels=[("127.0.0.1", 26379)], service_name="m", sentinel_ssl=True,
                   ssl_cert_reqs="none")
    assert c.sentinel_ssl is True and c.ssl is False  # the data connection stays plaintext
    with pytest.raises(AttributeError):
        c.sentinel_ssl = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="sentinel_ssl needs sentinels"):
        RedisCache(sentinel_ssl=True)
    # With ssl off, sentinel_ssl builds its own context from the ssl_* options: their
    # files are read now.
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(ValueError, match="ssl_ca_certs"):
        RedisCache(sentinels=[("127.0.0.1", 26379)], service_name="m", sentinel_ssl=True,
                   ssl_ca_certs=missing)
    RedisCache(sentinels=[("127.0.0.1", 26379)], service_name="m", ssl_ca_certs=missing)
    url = RedisCache.from_url("redis+sentinel://h:1/m?sentinel_ssl=true&ssl_cert_reqs=none")
    assert url.sentinel_ssl and not url.ssl
    both = RedisCache.from_url("rediss+sentinel://h:1/m?sentinel_ssl=true")
    assert both.sentinel_ssl and both.ssl
    assert not RedisCache.from_url("rediss+sentinel://h:1/m").sentinel_ssl
    with pytest.raises(ValueError, match="ssl_"):
        RedisCache.from_url("redis+sentinel://h:1/m?sentinel_ssl=false&ssl_cert_reqs=none")


async def test_tls_sentinels_contract_and_url(tls_group):
    """TLS sentinels (TLS only) name a TLS primary: set/get through them, by keywords
    and by URL; the watcher subscribes over TLS."""
    c = tls_sentinel_cache(tls_group, prefix="snttls:")
    assert c.sentinel_ssl and c.ssl
    async with c:
        await c.set("a", {"x": 1})
        assert await c.get("a") == {"x": 1}
        assert await c.get_many(["a", "nope"]) == {"a": {"x": 1}}
        assert tls_group.primary().command("GET", "snttls:a") == b'{"x": 1}'
        await until(lambda: watcher_subscribed(tls_group), "the watcher subscribed over TLS")
    url = RedisCache.from_url(tls_group.url, prefix="snttls:", socket_timeout=TIMEOUT,
                              connect_timeout=TIMEOUT)
    assert url.sentinel_ssl and url.ssl
    async with url:
        assert await url.get("a") == {"x": 1}


async def test_tls_sentinels_plaintext_sentinel_query_fails(tls_group):
    """Without sentinel_ssl the TLS-only sentinels cannot be asked; with sentinel_ssl but
    ssl off they are (their own context), and it is the plaintext data connection to
    the TLS-only primary that fails."""
    plain = sentinel_cache(tls_group, ssl=True, ssl_ca_certs=tls_group.tls.ca_file)
    with pytest.raises(CacheError, match="no sentinel answered"):
        await bounded(plain.connect())
    await plain.disconnect()
    own = sentinel_cache(tls_group, sentinel_ssl=True, ssl_ca_certs=tls_group.tls.ca_file)
    with pytest.raises(CacheError) as info:
        await bounded(own.connect())
    assert "no sentinel answered" not in str(info.value), str(info.value)
    await own.disconnect()


async def test_tls_watcher_thread_and_sockets_freed(tls_group):
    """The TLS watcher (its session and socket) ends on disconnect() and when the cache
    is dropped; its 0.2 s reads that time out do not keep it from stopping."""
    gc.collect()
    await until(lambda: threads_named("bruno-sentinel") == 0, "earlier watchers ended", HANG)
    sockets = open_sockets()
    c = tls_sentinel_cache(tls_group)
    await c.connect()
    await until(lambda: threads_named("bruno-sentinel") == 1, "the watcher started")
    await until(lambda: watcher_subscribed(tls_group), "the watcher subscribed over TLS")
    await asyncio.sleep(0.5)  # a few WATCH_TICK read timeouts on the TLS session
    await c.set("k", 1)
    await c.disconnect()
    await until(lambda: threads_named("bruno-sentinel") == 0, "the watcher ended", HANG)
    await until(lambda: open_sockets() == sockets, "sockets closed", HANG)
    await c.connect()
    await until(lambda: threads_named("bruno-sentinel") == 1, "the watcher again")
    assert await c.get("k") == 1
    del c
    await until(lambda: threads_named("bruno-sentinel") == 0, "the watcher ended", HANG)
    await until(lambda: open_sockets() == sockets, "sockets closed", HANG)


async def test_tls_switch_master_followed(tls_group):
    """SENTINEL FAILOVER with TLS everywhere: the watcher, subscribed over TLS, hears
    +switch-master; writes reach the new (TLS) primary without user action."""
    c = tls_sentinel_cache(tls_group, prefix="snttlsfo:")
    await c.connect()
    await c.set("before", 1)
    await until(lambda: watcher_subscribed(tls_group), "the watcher subscribed over TLS")
    old = tls_group.primary()
    tls_group.failover()
    new = await asyncio.to_thread(tls_group.wait_primary_changed, old.port)
    token = os.urandom(8).hex()

    async def written() -> bool:
        try:
            await bounded(c.set("after", token))
        except CacheError:
            return False
        return bool(new.command("GET", "snttlsfo:after") == f'"{token}"'.encode())

    deadline = time.monotonic() + RECOVER
    while not await written():
        assert time.monotonic() < deadline, f"writes never reached the new primary {c.stats()}"
        await asyncio.sleep(0.01)
    assert await c.get("before") == 1
    await until(lambda: c.stats()["reconnects"] >= 1, "a reconnect", RECOVER)
    await c.disconnect()


async def test_tls_sentinel_from_another_ca(tmp_path):
    """Sentinels whose certificate another CA signed, for another host name: no sentinel
    answers, the message names the verification failure, within connect_timeout. Trusting
    that CA too, the host name is checked against the sentinel's (SNI / verification):
    a mismatch, unless ssl_check_hostname=False."""
    from bruno_memory_c.testing import make_tls_files
    other = make_tls_files(str(tmp_path / "other"), names=("elsewhere.test",),
                           prefix="other-")
    with SentinelGroup(SERVICE, tls=True, sentinel_tls_files=other) as g:
        c = tls_sentinel_cache(g, connect_timeout=2.0, socket_timeout=2.0)
        t = time.monotonic()
        with pytest.raises(CacheError) as info:
            await bounded(c.connect())
        elapsed = time.monotonic() - t
        msg = str(info.value)
        assert "no sentinel answered" in msg and "certificate verify failed" in msg, msg
        assert elapsed < 2.0 + 1.0, elapsed
        await c.disconnect()
        both = tmp_path / "both-cas.crt"
        both.write_text(open(g.tls.ca_file).read() + open(other.ca_file).read())
        named = tls_sentinel_cache(g, ssl_ca_certs=str(both))
        with pytest.raises(CacheError) as info:
            await bounded(named.connect())
        assert "no sentinel answered" in str(info.value)
        assert "hostname mismatch" in str(info.value), str(info.value)
        await named.disconnect()
        unchecked = tls_sentinel_cache(g, ssl_ca_certs=str(both), ssl_check_hostname=False)
        async with unchecked:
            await unchecked.set("k", 1)
            assert await unchecked.get("k") == 1
        # Not verifying at all (ssl_cert_reqs="none") the same sentinels answer.
        lax = tls_sentinel_cache(g, ssl_cert_reqs="none")
        async with lax:
            assert await lax.get("k") == 1
