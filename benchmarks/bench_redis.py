#!/usr/bin/env python
"""RedisCache benchmark: bruno_memory_c against the reference and raw clients, one Redis.

    .venv/bin/python -m benchmarks.bench_redis [--quick] [--rounds N] [--strict]
    .venv/bin/python -m benchmarks.bench_redis --tls [--quick] [--rounds N] [--strict]

One throwaway redis-server (bruno_memory_c.testing.RedisServer) serves the whole run.
Contenders, measured side by side with the rounds interleaved (in each round every
contender runs every measurement once, in a shuffled order; tables show the median over
the rounds):

- ours:      bruno_memory_c.RedisCache(host="127.0.0.1", port=..., prefix="bench:")
- reference: bruno_memory.utils.cache.RedisCache (bruno-memory 0.1.5), same arguments,
             its default pool of 10 connections (its get is GET + HINCRBY; past 10
             requests in flight its pool raises and get returns None: counted as lost)
- redis-py:  raw redis.asyncio.Redis on a BlockingConnectionPool(max_connections=50)
             (hiredis parser), `json.loads(await r.get("bench:k..."))`
- glide:     valkey-glide's async GlideClient (request_timeout 5 s, like ours'
             socket_timeout; default inflight limit 1000), `json.loads(await c.get(...))`.
             When valkey-glide is not installed (requirements-bench.txt installs it) the
             others are still measured, but the run fails (exit 1, --strict or not): a
             missing contender is not a target met
- ceiling:   `redis-benchmark -P 16 -c 50 -t get -q` against the same server (a C client
             pipelining 16 deep on 50 connections: what the server gives at most); missing
             (no redis-benchmark), it fails the run as a missing contender does

Data: 1000 keys "k{i}" (Redis keys "bench:k{i}"), distinct JSON values, written once by
ours before the measurements; every contender reads those same Redis keys and every result
is checked against the expected value after the clock stops: a None is "lost", an
exception "error", another value "wrong" (the tables show their sum as "bad").

Measurements (each in a fresh `asyncio.run`, default loop; a client is created, connected
and warmed up before the clock starts, and closed after it stops):

- sequential: 2,000 awaited gets one after another; p50/p99 latency (µs) over the samples
  of all rounds.
- throughput: C tasks (C = 1, 10, 100, 1000), each doing its share of the gets, started
  together with asyncio.gather; ops/s = requests / wall time (failed requests included).
- batch: get_many(100) / set_many(100, ttl=3600) per call (µs/call); raw clients use MGET
  (+ json.loads per value) and a non-transactional pipeline of 100 `SET ... EX 3600`
  (glide: a non-atomic Batch). set_many writes keys "bench:s{i}"; afterwards every written
  key is read back (value and a TTL in (0, 3600]) to count lost or wrong writes.

Writes every figure to benchmarks/results/redis.json with machine information.

--tls: RedisCache over TLS instead (results/redis-tls.json). One redis-server serves both
TLS (--tls-port; a CA and an EC P-256 server certificate made by
bruno_memory_c.testing.make_tls_files) and plaintext (--port). Contenders:

- ours-tls:     RedisCache(..., ssl=True, ssl_ca_certs=<the CA>) on the TLS port
- redis-py-tls: raw redis.asyncio on a BlockingConnectionPool(max_connections=50) of
                SSLConnection(ssl_ca_certs=<the CA>) (what Redis(ssl=True) uses), hiredis
- ours:         plaintext RedisCache on the same server's plain port (the reference row)

Both clients verify the server's certificate and host name (127.0.0.1). The same keys and
checks as above; measurements: sequential (p50/p99) and throughput with 100 tasks
(ours 100,000 requests per measurement, redis-py 20,000; --quick 20,000 and 10,000),
rounds interleaved and shuffled as above. Targets (--strict exits 1 on a miss): at 100
tasks ours-tls >= 10x redis-py-tls and >= 0.7x ours in plaintext in the same run; a
sequential p50 no worse than redis-py-tls's; no bad result from any contender; every
contender present. The load average at the start and end is recorded.
"""
from __future__ import annotations

import asyncio
import datetime
import gc
import importlib.util
import json
import os
import random
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import redis  # noqa: E402
import redis.asyncio  # noqa: E402

from benchmarks._common import (  # noqa: E402
    Verdicts,
    summed_bad,
    throughput_summary,
    warm_up,
    add_bad,
    bench_options,
    fmt_int,
    fmt_us,
    bad_total,
    dist_version,
    fmt_bad,
    percentile,
    quiet_contenders,
    redis_machine_info,
    run_on,
    tool_version,
)
import bruno_memory_c  # noqa: E402
from tests.support.reference import reference_classes  # noqa: E402
from bruno_memory_c.testing import RedisServer  # noqa: E402

RefRedisCache = reference_classes()["RedisCache"]
OurRedisCache = bruno_memory_c.RedisCache

