#!/usr/bin/env python
"""Soak test: RedisCache under mixed load for minutes while its server dies and drops it.

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--tasks 100] [--kill-every 30]
        [--client-kill-every 7] [--loop asyncio|uvloop] [--strict] [--output PATH]

Not part of CI (it takes --minutes plus about a minute). One throwaway redis-server
(bruno_memory_c.testing.RedisServer), one RedisCache (socket_timeout 2 s), one event loop:

- load: --tasks asyncio tasks, each looping over a random mix of get / set / delete /
  exists / get_many / set_many on keys of its own (so that "the value this process last
  wrote" is well defined for every key), every write a value never written before;
- faults, from a thread: every --kill-every seconds the server is SIGKILLed
  (RedisServer.kill()), left down for --outage seconds, and restarted on the same port
  (restart(): empty, no persistence); every --client-kill-every seconds
  `CLIENT KILL TYPE normal` drops every client connection.

Every result is checked against what each key can hold: the value of its last
successful write, or a value whose write failed (CacheError: it may or may not have
been applied), or nothing (deleted, or lost with a restart). Failure answers of the
README's error table -- get None, exists/delete False, get_many {}, set/set_many
CacheError -- are always allowed during outages and counted by kind (the swallowed ones
through the "bruno_memory_c" logger, which logs each). Counted as:

- wrong: a value (or a True from exists/delete) the key cannot hold, or an exception a
  read method must not raise;
- lost: an await that does not return within socket_timeout + 5 s (asyncio.wait_for;
  the awaitable is then cancelled).

Resources (RSS from /proc/self/statm, open file descriptors, threads) are recorded at
start, as the baseline after --warmup seconds (30; the first kill and CLIENT KILL come
at half their period, so the warm-up has seen both), and at the end (load stopped, the
server up, the cache working again); baseline and end are both taken with the server up
and the cache connected.

Targets: RSS, fds and threads at the end no more than 5% above the baseline, wrong = 0,
lost = 0, no request left in flight at the end. PASS/FAIL per target; --strict exits 1
on a FAIL. Writes benchmarks/results/soak.json (soak-uvloop.json with --loop uvloop).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import gc
import logging
import os
import random
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
from benchmarks._common import fmt_int, redis_machine_info, run_on, write_results  # noqa: E402

from bruno_memory_c import CacheError, RedisCache  # noqa: E402
from bruno_memory_c.testing import RedisServer  # noqa: E402

SOCKET_TIMEOUT = 2.0
LOST_AFTER = SOCKET_TIMEOUT + 5.0  # an await longer than this is lost
KEYS_PER_TASK = 20
PREFIX = "soak:"
GROWTH_LIMIT = 0.05  # resources at the end: at most 5% above the baseline
PAGE = os.sysconf("SC_PAGE_SIZE")

#: (operation, weight) of the mix.
MIX = [("get", 40), ("set", 20), ("delete", 5), ("exists", 10), ("get_many", 15),
       ("set_many", 10)]

#: What the error table's swallowed failures log (logger "bruno_memory_c").
LOGGED_FAILURE = {"Error getting key": "get", "Error getting multiple keys": "get_many",
                  "Error deleting key": "delete", "Error checking key": "exists",
                  "Error decoding cached value": "decode"}
#: Failures that are raised (CacheError) and may be logged too: not counted as swallowed.
LOGGED_AND_RAISED = ("Error setting key", "Error setting multiple keys",
                     "Error clearing cache")


def resources() -> dict:
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {"rss_bytes": rss_pages * PAGE,
            "fds": len(os.listdir("/proc/self/fd")),
            "threads": len(os.listdir("/proc/self/task"))}


def fmt_res(r: dict) -> str:
    return f"RSS {r['rss_bytes'] / 2**20:.1f} MiB, {r['fds']} fds, {r['threads']} threads"


class FailureLog(logging.Handler):
    """Counts the failures the cache swallows (each is logged once), by method."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.counts: collections.Counter = collections.Counter()
        self.raised_logged = 0  # set/set_many failures: raised, and logged as well

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        for prefix, kind in LOGGED_FAILURE.items():
            if msg.startswith(prefix):
                self.counts[kind] += 1
                return
        if msg.startswith(LOGGED_AND_RAISED):
            self.raised_logged += 1
            return
        self.counts["other"] += 1


