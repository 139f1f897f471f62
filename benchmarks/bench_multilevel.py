#!/usr/bin/env python
"""MultiLevelCache benchmark: bruno_memory_c against the reference, one Redis, one run.

    .venv/bin/python -m benchmarks.bench_multilevel [--quick] [--rounds N] [--strict]
                                                    [--loop asyncio|uvloop]

One throwaway redis-server (bruno_memory_c.testing.RedisServer) serves the whole run.
Contenders, measured side by side with the rounds interleaved (in each round every
contender runs every measurement once, in a shuffled order; tables show the median over
the rounds unless said otherwise):

- ours:      bruno_memory_c.MultiLevelCache(InMemoryCache(max_size=1000),
                                            RedisCache(port=..., prefix="bench:ml:"))
- reference: bruno_memory.utils.cache.MultiLevelCache (bruno-memory 0.1.5) over the
             reference's InMemoryCache(max_size=1000) and RedisCache(port=...,
             prefix="bench:mlref:"): redis-py's redis.asyncio with its default pool of 10
             connections. Its L2 get is GET + HINCRBY; past 10 commands in flight the pool
             raises, its get logs and returns None (counted as lost), its set raises
             CacheError (counted as a failed set).
- baseline (L1-hit only): our bare InMemoryCache(max_size=1000).get.

Every measurement runs in a fresh event loop (asyncio's default, or uvloop with --loop
uvloop) with fresh caches, started (`await m.start()`, which connects L2) and warmed up
before the clock starts, and stopped after it stops. The clock is time.perf_counter_ns.

Data: 10,000 keys "k{i}" with JSON values {"i": i, "pad": 50 chars}, written once into
Redis through each contender's own L2 (`m.l2.set_many(values, 3600)`), so L1 starts empty.
Every value read is checked after the clock stops: None for a key that exists is "lost",
an exception "error", a value of another key "wrong".

Measurements:

1. L1 hit (ns/op): the 1,000 keys of a full L1 (`l1.set_many`), read in a shuffled order
   in a tight loop inside one coroutine (`[await cache.get(k) for k in keys]`, keeping
   every result), as in bench_inmemory.py. Contenders: our InMemoryCache (baseline), our
   MultiLevelCache, the reference MultiLevelCache (fewer ops: it is slow). Afterwards
   every value returned is checked, and the L1 hit counters to have grown by exactly
   the number of gets (every get was an L1 hit); anything wrong stops the run.
2. L2 hit and miss (µs/op), sequential awaited gets, each get timed alone:
   - "L2 hit + promote": promote_on_hit=True; distinct keys, none in L1, and after every
     get the promoted key is removed again with `await m.l1.delete(k)`, outside the timed
     region, so every get starts from the same empty L1, misses it, reads Redis and
     promotes the value into L1 (ours: GET + PTTL in one pipeline; reference: GET +
     HINCRBY, then l1.set). The promotion is checked (L1 size before the delete).
   - "L2 hit, no promote": a MultiLevelCache with promote_on_hit=False (L1 stays empty).
   - "miss": keys absent from both levels.
3. Zipf workload: keys drawn from a Zipf distribution (s=0.99, the YCSB default) over the
   10,000 ranks (rank -> key mapping shuffled), 90% get / 10% set (a set writes a new small
   value through the multi-level cache: L1 and L2); the same seeded sequence for both
   contenders. L1 max_size 1,000. Before the clock: 10,000 Zipf gets (another seed), 10
   tasks at a time, warm L1 to its steady state (counters are read before and after the
   timed part, so they count the timed operations only). Timed: C tasks (C = 1, 100)
   started together with asyncio.gather, task t doing slice t of the sequence (N/C ops
   each). ops/s = operations / wall time, failed ones included ("goodput" counts only
   successful ones). Hit rates: ours from `m.stats()` deltas; the reference's from its
   L1's get_stats() hit delta and the gets that returned a value.

Writes every figure to benchmarks/results/multilevel.json (multilevel-uvloop.json with
--loop uvloop) with machine information.
"""
from __future__ import annotations