HAVE_GLIDE = importlib.util.find_spec("glide") is not None
if HAVE_GLIDE:
    from glide import (  # noqa: E402
        Batch,
        ExpirySet,
        ExpiryType,
        GlideClient,
        GlideClientConfiguration,
        Logger as GlideLogger,
        LogLevel as GlideLogLevel,
        NodeAddress,
    )

perf_counter_ns = time.perf_counter_ns

PREFIX = "bench:"
N_KEYS = 1000
BATCH = 100
TTL = 3600
CONCURRENCY = (1, 10, 100, 1000)
SEQ_OPS = 2000

ALL_CONTENDERS = ["ours", "reference", "redis-py", "glide"]

# Requests per throughput measurement (the slow reference gets fewer) and calls per batch
# measurement, (full, quick).
THROUGHPUT_OPS = {"ours": (20_000, 10_000), "redis-py": (20_000, 10_000),
                  "glide": (20_000, 10_000), "reference": (4_000, 2_000)}
BATCH_CALLS = {
    "get_many(100)": {"ours": (1000, 400), "redis-py": (1000, 400), "glide": (500, 200),
                      "reference": (20, 10)},
    "set_many(100)": {"ours": (500, 200), "redis-py": (500, 200), "glide": (300, 100),
                      "reference": (100, 40)},
}
BATCH_OPS = list(BATCH_CALLS)
CEILING_REQUESTS = (200_000, 100_000)

ERROR = object()  # result slot of a request that raised


def value_for(i: int) -> dict:
    return {"i": i, "pad": "x" * 50}


NAMES = [f"k{i}" for i in range(N_KEYS)]
EXPECTED = {f"k{i}": value_for(i) for i in range(N_KEYS)}
SET_NAMES = [f"s{i}" for i in range(N_KEYS)]
SET_VALUES = {f"s{i}": {"i": i, "pad": "y" * 50} for i in range(N_KEYS)}


# ------------------------------------------------------------------ clients
# Every contender is used through the same small interface, created inside the loop that
# uses it: get(name), get_many(names), set_many(mapping), close(). `name` is the
# cache-level key ("k12"); the raw clients add the prefix themselves.


class Client:
    get = get_many = set_many = None

    async def close(self) -> None:
        raise NotImplementedError


class OursClient(Client):
    @classmethod
    async def create(cls, port: int, **tls) -> "OursClient":
        self = cls()
        self.cache = OurRedisCache(host="127.0.0.1", port=port, prefix=PREFIX, **tls)
        await self.cache.connect()
        self.get = self.cache.get
        self.get_many = self.cache.get_many

        cache = self.cache

        def set_many(mapping):
            return cache.set_many(mapping, TTL)

        self.set_many = set_many
        return self

    async def close(self) -> None:
        await self.cache.disconnect()


