/* Unit tests for common/slotmap.c: CLUSTER SLOTS replies built by hand as hiredis reply trees
 * (Redis 7 and older shapes, odd inputs) and -MOVED / -ASK redirect errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "slotmap.h"

/* Tiny reply builders; the whole tree is released with freeReplyObject. */
static redisReply *mkint(long long v)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_INTEGER;
    r->integer = v;
    return r;
}

static redisReply *rstr(const char *s)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_STRING;
    r->len = strlen(s);
    r->str = strdup(s);
    return r;
}

static redisReply *rnil(void)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_NIL;
    return r;
}

static redisReply *rarr(size_t n, ...)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof *r->element);
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++)
        r->element[i] = va_arg(ap, redisReply *);
    va_end(ap);
    return r;
}

/* A Redis 7 node entry: host, port, id, and an (empty) metadata array. */
static redisReply *node7(redisReply *host, int port, const char *id)
{
    return rarr(4, host, mkint(port), rstr(id), rarr(0));
}

#define ID_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define ID_C "cccccccccccccccccccccccccccccccccccccccc"
#define ID_R "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr"

static void test_three_primaries(void **state)
{
    (void)state;
    /* Three primaries; A owns two ranges (as after a reshard) and its replica is listed with
     * both. */
    redisReply *rep =
        rarr(4,
             rarr(4, mkint(0), mkint(5460), node7(rstr("127.0.0.1"), 7000, ID_A),
                  node7(rstr("127.0.0.1"), 7003, ID_R)),
             rarr(3, mkint(5461), mkint(10922), node7(rstr("127.0.0.1"), 7001, ID_B)),
             rarr(3, mkint(10923), mkint(16000), node7(rstr("127.0.0.1"), 7002, ID_C)),
             rarr(4, mkint(16001), mkint(16383), node7(rstr("127.0.0.1"), 7000, ID_A),
                  node7(rstr("127.0.0.1"), 7003, ID_R)));
    sb_slotmap_t m;
    char err[128] = "";
    assert_int_equal(sb_slotmap_parse_slots(&m, rep, "seed", err, sizeof err), 0);
    assert_int_equal(m.nshards, 3);
    int a = sb_slotmap_find(&m, "127.0.0.1", 7000);
    int b = sb_slotmap_find(&m, "127.0.0.1", 7001);
    int c = sb_slotmap_find(&m, "127.0.0.1", 7002);
    assert_true(a >= 0 && b >= 0 && c >= 0);
    assert_int_equal(sb_slotmap_find(&m, "127.0.0.1", 7003), -1); /* a replica is no shard */
    assert_int_equal(m.owner[0], a);
    assert_int_equal(m.owner[5460], a);
    assert_int_equal(m.owner[5461], b);
    assert_int_equal(m.owner[10922], b);
    assert_int_equal(m.owner[10923], c);
    assert_int_equal(m.owner[16000], c);
    assert_int_equal(m.owner[16001], a);
    assert_int_equal(m.owner[16383], a);
    assert_int_equal(m.shards[a].nslots, 5461 + 383);
    assert_int_equal(m.shards[b].nslots, 5462);
    assert_int_equal(m.shards[c].nslots, 16001 - 10923);
    assert_string_equal(m.shards[a].primary.id, ID_A);
    /* The replica listed with both of A's ranges is recorded once. */
    assert_int_equal(m.shards[a].nreplicas, 1);
    assert_int_equal(m.shards[a].replicas[0].port, 7003);
    assert_string_equal(m.shards[a].replicas[0].id, ID_R);
    assert_int_equal(m.shards[b].nreplicas, 0);
    int first;
    assert_int_equal(sb_slotmap_holes(&m, &first), 0);
    assert_int_equal(first, -1);
    sb_slotmap_free(&m);
    freeReplyObject(rep);
}

static void test_holes_and_empty(void **state)
{
    (void)state;
    redisReply *rep = rarr(2, rarr(3, mkint(0), mkint(99), node7(rstr("h1"), 1, ID_A)),
                           rarr(3, mkint(200), mkint(16383), node7(rstr("h2"), 2, ID_B)));
    sb_slotmap_t m;
    char err[128];
    assert_int_equal(sb_slotmap_parse_slots(&m, rep, NULL, err, sizeof err), 0);
    int first;
    assert_int_equal(sb_slotmap_holes(&m, &first), 100);
    assert_int_equal(first, 100);
    assert_int_equal(m.owner[100], -1);
    assert_int_equal(m.owner[199], -1);
    assert_int_equal(m.owner[99], sb_slotmap_find(&m, "h1", 1));
    sb_slotmap_free(&m);
    freeReplyObject(rep);

    /* A node that knows no slot (fresh, not yet joined) answers an empty array: all holes. */
    rep = rarr(0);
    assert_int_equal(sb_slotmap_parse_slots(&m, rep, NULL, err, sizeof err), 0);
    assert_int_equal(m.nshards, 0);
    assert_int_equal(sb_slotmap_holes(&m, &first), SB_SLOTS);
    assert_int_equal(first, 0);
    sb_slotmap_free(&m);
    freeReplyObject(rep);
}