import asyncio
import datetime
import gc
import itertools
import json
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import redis  # noqa: E402
import redis.asyncio  # noqa: E402

from benchmarks._common import (  # noqa: E402
    add_bad,
    bench_options,
    fmt_int,
    fmt_ns,
    fmt_us,
    bad_total,
    dist_version,
    fmt_bad,
    percentile,
    quiet_contenders,
    redis_machine_info,
    run_on,
    write_results,
)
import bruno_memory_c  # noqa: E402
from tests.support.reference import reference_classes  # noqa: E402
from bruno_memory_c.testing import RedisServer  # noqa: E402

_REF = reference_classes()
RefMultiLevelCache = _REF["MultiLevelCache"]
RefInMemoryCache = _REF["InMemoryCache"]
RefRedisCache = _REF["RedisCache"]
OurMultiLevelCache = bruno_memory_c.MultiLevelCache
OurInMemoryCache = bruno_memory_c.InMemoryCache
OurRedisCache = bruno_memory_c.RedisCache

perf_counter_ns = time.perf_counter_ns

L1_SIZE = 1000
N_KEYS = 10_000
TTL = 3600
PREFIX = {"ours": "bench:ml:", "reference": "bench:mlref:"}
ZIPF_S = 0.99
READ_FRACTION = 0.9
CONCURRENCY = (1, 100)
WARM_TASKS = 10

ML_CONTENDERS = ["ours", "reference"]
L1_CONTENDERS = ["ours InMemoryCache", "ours MultiLevelCache", "reference MultiLevelCache"]
L2_OPS = ["L2 hit + promote", "L2 hit, no promote", "miss"]

# (full, quick)
L1_OPS = {"ours InMemoryCache": (200_000, 50_000), "ours MultiLevelCache": (200_000, 50_000),
          "reference MultiLevelCache": (40_000, 10_000)}
L2_GETS = (2_000, 400)
ZIPF_OPS = (40_000, 10_000)
ZIPF_WARM = (10_000, 5_000)
ROUNDS = (7, 3)

TARGETS = {
    "l1_hit_ml_over_imc_max": 1.2,
    "l1_hit_speedup_min": 12.0,
    "zipf_speedup_min": 10.0,
}

ERROR = object()   # result slot of an operation that raised
SET_OK = object()  # result slot of a set that returned


def value_for(i: int) -> dict:
    return {"i": i, "pad": "x" * 50}


def new_value_for(i: int, n: int) -> dict:
    """What the workload's sets write: still names key i (checked by later gets)."""
    return {"i": i, "n": n}


NAMES = [f"k{i}" for i in range(N_KEYS)]
INDEX = {n: i for i, n in enumerate(NAMES)}
VALUES = {n: value_for(i) for i, n in enumerate(NAMES)}

# ------------------------------------------------------------------ caches


async def make_ours(port: int, promote: bool = True):
    m = OurMultiLevelCache(OurInMemoryCache(max_size=L1_SIZE),
                           OurRedisCache(host="127.0.0.1", port=port, prefix=PREFIX["ours"]),
                           promote_on_hit=promote)
    await m.start()
    return m


async def make_reference(port: int, promote: bool = True):
    m = RefMultiLevelCache(RefInMemoryCache(max_size=L1_SIZE),
                           RefRedisCache(host="127.0.0.1", port=port,
                                         prefix=PREFIX["reference"]),
                           promote_on_hit=promote)
    await m.start()
    return m


MAKERS = {"ours": make_ours, "reference": make_reference}


