/* The reconcile pass. A pass: (1) walks the node index and reaps every node whose lease lapsed
 * (nodes.c, reap.c); (2) for each bucket with rooms (bucket_read, buckets.c), sweeps its
 * P:{T}:rooms with SSCAN of bounded COUNT (scan.c), runs room_check on each room of a batch (it
 * repairs the room's figures, half links, degrees and node counts, and returns the members
 * without presence), and reaps those members with room_remove "expired"; (3) runs stats_check
 * on the bucket while its rooms index is small enough; (4) records the result in P:admin:last,
 * P:admin:totals and, when something changed, the activity log. Only one batch is in flight at
 * a time, so no Redis call is long and the loop stays free. Concurrent callers share one pass.
 * Does not decide when passes run (lease.c) or serve HTTP. */
#include "admin.h"
#include "keys.h"
#include "log.h"
#include "scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pwaiter {
    struct pwaiter *next;
    sb_pass_cb cb;
    void *data;
} pwaiter_t;

struct sb_pass {
    sb_admin_t *a;
    pwaiter_t *waiters;
    sb_pass_result_t res;
    uint64_t started_ns;      /* uv_hrtime() at the start */
    int by_lease;             /* started while this admin held the lease: may log node-up */
    char (*tags)[SB_TAG_MAX]; /* buckets with rooms (or figures) */
    int ntags, itag;
    sb_scan_t rooms;  /* P:{T}:rooms of tags[itag - 1] */
    sb_batch_t batch; /* the room_check and reap calls of the current SSCAN batch */
};

/* Why rooms are checked a slice at a time past this size: room_check costs about 13 us per
 * member inside Redis, which serves nobody else meanwhile (a PeerJS key of 50,000 ids took
 * 629 ms, every pass). A room of more members is checked a slice per call (lua/room_check.lua),
 * each about 6 ms; its room-wide figures are then kept by the scripts alone (docs/admin.md). */
#define CHECK_SLICE "500"

typedef struct {
    sb_pass_t *p;
    char room[80];
    char cursor[24]; /* HSCAN cursor of the room's next slice ("0": the first) */
} check_t;

static int issue_check(sb_pass_t *p, check_t *c);

json_t *sb_pass_json(const sb_pass_result_t *r)
{
    char at[40];
    sb_iso8601(r->at_ms, at, sizeof at);
    int64_t total = 0;
    json_t *kinds = json_object();
    for (int k = 0; k < SB_VIOL__COUNT; k++) {
        total += r->violations[k];
        json_object_set_new(kinds, sb_violation_names[k], json_integer(r->violations[k]));
    }
    return json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:o,s:I,s:I,s:I,s:b,s:I}", "at", at, "duration_ms",
                     (json_int_t)r->duration_ms, "stale_sockets", (json_int_t)r->stale_sockets,
                     "stale_links", (json_int_t)r->stale_links, "remaining_links",
                     (json_int_t)r->remaining_links, "violations", (json_int_t)total,
                     "violations_by_kind", kinds, "swept_sockets", (json_int_t)r->swept_sockets,
                     "nodes_down", (json_int_t)r->nodes_down, "rooms_checked",
                     (json_int_t)r->rooms_checked, "stats_checked", r->stats_checked,
                     "check_errors", (json_int_t)r->check_errors);
}

/* ---- the end of a pass --------------------------------------------------------------------- */

