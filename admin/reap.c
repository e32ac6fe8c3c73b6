/* Reaping what dead nodes left: a node whose lease lapsed is walked through its socket index in
 * every bucket that has one, P:{T}:node:N:sockets (found with bucket_read; then SSCAN, one batch
 * of room_remove "expired" calls at a time), then forgotten (removed from P:nodes) once its
 * lease is still absent and nothing of it is left. Work is proportional to the dead node's
 * sockets (plus one bucket_read over the buckets). room_remove re-checks
 * inside itself that the presence key is absent ("live" otherwise), so reaping never removes a
 * live socket and running it twice (two admins, or mesh-status and a pass) is harmless: only
 * one run gets "ok" for a socket, so the counts stay exact. Does not decide which nodes are
 * dead (nodes.c) or sweep rooms (reconcile.c). */
#include "admin.h"
#include "keys.h"
#include "log.h"
#include "scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- one socket ---------------------------------------------------------------------------- */

typedef struct {
    sb_admin_t *a;
    sb_reap_socket_cb cb;
    void *data;
    char room[SB_ROOM_MAX + 1], sid[SB_SID_MAX + 1];
} sock_t;

static void on_socket_removed(redisReply *reply, const char *error, void *data)
{
    sock_t *s = data;
    int status = -1;
    int64_t links = 0;
    if (error) {
        sb_debug("reap: room_remove failed: %s", error);
    } else if (sb_reply_is_error(reply)) {
        sb_error("reap: room_remove refused: %s", reply->str);
    } else {
        const char *st = sb_reply_str(reply, 0, NULL);
        if (st && strcmp(st, "ok") == 0) {
            status = 1;
            links = sb_reply_int(reply, 1, 0);
            /* room_remove leaves the activity log to its caller (another slot). */
            if (links > 0)
                sb_events_add(s->a, "p2p-cleanup",
                              json_pack("{s:s,s:s,s:s,s:I}", "reason", "expired", "room", s->room,
                                        "id", s->sid, "stale_connections", (json_int_t)links));
        } else if (st) {
            /* "live": its node refreshed it, or it is away within its grace; "away": it was
             * marked away now (its client may resume elsewhere): both keep the node listed
             * until its index drains; "gone": already reaped */
            status = strcmp(st, "live") == 0 || strcmp(st, "away") == 0 ? 2 : 0;
            if (strcmp(st, "away") == 0 && s->a->on_marked_away)
                s->a->on_marked_away(s->a); /* its deadline joins the grace timer */
        }
    }
    s->cb(s->a, status, links, s->data);
    free(s);
}

int sb_reap_entry(const char *s, size_t len, size_t *rlen)
{
    const char *sp = memchr(s, ' ', len);
    if (!sp)
        return 0;
    size_t r = (size_t)(sp - s), slen = len - r - 1;
    if (!sb_valid_stored_room_n(s, r) || slen == 0 || slen > SB_SID_MAX ||
        memchr(sp + 1, '\0', slen) || memchr(sp + 1, ' ', slen))
        return 0;
    *rlen = r;
    return 1;
}

int sb_reap_socket(sb_admin_t *a, const char *room, size_t rlen, const char *sid, size_t slen,
                   const char *node, sb_reap_socket_cb cb, void *data)
{
    char key[SB_KEY_MAX], bucket[SB_KEY_MAX];
    const char *tag = sb_valid_stored_room_n(room, rlen) ? sb_admin_tag(a, room, rlen) : NULL;
    if (!tag || slen == 0 || slen > SB_SID_MAX ||
        sb_key_room_n(key, sizeof key, a->cfg.prefix, room, rlen, "members") < 0 ||
        sb_key_room(bucket, sizeof bucket, a->cfg.prefix, tag, "stats") < 0)
        return SB_EINVAL;
    sock_t *s = malloc(sizeof *s);
    if (!s)
        return SB_ENOMEM;
    s->a = a;
    s->cb = cb;
    s->data = data;
    memcpy(s->room, room, rlen);
    s->room[rlen] = '\0';
    memcpy(s->sid, sid, slen);
    s->sid[slen] = '\0';
    const char *args[] = {key, bucket, a->cfg.prefix, room, sid, "expired", node ? node : ""};
    size_t lens[] = {strlen(key), strlen(bucket),         strlen(a->cfg.prefix), rlen, slen,
                     7,           node ? strlen(node) : 0};
    int rc = sb_admin_script(a, "room_remove", 2, 7, args, lens, on_socket_removed, s);
    if (rc != 0)
        free(s);
    return rc;
}

/* ---- the reaps in progress ---------------------------------------------------------------- */

void sb_reap_init(sb_admin_t *a)
{
    sb_map_init(&a->reaping);
}

void sb_reap_free(sb_admin_t *a)
{
    /* Empty by now: closing the Redis client ended every reap (each removes its own entry). */
    sb_map_free(&a->reaping);
}

/* ---- a batch of reaps ---------------------------------------------------------------------- */

void sb_batch_open(sb_batch_t *b)
{
    b->pending = 1; /* guard: the batch cannot complete while it is being issued */
}

