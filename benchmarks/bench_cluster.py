#!/usr/bin/env python
"""RedisCache over a Redis Cluster: bruno_memory_c against redis-py's and valkey-glide's
cluster clients, one throwaway 3 + 3 cluster, one run.

    .venv/bin/python -m benchmarks.bench_cluster [--quick] [--rounds N] [--strict]

One throwaway Redis Cluster (bruno_memory_c.testing.RedisCluster: 3 primaries, 3
replicas, cluster-node-timeout 1000 ms, loopback) and one throwaway redis-server
(bruno_memory_c.testing.RedisServer, for the single-server row) serve the whole run.
Contenders, measured side by side with the rounds interleaved (in each round every
contender runs every measurement once, in a shuffled order; tables show the median over
the rounds):

- ours:        bruno_memory_c.RedisCache(startup_nodes=cluster.startup_nodes,
               prefix="bench:") (socket_timeout 5 s, its default)
- redis-py:    redis.asyncio.cluster.RedisCluster(startup_nodes=..., max_connections=1000,
               socket_timeout=5) (hiredis parser), `json.loads(await r.get("bench:k..."))`,
               `await r.set("bench:k...", json.dumps(v), ex=3600)`. Its pool raises
               MaxConnectionsError instead of waiting when a node's pool is exhausted (the
               default is 100 per node: 1000 tasks would fail on it), so the limit is
               set past what 1000 tasks can use.
- glide:       valkey-glide's async GlideClusterClient (request_timeout 5 s, default
               inflight limit 1000), the same json text. When valkey-glide is not
               installed or cannot be imported (requirements-bench.txt installs it), it
               is reported as unavailable, the others are measured, and the run fails
               as a missing contender (as in the other benchmarks).
- ours-single: bruno_memory_c.RedisCache(host="127.0.0.1", port=<the single server>,
               prefix="bench:"): the same measurements at 100 tasks only, for the
               "cluster vs one server" ratio.

Data: 16,384 keys "k{i}" (Redis keys "bench:k{i}"), chosen so that each hashes to a slot
of its own: every slot of the cluster holds one, every primary serves its share. Distinct
JSON values {"i": i, "pad": 50 chars}, written once by ours (the storage layout is
shared: the raw clients read and write the same json text). Every result is checked
after the clock stops: a None is "lost", an exception "error", a value of another key (or
garbage) "wrong"; writes are read back (below), a write acknowledged but not stored is
"unwritten". The tables show their sum as "bad".

Measurements (each in a fresh `asyncio.run`, asyncio's default loop; a client is created,
connected and warmed up before the clock starts, and closed after it stops):

1. throughput: C tasks (C = 1, 10, 100, 1000), each doing its share of the requests,
   started together with asyncio.gather; ops/s = requests / wall time (failed requests
   included). Two workloads over the same shuffled key sequence:
   - get: every request a hit.
   - mix: 90% get / 10% set (a seeded choice, the same for every contender); a set
     writes {"i": i, "pad": ..., "w": <a token naming the measurement>} with ttl 3600,
     so a get may see the key's original value or a written one, both of key i. After
     the clock every key written is read back (redis-py's synchronous cluster client,
     mget_nonatomic) and must hold the token's value, one in eight also a TTL in
     (0, 3600].
2. get_many(100): calls one after the other, each of 100 keys drawn at random from the
   16,384 (so spread over all three primaries, ~100 slots); µs per call. redis-py:
   `mget_nonatomic` (+ json.loads per value); glide: its cluster `mget` (split per slot
   by the client).
3. cluster vs one server: ours over the cluster and ours over the single server, both
   workloads at 100 tasks, the same rounds, one right after the other (in a random
   order) in each round; the ratio is the median of the rounds' ratios.
4. failover (once per run, after the rounds, one contender after the other; ours,
   redis-py and glide when available): a fresh client, 100 tasks doing the 90/10 mix in
   a loop; after 1 s a primary is killed (SIGKILL, RedisCluster.kill) and the load goes
   on. Every request is timed and classified as for the victim's slots or the others'.
   Reported, in seconds from the kill: "promoted", when a live node's CLUSTER SLOTS first
   names another primary for the victim's slots (the cluster's side, polled every 20 ms:
   no client can do better); "first success", the first request on the victim's slots
   sent after the kill that succeeded; "recovered", the first success on the victim's
   slots after which none of their requests failed (the load goes on until 2 s after it,
   or gives up 30 s after the kill, --quick 20 s: "not recovered"); "last failure", the
   end of the last failed request on them. Also the failed requests on the victim's slots
   and on the others' (a get's None or any exception after the kill), wrong values, the
   longest request answered after the kill on the victim's slots and on the others', the
   longest stall (time after the kill with no request answered at all), how late at
   most a 10 ms asyncio.sleep woke up after the kill (the event loop's thread blocked),
   requests per second before the kill and in the load's last second.
   Then the node is restarted (it rejoins as a replica) and the next contender kills
   another primary.
   Writes are not read back here (a write the dead primary acknowledged but had not
   replicated is lost by the cluster, not by the client).

Targets (--strict exits 1 when one is missed): at 100 tasks ours >= 10x redis-py for get;
at 100 tasks ours ahead of glide for get and for the mix (when glide is available);
ours over the cluster >= 0.8x ours over one server at 100 tasks (get); no bad result
from ours in any throughput or get_many measurement, and no wrong value from any
contender; ours recovers from the failover with no wrong value.

Writes every figure to benchmarks/results/cluster.json with machine information.
"""
from __future__ import annotations

