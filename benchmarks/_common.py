"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import json
import os
import platform
import sys


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
    return {
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