class Faults(threading.Thread):
    """Kills and restarts the server, and drops its clients, on a schedule."""

    def __init__(self, server: RedisServer, kill_every: float, outage: float,
                 client_kill_every: float, lock: threading.Lock) -> None:
        super().__init__(name="soak-faults", daemon=True)
        self.server, self.lock = server, lock
        self.kill_every, self.outage, self.ck_every = kill_every, outage, client_kill_every
        self.stopping = threading.Event()
        self.counts: collections.Counter = collections.Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by main()
            self.error = e

    def _run(self) -> None:
        # The first of each fault comes at half its period, so that the warm-up (as
        # long as a period) has seen one: what a fault allocates once is in the baseline.
        start = time.monotonic()
        next_kill = start + self.kill_every / 2 if self.kill_every > 0 else float("inf")
        next_ck = start + self.ck_every / 2 if self.ck_every > 0 else float("inf")
        while not self.stopping.wait(max(0.0, min(next_kill, next_ck) - time.monotonic())):
            now = time.monotonic()
            if now >= next_kill:
                with self.lock:
                    self.server.kill()
                    self.counts["kills"] += 1
                if self.stopping.wait(self.outage):
                    break
                with self.lock:
                    self.server.restart()
                    self.counts["restarts"] += 1
                next_kill = time.monotonic() + self.kill_every
            if now >= next_ck:
                with self.lock:
                    try:
                        n = self.server.command("CLIENT", "KILL", "TYPE", "normal")
                        self.counts["client_kills"] += 1
                        self.counts["connections_dropped"] += int(n)
                    except (OSError, RuntimeError, ConnectionError):
                        self.counts["client_kill_refused"] += 1  # the server is down
                next_ck = time.monotonic() + self.ck_every
        # Leave the server running for the end of the run.
        with self.lock:
            if self.server.proc is None or self.server.proc.poll() is not None:
                self.server.restart()
                self.counts["restarts"] += 1


