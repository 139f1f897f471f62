/* io_harness.c: tests of the I/O layer (csrc/io_*.c, resp.c, respscan.c) below Python.
 *
 * Built and run by tests/test_io_layer.py, linked with --wrap=malloc,calloc,realloc,free
 * so that allocations can be made to fail and freed blocks inspected:
 *   scan                      the reply-cost scanner on valid and invalid RESP, cut
 *                             into every possible pair of chunks
 *   client-alloc-fail         every allocation of bio_client_new failing in turn:
 *                             NULL, and no file descriptor (standard input!) closed
 *   secrets PORT PASSWORD DB  connect with AUTH (and SELECT DB) to a redis-server,
 *                             disconnect, let the client go: no block freed (or given
 *                             up by realloc) meanwhile held the password
 *   keyslot                   cluster_slot.c: known CRC16/slot values, then for each
 *                             line of standard input (a key in hex) its slot, one a
 *                             line (every split of the key into prefix + rest giving
 *                             the same); the test compares with CLUSTER KEYSLOT
 *   slotmap HOST [SLOT H P]   io_cluster.c: a CLUSTER SLOTS reply (RESP on standard
 *                             input, asked of HOST) parsed into a slot map (then a
 *                             -MOVED SLOT H:P applied), printed as "start end
 *                             host:port replica,..." per run of slots, or "error: ..."
 *   redirect                  each line of standard input an error reply's text:
 *                             "KIND SLOT HOST PORT" or "none"
 *   commands                  io_cluster_commands on built and on broken RESP
 *   cluster-connect PORT on|auto|off [KEY N]
 *                             a client connects (cfg.cluster as said) and prints
 *                             "slots S nodes N maps M" (its counters); with KEY, sends
 *                             N requests GET KEY (one node's -MOVED) and prints the
 *                             first reply, and the counters again after 0.5 s
 *   cluster-route PORT N      a cluster client (cfg.cluster on) routes N SETs then,
 *                             three times, N GETs of keys "key:I" (each request naming
 *                             its slot): prints "set", then "get R" per round (R: the
 *                             redirects followed), reading a line from standard input
 *                             before each round, until its end (the test reshards,
 *                             kills a primary meanwhile)
 *   cluster-startup P0 P1 ...  a cluster client for 127.0.0.1:P0 with startup nodes
 *                             127.0.0.1:P1 ...: connects, prints "connect STATUS ERR"
 *                             and its counters
 *   cluster-del PORT K1 K2    a cluster client connects, reads a line, sends DEL K1
 *                             K2 (one slot) and prints "reply TYPE INTEGER-OR-TEXT
 *                             retries R redirects D"
 * Prints "ok" and exits 0, or says what failed and exits 1. */
#define _GNU_SOURCE
#include "cluster_slot.h"
#include "io.h"
#include "io_internal.h"
#include "respscan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <malloc.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ allocator */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);

static int fail_at = -1;        /* fail the fail_at-th allocation from now (0 = next) */
static int allocs;
static const char *secret;      /* freed blocks must not hold it */
static size_t secret_len;
static volatile int secret_seen;

static int
should_fail(void)
{
    return fail_at >= 0 && allocs++ == fail_at;
}

void *
__wrap_malloc(size_t n)
{
    return should_fail() ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t n, size_t m)
{
    return should_fail() ? NULL : __real_calloc(n, m);
}

/* Does the block p (about to be freed, or given up by realloc) hold the secret? */
static void
inspect_block(void *p)
{
    if (p != NULL && secret != NULL) {
        size_t n = malloc_usable_size(p);
        if (n >= secret_len && memmem(p, n, secret, secret_len) != NULL) {
            secret_seen = 1;
        }
    }
}

void
__wrap_free(void *p)
{
    inspect_block(p);
    __real_free(p);
}

void *
__wrap_realloc(void *p, size_t n)
{
    inspect_block(p);  /* (it may move: then the old block is freed as it is) */
    return should_fail() ? NULL : __real_realloc(p, n);
}

static int failures;

static void
check(int ok, const char *what)
{
    if (!ok) {
        printf("FAILED: %s\n", what);
        failures++;
    }
}

/* ------------------------------------------------------------------ scan */

