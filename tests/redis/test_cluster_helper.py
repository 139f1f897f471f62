"""bruno_memory_c.testing.RedisCluster: the throwaway Redis Cluster (3 primaries, 3
replicas) that the cluster tests run against, offered to users too."""
from __future__ import annotations

import gc
import os
import socket

import pytest

from bruno_memory_c.testing import RedisCluster
from tests.support import refused
from tests.support.cluster import key_slot

SLOTS = 16384


def moved_to(node, key) -> str | None:
    """The address a node's -MOVED for a GET of key names, or None if it answers."""
    try:
        node.command("GET", key)
    except RuntimeError as e:
        assert str(e).startswith("MOVED "), e
        return str(e).split()[2]
    return None


def test_a_cluster_starts_whole_and_routes_by_slot(redis_cluster):
    cluster = redis_cluster
    print(f"\nRedisCluster started in {cluster.start_seconds:.2f} s")
    assert cluster.start_seconds < 30
    assert len(cluster.nodes) == 6
    assert len(cluster.primaries) == 3 and len(cluster.replicas) == 3
    assert cluster.startup_nodes == [("127.0.0.1", n.port) for n in cluster.nodes]
    assert cluster.url == ("redis://" + ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
                           + "/0?cluster=true")
    # every slot served exactly once, by a primary with one replica; all nodes agree
    ranges = cluster.slots()
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    for (_, end, _, _), (start, _, _, _) in zip(ranges, ranges[1:]):
        assert start == end + 1
    primaries = {n.port for n in cluster.primaries}
    replicas = {n.port for n in cluster.replicas}
    assert {port for _, _, port, _ in ranges} == primaries
    assert all(len(r) == 1 and r[0] in replicas for _, _, _, r in ranges)
    for node in cluster.nodes:
        info = node.command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info and f"cluster_slots_ok:{SLOTS}" in info
        assert cluster._ranges(node) == ranges
    # a key is served by its slot's primary; the others redirect there
    for primary in cluster.primaries:
        start = next(s for s, _, port, _ in ranges if port == primary.port)
        key = next(f"k{i}" for i in range(100000) if cluster.keyslot(f"k{i}") >= start
                   and cluster.node_for_slot(cluster.keyslot(f"k{i}")) is primary)
        assert primary.command("SET", key, "v") == "OK"
        for other in cluster.primaries:
            if other is not primary:
                assert moved_to(other, key) == f"127.0.0.1:{primary.port}"
    assert cluster.keyslot("{user1}.a") == cluster.keyslot("{user1}.b")
    assert cluster.keyslot("") == 0
    # tests.support.cluster.key_slot (what the cluster tests place keys with) agrees
    for key in ["", "a", "{user1}.a", "{}x", "{a}{b}", "x{}{y}", "ü{ü}", "k123", "{" * 3]:
        assert key_slot(key.encode()) == cluster.keyslot(key), key


def test_kill_a_primary_its_replica_takes_over_and_it_rejoins_as_a_replica(redis_cluster):
    cluster = redis_cluster
    old = cluster.node_for_slot(0)
    replica_port = next(r for s, _, _, r in cluster.slots() if s == 0)[0]
    cluster.kill(old)
    assert refused(old.port)
    cluster.wait_ok(30)
    assert cluster.node_for_slot(0).port == replica_port
    assert len(cluster.primaries) == 3 and len(cluster.replicas) == 2
    cluster.restart(old)
    cluster.wait_ok(30)
    assert old.command("ROLE")[0] == b"slave"
    assert len(cluster.primaries) == 3 and len(cluster.replicas) == 3
    assert cluster.node_for_slot(0).port == replica_port


def test_close_stops_everything_and_is_idempotent():
    cluster = RedisCluster()
    with cluster:
        nodes = [(n.port, n.proc.pid, n.dir) for n in cluster.nodes]
    for port, pid, directory in nodes:
        assert refused(port) and not os.path.exists(directory)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not os.path.exists(cluster._dir)
    cluster.close()
    cluster.close()


def test_a_failed_start_leaves_nothing():
    cluster = RedisCluster(extra_args=("--no-such-option", "x"))
    with pytest.raises(RuntimeError, match="exited"):
        with cluster:
            pass
    assert cluster.nodes and all(n.proc is None and not os.path.exists(n.dir)
                                 for n in cluster.nodes)
    assert not os.path.exists(cluster._dir)


