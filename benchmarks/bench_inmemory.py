#!/usr/bin/env python
"""InMemoryCache benchmark: bruno_memory_c against the reference and reference points.

    .venv/bin/python benchmarks/bench_inmemory.py [--quick] [--rounds N] [--strict]

Contenders, measured side by side in one run with the rounds interleaved (in each round
every contender runs every operation once, in a shuffled order; the table shows the median
over the rounds):

- ours:      bruno_memory_c.InMemoryCache, awaited in one coroutine
             (`for k in keys: await cache.get(k)`)
- reference: bruno_memory.utils.cache.InMemoryCache (bruno-memory 0.1.5), same code
- LRU / TTL: cachetools.LRUCache / cachetools.TTLCache, called synchronously
             (`c.get(k)`, `c[k] = v`; the batch operations are a loop over the 100 keys)
- floor:     awaiting a trivial coroutine function over a dict
             (`async def f(k): return d.get(k)`, `async def f(k, v): d[k] = v`)

Every async contender runs inside one `asyncio.run` (default loop) per measurement; the
clock (time.perf_counter_ns) covers only the loop of operations, not the setup. Figures
are ns per operation: per call for get_many(100) / set_many(100). Caches hold 1000 entries
(max_size=1000, default_ttl=3600, the reference's defaults); keys are str.

Writes the figures to benchmarks/results/inmemory.json with machine information.
"""
from __future__ import annotations

import asyncio
import datetime
import gc
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # for _reference (the reference loader)

import cachetools  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import base_machine_info, bench_options, fmt_ns, write_results  # noqa: E402
import bruno_memory_c  # noqa: E402
from _reference import reference_inmemory_cache  # noqa: E402

RefCache = reference_inmemory_cache()
OurCache = bruno_memory_c.InMemoryCache

perf_counter_ns = time.perf_counter_ns

SIZE = 1000  # entries held by every cache
TTL = 3600
BATCH = 100

OPERATIONS = ["get-hit", "get-miss", "set overwrite", "set eviction",
              "get_many(100)", "set_many(100)"]
BATCH_OPS = {"get_many(100)", "set_many(100)"}
CONTENDERS = ["ours", "reference", "cachetools LRU", "cachetools TTL", "floor"]

# (operation, minimum speedup over the reference, maximum ours/floor or None)
TARGETS = [
    ("get-hit", 12.0, 0.8),
    ("get-miss", 10.0, None),
    ("set overwrite", 10.0, None),
    ("set eviction", 10.0, None),
    ("get_many(100)", 20.0, None),
    ("set_many(100)", 20.0, None),
]

# ------------------------------------------------------------------ timed loops
# One function per shape, shared by the contenders of that shape, so that the loop
# overhead is the same for all of them.


async def a_get(cache, keys):
    t0 = perf_counter_ns()
    for k in keys:
        await cache.get(k)
    return perf_counter_ns() - t0


async def a_set(cache, keys, value):
    t0 = perf_counter_ns()
    for k in keys:
        await cache.set(k, value)
    return perf_counter_ns() - t0


async def a_get_many(cache, batches):
    t0 = perf_counter_ns()
    for b in batches:
        await cache.get_many(b)
    return perf_counter_ns() - t0


async def a_set_many(cache, mappings):
    t0 = perf_counter_ns()
    for m in mappings:
        await cache.set_many(m)
    return perf_counter_ns() - t0


def s_get(c, keys):
    t0 = perf_counter_ns()
    for k in keys:
        c.get(k)
    return perf_counter_ns() - t0


def s_set(c, keys, value):
    t0 = perf_counter_ns()
    for k in keys:
        c[k] = value
    return perf_counter_ns() - t0


def s_get_many(c, batches):
    t0 = perf_counter_ns()
    for b in batches:
        result = {}
        for k in b:
            v = c.get(k)
            if v is not None:
                result[k] = v
    return perf_counter_ns() - t0


def s_set_many(c, mappings):
    t0 = perf_counter_ns()
    for m in mappings:
        for k, v in m.items():
            c[k] = v
    return perf_counter_ns() - t0


async def f_get(f, keys):
    t0 = perf_counter_ns()
    for k in keys:
        await f(k)
    return perf_counter_ns() - t0