static int
scan_all(const char *p, size_t n, unsigned long long max, size_t cut)
{
    resp_scan s;
    resp_scan_init(&s);
    int rc = resp_scan_feed(&s, p, cut, max);
    if (rc == RESP_SCAN_OK) {
        rc = resp_scan_feed(&s, p + cut, n - cut, max);
    }
    if (rc == RESP_SCAN_OK && (s.depth != 0 || s.in_line || s.bulk_left != 0)) {
        return -1;  /* a whole reply should leave the scanner between replies */
    }
    return rc;
}

/* The scanner's verdict on p (NUL-terminated), the same for every chunking. */
static void
expect(const char *p, unsigned long long max, int want, const char *what)
{
    size_t n = strlen(p);
    for (size_t cut = 0; cut <= n; cut++) {
        int got = scan_all(p, n, max, cut);
        if (got != want) {
            printf("FAILED: %s: cut at %zu gives %d, not %d\n", what, cut, got, want);
            failures++;
            return;
        }
    }
}

static void
test_scan(void)
{
    const unsigned long long big = 1 << 20;
    expect("+OK\r\n", big, RESP_SCAN_OK, "status");
    expect("-ERR no\r\n", big, RESP_SCAN_OK, "error");
    expect(":-2\r\n:12345\r\n", big, RESP_SCAN_OK, "integers");
    expect("$5\r\nhello\r\n$-1\r\n$0\r\n\r\n", big, RESP_SCAN_OK, "bulks and nil");
    expect("*2\r\n$1\r\n0\r\n*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", big, RESP_SCAN_OK,
           "SCAN reply");
    expect("*-1\r\n*0\r\n", big, RESP_SCAN_OK, "nil and empty arrays");
    expect("*2\r\n*2\r\n:1\r\n*1\r\n$3\r\nabc\r\n+x\r\n", big, RESP_SCAN_OK, "nesting");
    expect("$5\r\nhel\r\n\r\n", big, RESP_SCAN_OK, "CRLF inside a bulk payload");
    /* limits */
    expect("$2000\r\n", 1024, RESP_SCAN_TOO_BIG, "bulk over the limit, at its header");
    expect("*100000000\r\n", 512ULL << 20, RESP_SCAN_TOO_BIG,
           "100M-element array over 512 MiB at its header");
    expect("*10\r\n:1\r\n", 10 * RESP_ELEMENT_COST - 1, RESP_SCAN_TOO_BIG, "elements cost");
    /* elements add up across the arrays of one reply: each array alone is under the
     * limit (9 x 64 bytes), the reply is not (2 + 9 + 9 elements) */
    expect("*2\r\n*9\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n"
           "*9\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n",
           16 * RESP_ELEMENT_COST, RESP_SCAN_TOO_BIG, "elements of nested arrays add up");
    expect("*2\r\n*9\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n"
           "*9\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n",
           24 * RESP_ELEMENT_COST, RESP_SCAN_OK, "the same reply under a limit of 24 elements");
    expect("+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 16, RESP_SCAN_TOO_BIG,
           "status line over the limit");
    /* the cost is per reply: many small replies never add up */
    {
        char buf[4096];
        size_t n = 0;
        for (int i = 0; i < 200; i++) {
            n += (size_t)snprintf(buf + n, sizeof buf - n, "$5\r\nhello\r\n");
        }
        buf[n] = '\0';
        expect(buf, 64, RESP_SCAN_OK, "200 small replies under a 64-byte limit");
    }
    /* not RESP */
    expect("hello\r\n", big, RESP_SCAN_PROTOCOL, "no type byte");
    expect("$abc\r\n", big, RESP_SCAN_PROTOCOL, "length not a number");
    expect("$-2\r\n", big, RESP_SCAN_PROTOCOL, "negative length");
    expect("*\r\n", big, RESP_SCAN_PROTOCOL, "no length");
    expect("+OK\rX", big, RESP_SCAN_PROTOCOL, "CR without LF");
    expect("$99999999999999999999\r\n", ~0ULL, RESP_SCAN_PROTOCOL, "20-digit length");
    expect("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", big, RESP_SCAN_OK,
           "8 nested arrays, as deep as hiredis goes");
    expect("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", big,
           RESP_SCAN_PROTOCOL, "nesting deeper than hiredis takes");
    {
        resp_scan s;
        resp_scan_init(&s);
        check(resp_scan_feed(&s, "+OK\r\n$3\r", 8, big) == RESP_SCAN_OK && resp_scan_busy(&s),
              "a reply begun is seen as begun");
        check(resp_scan_feed(&s, "\nabc\r\n", 6, big) == RESP_SCAN_OK && !resp_scan_busy(&s),
              "and finished when it is");
    }
}

