"""RedisCache's I/O layer in C (ARCHITECTURE "The I/O thread (io_engine.c, io_conn.c)").

The layer below Python (csrc/io_engine.c, io_conn.c, resp.c, respscan.c):
tests/c/io_harness.c is compiled here (gcc, the hiredis headers: what building the
extension needs anyway) and linked with wrapped malloc/calloc/free, so that an
allocation can be made to fail and every freed block inspected — what a Python test
cannot see. See docs/ARCHITECTURE.md, "Failure model".
"""
from __future__ import annotations

import glob
import os
import subprocess
import time

import pytest

from bruno_memory_c.testing import RedisServer
from tests.support import REPO, TESTS



@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> str:
    exe = str(tmp_path_factory.mktemp("io") / "io_harness")
    csrc = os.path.join(REPO, "csrc")
    cmd = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-I", csrc,
           # the I/O layer (every io_*.c) and what it uses: no Python
           *sorted(glob.glob(os.path.join(csrc, "io_*.c"))),
           *(os.path.join(csrc, f) for f in ("resp.c", "respscan.c", "cluster_slot.c")),
           os.path.join(TESTS, "c", "io_harness.c"), "-lhiredis", "-lssl", "-lcrypto",
           "-lpthread", "-lm",
           "-Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free", "-o", exe]
    # The harness is not ours to sanitize: no preloaded ASan runtime in the compiler.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    built = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr
    return exe


def run(harness: str, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    done = subprocess.run([harness, *args], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_reply_cost_scanner(harness):
    """Valid RESP2 scans clean however it is cut into two reads; a bulk, an array
    (64 bytes per element) or a status line over the limit is refused at once; the
    cost is per reply; bytes that are not RESP2 are a protocol error."""
    run(harness, "scan")


def test_a_failed_client_allocation_closes_no_descriptor(harness):
    """Every allocation of a new client failing in turn: no client, and standard input
    (descriptor 0, the initial value of a zeroed client's fd) still open."""
    run(harness, "client-alloc-fail")


@pytest.mark.parametrize("length, db", [(22, 0), (60, 3), (500, 1)])
def test_the_password_is_wiped_before_its_memory_is_freed(harness, length, db):
    """Connect with AUTH (and SELECT), disconnect, let the client go: no block freed on
    the way, or given up by a realloc (the AUTH command built for the handshake, the
    output buffer, the client's copy of the password), still held the password."""
    password = ("Wiped-" + os.urandom(length).hex())[:length]
    with RedisServer(password=password) as server:
        run(harness, "secrets", str(server.port), password, str(db))


def keyslot_cases() -> list[bytes]:
    """Keys for the slot test: hash-tag edge cases, then random ones (random bytes,
    braces placed at random, lengths 0 to 300)."""
    import random

    rng = random.Random(20261129)
    edges = [b"", b"{", b"}", b"{}", b"}{", b"{}{}", b"foo{}{bar}", b"foo{{bar}}zap",
             b"foo{bar}{zap}", b"{bar", b"bar}", b"{user1000}.following", b"x{}", b"{a}",
             b"a{b}c", b"{{}}", b"\x00{\x00}\x00", "caf\u00e9{\u00e9}".encode(), b"123456789",
             b"prefix:{tag}rest", b"{" * 50 + b"}" * 50]
    pieces = [b"{", b"}", b"{}", b"a", b"tag", b":", b"\xff", b"\x00"]
    keys = list(edges)
    for _ in range(400):
        parts = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
                 if rng.random() < 0.5 else rng.choice(pieces)
                 for _ in range(rng.randrange(0, 8))]
        keys.append(b"".join(parts))
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(300))) for _ in range(50)]
    return keys


