#!/usr/bin/env python
"""Mutation check: does the test suite notice when the C code is deliberately broken?

    .venv/bin/python tools/mutants.py [--only NAME ...] [--list] [--keep] [--rev REV]

(`make mutants`; not part of CI: it takes 10-15 minutes on a 2-core machine.)

Each mutant below is a deliberate defect of csrc/*.c: one or more exact text
substitutions, each of which must match its file exactly once. If a pattern no longer
matches (the code was refactored), the script stops before building anything and says
which: a mutant is never skipped silently. Everything happens in a scratch copy of the
repository under /tmp (the files git tracks or would track, from the work tree, or from
--rev REV with `git archive`); the repository itself is never built or written to.

In the copy:

1. the unmutated extension is built (`BRUNO_WERROR=1 <python> setup.py build_ext
   --inplace`, with the interpreter running this script: the project's .venv);
2. for each mutant: its substitutions are applied, the extension rebuilt, and the
   mutant's test files run with `pytest -x -n 4` (from the copy, the copy first on
   sys.path). A plugin loaded into every pytest process (the xdist workers included)
   records which `bruno_memory_c._core` it imported: every process must have imported
   the copy's file with the SHA-256 of the build just made, or the run is an error.
   Tests pass: the mutant SURVIVED. A test fails: it is KILLED, by that test;
3. the tests that killed a mutant are run again on the unmutated build (the saved
   baseline binary): a test that fails there too proves nothing, and its mutant is
   reported as inconclusive.

Prints a table (mutant, verdict, the test that killed it) and, for each survivor, the
claim of README/ARCHITECTURE that no test checks; --json PATH also writes it with the
details. Exit status: 1 if a mutant survived; else 2 if a result is inconclusive (a
build failed, a run errored or timed out, a killing test also fails without the
mutant); else 0.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclasses.dataclass
class Mutant:
    name: str
    what: str                            # the defect, in words
    claim: str                           # what README/ARCHITECTURE promise it breaks
    edits: list[tuple[str, str, str]]    # (file, exact old text, new text)
    tests: list[str]                     # test files to run (relative to the repository)


MUTANTS = [
    Mutant(
        "ex-for-px",
        "a fractional ttl >= 1 s is stored with EX (whole seconds, truncated) instead of "
        "PX (milliseconds)",
        "README, RedisCache storage: a truthy ttl is stored with `SET ... EX seconds` "
        "(`PX` milliseconds for a fractional ttl); Differences, 9: a fractional ttl works "
        "(`PX` milliseconds)",
        [("csrc/rc_commands.c",
          "    if (v == floor(v)) {\n        *mode = 1;",
          "    if (v == floor(v) || v >= 1) {\n        *mode = 1;")],
        ["tests/redis/test_redis.py", "tests/redis/test_redis_interop.py"]),
    Mutant(
        "flush-every-pass",
        "the I/O thread sends its statistics flush (HINCRBY) on every pass of its loop "
        "instead of at most once a second",
        "README, Differences, 5: `get` costs one round trip, not two: statistics "
        "increments are batched; ARCHITECTURE: sent once a second by the thread",
        [("csrc/io_conn.c",
          "        if (c->next_flush <= now) {\n            io_append_stats_flush(c, now);",
          "        if (1) {\n            io_append_stats_flush(c, now);")],
        ["tests/dropin/test_readme_claims.py", "tests/redis/test_redis.py", "tests/redis/test_hardening.py"]),
    Mutant(
        "doubled-timeout",
        "a command's reply is due 2 x socket_timeout after it is sent",
        "README, socket_timeout: a command's reply is due within this long after it is "
        "sent; Failures: a server that stops answering costs each request at most "
        "socket_timeout",
        [("csrc/io_conn.c",
          "    r->deadline = now + c->cfg.socket_timeout;\n    r->sent = 1;",
          "    r->deadline = now + 2 * c->cfg.socket_timeout;\n    r->sent = 1;")],
        ["tests/redis/test_hostile.py", "tests/redis/test_hardening.py", "tests/redis/test_redis_faults.py"]),
    Mutant(
        "lru-off-by-one",
        "InMemoryCache evicts only when it holds more than max_size + 1 entries",
        "README, max_size: past it, the least recently used entry is evicted",
        [("csrc/inmemory.c",
          "    while ((Py_ssize_t)self->table.size > self->max_size) {",
          "    while ((Py_ssize_t)self->table.size - 1 > self->max_size) {"),
         ("csrc/inmemory.c",
          "    if ((Py_ssize_t)self->table.size >= self->max_size && self->table.size > 0) {",
          "    if ((Py_ssize_t)self->table.size - 1 >= self->max_size && self->table.size > 0) {")],
        ["tests/inmemory/test_inmemory.py", "tests/dropin/test_differential.py"]),
    Mutant(
        "promote-ignores-pttl",
        "MultiLevelCache promotes an L2 hit with L1's default ttl, ignoring the "
        "remaining PTTL of the Redis entry",
        "README, Differences, 10: a value promoted from L2 never outlives its L2 entry "
        "in L1 (its remaining PTTL)",
        [("csrc/ml_l2.c",
          "        until = via->issued + (double)*pttl / 1000.0;",
          "        until = INFINITY;")],
        ["tests/multilevel/test_multilevel.py", "tests/multilevel/test_multilevel_faults.py"]),
    # ---- what the hardening (issue 10) made important
    Mutant(
        "backoff-not-doubling",
        "reconnect attempts back off 50 ms every time instead of doubling to 2 s",
        "README, Failures: a backoff of 50 ms doubling to 2 s, so a server that closes "
        "every connection cannot make the cache reconnect in a loop",
        [("csrc/io_conn.c",
          "fmin(c->backoff * 2, BACKOFF_MAX)",
          "fmin(c->backoff * 1, BACKOFF_MAX)")],
        ["tests/redis/test_hostile.py", "tests/redis/test_redis_faults.py"]),
    Mutant(
        "scanner-ignores-elements",
        "the reply-cost scanner does not count 64 bytes per declared array element",
        "README, max_reply_bytes: what one reply may cost, its bytes plus 64 per array "
        "element (a reply of many arrays, each under the limit, adds up)",
        [("csrc/respscan.c",
          "    s->cost += s->number * RESP_ELEMENT_COST;\n",
          "    (void)0;  /* mutant: array elements cost nothing */\n")],
        ["tests/redis/test_io_layer.py", "tests/redis/test_hostile.py"]),
    Mutant(
        "scan-progress-unchecked",
        "a SCAN cursor that does not advance (read bit-reversed) is not an error: only "
        "the 2^20-step cap ends the loop",
        "README, Failures: a server that answers SCAN with a non-zero cursor for ever "
        "ends a clear() with an error (ARCHITECTURE: a cursor that does not advance, "
        "read bit-reversed, is an error at once)",
        [("csrc/rc_commands.c",
          "    if (rev <= pos->rev) {",
          "    if (0 && rev <= pos->rev) {")],
        ["tests/redis/test_hostile.py", "tests/redis/test_hardening.py"]),
    Mutant(
        "cancelled-clear-goes-on",
        "a clear() cancelled keeps paging through SCAN + DEL (this check is what stops "
        "one cancelled during its first step, DBSIZE + SCAN 0: a later step also stops "
        "because the abandoned awaitable no longer holds the SCAN position)",
        "README, Failures: a clear() whose awaitable is cancelled stops at its next "
        "SCAN step (also when cancelled before its first reply)",
        [("csrc/rc_commands.c",
          "    if (call->aw->state == AW_DONE) {\n"
          "        Py_RETURN_NONE;  /* abandoned: no further step */",
          "    if (0) {\n"
          "        Py_RETURN_NONE;  /* abandoned: no further step */")],
        ["tests/redis/test_hardening.py", "tests/redis/test_hostile.py"]),
    # (Not a mutant: the check of bytes arriving while no reply is owed, at the top of
    # do_read. Without it, a whole reply still fails on_reply and a partial one the
    # check below, which is what the mutant removes.)
    Mutant(
        "partial-reply-after-last-kept",
        "the start of a reply nobody asked for, arriving with the last reply owed, is "
        "kept in the parser (glued onto the next reply) instead of dropping the connection",
        "ARCHITECTURE: bytes arriving when nothing was asked (whole or partial, alone or "
        "after the last reply owed) drop the connection",
        [("csrc/io_conn.c",
          "    if (c->r_count == 0 && resp_scan_busy(&c->scan)) {",
          "    if (0 && c->r_count == 0 && resp_scan_busy(&c->scan)) {")],
        ["tests/redis/test_hostile.py"]),
]

#: Loaded into every pytest process of a run (-p): records the extension it imports.
GUARD_PLUGIN = '''\
"""tools/mutants.py: which bruno_memory_c._core does this pytest process import?"""
import hashlib
import os


def pytest_configure(config):
    import bruno_memory_c._core as core

    path = os.path.realpath(core.__file__)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    with open(os.environ["BRUNO_MUTANT_CHECKIN"], "a") as f:
        f.write(f"{worker} {os.getpid()} {digest} {path}\\n")
'''


class Abort(Exception):
    """Stop the whole check (exit 2) with this message."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ scratch copy