/* ------------------------------------------------------------------ client alloc */

static bio_config
config(const char *host, int port, const char *password, int db)
{
    bio_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.host = (char *)host;
    cfg.port = port;
    cfg.username = NULL;
    cfg.password = (char *)password;
    cfg.password_len = password ? strlen(password) : 0;
    cfg.db = db;
    cfg.connect_timeout = 5;
    cfg.socket_timeout = 5;
    cfg.stats_key = "t:stats";
    cfg.stats_key_len = 7;
    cfg.max_reply = 1 << 20;
    return cfg;
}

static void
test_client_alloc_fail(void)
{
    bio_config cfg = config("127.0.0.1", 6379, "secret", 0);
    int made = 0;
    for (int k = 0; k < 32 && !made; k++) {
        allocs = 0;
        fail_at = k;
        bio_client *c = bio_client_new(&cfg);
        fail_at = -1;
        check(fcntl(0, F_GETFD) != -1, "standard input still open after a failed client");
        if (c != NULL) {
            made = 1;
            bio_client_decref(c);
        }
    }
    check(made, "a client is made once no allocation fails");
}

/* ------------------------------------------------------------------ secrets */

static bio_req *
wait_done(bio_bridge *b)
{
    struct pollfd p = {.fd = b->efd, .events = POLLIN};
    for (int i = 0; i < 100; i++) {
        if (poll(&p, 1, 100) > 0) {
            bio_req *r = bio_bridge_take(b);
            if (r != NULL) {
                return r;
            }
        }
    }
    return NULL;
}

static void
test_secrets(int port, const char *password, int db)
{
    secret = password;
    secret_len = strlen(password);
    bio_config cfg = config("127.0.0.1", port, password, db);
    bio_client *c = bio_client_new(&cfg);
    bio_bridge *b = bio_bridge_new();
    check(c != NULL && b != NULL, "client and bridge made");
    if (c == NULL || b == NULL) {
        return;
    }
    bio_req *r = bio_req_new(c, b, BIO_OP_CONNECT, 0);
    check(r != NULL && bio_submit(r) == 0, "connect submitted");
    r = wait_done(b);
    check(r != NULL && r->status == BIO_OK, "connected with the password");
    bio_req_free(r);
    r = bio_req_new(c, b, BIO_OP_CLOSE, 0);
    check(r != NULL && bio_submit(r) == 0, "close submitted");
    r = wait_done(b);
    check(r != NULL && r->status == BIO_OK, "closed");
    bio_req_free(r);
    bio_client_decref(c);  /* the I/O thread lets it go: its copy of the password too */
    usleep(300 * 1000);
    bio_bridge_decref(b);
    check(!secret_seen, "no freed block held the password");
}

static int
unhex(const char *hex, char *out, size_t *len)
{
    size_t n = 0;
    for (const char *p = hex; p[0] != '\0' && p[0] != '\n'; p += 2) {
        unsigned v;
        if (p[1] == '\0' || sscanf(p, "%2x", &v) != 1) {
            return -1;
        }
        out[n++] = (char)v;
    }
    *len = n;
    return 0;
}

static void
test_keyslot(void)
{
    check(bio_crc16("123456789", 9) == 0x31c3, "CRC16-XMODEM check value");
    check(bio_key_slot("", 0) == 0, "slot of the empty key");
    check(bio_key_slot("foo", 3) == 12182, "slot of foo");
    check(bio_key_slot("{user1000}.following", 21) == bio_key_slot("user1000", 8),
          "a hash tag");
    check(bio_key_slot("{}x", 3) == (bio_crc16("{}x", 3) & 16383), "an empty tag");
    check(bio_key_slot2("pre{fi", 6, "x}yz", 4) == bio_key_slot("fix", 3),
          "a tag across the two parts");
    char line[8192], key[4096];
    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t len;
        if (unhex(line, key, &len) != 0) {
            check(0, "a key in hex on each line");
            return;
        }
        unsigned slot = bio_key_slot(key, len);
        for (size_t cut = 0; cut <= len; cut++) {
            if (bio_key_slot2(key, cut, key + cut, len - cut) != slot) {
                check(0, "every split of a key gives its slot");
                fprintf(stderr, "  key %s cut at %zu\n", line, cut);
                break;
            }
        }
        printf("%u\n", slot);
    }
}