static void record(sb_pass_t *p)
{
    sb_admin_t *a = p->a;
    sb_pass_result_t *r = &p->res;
    json_t *j = sb_pass_json(r);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    char key[SB_KEY_MAX];
    if (text && sb_key_global(key, sizeof key, a->cfg.prefix, "admin:last") >= 0) {
        const char *argv[] = {"SET", key, text};
        sb_admin_cmd(a, NULL, NULL, 3, argv, NULL);
        free(text);
    }
    int64_t violations = 0;
    for (int k = 0; k < SB_VIOL__COUNT; k++) {
        violations += r->violations[k];
        sb_totals_add(a, sb_violation_totals[k], r->violations[k]);
    }
    sb_totals_add(a, "reconcile_runs", 1);
    sb_totals_add(a, "check_errors", r->check_errors);
    sb_totals_add(a, "violations_repaired", violations);
    /* Reaps added their own sockets and links as they went; the repaired halves are the rest
     * of this pass's stale_links. */
    sb_totals_add(a, "stale_links_removed", r->violations[SB_VIOL_HALF_LINK]);
    if (r->stale_sockets || r->stale_links || violations) {
        /* Only passes that changed something are logged: an idle cluster's log stays quiet. */
        sb_events_add(
            a, "reconcile",
            json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "stale_sockets",
                      (json_int_t)r->stale_sockets, "stale_links", (json_int_t)r->stale_links,
                      "violations", (json_int_t)violations, "remaining_links",
                      (json_int_t)r->remaining_links, "duration_ms", (json_int_t)r->duration_ms,
                      "stale_connections", (json_int_t)r->stale_links, "remaining_connections",
                      (json_int_t)r->remaining_links, "active_users", (json_int_t)r->active_users));
        sb_info("reconcile: %lld stale sockets, %lld stale links, %lld violations repaired "
                "(counter %lld, half-link %lld, degree %lld) in %lld ms",
                (long long)r->stale_sockets, (long long)r->stale_links, (long long)violations,
                (long long)r->violations[SB_VIOL_COUNTER],
                (long long)r->violations[SB_VIOL_HALF_LINK],
                (long long)r->violations[SB_VIOL_DEGREE], (long long)r->duration_ms);
    } else {
        sb_debug("reconcile: nothing to repair (%lld ms)", (long long)r->duration_ms);
    }
}

static void finish(sb_pass_t *p, const char *error)
{
    sb_admin_t *a = p->a;
    double seconds = (double)(uv_hrtime() - p->started_ns) / 1e9;
    p->res.duration_ms = (int64_t)(seconds * 1000.0 + 0.5);
    if (a->pass == p)
        a->pass = NULL;
    free(p->tags);
    if (!error) {
        sb_admin_metrics_observe_pass(a, seconds);
        record(p);
        sb_grace_kick(a);
    } else if (!a->stopping) {
        sb_warn("reconcile pass failed: %s", error);
    }
    pwaiter_t *w = p->waiters;
    while (w) {
        pwaiter_t *next = w->next;
        w->cb(a, &p->res, error, w->data);
        free(w);
        w = next;
    }
    free(p);
}

/* ---- (4) the figures after the pass -------------------------------------------------------- */

static void on_figures(sb_admin_t *a, const sb_buckets_t *b, const char *error, void *data)
{
    (void)a;
    (void)error;
    sb_pass_t *p = data;
    p->res.remaining_links = b->links;
    p->res.active_users = b->members;
    finish(p, NULL);
}

static void read_figures(sb_pass_t *p)
{
    if (sb_buckets_read(p->a, "", on_figures, p) != 0)
        finish(p, "unavailable");
}

static int next_bucket(sb_pass_t *p);

/* ---- (3) stats_check of a bucket, bounded -------------------------------------------------- */

static void on_stats_checked(redisReply *reply, const char *error, void *data)
{
    sb_pass_t *p = data;
    if (error) {
        finish(p, error);
        return;
    }
    if (sb_reply_is_transient(reply)) { /* "not now" (OOM, LOADING, ...): the pass fails */
        sb_warn("reconcile: stats_check of %s: %s", p->rooms.key, reply->str);
        finish(p, "unavailable");
        return;
    }
    if (sb_reply_is_error(reply)) {
        /* Redis refused it (a room's stats key of the wrong type, ...): this bucket's figures
         * stay as they are, counted and logged; the other buckets are still checked. */
        sb_log_limited(SB_LOG_ERROR, "reconcile: stats_check of %s refused: %s", p->rooms.key,
                       reply->str);
        p->res.check_errors++;
    } else {
        p->res.stats_checked = 1;
        p->res.violations[SB_VIOL_COUNTER] += sb_reply_int(reply, 0, 0);
    }
    if (next_bucket(p) != 0)
        finish(p, "unavailable");
}