class Soak:
    def __init__(self, cache: RedisCache, tasks: int, seed: int) -> None:
        self.cache = cache
        self.tasks = tasks
        self.seed = seed
        self.stop = False
        self.completed: collections.Counter = collections.Counter()   # by operation
        self.raised: collections.Counter = collections.Counter()      # CacheError, by op
        self.lost: collections.Counter = collections.Counter()        # by operation
        self.wrong: collections.Counter = collections.Counter()       # by reason
        self.wrong_examples: list[str] = []
        self.serial = 0

    # -- the model: what each key can hold ------------------------------------------
    # Every value written is new: "<key>|<serial>|<padding>", serials increasing. What a
    # key can hold is kept in constant space (the soak's own memory must not grow with
    # the failures it provokes, or it would hide the cache's): KeyState.ok is the serial
    # of its last successful write (None: absent, after a successful delete or at the
    # start), lo..hi the serials of the writes to it that failed since (any of them
    # may have been applied). None is always acceptable from a read: the server may
    # have been restarted (empty) since, or the read failed.

    def bad(self, reason: str, detail: str) -> None:
        self.wrong[reason] += 1
        if len(self.wrong_examples) < 20:
            self.wrong_examples.append(f"{reason}: {detail}")

    def new_value(self, key: str, rng: random.Random) -> tuple[int, str]:
        self.serial += 1
        return self.serial, f"{key}|{self.serial}|" + "x" * rng.randrange(0, 200)

    async def bounded(self, op: str, aw):
        try:
            return await asyncio.wait_for(aw, LOST_AFTER)
        except asyncio.TimeoutError:
            self.lost[op] += 1
            raise

    async def worker(self, t: int) -> None:
        rng = random.Random(self.seed * 100_003 + t)
        keys = [f"t{t}:k{j}" for j in range(KEYS_PER_TASK)]
        state = {k: KeyState() for k in keys}
        ops = [op for op, _ in MIX]
        weights = [w for _, w in MIX]
        cache = self.cache
        while not self.stop:
            op = rng.choices(ops, weights)[0]
            try:
                await self.one(op, rng, keys, state, cache)
            except asyncio.TimeoutError:
                continue  # lost: counted (the key's state was widened before)
            self.completed[op] += 1

    def check_value(self, reason: str, key: str, value, st: "KeyState") -> None:
        if value is not None and not st.may_hold(key, value):
            self.bad(reason, f"{key}: got {str(value)[:60]!r}, {st}")

    async def one(self, op, rng, keys, state, cache) -> None:
        if op == "get":
            k = rng.choice(keys)
            try:
                v = await self.bounded(op, cache.get(k))
            except CacheError as e:
                self.bad("get raised", repr(e))
                return
            self.check_value("get value", k, v, state[k])
        elif op == "set":
            k = rng.choice(keys)
            serial, v = self.new_value(k, rng)
            try:
                await self.bounded(op, cache.set(k, v))
                state[k].written(serial)
            except CacheError:
                self.raised[op] += 1
                state[k].failed(serial)
            except asyncio.TimeoutError:
                state[k].failed(serial)
                raise
        elif op == "delete":
            k = rng.choice(keys)
            try:
                r = await self.bounded(op, cache.delete(k))
            except CacheError as e:
                self.bad("delete raised", repr(e))
                return
            if r is True:
                if state[k].surely_absent():
                    self.bad("delete True", f"{k} could not be stored: {state[k]}")
                state[k].written(None)
            elif r is not False:
                self.bad("delete result", repr(r))
        elif op == "exists":
            k = rng.choice(keys)
            try:
                r = await self.bounded(op, cache.exists(k))
            except CacheError as e:
                self.bad("exists raised", repr(e))
                return
            if r is True and state[k].surely_absent():
                self.bad("exists True", f"{k} could not be stored: {state[k]}")
            elif r not in (True, False):
                self.bad("exists result", repr(r))
        elif op == "get_many":
            ks = rng.sample(keys, rng.randrange(2, 6))
            try:
                d = await self.bounded(op, cache.get_many(ks))
            except CacheError as e:
                self.bad("get_many raised", repr(e))
                return
            if not isinstance(d, dict) or not set(d) <= set(ks):
                self.bad("get_many result", repr(d)[:200])
                return
            for k, v in d.items():
                if v is None:
                    self.bad("get_many value", f"{k}: None in the result")
                else:
                    self.check_value("get_many value", k, v, state[k])
        elif op == "set_many":
            ks = rng.sample(keys, rng.randrange(2, 5))
            made = {k: self.new_value(k, rng) for k in ks}
            try:
                await self.bounded(op, cache.set_many({k: v for k, (_, v) in made.items()}))
                for k, (serial, _) in made.items():
                    state[k].written(serial)
            except CacheError:
                self.raised[op] += 1
                for k, (serial, _) in made.items():
                    state[k].failed(serial)
            except asyncio.TimeoutError:
                for k, (serial, _) in made.items():
                    state[k].failed(serial)
                raise


class KeyState:
    """What one key can hold, in constant space (see Soak's model)."""

    __slots__ = ("ok", "lo", "hi")

    def __init__(self) -> None:
        self.ok: int | None = None  # serial of the last successful write; None: absent
        self.lo: int | None = None  # serials of the failed writes since: lo..hi
        self.hi: int | None = None

    def written(self, serial: int | None) -> None:
        """A write (serial) or a delete (None) succeeded."""
        self.ok, self.lo, self.hi = serial, None, None

    def failed(self, serial: int) -> None:
        """A write failed: it may or may not have been applied."""
        if self.lo is None:
            self.lo = serial
        self.hi = serial

    def surely_absent(self) -> bool:
        return self.ok is None and self.lo is None

    def may_hold(self, key: str, value) -> bool:
        # Serials are global and increasing, and each embeds its key: within lo..hi,
        # every serial written for this key is a failed write.
        if not isinstance(value, str):
            return False
        parts = value.split("|", 2)
        if len(parts) != 3 or parts[0] != key or not parts[1].isdigit():
            return False
        serial = int(parts[1])
        if serial == self.ok:
            return True
        return self.lo is not None and self.hi is not None and self.lo <= serial <= self.hi

    def __repr__(self) -> str:
        return f"KeyState(ok={self.ok}, failed={self.lo}..{self.hi})"


async def works(cache: RedisCache) -> bool:
    try:
        await asyncio.wait_for(cache.set("probe", 1), LOST_AFTER)
        return await asyncio.wait_for(cache.get("probe"), LOST_AFTER) == 1
    except (CacheError, asyncio.TimeoutError):
        return False