def make_copy(dest: str, rev: str | None) -> None:
    """The repository's files in `dest`: those git tracks or would track (not ignored)
    from the work tree, or the tree of `rev`."""
    if rev:
        archive = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", rev],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
        return
    out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    for rel in sorted(set(filter(None, out.decode().split("\0")))):
        src = os.path.join(ROOT, rel)
        if not os.path.lexists(src):  # deleted in the work tree
            continue
        dst = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


def check_patterns(copy: str, mutants: list[Mutant]) -> dict[str, str]:
    """Every substitution of every mutant matches its file exactly once (and the
    mutant's test files exist). Returns the pristine text of every file concerned."""
    pristine: dict[str, str] = {}
    problems = []
    for m in mutants:
        for rel, old, new in m.edits:
            if rel not in pristine:
                try:
                    with open(os.path.join(copy, rel)) as f:
                        pristine[rel] = f.read()
                except OSError as e:
                    problems.append(f"{m.name}: {rel}: {e}")
                    continue
            n = pristine[rel].count(old)
            if n != 1:
                problems.append(f"{m.name}: {rel}: the pattern matches {n} times "
                                f"(must be exactly once):\n{textwrap.indent(old, '    | ')}")
            if old == new:
                problems.append(f"{m.name}: {rel}: the substitution changes nothing")
        for t in m.tests:
            if not os.path.isfile(os.path.join(copy, t)):
                problems.append(f"{m.name}: test file {t} does not exist")
    if problems:
        raise Abort("mutant patterns no longer match the code (update tools/mutants.py):\n"
                    + "\n".join(problems))
    return pristine


