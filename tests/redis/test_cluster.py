"""RedisCache over a Redis Cluster (README "Redis Cluster"; ARCHITECTURE "Redis Cluster:
routing"): detection, startup nodes, keys on every node, hash tags, the multi-key
operations per node, clear() and get_stats() over every primary, resharding and a
primary's kill -9 under load, a cluster all down, replicas, TLS, fork, several loops,
MultiLevelCache on top. Real clusters: the worker's shared one (``shared_cluster_tcp``,
emptied per test) where a test leaves the cluster as it found it, a fresh one
(``redis_cluster``) where it kills, reshards or stops nodes.

The contract tests of test_redis.py and test_multilevel.py run over a cluster too
(``@pytest.mark.topologies``); these are what only a cluster has."""
from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest

from bruno_memory_c import CacheError, InMemoryCache, MultiLevelCache, RedisCache
from bruno_memory_c.testing import RedisCluster
from tests.support import bounded_by, drive, fork, memory_growth, until, LOGGER
from tests.support.cluster import ClusterTarget, key_slot

PREFIX = "cl:"
TIMEOUT = 5.0
bounded = bounded_by(30.0)
pytestmark = pytest.mark.usefixtures("quiet_cache_logger")


@pytest.fixture
def cluster(shared_cluster_tcp) -> ClusterTarget:
    """The worker's shared cluster, emptied."""
    return ClusterTarget(shared_cluster_tcp)


def make(cluster, **kw) -> RedisCache:
    kw.setdefault("prefix", PREFIX)
    kw.setdefault("socket_timeout", TIMEOUT)
    kw.setdefault("connect_timeout", TIMEOUT)
    target = cluster.cluster if isinstance(cluster, ClusterTarget) else cluster
    return RedisCache(startup_nodes=target.startup_nodes, **{**target.tls_kwargs, **kw})


def keys_per_primary(cluster: RedisCluster, per_node: int, prefix: str = PREFIX) -> dict:
    """{primary port: [keys (without prefix) whose prefixed slot it serves]}, per_node each."""
    want = {n.port: [] for n in cluster.primaries}
    ranges = cluster.slots()
    i = 0
    while any(len(v) < per_node for v in want.values()):
        key = f"k{i}"
        slot = key_slot((prefix + key).encode())
        port = next(p for s, e, p, _ in ranges if s <= slot <= e)
        if len(want[port]) < per_node:
            want[port].append(key)
        i += 1
    return want


# ---------------------------------------------------------------------- detection


async def test_detected_from_one_node_and_every_key_lands_on_its_slots_primary(cluster):
    """cluster=None (the default) with one node's host/port: the cache asks it, finds a
    cluster, and sends every key to the primary serving its slot; the value is where
    CLUSTER KEYSLOT says, readable from that node directly."""
    h, p = cluster.startup_nodes[2]
    cache = RedisCache(host=h, port=p, prefix=PREFIX)
    assert cache.cluster is None
    async with cache:
        per = keys_per_primary(cluster.cluster, 20)
        for port, keys in per.items():
            for k in keys:
                await cache.set(k, {"k": k})
        for port, keys in per.items():
            node = cluster.cluster.node(port)
            for k in keys:
                assert node.command("GET", PREFIX + k) == b'{"k": "' + k.encode() + b'"}'
                assert await cache.get(k) == {"k": k}
        assert cache.stats()["errors"] == 0


async def test_cluster_true_on_a_standalone_server_is_a_clear_error(redis_server):
    cache = RedisCache(host="127.0.0.1", port=redis_server.port, cluster=True,
                       **redis_server.tls_kwargs)
    with pytest.raises(CacheError, match="is not a Redis Cluster node"):
        await bounded(cache.connect())
    await cache.disconnect()