class ReferenceClient(Client):
    @classmethod
    async def create(cls, port: int) -> "ReferenceClient":
        self = cls()
        self.cache = RefRedisCache(host="127.0.0.1", port=port, prefix=PREFIX)
        await self.cache.connect()
        self.get = self.cache.get
        self.get_many = self.cache.get_many

        cache = self.cache

        def set_many(mapping):
            return cache.set_many(mapping, TTL)

        self.set_many = set_many
        return self

    async def close(self) -> None:
        await self.cache.disconnect()
        pool = getattr(self.cache._client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()


class RedisPyClient(Client):
    @classmethod
    async def create(cls, port: int, **tls) -> "RedisPyClient":
        self = cls()
        if tls.pop("ssl", False):  # (what Redis(ssl=True) does: TLS connections)
            tls["connection_class"] = redis.asyncio.SSLConnection
        self.pool = redis.asyncio.BlockingConnectionPool(host="127.0.0.1", port=port,
                                                         max_connections=50, **tls)
        r = self.r = redis.asyncio.Redis(connection_pool=self.pool)
        await r.ping()
        loads = json.loads
        r_get, r_mget = r.get, r.mget
        prefix = PREFIX

        async def get(name):
            v = await r_get(prefix + name)
            return None if v is None else loads(v)

        async def get_many(names):
            values = await r_mget([prefix + n for n in names])
            return {n: loads(v) for n, v in zip(names, values) if v is not None}

        async def set_many(mapping):
            pipe = r.pipeline(transaction=False)
            for n, v in mapping.items():
                pipe.set(prefix + n, json.dumps(v), ex=TTL)
            await pipe.execute()

        self.get, self.get_many, self.set_many = get, get_many, set_many
        return self

    async def close(self) -> None:
        await self.r.aclose()
        await self.pool.disconnect()


class GlideBenchClient(Client):
    @classmethod
    async def create(cls, port: int) -> "GlideBenchClient":
        self = cls()
        config = GlideClientConfiguration([NodeAddress("127.0.0.1", port)],
                                          request_timeout=5000)
        c = self.c = await GlideClient.create(config)
        loads = json.loads
        c_get, c_mget = c.get, c.mget
        prefix = PREFIX
        expiry = ExpirySet(ExpiryType.SEC, TTL)

        async def get(name):
            v = await c_get(prefix + name)
            return None if v is None else loads(v)

        async def get_many(names):
            values = await c_mget([prefix + n for n in names])
            return {n: loads(v) for n, v in zip(names, values) if v is not None}

        async def set_many(mapping):
            b = Batch(is_atomic=False)
            for n, v in mapping.items():
                b.set(prefix + n, json.dumps(v), expiry=expiry)
            await c.exec(b, raise_on_error=True)

        self.get, self.get_many, self.set_many = get, get_many, set_many
        return self

    async def close(self) -> None:
        await self.c.close()


FACTORIES = {"ours": OursClient, "reference": ReferenceClient, "redis-py": RedisPyClient}
if HAVE_GLIDE:
    FACTORIES["glide"] = GlideBenchClient


class OverTLS:
    """A contender's factory over TLS: create(port) with the server's ssl* keywords
    (RedisServer.tls_kwargs: ssl=True, ssl_ca_certs)."""

    def __init__(self, factory, ssl_kwargs: dict) -> None:
        self.factory, self.ssl_kwargs = factory, ssl_kwargs

    def create(self, port: int):
        return self.factory.create(port, **self.ssl_kwargs)


# ------------------------------------------------------------------ checks


def count_bad(names, results) -> dict:
    """{"lost", "error", "wrong"} for results[i] read for names[i]."""
    lost = error = wrong = 0
    for n, v in zip(names, results):
        if v is None:
            lost += 1
        elif v is ERROR:
            error += 1
        elif v != EXPECTED[n]:
            wrong += 1
    return {"lost": lost, "error": error, "wrong": wrong}




# ------------------------------------------------------------------ measurements


def measure_sequential(contender: str, port: int, names: list[str]) -> dict:
    async def run():
        client = await FACTORIES[contender].create(port)
        try:
            await warm_up(client, names, 1)
            get = client.get
            lat = []
            out = []
            for n in names:
                t0 = perf_counter_ns()
                try:
                    v = await get(n)
                except Exception:
                    v = ERROR
                t1 = perf_counter_ns()
                lat.append(t1 - t0)
                out.append(v)
            return lat, out
        finally:
            await client.close()

    gc.collect()
    lat, out = run_loop(run())
    return {"latencies_ns": lat, "bad": count_bad(names, out)}


def measure_throughput(contender: str, port: int, names: list[str], concurrency: int) -> dict:
    total = len(names)
    per_task = total // concurrency
    total = per_task * concurrency
    names = names[:total]

    async def worker(get, out, start, stop):
        for i in range(start, stop):
            try:
                out[i] = await get(names[i])
            except Exception:
                out[i] = ERROR

    async def run():
        client = await FACTORIES[contender].create(port)
        try:
            await warm_up(client, names, concurrency)
            get = client.get
            out = [None] * total
            t0 = perf_counter_ns()
            await asyncio.gather(*(worker(get, out, t * per_task, (t + 1) * per_task)
                                   for t in range(concurrency)))
            elapsed = perf_counter_ns() - t0
            return elapsed, out
        finally:
            await client.close()

    gc.collect()
    elapsed, out = run_loop(run())
    return {"elapsed_ns": elapsed, "requests": total, "ops_per_s": total / (elapsed / 1e9),
            "bad": count_bad(names, out)}


def measure_batch(contender: str, port: int, op: str, calls: int, batches, server) -> dict:
    if op == "set_many(100)":
        server.command("DEL", *[PREFIX + n for n in SET_NAMES])
        mappings = [{n: SET_VALUES[n] for n in b} for b in batches]
    else:
        expected = [{n: EXPECTED[n] for n in b} for b in batches]

    async def run():
        client = await FACTORIES[contender].create(port)
        try:
            await warm_up(client, NAMES, 1)
            results = [None] * calls
            if op == "get_many(100)":
                f = client.get_many
                args = [batches[j % len(batches)] for j in range(calls)]
            else:
                f = client.set_many
                args = [mappings[j % len(mappings)] for j in range(calls)]
            t0 = perf_counter_ns()
            for j in range(calls):
                try:
                    results[j] = await f(args[j])
                except Exception:
                    results[j] = ERROR
            elapsed = perf_counter_ns() - t0
            return elapsed, results
        finally:
            await client.close()

    gc.collect()
    elapsed, results = run_loop(run())
    bad = {"lost": 0, "error": 0, "wrong": 0}
    if op == "get_many(100)":
        for j, res in enumerate(results):
            exp = expected[j % len(expected)]
            if res is ERROR or not isinstance(res, dict):
                bad["error"] += BATCH
                continue
            for n, v in exp.items():
                got = res.get(n)
                if got is None:
                    bad["lost"] += 1
                elif got != v:
                    bad["wrong"] += 1
    else:
        bad["error"] = BATCH * sum(1 for r in results if r is ERROR)
        written = [n for b in batches[:min(calls, len(batches))] for n in b]
        stored = server.command("MGET", *[PREFIX + n for n in written])
        for n, raw in zip(written, stored):
            if raw is None:
                bad["lost"] += 1
            elif json.loads(raw) != SET_VALUES[n]:
                bad["wrong"] += 1
        for b in batches[:min(calls, len(batches))]:  # the expiry, one key per batch
            ttl = server.command("TTL", PREFIX + b[0])
            if ttl is not None and not (0 < ttl <= TTL) and ttl != -2:  # -2: counted lost
                bad["wrong"] += 1
    return {"elapsed_ns": elapsed, "calls": calls, "us_per_call": elapsed / calls / 1e3,
            "bad": bad}


def run_ceiling(port: int, requests: int) -> dict:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return {"error": "redis-benchmark not found", "rps": None}
    cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-P", "16", "-c", "50", "-t", "get",
           "-n", str(requests), "-q"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"error": "redis-benchmark timed out", "rps": None}
    found = re.findall(r"GET: ([\d.]+) requests per second", p.stdout)
    if not found:
        return {"error": f"cannot parse redis-benchmark output: {p.stdout[-300:]!r} "
                         f"{p.stderr[-300:]!r}", "rps": None}
    return {"rps": float(found[-1]), "command": " ".join(cmd[0:1] + ["..."] + cmd[5:])}