/* The replicas of primary p, "host:port,host:port" in map order ("-" for none). */
static void
print_replicas(const bio_slot_map *m, int p)
{
    int any = 0;
    for (int i = 0; i < m->nnodes; i++) {
        if (m->nodes[i].primary == p) {
            printf("%s%s:%d", any ? "," : "", m->nodes[i].host, m->nodes[i].port);
            any = 1;
        }
    }
    printf("%s\n", any ? "" : "-");
}

static void
test_slotmap(const char *asked, int argc, char **argv)
{
    static char in[1 << 24];
    size_t n = fread(in, 1, sizeof in, stdin);
    redisReader *reader = redisReaderCreate();
    void *reply = NULL;
    if (reader == NULL || redisReaderFeed(reader, in, n) != REDIS_OK ||
        redisReaderGetReply(reader, &reply) != REDIS_OK || reply == NULL) {
        printf("error: not one RESP reply\n");
        return;
    }
    char err[BIO_ERRLEN] = "";
    bio_slot_map *m = io_cluster_parse_slots(reply, asked, err, sizeof err);
    freeReplyObject(reply);
    redisReaderFree(reader);
    if (m == NULL) {
        printf("error: %s\n", err);
        return;
    }
    if (argc >= 3 && io_cluster_apply_moved(m, (unsigned)atoi(argv[0]), argv[1],
                                            atoi(argv[2])) < 0) {
        printf("error: moved not applied\n");
    }
    int served = 0;
    for (int s = 0; s < BIO_CLUSTER_SLOTS;) {
        int node = io_slot_map_node(m, (unsigned)s);
        int e = s;
        while (e + 1 < BIO_CLUSTER_SLOTS && io_slot_map_node(m, (unsigned)e + 1) == node) {
            e++;
        }
        if (node >= 0) {
            served += e - s + 1;
            printf("%d %d %s:%d ", s, e, m->nodes[node].host, m->nodes[node].port);
            print_replicas(m, node);
        }
        s = e + 1;
    }
    check(served == m->served, "served counts the slots with a node");
    check(io_slot_map_node(m, BIO_CLUSTER_SLOTS) == -1, "no slot 16384");
    io_slot_map_free(m);
}

static void
test_redirect(void)
{
    static const char *kinds[] = {"", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"};
    char line[4096];
    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t len = strcspn(line, "\n");
        io_redirect r;
        if (io_cluster_parse_redirect(line, len, &r) < 0) {
            printf("none\n");
        }
        else {
            printf("%s %u %s %d\n", kinds[r.kind], r.slot, r.host, r.port);
        }
    }
}

/* resp.c's slot tracking: each command's key slot, RESP_SLOT_ANY without a key,
 * RESP_SLOT_CROSS for keys of two slots; off unless asked (no allocation then). */
static void
test_resp_slots(void)
{
    resp_buf b;
    resp_buf_init(&b);
    resp_array(&b, 1);
    resp_str(&b, "PING");
    check(b.slots == NULL, "not tracked unless asked");
    resp_key_slot(&b, 5);  /* (nothing: not tracked) */
    check(resp_buf_track_slots(&b) == 0 && b.slots[0] == RESP_SLOT_ANY,
          "the commands before: no key");
    for (int i = 0; i < 100; i++) {
        resp_array(&b, 2);
        resp_str(&b, "GET");
        char key[16];
        int n = snprintf(key, sizeof key, "k%d", i);
        resp_bulk(&b, key, (size_t)n);
        resp_key_slot(&b, (int)bio_key_slot(key, (size_t)n));
    }
    resp_array(&b, 3);
    resp_str(&b, "DEL");
    resp_str(&b, "{t}a");
    resp_key_slot(&b, (int)bio_key_slot("{t}a", 4));
    resp_str(&b, "{t}b");
    resp_key_slot(&b, (int)bio_key_slot("{t}b", 4));
    resp_array(&b, 3);
    resp_str(&b, "DEL");
    resp_key_slot(&b, (int)bio_key_slot("a", 1));
    resp_key_slot(&b, (int)bio_key_slot("b", 1));
    resp_array(&b, 1);
    resp_str(&b, "DBSIZE");
    check(!b.oom && b.ncmd == 104, "built");
    int ok = 1;
    for (int i = 0; i < 100; i++) {
        char key[16];
        int n = snprintf(key, sizeof key, "k%d", i);
        ok &= b.slots[1 + i] == (int)bio_key_slot(key, (size_t)n);
    }
    check(ok, "each GET's slot");
    check(b.slots[101] == (int)bio_key_slot("t", 1), "two keys of one slot: that slot");
    check(b.slots[102] == RESP_SLOT_CROSS, "keys of two slots: cross");
    check(b.slots[103] == RESP_SLOT_ANY, "no key");
    int16_t *taken = b.slots;  /* as a request takes them */
    b.slots = NULL;
    resp_buf_free(&b);
    free(taken);
    resp_buf_init(&b);
    resp_array(&b, 1);
    allocs = 0;
    fail_at = 0;  /* the slots' allocation fails: the buffer says oom */
    check(resp_buf_track_slots(&b) < 0 && b.oom, "out of memory: oom");
    fail_at = -1;
    resp_buf_free(&b);
}

