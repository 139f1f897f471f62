#!/usr/bin/env python
"""Coherent L1 benchmark: how stale a MultiLevelCache's L1 gets while another process writes.

    .venv/bin/python -m benchmarks.bench_coherent [--quick] [--rounds N] [--strict]
                                                  [--loop asyncio|uvloop]

One throwaway redis-server (bruno_memory_c.testing.RedisServer) serves the whole run, and
one writer OS process B (multiprocessing, "spawn") writes into it while this process, A,
reads through the contender. B is a plain synchronous redis-py client; it writes JSON
values {"i": key index, "v": version} with SET (no TTL), one every PACE (1 ms; when it
falls behind it writes at once, never in a burst), versions counting up from 0, and logs
each write's key, version and the time its acknowledgement arrived
(time.monotonic_ns(): CLOCK_MONOTONIC, the same clock in both processes on Linux). A
times its reads with the same clock, taken when the get is issued.

Contenders (rounds interleaved: in each round every contender runs every measurement
once, in a shuffled order; each measurement in a fresh event loop with a fresh cache,
started with `await m.start()` before the clock starts and stopped after):

- ours coherent:       bruno_memory_c.MultiLevelCache(InMemoryCache(max_size=1000),
                       RedisCache(port=..., prefix=...)) (coherent by default: the L1
                       drops a key when any other client writes it, through Redis's
                       CLIENT TRACKING BCAST; checked: `m.coherent` is True)
- ours coherent=False: the same with coherent=False (checked: `m.coherent` is False);
                       its L1 keeps a promoted value for L1's default TTL (3600 s)
- reference:           bruno-memory 0.1.5's MultiLevelCache over its InMemoryCache and
                       RedisCache (no coherence: its L1 keeps a value for 3600 s)
- redis-py CSC:        redis-py's synchronous client with client-side caching
                       (`redis.Redis(protocol=3, cache_config=CacheConfig())`), staleness
                       only, read in a plain loop. redis-py requires Redis >= 7.4 for it;
                       against an older server it is reported "not applicable: <reason>"
                       (the reason being redis-py's own error), not failed.

An L1 hit completes without suspending the task, and invalidations are processed by the
event loop: a loop that only reads L1 must yield (`await asyncio.sleep(0)`) to hear them.
The staleness loop does; the Zipf workers do not need to (every L1 miss and every set
suspends its task, so the loop turns many times per millisecond).

Measurements:

1. Staleness window: B writes one key every 1 ms; A reads it in a loop (`await m.get(k)`,
   then `await asyncio.sleep(0)`) for STALE_S seconds (quick: 1 s), recording (issue
   time, version seen). For each write i acknowledged at t_i before A's last read, its
   window is (issue time of the last read after t_i that still returned a version < i)
   - t_i, or 0 if none did. Reported: p50 / p99 / max of the windows over all rounds,
   the writes with a nonzero window, and the reads that returned a version older than
   one acknowledged more than 2 ms / 50 ms before the read was issued ("stale reads").
   Without coherence the windows span the whole run (the L1 TTL bounds them). Windows of
   ours coherent past 1 ms are listed with the longest gap between A's reads meanwhile
   (a stall of A's own loop, e.g. the garbage collector or the CPU taken, rather than a
   late invalidation).
2. Zipf read-mostly with a writer: bench_multilevel.py's workload (s=0.99, 10,000 keys,
   L1 1,000, 90% get / 10% set by A, the same seeded sequence, the same warm-up), 100
   tasks, while B writes a fixed random 100 of the keys (1%), round robin at the 1 ms
   pace. The data are written afresh before every measurement (so versions start from
   the preloaded value, version -1). A records every value it reads and its issue time;
   afterwards a read of one of B's keys is stale when it returned a version older than
   one B had acknowledged more than 2 ms / 50 ms before (A's own writes carry no
   version and are not judged). Reported: ops/s, L1 hit rate, invalidations and
   l1_flushes (m.stats() deltas), stale reads, lost/failed/wrong operations.
3. L1 hit cost: as bench_multilevel.py's measurement 1 (the 1,000 keys of a full L1
   read in a shuffled order in a tight loop in one coroutine, every value and the L1 hit
   counter checked): our bare InMemoryCache.get vs ours coherent vs ours coherent=False.

Targets (--strict exits 1 when one is missed):
- staleness window of ours coherent: p99 <= 2 ms (loopback);
- Zipf, ours coherent: 0 stale reads beyond 2 ms that a stall of A's own loop does not
  explain (A hears an invalidation only when its loop runs: a
  read issued just after a pause of the loop, the garbage collector's or the CPU taken
  by the other processes, may still see the old value; such a read is explained when
  the longest gap between A's reads since the newer version's acknowledgement leaves at
  most 2 ms of its age). Reads beyond 2 ms and 50 ms are reported in all, in both
  measurements (the staleness measurement's target is its p99);
- L1 hit: ours coherent <= 1.2x InMemoryCache.get, and <= 1.1x ours coherent=False
  ("within noise"), medians over the rounds;
- ours (both): 0 lost/failed/wrong operations, and `m.coherent` as configured.

Writes every figure to benchmarks/results/coherent.json (coherent-uvloop.json with
--loop uvloop) with machine information.
"""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime
import gc
import json
import multiprocessing
import random
import statistics
import sys
import time

