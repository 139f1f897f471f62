"""A coherent L1: MultiLevelCache drops the L1 entries that other clients change in Redis
(README "Coherent L1"; ARCHITECTURE "Coherent L1: the invalidation path").

The other client is a raw connection of the test (``redis_server.command``), another
OS process (tests/scripts/coherent_writer.py), or another cache object of this process;
the server is one redis-server or the worker's 3+3 cluster (the topologies marker).
Sentinel failover: test_sentinel.py; a cluster's failover and migration:
test_cluster.py. Every wait is a poll with a deadline (no sleep decides a verdict)."""
from __future__ import annotations

import asyncio
import gc
import time

import pytest

from bruno_memory_c import InMemoryCache, MultiLevelCache, RedisCache
from tests.support import (
    bounded_by, cache_maker, error_records, forked_ok, memory_growth, run_script, until,
)
from tests.support.hostile import (  # noqa: F401  (hostile: the fixture)
    Behaviour, array, bulk, error, hostile, integer, simple,
)

PREFIX = "coh:"
make_l2 = cache_maker(prefix=PREFIX, socket_timeout=5.0, connect_timeout=5.0)
bounded = bounded_by(30.0)


async def coherent_pair(redis_server, **kw):
    """A MultiLevelCache over a fresh L2, started: once start() returns, what it reads
    and writes is tracked (a node of a cluster: from its first request on)."""
    l2 = make_l2(redis_server)
    ml = MultiLevelCache(InMemoryCache(), l2, **kw)
    await bounded(ml.start())
    assert ml.coherent is (kw.get("coherent") is not False)
    if ml.coherent and getattr(redis_server, "topology", "standalone") == "standalone":
        # (on when start() returns, unless the tracker was slower than connect_timeout)
        await until(lambda: any(b"t" in flags for _, flags in clients(redis_server)),
                    "the server tracks for the cache")
    return ml, l2


def servers(redis_server) -> list:
    """The server, or a cluster's live nodes."""
    cluster = getattr(redis_server, "cluster", None)
    if cluster is None:
        return [redis_server]
    return [n for n in cluster.nodes if n.proc is not None and n.proc.poll() is None]


def clients(redis_server) -> list[tuple[object, bytes]]:
    """(node, CLIENT LIST line's flags) of every client of every server (node)."""
    out = []
    for node in servers(redis_server):
        for line in node.command("CLIENT", "LIST").splitlines():
            out.append((node, line.split(b"flags=")[1].split(b" ")[0]))
    return out


def subscribers(redis_server) -> list[tuple[object, str]]:
    """(node, client id) of every client subscribed (our trackers)."""
    out = []
    for node in servers(redis_server):
        for line in node.command("CLIENT", "LIST").decode().splitlines():
            if "cmd=subscribe" in line or "sub=1" in line:
                out.append((node, line.split()[0].split("=")[1]))
    return out


async def l1_has(ml, key) -> bool:
    return await ml.l1.exists(key)


async def l1_drops(ml, key, limit: float = 10.0) -> None:
    """Poll (1 ms apart, with a deadline) until L1 no longer holds key."""
    deadline = time.monotonic() + limit
    while await l1_has(ml, key):
        assert time.monotonic() < deadline, f"L1 still holds {key!r}"
        await asyncio.sleep(0.001)


@pytest.mark.topologies("standalone", "cluster")
@pytest.mark.parametrize("change", ["overwrite", "delete", "expire", "flushdb"])
async def test_another_clients_change_drops_the_l1_entry(redis_server, topology, change):
    """A's L1 holds k (written through A); another client changes k in Redis: A's L1
    stops serving the old value (polled with a deadline), and A's get then reads what
    Redis has."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        await ml.set("k", "old")
        assert await ml.get("k") == "old" and await l1_has(ml, "k")
        if change == "overwrite":
            redis_server.command("SET", PREFIX + "k", '"new"')
        elif change == "delete":
            redis_server.command("DEL", PREFIX + "k")
        elif change == "expire":
            redis_server.command("PEXPIRE", PREFIX + "k", 1)
        else:
            redis_server.command("FLUSHDB")
        await l1_drops(ml, "k")
        if change == "expire":  # (PEXPIRE's own invalidation may come before the expiry)
            await until(lambda: redis_server.command("EXISTS", PREFIX + "k") == 0, "expired")
        assert await ml.get("k") == ("new" if change == "overwrite" else None)
        stats = ml.stats()
        assert stats["invalidations"] + stats["l1_flushes"] >= 1
    finally:
        await l2.disconnect()


@pytest.mark.topologies("standalone", "cluster")
@pytest.mark.parametrize("op", ["set", "delete"])
async def test_another_process_write_drops_the_l1_entry(redis_server, topology, op):
    """Another OS process (tests/scripts/coherent_writer.py, our RedisCache) overwrites
    or deletes k and exits once Redis acknowledged it: A's L1 stops serving the old
    value (polled with a deadline) and A reads what that process wrote."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        await ml.set("k", "old")
        args = [str(redis_server.port), PREFIX, "k", op] + (['"new"'] if op == "set" else [])
        proc = await asyncio.to_thread(run_script, "coherent_writer", *args)
        assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
        await l1_drops(ml, "k")
        assert await ml.get("k") == ("new" if op == "set" else None)
    finally:
        await l2.disconnect()


