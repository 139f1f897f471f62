#!/usr/bin/env python
"""InMemoryCache benchmark: bruno_memory_c against the reference and reference points.

    .venv/bin/python -m benchmarks.bench_inmemory [--quick] [--rounds N] [--strict]

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

Every result is checked, for every contender, after the clock stops: each timed loop is a
list comprehension keeping what each call returned (the same shape for every contender:
`[await cache.get(k) for k in keys]`, one LIST_APPEND per operation), and each value
returned must be the one stored (get-hit, get_many: the preloaded values; get-miss: None;
set, set_many: None). Then the cache is read back: every key a set or set_many wrote holds
what was written (set_many writes values that differ from the preloaded ones), and a
cache holds exactly 1000 entries. A wrong result fails the run (exit 1), whatever
--strict says: the figures of a run that computed wrong answers mean nothing.

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

import cachetools  # noqa: E402

from benchmarks._common import base_machine_info, bench_options, fmt_ns, write_results  # noqa: E402
import bruno_memory_c  # noqa: E402
from tests.support.reference import reference_inmemory_cache  # noqa: E402

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


# Each returns (elapsed ns, what every call returned; None for the synchronous sets,
# whose subscript assignments return nothing).


async def a_get(cache, keys):
    t0 = perf_counter_ns()
    out = [await cache.get(k) for k in keys]
    return perf_counter_ns() - t0, out


async def a_set(cache, keys, value):
    t0 = perf_counter_ns()
    out = [await cache.set(k, value) for k in keys]
    return perf_counter_ns() - t0, out


async def a_get_many(cache, batches):
    t0 = perf_counter_ns()
    out = [await cache.get_many(b) for b in batches]
    return perf_counter_ns() - t0, out


async def a_set_many(cache, mappings):
    t0 = perf_counter_ns()
    out = [await cache.set_many(m) for m in mappings]
    return perf_counter_ns() - t0, out


def s_get(c, keys):
    t0 = perf_counter_ns()
    out = [c.get(k) for k in keys]
    return perf_counter_ns() - t0, out


def s_set(c, keys, value):
    t0 = perf_counter_ns()
    for k in keys:
        c[k] = value
    return perf_counter_ns() - t0, None


def s_get_many(c, batches):
    t0 = perf_counter_ns()
    out = []
    for b in batches:
        result = {}
        for k in b:
            v = c.get(k)
            if v is not None:
                result[k] = v
        out.append(result)
    return perf_counter_ns() - t0, out


def s_set_many(c, mappings):
    t0 = perf_counter_ns()
    for m in mappings:
        for k, v in m.items():
            c[k] = v
    return perf_counter_ns() - t0, None


async def f_get(f, keys):
    t0 = perf_counter_ns()
    out = [await f(k) for k in keys]
    return perf_counter_ns() - t0, out


async def f_set(f, keys, value):
    t0 = perf_counter_ns()
    out = [await f(k, value) for k in keys]
    return perf_counter_ns() - t0, out


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
        # What get_many(batches[j]) must return.
        distinct = [{k: self.values[k] for k in self.batches[j]} for j in range(SIZE // BATCH)]
        self.batch_results = [distinct[j % len(distinct)] for j in range(n_batch)]
        # set_many writes values other than the preloaded ones (so that a set_many that
        # stored nothing cannot pass the read-back check).
        self.new_values = {k: -1 - i for i, k in enumerate(self.existing)}
        self.mappings = [{k: self.new_values[k] for k in m} for m in distinct]
        self.mappings = [self.mappings[j % len(distinct)] for j in range(n_batch)]
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

    def expected_results(self, op: str, n: int) -> list:
        """What the n timed calls of `op` must each return."""
        if op == "get-hit":
            return [self.values[k] for k in self.hit_keys[:n]]
        if op == "get_many(100)":
            return self.batch_results[:n]
        return [None] * n  # get-miss; every set and set_many returns None

    def expected_stored(self, op: str, n: int) -> dict:
        """key -> value that the cache must hold after n timed calls of `op`."""
        if op == "set overwrite":
            return dict.fromkeys(self.hit_keys[:n], self.value)
        if op == "set eviction":  # the last SIZE keys written (the others were evicted)
            return dict.fromkeys(self.new_keys[max(0, n - SIZE):n], self.value)
        if op == "set_many(100)":
            return {k: v for m in self.mappings[:n] for k, v in m.items()}
        return {}


def same(a, b) -> bool:
    """Equal and of the same type (1 is not True, nor 1.0)."""
    return type(a) is type(b) and a == b


def check(w: Workload, op: str, n: int, out, stored: dict, size: int | None) -> list[str]:
    """What is wrong with one measurement's results: `out`, what each timed call returned
    (None: not available, the synchronous sets); `stored`, the values read back for
    expected_stored(); `size`, the number of entries held (None: no bound, the floor's
    dict). Empty when everything is right."""
    problems = []
    if out is not None:
        expected = w.expected_results(op, n)
        if len(out) != len(expected):
            problems.append(f"{len(out)} results for {len(expected)} calls")
        wrong = [(i, got, exp) for i, (got, exp) in enumerate(zip(out, expected))
                 if not same(got, exp)]
        if wrong:
            i, got, exp = wrong[0]
            problems.append(f"{len(wrong):,} of {n:,} calls returned a wrong result "
                            f"(call {i}: {got!r:.80} instead of {exp!r:.80})")
    bad = [k for k, v in w.expected_stored(op, n).items() if not same(stored.get(k), v)]
    if bad:
        k = bad[0]
        problems.append(f"{len(bad):,} keys written do not hold what was written "
                        f"({k!r}: {stored.get(k)!r:.80})")
    if size is not None and size != SIZE:
        problems.append(f"the cache holds {size:,} entries, not {SIZE:,}")
    return problems


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


def measure(w: Workload, op: str, contender: str,
            n: int | None = None) -> tuple[int, int, list[str]]:
    """(elapsed ns, number of operations, what was wrong with the results) for one
    measurement."""
    n = w.n_ops(op, contender) if n is None else n
    args = w.args(op, n)
    to_read = list(w.expected_stored(op, n))
    gc.collect()
    if contender in ("ours", "reference"):
        cls = OurCache if contender == "ours" else RefCache

        async def run():
            cache = cls(max_size=SIZE, default_ttl=TTL)
            await cache.set_many(w.values)
            elapsed, out = await ASYNC_LOOPS[op](cache, *args)
            # after the clock: what the cache holds
            stored = {k: await cache.get(k) for k in to_read}
            size = (await cache.get_stats())["size"]
            return elapsed, out, stored, size

        elapsed, out, stored, size = asyncio.run(run())
    elif contender.startswith("cachetools"):
        if contender == "cachetools LRU":
            c = cachetools.LRUCache(maxsize=SIZE)
        else:
            c = cachetools.TTLCache(maxsize=SIZE, ttl=TTL)
        c.update(w.values)
        elapsed, out = SYNC_LOOPS[op](c, *args)
        stored = {k: c.get(k) for k in to_read}
        size = len(c)
    elif contender == "floor":
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

        elapsed, out = asyncio.run(run())
        stored = {k: d.get(k) for k in to_read}
        size = None  # a dict: it never evicts
    else:
        raise ValueError(contender)
    return elapsed, n, check(w, op, n, out, stored, size)


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

    # What was wrong with the results, per (operation, contender): every measurement's
    # results are checked, the warm-up's included.
    wrong: dict[tuple[str, str], list[str]] = {}

    def note(op: str, c: str, problems: list[str], label: str) -> None:
        if problems:
            wrong.setdefault((op, c), []).extend(f"{label}: {p}" for p in problems)
            print(f"# WRONG RESULTS {c} {op} ({label}): {'; '.join(problems)}", flush=True)

    # Warm-up, not recorded: every code path once, at a small size.
    for op in OPERATIONS:
        for c in CONTENDERS:
            _, _, problems = measure(w, op, c, n=min(200, w.n_ops(op, c)))
            note(op, c, problems, "warm-up")

    samples: dict[str, dict[str, list[float]]] = {op: {c: [] for c in CONTENDERS}
                                                  for op in OPERATIONS}
    rng = random.Random(42)
    for r in range(rounds):
        t_round = time.perf_counter()
        for op in OPERATIONS:
            order = CONTENDERS[:]
            rng.shuffle(order)  # no contender always runs first or last
            for c in order:
                ns, n, problems = measure(w, op, c)
                note(op, c, problems, f"round {r + 1}")
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

    # Correctness: not a target that --strict may waive, a condition of the run.
    checked = {op: {c: w.n_ops(op, c) * rounds for c in CONTENDERS}
               for op in OPERATIONS}
    results_ok = not wrong
    if results_ok:
        print(f"PASS every result checked: {sum(sum(v.values()) for v in checked.values()):,} "
              "timed operations of every contender (and the warm-up's) returned the right "
              "values and left the right entries")
    else:
        for (op, c), problems in wrong.items():
            print(f"FAIL wrong results: {c}, {op}: {len(problems)} measurement(s): "
                  f"{problems[0]}")
    all_pass = all_pass and results_ok

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
        "results_checked": checked,
        "wrong_results": {f"{c} / {op}": p for (op, c), p in wrong.items()},
        "all_pass": all_pass,
    }
    write_results(opts.output, result)
    if not results_ok:
        print("bench_inmemory.py: wrong results (see FAIL above): the run failed")
        return 1
    return 1 if (opts.strict and not all_pass) else 0


if __name__ == "__main__":
    sys.exit(main())