static void
test_commands(void)
{
    test_resp_slots();
    resp_buf b;
    resp_buf_init(&b);
    const char *get[2] = {"GET", "k"};
    size_t getlen[2] = {3, 1};
    const char *set[3] = {"SET", "key\r\n*1\r\n", ""};
    size_t setlen[3] = {3, 10, 0};
    resp_command(&b, 2, get, getlen);
    size_t second = b.len;
    resp_command(&b, 3, set, setlen);
    size_t third = b.len;
    resp_command(&b, 1, get, getlen);
    check(!b.oom, "built");
    size_t off[4];
    check(io_cluster_commands(b.data, b.len, off, 3) == 0 && off[0] == 0 &&
          off[1] == second && off[2] == third && off[3] == b.len, "three commands cut");
    check(io_cluster_commands(b.data, b.len, off, 2) < 0, "bytes left over");
    check(io_cluster_commands(b.data, b.len, off, 4) < 0, "a command missing");
    for (size_t cut = 0; cut < b.len; cut++) {
        if (io_cluster_commands(b.data, cut, off, 3) == 0) {
            check(0, "a truncated buffer refused");
            break;
        }
    }
    static const char *bad[] = {"*1\r\n$3\r\nGETX\r\n", "*1\r\n$-1\r\n", "+OK\r\n",
                                "*1\r\n$99999999999999999999\r\n", "*2\r\n$1\r\nk\r\n",
                                "*1\r\n:1\r\n", "*1 \r\n$1\r\nk\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        check(io_cluster_commands(bad[i], strlen(bad[i]), off, 1) < 0, "broken RESP refused");
    }
    resp_buf_free(&b);
}

static void
print_cluster(bio_client *c)
{
    bio_counters *k = bio_client_counters(c);
    printf("slots %d nodes %d maps %llu\n", atomic_load(&k->cluster_slots),
           atomic_load(&k->cluster_nodes), (unsigned long long)atomic_load(&k->cluster_maps));
}

static void
test_cluster_connect(int port, const char *mode, const char *key, int n)
{
    bio_config cfg = config("127.0.0.1", port, NULL, 0);
    cfg.cluster = strcmp(mode, "on") == 0 ? BIO_CLUSTER_ON
                  : strcmp(mode, "auto") == 0 ? BIO_CLUSTER_AUTO : BIO_CLUSTER_OFF;
    bio_client *c = bio_client_new(&cfg);
    bio_bridge *b = bio_bridge_new();
    if (c == NULL || b == NULL) {
        printf("client and bridge not made\n");
        return;
    }
    bio_req *r = bio_req_new(c, b, BIO_OP_CONNECT, 0);
    if (r == NULL || bio_submit(r) != 0 || (r = wait_done(b)) == NULL) {
        printf("connect not done\n");
        return;
    }
    printf("connect %d %s\n", r->status, r->status == BIO_OK ? "" : r->err);
    bio_req_free(r);
    print_cluster(c);
    if (key != NULL) {
        resp_buf cmd;
        resp_buf_init(&cmd);
        const char *argv[2] = {"GET", key};
        size_t len[2] = {3, strlen(key)};
        resp_command(&cmd, 2, argv, len);
        for (int i = 0; i < n; i++) {
            r = bio_req_new(c, b, BIO_OP_CMD, 1);
            r->buf = malloc(cmd.len);
            memcpy(r->buf, cmd.data, cmd.len);
            r->len = cmd.len;
            bio_submit(r);
        }
        int done = 0;
        while (done < n && (r = wait_done(b)) != NULL) {
            for (bio_req *next; r != NULL; r = next, done++) {
                next = r->next;
                if (done == 0) {
                    redisReply *rep = r->nrep ? r->replies[0] : NULL;
                    printf("reply %d %.*s\n", r->status, rep && rep->str ? (int)rep->len : 0,
                           rep && rep->str ? rep->str : "");
                }
                bio_req_free(r);
            }
        }
        resp_buf_free(&cmd);
        usleep(500 * 1000);
        print_cluster(c);
    }
    r = bio_req_new(c, b, BIO_OP_CLOSE, 0);
    bio_submit(r);
    r = wait_done(b);
    bio_req_free(r);
    bio_client_decref(c);
    usleep(100 * 1000);
    bio_bridge_decref(b);
}