@pytest.mark.topologies("standalone", "cluster")
async def test_own_writes_keep_their_l1_entry(redis_server, topology):
    """NOLOOP: what A writes through itself is what its L1 holds: no invalidation."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        for i in range(20):
            await ml.set("k", i)
        await ml.set_many({"a": 1, "b": 2})
        redis_server.command("SET", PREFIX + "marker", "1")  # (one message, after ours)
        await until(lambda: ml.stats()["invalidations"] >= 1, "the marker's invalidation")
        assert ml.stats()["invalidations"] == 1
        assert await ml.l1.get("k") == 19 and await ml.l1.get("a") == 1
    finally:
        await l2.disconnect()


@pytest.mark.topologies("standalone", "cluster")
async def test_coherent_false_is_todays_behaviour(redis_server, topology):
    ml, l2 = await coherent_pair(redis_server, coherent=False)
    try:
        await ml.set("k", "old")
        redis_server.command("SET", PREFIX + "k", '"new"')
        assert await ml.get("k") == "old"  # (served from L1, as bruno-memory does)
        assert subscribers(redis_server) == []
        assert not any(b"t" in flags for _, flags in clients(redis_server))
    finally:
        await l2.disconnect()


def test_coherent_true_needs_our_levels():
    class L2:
        async def get(self, key):
            return None

    with pytest.raises(ValueError, match="coherent=True needs"):
        MultiLevelCache(InMemoryCache(), L2(), coherent=True)
    with pytest.raises(TypeError, match="coherent must be"):
        MultiLevelCache(InMemoryCache(), None, coherent=1)


@pytest.mark.topologies("standalone", "cluster")
@pytest.mark.parametrize("victim", ["subscriber", "data"])
async def test_a_lost_channel_flushes_the_l2_backed_entries(redis_server, topology, victim):
    """The subscriber connection, or the data connection whose tracking it receives,
    killed (CLIENT KILL): once tracking is back, the L1 entries that came from or went
    to L2 are dropped (what changed meanwhile is unknown), and the loss is counted as
    an L1 flush."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        await ml.set("k", 1)
        await ml.l1.set("local", 1)  # (never L2's: kept)
        if victim == "subscriber":
            for node, sub_id in subscribers(redis_server):
                node.command("CLIENT", "KILL", "ID", sub_id)
        else:
            for node in servers(redis_server):
                node.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await until(lambda: ml.stats()["l1_flushes"] >= 1, "the flush after the loss", 10)
        assert not await l1_has(ml, "k")
        assert await ml.l1.get("local") == 1
        assert await ml.get("k") == 1  # (read again from L2)
    finally:
        await l2.disconnect()