import asyncio
import datetime
import gc
import importlib.util
import json
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import redis  # noqa: E402
import redis.asyncio.cluster  # noqa: E402
import redis.cluster  # noqa: E402
from redis.crc import key_slot  # noqa: E402

from benchmarks._common import (  # noqa: E402
    Verdicts,
    add_bad,
    bad_total,
    bench_options,
    dist_version,
    fmt_bad,
    fmt_int,
    fmt_us,
    redis_machine_info,
    run_on,
    summed_bad,
    throughput_summary,
    warm_up,
    write_results,
    quiet_contenders,
)
import bruno_memory_c  # noqa: E402
from bruno_memory_c.testing import RedisCluster, RedisServer  # noqa: E402

OurRedisCache = bruno_memory_c.RedisCache

GLIDE_ERROR = None
try:
    if importlib.util.find_spec("glide") is None:
        raise ImportError("not installed (pip install -r requirements-bench.txt)")
    from glide import (  # noqa: E402
        ExpirySet,
        ExpiryType,
        GlideClusterClient,
        GlideClusterClientConfiguration,
        Logger as GlideLogger,
        LogLevel as GlideLogLevel,
        NodeAddress,
    )
    HAVE_GLIDE = True
except Exception as e:  # noqa: BLE001 (an unimportable glide is reported, not fatal)
    HAVE_GLIDE = False
    GLIDE_ERROR = f"{type(e).__name__}: {e}"

perf_counter_ns = time.perf_counter_ns
perf_counter = time.perf_counter

PREFIX = "bench:"
SLOTS = 16384
TTL = 3600
BATCH = 100
CONCURRENCY = (1, 10, 100, 1000)
SINGLE_CONCURRENCY = 100
WORKLOADS = ("get", "mix")
SET_SHARE = 0.10
SOCKET_TIMEOUT = 5.0

ALL_CONTENDERS = ["ours", "redis-py", "glide"]
SINGLE = "ours-single"

# Requests per throughput measurement, (full, quick): at C >= 10 about half a second for
# each (on a noisy machine a shorter one measures the noise), fewer at C = 1 (a round trip
# each: slow for everyone).
THROUGHPUT_OPS = {"ours": (60_000, 30_000), "ours-single": (60_000, 30_000),
                  "redis-py": (8_000, 4_000), "glide": (16_000, 8_000)}
ONE_TASK_OPS = {"ours": (10_000, 5_000), "redis-py": (4_000, 2_000), "glide": (4_000, 2_000)}
# get_many(100) calls per measurement, (full, quick).
GET_MANY_CALLS = {"ours": (600, 300), "redis-py": (100, 50), "glide": (200, 100)}
# Failover: load before the kill, steady successes needed after the last failure, and
# how long to wait at most after the kill (full, quick).
FAILOVER_TASKS = 100
FAILOVER_BEFORE_S = 1.0
FAILOVER_STABLE_S = 2.0
FAILOVER_TIMEOUT_S = (30.0, 20.0)

ERROR = object()  # result slot of a request that raised
PAD = "x" * 50


def value_for(i: int) -> dict:
    return {"i": i, "pad": PAD}


def written_value(i: int, token: str) -> dict:
    return {"i": i, "pad": PAD, "w": token}


def pick_names() -> tuple[list[str], list[int], dict[str, int]]:
    """One key name per slot: "k{i}" for the first i whose Redis key "bench:k{i}" lands
    on a slot not yet taken, until all 16,384 are. Returns the names, slot by slot, and
    the names' i."""
    by_slot: list[str | None] = [None] * SLOTS
    index: dict[str, int] = {}
    left = SLOTS
    i = 0
    while left:
        name = f"k{i}"
        s = key_slot((PREFIX + name).encode())
        if by_slot[s] is None:
            by_slot[s] = name
            index[name] = i
            left -= 1
        i += 1
    names = [n for n in by_slot if n is not None]
    return names, list(range(SLOTS)), index


NAMES, NAME_SLOTS, INDEX = pick_names()
SLOT_OF = dict(zip(NAMES, NAME_SLOTS))
EXPECTED = {n: value_for(INDEX[n]) for n in NAMES}


# ------------------------------------------------------------------ clients
# Every contender is used through the same small interface, created inside the loop that
# uses it: get(name), set(name, value), get_many(names), close(). `name` is the
# cache-level key ("k12"); the raw clients add the prefix and the json themselves.


class Client:
    get = set = get_many = None

    async def close(self) -> None:
        raise NotImplementedError


class OursClient(Client):
    @classmethod
    async def create(cls, target) -> "OursClient":
        self = cls()
        if isinstance(target, RedisCluster):
            self.cache = OurRedisCache(startup_nodes=target.startup_nodes, prefix=PREFIX,
                                       socket_timeout=SOCKET_TIMEOUT)
        else:
            self.cache = OurRedisCache(host="127.0.0.1", port=target.port, prefix=PREFIX,
                                       socket_timeout=SOCKET_TIMEOUT)
        await self.cache.connect()
        cache = self.cache
        self.get = cache.get
        self.get_many = cache.get_many
        c_set = cache.set

        def set_(name, value):
            return c_set(name, value, TTL)

        self.set = set_
        return self

    async def close(self) -> None:
        await self.cache.disconnect()


def cluster_nodes(cluster: RedisCluster, node_class):
    return [node_class(h, p) for h, p in cluster.startup_nodes]