async def test_cluster_none_on_a_standalone_server_is_one_server(redis_server):
    cache = RedisCache(host="127.0.0.1", port=redis_server.port, prefix=PREFIX,
                       **redis_server.tls_kwargs)
    async with cache:
        await cache.set_many({f"k{i}": i for i in range(50)})
        assert await cache.get_many([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}
        await cache.clear()
        assert redis_server.command("DBSIZE") == 0


async def test_cluster_false_on_a_cluster_node_sees_moved_as_errors(cluster):
    """cluster=False: one server, as told; keys of other nodes' slots answer -MOVED,
    which is an error like any (get: None, logged; set: CacheError)."""
    h, p = cluster.startup_nodes[0]
    cache = RedisCache(host=h, port=p, prefix=PREFIX, cluster=False)
    async with cache:
        per = keys_per_primary(cluster.cluster, 1)
        other = next(keys[0] for port, keys in per.items() if port != p)
        with pytest.raises(CacheError, match="MOVED"):
            await cache.set(other, 1)
        assert await cache.get(other) is None


async def test_db_other_than_0_on_a_cluster_is_refused(cluster):
    """db=3 with startup nodes or cluster=True: ValueError at construction; with
    cluster=None, the node refuses SELECT at connect: CacheError naming it."""
    with pytest.raises(ValueError, match="database 0 only"):
        RedisCache(startup_nodes=cluster.startup_nodes, db=3)
    h, p = cluster.startup_nodes[0]
    with pytest.raises(ValueError, match="database 0 only"):
        RedisCache(host=h, port=p, db=3, cluster=True)
    cache = RedisCache(host=h, port=p, db=3)
    with pytest.raises(CacheError, match="SELECT"):
        await bounded(cache.connect())
    await cache.disconnect()


async def test_the_url_names_the_startup_nodes(cluster):
    cache = RedisCache.from_url(cluster.url, prefix=PREFIX)
    assert cache.cluster is True
    assert cache.startup_nodes == tuple(cluster.startup_nodes)
    assert repr(cache).startswith("<bruno_memory_c._core.RedisCache cluster:127.0.0.1:")
    async with cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1


async def test_a_startup_node_down_is_passed_over(cluster, closed_port):
    """The first startup nodes refuse: the next one answers, within connect_timeout."""
    nodes = [("127.0.0.1", closed_port), ("127.0.0.1", closed_port), *cluster.startup_nodes[3:]]
    cache = RedisCache(startup_nodes=nodes, prefix=PREFIX, connect_timeout=TIMEOUT)
    async with cache:
        await cache.set_many({f"k{i}": i for i in range(30)})
        assert len(await cache.get_many([f"k{i}" for i in range(30)])) == 30


# ---------------------------------------------------------------------- keys and slots


async def test_hash_tags_put_keys_on_one_slot(cluster):
    """prefix + "{user:1}:a" and "{user:1}:b" share a slot (the tag's), so one node."""
    cache = make(cluster, prefix="ht:")
    async with cache:
        keys = ["{user:1}:a", "{user:1}:b", "{user:1}:c"]
        await cache.set_many({k: k for k in keys})
        slot = cluster.cluster.keyslot("user:1")
        node = cluster.cluster.node_for_slot(slot)
        assert sorted(node.command("KEYS", "ht:*")) == sorted(f"ht:{k}".encode() for k in keys)
        assert await cache.get_many(keys) == {k: k for k in keys}


async def test_get_many_and_set_many_span_every_node_in_order(cluster):
    """set_many of keys on all three primaries writes each on its node; get_many gives
    them back in the caller's order, the missing ones left out, as one server does."""
    cache = make(cluster)
    async with cache:
        per = keys_per_primary(cluster.cluster, 40)
        keys = [k for ks in zip(*per.values()) for k in ks]  # interleaved nodes
        await cache.set_many({k: [k, i] for i, k in enumerate(keys)})
        for port, ks in per.items():
            node = cluster.cluster.node(port)
            assert all(node.command("EXISTS", PREFIX + k) == 1 for k in ks)
        asked = list(reversed(keys)) + ["absent1", "absent2"]
        got = await cache.get_many(asked)
        assert list(got) == list(reversed(keys))
        assert got == {k: [k, keys.index(k)] for k in reversed(keys)}
        stats = cache.stats()
        assert stats["errors"] == 0 and stats["hits"] == len(keys) and stats["misses"] == 2


async def test_get_many_of_a_key_of_another_type_is_a_miss_as_mget_says(cluster, caplog):
    """One server's MGET answers nil for a key holding a list; over a cluster get_many
    sends GETs, whose WRONGTYPE is taken for that nil: the key is missing and counted
    as a miss, nothing is logged, the other nodes' keys are there."""
    cache = make(cluster)
    async with cache:
        per = keys_per_primary(cluster.cluster, 3)
        keys = [k for ks in per.values() for k in ks]
        await cache.set_many({k: k for k in keys[1:]})
        cluster.command("RPUSH", PREFIX + keys[0], "x")
        with caplog.at_level(logging.ERROR, LOGGER):
            got = await cache.get_many(keys)
        assert got == {k: k for k in keys[1:]}
        assert [r for r in caplog.records if r.name == LOGGER] == []
        assert cache.stats()["misses"] == 1 and cache.stats()["hits"] == len(keys) - 1


async def test_clear_removes_only_our_prefix_on_every_node(cluster):
    ours, theirs = make(cluster, prefix="ours:"), make(cluster, prefix="theirs:")
    async with ours, theirs:
        await ours.set_many({f"k{i}": i for i in range(300)})
        await theirs.set_many({f"k{i}": i for i in range(300)})
        nodes_with_ours = [n for n in cluster.cluster.primaries if n.command("KEYS", "ours:*")]
        assert len(nodes_with_ours) == 3
        await ours.clear()
        assert cluster.command("KEYS", "ours:*") == []
        assert len(cluster.command("KEYS", "theirs:*")) == 300
        assert await theirs.get_many([f"k{i}" for i in range(300)]) == {f"k{i}": i for i in range(300)}


async def test_get_stats_counts_every_primary(cluster):
    """size is the prefix's keys summed over every primary (with the statistics hash,
    as on one server); hits and misses are the one hash at prefix + "stats"."""
    cache = make(cluster)
    async with cache:
        await cache.set_many({f"k{i}": i for i in range(500)})
        await cache.get_many([f"k{i}" for i in range(10)] + ["nope"])
        stats = await cache.get_stats()
        assert stats["hits"] == 10 and stats["misses"] == 1
        # (the statistics hash, made by this very call's HINCRBY on its own node, may or
        # may not be seen by the SCAN of that node, which runs beside it)
        assert stats["size"] in (500, 501)
        assert len(cluster.command("KEYS", PREFIX + "*")) == 501
        assert stats["connected"] is True
    # disconnect() flushed nothing new; a new cache sees the same totals
    async with make(cluster) as again:
        stats = await again.get_stats()
        assert (stats["hits"], stats["misses"]) == (10, 1)


async def test_statistics_are_flushed_to_the_stats_keys_node(cluster):
    """The once-a-second HINCRBY goes to the node of prefix + "stats" (its slot's
    primary), also the one disconnect() sends."""
    cache = make(cluster)
    async with cache:
        await cache.set("k", 1)
        for _ in range(5):
            await cache.get("k")
        await cache.get("missing")
    node = cluster.cluster.node_for_slot(cluster.cluster.keyslot(PREFIX + "stats"))
    assert node.command("HGETALL", PREFIX + "stats") in (
        [b"hits", b"5", b"misses", b"1"], [b"misses", b"1", b"hits", b"5"])



def stats_hash(node) -> dict:
    reply = node.command("HGETALL", PREFIX + "stats") or []
    return {reply[i]: int(reply[i + 1]) for i in range(0, len(reply), 2)}


async def test_statistics_follow_the_stats_key_when_its_slot_moves(redis_cluster):
    """The statistics key's slot moves to another primary (nothing else moves, so no
    user request meets a -MOVED): the next flush, answered -MOVED by the old node, is
    not lost; the counts are given back, the map is asked again, and the flush after
    goes to the new node."""
    cluster = redis_cluster
    cache = make(cluster)
    slot = cluster.keyslot(PREFIX + "stats")
    source = cluster.node_for_slot(slot)
    target = next(n for n in cluster.primaries if n is not source)
    async with cache:
        await cache.set("k", 1)
        for _ in range(3):
            await cache.get("k")
        await until(lambda: stats_hash(source).get(b"hits") == 3, "first flush", 10.0)
        await asyncio.to_thread(cluster.move_slots, [slot], target)
        for _ in range(4):
            await cache.get("k")
        await cache.get("missing")
        await until(lambda: stats_hash(target) == {b"hits": 7, b"misses": 1},
                    "the flushes after the move reach the new node", 10.0)



async def test_disconnect_waits_for_the_flush_whatever_another_node_does(cluster):
    """disconnect() waits for the reply of its statistics flush (on the stats key's
    node, stalled here): another node's connection dropping meanwhile does not end
    that wait (it is not the one carrying the flush)."""
    cl = cluster.cluster
    stats_node = cl.node_for_slot(cl.keyslot(PREFIX + "stats"))
    first = cl.node(cluster.port)  # (the cache's own connection)
    other = next(n for n in cl.primaries if n is not stats_node and n is not first)
    key = keys_per_primary(cl, 1)[other.port][0]
    cache = make(cluster)
    await cache.connect()
    await cache.set(key, 1)
    await cache.get(key)
    await until(lambda: stats_hash(stats_node).get(b"hits") == 1, "first flush", 10.0)
    await cache.get(key)
    # Every node but `other` stopped (a majority of primaries silent: nothing fails over).
    stalls = [n.stall(30) for n in cl.nodes if n is not other]
    try:
        closing = asyncio.create_task(cache.disconnect())
        await asyncio.sleep(0.3)  # (the flush is sent to the stalled node)
        other.command("CLIENT", "KILL", "TYPE", "normal")  # our connection to `other`
        await asyncio.sleep(0.7)
        assert not closing.done(), "disconnect() ended before its flush was answered"
    finally:
        for stall in stalls:
            stall.cancel()
    await bounded(closing)
    await until(lambda: stats_hash(stats_node).get(b"hits") == 2, "the close's flush", 10.0)


# ---------------------------------------------------------------------- failures


async def test_a_failed_node_costs_only_its_keys(caplog):
    """One primary stopped (SIGSTOP, in a cluster whose failure detection takes a
    minute: no failover meanwhile): get_many gives the other nodes' keys (the failure
    logged once), set_many raises CacheError naming how many keys were not written
    and writes the others; single-key calls to live nodes are served."""
    with RedisCluster(node_timeout_ms=60000) as cluster:
        await failed_node_costs_only_its_keys(cluster, caplog)


async def failed_node_costs_only_its_keys(cluster, caplog):
    cache = make(cluster, socket_timeout=1.0)
    async with cache:
        per = keys_per_primary(cluster, 10)
        all_keys = [k for ks in per.values() for k in ks]
        await cache.set_many({k: 1 for k in all_keys})
        victim_port = next(iter(per))
        victim = cluster.node(victim_port)
        live = [k for p, ks in per.items() if p != victim_port for k in ks]
        stall = victim.stall(120)
        try:
            with caplog.at_level(logging.ERROR, LOGGER):
                got = await bounded(cache.get_many(all_keys))
            assert got == {k: 1 for k in live}
            logged = [r.getMessage() for r in caplog.records if r.name == LOGGER]
            assert logged == ["Error getting multiple keys: 10 of 30 keys not read: "
                              "Timeout reading from socket"], logged
            with pytest.raises(CacheError, match=r"^Failed to set multiple keys: 10 of 30 keys "
                                                 r"were not written: "):
                await bounded(cache.set_many({k: 2 for k in all_keys}))
            for k in live:
                assert await cache.get(k) == 2
        finally:
            stall.cancel()


async def test_kill_9_of_a_primary_under_load_is_followed(redis_cluster):
    """100 tasks set and get their own keys while a primary is killed (SIGKILL): every
    await returns (none outlives socket_timeout by much), no result is wrong, and once
    the replica is promoted every key is served again without any user action."""
    cluster = redis_cluster
    cache = make(cluster, socket_timeout=1.0, connect_timeout=1.0)
    stop = asyncio.Event()
    wrong, done = [], [0]

    async def worker(t: int) -> None:
        i = 0
        while not stop.is_set():
            key, value = f"w{t}:{i % 20}", [t, i]
            try:
                await bounded(cache.set(key, value), 5)
            except CacheError:
                continue
            got = await bounded(cache.get(key), 5)
            if got is not None and got != value:
                wrong.append((key, value, got))
            done[0] += 1
            i += 1

    async with cache:
        tasks = [asyncio.create_task(worker(t)) for t in range(100)]
        await until(lambda: done[0] > 2000, "load running")
        victim = cluster.primaries[0]
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_ok, 30)
        before = done[0]
        await until(lambda: done[0] > before + 2000, "load served after the failover", 30)
        stop.set()
        await bounded(asyncio.gather(*tasks))
        assert wrong == []
        # every slot is served again: keys on every primary read back
        per = keys_per_primary(cluster, 5)
        await cache.set_many({k: k for ks in per.values() for k in ks})
        assert len(await cache.get_many([k for ks in per.values() for k in ks])) == 15


