/* Away sessions whose grace is over, removed at their deadline rather than at the next pass.
 * A session's own node removes it at its deadline (room_remove "away"). When that node is dead,
 * or the admin itself marked the session away while reaping a dead node, only the admin can,
 * and the pass would find it only once its presence key lapsed: up to one interval late. So
 * the lease holder sweeps the buckets' deadline index P:{T}:away ("R S" scored by deadline, kept
 * by the scripts; lua/README.md) after every pass and whenever one of its reaps marked a session
 * away: it reaps what is due with room_remove "expired", which re-checks inside itself (the
 * presence key absent, the deadline passed: a session resumed meanwhile answers "live" and
 * stays), and keeps one timer for the earliest deadline still ahead. Does not decide who holds
 * the lease (lease.c) or mark anything away (the scripts do). */
#include "admin.h"
#include "keys.h"
#include "log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* How long after a deadline the admin steps in: a live node's own timer fires at the deadline,
 * so the admin takes only what nobody else will. */
#define GRACE_SLACK_MS 500
/* The earliest a sweep follows the last one: a deadline the admin's clock has passed and
 * Redis's not yet (the script answers "live") is retried at this pace, not in a loop. */
#define GRACE_MIN_DELAY_MS 250
/* Entries read per bucket and sweep (ZRANGE 0 GRACE_LAST): a bucket with more brings the next
 * sweep forward. */
#define GRACE_LAST 63
#define SB_STR_(x) #x
#define SB_STR(x) SB_STR_(x)

typedef struct sb_grace {
    sb_admin_t *a;
    sb_batch_t batch; /* the ZRANGEs and the reaps of this sweep */
    int64_t now_ms;   /* wall clock at the start (deadlines are Redis's wall clock) */
    int64_t next_ms;  /* the earliest deadline seen that is not due yet, or INT64_MAX */
    int full;         /* a bucket had more entries than were read, all of them due */
    int early;        /* a due entry answered "live": Redis's clock behind ours */
} sweep_t;

static void sweep(sb_admin_t *a);

static void on_timer(uv_timer_t *t)
{
    sweep(t->data);
}

/* The sweep ended: totals, then the timer for what is left. */
static void done(sweep_t *g)
{
    sb_admin_t *a = g->a;
    int64_t removed = g->batch.sockets;
    const char *error = sb_batch_close(a, &g->batch);
    if (removed > 0)
        sb_info("grace: %lld away sessions removed at the end of their grace", (long long)removed);
    if (error)
        sb_warn_limited("grace: sweep incomplete: %s (the next pass catches up)", error);
    a->grace_sweep = NULL;
    if (!a->stopping) {
        int64_t delay = -1;
        if (g->full || g->early || a->grace_again)
            delay = GRACE_MIN_DELAY_MS;
        else if (g->next_ms != INT64_MAX)
            delay = g->next_ms + GRACE_SLACK_MS - sb_now_ms();
        /* A deadline that came due while this sweep ran gives a delay below 0: it is due now,
         * not never (such a delay started no timer, and the session waited for the next pass).
         * The floor keeps the pace of GRACE_MIN_DELAY_MS. */
        if (g->next_ms != INT64_MAX && delay < GRACE_MIN_DELAY_MS)
            delay = GRACE_MIN_DELAY_MS;
        /* Beyond one interval the passes (which sweep again) come first. */
        if (delay >= 0 && delay < a->cfg.reconcile_interval_ms)
            uv_timer_start(&a->grace_timer, on_timer, (uint64_t)delay, 0);
    }
    a->grace_again = 0;
    free(g);
}

static void settle(sweep_t *g)
{
    if (sb_batch_settle(&g->batch))
        done(g);
}

static void on_reaped(sb_admin_t *a, int status, int64_t links, void *data)
{
    (void)a;
    sweep_t *g = data;
    if (status == 2)
        g->early = 1; /* its presence key has not lapsed yet by Redis's clock: again soon */
    if (sb_batch_reaped(&g->batch, status, links))
        done(g);
}

typedef struct {
    sweep_t *g;
    char key[SB_KEY_MAX]; /* P:{T}:away */
} range_t;