# ------------------------------------------------------------------ report


class SequentialRounds:
    """One contender's sequential measurements, round after round."""

    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.rounds: list[dict] = []
        self.bad = {"lost": 0, "error": 0, "wrong": 0}

    def add(self, m: dict) -> None:
        self.latencies_ns.extend(m["latencies_ns"])
        s = sorted(m["latencies_ns"])
        self.rounds.append({"p50_us": percentile(s, 50) / 1e3,
                            "p99_us": percentile(s, 99) / 1e3, "bad": m["bad"]})
        add_bad(self.bad, m["bad"])

    def summary(self) -> dict:
        """p50/p99/mean over the samples of all rounds."""
        s = sorted(self.latencies_ns)
        return {"p50_us": percentile(s, 50) / 1e3, "p99_us": percentile(s, 99) / 1e3,
                "mean_us": statistics.fmean(s) / 1e3, "samples": len(s),
                "bad": self.bad, "rounds": self.rounds}


def result_head(benchmark: str, started: float, machine: dict) -> dict:
    return {
        "benchmark": benchmark,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
    }


def run_config(opts, contenders: list[str], missing: list[str]) -> dict:
    return {"loop": LOOP, "rounds": opts.rounds, "quick": opts.quick,
            "contenders": contenders, "missing_contenders": missing}


def load_data(server: RedisServer, port: int) -> None:
    """The keys every contender reads, written by ours (the storage layout is shared)."""

    async def preload():
        c = await OursClient.create(port)
        try:
            await c.cache.set_many(EXPECTED, TTL)
        finally:
            await c.close()

    run_loop(preload())
    stored = server.command("GET", PREFIX + "k7")
    assert stored is not None and json.loads(stored) == EXPECTED["k7"], stored


def print_sequential(seq: dict, contenders: list[str]) -> None:
    print()
    print(f"## Sequential get latency ({SEQ_OPS:,} awaited gets per round, samples of all "
          "rounds)")
    print()
    print("| contender | p50 µs | p99 µs | mean µs | bad / requests |")
    print("|---|---:|---:|---:|---:|")
    for c in contenders:
        s = seq[c]
        print(f"| {c} | {fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} | {fmt_us(s['mean_us'])} "
              f"| {fmt_bad(s['bad'], s['samples'])} |")


def machine_info() -> dict:
    return {
        **redis_machine_info(),
        "redis_benchmark": tool_version(["redis-benchmark", "--version"]),
        "valkey_glide": dist_version("valkey-glide") if HAVE_GLIDE else None,
    }





#: Event loop the measurements run on: "asyncio" (default) or "uvloop" (--loop).
LOOP = "asyncio"


def run_loop(coro):
    """asyncio.run on the chosen event loop."""
    return run_on(LOOP, coro)