import redis

from benchmarks._common import (Verdicts, bench_options, dist_version, fmt_int, fmt_ns,
                                percentile, quiet_contenders, redis_machine_info, run_on)
from benchmarks.bench_multilevel import (
    ERROR, INDEX, L1_SIZE, N_KEYS, NAMES, READ_FRACTION, SET_OK, VALUES, WARM_TASKS, ZIPF_S,
    OurInMemoryCache, OurMultiLevelCache, OurRedisCache, RefInMemoryCache,
    RefMultiLevelCache, RefRedisCache, a_get, run_tasks, stop_cache, zipf_sequence)
from bruno_memory_c.testing import RedisServer

monotonic_ns = time.monotonic_ns
perf_counter_ns = time.perf_counter_ns

COH, NOCOH, REF, CSC = "ours coherent", "ours coherent=False", "reference", "redis-py CSC"
STALE_CONTENDERS = [COH, NOCOH, REF, CSC]
ZIPF_CONTENDERS = [COH, NOCOH, REF]
IMC = "ours InMemoryCache"
L1_CONTENDERS = [IMC, COH, NOCOH]
PREFIX = {COH: "bench:coh:on:", NOCOH: "bench:coh:off:", REF: "bench:coh:ref:",
          CSC: "bench:coh:csc:"}

PACE_NS = 1_000_000
STALE_KEY = "key"
LONG_WINDOW_NS = 1_000_000  # windows past this are listed with A's longest gap in reads
BOUNDS_MS = (2, 50)      # stale reads are counted beyond each; the verdict uses 50 ms
WRITER_KEYS = 100        # B's share of the Zipf keys (1%)
ZIPF_TASKS = 100
# (full, quick)
STALE_S = (3.0, 1.0)
ZIPF_OPS = {COH: (200_000, 40_000), NOCOH: (200_000, 40_000), REF: (40_000, 10_000)}
ZIPF_WARM = (10_000, 5_000)
L1_OPS = (200_000, 50_000)
ROUNDS = (5, 2)

TARGETS = {"window_p99_ms_max": 2.0, "stale_unexplained_max": 0,
           "l1_hit_over_imc_max": 1.2, "l1_hit_over_noncoherent_max": 1.1}

LOOP = "asyncio"


# ------------------------------------------------------------------ the writer process


def writer_main(port: int, conn) -> None:
    """Process B: waits for (prefix, [(name, i)], pace_ns), writes until "stop", sends
    back its log ([item index], [version], [ack ns]); None ends it."""
    r = redis.Redis(host="127.0.0.1", port=port)
    r.ping()
    conn.send("ready")
    while (cmd := conn.recv()) is not None:
        prefix, items, pace_ns = cmd
        names = [prefix + n for n, _ in items]
        log_k, log_v, log_t = [], [], []
        version = 0
        due = monotonic_ns()
        while not conn.poll():
            now = monotonic_ns()
            if now < due:
                time.sleep((due - now) / 1e9)
                continue
            # (on time: the next slot; more than one slot late: a slot from now)
            due = due + pace_ns if now - due < pace_ns else now + pace_ns
            k = version % len(items)
            r.set(names[k], json.dumps({"i": items[k][1], "v": version}))
            log_t.append(monotonic_ns())
            log_k.append(k)
            log_v.append(version)
            version += 1
        if (msg := conn.recv()) != "stop":
            raise RuntimeError(f"writer: unexpected message {msg!r}")
        conn.send((log_k, log_v, log_t))
    r.close()