class RedisPyClusterClient(Client):
    @classmethod
    async def create(cls, cluster: RedisCluster) -> "RedisPyClusterClient":
        self = cls()
        r = self.r = redis.asyncio.cluster.RedisCluster(
            startup_nodes=cluster_nodes(cluster, redis.asyncio.cluster.ClusterNode),
            max_connections=1000, socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT)
        await r.initialize()
        loads, dumps = json.loads, json.dumps
        r_get, r_set, r_mget = r.get, r.set, r.mget_nonatomic
        prefix = PREFIX

        async def get(name):
            v = await r_get(prefix + name)
            return None if v is None else loads(v)

        async def set_(name, value):
            await r_set(prefix + name, dumps(value), ex=TTL)

        async def get_many(names):
            values = await r_mget([prefix + n for n in names])
            return {n: loads(v) for n, v in zip(names, values) if v is not None}

        self.get, self.set, self.get_many = get, set_, get_many
        return self

    async def close(self) -> None:
        await self.r.aclose()


class GlideClusterBenchClient(Client):
    @classmethod
    async def create(cls, cluster: RedisCluster) -> "GlideClusterBenchClient":
        self = cls()
        config = GlideClusterClientConfiguration(
            [NodeAddress(h, p) for h, p in cluster.startup_nodes],
            request_timeout=int(SOCKET_TIMEOUT * 1000))
        c = self.c = await GlideClusterClient.create(config)
        loads, dumps = json.loads, json.dumps
        c_get, c_set, c_mget = c.get, c.set, c.mget
        prefix = PREFIX
        expiry = ExpirySet(ExpiryType.SEC, TTL)

        async def get(name):
            v = await c_get(prefix + name)
            return None if v is None else loads(v)

        async def set_(name, value):
            await c_set(prefix + name, dumps(value), expiry=expiry)

        async def get_many(names):
            values = await c_mget([prefix + n for n in names])
            return {n: loads(v) for n, v in zip(names, values) if v is not None}

        self.get, self.set, self.get_many = get, set_, get_many
        return self

    async def close(self) -> None:
        await self.c.close()


FACTORIES = {"ours": OursClient, "ours-single": OursClient, "redis-py": RedisPyClusterClient}
if HAVE_GLIDE:
    FACTORIES["glide"] = GlideClusterBenchClient


# ------------------------------------------------------------------ checks


def is_good(name: str, v) -> bool:
    """v is key `name`'s original value or one written by a measurement's set."""
    exp = EXPECTED[name]
    if v == exp:
        return True
    return (isinstance(v, dict) and len(v) == 3 and v.get("i") == exp["i"]
            and v.get("pad") == PAD and isinstance(v.get("w"), str))


def classify(name: str, v) -> str:
    if v is None:
        return "lost"
    if v is ERROR:
        return "error"
    return "ok" if is_good(name, v) else "wrong"


def new_bad() -> dict:
    return {"lost": 0, "error": 0, "wrong": 0, "unwritten": 0}


class Verifier:
    """Reads back what a measurement wrote (a synchronous client of its own, outside the
    timed part): redis-py's RedisCluster for the cluster, redis.Redis for one server."""

    def __init__(self, cluster: RedisCluster, single: RedisServer) -> None:
        self.cluster = redis.cluster.RedisCluster(
            startup_nodes=cluster_nodes(cluster, redis.cluster.ClusterNode))
        self.single = redis.Redis(host="127.0.0.1", port=single.port)

    def client(self, contender: str):
        return self.single if contender == SINGLE else self.cluster

    def check_writes(self, contender: str, written: dict[str, str]) -> dict:
        """{"unwritten": n, "wrong": n} for {name: token} that must be stored now."""
        bad = {"unwritten": 0, "wrong": 0}
        if not written:
            return bad
        c = self.client(contender)
        names = list(written)
        keys = [PREFIX + n for n in names]
        mget = c.mget_nonatomic if c is self.cluster else c.mget
        for start in range(0, len(keys), 1000):
            stored = mget(keys[start:start + 1000])
            for n, raw in zip(names[start:start + 1000], stored):
                if raw is None:
                    bad["unwritten"] += 1
                elif json.loads(raw) != written_value(INDEX[n], written[n]):
                    bad["wrong"] += 1
        for n in names[::8]:  # the expiry
            ttl = c.ttl(PREFIX + n)
            if not (0 < ttl <= TTL):
                bad["wrong"] += 1
        return bad

    def close(self) -> None:
        self.cluster.close()
        self.single.close()


# ------------------------------------------------------------------ measurements


def measure_throughput(contender: str, target, workload: str, concurrency: int,
                       ops: list, token: str, verifier: Verifier) -> dict:
    """ops: [(name, is_set)], cut into `concurrency` equal slices."""
    per_task = len(ops) // concurrency
    total = per_task * concurrency
    ops = ops[:total]
    if workload == "get":
        ops = [(n, False) for n, _ in ops]

    async def worker(client, out, start, stop):
        get, set_ = client.get, client.set
        for i in range(start, stop):
            name, is_set = ops[i]
            try:
                if is_set:
                    await set_(name, written_value(INDEX[name], token))
                    out[i] = True
                else:
                    out[i] = await get(name)
            except Exception:
                out[i] = ERROR

    async def run():
        client = await FACTORIES[contender].create(target)
        try:
            await warm_up(client, [n for n, _ in ops], concurrency, 200)
            out = [None] * total
            t0 = perf_counter_ns()
            await asyncio.gather(*(worker(client, out, t * per_task, (t + 1) * per_task)
                                   for t in range(concurrency)))
            elapsed = perf_counter_ns() - t0
            return elapsed, out
        finally:
            await client.close()

    gc.collect()
    elapsed, out = run_on("asyncio", run())
    bad = new_bad()
    written: dict[str, str] = {}
    sets = 0
    for (name, is_set), v in zip(ops, out):
        if is_set:
            sets += 1
            if v is ERROR:
                bad["error"] += 1
            else:
                written[name] = token
        else:
            k = classify(name, v)
            if k != "ok":
                bad[k] += 1
    add_bad(bad, verifier.check_writes(contender, written))
    return {"elapsed_ns": elapsed, "requests": total, "sets": sets,
            "ops_per_s": total / (elapsed / 1e9), "bad": bad}