static void on_rooms_count(redisReply *reply, const char *error, void *data)
{
    sb_pass_t *p = data;
    sb_admin_t *a = p->a;
    if (error || !reply || reply->type != REDIS_REPLY_INTEGER) {
        finish(p, error ? error : "bad SCARD reply");
        return;
    }
    if (reply->integer > SB_STATS_CHECK_MAX_ROOMS) {
        /* stats_check reads every room of the bucket in one script: above this size it would
         * hold Redis for too long. The per-room checks already applied their deltas. */
        sb_debug("reconcile: %lld rooms in a bucket: stats_check skipped (above %d)",
                 (long long)reply->integer, SB_STATS_CHECK_MAX_ROOMS);
        if (next_bucket(p) != 0)
            finish(p, "unavailable");
        return;
    }
    char stats[SB_KEY_MAX];
    sb_key_room(stats, sizeof stats, a->cfg.prefix, p->tags[p->itag - 1], "stats"); /* fits */
    const char *args[] = {stats, a->cfg.prefix};
    if (sb_admin_script(a, "stats_check", 1, 2, args, NULL, on_stats_checked, p) != 0)
        finish(p, "unavailable");
}

static void check_stats(sb_pass_t *p)
{
    const char *argv[] = {"SCARD", p->rooms.key};
    if (sb_admin_cmd(p->a, on_rooms_count, p, 2, argv, NULL) != 0)
        finish(p, "unavailable");
}

/* ---- (2) the room sweep -------------------------------------------------------------------- */

static int scan_rooms(sb_pass_t *p);

static void batch_complete(sb_pass_t *p)
{
    const char *error = sb_batch_close(p->a, &p->batch);
    if (error) {
        finish(p, error);
        return;
    }
    if (sb_scan_done(&p->rooms)) {
        check_stats(p);
        return;
    }
    if (scan_rooms(p) != 0)
        finish(p, "unavailable");
}

static void settle(sb_pass_t *p)
{
    if (sb_batch_settle(&p->batch))
        batch_complete(p);
}

static void on_swept(sb_admin_t *a, int status, int64_t links, void *data)
{
    (void)a;
    sb_pass_t *p = data;
    if (status == 1) {
        p->res.stale_sockets++;
        p->res.swept_sockets++;
        p->res.stale_links += links;
    }
    if (sb_batch_reaped(&p->batch, status, links))
        batch_complete(p);
}

static void on_checked(redisReply *reply, const char *error, void *data)
{
    check_t *c = data;
    sb_pass_t *p = c->p;
    if (error || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 4 ||
        reply->element[3]->type != REDIS_REPLY_STRING ||
        reply->element[3]->len >= sizeof c->cursor) {
        if (error || sb_reply_is_transient(reply)) {
            /* No connection, a timeout, or Redis saying "not now" (OOM: room_check writes;
             * LOADING, BUSY, a failover): the pass fails and the next one retries; a check
             * error is a room Redis refuses for good. */
            sb_warn("reconcile: room_check of %s: %s", c->room, error ? error : reply->str);
            /* A literal: error lives in the request, freed when this returns, and the batch
             * keeps its failure until its last call answers (ASan caught the pass logging it
             * after). */
            sb_batch_fail(&p->batch, "unavailable");
        } else {
            /* Redis answered but refused the room (a key of the wrong type, ...): one broken
             * room must not stop the pass for the others, or every pass would fail on it and
             * nothing after it (stats_check) would ever run. Counted, logged, left as is: the
             * admin cannot know what such a key should hold (docs/admin.md). */
            sb_log_limited(SB_LOG_ERROR, "reconcile: room_check of %s refused: %s", c->room,
                           sb_reply_is_error(reply) ? reply->str : "bad reply");
            p->res.check_errors++;
        }
        free(c);
        settle(p);
        return;
    }
    int first = strcmp(c->cursor, "0") == 0;
    memcpy(c->cursor, reply->element[3]->str, reply->element[3]->len + 1);
    int more = strcmp(c->cursor, "0") != 0;
    p->res.rooms_checked += first;
    int64_t counter = sb_reply_int(reply, 0, 0), half = sb_reply_int(reply, 1, 0),
            degree = sb_reply_int(reply, 2, 0);
    p->res.violations[SB_VIOL_COUNTER] += counter;
    p->res.violations[SB_VIOL_HALF_LINK] += half;
    p->res.violations[SB_VIOL_DEGREE] += degree;
    p->res.stale_links += half;
    if (counter || half || degree)
        sb_warn("reconcile: room %s repaired: %lld counter, %lld half-link, %lld degree fixes",
                c->room, (long long)counter, (long long)half, (long long)degree);
    /* Members without presence on a live node's watch (its lease outlived them, or it could
     * not refresh them): reap each; room_remove re-checks the presence. */
    for (size_t i = 4; i < reply->elements && !p->batch.error; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len == 0)
            continue;
        sb_batch_reap(p->a, &p->batch, c->room, strlen(c->room), e->str, e->len, "", on_swept, p);
    }
    /* The room's next slice, one at a time: each call is short, and other clients' commands
     * run between them. */
    if (!more || p->batch.error || issue_check(p, c) != 0)
        free(c);
    settle(p);
}