class Writer:
    """The handle on process B (always close() it)."""

    def __init__(self, port: int):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=writer_main, args=(port, child), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            raise RuntimeError("the writer process did not start")
        self.items = None

    def start(self, prefix: str, items: list[tuple[str, int]]) -> None:
        self.items = items
        self.conn.send((prefix, items, PACE_NS))

    def stop(self) -> dict:
        """{name: ([ack ns], [version])} of the writes since start(), in write order."""
        self.conn.send("stop")
        if not self.conn.poll(30):
            raise RuntimeError("the writer process did not answer")
        log_k, log_v, log_t = self.conn.recv()
        acks = {n: ([], []) for n, _ in self.items}
        for k, v, t in zip(log_k, log_v, log_t):
            ts, vs = acks[self.items[k][0]]
            ts.append(t)
            vs.append(v)
        return acks

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# ------------------------------------------------------------------ caches, data


def reset(port: int, mapping: dict) -> None:
    """Write `mapping` (full Redis keys -> values) as JSON, before a cache is made."""
    r = redis.Redis(host="127.0.0.1", port=port)
    try:
        r.mset({k: json.dumps(v) for k, v in mapping.items()})
    finally:
        r.close()


@contextlib.asynccontextmanager
async def opened(contender: str, port: int, prefix: str):
    """A started multi-level cache of `contender`, stopped on the way out."""
    if contender == REF:
        m = RefMultiLevelCache(RefInMemoryCache(max_size=L1_SIZE),
                               RefRedisCache(host="127.0.0.1", port=port, prefix=prefix))
    else:
        m = OurMultiLevelCache(OurInMemoryCache(max_size=L1_SIZE),
                               OurRedisCache(host="127.0.0.1", port=port, prefix=prefix),
                               coherent=None if contender == COH else False)
    await m.start()
    try:
        if contender != REF and m.coherent != (contender == COH):
            raise RuntimeError(f"{contender}: m.coherent is {m.coherent}")
        yield m
    finally:
        await stop_cache("reference" if contender == REF else "ours", m)


async def counters(contender: str, m) -> dict:
    if contender == REF:
        return {"l1_hits": (await m.l1.get_stats())["hits"]}
    return m.stats()


def deltas(s0: dict, s1: dict) -> dict:
    return {k: s1[k] - s0[k] for k in ("l1_hits", "invalidations", "l1_flushes") if k in s1}


def csc_unavailable(port: int) -> str | None:
    """Why redis-py's client-side cache cannot run against this server, or None."""
    try:
        from redis.cache import CacheConfig

        r = redis.Redis(host="127.0.0.1", port=port, protocol=3, cache_config=CacheConfig())
    except (ImportError, TypeError, ValueError) as e:
        return f"redis-py {redis.__version__}: {type(e).__name__}: {e}"
    try:
        r.ping()
    except redis.RedisError as e:
        return f"redis-py {redis.__version__}: {type(e).__name__}: {e}"
    finally:
        r.close()
    return None


def version_of(v) -> int | None:
    """B's version in a value read; -1 for the preloaded value (older than any of B's
    writes); None for a value A wrote itself (not judged)."""
    if "v" in v:
        return v["v"]
    return -1 if "pad" in v else None


def stale_ages(reads, acks: dict) -> list[int]:
    """For each judged read (issue ns, name, version), how long before it B had
    acknowledged a newer version of the key (ns; 0 if it had not)."""
    ages = []
    for t, name, v in reads:
        ts, vs = acks[name]
        j = bisect.bisect_right(vs, v)  # the first write newer than what was read
        ages.append(t - ts[j] if j < len(ts) and ts[j] < t else 0)
    return ages


def stale_counts(ages: list[int], issued: list[int], all_issued: list[int] | None) -> dict:
    """Reads older than a version acknowledged more than each bound before them, and
    ("unexplained") those beyond the first bound that a stall of A's loop does not
    explain: A hears an invalidation only when its loop runs, so a read issued right
    after a pause of the loop (the garbage collector, the CPU taken) may still see the
    old value; a stale read is explained when the longest gap between A's reads
    (all_issued, sorted) since the newer version's acknowledgement leaves at most the
    first bound of its age. (all_issued None: not asked — a contender without
    coherence, whose stale reads span the run.)"""
    bound = BOUNDS_MS[0] * 1_000_000
    unexplained = 0
    for a, t in zip(ages, issued):
        if a > bound and all_issued is not None:
            lo = max(bisect.bisect_left(all_issued, t - a) - 1, 0)
            hi = bisect.bisect_right(all_issued, t)
            gap = max((all_issued[k + 1] - all_issued[k] for k in range(lo, hi - 1)),
                      default=0)
            unexplained += a - gap > bound
    return {**{f"beyond_{b}ms": sum(1 for a in ages if a > b * 1_000_000)
               for b in BOUNDS_MS}, "unexplained": unexplained}


