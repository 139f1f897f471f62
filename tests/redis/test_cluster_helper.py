"""bruno_memory_c.testing.RedisCluster: the throwaway Redis Cluster (3 primaries, 3
replicas) that the cluster tests run against, offered to users too."""
from __future__ import annotations

import gc
import os
import socket

import pytest

from bruno_memory_c.testing import RedisCluster

SLOTS = 16384


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


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