/* room_check of c->room from c->cursor, counted in the batch. 0: issued (c is the callback's). */
static int issue_check(sb_pass_t *p, check_t *c)
{
    sb_admin_t *a = p->a;
    size_t len = strlen(c->room);
    char key[SB_KEY_MAX], bucket[SB_KEY_MAX];
    const char *tag = sb_admin_tag(a, c->room, len);
    sb_key_room_n(key, sizeof key, a->cfg.prefix, c->room, len, "members"); /* valid */
    if (!tag || sb_key_room(bucket, sizeof bucket, a->cfg.prefix, tag, "stats") < 0) {
        sb_batch_fail(&p->batch, "out of memory");
        return -1;
    }
    const char *args[] = {key, bucket, a->cfg.prefix, c->room, CHECK_SLICE, c->cursor};
    sb_batch_add(&p->batch);
    return sb_batch_issued(&p->batch,
                           sb_admin_script(a, "room_check", 2, 6, args, NULL, on_checked, c));
}

static void on_rooms(const redisReply *items, const char *error, void *data)
{
    sb_pass_t *p = data;
    if (error) {
        finish(p, error);
        return;
    }
    sb_batch_open(&p->batch);
    for (size_t i = 0; i < items->elements && !p->batch.error; i++) {
        const redisReply *e = items->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        if (!sb_valid_stored_room_n(e->str, e->len)) {
            sb_warn("reconcile: ignoring an invalid room name in %s", p->rooms.key);
            continue;
        }
        check_t *c = malloc(sizeof *c);
        if (!c) {
            sb_batch_fail(&p->batch, "out of memory");
            break;
        }
        c->p = p;
        memcpy(c->room, e->str, e->len + 1);
        strcpy(c->cursor, "0");
        if (issue_check(p, c) != 0)
            free(c);
    }
    settle(p);
}

static int scan_rooms(sb_pass_t *p)
{
    return sb_scan_next(&p->rooms, on_rooms, p);
}

/* Starts the sweep of the next bucket's rooms, or reads the figures after the last. */
static int next_bucket(sb_pass_t *p)
{
    if (p->itag >= p->ntags) {
        read_figures(p);
        return 0;
    }
    char key[SB_KEY_MAX];
    const char *tag = p->tags[p->itag++];
    if (sb_key_room(key, sizeof key, p->a->cfg.prefix, tag, "rooms") < 0 ||
        sb_scan_init(&p->rooms, p->a->db, key) != 0)
        return SB_EINVAL;
    return scan_rooms(p);
}

