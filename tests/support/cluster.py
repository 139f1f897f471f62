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
    def startup_nodes(self) -> list[tuple[str, int]]:
        return self.cluster.startup_nodes

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