def apply(copy: str, pristine: dict[str, str], m: Mutant | None) -> None:
    """Put every file back as it was, then apply m's substitutions (None: none)."""
    texts = dict(pristine)
    for rel, old, new in (m.edits if m else []):
        assert texts[rel].count(old) == 1, (m.name, rel)
        texts[rel] = texts[rel].replace(old, new)
    for rel, text in texts.items():
        path = os.path.join(copy, rel)
        with open(path) as f:
            current = f.read()
        if current != text:
            with open(path, "w") as f:
                f.write(text)


# ------------------------------------------------------------------ build and run


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build(copy: str, python: str, ext_path: str, log_path: str) -> tuple[bool, str]:
    """Rebuild the extension in the copy. (ok, the compiler's complaint or '')."""
    if os.path.exists(ext_path):
        os.unlink(ext_path)
    env = dict(os.environ, BRUNO_WERROR="1")
    for k in ("BRUNO_ASAN", "BRUNO_DEBUG"):
        env.pop(k, None)
    with open(log_path, "w") as out:
        p = subprocess.run([python, "setup.py", "-q", "build_ext", "--inplace", "--force",
                            "--build-temp", os.path.join("build", "mutants")],
                           cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT)
    if p.returncode != 0 or not os.path.exists(ext_path):
        with open(log_path) as f:
            lines = [ln for ln in f.read().splitlines() if "error" in ln.lower()]
        return False, (lines[0] if lines else f"build exited {p.returncode}")
    return True, ""


def test_env(copy: str, scratch: str, checkin: str) -> dict:
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join([copy, os.path.join(scratch, "plugin")])
    env["BRUNO_VENV"] = os.path.dirname(os.path.dirname(sys.executable))
    env["BRUNO_MUTANT_CHECKIN"] = checkin
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@dataclasses.dataclass
class RunResult:
    status: str               # "passed", "failed", "error", "timeout"
    failed: list[str]         # node ids of failed tests
    detail: str
    seconds: float
    tests_run: int


