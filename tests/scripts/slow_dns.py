"""The slow-DNS scenario of redis/test_hostile.py, run in a private mount namespace.

    unshare --mount --propagation private python -m tests.scripts.slow_dns --etc DIR \\
        --name NAME --redis-port PORT --loop asyncio|uvloop --outer-mnt-ns 'mnt:[...]'

Bind-mounts DIR/resolv.conf, DIR/hosts and DIR/nsswitch.conf over the ones in /etc --
only after checking that this process is NOT in the mount namespace of the test
(--outer-mnt-ns), so that the machine's own files are never covered -- then checks
that resolving NAME hangs, and plays the scenario: a cache on NAME connecting while a
cache on 127.0.0.1:PORT (a real redis-server) does 200 sequential gets (stopping at the
first one that fails or takes 2 s). Prints one JSON line with what it saw, which the
test asserts on, and exits at once.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time


def fail(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(2)


def bind_mounts(etc: str, outer_ns: str) -> None:
    here = os.readlink("/proc/self/ns/mnt")
    if here == outer_ns:
        fail(f"not in a private mount namespace ({here}): refusing to bind-mount over /etc")
    for name in ("resolv.conf", "hosts", "nsswitch.conf"):
        src, dst = os.path.join(etc, name), os.path.join("/etc", name)
        if not os.path.exists(dst):
            if name == "nsswitch.conf":
                continue  # glibc's default asks files and dns
            fail(f"{dst} does not exist: nothing to bind-mount over")
        r = subprocess.run(["mount", "--bind", src, dst], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"mount --bind {src} {dst} failed: {r.stderr.strip()}")


def resolution_hangs(name: str, wait: float = 1.0) -> bool:
    """Does getaddrinfo(name) still run after `wait` seconds? (daemon thread: it is
    left to finish, or not, on its own)"""
    done = threading.Event()

    def resolve() -> None:
        try:
            socket.getaddrinfo(name, 6379, type=socket.SOCK_STREAM)
        except OSError:
            pass
        done.set()

    threading.Thread(target=resolve, daemon=True).start()
    return not done.wait(wait)


async def scenario(name: str, redis_port: int) -> dict:
    from bruno_memory_c import CacheError, RedisCache

    fast = RedisCache(host="127.0.0.1", port=redis_port, prefix="dns:", socket_timeout=5.0,
                      connect_timeout=5.0)
    await asyncio.wait_for(fast.connect(), 30)
    await asyncio.wait_for(fast.set("k", "v"), 30)
    slow = RedisCache(host=name, port=6379, prefix="dns:", socket_timeout=1.0,
                      connect_timeout=1.0)
    started = time.monotonic()
    slow_task = asyncio.ensure_future(slow.get("k"))  # connects first: resolves the name
    await asyncio.sleep(0.2)                          # the resolution is under way
    latencies, ok = [], 0
    for _ in range(200):
        t0 = time.monotonic()
        value = await asyncio.wait_for(fast.get("k"), 60)
        latencies.append(time.monotonic() - t0)
        ok += value == "v"
        if value != "v" or latencies[-1] >= 2.0:
            break  # failed already: no need to wait out every stall of the resolver
    outcome, error = "?", ""
    try:
        r = await asyncio.wait_for(slow_task, 60)
        outcome = "None" if r is None else f"value {r!r}"
    except CacheError as e:
        outcome, error = "CacheError", str(e)
    except asyncio.TimeoutError:
        outcome = "hung (60 s)"
    except Exception as e:  # noqa: BLE001 - reported to the test
        outcome, error = type(e).__name__, str(e)
    slow_elapsed = time.monotonic() - started
    # No disconnect(): with the resolver stalled it could only add the stall again;
    # the process exits right after reporting (main()).
    return {"fast_n": len(latencies), "fast_ok": ok, "fast_max_latency": max(latencies),
            "slow_outcome": outcome, "slow_error": error, "slow_elapsed": slow_elapsed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--etc", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--outer-mnt-ns", required=True)
    args = ap.parse_args()
    bind_mounts(args.etc, args.outer_mnt_ns)
    result = {"resolution_hung": resolution_hangs(args.name)}
    if result["resolution_hung"]:
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        else:
            factory = asyncio.SelectorEventLoop
        with asyncio.Runner(loop_factory=factory) as runner:
            result.update(runner.run(scenario(args.name, args.redis_port)))
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)  # a cache may still be resolving: do not wait for anything


if __name__ == "__main__":
    main()