/* n requests, "CMD key:I [I]" for each i, each naming its slot; returns the
 * redirects they followed, counting (check) replies other than expected. */
static int
cluster_round(bio_client *c, bio_bridge *b, int n, int set)
{
    for (int i = 0; i < n; i++) {
        char key[32], val[32];
        int klen = snprintf(key, sizeof key, "key:%d", i);
        int vlen = snprintf(val, sizeof val, "%d", i);
        resp_buf cmd;
        resp_buf_init(&cmd);
        resp_buf_track_slots(&cmd);
        const char *argv[3] = {set ? "SET" : "GET", key, val};
        size_t len[3] = {3, (size_t)klen, (size_t)vlen};
        resp_command(&cmd, set ? 3 : 2, argv, len);
        resp_key_slot(&cmd, (int)bio_key_slot(key, (size_t)klen));
        bio_req *r = bio_req_new(c, b, BIO_OP_CMD, 1);
        r->buf = cmd.data;
        r->len = cmd.len;
        r->slots = cmd.slots;
        r->user = (void *)(intptr_t)i;
        bio_submit(r);
    }
    int done = 0, redirects = 0, wrong = 0;
    bio_req *r;
    while (done < n && (r = wait_done(b)) != NULL) {
        for (bio_req *next; r != NULL; r = next, done++) {
            next = r->next;
            int i = (int)(intptr_t)r->user;
            char val[32];
            int vlen = snprintf(val, sizeof val, "%d", i);
            redisReply *rep = r->nrep ? r->replies[0] : NULL;
            int ok = r->status == BIO_OK && rep != NULL &&
                     (set ? rep->type == REDIS_REPLY_STATUS
                          : rep->type == REDIS_REPLY_STRING && (int)rep->len == vlen &&
                            memcmp(rep->str, val, (size_t)vlen) == 0);
            if (!ok && wrong++ < 3) {
                printf("key:%d status %d %s reply %.*s\n", i, r->status, r->err,
                       rep && rep->str ? (int)rep->len : 0, rep && rep->str ? rep->str : "");
            }
            redirects += r->redirects;
            bio_req_free(r);
        }
    }
    check(done == n, "every request completed");
    check(wrong == 0, "every reply as expected");
    return redirects;
}

/* A client of cfg and a bridge of its own (*bp), connected (checked). */
static bio_client *
connected(const bio_config *cfg, bio_bridge **bp)
{
    bio_client *c = bio_client_new(cfg);
    bio_bridge *b = *bp = bio_bridge_new();
    bio_req *r = bio_req_new(c, b, BIO_OP_CONNECT, 0);
    bio_submit(r);
    r = wait_done(b);
    check(r != NULL && r->status == BIO_OK, "connected");
    bio_req_free(r);
    return c;
}

static void
test_cluster_route(int port, int n)
{
    bio_config cfg = config("127.0.0.1", port, NULL, 0);
    cfg.cluster = BIO_CLUSTER_ON;
    bio_bridge *b;
    bio_client *c = connected(&cfg, &b);
    unsigned long long before = atomic_load(&bio_client_counters(c)->commands);
    cluster_round(c, b, n, 1);
    check(atomic_load(&bio_client_counters(c)->commands) >= before + (unsigned)n,
          "the nodes' commands counted on the cluster's client");
    printf("set\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        printf("get %d\n", cluster_round(c, b, n, 0));
        fflush(stdout);
    }
    bio_req *r = bio_req_new(c, b, BIO_OP_CLOSE, 0);
    bio_submit(r);
    r = wait_done(b);
    bio_req_free(r);
    bio_client_decref(c);
    usleep(200 * 1000);
    bio_bridge_decref(b);
}