def measure_get_many(contender: str, cluster: RedisCluster, calls: int,
                     batches: list[list[str]]) -> dict:
    async def run():
        client = await FACTORIES[contender].create(cluster)
        try:
            await warm_up(client, NAMES[:200], 1, 200)
            for b in batches[:3]:
                await client.get_many(b)
            f = client.get_many
            args = [batches[j % len(batches)] for j in range(calls)]
            results = [None] * calls
            t0 = perf_counter_ns()
            for j in range(calls):
                try:
                    results[j] = await f(args[j])
                except Exception:
                    results[j] = ERROR
            elapsed = perf_counter_ns() - t0
            return elapsed, args, results
        finally:
            await client.close()

    gc.collect()
    elapsed, args, results = run_on("asyncio", run())
    bad = new_bad()
    for names, res in zip(args, results):
        if res is ERROR or not isinstance(res, dict):
            bad["error"] += len(names)
            continue
        for n in names:
            k = classify(n, res.get(n))
            if k != "ok":
                bad[k] += 1
        if len(res) != len(names):
            bad["wrong"] += sum(1 for k in res if k not in names)
    return {"elapsed_ns": elapsed, "calls": calls, "us_per_call": elapsed / calls / 1e3,
            "bad": bad}


def measure_failover(contender: str, cluster: RedisCluster, victim: RedisServer,
                     ops: list, timeout_s: float) -> dict:
    """100 tasks of the mix, a primary killed after FAILOVER_BEFORE_S: see the module
    docstring (4.)."""
    victim_port = victim.port
    victim_slots = set()
    for start, end, port, _ in cluster.slots():
        if port == victim_port:
            victim_slots.update(range(start, end + 1))
    probe_slot = min(victim_slots)
    token = f"failover-{contender}"
    n_ops = len(ops)

    # recovered_at: when the first request on the victim's slots sent after the kill
    # succeeded with no failure on them ending after it (reset by every failure).
    state = {"stop": False, "t_kill": None, "last_fail_end": None, "recovered_at": None,
             "promoted_at": None, "loop_late": 0.0}
    # per request: (t_sent, t_done, on_victim, outcome), outcome in ok/lost/error/wrong
    records: list[tuple[float, float, bool, str]] = []

    async def worker(client, t):
        get, set_ = client.get, client.set
        i = t
        rec = records.append
        while not state["stop"]:
            name, is_set = ops[i % n_ops]
            i += FAILOVER_TASKS
            on_victim = SLOT_OF[name] in victim_slots
            t0 = perf_counter()
            try:
                if is_set:
                    await set_(name, written_value(INDEX[name], token))
                    outcome = "ok"
                else:
                    outcome = classify(name, await get(name))
            except Exception:
                outcome = "error"
            t1 = perf_counter()
            rec((t0, t1, on_victim, outcome))
            t_kill = state["t_kill"]
            if t_kill is not None and on_victim:
                if outcome == "ok":
                    if t0 >= t_kill and state["recovered_at"] is None:
                        state["recovered_at"] = t1
                elif outcome != "wrong":
                    state["last_fail_end"] = t1
                    state["recovered_at"] = None

    def watch_promotion():
        """When a live node's CLUSTER SLOTS first names another primary for the victim's
        slots (the cluster's view, for reference)."""
        while not state["stop"]:
            try:
                for start, end, port, _ in cluster.slots():
                    if start <= probe_slot <= end and port != victim_port:
                        state["promoted_at"] = perf_counter()
                        return
            except Exception:  # noqa: BLE001 (a node busy failing over: ask again)
                pass
            time.sleep(0.02)

    async def heartbeat():
        """The event loop's responsiveness: how late a 10 ms sleep wakes up, after the
        kill (a client that blocks the loop's thread shows here)."""
        while True:
            t0 = perf_counter()
            await asyncio.sleep(0.01)
            late = perf_counter() - t0 - 0.01
            if state["t_kill"] is not None and late > state["loop_late"]:
                state["loop_late"] = late

    async def run():
        client = await FACTORIES[contender].create(cluster)
        try:
            await warm_up(client, [n for n, _ in ops], FAILOVER_TASKS, 200)
            tasks = [asyncio.ensure_future(worker(client, t)) for t in range(FAILOVER_TASKS)]
            beat = asyncio.ensure_future(heartbeat())
            await asyncio.sleep(FAILOVER_BEFORE_S)
            # SIGKILL and wait for the process to be gone, in the loop's thread: no
            # request is answered meanwhile, so every one sent after t_kill went to a
            # dead node (or elsewhere)
            cluster.kill(victim)
            state["t_kill"] = perf_counter()
            watcher = asyncio.ensure_future(asyncio.to_thread(watch_promotion))
            recovered = False
            while True:
                await asyncio.sleep(0.05)
                now = perf_counter()
                ra = state["recovered_at"]
                if ra is not None and now - ra >= FAILOVER_STABLE_S:
                    recovered = True
                    break
                if now - state["t_kill"] > timeout_s:
                    break
            state["stop"] = True
            t_stop = perf_counter()
            # a request still waiting finishes within its timeout
            done, pending = await asyncio.wait(tasks, timeout=SOCKET_TIMEOUT + 5)
            for p in pending:
                p.cancel()
            await watcher
            beat.cancel()
            return recovered, t_stop, len(pending)
        finally:
            try:
                await asyncio.wait_for(client.close(), 10)
            except Exception:  # noqa: BLE001 (a client that cannot close is its business)
                pass

    gc.collect()
    recovered, t_stop, hung = run_on("asyncio", run())
    t_kill = state["t_kill"]
    before = [r for r in records if r[1] < t_kill]
    after = [r for r in records if r[1] >= t_kill]
    failed = ("lost", "error")
    fails_victim = sum(1 for r in after if r[2] and r[3] in failed)
    fails_other = sum(1 for r in after if not r[2] and r[3] in failed)
    first_ok = min((r[1] for r in after if r[2] and r[3] == "ok" and r[0] >= t_kill),
                   default=None)
    # the longest a request waited for its answer (or failure), on the victim's slots and
    # on the others', among those answered after the kill; the longest time after the
    # kill with no request answered at all
    held_victim = max((r[1] - r[0] for r in after if r[2]), default=0.0)
    held_other = max((r[1] - r[0] for r in after if not r[2]), default=0.0)
    ends = sorted([t_kill] + [r[1] for r in after])
    stall = max((b - a for a, b in zip(ends, ends[1:])), default=0.0)
    # requests completed per second before the kill and in the last second of the load
    rate_before = sum(1 for r in before if r[1] >= t_kill - FAILOVER_BEFORE_S + 0.2) \
        / (FAILOVER_BEFORE_S - 0.2)
    rate_end = sum(1 for r in after if r[1] >= t_stop - 1.0)

    def since(t):
        return None if t is None else t - t_kill

    return {
        "victim_port": victim_port,
        "victim_slots": len(victim_slots),
        "recovered": recovered,
        "promoted_s": since(state["promoted_at"]),
        "first_success_s": since(first_ok),
        "recovered_s": since(state["recovered_at"]) if recovered else None,
        "last_failure_s": since(state["last_fail_end"]),
        "load_s_after_kill": t_stop - t_kill,
        "requests": len(records),
        "failed_before_kill": sum(1 for r in before if r[3] != "ok"),
        "failed_victim_slots": fails_victim,
        "failed_other_slots": fails_other,
        "failed_by_kind": {k: sum(1 for r in after if r[3] == k) for k in failed},
        "wrong": sum(1 for r in records if r[3] == "wrong"),
        "longest_request_s": max((r[1] - r[0] for r in records), default=0.0),
        "longest_victim_request_s": held_victim,
        "longest_other_request_s": held_other,
        "longest_stall_s": stall,
        "loop_late_max_s": state["loop_late"],
        "tasks_not_finished": hung,
        "ops_per_s_before_kill": rate_before,
        "ops_per_s_last_second": rate_end,
    }