# ------------------------------------------------------------------ 1. staleness window


async def read_loop(m, key: str, writer: Writer, prefix: str, duration_s: float):
    get, sleep = m.get, asyncio.sleep
    await get(key)  # promoted into L1 before B starts
    ts, vs = [], []
    writer.start(prefix, [(key, -1)])
    try:
        end = monotonic_ns() + int(duration_s * 1e9)
        while (t := monotonic_ns()) < end:
            vs.append(await get(key))
            ts.append(t)
            await sleep(0)
    finally:
        acks = writer.stop()
    return ts, vs, acks


def csc_read_loop(port: int, key: str, writer: Writer, prefix: str, duration_s: float):
    from redis.cache import CacheConfig

    r = redis.Redis(host="127.0.0.1", port=port, protocol=3, cache_config=CacheConfig())
    try:
        r.get(prefix + key)
        ts, vs = [], []
        writer.start(prefix, [(key, -1)])
        try:
            end = monotonic_ns() + int(duration_s * 1e9)
            while (t := monotonic_ns()) < end:
                raw = r.get(prefix + key)
                vs.append(None if raw is None else json.loads(raw))
                ts.append(t)
        finally:
            acks = writer.stop()
    finally:
        r.close()
    return ts, vs, acks


def measure_staleness(contender: str, port: int, writer: Writer, duration_s: float) -> dict:
    prefix = PREFIX[contender] + "st:"
    reset(port, {prefix + STALE_KEY: {"i": -1, "v": -1}})

    async def run():
        async with opened(contender, port, prefix) as m:
            s0 = await counters(contender, m)
            ts, vs, acks = await read_loop(m, STALE_KEY, writer, prefix, duration_s)
            return ts, vs, acks, deltas(s0, await counters(contender, m))

    gc.collect()
    if contender == CSC:
        ts, vs, acks = csc_read_loop(port, STALE_KEY, writer, prefix, duration_s)
        stats = {}
    else:
        ts, vs, acks, stats = run_on(LOOP, run())
    bad = sum(1 for v in vs if not isinstance(v, dict) or "v" not in v)
    if bad:
        raise RuntimeError(f"staleness, {contender}: {bad} of {len(vs)} reads returned "
                           "no version")
    versions = [v["v"] for v in vs]
    ack_ts, ack_vs = acks[STALE_KEY]
    if ack_vs != list(range(len(ack_vs))):
        raise RuntimeError("staleness: the writer's versions are not 0, 1, 2, ...")
    # Write i's window ends at the last read returning a version < i: the last index of
    # every version seen, then a running maximum over the versions below i.
    last_index = {}
    for j, v in enumerate(versions):
        last_index[v] = j
    judged = bisect.bisect_left(ack_ts, ts[-1])  # writes acknowledged before the last read
    windows, long_windows = [], []
    last_older = last_index.get(-1, -1)
    for i in range(judged):
        last_older = max(last_older, last_index.get(i - 1, -1))
        first_after = bisect.bisect_right(ts, ack_ts[i])
        windows.append(ts[last_older] - ack_ts[i] if last_older >= first_after else 0)
        if contender in (COH, CSC) and windows[-1] > LONG_WINDOW_NS:
            # was A's loop stalled meanwhile (its longest gap between reads)?
            gap = max(ts[j + 1] - ts[j] for j in range(max(first_after - 1, 0), last_older))
            long_windows.append({"write": i, "window_ms": windows[-1] / 1e6,
                                 "longest_read_gap_ms": gap / 1e6})
    ages = stale_ages(zip(ts, [STALE_KEY] * len(ts), versions), acks)
    return {"windows_ns": windows, "long_windows": long_windows, "reads": len(ts),
            "writes": len(ack_ts),
            "longest_read_gap_ms": max(b - a for a, b in zip(ts, ts[1:])) / 1e6,
            "stale": stale_counts(ages, ts, ts if contender == COH else None),
            "max_stale_age_ns": max(ages, default=0),
            **stats}


# ------------------------------------------------------------------ 2. Zipf with a writer


async def timed_worker(m, kinds, keys, values, out, times, start, stop):
    get, set_ = m.get, m.set
    for i in range(start, stop):
        times[i] = monotonic_ns()
        try:
            if kinds[i]:
                out[i] = await get(keys[i])
            else:
                await set_(keys[i], values[i])
                out[i] = SET_OK
        except Exception:
            out[i] = ERROR