static void
test_cluster_startup(int argc, char **argv)
{
    bio_config cfg = config("127.0.0.1", atoi(argv[0]), NULL, 0);
    cfg.cluster = BIO_CLUSTER_ON;
    char *hosts[16];
    int ports[16];
    for (int i = 1; i < argc && i <= 16; i++) {
        hosts[i - 1] = "127.0.0.1";
        ports[i - 1] = atoi(argv[i]);
    }
    cfg.nstartup = argc - 1 < 16 ? argc - 1 : 16;
    cfg.startup_hosts = hosts;
    cfg.startup_ports = ports;
    bio_client *c = bio_client_new(&cfg);
    bio_bridge *b = bio_bridge_new();
    bio_req *r = bio_req_new(c, b, BIO_OP_CONNECT, 0);
    bio_submit(r);
    r = wait_done(b);
    printf("connect %d %s\n", r ? r->status : -1, r && r->status ? r->err : "");
    bio_req_free(r);
    print_cluster(c);
    r = bio_req_new(c, b, BIO_OP_CLOSE, 0);
    bio_submit(r);
    bio_req_free(wait_done(b));
    bio_client_decref(c);
    usleep(100 * 1000);
    bio_bridge_decref(b);
}

static void
test_cluster_del(int port, const char *k1, const char *k2)
{
    bio_config cfg = config("127.0.0.1", port, NULL, 0);
    cfg.cluster = BIO_CLUSTER_ON;
    bio_bridge *b;
    bio_client *c = connected(&cfg, &b);
    printf("connected\n");
    fflush(stdout);
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL) {
        return;
    }
    resp_buf cmd;
    resp_buf_init(&cmd);
    resp_buf_track_slots(&cmd);
    const char *argv[3] = {"DEL", k1, k2};
    size_t len[3] = {3, strlen(k1), strlen(k2)};
    resp_command(&cmd, 3, argv, len);
    resp_key_slot(&cmd, (int)bio_key_slot(k1, len[1]));
    resp_key_slot(&cmd, (int)bio_key_slot(k2, len[2]));
    bio_req *r = bio_req_new(c, b, BIO_OP_CMD, 1);
    r->buf = cmd.data;
    r->len = cmd.len;
    r->slots = cmd.slots;
    bio_submit(r);
    r = NULL;
    for (int i = 0; i < 20 && r == NULL; i++) {
        r = wait_done(b);
    }
    redisReply *rep = r && r->nrep ? r->replies[0] : NULL;
    if (rep == NULL) {
        printf("status %d %s\n", r ? r->status : -1, r ? r->err : "");
    }
    else if (rep->type == REDIS_REPLY_INTEGER) {
        printf("reply integer %lld retries %d redirects %d\n", rep->integer, r->retries,
               r->redirects);
    }
    else {
        printf("reply %d %.*s retries %d redirects %d\n", rep->type, (int)rep->len, rep->str,
               r->retries, r->redirects);
    }
    bio_req_free(r);
    r = bio_req_new(c, b, BIO_OP_CLOSE, 0);
    bio_submit(r);
    bio_req_free(wait_done(b));
    bio_client_decref(c);
    usleep(200 * 1000);
    bio_bridge_decref(b);
}

/* The events delivered to eb since the last call, as " keys a,b" / " flush" (one per
 * EVENT request, in order) into out. */
static void
take_events(bio_bridge *eb, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (bio_req *r = bio_bridge_take(eb), *next; r != NULL; r = next) {
        next = r->next;
        if (r->op == BIO_OP_EVENT && r->event_flush) {
            n += (size_t)snprintf(out + n, cap - n, " flush");
        }
        else if (r->op == BIO_OP_EVENT) {
            n += (size_t)snprintf(out + n, cap - n, " keys");
            size_t pos = 0;
            for (int k = 0; k < r->ncmd && n < cap; k++) {
                uint32_t len;
                memcpy(&len, r->buf + pos, 4);
                n += (size_t)snprintf(out + n, cap - n, "%s%.*s", k ? "," : " ", (int)len,
                                      r->buf + pos + 4);
                pos += 4 + len;
            }
        }
        else {
            n += (size_t)snprintf(out + n, cap - n, " op%d", r->op);
        }
        bio_req_free(r);
        if (n >= cap) {
            break;
        }
    }
}

/* Tracking (work in progress): a client with cfg.tracking and prefix "tk:", listened
 * to on a bridge of its own; once the server tracks for it, prints "tracking"; then,
 * per line on stdin: "own" sets tk:own through the client itself; any line prints
 * "inv N lost M on T" (its counters) and the events delivered since. */