# ------------------------------------------------------------------ report


def load_data(cluster: RedisCluster, single: RedisServer, verifier: Verifier) -> None:
    """The keys every contender reads, written by ours on both the cluster and the
    single server, then read back through redis-py."""

    async def preload():
        for target in (cluster, single):
            c = await OursClient.create(target)
            try:
                await c.cache.set_many(EXPECTED, TTL)
            finally:
                await c.close()

    run_on("asyncio", preload())
    for contender in ("ours", SINGLE):
        c = verifier.client(contender)
        mget = c.mget_nonatomic if c is verifier.cluster else c.mget
        stored = mget([PREFIX + n for n in NAMES])
        bad = sum(1 for n, raw in zip(NAMES, stored)
                  if raw is None or json.loads(raw) != EXPECTED[n])
        if bad:
            raise RuntimeError(f"preload: {bad} of {len(NAMES)} keys not stored as "
                               f"written ({'one server' if contender == SINGLE else 'cluster'})")


def print_throughput(workload: str, tput: dict, contenders: list[str], rounds: int) -> None:
    what = "gets" if workload == "get" else f"requests ({100 - 100 * SET_SHARE:.0f}% get / " \
        f"{100 * SET_SHARE:.0f}% set)"
    print()
    print(f"## Throughput over the cluster, {what}/s with C concurrent tasks (median of "
          f"{rounds} round(s); bad = lost + error + wrong + unwritten over all rounds)")
    print()
    head = "| tasks |"
    rule = "|---:|"
    for c in contenders:
        head += f" {c} ops/s | {c} bad |"
        rule += "---:|---:|"
    head += " ours / redis-py |"
    rule += "---:|"
    if "glide" in contenders:
        head += " ours / glide |"
        rule += "---:|"
    print(head)
    print(rule)
    for conc in CONCURRENCY:
        t = tput[workload][conc]
        row = f"| {conc:,} |"
        for c in contenders:
            row += (f" {fmt_int(t[c]['ops_per_s'])} "
                    f"| {fmt_bad(t[c]['bad'], t[c]['requests_total'])} |")
        row += f" {t['ours']['ops_per_s'] / t['redis-py']['ops_per_s']:.1f}x |"
        if "glide" in contenders:
            row += f" {t['ours']['ops_per_s'] / t['glide']['ops_per_s']:.2f}x |"
        print(row)