/* ZRANGE P:{T}:away 0 N-1 WITHSCORES: reap the due ones, note the next deadline. */
static void on_range(redisReply *reply, const char *error, void *data)
{
    range_t *rg = data;
    sweep_t *g = rg->g;
    char key[SB_KEY_MAX];
    memcpy(key, rg->key, sizeof key);
    free(rg);
    if (error || !reply || reply->type != REDIS_REPLY_ARRAY) {
        sb_batch_fail(&g->batch, error ? "unavailable" : "ZRANGE failed");
        settle(g);
        return;
    }
    /* More entries than were read matter only when all of them are due (sorted: when the last
     * one read is): the rest may be due too, so the next sweep comes soon. Entries ahead are in
     * next_ms; counting them as "more" polled every GRACE_MIN_DELAY_MS for as long as a bucket
     * held 64 away sessions, due or not. */
    if (reply->elements >= 2 * (GRACE_LAST + 1)) {
        const redisReply *sc = reply->element[reply->elements - 1];
        if (sc->type == REDIS_REPLY_STRING &&
            strtoll(sc->str, NULL, 10) + GRACE_SLACK_MS <= g->now_ms)
            g->full = 1;
    }
    for (size_t i = 0; i + 1 < reply->elements && !g->batch.error; i += 2) {
        const redisReply *e = reply->element[i], *sc = reply->element[i + 1];
        if (e->type != REDIS_REPLY_STRING || sc->type != REDIS_REPLY_STRING)
            continue;
        int64_t deadline = strtoll(sc->str, NULL, 10);
        if (deadline + GRACE_SLACK_MS > g->now_ms) {
            if (deadline < g->next_ms)
                g->next_ms = deadline;
            continue; /* sorted: the rest are later */
        }
        /* "R S": room names and ids have no spaces (common/keys.h) */
        size_t rlen;
        if (!sb_reap_entry(e->str, e->len, &rlen)) {
            /* No script wrote it and none can remove it: dropped, or it would stay due. */
            sb_warn("grace: dropping a malformed entry of %s", key);
            const char *argv[] = {"ZREM", key, e->str};
            size_t lens[] = {4, strlen(key), e->len};
            sb_admin_cmd(g->a, NULL, NULL, 3, argv, lens);
            continue;
        }
        size_t slen = e->len - rlen - 1;
        sb_batch_reap(g->a, &g->batch, e->str, rlen, e->str + rlen + 1, slen, "", on_reaped, g);
    }
    settle(g);
}

static void on_tags(sb_admin_t *a, const sb_buckets_t *b, const char *error, void *data)
{
    (void)error; /* always NULL: unreadable slots are missing, and the next pass retries them */
    sweep_t *g = data;
    for (int i = 0; i < b->n && !g->batch.error; i++) {
        range_t *rg = malloc(sizeof *rg);
        if (!rg) {
            sb_batch_fail(&g->batch, "out of memory");
            break;
        }
        rg->g = g;
        if (sb_key_room(rg->key, sizeof rg->key, a->cfg.prefix, b->tags[i], "away") < 0) {
            free(rg);
            continue;
        }
        const char *argv[] = {"ZRANGE", rg->key, "0", SB_STR(GRACE_LAST), "WITHSCORES"};
        sb_batch_add(&g->batch);
        if (sb_batch_issued(&g->batch, sb_admin_cmd(a, on_range, rg, 5, argv, NULL)) != 0)
            free(rg);
    }
    settle(g);
}

/* Sweeps now (the lease holder only), or once more after the sweep in progress. */
static void sweep(sb_admin_t *a)
{
    if (a->stopping || !a->lease_held || !a->redis_up)
        return;
    if (a->grace_sweep) {
        a->grace_again = 1;
        return;
    }
    uv_timer_stop(&a->grace_timer);
    sweep_t *g = calloc(1, sizeof *g);
    if (!g)
        return;
    g->a = a;
    g->now_ms = sb_now_ms();
    g->next_ms = INT64_MAX;
    sb_batch_open(&g->batch);
    if (sb_buckets_read(a, "away", on_tags, g) != 0) {
        free(g);
        return;
    }
    a->grace_sweep = g;
}

void sb_grace_kick(sb_admin_t *a)
{
    sweep(a);
}

void sb_grace_start(sb_admin_t *a)
{
    uv_timer_init(a->loop, &a->grace_timer);
    a->grace_timer.data = a;
}

void sb_grace_stop(sb_admin_t *a)
{
    uv_timer_stop(&a->grace_timer);
    uv_close((uv_handle_t *)&a->grace_timer, NULL);
}