def junit_failures(path: str, copy: str) -> tuple[list[str], int]:
    """(node ids of failed or errored tests, number of tests) from a JUnit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return [], 0
    failed, total = [], 0
    for case in root.iter("testcase"):
        total += 1
        if case.find("failure") is None and case.find("error") is None:
            continue
        parts = case.get("classname", "").split(".")
        node = None
        for i in range(len(parts), 0, -1):
            rel = "/".join(parts[:i]) + ".py"
            if os.path.isfile(os.path.join(copy, rel)):
                node = "::".join([rel, *parts[i:], case.get("name", "?")])
                break
        failed.append(node or f"{case.get('classname')}::{case.get('name')}")
    return failed, total


def run_tests(copy: str, python: str, scratch: str, tag: str, args: list[str], *,
              stop_first: bool, workers: int, timeout: float, expect_sha: str) -> RunResult:
    """pytest in the copy on `args` (files or node ids); checks the extension imported."""
    checkin = os.path.join(scratch, f"checkin-{tag}.txt")
    junit = os.path.join(scratch, f"junit-{tag}.xml")
    out_path = os.path.join(scratch, f"pytest-{tag}.log")
    for p in (checkin, junit):
        if os.path.exists(p):
            os.unlink(p)
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutant_guard",
           "-n", str(workers), "-rfE", f"--junitxml={junit}", "-o", "junit_family=xunit1"]
    if stop_first:
        cmd.append("-x")
    cmd += args
    started = time.monotonic()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=copy, env=test_env(copy, scratch, checkin),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # pytest, its workers, their children
            proc.wait()
            rc = None
        except BaseException:  # (Ctrl-C: its own session did not get the signal)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    seconds = time.monotonic() - started
    with open(out_path) as f:
        output = f.read()
    tail = "\n".join(output.strip().splitlines()[-15:])
    if rc is None:
        return RunResult("timeout", [], f"no result after {timeout:.0f} s (log: {out_path})",
                         seconds, 0)
    # Every pytest process (controller and workers) imported the build just made.
    try:
        with open(checkin) as f:
            rows = [ln.split(" ", 3) for ln in f.read().splitlines() if ln]
    except OSError:
        rows = []
    procs = {r[0] for r in rows}
    wrong = [r for r in rows if len(r) != 4 or r[2] != expect_sha
             or not r[3].startswith(os.path.join(copy, "bruno_memory_c") + os.sep)]
    # (the controller, and with xdist at least one worker: the ones running tests)
    if wrong or "controller" not in procs or (workers > 0 and len(procs) < 2):
        return RunResult("error", [], "the extension imported is not the copy's fresh build: "
                         f"{rows!r}\n{tail}", seconds, 0)
    failed, total = junit_failures(junit, copy)
    if rc == 0 and not failed and total > 0:
        return RunResult("passed", [], "", seconds, total)
    if rc in (1, 2) and failed:  # (xdist's -x ends the session as interrupted: 2)
        return RunResult("failed", failed, "", seconds, total)
    return RunResult("error", failed, f"pytest exited {rc} ({total} tests in the report); "
                     f"log {out_path}:\n{tail}", seconds, total)


# ------------------------------------------------------------------ main


def short(node: str) -> str:
    return node.replace("tests/", "", 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--keep", action="store_true", help="keep the scratch copy (and its logs)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--rev", help="copy this git revision instead of the work tree")
    p.add_argument("--workers", type=int, default=4, help="pytest-xdist workers (default 4)")
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds one mutant's test run may take (default 900)")
    opts = p.parse_args(argv)

    mutants = MUTANTS
    if opts.only:
        unknown = set(opts.only) - {m.name for m in MUTANTS}
        if unknown:
            p.error(f"unknown mutants: {', '.join(sorted(unknown))}")
        mutants = [m for m in MUTANTS if m.name in opts.only]
    if opts.list:
        for m in mutants:
            log(f"{m.name}: {m.what}\n    files: {', '.join(sorted({e[0] for e in m.edits}))}"
                f"\n    tests: {' '.join(m.tests)}")
        return 0

    python = sys.executable
    ext_suffix = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    scratch = tempfile.mkdtemp(prefix="bruno-mutants-", dir="/tmp")
    copy = os.path.join(scratch, "repo")
    os.makedirs(copy)
    os.makedirs(os.path.join(scratch, "plugin"))
    with open(os.path.join(scratch, "plugin", "mutant_guard.py"), "w") as f:
        f.write(GUARD_PLUGIN)
    ext_path = os.path.join(copy, "bruno_memory_c", "_core" + ext_suffix)
    started = time.monotonic()
    results = []
    try:
        log(f"# mutation check: {len(mutants)} mutants, scratch copy {copy} "
            f"({'revision ' + opts.rev if opts.rev else 'work tree of ' + ROOT})")
        make_copy(copy, opts.rev)
        pristine = check_patterns(copy, mutants)

        # The unmutated build, kept aside for step 3.
        ok, why = build(copy, python, ext_path, os.path.join(scratch, "build-baseline.log"))
        if not ok:
            raise Abort(f"the unmutated extension does not build: {why}")
        baseline_so = os.path.join(scratch, "baseline" + ext_suffix)
        shutil.copy2(ext_path, baseline_so)
        baseline_sha = sha256(ext_path)
        probe = subprocess.run(
            [python, "-c", "import os, bruno_memory_c._core as c; "
                           "print(os.path.realpath(c.__file__))"],
            cwd=copy, env=test_env(copy, scratch, os.devnull), capture_output=True, text=True)
        if probe.returncode != 0 or probe.stdout.strip() != os.path.realpath(ext_path):
            raise Abort(f"the copy's extension is not the one imported: {probe.stdout}"
                        f"{probe.stderr}")
        log(f"# baseline built ({baseline_sha[:12]}), imported from {probe.stdout.strip()}")

        for m in mutants:
            t0 = time.monotonic()
            apply(copy, pristine, m)
            ok, why = build(copy, python, ext_path,
                            os.path.join(scratch, f"build-{m.name}.log"))
            row = {"mutant": m.name, "what": m.what, "claim": m.claim, "tests": m.tests}
            if not ok:
                row.update(verdict="build failed", by=why, seconds=time.monotonic() - t0)
            else:
                sha = sha256(ext_path)
                if sha == baseline_sha:
                    row.update(verdict="error", by="the mutant builds to the same binary",
                               seconds=time.monotonic() - t0)
                else:
                    r = run_tests(copy, python, scratch, m.name, m.tests, stop_first=True,
                                  workers=opts.workers, timeout=opts.timeout,
                                  expect_sha=sha)
                    verdict = {"passed": "SURVIVED", "failed": "killed"}.get(r.status,
                                                                              r.status)
                    row.update(verdict=verdict, failed=r.failed, tests_run=r.tests_run,
                               by=short(r.failed[0]) if r.failed else r.detail,
                               seconds=time.monotonic() - t0)
            results.append(row)
            log(f"{m.name}: {row['verdict']} {row['by'] if row['verdict'] != 'SURVIVED' else ''}"
                f" ({row['seconds']:.0f} s)")
        apply(copy, pristine, None)

        # 3. The killing tests must pass without the mutant.
        killers = sorted({n for r in results if r["verdict"] == "killed" for n in r["failed"]})
        if killers:
            shutil.copy2(baseline_so, ext_path)
            r = run_tests(copy, python, scratch, "baseline", killers, stop_first=False,
                          workers=min(opts.workers, len(killers)), timeout=opts.timeout,
                          expect_sha=baseline_sha)
            if r.status == "passed":
                log(f"# the {len(killers)} killing tests pass without the mutants")
            elif r.status == "failed":
                for row in results:
                    bad = [n for n in row.get("failed", []) if n in r.failed]
                    if row["verdict"] == "killed" and len(bad) == len(row["failed"]):
                        row["verdict"] = "inconclusive"
                        row["by"] = f"{short(bad[0])} fails without the mutant too"
            else:
                raise Abort(f"re-running the killing tests without the mutants: {r.detail}")
    except Abort as e:
        log(f"mutants.py: {e}")
        return 2
    finally:
        if opts.keep:
            log(f"# scratch copy kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    # ---- report
    log()
    log(f"## Mutation check ({len(results)} mutants, {time.monotonic() - started:.0f} s)")
    log()
    log("| mutant | defect | verdict | killed by | s |")
    log("|---|---|---|---|---:|")
    for row in results:
        by = row["by"] if row["verdict"] != "SURVIVED" else \
            f"— ({row.get('tests_run', 0)} tests of {', '.join(map(short, row['tests']))} pass)"
        log(f"| {row['mutant']} | {row['what']} | **{row['verdict']}** | {by} "
            f"| {row['seconds']:.0f} |")
    survived = [r for r in results if r["verdict"] == "SURVIVED"]
    unclear = [r for r in results if r["verdict"] not in ("SURVIVED", "killed")]
    if survived:
        log()
        log("Survivors: no test checks these claims:")
        for r in survived:
            log(f"- {r['mutant']}: {r['claim']}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    log()
    if survived:
        log(f"FAIL: {len(survived)} of {len(results)} mutants survived")
        return 1
    if unclear:
        log(f"FAIL: {len(unclear)} of {len(results)} results are inconclusive")
        return 2
    log(f"OK: all {len(results)} mutants killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
