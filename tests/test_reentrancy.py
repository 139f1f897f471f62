"""Python code that runs while the bridges are being swept (see docs/ARCHITECTURE.md,
"The loop bridge").

Dropping the requests of a closed loop releases what they hold: the key's __del__
may run anything, including a new event loop (in another thread) on another cache,
whose bridge is made by sweeping the bridges again — while the sweep that is
dropping waits. The sweeps used
to hold a borrowed bridge and an index into the list the nested sweep changed: a
use-after-free (a segfault under PYTHONMALLOC=debug, 3 runs out of 3).
"""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts",
                      "reentrant_sweep.py")


def test_a_sweep_inside_a_sweep():
    env = dict(os.environ)
    if "libasan" not in env.get("LD_PRELOAD", ""):
        env["PYTHONMALLOC"] = "debug"  # freed memory is poisoned: a use of it crashes
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-3000:])
    assert done.stdout.split() == ["ok", "250"], done.stdout