async def test_a_restarted_server_empties_the_l2_backed_entries(redis_server):
    """kill -9 of the server: L1 keeps answering while Redis is unreachable (the outage
    behaviour); once the server is back and tracks again (the cache reconnects by
    itself: L1 hits never use L2), the L2-backed entries are dropped before serving
    them again, and what another client wrote meanwhile is what A reads."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        await ml.set("k", "old")
        await ml.l1.set("local", 1)  # (never L2's: kept)
        redis_server.kill()
        assert await ml.get("k") == "old"  # (an L1 hit, Redis down)
        flushes = ml.stats()["l1_flushes"]
        await asyncio.to_thread(redis_server.restart)
        assert redis_server.command("SET", PREFIX + "k", '"new"') == "OK"
        await until(lambda: ml.stats()["l1_flushes"] > flushes, "the flush once back", 30)
        assert not await l1_has(ml, "k") and await ml.l1.get("local") == 1
        assert await ml.get("k") == "new"
    finally:
        await l2.disconnect()


@pytest.mark.topologies("standalone", "cluster")
async def test_caches_sharing_one_l2_hear_each_other(redis_server, topology):
    """Two MultiLevelCaches over one RedisCache (one connection: the server tells it
    nothing of its own writes): a write through one, or through the RedisCache
    itself, drops the other's L1 entry once answered; the writer keeps its own."""
    ml, l2 = await coherent_pair(redis_server)
    other = MultiLevelCache(InMemoryCache(), l2)
    try:
        await ml.set("k", "old")
        assert await other.get("k") == "old" and await l1_has(other, "k")  # promoted
        await ml.set("k", "new")
        assert not await l1_has(other, "k") and await ml.l1.get("k") == "new"
        assert await other.get("k") == "new"
        await l2.set("k", "direct")  # (neither cache's: both let it go)
        assert not await l1_has(other, "k") and not await l1_has(ml, "k")
        await ml.set_many({"k": 1, "j": 2})
        assert not await l1_has(other, "k")
        assert await other.get("k") == 1
        await ml.delete("k")
        assert not await l1_has(other, "k")
        assert await other.get("j") == 2
        await ml.clear()
        assert not await l1_has(other, "j")
    finally:
        await l2.disconnect()


@pytest.mark.topologies("standalone", "cluster")
async def test_a_read_in_flight_while_another_client_writes(redis_server, topology):
    """Races: A's L2 read of k is in flight while another client overwrites k. Whatever
    the order in which A hears the read's answer and the invalidation (the loop is held
    while both may arrive), once the invalidation is in A's L1 does not serve the old
    value: a read answered before the write is not promoted over it."""
    ml, l2 = await coherent_pair(redis_server)
    try:
        for i in range(40):
            key = f"race{i}"
            await l2.set(key, "old")  # (L2 only: A's get reads it from Redis)
            heard = ml.stats()["invalidations"]
            read = asyncio.ensure_future(ml.get(key))
            await asyncio.sleep(0)  # (the read is sent)
            redis_server.command("SET", PREFIX + key, '"new"')  # acknowledged
            time.sleep(0.002 * (i % 5))  # (the loop held: answer and message queue up)
            assert await bounded(read) in ("old", "new")
            await until(lambda: ml.stats()["invalidations"] > heard, "the invalidation")
            assert await ml.l1.get(key) in (None, "new")
            assert await ml.get(key) == "new"
    finally:
        await l2.disconnect()


async def test_coherent_caches_made_and_dropped_leave_nothing(redis_server):
    """Coherent caches made, used (tracked, invalidated, flushed) and dropped, over
    and over: the server's connections come back to what they were (every tracker
    closed with its cache), and memory (Python, native, awaitables) does not grow."""
    base = len(clients(redis_server))

    async def rounds(n: int) -> None:
        for i in range(n):
            l2 = make_l2(redis_server)
            ml = MultiLevelCache(InMemoryCache(), l2)
            await ml.start()
            await ml.set("k", i)
            redis_server.command("SET", PREFIX + "k", '"x"')
            await l1_drops(ml, "k")
            redis_server.command("FLUSHDB")
            await until(lambda: ml.stats()["l1_flushes"] >= 1, "the FLUSHDB's flush")
            await l2.disconnect()

    await rounds(5)  # (warm: free lists, buffers)
    gc.collect()
    await until(lambda: len(clients(redis_server)) <= base, "the connections closed")
    probe = make_l2(redis_server)
    await probe.connect()
    python, native, awaitables = await memory_growth(probe, lambda: rounds(30))
    await probe.disconnect()
    assert awaitables == 0
    assert python < 256 * 1024, python
    assert native < 1024 * 1024, native
    gc.collect()
    await until(lambda: len(clients(redis_server)) <= base, "the connections closed")


# ------------------------------------------------------------------ broken peers