def test_the_hash_slot_of_a_key_is_redis_own(harness):
    """cluster_slot.c: CRC16-XMODEM modulo 16384 with Redis' hash tags (the first '{',
    the first '}' after it, a non-empty tag), for edge cases and random keys, as a
    cluster-enabled redis-server's CLUSTER KEYSLOT computes it; and the same whatever
    the split of the key into prefix + rest (bio_key_slot2)."""
    keys = keyslot_cases()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    done = subprocess.run([harness, "keyslot"], input="".join(k.hex() + "\n" for k in keys),
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    ours = [int(line) for line in done.stdout.split()]
    assert len(ours) == len(keys)
    with RedisServer(extra_args=("--cluster-enabled", "yes")) as server:
        with server.connect() as s:
            s.sendall(b"".join(b"*3\r\n$7\r\nCLUSTER\r\n$7\r\nKEYSLOT\r\n$%d\r\n%s\r\n"
                               % (len(k), k) for k in keys))
            f = s.makefile("rb")
            theirs = [int(f.readline()[1:]) for _ in keys]
    wrong = [(k, o, t) for k, o, t in zip(keys, ours, theirs) if o != t]
    assert not wrong, wrong[:5]
    assert len(set(theirs)) > 300  # (the keys do spread)


def resp(obj) -> bytes:
    """obj (as RedisServer.command returns replies: lists, bytes, str, int) in RESP2."""
    if isinstance(obj, list):
        return b"*%d\r\n" % len(obj) + b"".join(resp(o) for o in obj)
    if isinstance(obj, int):
        return b":%d\r\n" % obj
    if isinstance(obj, str):
        obj = obj.encode()
    return b"$%d\r\n%s\r\n" % (len(obj), obj)


def slotmap(harness: str, reply: bytes, asked: str = "10.0.0.1", *moved: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    done = subprocess.run([harness, "slotmap", asked, *moved], input=reply, capture_output=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.decode().splitlines()


def expected_lines(ranges) -> list[str]:
    return [f"{start} {end} 127.0.0.1:{port} "
            + (",".join(f"127.0.0.1:{r}" for r in replicas) or "-")
            for start, end, port, replicas in ranges]


def sorted_replicas(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        head, _, replicas = line.rpartition(" ")
        out.append(head + " " + ",".join(sorted(replicas.split(","))))
    return out


def test_the_slot_map_of_a_live_cluster_and_after_a_failover(harness, redis_cluster):
    """io_cluster.c parses a real CLUSTER SLOTS reply into the map the cluster has
    (every slot, each primary's replica), again after a primary is killed and its
    replica promoted; a -MOVED applied to it moves one slot."""
    cluster = redis_cluster
    primary = cluster.primaries[0]
    lines = slotmap(harness, resp(primary.command("CLUSTER", "SLOTS")))
    assert sorted_replicas(lines) == expected_lines(cluster.slots())
    # -MOVED 0 to the primary of the last range: slot 0 alone moves there
    last = cluster.slots()[-1]
    moved = slotmap(harness, resp(primary.command("CLUSTER", "SLOTS")), "x", "0", "127.0.0.1",
                    str(last[2]))
    first = cluster.slots()[0]
    assert moved[0] == f"0 0 127.0.0.1:{last[2]} 127.0.0.1:{last[3][0]}"
    assert moved[1].startswith(f"1 {first[1]} 127.0.0.1:{first[2]} ")
    # a replica named by a -MOVED (promoted): a primary from now on
    moved = slotmap(harness, resp(primary.command("CLUSTER", "SLOTS")), "x", "0", "127.0.0.1",
                    str(first[3][0]))
    assert moved[:2] == [f"0 0 127.0.0.1:{first[3][0]} -", f"1 {first[1]} 127.0.0.1:{first[2]} -"]
    # a new node named by a -MOVED: a primary with no replicas known
    moved = slotmap(harness, resp(primary.command("CLUSTER", "SLOTS")), "x", "16383",
                    "10.9.9.9", "7000")
    assert moved[-1] == "16383 16383 10.9.9.9:7000 -"
    cluster.kill(cluster.node_for_slot(0))
    cluster.wait_ok(30)
    lines = slotmap(harness, resp(cluster.command("CLUSTER", "SLOTS")))
    assert sorted_replicas(lines) == expected_lines(cluster.slots())
    assert len(lines) == 3 and lines[0].endswith(" -")  # (the dead one is not listed)


def node(host, port, *extra):
    return [host, port, *extra]


@pytest.mark.parametrize("reply, expected", [
    # a minimal map: one range, a replica; a node id and Redis 7's metadata ignored
    ([[0, 16383, node("10.0.0.2", 7000, "id1", []), node("10.0.0.3", 7001, "id2")]],
     ["0 16383 10.0.0.2:7000 10.0.0.3:7001"]),
    # several ranges of one node; an unserved gap; the empty ip is the node asked
    ([[0, 9, node("", 7000)], [20, 29, node("", 7000)], [10, 10, node("h", 1)]],
     ["0 9 10.0.0.1:7000 -", "10 10 h:1 -", "20 29 10.0.0.1:7000 -"]),
    # a node whose endpoint is unknown ("?"): its slots unserved, its replica skipped
    ([[0, 5, node("?", 7000)], [6, 6, node("a", 1), node("?", 2)]], ["6 6 a:1 -"]),
    ([], []),
])
def test_slot_map_replies(harness, reply, expected):
    assert slotmap(harness, resp(reply)) == expected


@pytest.mark.parametrize("reply, error", [
    (b"-ERR This instance has cluster support disabled\r\n",
     "CLUSTER SLOTS: ERR This instance has cluster support disabled"),
    (b"+OK\r\n", "CLUSTER SLOTS: not an array"),
    (resp([[5, 4, node("a", 1)]]), "malformed entry 0"),
    (resp([[0, 16384, node("a", 1)]]), "malformed entry 0"),
    (resp([[-1, 3, node("a", 1)]]), "malformed entry 0"),
    (resp([[0, 3]]), "malformed entry 0"),
    (resp([[b"0", 3, node("a", 1)]]), "malformed entry 0"),
    (resp([7]), "malformed entry 0"),
    (resp([[0, 3, node("a", 0)]]), "malformed node in entry 0"),
    (resp([[0, 3, node("a", 65536)]]), "malformed node in entry 0"),
    (resp([[0, 3, node("a\0b", 1)]]), "malformed node in entry 0"),
    (resp([[0, 3, node("a" * 256, 1)]]), "malformed node in entry 0"),
    (resp([[0, 3, ["a"]]]), "malformed node in entry 0"),
    (resp([[0, 3, node("a", b"1")]]), "malformed node in entry 0"),
    (resp([[0, 3, node("a", 1), node("b", 70000)]]), "malformed replica in entry 0"),
    (resp([[0, 3, node("a", 1)], [3, 4, node("b", 1)]]), "slot 3 listed twice"),
    (resp([[0, 3, node("a", 1), node("b", 2)], [4, 4, node("b", 2)]]),
     "a node is both a primary and a replica"),
    (resp([[0, 3, node("a", 1), node("a", 1)]]), "a replica of two primaries"),
    (resp([[0, 3, node("a", 1), node("c", 2)], [4, 4, node("b", 1), node("c", 2)]]),
     "a replica of two primaries"),
    (resp([[s, s, node(f"n{s}", 1)] for s in range(4097)]), "too many nodes"),
])
def test_slot_map_refuses_malformed_replies(harness, reply, error):
    lines = slotmap(harness, reply)
    assert len(lines) == 1 and lines[0].startswith("error: ") and error in lines[0], lines


def test_redirect_replies(harness):
    cases = {
        "MOVED 3999 127.0.0.1:6381": "MOVED 3999 127.0.0.1 6381",
        "ASK 0 10.0.0.5:7000": "ASK 0 10.0.0.5 7000",
        "MOVED 16383 ::1:7000": "MOVED 16383 ::1 7000",
        "MOVED 12 :7000": "MOVED 12  7000",
        "MOVED 12 host.example:7000 extra": "MOVED 12 host.example 7000",
        "TRYAGAIN Multiple keys request during rehashing of slot": "TRYAGAIN 0  0",
        "TRYAGAIN": "TRYAGAIN 0  0",
        "CLUSTERDOWN The cluster is down": "CLUSTERDOWN 0  0",
        "CLUSTERDOWN Hash slot not served": "CLUSTERDOWN 0  0",
        "MOVED 16384 a:1": "none",
        "MOVED -1 a:1": "none",
        "MOVED 1 a": "none",
        "MOVED 1 a:0": "none",
        "MOVED 1 a:65536": "none",
        "MOVED 1 a:12x": "none",
        "MOVED 1": "none",
        "MOVED  1 a:1": "none",
        "MOVED 99999999999999999999 a:1": "none",
        "ASK": "none",
        "MOVEDX 1 a:1": "none",
        "TRYAGAINX": "none",
        "ERR wrong number of arguments": "none",
        "WRONGTYPE Operation against a key": "none",
        f"MOVED 1 {'h' * 256}:1": "none",
        "": "none",
    }
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    done = subprocess.run([harness, "redirect"], input="".join(c + "\n" for c in cases),
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert dict(zip(cases, done.stdout.splitlines())) == cases


def test_a_request_is_cut_into_its_commands(harness):
    """io_cluster_commands: the offsets of each command of resp.c's bytes; bytes left
    over, a command missing, truncated or malformed RESP refused."""
    run(harness, "commands")


def cluster_connect(harness: str, *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    done = subprocess.run([harness, "cluster-connect", *args], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_a_cluster_client_learns_the_map_and_refreshes_it_on_moved(harness, redis_cluster):
    """cfg.cluster: the handshake asks CLUSTER SLOTS (the map: every slot, six nodes);
    a -MOVED reply asks again, once per burst (rate-limited, one at a time)."""
    cluster = redis_cluster
    node = cluster.primaries[0]
    assert cluster_connect(harness, str(node.port), "on") == [
        "connect 0 ", "slots 16384 nodes 6 maps 1"]
    assert cluster_connect(harness, str(node.port), "auto")[1] == "slots 16384 nodes 6 maps 1"
    assert cluster_connect(harness, str(node.port), "off")[1] == "slots 0 nodes 0 maps 0"
    # a key of another node: -MOVED; 200 of them in a burst ask for a map a few times
    key = next(f"k{i}" for i in range(1000) if cluster.node_for_slot(
        cluster.keyslot(f"k{i}")) is not node)
    out = cluster_connect(harness, str(node.port), "on", key, "200")
    assert out[2].startswith("reply 0 MOVED ")
    maps = int(out[3].split()[-1])
    assert 2 <= maps <= 4, out


def test_cluster_auto_on_a_standalone_server_and_on_against_one(harness, redis_server):
    """cluster=None on one server: it connects as before (no map); cluster=True: the
    attempt fails, saying why."""
    port = str(redis_server.port)
    assert cluster_connect(harness, port, "auto") == ["connect 0 ", "slots 0 nodes 0 maps 0"]
    out = cluster_connect(harness, port, "on")
    assert out[0] == (f"connect 2 127.0.0.1:{port} is not a Redis Cluster node (CLUSTER SLOTS: "
                      "ERR This instance has cluster support disabled)")


def test_a_cluster_client_routes_by_slot_and_follows_moved_and_ask(harness, redis_cluster):
    """Routing (the I/O layer alone): a cluster client sends each request
    to its slot's primary (one connection per node); after a slot moved (-MOVED: the
    map is updated, the request re-sent there) and while another is mid-migration
    (-ASK: ASKING + the command at the target), every GET still gets its value."""
    cluster = redis_cluster
    n = 300
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    startup = cluster.primaries[0]
    proc = subprocess.Popen([harness, "cluster-route", str(startup.port), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "set\n"
        for i in range(n):  # every key was written where it belongs
            key = f"key:{i}"
            assert cluster.node_for_slot(cluster.keyslot(key)).command("GET", key) == \
                str(i).encode()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "get 0\n"  # (nothing moved: no redirect)
        slot_moved, slot_asked = cluster.keyslot("key:0"), cluster.keyslot("key:1")
        assert slot_moved != slot_asked
        source = cluster.node_for_slot(slot_moved)
        target = next(p for p in cluster.primaries if p is not source)
        cluster.migrate_slot(slot_moved, target).finish()
        source = cluster.node_for_slot(slot_asked)
        target = next(p for p in cluster.primaries if p is not source)
        migration = cluster.migrate_slot(slot_asked, target)
        assert migration.move_keys() >= 1  # all of its keys: each answers -ASK
        proc.stdin.write("go\n")
        proc.stdin.flush()
        redirects = int(proc.stdout.readline().split()[1])
        assert redirects >= 2
        migration.finish()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("get ")
        # a primary killed; once its replica has taken over (and the client's map
        # refreshes, asked again while the map still names the dead one), every GET
        # gets its value again
        assert startup.command("ROLE")[0] == b"master"
        victim = next(p for p in cluster.primaries if p is not startup)
        for dead in (victim, startup):  # then the client's own connection's node
            cluster.kill(dead)
            cluster.wait_ok(30)
            time.sleep(0.5)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith("get ")
        proc.stdin.close()
        out = proc.stdout.read()
        assert proc.wait(60) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_cluster_client_retries_tryagain_until_the_slot_has_moved(harness, redis_cluster):
    """DEL of two keys of one slot while that slot migrates with one key on each side:
    -TRYAGAIN; the request goes again after a pause (10 ms doubling to 200 ms) until the
    migration is over, then follows the -MOVED: both keys deleted."""
    cluster = redis_cluster
    slot = cluster.keyslot("{t}a")
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries if p is not source)
    for k in ("{t}a", "{t}b"):
        source.command("SET", k, "v")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    proc = subprocess.Popen([harness, "cluster-del", str(source.port), "{t}a", "{t}b"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "connected\n"
        migration = cluster.migrate_slot(slot, target)
        assert migration.move_keys(1) == 1
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(0.5)  # it is answered -TRYAGAIN meanwhile
        migration.finish()
        out, _ = proc.communicate(timeout=60)
        words = out.split()
        assert words[:3] == ["reply", "integer", "2"], out
        assert int(words[4]) >= 3 and int(words[6]) >= 1, out  # retries, redirects
        assert proc.returncode == 0
        assert target.command("EXISTS", "{t}a", "{t}b") == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_cluster_client_tries_each_startup_node_within_one_attempt(harness, redis_cluster):
    """Before any map, the startup nodes are tried in turn within one connect attempt:
    two that refuse, then a live one: connected, the map taken. All refusing: the
    attempt fails with the last one's error."""
    from bruno_memory_c.testing import refused_port

    live = str(redis_cluster.nodes[3].port)
    with refused_port() as a, refused_port() as b:
        assert cluster_connect_startup(harness, str(a), str(b), live) == [
            "connect 0 ", "slots 16384 nodes 6 maps 1"]
        out = cluster_connect_startup(harness, str(a), str(b))
        assert out[0] == f"connect 2 Error 111 connecting to 127.0.0.1:{b}. Connection refused."
        assert out[1] == "slots 0 nodes 0 maps 0"


def cluster_connect_startup(harness: str, *ports: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    done = subprocess.run([harness, "cluster-startup", *ports], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_a_tracking_client_hears_other_clients_writes(harness, redis_server):
    """Tracking (coherent L1, work in progress; the I/O layer only): a client with
    tracking on gets the server to send it invalidations for its prefix (BCAST PREFIX
    tk:, REDIRECT to its own subscriber connection): another client's write under the
    prefix is one message, a write elsewhere none, the client's own write none
    (NOLOOP), FLUSHDB one; its subscriber connection killed, tracking comes back (a
    new subscriber, tracking redirected to it) and the loss is counted. The keys (or
    "flush") reach the listener's bridge as EVENT requests, one per pass of the I/O
    thread; its LISTEN completes when the client closes."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    proc = subprocess.Popen([harness, "track", str(redis_server.port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)

    events: list[str] = []

    def counters(line: str = "stat") -> tuple[int, int, int]:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        numbers, _, delivered = proc.stdout.readline().rstrip("\n").partition(" |")
        events.extend(delivered.split())
        inv, lost, on = numbers.split()[1::2]
        return int(inv), int(lost), int(on)

    try:
        assert proc.stdout.readline() == "tracking\n"
        assert counters() == (0, 0, 1)
        redis_server.command("SET", "tk:a", "1")
        assert counters() == (1, 0, 1) and events == ["keys", "tk:a"]
        redis_server.command("SET", "other:a", "1")
        assert counters() == (1, 0, 1)
        assert counters("own") == (1, 0, 1) and events == ["keys", "tk:a"]
        redis_server.command("MSET", "tk:b", "1", "tk:c", "2")
        assert counters() == (2, 0, 1) and events[2:] == ["keys", "tk:b,tk:c"]
        redis_server.command("FLUSHDB")
        assert counters() == (3, 0, 1) and events[4:] == ["flush"]
        clients = redis_server.command("CLIENT", "LIST").decode().splitlines()
        subscriber = next(c for c in clients if "cmd=subscribe" in c)
        redis_server.command("CLIENT", "KILL", "ID", subscriber.split()[0].split("=")[1])
        for _ in range(100):
            if counters()[1] == 1:
                break
        assert counters() == (3, 1, 1) and events[5:] == ["flush"]  # (the loss)
        redis_server.command("SET", "tk:d", "1")
        assert counters() == (4, 1, 1) and events[6:] == ["keys", "tk:d"]
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