def fmt_s(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv=None) -> int:
    opts = bench_options(__doc__, "cluster", 3, 1, argv)
    q = 1 if opts.quick else 0
    rounds = opts.rounds

    quiet_contenders()
    unavailable = []
    if HAVE_GLIDE:
        GlideLogger.set_logger_config(GlideLogLevel.OFF if hasattr(GlideLogLevel, "OFF")
                                      else GlideLogLevel.ERROR)
    else:
        unavailable.append(f"glide (valkey-glide: {GLIDE_ERROR})")
    for u in unavailable:
        print(f"UNAVAILABLE contender: {u}: not measured, its targets not checked")

    contenders = [c for c in ALL_CONTENDERS if c in FACTORIES]
    started = time.time()
    info = {**redis_machine_info(),
            "valkey_glide": dist_version("valkey-glide") if HAVE_GLIDE else None}

    rng = random.Random(1234)
    order = NAMES[:]
    rng.shuffle(order)
    is_set = [rng.random() < SET_SHARE for _ in range(len(order))]

    def ops_for(n: int) -> list[tuple[str, bool]]:
        return [(order[i % SLOTS], is_set[i % SLOTS]) for i in range(n)]

    def n_ops(c: str, conc: int) -> int:
        return (ONE_TASK_OPS if conc == 1 else THROUGHPUT_OPS)[c][q]

    tp_ops = {c: THROUGHPUT_OPS[c][q] for c in contenders + [SINGLE]}
    tp_ops_1 = {c: ONE_TASK_OPS[c][q] for c in contenders}
    gm_calls = {c: GET_MANY_CALLS[c][q] for c in contenders}
    batch_rng = random.Random(99)
    batches = [batch_rng.sample(NAMES, BATCH) for _ in range(50)]
    failover_timeout = FAILOVER_TIMEOUT_S[q]

    cluster = RedisCluster()
    single = RedisServer()
    verifier = None
    failovers: dict[str, dict] = {}
    try:
        cluster.start()
        single.start()
        verifier = Verifier(cluster, single)
        info.update(cluster_ports=[p for _, p in cluster.startup_nodes],
                    cluster_start_s=round(cluster.start_seconds or 0, 2),
                    single_port=single.port)
        print(f"# RedisCache over a Redis Cluster (3 primaries + 3 replicas, loopback): "
              f"{rounds} round(s); contenders: {', '.join(contenders)} (+ {SINGLE})")
        print(f"# {info['cpu_model']}, {info['nproc']} CPUs, load {info['loadavg_at_start']}, "
              f"Python {info['python']}, redis-server {info['redis_server']}, "
              f"redis-py {info['redis_py']} (hiredis {info['hiredis']}), "
              f"valkey-glide {info['valkey_glide'] or 'unavailable'}")
        t_load = perf_counter()
        load_data(cluster, single, verifier)
        print(f"# {SLOTS:,} keys (one per slot) written on the cluster and on one server in "
              f"{perf_counter() - t_load:.1f} s", flush=True)

        def target_of(c):
            return single if c == SINGLE else cluster

        # Warm-up, not recorded: every contender, every shape, small.
        for c in contenders + [SINGLE]:
            concs = CONCURRENCY if c != SINGLE else (SINGLE_CONCURRENCY,)
            for conc in concs:
                for w in WORKLOADS:
                    measure_throughput(c, target_of(c), w, conc, ops_for(max(conc, 400)),
                                       f"warm-{c}", verifier)
            if c != SINGLE:
                measure_get_many(c, cluster, 5, batches)
        print(f"# warm-up done: {time.time() - started:.1f} s", flush=True)

        tp = {w: {conc: {c: [] for c in contenders} for conc in CONCURRENCY}
              for w in WORKLOADS}
        for w in WORKLOADS:
            tp[w][SINGLE_CONCURRENCY][SINGLE] = []
        gm = {c: [] for c in contenders}
        shuffle_rng = random.Random(42)

        for r in range(rounds):
            t_round = perf_counter()
            for w in WORKLOADS:
                for conc in CONCURRENCY:
                    if conc == SINGLE_CONCURRENCY:
                        # ours over the cluster and over one server one right after the
                        # other (in a random order): their ratio is paired by round
                        pair = ["ours", SINGLE]
                        shuffle_rng.shuffle(pair)
                        units = [pair] + [[c] for c in contenders if c != "ours"]
                    else:
                        units = [[c] for c in contenders]
                    shuffle_rng.shuffle(units)
                    for c in [c for unit in units for c in unit]:
                        token = f"r{r}-{w}-{conc}-{c}"
                        tp[w][conc][c].append(measure_throughput(
                            c, target_of(c), w, conc, ops_for(n_ops(c, conc)), token,
                            verifier))
            cs = contenders[:]
            shuffle_rng.shuffle(cs)
            for c in cs:
                gm[c].append(measure_get_many(c, cluster, gm_calls[c], batches))
            print(f"# round {r + 1}/{rounds}: {perf_counter() - t_round:.1f} s", flush=True)

        # Failover, once per contender, at the end (it changes the cluster's topology).
        single.close()
        fo_ops = ops_for(SLOTS)
        for k, c in enumerate(contenders):
            cluster.wait_ok(60)
            prims = sorted(cluster.primaries, key=lambda n: n.port)
            victim = prims[k % len(prims)]
            t_fo = perf_counter()
            try:
                failovers[c] = measure_failover(c, cluster, victim, fo_ops, failover_timeout)
            except Exception as e:  # noqa: BLE001 (reported; the run goes on)
                failovers[c] = {"error": f"{type(e).__name__}: {e}", "recovered": False,
                                "victim_port": victim.port}
            cluster.restart(victim)
            cluster.wait_ok(60)
            print(f"# failover {c}: {perf_counter() - t_fo:.1f} s (kill, recovery, "
                  "restart of the node, cluster whole again)", flush=True)
    finally:
        if verifier is not None:
            verifier.close()
        single.close()
        cluster.close()
    try:
        load_end = os.getloadavg()
    except OSError:
        load_end = None

    # ---- summaries
    tput = {w: {conc: {c: throughput_summary(tp[w][conc][c], new_bad) for c in tp[w][conc]}
                for conc in CONCURRENCY} for w in WORKLOADS}
    # cluster / one server, round by round (measured one right after the other)
    vs_single = {}
    for w in WORKLOADS:
        t = tp[w][SINGLE_CONCURRENCY]
        per_round = [a["ops_per_s"] / b["ops_per_s"] for a, b in zip(t["ours"], t[SINGLE])]
        vs_single[w] = {"median_ratio": statistics.median(per_round),
                        "per_round": per_round}
    gsum = {c: {"us_per_call": statistics.median(m["us_per_call"] for m in gm[c]),
                "calls_total": sum(m["calls"] for m in gm[c]),
                "bad": summed_bad(gm[c], new_bad), "rounds": gm[c]} for c in contenders}

    # ---- tables
    for w in WORKLOADS:
        print_throughput(w, tput, contenders, rounds)
    print()
    print("Requests per measurement: " + ", ".join(
        f"{c} {tp_ops[c]:,} ({tp_ops_1[c]:,} at 1 task)" for c in contenders)
        + "; ops/s counts every request, failed ones included.")
    if unavailable:
        print("Unavailable: " + "; ".join(unavailable) + ".")

    print()
    print(f"## Ours over the cluster vs ours over one redis-server, {SINGLE_CONCURRENCY} tasks "
          f"(median of {rounds} round(s))")
    print()
    print("| workload | cluster ops/s | cluster bad | one server ops/s | one server bad "
          "| cluster / one server | per round |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for w in WORKLOADS:
        t = tput[w][SINGLE_CONCURRENCY]
        o, s = t["ours"], t[SINGLE]
        v = vs_single[w]
        print(f"| {w} | {fmt_int(o['ops_per_s'])} | {fmt_bad(o['bad'], o['requests_total'])} "
              f"| {fmt_int(s['ops_per_s'])} | {fmt_bad(s['bad'], s['requests_total'])} "
              f"| {v['median_ratio']:.2f}x | {', '.join(f'{x:.2f}' for x in v['per_round'])} |")
    print()
    print("The two are measured one right after the other in each round; the ratio is the "
          "median of the rounds' ratios.")

    print()
    print(f"## get_many({BATCH}) over the cluster, keys spread over every primary, µs per "
          f"call (median of {rounds} round(s))")
    print()
    print("| contender | µs per call | bad keys | contender / ours |")
    print("|---|---:|---:|---:|")
    for c in contenders:
        g = gsum[c]
        label = {"redis-py": "redis-py (mget_nonatomic)", "glide": "glide (mget)"}.get(c, c)
        print(f"| {label} | {fmt_us(g['us_per_call'])} "
              f"| {fmt_bad(g['bad'], g['calls_total'] * BATCH)} "
              f"| {g['us_per_call'] / gsum['ours']['us_per_call']:.2f}x |")
    print()
    print("Calls per measurement: " + ", ".join(f"{c} {gm_calls[c]}" for c in contenders)
          + ".")

    print()
    print(f"## Failover: SIGKILL of a primary under {FAILOVER_TASKS} tasks "
          f"({100 - 100 * SET_SHARE:.0f}% get / {100 * SET_SHARE:.0f}% set), once per "
          "contender; seconds from the kill")
    print()
    print("| contender | promoted s | first success s | recovered s | last failure s "
          "| failed on its slots | failed on other slots | wrong "
          "| longest request s: its slots / others | longest stall s | loop late s "
          "| ops/s before / last second |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in contenders:
        f = failovers.get(c, {"error": "not run", "recovered": False})
        if "error" in f:
            print(f"| {c} | {f['error']} | | | | | | | | | | |")
            continue
        rec = fmt_s(f["recovered_s"]) if f["recovered"] else \
            f"**not recovered in {failover_timeout:.0f} s**"
        print(f"| {c} | {fmt_s(f['promoted_s'])} | {fmt_s(f['first_success_s'])} | {rec} "
              f"| {fmt_s(f['last_failure_s'])} | {f['failed_victim_slots']:,} "
              f"| {f['failed_other_slots']:,} | {f['wrong']:,} "
              f"| {f['longest_victim_request_s']:.2f} / {f['longest_other_request_s']:.2f} "
              f"| {f['longest_stall_s']:.2f} | {f['loop_late_max_s']:.2f} "
              f"| {fmt_int(f['ops_per_s_before_kill'])} / {fmt_int(f['ops_per_s_last_second'])} |")
    print()
    print(f"cluster-node-timeout 1000 ms (the replica's promotion needs at least that); "
          f"promoted: the cluster's CLUSTER SLOTS; recovered: the first success on the "
          f"victim's slots with no failure on them after it ({FAILOVER_STABLE_S:g} s "
          f"watched); longest stall: the longest time after the kill with no request "
          f"answered; loop late: the most a 10 ms asyncio.sleep overslept after the kill "
          f"(the event loop's thread blocked). Load average: {info['loadavg_at_start']} at "
          f"the start, {load_end} at the end.")
    print()

    # ---- targets
    verdict = Verdicts()
    g100 = tput["get"][100]
    o100, r100 = g100["ours"]["ops_per_s"], g100["redis-py"]["ops_per_s"]
    verdict("get_100_vs_redis_py", o100 >= 10 * r100,
            f"100 tasks, get: ours {fmt_int(o100)} ops/s = {o100 / r100:.1f}x redis-py's "
            f"RedisCluster ({fmt_int(r100)} ops/s) (target >= 10x)", ratio=o100 / r100)
    if "glide" in contenders:
        for w in WORKLOADS:
            t = tput[w][100]
            o, g = t["ours"]["ops_per_s"], t["glide"]["ops_per_s"]
            verdict(f"{w}_100_vs_glide", o > g,
                    f"100 tasks, {w}: ours {fmt_int(o)} ops/s vs valkey-glide {fmt_int(g)} "
                    f"ops/s = {o / g:.2f}x (target: ahead)", ratio=o / g)
    else:
        # (as in the other benchmarks: a missing contender is a target missed)
        verdict("contender_present", False,
                f"missing contender: valkey-glide ({GLIDE_ERROR}); install it with "
                "`make bench` (requirements-bench.txt)", contender="glide")
    s100 = tput["get"][SINGLE_CONCURRENCY]
    oc, os_ = s100["ours"]["ops_per_s"], s100[SINGLE]["ops_per_s"]
    ratio = vs_single["get"]["median_ratio"]
    verdict("cluster_vs_single_100", ratio >= 0.8,
            f"100 tasks, get: ours over the cluster {fmt_int(oc)} ops/s vs ours over one "
            f"server {fmt_int(os_)} ops/s: {ratio:.2f}x (median of the rounds' ratios; "
            "target >= 0.8x)", ratio=ratio)
    bad_ours = (sum(bad_total(tput[w][conc]["ours"]["bad"])
                    for w in WORKLOADS for conc in CONCURRENCY)
                + bad_total(tput["get"][SINGLE_CONCURRENCY][SINGLE]["bad"])
                + bad_total(tput["mix"][SINGLE_CONCURRENCY][SINGLE]["bad"])
                + bad_total(gsum["ours"]["bad"]))
    verdict("zero_bad_ours", bad_ours == 0,
            f"every throughput and get_many measurement: ours {bad_ours:,} lost/failed/wrong/"
            "unwritten (target 0)", bad=bad_ours)
    for c in contenders:
        wrong = (sum(tput[w][conc][c]["bad"]["wrong"] for w in WORKLOADS for conc in CONCURRENCY)
                 + gsum[c]["bad"]["wrong"])
        verdict("zero_wrong", wrong == 0,
                f"every throughput and get_many measurement: {c} {wrong:,} wrong values "
                "(target 0)", contender=c, wrong=wrong)
    fo = failovers.get("ours", {})
    fo_ok = fo.get("recovered") and fo.get("wrong", 1) == 0
    verdict("failover_ours", fo_ok,
            "failover: ours " + (f"recovered {fmt_s(fo.get('recovered_s'))} s after the kill, "
                                  f"{fo.get('wrong')} wrong values"
                                  if fo.get("recovered") else
                                  f"did not recover ({fo.get('error') or 'timeout'})")
            + " (target: recovers, 0 wrong)", recovered_s=fo.get("recovered_s"))

    wrong_results = {}
    for c in contenders:
        for w in WORKLOADS:
            for conc in CONCURRENCY:
                b = tput[w][conc][c]["bad"]
                if c == "ours" and bad_total(b):
                    wrong_results[f"ours {w} {conc} tasks"] = [json.dumps(b)]
    if bad_total(gsum["ours"]["bad"]):
        wrong_results["ours get_many(100)"] = [json.dumps(gsum["ours"]["bad"])]

    result = {
        "benchmark": "cluster",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": {**info, "loadavg_at_end": load_end},
        "config": {
            "loop": "asyncio", "rounds": rounds, "quick": opts.quick,
            "contenders": contenders, "unavailable_contenders": unavailable,
            "glide_installed": HAVE_GLIDE,
            "cluster": "RedisCluster(): 3 primaries + 3 replicas, cluster-node-timeout 1000 ms",
            "keys": SLOTS, "keys_note": "one key per slot", "value_example": value_for(0),
            "prefix": PREFIX, "ttl": TTL, "set_share": SET_SHARE,
            "concurrency": list(CONCURRENCY), "throughput_requests": tp_ops,
            "throughput_requests_1_task": tp_ops_1, "get_many_calls": gm_calls,
            "batch": BATCH,
            "redis_py_client": "redis.asyncio.cluster.RedisCluster(max_connections=1000, "
                               "socket_timeout=5)",
            "glide_config": "GlideClusterClientConfiguration(request_timeout=5000)"
            if HAVE_GLIDE else None,
            "failover": {"tasks": FAILOVER_TASKS, "before_kill_s": FAILOVER_BEFORE_S,
                         "stable_s": FAILOVER_STABLE_S, "timeout_s": failover_timeout},
            "units": {"throughput": "requests/s (failed included)",
                      "get_many": "µs per call", "failover": "s from the kill"},
        },
        "throughput": {w: {str(conc): tput[w][conc] for conc in CONCURRENCY}
                       for w in WORKLOADS},
        "cluster_vs_single": {"concurrency": SINGLE_CONCURRENCY, **vs_single},
        "get_many": gsum,
        "failover": failovers,
        "targets": verdict,
        "all_pass": verdict.all_pass,
    }
    if wrong_results:
        result["wrong_results"] = wrong_results
    write_results(opts.output, result)
    return 1 if (opts.strict and not verdict.all_pass) else 0


if __name__ == "__main__":
    sys.exit(main())