static void test_endpoints(void **state)
{
    (void)state;
    /* IPv6 (no brackets, as Redis writes it), a hostname, NULL/""/"?" meaning the seed's host,
     * and the Redis 3 shape without a node id. */
    redisReply *rep =
        rarr(5, rarr(3, mkint(0), mkint(9), node7(rstr("::1"), 7000, ID_A)),
             rarr(3, mkint(10), mkint(19), node7(rstr("redis-1.example.internal"), 7001, ID_B)),
             rarr(3, mkint(20), mkint(29), node7(rstr(""), 7002, ID_C)),
             rarr(3, mkint(30), mkint(39), node7(rnil(), 7003, ID_R)),
             rarr(3, mkint(40), mkint(16383), rarr(2, rstr("?"), mkint(7004))));
    sb_slotmap_t m;
    char err[128];
    assert_int_equal(sb_slotmap_parse_slots(&m, rep, "10.1.2.3", err, sizeof err), 0);
    assert_int_equal(m.nshards, 5);
    assert_int_equal(m.owner[0], sb_slotmap_find(&m, "::1", 7000));
    assert_int_equal(m.owner[10], sb_slotmap_find(&m, "redis-1.example.internal", 7001));
    assert_int_equal(m.owner[20], sb_slotmap_find(&m, "10.1.2.3", 7002));
    assert_int_equal(m.owner[30], sb_slotmap_find(&m, "10.1.2.3", 7003));
    int e = sb_slotmap_find(&m, "10.1.2.3", 7004);
    assert_int_equal(m.owner[16383], e);
    assert_string_equal(m.shards[e].primary.id, "");
    sb_slotmap_free(&m);
    /* Without a seed host an unknown endpoint cannot be used. */
    assert_int_equal(sb_slotmap_parse_slots(&m, rep, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "host"));
    sb_slotmap_free(&m);
    freeReplyObject(rep);
}

static void bad(redisReply *rep, const char *why)
{
    sb_slotmap_t m;
    char err[128] = "";
    assert_int_equal(sb_slotmap_parse_slots(&m, rep, "seed", err, sizeof err), -1);
    if (!strstr(err, why))
        fail_msg("reason '%s' does not mention '%s'", err, why);
    /* A failed parse leaves an empty map that is safe to free again. */
    assert_int_equal(m.nshards, 0);
    assert_int_equal(m.owner[0], -1);
    sb_slotmap_free(&m);
    freeReplyObject(rep);
}

static void test_malformed(void **state)
{
    (void)state;
    sb_slotmap_t m;
    char err[128];
    assert_int_equal(sb_slotmap_parse_slots(&m, NULL, NULL, err, sizeof err), -1);
    sb_slotmap_free(&m);
    bad(rstr("ERR This instance has cluster support disabled"), "not an array");
    /* Truncated: a range without its primary, a primary without a port. */
    bad(rarr(1, rarr(2, mkint(0), mkint(16383))), "range");
    bad(rarr(1, rarr(3, mkint(0), mkint(16383), rarr(1, rstr("h")))), "node entry");
    bad(rarr(1, rarr(3, mkint(0), mkint(16384), node7(rstr("h"), 1, ID_A))), "bounds");
    bad(rarr(1, rarr(3, mkint(5), mkint(4), node7(rstr("h"), 1, ID_A))), "bounds");
    bad(rarr(1, rarr(3, mkint(-1), mkint(4), node7(rstr("h"), 1, ID_A))), "bounds");
    bad(rarr(1, rarr(3, mkint(0), mkint(4), node7(rstr("h"), 0, ID_A))), "port");
    bad(rarr(1, rarr(3, rstr("0"), mkint(4), node7(rstr("h"), 1, ID_A))), "range");
    /* A good first range does not survive a bad second one (no half map). */
    bad(rarr(2, rarr(3, mkint(0), mkint(4), node7(rstr("h"), 1, ID_A)),
             rarr(4, mkint(5), mkint(9), node7(rstr("h"), 2, ID_B), mkint(3))),
        "node entry");
}

static void test_single(void **state)
{
    (void)state;
    sb_slotmap_t m;
    assert_int_equal(sb_slotmap_single(&m, "127.0.0.1", 6379), 0);
    assert_int_equal(m.nshards, 1);
    assert_int_equal(sb_slotmap_holes(&m, NULL), 0);
    assert_int_equal(m.owner[0], 0);
    assert_int_equal(m.owner[16383], 0);
    assert_int_equal(m.shards[0].nslots, SB_SLOTS);
    sb_slotmap_free(&m);
}

static void redirect_ok(const char *text, int ask, int slot, const char *host, int port)
{
    sb_redirect_t r;
    if (sb_redirect_parse(text, strlen(text), &r) != 0)
        fail_msg("'%s' should parse", text);
    assert_int_equal(r.ask, ask);
    assert_int_equal(r.slot, slot);
    assert_string_equal(r.host, host);
    assert_int_equal(r.port, port);
}