static void
test_track(int port)
{
    bio_config cfg = config("127.0.0.1", port, NULL, 0);
    cfg.stats_key = "tk:stats";
    cfg.stats_key_len = 8;
    cfg.tracking = 1;
    bio_bridge *b;
    bio_client *c = connected(&cfg, &b);
    bio_bridge *eb = bio_bridge_new();
    bio_submit(bio_req_new(c, eb, BIO_OP_LISTEN, 0));
    bio_counters *k = bio_client_counters(c);
    for (int i = 0; i < 500 && !atomic_load(&k->tracking); i++) {
        usleep(10 * 1000);
    }
    check(atomic_load(&k->tracking) == 1, "the server tracks for it");
    printf("tracking\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strncmp(line, "own", 3) == 0) {
            resp_buf cmd;
            resp_buf_init(&cmd);
            const char *argv[3] = {"SET", "tk:own", "1"};
            size_t len[3] = {3, 6, 1};
            resp_command(&cmd, 3, argv, len);
            bio_req *r = bio_req_new(c, b, BIO_OP_CMD, 1);
            r->buf = cmd.data;
            r->len = cmd.len;
            bio_submit(r);
            r = wait_done(b);
            check(r != NULL && r->status == BIO_OK, "own write done");
            bio_req_free(r);
        }
        usleep(50 * 1000);  /* (a message on loopback takes well under that) */
        char events[1024];
        take_events(eb, events, sizeof events);
        printf("inv %llu lost %llu on %d |%s\n",
               (unsigned long long)atomic_load(&k->invalidations),
               (unsigned long long)atomic_load(&k->tracking_losses),
               atomic_load(&k->tracking), events);
        fflush(stdout);
    }
    bio_req *r = bio_req_new(c, b, BIO_OP_CLOSE, 0);
    bio_submit(r);
    bio_req_free(wait_done(b));
    usleep(100 * 1000);
    char events[256];
    take_events(eb, events, sizeof events);
    check(strcmp(events, " op4") == 0, "the LISTEN completes with the close");
    bio_client_decref(c);
    usleep(200 * 1000);
    bio_bridge_decref(b);
    bio_bridge_decref(eb);
}

int
main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "scan") == 0) {
        test_scan();
    }
    else if (argc >= 2 && strcmp(argv[1], "client-alloc-fail") == 0) {
        test_client_alloc_fail();
    }
    else if (argc >= 5 && strcmp(argv[1], "secrets") == 0) {
        test_secrets(atoi(argv[2]), argv[3], atoi(argv[4]));
    }
    else if (argc >= 3 && strcmp(argv[1], "slotmap") == 0) {
        test_slotmap(argv[2], argc - 3, argv + 3);
        return failures ? 1 : 0;
    }
    else if (argc >= 2 && strcmp(argv[1], "redirect") == 0) {
        test_redirect();
        return 0;
    }
    else if (argc >= 4 && strcmp(argv[1], "cluster-connect") == 0) {
        test_cluster_connect(atoi(argv[2]), argv[3], argc >= 6 ? argv[4] : NULL,
                             argc >= 6 ? atoi(argv[5]) : 0);
        return failures ? 1 : 0;
    }
    else if (argc >= 4 && strcmp(argv[1], "cluster-route") == 0) {
        test_cluster_route(atoi(argv[2]), atoi(argv[3]));
        return failures ? 1 : 0;
    }
    else if (argc >= 3 && strcmp(argv[1], "cluster-startup") == 0) {
        test_cluster_startup(argc - 2, argv + 2);
        return failures ? 1 : 0;
    }
    else if (argc >= 5 && strcmp(argv[1], "cluster-del") == 0) {
        test_cluster_del(atoi(argv[2]), argv[3], argv[4]);
        return failures ? 1 : 0;
    }
    else if (argc >= 2 && strcmp(argv[1], "commands") == 0) {
        test_commands();
    }
    else if (argc >= 3 && strcmp(argv[1], "track") == 0) {
        test_track(atoi(argv[2]));
        return failures ? 1 : 0;
    }
    else if (argc >= 2 && strcmp(argv[1], "keyslot") == 0) {
        test_keyslot();
        return failures ? 1 : 0;
    }
    else {
        fprintf(stderr, "usage: io_harness scan | client-alloc-fail | secrets PORT PASSWORD DB"
                " | keyslot | slotmap HOST [SLOT H P] | redirect | commands\n");
        return 2;
    }
    if (failures == 0) {
        printf("ok\n");
    }
    return failures ? 1 : 0;
}