def measure_zipf(contender: str, port: int, writer: Writer, seq, warm, writer_items) -> dict:
    kinds, keys, values = seq
    n = len(kinds)
    prefix = PREFIX[contender] + "zipf:"
    reset(port, {prefix + k: v for k, v in VALUES.items()})

    async def run():
        async with opened(contender, port, prefix) as m:
            await run_tasks(m, *warm, [None] * len(warm[0]), WARM_TASKS)
            s0 = await counters(contender, m)
            out, times = [None] * n, [0] * n
            per = n // ZIPF_TASKS
            writer.start(prefix, writer_items)
            try:
                t0 = perf_counter_ns()
                await asyncio.gather(*(timed_worker(m, kinds, keys, values, out, times,
                                                    t * per, (t + 1) * per)
                                       for t in range(ZIPF_TASKS)))
                elapsed = perf_counter_ns() - t0
            finally:
                acks = writer.stop()
            return elapsed, out, times, acks, deltas(s0, await counters(contender, m))

    gc.collect()
    elapsed, out, times, acks, stats = run_on(LOOP, run())
    bad = {"lost": 0, "error": 0, "wrong": 0}
    judged = []
    for g, k, v, t in zip(kinds, keys, out, times):
        if v is ERROR:
            bad["error"] += 1
        elif not g:
            continue
        elif v is None:
            bad["lost"] += 1
        elif not isinstance(v, dict) or v.get("i") != INDEX[k]:
            bad["wrong"] += 1
        elif k in acks and (ver := version_of(v)) is not None:
            judged.append((t, k, ver))
    ages = stale_ages(judged, acks)
    gets = sum(kinds)
    stale = stale_counts(ages, [t for t, _, _ in judged],
                         sorted(times) if contender == COH else None)
    return {"ops": n, "gets": gets, "ops_per_s": n / (elapsed / 1e9), "bad": bad,
            "writes": sum(len(a[0]) for a in acks.values()), "judged_reads": len(judged),
            "stale": stale, "max_stale_age_ns": max(ages, default=0),
            "l1_hit_rate": stats["l1_hits"] / gets, **stats}


# ------------------------------------------------------------------ 3. L1 hit cost


def measure_l1(contender: str, port: int, keys: list[str]) -> float:
    """ns per L1-hit get; every value and the L1 hit counter checked."""
    l1_values = {k: VALUES[k] for k in NAMES[:L1_SIZE]}

    async def run():
        if contender == IMC:
            cache = OurInMemoryCache(max_size=L1_SIZE)
            await cache.set_many(l1_values)
            h0 = cache.stats()["hits"]
            elapsed, out = await a_get(cache, keys)
            return elapsed, out, cache.stats()["hits"] - h0
        async with opened(contender, port, PREFIX[contender] + "l1:") as m:
            await m.l1.set_many(l1_values)
            h0 = m.stats()["l1_hits"]
            elapsed, out = await a_get(m, keys)
            return elapsed, out, m.stats()["l1_hits"] - h0

    gc.collect()
    elapsed, out, hits = run_on(LOOP, run())
    wrong = sum(1 for k, v in zip(keys, out) if v != VALUES[k])
    if hits != len(keys) or wrong:
        raise RuntimeError(f"L1 hit, {contender}: {hits} L1 hits for {len(keys)} gets, "
                           f"{wrong} wrong values")
    return elapsed / len(keys)


# ------------------------------------------------------------------ report


def unexplained(contender: str, summary: dict) -> str:
    return f"{summary['stale']['unexplained']:,}" if contender == COH else "-"


def summarize_staleness(rs: list[dict]) -> dict:
    w = sorted(x for r in rs for x in r["windows_ns"])
    return {"p50_ms": percentile(w, 50) / 1e6, "p99_ms": percentile(w, 99) / 1e6,
            "max_ms": (w[-1] if w else 0) / 1e6, "writes_judged": len(w),
            "nonzero_windows": sum(1 for x in w if x), "reads": sum(r["reads"] for r in rs),
            "stale": {k: sum(r["stale"][k] for r in rs) for k in rs[0]["stale"]},
            "max_stale_age_ms": max(r["max_stale_age_ns"] for r in rs) / 1e6,
            "longest_read_gap_ms": max(r["longest_read_gap_ms"] for r in rs),
            "long_windows": [w for r in rs for w in r["long_windows"]],
            "invalidations": sum(r.get("invalidations", 0) for r in rs),
            "rounds": [round_summary(r) for r in rs]}


