"""Core: Python code run while the bridges are swept (ARCHITECTURE "The loop bridge (bridge.c)").

Dropping the requests of a closed loop releases what they hold: the key's __del__
may run anything, including a new event loop (in another thread) on another cache,
whose bridge is made by sweeping the bridges again — while the sweep that is
dropping waits. The sweeps used
to hold a borrowed bridge and an index into the list the nested sweep changed: a
use-after-free (a segfault under PYTHONMALLOC=debug, 3 runs out of 3).
"""
from __future__ import annotations

import os

from tests.support import run_script


def run_with_poisoned_frees(name: str) -> str:
    """Run tests/scripts/<name>.py under PYTHONMALLOC=debug (freed memory is poisoned: a
    use of it crashes; not under ASan, which checks that itself); it must exit 0.
    Returns its output."""
    env = dict(os.environ)
    if "libasan" not in env.get("LD_PRELOAD", ""):
        env["PYTHONMALLOC"] = "debug"
    done = run_script(name, env=env)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-3000:])
    return done.stdout


def test_a_sweep_inside_a_sweep():
    assert run_with_poisoned_frees("reentrant_sweep").split() == ["ok", "250"]


def test_the_running_loop_set_again_while_a_bridge_is_looked_up():
    """rc_bridge reads the running-loop holder (3.11) before running Python code that
    may replace it; a review found it keeping a reference to the freed one
    (heap-use-after-free under AddressSanitizer). It now holds it throughout."""
    assert run_with_poisoned_frees("running_loop_reset").split() == ["ok"]


def test_a_bridge_made_by_a_nested_call_is_not_lost():
    """Making a bridge runs Python code (the sweep drops requests: __del__), which may
    make a bridge for the same loop: one of the two used to replace the other in the
    dict, never retired, so the requests in flight on it when its loop closed were
    never dropped (a review: the cache they hold was never freed)."""
    assert run_with_poisoned_frees("nested_bridge").split() == ["ok"]