class Tracking(Behaviour):
    """A fake server that speaks the tracker's handshake (CLIENT ID, SUBSCRIBE), with
    CLIENT TRACKING answered by `tracking` (SUBSCRIBE never answered: `subscribe=False`);
    a SET of the key "push" sends the `pushed` frames to the subscriber first."""

    def __init__(self, tracking: bytes, pushed: tuple = (), subscribe: bool = True):
        super().__init__()
        self.tracking, self.pushed, self.subscribe = tracking, pushed, subscribe

    def handle(self, conn, cmd):
        args = [a.upper() for a in cmd.args[:2]]
        if cmd.name == "CLIENT" and args[:1] == [b"ID"]:
            return integer(conn.index)
        if cmd.name == "CLIENT" and args[:1] == [b"TRACKING"]:
            return self.tracking if args[1:2] == [b"ON"] else simple("OK")
        if cmd.name == "SUBSCRIBE":
            self.subscriber = conn
            return self._subscribed(cmd) if self.subscribe else None
        if cmd.name == "SET" and cmd.args[0] == (PREFIX + "push").encode():
            return self._push()  # (the frames, then SET's answer)
        return super().handle(conn, cmd)

    @staticmethod
    async def _subscribed(cmd):
        return array([bulk("subscribe"), bulk(cmd.args[0]), integer(1)])

    async def _push(self):
        for frame in self.pushed:
            await self.subscriber.send(frame)
        return simple("OK")


def fake_pair(server, timeout: float):
    """A MultiLevelCache over a RedisCache of the fake server (one server, timeouts)."""
    l2 = RedisCache.from_url(server.url, prefix=PREFIX, socket_timeout=timeout,
                             connect_timeout=timeout, cluster=False)
    return MultiLevelCache(InMemoryCache(), l2), l2


def tracking_asked(server) -> int:
    return sum(1 for c in server.connections for cmd in c.received
               if cmd.name == "CLIENT" and list(cmd.args[:2]) == [b"TRACKING", b"on"])


async def test_a_server_refusing_tracking(hostile, caplog):
    """CLIENT TRACKING refused (a proxy, an ACL, an old server): the cache serves
    (untracked), logs once why its L1 is not coherent, and asks again about once a
    second — never in a loop."""
    server = hostile(Tracking(error("ERR unknown subcommand 'TRACKING'")))
    ml, l2 = fake_pair(server, 2.0)
    try:
        await bounded(ml.start())
        await ml.set("k", 1)
        assert await ml.get("k") == 1 and await l2.get("k") == 1
        await server.until(lambda: tracking_asked(server) >= 2)  # (asked again)
        asked = tracking_asked(server)
        assert asked < 20, asked  # (a loop would have asked thousands of times)
        await until(lambda: refusals(caplog), "the refusal logged")
        assert len(refusals(caplog)) == 1
        assert "ERR unknown subcommand" in refusals(caplog)[0].getMessage()
    finally:
        await l2.disconnect()


def refusals(caplog) -> list:
    return [r for r in error_records(caplog) if "refused invalidation" in r.getMessage()]


async def test_a_subscriber_never_answered(hostile):
    """SUBSCRIBE never answered: start() and the first requests wait for the tracker
    at most connect_timeout, then go on untracked."""
    server = hostile(Tracking(simple("OK"), subscribe=False))
    ml, l2 = fake_pair(server, 1.0)
    try:
        await bounded(ml.start())
        await bounded(ml.set("k", 1))
        assert await bounded(ml.get("k")) == 1
        assert tracking_asked(server) == 0
    finally:
        await l2.disconnect()


async def test_malformed_messages_on_the_subscriber(hostile):
    """What the subscriber receives that is no invalidation (other shapes, types,
    channels) is ignored; a well-formed message after them is heard."""
    pushed = (integer(5), bulk("x"), array([bulk("message")]),
              array([bulk("message"), bulk("__redis__:invalidate"), integer(3)]),
              array([bulk("pong"), bulk(""), array([bulk(PREFIX + "k")])]),
              array([bulk("message"), bulk("__redis__:invalidate"),
                     array([integer(1), array([]), bulk(PREFIX + "k")])]))
    server = hostile(Tracking(simple("OK"), pushed))
    ml, l2 = fake_pair(server, 2.0)
    try:
        await bounded(ml.start())
        await ml.set("k", 1)
        await ml.l2.set("push", 1)
        await until(lambda: ml.stats()["invalidations"] >= 1, "the good message heard")
        await l1_drops(ml, "k")
        assert await ml.get("k") == 1  # (from the fake server's store)
    finally:
        await l2.disconnect()