def round_summary(r: dict) -> dict:
    """A staleness round as written to the results: its windows' distribution, not
    every window (thousands per round)."""
    w = sorted(r["windows_ns"])
    return {**{k: v for k, v in r.items() if k != "windows_ns"},
            "windows": {"count": len(w), "nonzero": sum(1 for x in w if x),
                        "p50_ms": percentile(w, 50) / 1e6, "p99_ms": percentile(w, 99) / 1e6,
                        "max_ms": (w[-1] if w else 0) / 1e6}}


def summarize_zipf(rs: list[dict]) -> dict:
    tot = lambda k: sum(r[k] for r in rs)  # noqa: E731
    return {"ops_per_s": statistics.median(r["ops_per_s"] for r in rs),
            "l1_hit_rate": tot("l1_hits") / tot("gets"), "ops": tot("ops"),
            "writes": tot("writes"), "judged_reads": tot("judged_reads"),
            "stale": {k: sum(r["stale"][k] for r in rs) for k in rs[0]["stale"]},
            "max_stale_age_ms": max(r["max_stale_age_ns"] for r in rs) / 1e6,
            "bad": {k: sum(r["bad"][k] for r in rs) for k in rs[0]["bad"]},
            "invalidations": sum(r.get("invalidations", 0) for r in rs),
            "l1_flushes": sum(r.get("l1_flushes", 0) for r in rs), "rounds": rs}