void sb_batch_add(sb_batch_t *b)
{
    b->pending++;
}

void sb_batch_fail(sb_batch_t *b, const char *error)
{
    if (!b->error)
        b->error = error;
}

int sb_batch_issued(sb_batch_t *b, int rc)
{
    if (rc != 0) {
        b->pending--;
        sb_batch_fail(b, "unavailable");
    }
    return rc;
}

int sb_batch_settle(sb_batch_t *b)
{
    return --b->pending == 0;
}

int sb_batch_reap(sb_admin_t *a, sb_batch_t *b, const char *room, size_t rlen, const char *sid,
                  size_t slen, const char *node, sb_reap_socket_cb cb, void *data)
{
    sb_batch_add(b);
    int rc = sb_reap_socket(a, room, rlen, sid, slen, node, cb, data);
    if (rc == SB_EINVAL) {
        /* A name no script wrote (the room or the id invalid): nothing can remove it, and
         * failing the batch for it would fail every pass and every figure from then on. */
        b->pending--;
        sb_warn_limited("reap: skipping a socket with an invalid room or id (%zu and %zu bytes)",
                        rlen, slen);
        return rc;
    }
    return sb_batch_issued(b, rc);
}

int sb_batch_reaped(sb_batch_t *b, int status, int64_t links)
{
    if (status == 1) {
        b->sockets++;
        b->links += links;
    } else if (status < 0) {
        sb_batch_fail(b, "room_remove failed");
    }
    return sb_batch_settle(b);
}

const char *sb_batch_close(sb_admin_t *a, sb_batch_t *b)
{
    sb_totals_add(a, "stale_sockets_removed", b->sockets);
    sb_totals_add(a, "stale_links_removed", b->links);
    const char *error = b->error;
    memset(b, 0, sizeof *b);
    return error;
}

/* ---- one dead node ------------------------------------------------------------------------- */

typedef struct waiter {
    struct waiter *next;
    sb_reap_cb cb;
    void *data;
} waiter_t;

typedef struct {
    sb_admin_t *a;
    char node[96];
    char (*tags)[SB_TAG_MAX]; /* buckets with an index of this node */
    int ntags, itag;
    int kept;        /* a socket was live, or some bucket could not be read: not forgotten */
    sb_scan_t index; /* P:{T}:node:N:sockets of tags[itag] */
    waiter_t *waiters;
    sb_reap_result_t res;
    sb_batch_t batch; /* the room_remove calls of the current SSCAN batch */
} reap_t;

static void finish(reap_t *r, const char *error)
{
    sb_admin_t *a = r->a;
    /* Off the map first: a waiter may start a new reap of the same node. */
    sb_map_del(&a->reaping, r->node);
    if (error)
        sb_warn("reap of node %s stopped: %s (%lld sockets removed so far)", r->node, error,
                (long long)r->res.sockets);
    else if (r->res.sockets || r->res.forgotten)
        sb_info("node %s reaped: %lld stale sockets, %lld links removed%s", r->node,
                (long long)r->res.sockets, (long long)r->res.links,
                r->res.forgotten ? ", node forgotten" : "");
    waiter_t *w = r->waiters;
    while (w) {
        waiter_t *next = w->next;
        w->cb(a, &r->res, error, w->data);
        free(w);
        w = next;
    }
    free(r->tags);
    free(r);
}

static void on_forgotten(redisReply *reply, const char *error, void *data)
{
    reap_t *r = data;
    if (error || sb_reply_is_error(reply)) {
        finish(r, error ? error : reply->str);
        return;
    }
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
        r->res.forgotten = 1;
        /* Only the run whose SREM removed the node gets 1: one event per death, however many
         * admins reap. */
        sb_events_add(r->a, "node-down",
                      json_pack("{s:s,s:I,s:I}", "node", r->node, "stale_sockets",
                                (json_int_t)r->res.sockets, "stale_links",
                                (json_int_t)r->res.links));
    }
    finish(r, NULL);
}

static int scan_next(reap_t *r);

/* The lease is checked again, then the node leaves P:nodes. Why not atomic with the check: the
 * lease and P:nodes are in different slots on a cluster. A node that is in fact alive writes
 * both again with its next heartbeat, and a socket it joined in between is found by the
 * reconcile pass (a member without presence) should it die before that. */
static void on_lease_checked(redisReply *reply, const char *error, void *data)
{
    reap_t *r = data;
    sb_admin_t *a = r->a;
    if (error || !reply || reply->type != REDIS_REPLY_INTEGER) {
        finish(r, error ? error : "bad EXISTS reply");
        return;
    }
    if (reply->integer != 0) {
        finish(r, NULL); /* back: a live node */
        return;
    }
    char key[SB_KEY_MAX];
    sb_key_global(key, sizeof key, a->cfg.prefix, "nodes"); /* fits: prefix <= 64 */
    const char *argv[] = {"SREM", key, r->node};
    if (sb_admin_cmd(a, on_forgotten, r, 3, argv, NULL) != 0)
        finish(r, "unavailable");
}