async def stop_cache(contender: str, m) -> None:
    await m.stop()
    if contender == "reference":
        pool = getattr(m.l2._client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()


async def l1_hits(contender: str, m) -> int:
    """The L1 hit counter of a multi-level cache (ours: its own; reference: its L1's)."""
    if contender == "ours":
        return m.stats()["l1_hits"]
    return (await m.l1.get_stats())["hits"]


# ------------------------------------------------------------------ 1. L1 hit


async def a_get(cache, keys):
    """(elapsed ns, every value returned)."""
    t0 = perf_counter_ns()
    out = [await cache.get(k) for k in keys]
    return perf_counter_ns() - t0, out


def measure_l1(contender: str, port: int, keys: list[str]) -> dict:
    """ns/op of L1-hit gets; checks every get was an L1 hit of the right value."""
    l1_values = {n: VALUES[n] for n in NAMES[:L1_SIZE]}

    async def run():
        if contender == "ours InMemoryCache":
            cache = OurInMemoryCache(max_size=L1_SIZE)
            await cache.set_many(l1_values)
            before = cache.stats()["hits"]
            elapsed, out = await a_get(cache, keys)
            after = cache.stats()["hits"]
            return elapsed, after - before, out
        which = "ours" if contender.startswith("ours") else "reference"
        m = await MAKERS[which](port)
        try:
            await m.l1.set_many(l1_values)
            before = await l1_hits(which, m)
            elapsed, out = await a_get(m, keys)
            after = await l1_hits(which, m)
            return elapsed, after - before, out
        finally:
            await stop_cache(which, m)

    gc.collect()
    elapsed, hits, out = run_loop(run())
    wrong = len(keys) - len(out) + sum(1 for k, v in zip(keys, out) if v != VALUES[k])
    if hits != len(keys) or wrong:
        raise RuntimeError(f"L1-hit measurement of {contender}: {hits} L1 hits for "
                           f"{len(keys)} gets, {wrong} wrong values")
    return {"ns_per_op": elapsed / len(keys), "ops": len(keys)}


# ------------------------------------------------------------------ 2. L2 hit, miss


def measure_l2(contender: str, port: int, op: str, keys: list[str]) -> dict:
    promote = op != "L2 hit, no promote"
    delete_after = op == "L2 hit + promote"

    async def run():
        m = await MAKERS[contender](port, promote)
        try:
            get, l1_delete = m.get, m.l1.delete
            for k in NAMES[-50:]:  # warm-up: connections, code paths (not in `keys`)
                await get(k)
                await l1_delete(k)
            lat = []
            out = []
            promoted = 0
            for k in keys:
                t0 = perf_counter_ns()
                try:
                    v = await get(k)
                except Exception:
                    v = ERROR
                t1 = perf_counter_ns()
                lat.append(t1 - t0)
                out.append(v)
                if delete_after:
                    promoted += bool(await l1_delete(k))
            l1_size = len(m.l1._cache) if contender == "reference" else m.l1.stats()["size"]
            return lat, out, l1_size, promoted
        finally:
            await stop_cache(contender, m)

    gc.collect()
    lat, out, l1_size, promoted = run_loop(run())
    bad = {"lost": 0, "error": 0, "wrong": 0}
    for k, v in zip(keys, out):
        if v is ERROR:
            bad["error"] += 1
        elif op == "miss":
            if v is not None:
                bad["wrong"] += 1
        elif v is None:
            bad["lost"] += 1
        elif not isinstance(v, dict) or v.get("i") != INDEX[k]:
            bad["wrong"] += 1  # (the Zipf workload's sets rewrite values: check the key)
    # L1 is empty at the end (promoted entries deleted; no promotion otherwise), and with
    # promotion every successful L2 hit put its key in L1 (the delete found it).
    if l1_size != 0:
        raise RuntimeError(f"{op} of {contender}: L1 holds {l1_size} entries at the end")
    if delete_after and promoted != len(keys) - bad_total(bad):
        raise RuntimeError(f"{op} of {contender}: {promoted} of {len(keys)} gets promoted")
    return {"latencies_ns": lat, "bad": bad}


# ------------------------------------------------------------------ 3. Zipf workload


def zipf_sequence(n: int, seed: int, read_fraction: float) -> tuple[list, list, list]:
    """(is_get flags, key names, values to set) of n operations."""
    rng = random.Random(seed)
    rank_to_key = list(range(N_KEYS))
    random.Random(7).shuffle(rank_to_key)  # same mapping for every sequence
    cum = list(itertools.accumulate(1.0 / (r ** ZIPF_S) for r in range(1, N_KEYS + 1)))
    ranks = rng.choices(range(N_KEYS), cum_weights=cum, k=n)
    kinds = [rng.random() < read_fraction for _ in range(n)]
    keys = [NAMES[rank_to_key[r]] for r in ranks]
    values = [None if g else new_value_for(INDEX[k], j)
              for j, (g, k) in enumerate(zip(kinds, keys))]
    return kinds, keys, values


async def zipf_worker(m, kinds, keys, values, out, start, stop):
    get, set_ = m.get, m.set
    for i in range(start, stop):
        if kinds[i]:
            try:
                out[i] = await get(keys[i])
            except Exception:
                out[i] = ERROR
        else:
            try:
                await set_(keys[i], values[i])
                out[i] = SET_OK
            except Exception:
                out[i] = ERROR


async def run_tasks(m, kinds, keys, values, out, concurrency):
    total = len(kinds)
    per_task = total // concurrency
    await asyncio.gather(*(zipf_worker(m, kinds, keys, values, out, t * per_task,
                                       (t + 1) * per_task) for t in range(concurrency)))


def measure_zipf(contender: str, port: int, seq, warm, concurrency: int) -> dict:
    kinds, keys, values = seq
    total = (len(kinds) // concurrency) * concurrency
    kinds, keys, values = kinds[:total], keys[:total], values[:total]

    async def run():
        m = await MAKERS[contender](port)
        try:
            wk, wkeys, wv = warm
            await run_tasks(m, wk, wkeys, wv, [None] * len(wk), WARM_TASKS)
            if contender == "ours":
                s0 = m.stats()
            else:
                s0 = await m.l1.get_stats()
            out = [None] * total
            t0 = perf_counter_ns()
            await run_tasks(m, kinds, keys, values, out, concurrency)
            elapsed = perf_counter_ns() - t0
            if contender == "ours":
                s1 = m.stats()
            else:
                s1 = await m.l1.get_stats()
            return elapsed, out, s0, s1
        finally:
            await stop_cache(contender, m)

    gc.collect()
    elapsed, out, s0, s1 = run_loop(run())
    gets = sum(kinds)
    sets = total - gets
    found = lost = get_errors = wrong = set_errors = 0
    for g, k, v in zip(kinds, keys, out):
        if g:
            if v is ERROR:
                get_errors += 1
            elif v is None:
                lost += 1
            elif not isinstance(v, dict) or v.get("i") != INDEX[k]:
                wrong += 1
            else:
                found += 1
        elif v is not SET_OK:
            set_errors += 1
    r = {"elapsed_ns": elapsed, "ops": total, "gets": gets, "sets": sets,
         "ops_per_s": total / (elapsed / 1e9),
         "goodput_per_s": (found + sets - set_errors) / (elapsed / 1e9),
         "lost": lost, "get_errors": get_errors, "wrong": wrong, "set_errors": set_errors}
    if contender == "ours":
        d = {k: s1[k] - s0[k] for k in ("l1_hits", "l2_hits", "misses", "l2_errors",
                                          "promotions")}
        r.update(d)
        if d["l1_hits"] + d["l2_hits"] + d["misses"] != gets:
            raise RuntimeError(f"ours' counters {d} do not add up to {gets} gets")
    else:
        l1 = s1["hits"] - s0["hits"]
        r.update({"l1_hits": l1, "l2_hits": found + wrong - l1, "misses": lost + get_errors})
    r["l1_hit_rate"] = r["l1_hits"] / gets
    r["hit_rate"] = (r["l1_hits"] + r["l2_hits"]) / gets
    return r


# ------------------------------------------------------------------ report




def machine_info() -> dict:
    return {
        **redis_machine_info(),
        "uvloop": dist_version("uvloop") if LOOP == "uvloop" else None,
    }






#: Event loop the measurements run on: "asyncio" (default) or "uvloop" (--loop).
LOOP = "asyncio"


def run_loop(coro):
    """asyncio.run on the chosen event loop."""
    return run_on(LOOP, coro)


def main(argv=None) -> int:
    global LOOP
    opts = bench_options(__doc__, "multilevel", ROUNDS[0], ROUNDS[1], argv, loop=True)
    LOOP = opts.loop

    q = 1 if opts.quick else 0
    rounds = opts.rounds

    quiet_contenders()

    started = time.time()
    info = machine_info()

    rng = random.Random(1234)
    l1_order = NAMES[:L1_SIZE]
    rng.shuffle(l1_order)
    l1_ops = {c: L1_OPS[c][q] for c in L1_CONTENDERS}
    l1_keys = {c: [l1_order[i % L1_SIZE] for i in range(l1_ops[c])] for c in L1_CONTENDERS}

    n_l2 = L2_GETS[q]
    l2_order = NAMES[:-50]
    rng.shuffle(l2_order)
    l2_keys = {"L2 hit + promote": l2_order[:n_l2], "L2 hit, no promote": l2_order[:n_l2],
               "miss": [f"absent:{i}" for i in range(n_l2)]}

    n_zipf = ZIPF_OPS[q]
    zipf = zipf_sequence(n_zipf, seed=2024, read_fraction=READ_FRACTION)
    warm = zipf_sequence(ZIPF_WARM[q], seed=99, read_fraction=1.0)
    weights = [1.0 / (r ** ZIPF_S) for r in range(1, N_KEYS + 1)]
    top_mass = sum(weights[:L1_SIZE]) / sum(weights)
    distinct = len(set(zipf[1]))

    server = RedisServer().start()
    try:
        port = server.port
        info["redis_port"] = port
        print(f"# MultiLevelCache benchmark: {rounds} round(s), loop {LOOP}")
        print(f"# {info['cpu_model']}, {info['nproc']} CPUs, Python {info['python']}, "
              f"redis-server {info['redis_server']}, redis-py {info['redis_py']} "
              f"(hiredis {info['hiredis']})")

        # Data: the 10,000 keys in Redis, written by each contender through its own L2.
        async def preload(contender):
            m = await MAKERS[contender](port)
            try:
                await m.l2.set_many(VALUES, TTL)
            finally:
                await stop_cache(contender, m)

        for c in ML_CONTENDERS:
            run_loop(preload(c))
            stored = server.command("GET", PREFIX[c] + "k7")
            assert stored is not None and json.loads(stored) == VALUES["k7"], (c, stored)
            assert server.command("EXISTS", PREFIX[c] + NAMES[-1]) == 1, c

        # Warm-up, not recorded: every contender, every shape, small.
        for c in L1_CONTENDERS:
            measure_l1(c, port, l1_keys[c][:2000])
        for c in ML_CONTENDERS:
            for op in L2_OPS:
                measure_l2(c, port, op, l2_keys[op][:50])
            for conc in CONCURRENCY:
                small = tuple(x[:max(conc, 1000)] for x in zipf)
                measure_zipf(c, port, small, tuple(x[:1000] for x in warm), conc)

        l1_samples = {c: [] for c in L1_CONTENDERS}
        l2_lat = {op: {c: [] for c in ML_CONTENDERS} for op in L2_OPS}
        l2_rounds = {op: {c: [] for c in ML_CONTENDERS} for op in L2_OPS}
        l2_bad = {op: {c: {"lost": 0, "error": 0, "wrong": 0} for c in ML_CONTENDERS}
                  for op in L2_OPS}
        zr = {conc: {c: [] for c in ML_CONTENDERS} for conc in CONCURRENCY}
        shuffle_rng = random.Random(42)

        for r in range(rounds):
            t_round = time.perf_counter()
            cs = L1_CONTENDERS[:]
            shuffle_rng.shuffle(cs)
            for c in cs:
                l1_samples[c].append(measure_l1(c, port, l1_keys[c])["ns_per_op"])
            for op in L2_OPS:
                cs = ML_CONTENDERS[:]
                shuffle_rng.shuffle(cs)
                for c in cs:
                    m = measure_l2(c, port, op, l2_keys[op])
                    l2_lat[op][c].extend(m["latencies_ns"])
                    s = sorted(m["latencies_ns"])
                    l2_rounds[op][c].append({"mean_us": statistics.fmean(s) / 1e3,
                                             "p50_us": percentile(s, 50) / 1e3,
                                             "p99_us": percentile(s, 99) / 1e3,
                                             "bad": m["bad"]})
                    add_bad(l2_bad[op][c], m["bad"])
            for conc in CONCURRENCY:
                cs = ML_CONTENDERS[:]
                shuffle_rng.shuffle(cs)
                for c in cs:
                    zr[conc][c].append(measure_zipf(c, port, zipf, warm, conc))
            print(f"# round {r + 1}/{rounds}: {time.perf_counter() - t_round:.1f} s", flush=True)
    finally:
        server.close()

    # ---- summaries
    l1 = {c: {"median_ns": statistics.median(l1_samples[c]), "best_ns": min(l1_samples[c]),
              "ops": l1_ops[c], "samples_ns": l1_samples[c]} for c in L1_CONTENDERS}
    o_imc = l1["ours InMemoryCache"]["median_ns"]
    o_ml = l1["ours MultiLevelCache"]["median_ns"]
    r_ml = l1["reference MultiLevelCache"]["median_ns"]
    l1_ratios = {
        "ours_ml_over_ours_imc": o_ml / o_imc,
        "reference_ml_over_ours_ml": r_ml / o_ml,
        "best_ours_ml_over_ours_imc": (l1["ours MultiLevelCache"]["best_ns"]
                                       / l1["ours InMemoryCache"]["best_ns"]),
        "best_reference_ml_over_ours_ml": (l1["reference MultiLevelCache"]["best_ns"]
                                           / l1["ours MultiLevelCache"]["best_ns"]),
        "per_round_ours_ml_over_ours_imc": [a / b for a, b in zip(
            l1_samples["ours MultiLevelCache"], l1_samples["ours InMemoryCache"])],
    }

    l2 = {}
    for op in L2_OPS:
        l2[op] = {}
        for c in ML_CONTENDERS:
            s = sorted(l2_lat[op][c])
            l2[op][c] = {"mean_us": statistics.median(x["mean_us"] for x in l2_rounds[op][c]),
                         "p50_us": percentile(s, 50) / 1e3, "p99_us": percentile(s, 99) / 1e3,
                         "samples": len(s), "bad": l2_bad[op][c], "rounds": l2_rounds[op][c]}

    sum_keys = ("ops", "gets", "sets", "lost", "get_errors", "wrong", "set_errors",
                "l1_hits", "l2_hits", "misses")
    zs = {}
    for conc in CONCURRENCY:
        zs[conc] = {}
        for c in ML_CONTENDERS:
            ms = zr[conc][c]
            tot = {k: sum(m[k] for m in ms) for k in sum_keys}
            zs[conc][c] = {
                "ops_per_s": statistics.median(m["ops_per_s"] for m in ms),
                "goodput_per_s": statistics.median(m["goodput_per_s"] for m in ms),
                "l1_hit_rate": tot["l1_hits"] / tot["gets"],
                "hit_rate": (tot["l1_hits"] + tot["l2_hits"]) / tot["gets"],
                "totals": tot,
                "rounds": ms,
            }

    # ---- tables
    print()
    print(f"## L1 hit, ns per get (tight loop in one coroutine; median and best of "
          f"{rounds} interleaved rounds)")
    print()
    print("| contender | median ns | best ns | gets per measurement |")
    print("|---|---:|---:|---:|")
    for c in L1_CONTENDERS:
        print(f"| {c} | {fmt_ns(l1[c]['median_ns'])} | {fmt_ns(l1[c]['best_ns'])} "
              f"| {l1[c]['ops']:,} |")
    print()
    print(f"ours MultiLevelCache / ours InMemoryCache: {l1_ratios['ours_ml_over_ours_imc']:.2f}x "
          f"(best: {l1_ratios['best_ours_ml_over_ours_imc']:.2f}x; per round: "
          + ", ".join(f"{x:.2f}" for x in l1_ratios["per_round_ours_ml_over_ours_imc"]) + ")")
    print(f"reference MultiLevelCache / ours MultiLevelCache: "
          f"{l1_ratios['reference_ml_over_ours_ml']:.1f}x "
          f"(best: {l1_ratios['best_reference_ml_over_ours_ml']:.1f}x)")

    print()
    print(f"## L2 hit and miss, µs per get (sequential, each get timed alone; {n_l2:,} gets "
          f"per round; mean = median over rounds of the round's mean, p50/p99 over all "
          f"samples)")
    print()
    print("| operation | ours mean | ours p50 | ours p99 | ref mean | ref p50 | ref p99 "
          "| ref/ours (mean) | ours bad | ref bad |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for op in L2_OPS:
        o, rf = l2[op]["ours"], l2[op]["reference"]
        print(f"| {op} | {fmt_us(o['mean_us'])} | {fmt_us(o['p50_us'])} | {fmt_us(o['p99_us'])} "
              f"| {fmt_us(rf['mean_us'])} | {fmt_us(rf['p50_us'])} | {fmt_us(rf['p99_us'])} "
              f"| {rf['mean_us'] / o['mean_us']:.1f}x | {fmt_bad(o['bad'], o['samples'])} "
              f"| {fmt_bad(rf['bad'], rf['samples'])} |")
    print()
    print("L2 hit + promote: distinct keys; after each get the promoted key is deleted from L1 "
          "(`await m.l1.delete(k)`) outside the timed region; L2 hit, no promote: "
          "promote_on_hit=False.")

    print()
    print(f"## Zipf workload: s={ZIPF_S}, {N_KEYS:,} keys, {READ_FRACTION:.0%} get / "
          f"{1 - READ_FRACTION:.0%} set, L1 {L1_SIZE:,}; {n_zipf:,} ops per measurement "
          f"(median of {rounds} round(s); hit rates and counts over all rounds)")
    print()
    print("| tasks | ours ops/s | ref ops/s | ours/ref | ours goodput/s | ref goodput/s "
          "| ours L1 hit | ours hit | ref L1 hit | ref hit | ours lost+err | ref lost gets "
          "| ref failed sets |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for conc in CONCURRENCY:
        o, rf = zs[conc]["ours"], zs[conc]["reference"]
        ot, rt = o["totals"], rf["totals"]
        o_bad = ot["lost"] + ot["get_errors"] + ot["wrong"] + ot["set_errors"]
        print(f"| {conc} | {fmt_int(o['ops_per_s'])} | {fmt_int(rf['ops_per_s'])} "
              f"| {o['ops_per_s'] / rf['ops_per_s']:.1f}x | {fmt_int(o['goodput_per_s'])} "
              f"| {fmt_int(rf['goodput_per_s'])} | {o['l1_hit_rate']:.1%} | {o['hit_rate']:.1%} "
              f"| {rf['l1_hit_rate']:.1%} | {rf['hit_rate']:.1%} | {o_bad:,} / {ot['ops']:,} "
              f"| {rt['lost'] + rt['get_errors']:,} / {rt['gets']:,} "
              f"| {rt['set_errors']:,} / {rt['sets']:,} |")
    print()
    print(f"Every key exists, so a get returning None is a lost request. {distinct:,} distinct "
          f"keys in the sequence; the {L1_SIZE:,} hottest ranks carry {top_mass:.1%} of the "
          f"accesses. Warm-up: {ZIPF_WARM[q]:,} Zipf gets, {WARM_TASKS} tasks, before the clock.")
    print()

    # ---- targets
    verdicts = []

    def verdict(name, ok, text, **fig):
        verdicts.append({"target": name, "pass": bool(ok), "detail": text, **fig})
        print(f"{'PASS' if ok else 'FAIL'} {text}")

    x = l1_ratios["ours_ml_over_ours_imc"]
    lim = TARGETS["l1_hit_ml_over_imc_max"]
    verdict("l1_hit_vs_inmemory", x <= lim,
            f"L1 hit: ours MultiLevelCache {fmt_ns(o_ml)} ns = {x:.2f}x ours InMemoryCache.get "
            f"{fmt_ns(o_imc)} ns (target <= {lim:g}x)", ratio=x, limit=lim)
    x = l1_ratios["reference_ml_over_ours_ml"]
    lim = TARGETS["l1_hit_speedup_min"]
    verdict("l1_hit_vs_reference", x >= lim,
            f"L1 hit: {x:.1f}x faster than the reference MultiLevelCache ({fmt_ns(r_ml)} ns) "
            f"(target >= {lim:g}x)", ratio=x, limit=lim)
    lim = TARGETS["zipf_speedup_min"]
    for conc in CONCURRENCY:
        o, rf = zs[conc]["ours"]["ops_per_s"], zs[conc]["reference"]["ops_per_s"]
        verdict(f"zipf_throughput_{conc}", o >= lim * rf,
                f"Zipf, {conc} task(s): ours {fmt_int(o)} ops/s = {o / rf:.1f}x the reference's "
                f"{fmt_int(rf)} ops/s (target >= {lim:g}x)", ratio=o / rf, limit=lim)
    ours_bad = 0
    for conc in CONCURRENCY:
        t = zs[conc]["ours"]["totals"]
        ours_bad += t["lost"] + t["get_errors"] + t["wrong"] + t["set_errors"]
    ours_bad += sum(bad_total(l2[op]["ours"]["bad"]) for op in L2_OPS)
    verdict("ours_zero_lost", ours_bad == 0,
            f"ours: {ours_bad:,} lost/failed/wrong operations in every measurement (target 0)",
            bad=ours_bad)
    all_pass = all(v["pass"] for v in verdicts)

    result = {
        "benchmark": "multilevel",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": info,
        "config": {
            "loop": LOOP,
            "rounds": rounds,
            "quick": opts.quick,
            "l1_max_size": L1_SIZE,
            "keys": N_KEYS,
            "ttl": TTL,
            "prefix": PREFIX,
            "value_example": value_for(0),
            "set_value_example": new_value_for(0, 0),
            "l1_hit_gets": l1_ops,
            "l2_gets": n_l2,
            "l2_hit_method": "promote: distinct keys, `await m.l1.delete(k)` after each get "
                             "outside the timed region (L1 empty before every get); "
                             "no promote: promote_on_hit=False",
            "zipf_s": ZIPF_S,
            "read_fraction": READ_FRACTION,
            "zipf_ops": n_zipf,
            "zipf_distinct_keys": distinct,
            "zipf_top_l1_mass": top_mass,
            "zipf_warmup_gets": ZIPF_WARM[q],
            "zipf_warmup_tasks": WARM_TASKS,
            "concurrency": list(CONCURRENCY),
            "reference_pool": "redis.asyncio.from_url(max_connections=10) (its default)",
            "units": {"l1_hit": "ns per get", "l2": "µs per get",
                      "zipf": "operations/s (failed included); goodput: successful only"},
        },
        "targets_config": TARGETS,
        "l1_hit": l1,
        "l1_hit_ratios": l1_ratios,
        "l2": l2,
        "zipf": {str(conc): zs[conc] for conc in CONCURRENCY},
        "targets": verdicts,
        "all_pass": all_pass,
    }
    write_results(opts.output, result)
    return 1 if (opts.strict and not all_pass) else 0


if __name__ == "__main__":
    sys.exit(main())