def main(argv=None) -> int:
    global LOOP
    opts = bench_options(__doc__, "coherent", ROUNDS[0], ROUNDS[1], argv, loop=True)
    LOOP = opts.loop
    q = 1 if opts.quick else 0
    rounds = opts.rounds
    quiet_contenders()

    started = time.time()
    info = {**redis_machine_info(), "uvloop": dist_version("uvloop") if LOOP == "uvloop"
            else None}
    stale_s = STALE_S[q]
    rng = random.Random(1234)
    l1_order = NAMES[:L1_SIZE]
    rng.shuffle(l1_order)
    l1_keys = [l1_order[i % L1_SIZE] for i in range(L1_OPS[q])]
    zipf_full = zipf_sequence(max(v[q] for v in ZIPF_OPS.values()), seed=2024,
                              read_fraction=READ_FRACTION)
    zipf = {c: tuple(x[:ZIPF_OPS[c][q]] for x in zipf_full) for c in ZIPF_CONTENDERS}
    warm = zipf_sequence(ZIPF_WARM[q], seed=99, read_fraction=1.0)
    writer_items = [(k, INDEX[k]) for k in random.Random(5).sample(NAMES, WRITER_KEYS)]

    stale = {c: [] for c in STALE_CONTENDERS}
    zr = {c: [] for c in ZIPF_CONTENDERS}
    l1 = {c: [] for c in L1_CONTENDERS}
    server = RedisServer().start()
    writer = None
    try:
        port = server.port
        info["redis_port"] = port
        print(f"# Coherent L1 benchmark: {rounds} round(s), loop {LOOP}")
        print(f"# {info['cpu_model']}, {info['nproc']} CPUs, Python {info['python']}, "
              f"redis-server {info['redis_server']}, redis-py {info['redis_py']}")
        csc_reason = csc_unavailable(port)
        stale_contenders = [c for c in STALE_CONTENDERS if c != CSC or csc_reason is None]
        if csc_reason:
            print(f"# {CSC}: not applicable: {csc_reason}")
        writer = Writer(port)
        # Warm-up, not recorded: every contender, every shape, small.
        for c in stale_contenders:
            measure_staleness(c, port, writer, 0.1)
        for c in ZIPF_CONTENDERS:
            measure_zipf(c, port, writer, tuple(x[:1000] for x in zipf[c]),
                         tuple(x[:1000] for x in warm), writer_items)
        for c in L1_CONTENDERS:
            measure_l1(c, port, l1_keys[:2000])

        shuffle_rng = random.Random(42)
        for r in range(rounds):
            t_round = time.perf_counter()
            for c in shuffle_rng.sample(stale_contenders, len(stale_contenders)):
                stale[c].append(measure_staleness(c, port, writer, stale_s))
            for c in shuffle_rng.sample(ZIPF_CONTENDERS, len(ZIPF_CONTENDERS)):
                zr[c].append(measure_zipf(c, port, writer, zipf[c], warm, writer_items))
            for c in shuffle_rng.sample(L1_CONTENDERS, len(L1_CONTENDERS)):
                l1[c].append(measure_l1(c, port, l1_keys))
            print(f"# round {r + 1}/{rounds}: {time.perf_counter() - t_round:.1f} s",
                  flush=True)
    finally:
        try:
            if writer is not None:
                writer.close()
        finally:
            server.close()

    # ---- summaries
    st = {c: summarize_staleness(stale[c]) for c in stale_contenders}
    zs = {c: summarize_zipf(zr[c]) for c in ZIPF_CONTENDERS}
    l1s = {c: {"median_ns": statistics.median(l1[c]), "best_ns": min(l1[c]),
               "samples_ns": l1[c]} for c in L1_CONTENDERS}
    coh_over_imc = l1s[COH]["median_ns"] / l1s[IMC]["median_ns"]
    coh_over_nocoh = l1s[COH]["median_ns"] / l1s[NOCOH]["median_ns"]

    # ---- tables
    print()
    print(f"## Staleness window: B writes one key every {PACE_NS / 1e6:g} ms, A reads it "
          f"in a loop (get, then sleep(0)) for {stale_s:g} s per round; windows over all "
          f"{rounds} round(s), ms")
    print()
    print("| contender | writes | nonzero windows | p50 | p99 | max | reads "
          "| stale > 2 ms | of which a loop stall does not explain | stale > 50 ms "
          "| invalidations |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in STALE_CONTENDERS:
        if c not in st:
            print(f"| {c} | not applicable: {csc_reason} |||||||||")
            continue
        s = st[c]
        inv = fmt_int(s["invalidations"]) if c in (COH, NOCOH) else "-"
        print(f"| {c} | {s['writes_judged']:,} | {s['nonzero_windows']:,} "
              f"| {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['max_ms']:.3f} | {s['reads']:,} "
              f"| {s['stale']['beyond_2ms']:,} | {unexplained(c, s)} "
              f"| {s['stale']['beyond_50ms']:,} | {inv} |")
    for c in (COH, CSC):
        if c in st:
            lw = st[c]["long_windows"]
            print(f"\n{c}: {len(lw)} window(s) > {LONG_WINDOW_NS / 1e6:g} ms"
                  + (": window / A's longest gap between reads meanwhile, ms: " + ", ".join(
                      f"{w['window_ms']:.2f}/{w['longest_read_gap_ms']:.2f}" for w in lw[:10])
                     + (", ..." if len(lw) > 10 else "") if lw else "")
                  + f"; longest gap between reads in the run: "
                  f"{st[c]['longest_read_gap_ms']:.2f} ms")
    print()
    print("window of write i: issue time of the last read after its acknowledgement that "
          "still returned a version < i, minus the acknowledgement (0 if none); without "
          "coherence the L1 keeps the first value read for its TTL, so the windows span "
          "the run. Stale > X: reads returning a version older than one acknowledged more "
          "than X before the read was issued.")

    print()
    print(f"## Zipf read-mostly with a writer: s={ZIPF_S}, {N_KEYS:,} keys, L1 {L1_SIZE:,}, "
          f"{READ_FRACTION:.0%} get / {1 - READ_FRACTION:.0%} set by A, {ZIPF_TASKS} tasks; "
          f"B writes {WRITER_KEYS} keys round robin every {PACE_NS / 1e6:g} ms "
          f"(median ops/s of {rounds} round(s); counts over all rounds)")
    print()
    print("| contender | ops/s | vs coherent=False | L1 hit | writes by B | reads judged "
          "| stale > 2 ms | of which a loop stall does not explain | stale > 50 ms "
          "| max stale age ms | invalidations | l1_flushes | lost/err/wrong |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in ZIPF_CONTENDERS:
        z = zs[c]
        ours = c != REF
        print(f"| {c} | {fmt_int(z['ops_per_s'])} "
              f"| {z['ops_per_s'] / zs[NOCOH]['ops_per_s']:.2f}x | {z['l1_hit_rate']:.1%} "
              f"| {z['writes']:,} | {z['judged_reads']:,} | {z['stale']['beyond_2ms']:,} "
              f"| {unexplained(c, z)} "
              f"| {z['stale']['beyond_50ms']:,} | {z['max_stale_age_ms']:.1f} "
              f"| {fmt_int(z['invalidations']) if ours else '-'} "
              f"| {fmt_int(z['l1_flushes']) if ours else '-'} "
              f"| {'/'.join(str(v) for v in z['bad'].values())} / {z['ops']:,} |")

    print()
    print(f"## L1 hit, ns per get (tight loop in one coroutine, {L1_OPS[q]:,} gets; median "
          f"and best of {rounds} interleaved rounds)")
    print()
    print("| contender | median ns | best ns | / InMemoryCache.get |")
    print("|---|---:|---:|---:|")
    for c in L1_CONTENDERS:
        print(f"| {c} | {fmt_ns(l1s[c]['median_ns'])} | {fmt_ns(l1s[c]['best_ns'])} "
              f"| {l1s[c]['median_ns'] / l1s[IMC]['median_ns']:.2f}x |")
    print()

    # ---- targets
    verdict = Verdicts()
    p99, lim = st[COH]["p99_ms"], TARGETS["window_p99_ms_max"]
    verdict("staleness_window_p99", p99 <= lim,
            f"staleness window, ours coherent: p99 {p99:.3f} ms (p50 {st[COH]['p50_ms']:.3f}, "
            f"max {st[COH]['max_ms']:.3f}) (target <= {lim:g} ms)", p99_ms=p99, limit=lim)
    stale = zs[COH]["stale"]
    n = stale["unexplained"]
    verdict("zipf_stale_unexplained", n <= TARGETS["stale_unexplained_max"],
            f"zipf, ours coherent: {n:,} reads older than a version acknowledged more than "
            f"2 ms before that no stall of A's loop explains (target 0; "
            f"{stale['beyond_2ms']:,} beyond 2 ms, {stale['beyond_50ms']:,} beyond 50 ms in "
            f"all)", stale=n, beyond_2ms=stale["beyond_2ms"],
            beyond_50ms=stale["beyond_50ms"])
    lim = TARGETS["l1_hit_over_imc_max"]
    verdict("l1_hit_vs_inmemory", coh_over_imc <= lim,
            f"L1 hit: ours coherent {fmt_ns(l1s[COH]['median_ns'])} ns = {coh_over_imc:.2f}x "
            f"InMemoryCache.get {fmt_ns(l1s[IMC]['median_ns'])} ns (target <= {lim:g}x)",
            ratio=coh_over_imc, limit=lim)
    lim = TARGETS["l1_hit_over_noncoherent_max"]
    verdict("l1_hit_vs_noncoherent", coh_over_nocoh <= lim,
            f"L1 hit: ours coherent = {coh_over_nocoh:.2f}x ours coherent=False "
            f"{fmt_ns(l1s[NOCOH]['median_ns'])} ns (target <= {lim:g}x)",
            ratio=coh_over_nocoh, limit=lim)
    wrong_results = {c: [json.dumps(zs[c]["bad"])] for c in (COH, NOCOH)
                     if sum(zs[c]["bad"].values())}
    bad = sum(sum(zs[c]["bad"].values()) for c in (COH, NOCOH))
    verdict("ours_zero_bad", bad == 0,
            f"Zipf, ours (both): {bad:,} lost/failed/wrong operations (target 0)", bad=bad)

    result = {
        "benchmark": "coherent",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": info,
        "config": {
            "loop": LOOP, "rounds": rounds, "quick": opts.quick, "l1_max_size": L1_SIZE,
            "prefix": PREFIX, "writer_pace_ms": PACE_NS / 1e6, "staleness_s": stale_s,
            "zipf_s": ZIPF_S, "keys": N_KEYS, "read_fraction": READ_FRACTION,
            "zipf_ops": {c: ZIPF_OPS[c][q] for c in ZIPF_CONTENDERS},
            "zipf_tasks": ZIPF_TASKS, "zipf_warmup_gets": ZIPF_WARM[q],
            "writer_keys": [k for k, _ in writer_items], "l1_hit_gets": L1_OPS[q],
            "stale_bounds_ms": list(BOUNDS_MS),
            "clock": "time.monotonic_ns in both processes; reads timed when issued",
        },
        "redis_py_csc": {"applicable": csc_reason is None, "reason": csc_reason},
        "targets_config": TARGETS,
        "staleness": st,
        "zipf": zs,
        "l1_hit": l1s,
        "l1_hit_ratios": {"coherent_over_inmemory": coh_over_imc,
                          "coherent_over_noncoherent": coh_over_nocoh},
        "wrong_results": wrong_results,
    }
    return verdict.finish(opts, result, [], "bench_coherent")


if __name__ == "__main__":
    sys.exit(main())