async def wait_until_works(cache: RedisCache, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await works(cache):
            return True
        await asyncio.sleep(0.2)
    return False


def options(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    p.add_argument("--tasks", type=int, default=100, help="concurrent tasks (default 100)")
    p.add_argument("--kill-every", type=float, default=30.0,
                   help="seconds between server kills + restarts (default 30; 0: never)")
    p.add_argument("--outage", type=float, default=1.0,
                   help="seconds the killed server stays down (default 1)")
    p.add_argument("--client-kill-every", type=float, default=7.0,
                   help="seconds between CLIENT KILL TYPE normal (default 7; 0: never)")
    p.add_argument("--warmup", type=float, default=30.0,
                   help="seconds of load before the resource baseline (default 30)")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", default=None, help="where to write the JSON figures")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    opts = p.parse_args(argv)
    if opts.output is None:
        suffix = "-uvloop" if opts.loop == "uvloop" else ""
        opts.output = os.path.join(HERE, "results", f"soak{suffix}.json")
    return opts


def main(argv=None) -> int:
    opts = options(argv)
    started = time.time()
    info = redis_machine_info()
    logger = logging.getLogger("bruno_memory_c")
    failures = FailureLog()
    logger.addHandler(failures)
    logger.setLevel(logging.ERROR)
    logger.propagate = False  # counted, not printed

    duration = opts.minutes * 60
    snapshots: dict[str, dict] = {"start": resources()}
    print(f"# soak: {opts.minutes:g} min, {opts.tasks} tasks, loop {opts.loop}, kill every "
          f"{opts.kill_every:g} s (down {opts.outage:g} s), CLIENT KILL every "
          f"{opts.client_kill_every:g} s, socket_timeout {SOCKET_TIMEOUT:g} s")
    print(f"# {info['cpu_model']}, {info['nproc']} CPUs, Python {info['python']}, "
          f"redis-server {info['redis_server']}")
    print(f"start:    {fmt_res(snapshots['start'])}")

    lock = threading.Lock()
    server = RedisServer().start()
    faults = Faults(server, opts.kill_every, opts.outage, opts.client_kill_every, lock)
    cache = RedisCache(host="127.0.0.1", port=server.port, prefix=PREFIX,
                       socket_timeout=SOCKET_TIMEOUT, connect_timeout=SOCKET_TIMEOUT)
    soak = Soak(cache, opts.tasks, opts.seed)
    end_state: dict = {}

    def server_up() -> bool:
        return server.proc is not None and server.proc.poll() is None

    async def run() -> None:
        await cache.connect()
        workers = [asyncio.ensure_future(soak.worker(t)) for t in range(opts.tasks)]
        faults.start()
        t0 = time.monotonic()
        warm = min(opts.warmup, duration / 2)
        baseline_taken = False
        last_print = t0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if not baseline_taken and now - t0 >= warm:
                # In the state the end is measured in: the server up, the cache
                # connected, no fault under way (its command connection open).
                gc.collect()
                with lock:
                    if server_up() and cache.stats()["connected"]:
                        snapshots["baseline"] = resources()
                        baseline_taken = True
                if baseline_taken:
                    print(f"baseline: {fmt_res(snapshots['baseline'])} "
                          f"(after {now - t0:.0f} s)", flush=True)
            if now - last_print >= 10 or now - t0 >= duration:
                last_print = now
                done = sum(soak.completed.values())
                print(f"  {now - t0:5.0f} s: {fmt_int(done)} completed "
                      f"({fmt_int(done / (now - t0))}/s), raised {sum(soak.raised.values())}, "
                      f"swallowed {sum(failures.counts.values())}, "
                      f"wrong {sum(soak.wrong.values())}, lost {sum(soak.lost.values())}; "
                      f"{fmt_res(resources())}; faults {dict(faults.counts)}", flush=True)
            if now - t0 >= duration:
                break
        soak.stop = True
        faults.stopping.set()
        # Every worker ends within one (bounded) operation.
        await asyncio.wait(workers, timeout=LOST_AFTER * 3)
        await asyncio.to_thread(faults.join, 60)
        end_state["workers_stuck"] = sum(not w.done() for w in workers)
        for w in workers:
            w.cancel()
        end_state["works_again"] = await wait_until_works(cache)
        await asyncio.sleep(0.5)
        end_state["in_flight"] = cache.stats()["in_flight"]
        end_state["cache_stats"] = cache.stats()
        end_state["connected"] = cache.stats()["connected"]
        gc.collect()
        snapshots["end"] = resources()
        if "baseline" not in snapshots:  # (a run too short to find a quiet moment)
            snapshots["baseline"] = snapshots["end"]
        await cache.disconnect()

    try:
        run_on(opts.loop, run())
    finally:
        faults.stopping.set()
        server.close()
    if faults.error is not None:
        print(f"the fault thread failed: {faults.error!r}")
    print(f"end:      {fmt_res(snapshots['end'])}")

    completed = sum(soak.completed.values())
    wrong = sum(soak.wrong.values())
    lost = sum(soak.lost.values())
    print(f"\nrequests completed: {fmt_int(completed)} "
          f"({', '.join(f'{k} {fmt_int(v)}' for k, v in sorted(soak.completed.items()))})")
    print(f"failures, swallowed (None/False/{{}} per the error table, logged): "
          f"{dict(failures.counts) or 0}")
    print(f"failures, CacheError raised: {dict(soak.raised) or 0} "
          f"({failures.raised_logged} of them also logged)")
    print(f"wrong: {wrong} {dict(soak.wrong) if wrong else ''}")
    for example in soak.wrong_examples:
        print(f"    {example}")
    print(f"lost: {lost} {dict(soak.lost) if lost else ''}")
    print(f"faults: {dict(faults.counts)}; cache: {end_state.get('cache_stats')}")
    if end_state.get("workers_stuck"):
        print(f"workers that did not stop: {end_state['workers_stuck']}")
    if not end_state.get("works_again"):
        print("the cache did not work again after the run")

    verdicts = []

    def verdict(name, ok, text, **fig):
        verdicts.append({"target": name, "pass": bool(ok), "detail": text, **fig})
        print(f"{'PASS' if ok else 'FAIL'} {text}")

    print()
    base, end = snapshots.get("baseline", snapshots["start"]), snapshots["end"]
    for key, label in (("rss_bytes", "RSS"), ("fds", "open fds"), ("threads", "threads")):
        growth = (end[key] - base[key]) / base[key]
        shown = (lambda b: f"{b / 2**20:.1f} MiB") if key == "rss_bytes" else str
        verdict(f"{key}_flat", growth <= GROWTH_LIMIT,
                f"{label}: {shown(base[key])} after warm-up, {shown(end[key])} at the end "
                f"({growth:+.1%}; target <= +{GROWTH_LIMIT:.0%})",
                baseline=base[key], end=end[key], growth=growth)
    verdict("wrong_zero", wrong == 0, f"wrong results: {wrong} (target 0)", wrong=wrong)
    verdict("lost_zero", lost == 0, f"lost awaits: {lost} (target 0)", lost=lost)
    verdict("in_flight_zero", end_state.get("in_flight") == 0,
            f"requests still in flight at the end: {end_state.get('in_flight')} (target 0)",
            in_flight=end_state.get("in_flight"))
    verdict("recovers", bool(end_state.get("works_again")) and faults.error is None,
            "the cache works again after the run (target: yes)")
    all_pass = all(v["pass"] for v in verdicts)

    result = {
        "benchmark": "soak",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": info,
        "config": {
            "minutes": opts.minutes, "tasks": opts.tasks, "loop": opts.loop,
            "kill_every_s": opts.kill_every, "outage_s": opts.outage,
            "client_kill_every_s": opts.client_kill_every, "warmup_s": opts.warmup,
            "seed": opts.seed, "socket_timeout_s": SOCKET_TIMEOUT,
            "lost_after_s": LOST_AFTER, "keys_per_task": KEYS_PER_TASK,
            "mix": dict(MIX),
        },
        "resources": snapshots,
        "completed": dict(soak.completed),
        "completed_total": completed,
        "failures": {"swallowed_logged": dict(failures.counts),
                     "cache_error_raised": dict(soak.raised),
                     "raised_and_logged": failures.raised_logged},
        "wrong": dict(soak.wrong),
        "wrong_examples": soak.wrong_examples,
        "lost": dict(soak.lost),
        "faults": dict(faults.counts),
        "end": {k: v for k, v in end_state.items()},
        "targets": verdicts,
        "all_pass": all_pass,
    }
    write_results(opts.output, result)
    return 1 if (opts.strict and not all_pass) else 0


if __name__ == "__main__":
    sys.exit(main())