static void on_buckets(sb_admin_t *a, const sb_buckets_t *b, const char *error, void *data)
{
    (void)a;
    (void)error;
    sb_pass_t *p = data;
    if (b->missing_slots)
        sb_warn_limited("reconcile: %d slots unreadable (first %d): their rooms wait for the next "
                        "pass",
                        b->missing_slots, b->first_missing);
    if (sb_buckets_keep(b, &p->tags, &p->ntags) != 0) {
        finish(p, "out of memory");
        return;
    }
    if (next_bucket(p) != 0)
        finish(p, "unavailable");
}

/* ---- (1) dead nodes ------------------------------------------------------------------------ */

static void free_known(void *value, void *arg)
{
    (void)arg;
    free(value);
}

/* node-up for every node (or new epoch) this admin had not seen; the first walk after taking
 * the lease only learns the nodes, so a takeover does not log the whole cluster again. */
static void note_nodes(sb_admin_t *a, const sb_nodes_t *nodes)
{
    sb_map_t fresh;
    sb_map_init(&fresh);
    for (int i = 0; i < nodes->n; i++) {
        json_t *ep = nodes->v[i].lease ? json_object_get(nodes->v[i].lease, "epoch") : NULL;
        const char *epoch = json_is_string(ep) ? json_string_value(ep) : "";
        const char *known = sb_map_get(&a->known_nodes, nodes->v[i].id);
        if (a->nodes_primed && (!known || strcmp(known, epoch) != 0))
            sb_events_add(a, "node-up",
                          json_pack("{s:s,s:s}", "node", nodes->v[i].id, "epoch", epoch));
        char *copy = strdup(epoch);
        if (copy && sb_map_put(&fresh, nodes->v[i].id, copy) != 0)
            free(copy);
    }
    sb_reconcile_free(a);
    a->known_nodes = fresh;
    a->nodes_primed = 1;
}

static void on_nodes(sb_admin_t *a, sb_nodes_t *nodes, const char *error, void *data)
{
    sb_pass_t *p = data;
    p->res.stale_sockets += nodes->reaped.sockets;
    p->res.stale_links += nodes->reaped.links;
    p->res.nodes_down += nodes->reaped.forgotten;
    /* Only a whole walk tells who is up: with P:nodes unread the list is short, and a node
     * whose lease could not be read has no epoch; noting them would log node-up for epoch ""
     * now and for every such node again once its shard is back. */
    if (!error && p->by_lease && a->lease_held && !nodes->index_unread && !nodes->unknown)
        note_nodes(a, nodes);
    sb_nodes_free(nodes);
    if (error) {
        finish(p, error);
        return;
    }
    if (sb_buckets_read(a, "rooms", on_buckets, p) != 0)
        finish(p, "unavailable");
}

/* ---- starting and sharing a pass ----------------------------------------------------------- */

void sb_reconcile_init(sb_admin_t *a)
{
    sb_map_init(&a->known_nodes);
}

void sb_reconcile_free(sb_admin_t *a)
{
    sb_map_each(&a->known_nodes, free_known, NULL);
    sb_map_free(&a->known_nodes);
}

int sb_reconcile_run(sb_admin_t *a, sb_pass_cb cb, void *data)
{
    pwaiter_t *w = NULL;
    if (cb) {
        w = calloc(1, sizeof *w);
        if (!w)
            return SB_ENOMEM;
        w->cb = cb;
        w->data = data;
    }
    if (a->pass) {
        if (w) {
            w->next = a->pass->waiters;
            a->pass->waiters = w;
        }
        return 0;
    }
    if (a->stopping || !a->redis_up) {
        free(w);
        return SB_EUNAVAIL;
    }
    sb_pass_t *p = calloc(1, sizeof *p);
    if (!p) {
        free(w);
        return SB_ENOMEM;
    }
    p->a = a;
    p->waiters = w;
    p->by_lease = a->lease_held;
    p->res.at_ms = sb_now_ms();
    p->started_ns = uv_hrtime();
    int rc = sb_nodes_walk(a, on_nodes, p);
    if (rc != 0) {
        free(p);
        free(w);
        return rc;
    }
    a->pass = p;
    return 0;
}
