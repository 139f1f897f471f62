"""A shared Redis Cluster seen as one server by the contract tests (the "cluster"
topology, tests/conftest.py): what a test asks of ``redis_server`` — ``url``,
``tls_kwargs``, ``tls``, ``command()`` — answered by the cluster's nodes."""
from __future__ import annotations

from typing import Any

from bruno_memory_c.testing import RedisCluster

#: Commands whose answer is every primary's, put together.
_ALL_PRIMARIES = {"KEYS": "union", "DBSIZE": "sum", "FLUSHDB": "each", "FLUSHALL": "each",
                  "SCRIPT": "each", "CONFIG": "each"}


class ClusterTarget:
    """The cluster behind a contract test, emptied when made (FLUSHALL on every primary,
    the replicas following)."""

    topology = "cluster"

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        cluster.wait_ok()
        self.command("FLUSHALL")

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def tls(self):
        return self.cluster.tls

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        return self.cluster.tls_kwargs

    @property
    def port(self) -> int:
        """The first node's port: a cache given only it finds the cluster (cluster=None
        asks at connect)."""
        return self.cluster.startup_nodes[0][1]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return self.cluster.startup_nodes

    def stall(self, seconds: float) -> "_ClusterStall":
        """Every node stopped (SIGSTOP), as RedisServer.stall() stops one: the whole
        cluster answers nothing (and, its replicas stopped too, fails nothing over)
        until the stall ends; ``cancel()`` ends it now."""
        return _ClusterStall([node.stall(seconds) for node in self.cluster.nodes
                              if node.proc is not None and node.proc.poll() is None])

    def command(self, *args: Any, timeout: float = 10.0) -> Any:
        """A keyed command on its key's primary; KEYS, DBSIZE, FLUSHDB... on every
        primary, put together."""
        name = str(args[0]).upper()
        how = _ALL_PRIMARIES.get(name)
        if how is None and len(args) >= 2:
            node = self.cluster.node_for_slot(self.cluster.keyslot(args[1]))
            return node.command(*args, timeout=timeout)
        if how is None:
            return self.cluster.command(*args, timeout=timeout)
        replies = [node.command(*args, timeout=timeout) for node in self.cluster.primaries]
        if how == "union":
            return [key for reply in replies for key in reply]
        if how == "sum":
            return sum(replies)
        return replies[0]


class _ClusterStall:
    def __init__(self, stalls: list) -> None:
        self.stalls = stalls

    def cancel(self) -> None:
        for stall in self.stalls:
            stall.cancel()

    def join(self, timeout: float | None = None) -> None:
        for stall in self.stalls:
            stall.join(timeout)


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(key: bytes) -> int:
    """A key's Redis Cluster slot (CRC16-XMODEM of the key or of its first non-empty
    {hash tag}, mod 16384), computed here so that tests placing many keys need not ask
    CLUSTER KEYSLOT for each; test_cluster_helper checks it against the server."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    crc = 0
    for b in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc % 16384
