"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import argparse
import asyncio
import importlib.metadata as md
import json
import os
import platform
import re
import statistics
import subprocess
import sys


def _git(*args: str) -> str | None:
    """git's answer in the repository the benchmarks belong to, or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        p = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def base_machine_info() -> dict:
    """What every results file records about the machine it ran on."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    os_release = None
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_release = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        # (the result files a run writes do not count)
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--",
                               ":(top)", ":(top,exclude)benchmarks/results")),
        "os_release": os_release,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "cpu_model": cpu,
        "nproc": nproc,
        "loadavg_at_start": load,
    }


def write_results(path: str, result: dict) -> None:
    """Write a run's figures as JSON and say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"\nwrote {os.path.relpath(path)} in {result['duration_s']} s")


def tool_version(args: list[str]) -> str | None:
    """What `args` (e.g. ["redis-server", "--version"]) prints, or None."""
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=10)
        return p.stdout.strip() or p.stderr.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def dist_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def redis_machine_info() -> dict:
    """base_machine_info() plus the versions every Redis benchmark depends on."""
    import redis

    import bruno_memory_c

    server_version = tool_version(["redis-server", "--version"])
    m = re.search(r"v=(\S+)", server_version or "")
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:  # pragma: no cover
        HIREDIS_AVAILABLE = None
    return {
        **base_machine_info(),
        "bruno_memory_c": bruno_memory_c.__version__,
        "bruno_memory_reference": dist_version("bruno-memory"),
        "redis_server": m.group(1) if m else server_version,
        "redis_py": redis.__version__,
        "hiredis": dist_version("hiredis"),
        "redis_py_uses_hiredis": HIREDIS_AVAILABLE,
    }


def percentile(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[k])


def bad_total(b: dict) -> int:
    """How many results of a measurement were bad ({"lost": n, "error": n, ...})."""
    return sum(b.values())


def add_bad(into: dict, b: dict) -> None:
    for k, v in b.items():
        into[k] = into.get(k, 0) + v


def fmt_bad(b: dict, requests: int) -> str:
    total = bad_total(b)
    if total == 0:
        return f"0 / {requests:,}"
    parts = [f"{v:,} {k}" for k, v in b.items() if v]
    return f"**{total:,}** / {requests:,} ({', '.join(parts)})"


def run_on(loop: str, coro):
    """asyncio.run on the event loop named "asyncio" (the default) or "uvloop"."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def bench_options(doc: str, name: str, rounds: int, quick_rounds: int, argv=None,
                  loop: bool = False, tls: bool = False) -> argparse.Namespace:
    """The command line every benchmark takes: --quick, --rounds, --output, --strict
    (and --loop when `loop`, --tls when `tls`). opts.rounds is resolved; the default
    output is results/<name>.json, results/<name>-tls.json with --tls, and
    "-uvloop" added with --loop uvloop."""
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if loop:
        p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                       help="event loop for every contender (default asyncio)")
    if tls:
        p.add_argument("--tls", action="store_true",
                       help="the TLS benchmark instead (see the description)")
    p.add_argument("--quick", action="store_true", help="a short run (fewer rounds and ops)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"rounds (default {rounds}, quick {quick_rounds})")
    p.add_argument("--output", default=None, help="where to write the JSON figures")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    opts = p.parse_args(argv)
    opts.rounds = opts.rounds or (quick_rounds if opts.quick else rounds)
    if opts.output is None:
        suffix = "-tls" if getattr(opts, "tls", False) else ""
        suffix += "-uvloop" if getattr(opts, "loop", "asyncio") == "uvloop" else ""
        opts.output = os.path.join(here, "results", f"{name}{suffix}.json")
    return opts


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def fmt_num(x: float, thousands: float = 1000) -> str:
    """A figure with the precision a table needs: 3 significant digits below
    `thousands`, then whole numbers with separators."""
    if x >= thousands:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def fmt_ns(x: float) -> str:
    return fmt_num(x, 10000)


def fmt_us(x: float) -> str:
    return fmt_num(x)


async def warm_up(client, names, concurrency: int, most: int = 100) -> None:
    """Some gets of names (at least `most`), `concurrency` at a time, not counted: the
    clients open their connections (pools, nodes) before anything is timed."""

    async def one(n):
        try:
            await client.get(n)
        except Exception:
            pass

    width = max(1, min(concurrency, len(names)))
    for start in range(0, min(len(names), max(width, most)), width):
        await asyncio.gather(*(one(n) for n in names[start:start + width]))


class Verdicts(list):
    """A run's targets, each printed PASS or FAIL as it is decided."""

    def __call__(self, name: str, ok, text: str, **fig) -> None:
        self.append({"target": name, "pass": bool(ok), "detail": text, **fig})
        print(f"{'PASS' if ok else 'FAIL'} {text}")

    def missing(self, missing: list[str]) -> None:
        """A missing contender is a target missed, not one skipped."""
        for m in missing:
            self("contender_present", False, f"missing contender: {m}", contender=m)

    @property
    def all_pass(self) -> bool:
        return all(v["pass"] for v in self)

    def finish(self, opts, result: dict, missing: list[str], what: str) -> int:
        """Write the results with the verdicts; the exit status: 1 when a contender is
        missing, or (--strict) a target was missed."""
        write_results(opts.output, {**result, "targets": self, "all_pass": self.all_pass})
        if missing:
            print(f"{what}: the run failed: missing contender(s): {'; '.join(missing)}")
            return 1
        return 1 if (opts.strict and not self.all_pass) else 0


def no_bad() -> dict:
    return {"lost": 0, "error": 0, "wrong": 0}


def summed_bad(ms, empty=no_bad) -> dict:
    """The bad counts of measurements `ms`, added up (from `empty()`)."""
    b = empty()
    for m in ms:
        add_bad(b, m["bad"])
    return b


def throughput_summary(ms: list[dict], empty=no_bad) -> dict:
    """The median over the rounds of one contender's throughput measurements."""
    return {"ops_per_s": statistics.median(m["ops_per_s"] for m in ms),
            "requests_total": sum(m["requests"] for m in ms),
            "bad": summed_bad(ms, empty), "rounds": ms}


def quiet_contenders() -> None:
    """The reference logs every failed request (thousands under concurrency), our caches
    log the errors their reads swallow, redis-py and glide warn: keep a benchmark's
    output to its tables (failures are counted, not logged)."""
    import logging
    import warnings

    for name in ("bruno_memory.utils.cache", "bruno_memory_c", "redis"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 10)
    warnings.simplefilter("ignore", DeprecationWarning)  # (the reference's client.close())