async def test_resharding_under_load_loses_nothing(redis_cluster):
    """The slots of 40 keys under load move from one primary to another (MIGRATING/
    IMPORTING, MIGRATE key by key, SETSLOT NODE) while 100 tasks set and read back
    their own keys: -ASK and -MOVED are followed, every result is right, nothing
    raises, and afterwards those keys live on the new primary.

    (The tasks await the cache directly, not through wait_for: on asyncio a wait_for
    per call keeps the GIL so busy that the migrating thread crawls; the gather is
    bounded as a whole.)"""
    cluster = redis_cluster
    cache = make(cluster)
    stop = asyncio.Event()
    wrong, errors, done = [], [], [0]

    async def worker(t: int) -> None:
        i = 0
        while not stop.is_set():
            key, value = f"r{t}:{i % 20}", [t, i]
            try:
                await cache.set(key, value)
                got = await cache.get(key)
            except CacheError as e:
                errors.append(str(e))
                continue
            if got != value:
                wrong.append((key, value, got))
            done[0] += 1
            i += 1

    source, target = cluster.primaries[0], cluster.primaries[1]
    owned = {s for s, e, p, _ in cluster.slots() if p == source.port for s in range(s, e + 1)}
    moving = sorted({key_slot(f"{PREFIX}r{t}:{j}".encode()) for t in range(100)
                     for j in range(20)} & owned)[:40]
    async with cache:
        tasks = [asyncio.create_task(worker(t)) for t in range(100)]
        await until(lambda: done[0] > 1000, "load running")
        await asyncio.to_thread(cluster.move_slots, moving, target)
        before = done[0]
        await until(lambda: done[0] > before + 1000, "load after resharding")
        stop.set()
        await bounded(asyncio.gather(*tasks))
    assert wrong == [] and errors == []
    assert cache.stats()["errors"] == 0
    assert all(cluster.node_for_slot(s) is target for s in moving)