def test_a_cluster_dropped_without_close_is_stopped_and_removed():
    cluster = RedisCluster().start()
    nodes = [(n.port, n.proc.pid, n.dir) for n in cluster.nodes]
    directory = cluster._dir
    del cluster
    gc.collect()
    for port, pid, node_dir in nodes:
        assert refused(port) and not os.path.exists(node_dir)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not os.path.exists(directory)


def test_a_tls_cluster_with_a_password(tls_files):
    """tls=True: TLS only, the cluster bus and replication too; a password is the
    nodes' requirepass and masterauth (kept off command lines)."""
    with RedisCluster(tls=True, tls_files=tls_files, password="s3cret:@/ x") as cluster:
        assert cluster.url.startswith("rediss://:s3cret%3A%40%2F%20x@127.0.0.1:")
        assert cluster.url.endswith(f"/0?cluster=true&ssl_ca_certs={tls_files.ca_file}")
        assert cluster.tls_kwargs == {"ssl": True, "ssl_ca_certs": tls_files.ca_file}
        ranges = cluster.slots()
        assert sum(end - start + 1 for start, end, _, _ in ranges) == SLOTS
        assert all(len(r) == 1 for _, _, _, r in ranges)
        for node in cluster.nodes:
            assert refused_plain(node.port)
            with open(f"/proc/{node.proc.pid}/cmdline", "rb") as f:
                assert b"s3cret" not in f.read()
        shards = cluster.primaries[0].command("CLUSTER", "SHARDS")
        assert all(b"tls-port" in node for shard in shards for node in shard[3])


def refused_plain(port: int) -> bool:
    """A plaintext PING to port gets no PONG (the node speaks TLS only)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return not s.recv(100).startswith(b"+PONG")
    except OSError:
        return True


def test_a_slot_migrates_ask_then_moved(redis_cluster):
    """migrate_slot: keys moved answer -ASK at the source (the target serves them after
    ASKING), the others still at the source; finish(): the slot is the target's,
    every node says so, the source answers -MOVED; move_slots reshards a range."""
    cluster = redis_cluster
    slot = cluster.keyslot("{m}a")
    source = cluster.node_for_slot(slot)
    target = next(n for n in cluster.primaries if n is not source)
    for k in "abcdef":
        assert source.command("SET", "{m}" + k, k) == "OK"
    migration = cluster.migrate_slot(slot, target)
    assert migration.move_keys(3) == 3
    left = {k.decode() for k in source.command("CLUSTER", "GETKEYSINSLOT", slot, 10)}
    assert len(left) == 3
    moved = next("{m}" + k for k in "abcdef" if "{m}" + k not in left)
    with pytest.raises(RuntimeError, match=f"^ASK {slot} 127.0.0.1:{target.port}$"):
        source.command("GET", moved)
    assert source.command("GET", sorted(left)[0]) == sorted(left)[0][-1:].encode()
    with target.connect() as s:
        s.sendall(b"*1\r\n$6\r\nASKING\r\n*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n"
                  % (len(moved), moved.encode()))
        f = s.makefile("rb")
        assert f.readline() == b"+OK\r\n"
        assert f.readline() == b"$1\r\n" and f.readline() == moved[-1:].encode() + b"\r\n"
    migration.finish()
    assert cluster.node_for_slot(slot) is target
    assert moved_to(source, "{m}a") == f"127.0.0.1:{target.port}"
    assert target.command("GET", "{m}f") == b"f"
    cluster.wait_ok(10)
    # a range of slots, with keys in them
    first = next(s for s, _, port, _ in cluster.slots() if port == source.port)
    keys = {}
    for i in range(3000):
        if first <= cluster.keyslot(f"r{i}") < first + 20:
            keys[f"r{i}"] = str(i)
    assert keys
    for k, v in keys.items():
        cluster.node_for_slot(cluster.keyslot(k)).command("SET", k, v)
    cluster.move_slots(range(first, first + 20), target)
    cluster.wait_ok(10)
    assert all(cluster.node_for_slot(s) is target for s in range(first, first + 20))
    assert all(target.command("GET", k) == v.encode() for k, v in keys.items())