static void forget(reap_t *r)
{
    sb_admin_t *a = r->a;
    if (r->kept) {
        finish(r, NULL);
        return;
    }
    char key[SB_KEY_MAX];
    sb_key_node_lease(key, sizeof key, a->cfg.prefix, r->node); /* fits: id <= 64 */
    const char *argv[] = {"EXISTS", key};
    if (sb_admin_cmd(a, on_lease_checked, r, 2, argv, NULL) != 0)
        finish(r, "unavailable");
}

/* Starts the walk of the next bucket's index, or forgets the node after the last. */
static void next_bucket(reap_t *r)
{
    sb_admin_t *a = r->a;
    if (r->itag >= r->ntags) {
        forget(r);
        return;
    }
    char key[SB_KEY_MAX];
    const char *tag = r->tags[r->itag++];
    if (sb_key_node_sockets(key, sizeof key, a->cfg.prefix, tag, r->node) < 0 ||
        sb_scan_init(&r->index, a->db, key) != 0 || scan_next(r) != 0)
        finish(r, "unavailable");
}

static void batch_complete(reap_t *r)
{
    sb_admin_t *a = r->a;
    const char *error = sb_batch_close(a, &r->batch);
    if (error) {
        finish(r, error);
        return;
    }
    if (!sb_scan_done(&r->index)) {
        if (scan_next(r) != 0)
            finish(r, "unavailable");
        return;
    }
    next_bucket(r);
}

static void on_socket(sb_admin_t *a, int status, int64_t links, void *data)
{
    (void)a;
    reap_t *r = data;
    if (status == 1) {
        r->res.sockets++;
        r->res.links += links;
    } else if (status == 2) {
        r->kept = 1; /* a live socket: the node is not gone */
    }
    if (sb_batch_reaped(&r->batch, status, links))
        batch_complete(r);
}

static void on_scan(const redisReply *items, const char *error, void *data)
{
    reap_t *r = data;
    sb_admin_t *a = r->a;
    if (error) {
        finish(r, error);
        return;
    }
    sb_batch_open(&r->batch);
    for (size_t i = 0; i < items->elements; i++) {
        const redisReply *e = items->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        size_t rlen;
        if (!sb_reap_entry(e->str, e->len, &rlen)) {
            /* Not "R S" with a room and an id the scripts write: no script wrote it and none
             * can remove it; drop it so the index can drain and the node can be forgotten
             * (kept, it failed the node's reap, and with it every figure, every pass). */
            sb_warn("reap: dropping malformed index entry of node %s", r->node);
            const char *argv[] = {"SREM", r->index.key, e->str};
            size_t lens[] = {4, strlen(r->index.key), e->len};
            sb_admin_cmd(a, NULL, NULL, 3, argv, lens);
            continue;
        }
        if (sb_batch_reap(a, &r->batch, e->str, rlen, e->str + rlen + 1, e->len - rlen - 1, r->node,
                          on_socket, r) != 0 &&
            r->batch.error)
            break;
    }
    if (sb_batch_settle(&r->batch))
        batch_complete(r);
}

static int scan_next(reap_t *r)
{
    return sb_scan_next(&r->index, on_scan, r);
}

/* The buckets that hold an index of the node: each is walked in turn. */
static void on_buckets(sb_admin_t *a, const sb_buckets_t *b, const char *error, void *data)
{
    (void)a;
    (void)error;
    reap_t *r = data;
    if (b->missing_slots)
        r->kept = 1; /* some index may be unread: the node stays listed for the next pass */
    if (sb_buckets_keep(b, &r->tags, &r->ntags) != 0) {
        finish(r, "out of memory");
        return;
    }
    next_bucket(r);
}

int sb_reap_node(sb_admin_t *a, const char *node, sb_reap_cb cb, void *data)
{
    waiter_t *w = calloc(1, sizeof *w);
    if (!w)
        return SB_ENOMEM;
    w->cb = cb;
    w->data = data;
    reap_t *r = sb_map_get(&a->reaping, node);
    if (r) {
        /* Join the reap in progress: it re-checks every socket anyway, and a socket it has
         * already passed as "live" is for the next pass (the lag bound allows one interval). */
        w->next = r->waiters;
        r->waiters = w;
        return 0;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        free(w);
        return SB_ENOMEM;
    }
    r->a = a;
    snprintf(r->node, sizeof r->node, "%s", node);
    char suffix[SB_KEY_MAX];
    int rc = SB_EINVAL;
    if (snprintf(suffix, sizeof suffix, "node:%s:sockets", node) < (int)sizeof suffix)
        rc = sb_buckets_read(a, suffix, on_buckets, r);
    if (rc != 0) {
        free(r);
        free(w);
        return rc;
    }
    r->waiters = w;
    /* Without the map entry (out of memory) a second caller starts its own reap of the node:
     * harmless, since room_remove re-checks everything inside itself and the forgetting checks
     * the lease again. */
    if (sb_map_put(&a->reaping, r->node, r) != 0)
        sb_warn("reap of node %s: not joinable (out of memory)", r->node);
    sb_debug("reaping node %s: its lease lapsed", node);
    return 0;
}