async def test_all_nodes_down_fails_fast(redis_cluster):
    cluster = redis_cluster
    cache = make(cluster, connect_timeout=2.0)
    await cache.connect()
    await cache.set("k", 1)
    for node in list(cluster.nodes):
        cluster.kill(node)
    assert await bounded(cache.get("k"), 10) is None
    with pytest.raises(CacheError):
        await bounded(cache.set("k", 2), 10)
    await cache.disconnect()
    fresh = make(cluster, connect_timeout=2.0)
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        await bounded(fresh.connect(), 10)
    await fresh.disconnect()


async def test_memory_flat_while_one_node_is_down():
    """Multi-node requests cut into parts, with one primary dead (no failover: a
    minute's node timeout), so that a third of every get_many and set_many fails:
    native memory (requests, parts, replies), Python memory and live awaitables do not
    grow with the requests. (The load without failures is test_redis_faults'
    test_memory_flat_over_200k_requests over the cluster topology.)"""
    with RedisCluster(node_timeout_ms=60000) as cluster:
        cache = make(cluster, socket_timeout=2.0, connect_timeout=2.0)
        per = keys_per_primary(cluster, 5)
        keys = [k for ks in per.values() for k in ks]

        async def load(n: int) -> None:
            for i in range(n):
                await cache.get_many(keys)
                try:
                    await cache.set_many({k: i for k in keys})
                except CacheError:
                    pass
                await cache.get(keys[i % len(keys)])

        async with cache:
            await cache.set_many({k: 0 for k in keys})
            cluster.kill(cluster.node(next(iter(per))))
            await load(300)  # warm-up: free lists, buffers, the dead node's backoff
            traced, native, awaitables = await memory_growth(cache, lambda: load(3000))
            assert cache.stats()["errors"] > 0
        assert traced < 3 * 1024 * 1024, traced
        assert native < 16 * 1024 * 1024, native
        assert awaitables <= 0