class LoseTrackerMidTrackingOn(Tracking):
    """The subscriber closed while the data connection's CLIENT TRACKING on is in flight
    (its +OK then names a tracker that is gone), and the tracker's next SUBSCRIBE slow."""

    def __init__(self):
        super().__init__(simple("OK"))
        self.subscribers, self.answered = [], 0

    def handle(self, conn, cmd):
        if cmd.name == "SUBSCRIBE":
            self.subscribers.append(conn)
            return self._late(cmd, 1.0 if len(self.subscribers) == 2 else 0.0)
        if cmd.name == "CLIENT" and [a.upper() for a in cmd.args[:2]] == [b"TRACKING", b"ON"]:
            return self._tracking_on()
        return super().handle(conn, cmd)

    async def _late(self, cmd, delay):
        await asyncio.sleep(delay)
        return await self._subscribed(cmd)

    async def _tracking_on(self):
        if self.answered == 0:
            self.subscribers[0].close()  # (gone first, as the client will see)
            await asyncio.sleep(0.3)
        self.answered += 1
        return simple("OK")


async def test_a_tracking_on_answered_after_its_tracker_went(hostile):
    """Its +OK does not count as tracking back: what A read while no tracker existed is
    dropped once tracking really is back (on the new tracker)."""
    behaviour = LoseTrackerMidTrackingOn()
    server = hostile(behaviour)
    ml, l2 = fake_pair(server, 3.0)
    try:
        await bounded(ml.start())
        await server.until(lambda: behaviour.answered == 1)
        behaviour.store[(PREFIX + "k").encode()] = b'"v1"'
        assert await ml.get("k") == "v1"  # (read untracked: no tracker yet)
        behaviour.store[(PREFIX + "k").encode()] = b'"v2"'  # (its message: lost)
        await server.until(lambda: behaviour.answered == 2)
        await until(lambda: ml.stats()["l1_flushes"] >= 1, "the flush once tracked again")
        assert await ml.get("k") == "v2"
    finally:
        await l2.disconnect()


async def overwritten_elsewhere(ml, redis_server, who: str) -> str:
    """ml writes k, another client overwrites it: once L1 let it go, what ml reads."""
    await bounded(ml.start())
    await ml.set("k", f"mine-{who}")
    redis_server.command("SET", PREFIX + "k", f'"theirs-{who}"')
    await l1_drops(ml, "k")
    return await ml.get("k")


def test_listening_follows_the_loop_in_use(redis_server):
    """asyncio.run() twice over one cache pair: the second loop hears the
    invalidations (the cache listens again on the loop it is used from)."""
    l2 = make_l2(redis_server)
    ml = MultiLevelCache(InMemoryCache(), l2)
    assert asyncio.run(overwritten_elsewhere(ml, redis_server, "1")) == "theirs-1"
    assert asyncio.run(overwritten_elsewhere(ml, redis_server, "2")) == "theirs-2"
    asyncio.run(l2.disconnect())


def test_a_forked_child_listens_for_itself(redis_server):
    """A forked child's coherent cache listens on its own connection (the parent's
    listening is not the child's): another client's write drops the child's entry."""
    l2 = make_l2(redis_server)
    ml = MultiLevelCache(InMemoryCache(), l2)

    def use(who: str) -> str:
        return asyncio.run(overwritten_elsewhere(ml, redis_server, who))

    assert use("parent") == "theirs-parent"
    assert forked_ok(lambda: use("child") == "theirs-child")
    assert use("again") == "theirs-again"
    asyncio.run(l2.disconnect())


async def test_a_cache_dropped_by_its_own_invalidation(redis_server):
    """A key whose __del__ drops the last reference to the MultiLevelCache, run while
    an invalidation drops that key: the cache stays alive until the event is handled
    (under AddressSanitizer: no use after free)."""
    holder = []

    class Key:
        def __init__(self, s):
            self.s = s

        def __hash__(self):
            return hash(self.s)

        def __eq__(self, other):
            return isinstance(other, Key) and other.s == self.s

        def __format__(self, spec):
            return self.s

        def __del__(self):
            holder.clear()

    l2 = make_l2(redis_server)
    holder.append(MultiLevelCache(InMemoryCache(), l2))
    try:
        await bounded(holder[0].start())
        await holder[0].set(Key("a"), 1)
        redis_server.command("SET", PREFIX + "a", "2")
        await until(lambda: not holder, "the cache let go by the key's __del__")
        gc.collect()
    finally:
        await l2.disconnect()