def main(argv=None) -> int:
    global LOOP
    opts = bench_options(__doc__, "redis", 3, 1, argv, loop=True, tls=True)
    LOOP = opts.loop

    q = 1 if opts.quick else 0
    rounds = opts.rounds

    quiet_contenders()
    if opts.tls:
        return main_tls(opts)
    if HAVE_GLIDE:
        GlideLogger.set_logger_config(GlideLogLevel.ERROR)
    # A contender that cannot run fails the run (after measuring the others): its
    # targets would otherwise be skipped and the rest would read as "all met".
    missing = []
    if not HAVE_GLIDE:
        missing.append("valkey-glide (not installed: pip install -r requirements-bench.txt)")
    if shutil.which("redis-benchmark") is None:
        missing.append("redis-benchmark, the ceiling (not found: it comes with redis-server)")
    for m in missing:
        print(f"MISSING contender: {m}: this run will fail")

    contenders = [c for c in ALL_CONTENDERS if c in FACTORIES]
    started = time.time()
    info = machine_info()
    rng = random.Random(1234)
    order = NAMES[:]
    rng.shuffle(order)

    def names_for(n: int) -> list[str]:
        return [order[i % N_KEYS] for i in range(n)]

    seq_names = names_for(SEQ_OPS)
    tp_ops = {c: THROUGHPUT_OPS[c][q] for c in contenders}
    tp_names = {c: names_for(tp_ops[c]) for c in contenders}
    batch_calls = {op: {c: BATCH_CALLS[op][c][q] for c in contenders} for op in BATCH_OPS}
    get_batches = [order[j * BATCH:(j + 1) * BATCH] for j in range(N_KEYS // BATCH)]
    set_batches = [SET_NAMES[j * BATCH:(j + 1) * BATCH] for j in range(N_KEYS // BATCH)]
    ceiling_requests = CEILING_REQUESTS[q]

    server = RedisServer().start()
    try:
        port = server.port
        info["redis_port"] = port
        print(f"# RedisCache benchmark: {rounds} round(s); contenders: {', '.join(contenders)}")
        print(f"# {info['cpu_model']}, {info['nproc']} CPUs, Python {info['python']}, "
              f"redis-server {info['redis_server']}, redis-py {info['redis_py']} "
              f"(hiredis {info['hiredis']}), valkey-glide {info['valkey_glide']}")

        load_data(server, port)
        # redis-benchmark's GET reads "key:__rand_int__": give it a value of the same size.
        server.command("SET", "key:__rand_int__", json.dumps(value_for(0)))

        # Warm-up, not recorded: every contender, every shape, small.
        for c in contenders:
            measure_sequential(c, port, seq_names[:100])
            for conc in CONCURRENCY:
                measure_throughput(c, port, names_for(max(conc, 200)), conc)
            for op, batches in (("get_many(100)", get_batches), ("set_many(100)", set_batches)):
                measure_batch(c, port, op, 3, batches, server)
        run_ceiling(port, 20_000)

        seq_all = {c: SequentialRounds() for c in contenders}
        tp = {conc: {c: [] for c in contenders} for conc in CONCURRENCY}
        batch = {op: {c: [] for c in contenders} for op in BATCH_OPS}
        ceiling = []
        shuffle_rng = random.Random(42)

        for r in range(rounds):
            t_round = time.perf_counter()
            cs = contenders[:]
            shuffle_rng.shuffle(cs)
            for c in cs:
                seq_all[c].add(measure_sequential(c, port, seq_names))
            for conc in CONCURRENCY:
                cs = contenders[:]
                shuffle_rng.shuffle(cs)
                for c in cs:
                    tp[conc][c].append(measure_throughput(c, port, tp_names[c], conc))
            for op, batches in (("get_many(100)", get_batches), ("set_many(100)", set_batches)):
                cs = contenders[:]
                shuffle_rng.shuffle(cs)
                for c in cs:
                    batch[op][c].append(measure_batch(c, port, op, batch_calls[op][c],
                                                      batches, server))
            ceiling.append(run_ceiling(port, ceiling_requests))
            print(f"# round {r + 1}/{rounds}: {time.perf_counter() - t_round:.1f} s", flush=True)
    finally:
        server.close()

    # ---- summaries
    seq = {c: seq_all[c].summary() for c in contenders}
    tput = {conc: {c: throughput_summary(tp[conc][c]) for c in contenders}
            for conc in CONCURRENCY}
    bsum = {op: {c: {"us_per_call": statistics.median(m["us_per_call"] for m in batch[op][c]),
                     "calls_total": sum(m["calls"] for m in batch[op][c]),
                     "bad": summed_bad(batch[op][c]),
                     "rounds": batch[op][c]}
                 for c in contenders} for op in BATCH_OPS}
    ceiling_rps = [x["rps"] for x in ceiling if x.get("rps")]
    ceiling_med = statistics.median(ceiling_rps) if ceiling_rps else None

    # ---- tables
    print_sequential(seq, contenders)

    print()
    print(f"## Throughput, gets/s with C concurrent tasks (median of {rounds} round(s); "
          "bad = lost + error + wrong over all rounds)")
    print()
    head = "| tasks |"
    rule = "|---:|"
    for c in contenders:
        head += f" {c} ops/s | {c} bad |"
        rule += "---:|---:|"
    head += " ours/redis-py |"
    rule += "---:|"
    if "glide" in contenders:
        head += " ours/glide |"
        rule += "---:|"
    head += " ours % ceiling |"
    rule += "---:|"
    print(head)
    print(rule)
    for conc in CONCURRENCY:
        t = tput[conc]
        row = f"| {conc:,} |"
        for c in contenders:
            row += f" {fmt_int(t[c]['ops_per_s'])} | {fmt_bad(t[c]['bad'], t[c]['requests_total'])} |"
        row += f" {t['ours']['ops_per_s'] / t['redis-py']['ops_per_s']:.1f}x |"
        if "glide" in contenders:
            row += f" {t['ours']['ops_per_s'] / t['glide']['ops_per_s']:.2f}x |"
        if ceiling_med:
            row += f" {100 * t['ours']['ops_per_s'] / ceiling_med:.1f}% |"
        else:
            row += " n/a |"
        print(row)
    print()
    if ceiling_med:
        print(f"Ceiling: redis-benchmark -P 16 -c 50 -t get -n {ceiling_requests:,}: "
              f"{fmt_int(ceiling_med)} GET/s (median of {len(ceiling_rps)}; "
              f"runs: {', '.join(fmt_int(x) for x in ceiling_rps)}).")
    else:
        print(f"Ceiling: not measured ({ceiling[-1].get('error') if ceiling else 'no run'}).")
    print("Requests per measurement: " + ", ".join(f"{c} {tp_ops[c]:,}" for c in contenders)
          + "; ops/s counts every request, failed ones included.")

    print()
    print(f"## Batch operations, µs per call (median of {rounds} round(s))")
    print()
    head = "| operation |" + "".join(f" {c} µs | {c} bad |" for c in contenders) \
        + " ref/ours | redis-py/ours |"
    rule = "|---|" + "---:|---:|" * len(contenders) + "---:|---:|"
    print(head)
    print(rule)
    for op in BATCH_OPS:
        b = bsum[op]
        row = f"| {op} |"
        for c in contenders:
            row += (f" {fmt_us(b[c]['us_per_call'])} "
                    f"| {fmt_bad(b[c]['bad'], b[c]['calls_total'] * BATCH)} |")
        row += (f" {b['reference']['us_per_call'] / b['ours']['us_per_call']:.1f}x "
                f"| {b['redis-py']['us_per_call'] / b['ours']['us_per_call']:.2f}x |")
        print(row)
    print()
    print("Calls per measurement: " + "; ".join(
        op + ": " + ", ".join(f"{c} {batch_calls[op][c]}" for c in contenders)
        for op in BATCH_OPS) + ". bad counts keys.")
    print()

    # ---- targets
    verdict = Verdicts()

    o100 = tput[100]["ours"]["ops_per_s"]
    r100 = tput[100]["redis-py"]["ops_per_s"]
    verdict("throughput_100_vs_redis_py", o100 >= 10 * r100,
            f"100 tasks: ours {fmt_int(o100)} ops/s = {o100 / r100:.1f}x raw redis-py "
            f"({fmt_int(r100)} ops/s) (target >= 10x)", ratio=o100 / r100)
    if ceiling_med:
        pct = 100 * o100 / ceiling_med
        verdict("throughput_100_vs_ceiling", pct >= 30,
                f"100 tasks: ours = {pct:.1f}% of the redis-benchmark ceiling "
                f"({fmt_int(ceiling_med)} GET/s) (target >= 30%)", percent=pct)
    else:
        verdict("throughput_100_vs_ceiling", False, "ceiling not measured (redis-benchmark)")
    bad100 = bad_total(tput[100]["ours"]["bad"])
    verdict("zero_bad_100", bad100 == 0,
            f"100 tasks: ours {bad100:,} wrong/lost of {tput[100]['ours']['requests_total']:,} "
            "(target 0)", bad=bad100)
    bad_all = (bad_total(seq["ours"]["bad"])
               + sum(bad_total(tput[c_]["ours"]["bad"]) for c_ in CONCURRENCY)
               + sum(bad_total(bsum[op]["ours"]["bad"]) for op in BATCH_OPS))
    verdict("zero_bad_everywhere", bad_all == 0,
            f"every measurement: ours {bad_all:,} wrong/lost (target 0)", bad=bad_all)
    op50, rp50 = seq["ours"]["p50_us"], seq["redis-py"]["p50_us"]
    verdict("seq_p50_vs_redis_py", op50 <= rp50,
            f"sequential p50: ours {fmt_us(op50)} µs vs raw redis-py {fmt_us(rp50)} µs "
            "(target: no worse)", ours_us=op50, redis_py_us=rp50)
    if "glide" in contenders:
        g100 = tput[100]["glide"]["ops_per_s"]
        verdict("throughput_100_vs_glide", o100 > g100,
                f"100 tasks: ours {fmt_int(o100)} ops/s vs valkey-glide {fmt_int(g100)} ops/s "
                f"= {o100 / g100:.2f}x (target: ahead)", ratio=o100 / g100)
        gp50 = seq["glide"]["p50_us"]
        verdict("seq_p50_vs_glide", op50 <= gp50,
                f"sequential p50: ours {fmt_us(op50)} µs vs valkey-glide {fmt_us(gp50)} µs "
                "(target: ahead)", ours_us=op50, glide_us=gp50)
    else:
        verdict("throughput_100_vs_glide", False,
                "100 tasks: ahead of valkey-glide: not measured, valkey-glide is missing")
        verdict("seq_p50_vs_glide", False,
                "sequential p50: ahead of valkey-glide: not measured, valkey-glide is missing")
    verdict.missing(missing)

    result = {
        **result_head("redis", started, info),
        "config": {
            **run_config(opts, contenders, missing),
            "glide_installed": HAVE_GLIDE,
            "keys": N_KEYS,
            "value_example": value_for(0),
            "prefix": PREFIX,
            "ttl": TTL,
            "batch": BATCH,
            "sequential_gets": SEQ_OPS,
            "concurrency": list(CONCURRENCY),
            "throughput_requests": tp_ops,
            "batch_calls": batch_calls,
            "ceiling_requests": ceiling_requests,
            "redis_py_pool": "BlockingConnectionPool(max_connections=50)",
            "reference_pool": "redis.asyncio.from_url(max_connections=10) (its default)",
            "glide_config": "GlideClientConfiguration(request_timeout=5000)" if HAVE_GLIDE
            else None,
            "units": {"latency": "µs", "throughput": "requests/s (failed included)",
                      "batch": "µs per call"},
        },
        "sequential": {c: {k: v for k, v in seq[c].items()} for c in contenders},
        "throughput": {str(conc): tput[conc] for conc in CONCURRENCY},
        "batch": bsum,
        "ceiling": {"median_rps": ceiling_med, "runs": ceiling},
    }
    return verdict.finish(opts, result, missing, "bench_redis.py")


# ------------------------------------------------------------------ --tls

#: --tls contenders: ours and redis-py over TLS, and ours in plaintext (the reference row),
#: on one server that serves both (RedisServer(tls=True, plain_port_too=True)).
TLS_CONTENDERS = ["ours-tls", "redis-py-tls", "ours"]
TLS_CONCURRENCY = 100
#: Requests per throughput measurement, (full, quick): ours for about a second per
#: measurement (on a noisy machine a shorter one measures the noise), redis-py as above.
TLS_THROUGHPUT_OPS = {"ours-tls": (100_000, 20_000), "ours": (100_000, 20_000),
                      "redis-py-tls": THROUGHPUT_OPS["redis-py"]}


def main_tls(opts) -> int:
    """bench_redis.py --tls: see the module docstring."""
    q = 1 if opts.quick else 0
    rounds = opts.rounds
    contenders = TLS_CONTENDERS
    started = time.time()
    info = redis_machine_info()
    rng = random.Random(1234)
    order = NAMES[:]
    rng.shuffle(order)
    seq_names = [order[i % N_KEYS] for i in range(SEQ_OPS)]
    tp_ops = {c: TLS_THROUGHPUT_OPS[c][q] for c in contenders}
    tp_names = {c: [order[i % N_KEYS] for i in range(tp_ops[c])] for c in contenders}
    missing = []

    server = RedisServer(tls=True, plain_port_too=True).start()
    try:
        ports = {"ours-tls": server.port, "redis-py-tls": server.port, "ours": server.plain_port}
        FACTORIES["ours-tls"] = OverTLS(OursClient, server.tls_kwargs)
        FACTORIES["redis-py-tls"] = OverTLS(RedisPyClient, server.tls_kwargs)
        info.update(redis_tls_port=server.port, redis_plain_port=server.plain_port,
                    openssl=ssl.OPENSSL_VERSION)
        print(f"# RedisCache over TLS: {rounds} round(s); contenders: {', '.join(contenders)}")
        print(f"# {info['cpu_model']}, {info['nproc']} CPUs, load {info['loadavg_at_start']}, "
              f"Python {info['python']}, redis-server {info['redis_server']}, "
              f"redis-py {info['redis_py']} (hiredis {info['hiredis']}), {info['openssl']}")
        load_data(server, server.plain_port)

        # Warm-up, not recorded; a contender that cannot connect is missing (the run fails).
        for c in contenders[:]:
            try:
                measure_sequential(c, ports[c], seq_names[:100])
                measure_throughput(c, ports[c], tp_names[c][:1000], TLS_CONCURRENCY)
                m = measure_sequential(c, ports[c], seq_names[:1])
                if m["bad"]["error"]:
                    raise RuntimeError("its requests fail")
            except Exception as e:  # noqa: BLE001 (said, and the run fails)
                missing.append(f"{c} ({type(e).__name__}: {e})")
                contenders.remove(c)
        for m in missing:
            print(f"MISSING contender: {m}: this run will fail")

        seq_all = {c: SequentialRounds() for c in contenders}
        tp = {c: [] for c in contenders}
        shuffle_rng = random.Random(42)
        for r in range(rounds):
            t_round = time.perf_counter()
            for measure in ("sequential", "throughput"):
                cs = contenders[:]
                shuffle_rng.shuffle(cs)
                for c in cs:
                    if measure == "sequential":
                        seq_all[c].add(measure_sequential(c, ports[c], seq_names))
                    else:
                        tp[c].append(measure_throughput(c, ports[c], tp_names[c],
                                                        TLS_CONCURRENCY))
            print(f"# round {r + 1}/{rounds}: {time.perf_counter() - t_round:.1f} s", flush=True)
    finally:
        server.close()
    try:
        load_end = os.getloadavg()
    except OSError:
        load_end = None

    seq = {c: seq_all[c].summary() for c in contenders}
    tput = {c: throughput_summary(tp[c]) for c in contenders}

    print_sequential(seq, contenders)
    print()
    print(f"## Throughput, gets/s with {TLS_CONCURRENCY} concurrent tasks (median of {rounds} "
          "round(s); bad = lost + error + wrong over all rounds)")
    print()
    print("| contender | ops/s | bad / requests |")
    print("|---|---:|---:|")
    for c in contenders:
        print(f"| {c} | {fmt_int(tput[c]['ops_per_s'])} "
              f"| {fmt_bad(tput[c]['bad'], tput[c]['requests_total'])} |")
    print()
    print(f"Load average: {info['loadavg_at_start']} at the start, {load_end} at the end.")
    print()

    verdict = Verdicts()

    def ratio_target(name, a, b, minimum, what):
        if a not in tput or b not in tput:
            verdict(name, False, f"{what}: not measured ({a} or {b} is missing)")
            return
        fa, fb = tput[a]["ops_per_s"], tput[b]["ops_per_s"]
        verdict(name, fa >= minimum * fb,
                f"{TLS_CONCURRENCY} tasks: {a} {fmt_int(fa)} ops/s = {fa / fb:.2f}x {b} "
                f"({fmt_int(fb)} ops/s) (target >= {minimum:g}x: {what})", ratio=fa / fb)

    ratio_target("tls_throughput_100_vs_redis_py_tls", "ours-tls", "redis-py-tls", 10,
                 "redis-py over TLS")
    ratio_target("tls_throughput_100_vs_own_plaintext", "ours-tls", "ours", 0.7,
                 "our own plaintext throughput")
    if "ours-tls" in seq and "redis-py-tls" in seq:
        op50, rp50 = seq["ours-tls"]["p50_us"], seq["redis-py-tls"]["p50_us"]
        verdict("tls_seq_p50_vs_redis_py_tls", op50 <= rp50,
                f"sequential p50 over TLS: ours {fmt_us(op50)} µs vs redis-py {fmt_us(rp50)} µs "
                "(target: no worse)", ours_us=op50, redis_py_us=rp50)
    else:
        verdict("tls_seq_p50_vs_redis_py_tls", False, "sequential p50 over TLS: not measured")
    # Every contender's every result checked: a bad one means a broken client or setup.
    for c in contenders:
        bad = bad_total(seq[c]["bad"]) + bad_total(tput[c]["bad"])
        verdict("zero_bad", bad == 0,
                f"every measurement: {c} {bad:,} lost/failed/wrong (target 0)",
                contender=c, bad=bad)
    verdict.missing(missing)

    result = {
        **result_head("redis-tls", started, {**info, "loadavg_at_end": load_end}),
        "config": {
            **run_config(opts, TLS_CONTENDERS, missing),
            "server": "one redis-server: --tls-port (ours-tls, redis-py-tls) and --port "
                      "(ours); EC P-256 certificates (make_tls_files), tls-auth-clients "
                      "optional, clients verify the server (ssl_ca_certs)",
            "keys": N_KEYS,
            "value_example": value_for(0),
            "prefix": PREFIX,
            "sequential_gets": SEQ_OPS,
            "concurrency": TLS_CONCURRENCY,
            "throughput_requests": tp_ops,
            "redis_py_pool": "BlockingConnectionPool(max_connections=50, "
                             "connection_class=SSLConnection, ssl_ca_certs=...)",
            "units": {"latency": "µs", "throughput": "requests/s (failed included)"},
        },
        "sequential": seq,
        "throughput": {str(TLS_CONCURRENCY): tput},
    }
    return verdict.finish(opts, result, missing, "bench_redis.py --tls")


if __name__ == "__main__":
    sys.exit(main())