# ---------------------------------------------------------------------- replicas


async def test_read_from_replicas_reads_on_replicas(cluster):
    """read_from_replicas=True: gets go to the replicas (READONLY connections), writes
    to the primaries; a replica answers what was replicated to it."""
    cache = make(cluster, read_from_replicas=True)
    assert cache.read_from_replicas is True
    replicas = cluster.cluster.replicas

    def gets_on_replicas() -> int:
        total = 0
        for node in replicas:
            info = node.command("INFO", "commandstats").decode()
            for line in info.splitlines():
                if line.startswith("cmdstat_get:") or line.startswith("cmdstat_mget:"):
                    total += int(line.split("calls=")[1].split(",")[0])
        return total

    before = gets_on_replicas()
    async with cache:
        await cache.set_many({f"k{i}": i for i in range(60)})
        for primary in cluster.cluster.primaries:
            primary.command("WAIT", 1, 5000)  # (replicated before the reads)
        for i in range(60):
            assert await cache.get(f"k{i}") == i
        assert await cache.get_many([f"k{i}" for i in range(60)]) == {f"k{i}": i for i in range(60)}
    assert gets_on_replicas() - before >= 60


# ---------------------------------------------------------------------- loops, fork, TLS


def test_several_event_loops_share_one_cluster_cache(cluster, loop_factory):
    cache = make(cluster)
    results = []

    def run(t: int) -> None:
        async def main():
            for i in range(50):
                await cache.set(f"t{t}:{i}", i)
            results.append(await cache.get_many([f"t{t}:{i}" for i in range(50)]))

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())

    threads = [threading.Thread(target=run, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
        assert not th.is_alive()
    assert sorted(len(r) for r in results) == [50, 50, 50]
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(cache.disconnect())


def test_a_forked_child_talks_to_the_cluster_itself(cluster, loop_factory):
    cache = make(cluster)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(cache.set("parent", 1))
        pid = fork()
        if pid == 0:  # the child: its own connections, its own I/O thread
            code = 1
            try:
                with asyncio.Runner(loop_factory=loop_factory) as child:
                    child.run(cache.set_many({f"c{i}": i for i in range(30)}))
                    got = child.run(cache.get_many(["parent", *[f"c{i}" for i in range(30)]]))
                    code = 0 if len(got) == 31 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert runner.run(cache.get("c29")) == 29
        runner.run(cache.disconnect())


async def test_a_tls_cluster(shared_cluster_tls):
    cluster = ClusterTarget(shared_cluster_tls)
    cache = RedisCache.from_url(cluster.url, prefix=PREFIX)
    assert cache.ssl is True
    async with cache:
        per = keys_per_primary(cluster.cluster, 10)
        keys = [k for ks in per.values() for k in ks]
        await cache.set_many({k: k for k in keys})
        assert await cache.get_many(keys) == {k: k for k in keys}
        await cache.clear()
    assert set(cluster.command("KEYS", PREFIX + "*")) <= {b"cl:stats"}  # (disconnect's flush)


async def test_multilevel_over_a_cluster(cluster):
    """MultiLevelCache with a cluster RedisCache as L2: its C fast path, unchanged."""
    l2 = make(cluster)
    ml = MultiLevelCache(InMemoryCache(max_size=100), l2)
    async with l2:
        await ml.set_many({f"k{i}": i for i in range(30)})
        await ml.l1.clear()
        assert await ml.get_many([f"k{i}" for i in range(30)]) == {f"k{i}": i for i in range(30)}
        assert await ml.get("k3") == 3
        assert await ml.l1.get("k3") == 3  # promoted
        assert await l2.get("k29") == 29


async def test_coherent_multilevel_across_migration_and_failover(redis_cluster):
    """A coherent MultiLevelCache over a cluster: its key's slot migrates to another
    primary (the MIGRATE's deletion is an invalidation: A's entry goes), A reads it
    there (that node tracked from its first request) and another client's write there
    drops it; then that primary is killed: once the map names its replica, A's
    L2-backed entries are dropped (what the dead node's channel missed is unknown),
    and the promoted replica's value is what A reads, with no use of L2 by A needed."""
    cluster = redis_cluster
    m = MultiLevelCache(InMemoryCache(), make(cluster))
    key = "moving"
    slot = cluster.keyslot(PREFIX + key)
    try:
        await bounded(m.start())
        await m.set(key, "old")
        target = next(n for n in cluster.primaries if n is not cluster.node_for_slot(slot))
        await asyncio.to_thread(cluster.move_slots, [slot], target)
        await until(lambda: not drive_exists(m, key), "the migration's invalidation")
        assert await bounded(m.get(key)) == "old" and drive_exists(m, key)  # from target
        heard = m.stats()["invalidations"]
        assert target.command("SET", PREFIX + key, '"new"') == "OK"
        await until(lambda: m.stats()["invalidations"] > heard, "the new node's message")
        assert not drive_exists(m, key)
        assert await bounded(m.get(key)) == "new" and drive_exists(m, key)
        flushes = m.stats()["l1_flushes"]
        cluster.kill(target)
        await asyncio.to_thread(cluster.wait_ok, 30)
        promoted = cluster.node_for_slot(slot)
        assert promoted.command("SET", PREFIX + key, '"after"') == "OK"
        await until(lambda: m.stats()["l1_flushes"] > flushes, "the flush once replaced", 30)
        assert not drive_exists(m, key)
        assert await bounded(m.get(key)) == "after"
    finally:
        await m.l2.disconnect()


def drive_exists(m: MultiLevelCache, key) -> bool:
    """Does m's L1 hold key (InMemoryCache answers without suspending)?"""
    return drive(m.l1.exists(key))


async def test_coherent_multilevel_reading_from_replicas(cluster):
    """read_from_replicas=True: A's reads come from replicas, whose connections track
    too (a replica tells of the writes it applies): another client's write on the
    primary drops the entry A read from a replica (A has no connection to that primary:
    it never wrote there)."""
    m = MultiLevelCache(InMemoryCache(), make(cluster, read_from_replicas=True))
    primary = cluster.cluster.node_for_slot(cluster.cluster.keyslot(PREFIX + "k"))
    try:
        await bounded(m.start())
        assert primary.command("SET", PREFIX + "k", '"old"') == "OK"  # (not A's)
        primary.command("WAIT", 1, 5000)  # (replicated before the read)
        assert await bounded(m.get("k")) == "old" and drive_exists(m, "k")
        assert primary.command("SET", PREFIX + "k", '"new"') == "OK"
        await until(lambda: not drive_exists(m, "k"), "the replica's invalidation")
        primary.command("WAIT", 1, 5000)
        assert await bounded(m.get("k")) == "new"
    finally:
        await m.l2.disconnect()
