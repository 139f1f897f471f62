#!/usr/bin/env python
"""Run every benchmark with --strict, then draw the chart; fail if any of them failed.

    .venv/bin/python -m benchmarks.run_all [--quick] [--results-dir DIR]

What `make bench` runs (after installing requirements-bench.txt): bench_inmemory.py,
bench_redis.py and bench_multilevel.py (the last two under asyncio's default loop and
under uvloop), bench_redis.py --tls (RedisCache over TLS), bench_cluster.py
(RedisCache over a Redis Cluster, with a failover) and bench_coherent.py (the coherent
L1's staleness and cost, with a writer process), each with --strict, so
that a missed target, a wrong result or a missing contender makes it exit 1; then chart.py. One failing benchmark does not stop the
others: all of them run, a summary names every failure (the targets missed, read from
the results file each one writes), and the exit status is 1 if anything failed.

--quick passes --quick to every benchmark (a short run, to check that they work);
--results-dir writes the results files and the chart there instead of
benchmarks/results/ (e.g. /tmp/bench, so that a trial run leaves the committed figures
alone).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # the benchmarks run as modules of the package from here

#: (module, extra arguments, results file name)
BENCHMARKS = [
    ("bench_inmemory", [], "inmemory.json"),
    ("bench_redis", [], "redis.json"),
    ("bench_redis", ["--loop", "uvloop"], "redis-uvloop.json"),
    ("bench_redis", ["--tls"], "redis-tls.json"),
    ("bench_multilevel", [], "multilevel.json"),
    ("bench_multilevel", ["--loop", "uvloop"], "multilevel-uvloop.json"),
    ("bench_cluster", [], "cluster.json"),
    ("bench_coherent", [], "coherent.json"),
    ("bench_coherent", ["--loop", "uvloop"], "coherent-uvloop.json"),
]


def failures_in(path: str, since: float) -> list[str]:
    """What a results file says failed (targets missed, wrong results, missing
    contenders), or why it cannot say."""
    try:
        if os.path.getmtime(path) < since:
            return [f"no results written ({os.path.relpath(path)} is from an earlier run)"]
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as e:
        return [f"no results written ({e})"]
    out = []
    for v in result.get("targets", []):
        if v.get("pass"):
            continue
        if "detail" in v:
            out.append(v["detail"])
        elif "operation" in v:  # bench_inmemory.py's targets
            text = (f"{v['operation']}: {v['speedup']:.1f}x faster than the reference "
                    f"(target >= {v['min_speedup']:g}x)")
            if v.get("max_ours_over_floor") is not None:
                text += (f", {v['ours_over_floor']:.2f}x the floor "
                         f"(target <= {v['max_ours_over_floor']:g}x)")
            out.append(text)
        else:
            out.append(json.dumps(v))
    for what, problems in (result.get("wrong_results") or {}).items():
        out.append(f"wrong results: {what}: {problems[0]}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument("--results-dir", default=os.path.join(HERE, "results"),
                   help="where the results files and the chart go (default benchmarks/results)")
    opts = p.parse_args(argv)
    results = os.path.abspath(opts.results_dir)
    os.makedirs(results, exist_ok=True)

    rows = []  # (name, ok, seconds, [failures])
    for script, extra, out_name in BENCHMARKS:
        name = " ".join([script, *extra])
        out = os.path.join(results, out_name)
        cmd = [sys.executable, "-m", f"benchmarks.{script}", "--strict", *extra, "--output", out]
        if opts.quick:
            cmd.append("--quick")
        print(f"\n==== {name}", flush=True)
        started = time.time()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        seconds = time.time() - started
        failures = failures_in(out, started) if rc != 0 else []
        if rc != 0 and not failures:
            failures = [f"exited {rc}"]
        rows.append((name, rc == 0, seconds, failures))

    print("\n==== chart.py", flush=True)
    started = time.time()
    png = os.path.join(results, "benchmarks.png")
    rc = subprocess.run([sys.executable, "-m", "benchmarks.chart",
                         "--results", results, "--output", png], cwd=ROOT).returncode
    rows.append(("chart.py", rc == 0, time.time() - started, [] if rc == 0 else [f"exited {rc}"]))

    failed = [r for r in rows if not r[1]]
    print("\n## Benchmarks: summary" + (" (--quick)" if opts.quick else ""))
    print()
    print("| run | result | s |")
    print("|---|---|---:|")
    for name, ok, seconds, _ in rows:
        print(f"| {name} | {'ok' if ok else '**FAILED**'} | {seconds:.0f} |")
    for name, ok, _, failures in failed:
        print(f"\n{name} failed:")
        for f in failures:
            print(f"  - {f}")
    print()
    if failed:
        print(f"make bench: FAILED: {len(failed)} of {len(rows)} runs failed "
              f"({', '.join(r[0] for r in failed)}); results in {results}")
        return 1
    print(f"make bench: every benchmark met its targets; results in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