static void test_redirects(void **state)
{
    (void)state;
    redirect_ok("MOVED 3999 127.0.0.1:6381", 0, 3999, "127.0.0.1", 6381);
    redirect_ok("ASK 3999 127.0.0.1:6381", 1, 3999, "127.0.0.1", 6381);
    redirect_ok("MOVED 16383 ::1:7000", 0, 16383, "::1", 7000);
    redirect_ok("ASK 0 [::1]:7000", 1, 0, "::1", 7000);
    redirect_ok("MOVED 12 redis-2.example:6379", 0, 12, "redis-2.example", 6379);
    /* Redis 7 with an unknown endpoint writes ":port": the host is the one that answered. */
    redirect_ok("MOVED 12 :6380", 0, 12, "", 6380);
    static const char *const bad_ones[] = {
        "MOVED",         "MOVED ",
        "MOVED 3999",    "MOVED 3999 ",
        "MOVED x 1:2",   "MOVED 16384 h:1",
        "MOVED 1 h",     "MOVED 1 h:",
        "MOVED 1 h:0",   "MOVED 1 h:65536",
        "MOVED 1 h:12x", "ASK1 h:2",
        "TRYAGAIN x",    "CLUSTERDOWN The cluster is down",
        "NOSCRIPT",      "moved 1 h:2",
        "MOVED 1  h:2",  "MOVED 1234567 h:1",
    };
    for (size_t i = 0; i < sizeof bad_ones / sizeof bad_ones[0]; i++) {
        sb_redirect_t r;
        if (sb_redirect_parse(bad_ones[i], strlen(bad_ones[i]), &r) == 0)
            fail_msg("'%s' should not parse", bad_ones[i]);
    }
    /* The length is respected (a reply's text is not trusted to end where len says). */
    sb_redirect_t r;
    assert_int_equal(sb_redirect_parse("MOVED 1 h:2999", 12, &r), 0);
    assert_int_equal(r.port, 29);
}

/* What a command does after an error reply during a migration (docs/design.md). */
static sb_next_t next_of(const char *err, int script, int tries, int64_t left, int64_t *delay)
{
    *delay = -1;
    return sb_redirect_next(err, strlen(err), script, tries, left, delay);
}

static void test_redirect_next(void **state)
{
    (void)state;
    int64_t d;
    /* Not ours: the caller gets the reply. */
    assert_int_equal(next_of("ERR wrong", 0, 0, 500, &d), SB_NEXT_DONE);
    assert_int_equal(next_of("NOSCRIPT x", 1, 0, 500, &d), SB_NEXT_DONE);
    assert_int_equal(next_of("CLUSTERDOWN down", 1, 0, 500, &d), SB_NEXT_DONE);
    /* MOVED is followed by everyone, ASK by plain commands only. */
    assert_int_equal(next_of("MOVED 1 h:2", 0, 0, 500, &d), SB_NEXT_FOLLOW);
    assert_int_equal(next_of("MOVED 1 h:2", 1, 0, 500, &d), SB_NEXT_FOLLOW);
    assert_int_equal(next_of("ASK 1 h:2", 0, 0, 500, &d), SB_NEXT_FOLLOW);
    /* A script told ASK waits for the slot to move, with backoff, like TRYAGAIN. */
    assert_int_equal(next_of("ASK 1 h:2", 1, 0, 500, &d), SB_NEXT_WAIT);
    assert_int_equal(d, 10);
    assert_int_equal(next_of("TRYAGAIN Multiple keys", 0, 2, 500, &d), SB_NEXT_WAIT);
    assert_int_equal(d, 30);
    assert_int_equal(next_of("TRYAGAIN r: its slot is being migrated", 1, 40, 500, &d),
                     SB_NEXT_WAIT);
    assert_int_equal(d, 50); /* capped */
    /* A redirect loop: after SB_MAX_FOLLOWS follows, wait instead. */
    assert_int_equal(next_of("MOVED 1 h:2", 0, SB_MAX_FOLLOWS - 1, 500, &d), SB_NEXT_FOLLOW);
    assert_int_equal(next_of("MOVED 1 h:2", 0, SB_MAX_FOLLOWS, 500, &d), SB_NEXT_WAIT);
    /* No time left for the wait: unavailable. A follow needs no time. */
    assert_int_equal(next_of("TRYAGAIN x", 0, 0, 10, &d), SB_NEXT_FAIL);
    assert_int_equal(next_of("ASK 1 h:2", 1, 3, 40, &d), SB_NEXT_FAIL);
    assert_int_equal(next_of("ASK 1 h:2", 1, 3, 41, &d), SB_NEXT_WAIT);
    assert_int_equal(next_of("MOVED 1 h:2", 0, 0, -5, &d), SB_NEXT_FOLLOW);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_primaries), cmocka_unit_test(test_holes_and_empty),
        cmocka_unit_test(test_endpoints),       cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_single),          cmocka_unit_test(test_redirects),
        cmocka_unit_test(test_redirect_next),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