async def f_set(f, keys, value):
    t0 = perf_counter_ns()
    for k in keys:
        await f(k, value)
    return perf_counter_ns() - t0


# ------------------------------------------------------------------ workloads


class Workload:
    def __init__(self, n_single: int, n_batch: int, ref_divisor: int) -> None:
        self.n_single = n_single
        self.n_batch = n_batch
        self.ref_divisor = ref_divisor
        self.existing = [f"key:{i}" for i in range(SIZE)]
        self.values = {k: i for i, k in enumerate(self.existing)}
        rng = random.Random(1234)
        order = self.existing[:]
        rng.shuffle(order)
        self.hit_keys = [order[i % SIZE] for i in range(n_single)]
        self.miss_keys = [f"absent:{i % 5000}" for i in range(n_single)]
        self.new_keys = [f"new:{i}" for i in range(n_single)]  # each evicts one entry
        self.batches = [[order[(j * BATCH + i) % SIZE] for i in range(BATCH)]
                        for j in range(n_batch)]
        distinct = [{k: self.values[k] for k in self.batches[j]} for j in range(SIZE // BATCH)]
        self.mappings = [distinct[j % len(distinct)] for j in range(n_batch)]
        self.value = "value"

    def n_ops(self, op: str, contender: str) -> int:
        n = self.n_batch if op in BATCH_OPS else self.n_single
        return max(1, n // self.ref_divisor) if contender == "reference" else n

    def args(self, op: str, n: int):
        if op == "get-hit":
            return (self.hit_keys[:n],)
        if op == "get-miss":
            return (self.miss_keys[:n],)
        if op == "set overwrite":
            return (self.hit_keys[:n], self.value)
        if op == "set eviction":
            return (self.new_keys[:n], self.value)
        if op == "get_many(100)":
            return (self.batches[:n],)
        if op == "set_many(100)":
            return (self.mappings[:n],)
        raise ValueError(op)


ASYNC_LOOPS = {"get-hit": a_get, "get-miss": a_get, "set overwrite": a_set,
               "set eviction": a_set, "get_many(100)": a_get_many, "set_many(100)": a_set_many}
SYNC_LOOPS = {"get-hit": s_get, "get-miss": s_get, "set overwrite": s_set,
              "set eviction": s_set, "get_many(100)": s_get_many, "set_many(100)": s_set_many}


def _floor_functions(d: dict):
    async def get(k):
        return d.get(k)

    async def set_(k, v):
        d[k] = v

    async def get_many(keys):
        result = {}
        for k in keys:
            v = d.get(k)
            if v is not None:
                result[k] = v
        return result

    async def set_many(items):
        for k, v in items.items():
            d[k] = v

    return get, set_, get_many, set_many


def measure(w: Workload, op: str, contender: str, n: int | None = None) -> tuple[int, int]:
    """(elapsed ns, number of operations) for one measurement."""
    n = w.n_ops(op, contender) if n is None else n
    args = w.args(op, n)
    gc.collect()
    if contender in ("ours", "reference"):
        cls = OurCache if contender == "ours" else RefCache

        async def run():
            cache = cls(max_size=SIZE, default_ttl=TTL)
            await cache.set_many(w.values)
            return await ASYNC_LOOPS[op](cache, *args)

        return asyncio.run(run()), n
    if contender.startswith("cachetools"):
        if contender == "cachetools LRU":
            c = cachetools.LRUCache(maxsize=SIZE)
        else:
            c = cachetools.TTLCache(maxsize=SIZE, ttl=TTL)
        c.update(w.values)
        return SYNC_LOOPS[op](c, *args), n
    if contender == "floor":
        d = dict(w.values)
        get, set_, get_many, set_many = _floor_functions(d)

        async def run():
            if op in ("get-hit", "get-miss"):
                return await f_get(get, *args)
            if op in ("set overwrite", "set eviction"):
                return await f_set(set_, *args)
            if op == "get_many(100)":
                return await f_get(get_many, *args)
            return await f_get(set_many, *args)

        return asyncio.run(run()), n
    raise ValueError(contender)


# ------------------------------------------------------------------ report


def machine_info() -> dict:
    try:
        import importlib.metadata as md

        ref_version = md.version("bruno-memory")
    except Exception:
        ref_version = None
    return {
        **base_machine_info(),
        "bruno_memory_c": bruno_memory_c.__version__,
        "bruno_memory_reference": ref_version,
        "cachetools": cachetools.__version__,
    }



def main(argv=None) -> int:
    opts = bench_options(__doc__, "inmemory", 7, 3, argv)
    rounds = opts.rounds
    if opts.quick:
        w = Workload(n_single=50_000, n_batch=1_000, ref_divisor=10)
    else:
        w = Workload(n_single=200_000, n_batch=5_000, ref_divisor=5)

    started = time.time()
    info = machine_info()
    print(f"# InMemoryCache benchmark: {rounds} rounds, {w.n_single:,} single ops / "
          f"{w.n_batch:,} batch calls per measurement (reference: 1/{w.ref_divisor} of that)")
    print(f"# {info['cpu_model']}, {info['nproc']} CPUs, Python {info['python']}, "
          f"{info['platform']}")

    # Warm-up, not recorded: every code path once, at a small size.
    for op in OPERATIONS:
        for c in CONTENDERS:
            measure(w, op, c, n=min(200, w.n_ops(op, c)))

    samples: dict[str, dict[str, list[float]]] = {op: {c: [] for c in CONTENDERS}
                                                  for op in OPERATIONS}
    rng = random.Random(42)
    for r in range(rounds):
        t_round = time.perf_counter()
        for op in OPERATIONS:
            order = CONTENDERS[:]
            rng.shuffle(order)  # no contender always runs first or last
            for c in order:
                ns, n = measure(w, op, c)
                samples[op][c].append(ns / n)
        print(f"# round {r + 1}/{rounds}: {time.perf_counter() - t_round:.1f} s", flush=True)

    med = {op: {c: statistics.median(samples[op][c]) for c in CONTENDERS} for op in OPERATIONS}

    print()
    print("| operation | ours ns | reference ns | cachetools LRU ns | cachetools TTL ns "
          "| floor ns | ref/ours (speedup) | ours/floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for op in OPERATIONS:
        m = med[op]
        print(f"| {op} | {fmt_ns(m['ours'])} | {fmt_ns(m['reference'])} "
              f"| {fmt_ns(m['cachetools LRU'])} | {fmt_ns(m['cachetools TTL'])} "
              f"| {fmt_ns(m['floor'])} | {m['reference'] / m['ours']:.1f}x "
              f"| {m['ours'] / m['floor']:.2f} |")
    print()
    print("ns per operation (per call for get_many(100)/set_many(100)), median of "
          f"{rounds} interleaved rounds.")
    print()

    verdicts = []
    all_pass = True
    for op, min_speedup, max_floor in TARGETS:
        m = med[op]
        speedup = m["reference"] / m["ours"]
        floor_ratio = m["ours"] / m["floor"]
        ok = speedup >= min_speedup
        text = f"{op}: {speedup:.1f}x faster than reference (target >= {min_speedup:g}x)"
        if max_floor is not None:
            ok = ok and floor_ratio <= max_floor
            text += f", {floor_ratio:.2f}x floor (target <= {max_floor:g}x)"
        all_pass = all_pass and ok
        verdicts.append({"operation": op, "speedup": speedup, "min_speedup": min_speedup,
                         "ours_over_floor": floor_ratio, "max_ours_over_floor": max_floor,
                         "pass": ok})
        print(f"{'PASS' if ok else 'FAIL'} {text}")

    result = {
        "benchmark": "inmemory",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": info,
        "config": {
            "rounds": rounds,
            "quick": opts.quick,
            "cache_size": SIZE,
            "default_ttl": TTL,
            "batch": BATCH,
            "n_ops": {op: {c: w.n_ops(op, c) for c in CONTENDERS} for op in OPERATIONS},
            "unit": "ns per operation (per call for batch operations)",
        },
        "median_ns": med,
        "samples_ns": samples,
        "targets": verdicts,
        "all_pass": all_pass,
    }
    write_results(opts.output, result)
    return 1 if (opts.strict and not all_pass) else 0


if __name__ == "__main__":
    sys.exit(main())
