/* The cluster figures for mesh-status and metrics: first every node whose lease lapsed is
 * reaped (awaited), then the buckets' figures are read and summed (bucket_read on each primary:
 * the counters the room scripts keep in step with every change), with P:admin:last,
 * P:admin:totals and the newest entries of P:events. Reading the maintained counters keeps this
 * O(nodes + buckets) whatever the number of rooms and sockets; slots that could not be read make
 * the figures partial, with the slots named. Does not repair rooms (reconcile.c). */
#include "admin.h"
#include "keys.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sb_admin_t *a;
    sb_status_t st;
    int events;
    int pending;
    const char *error; /* a literal, kept until the last reply (never a request's text) */
    sb_status_cb cb;
    void *data;
} collect_t;

static void done(collect_t *c)
{
    c->cb(c->a, &c->st, c->error, c->data);
    for (int i = 0; i < c->st.nodes.n; i++) {
        free(c->st.nodes.v[i].id);
        json_decref(c->st.nodes.v[i].lease);
    }
    free(c->st.nodes.v);
    json_decref(c->st.last);
    json_decref(c->st.totals);
    json_decref(c->st.events);
    free(c);
}

static void settle(collect_t *c)
{
    if (--c->pending == 0)
        done(c);
}

/* A global key's read failed. On a Redis Cluster that is its shard being lost: the figures are
 * then partial and say what is missing (bit), rather than no answer at all. */
static int failed(collect_t *c, redisReply *reply, const char *error, unsigned bit)
{
    if (error || !reply || sb_reply_is_error(reply)) {
        if (sb_cluster_is_cluster(c->a->db))
            c->st.unread |= bit;
        else if (!c->error)
            /* A literal: error lives in the request, freed when this callback returns, and
             * c->error is read when the last reply settles (the callback contract). */
            c->error = error ? "unavailable" : "Redis error";
        return 1;
    }
    return 0;
}

static void on_buckets(sb_admin_t *a, const sb_buckets_t *b, const char *error, void *data)
{
    (void)a;
    (void)error;
    collect_t *c = data;
    c->st.rooms = b->rooms;
    c->st.members = b->members;
    c->st.links = b->links;
    c->st.linked = b->linked;
    c->st.away = b->away;
    c->st.pj_members = b->pj_members;
    c->st.pj_links = b->pj_links;
    c->st.pj_away = b->pj_away;
    c->st.missing_slots = b->missing_slots;
    c->st.first_missing = b->first_missing;
    /* Not one slot answered: nothing to report, partial or not. */
    if (b->missing_slots >= SB_SLOTS && !c->error)
        c->error = "unavailable";
    settle(c);
}

static void on_last(redisReply *reply, const char *error, void *data)
{
    collect_t *c = data;
    if (!failed(c, reply, error, SB_UNREAD_LAST) && reply->type == REDIS_REPLY_STRING)
        c->st.last = json_loadb(reply->str, reply->len, 0, NULL);
    settle(c);
}

static void on_totals(redisReply *reply, const char *error, void *data)
{
    collect_t *c = data;
    /* Unread totals stay NULL (null in JSON, no _total series), never zeros: a counter that
     * drops to 0 is a reset to Prometheus, and every rate() over it would jump. */
    if (!failed(c, reply, error, SB_UNREAD_TOTALS))
        c->st.totals = sb_totals_from_reply(reply);
    settle(c);
}

static void on_events(redisReply *reply, const char *error, void *data)
{
    collect_t *c = data;
    if (!failed(c, reply, error, SB_UNREAD_EVENTS))
        c->st.events = sb_events_from_reply(reply);
    settle(c);
}

/* Everything after the node walk; 0, or -1 when nothing could be sent (c is then freed and
 * the callback not called: for sb_status_collect, which may not call back synchronously). */
static int after_nodes(collect_t *c, int sync);

static void on_nodes(sb_admin_t *a, sb_nodes_t *nodes, const char *error, void *data)
{
    (void)a;
    collect_t *c = data;
    c->st.nodes = *nodes; /* take the contents */
    free(nodes);
    if (c->st.nodes.unknown || c->st.nodes.index_unread)
        c->st.unread |= SB_UNREAD_NODES;
    if (error) {
        c->error = error;
        done(c);
        return;
    }
    after_nodes(c, 0);
}

static int after_nodes(collect_t *c, int sync)
{
    sb_admin_t *a = c->a;
    char last[SB_KEY_MAX], totals[SB_KEY_MAX], events[SB_KEY_MAX], count[24];
    /* The prefix is at most 64 characters: these names always fit. */
    sb_key_global(last, sizeof last, a->cfg.prefix, "admin:last");
    sb_key_global(totals, sizeof totals, a->cfg.prefix, "admin:totals");
    sb_key_global(events, sizeof events, a->cfg.prefix, "events");
    snprintf(count, sizeof count, "%d", c->events);
    /* Issued together; each reply settles one count; the 1 is held while sending. */
    c->pending = 2;
    int sent = 1;
    if (sb_buckets_read(a, "", on_buckets, c) != 0) {
        /* Not one primary could be asked: no shard answers, nothing to report. */
        c->pending--;
        sent = 0;
        c->error = "unavailable";
    }
    const char *q2[] = {"GET", last};
    const char *q3[] = {"HGETALL", totals};
    const char *q4[] = {"XREVRANGE", events, "+", "-", "COUNT", count};
    struct {
        int argc;
        const char **argv;
        sb_redis_cb cb;
        unsigned bit;
    } qs[] = {{2, q2, on_last, SB_UNREAD_LAST},
              {2, q3, on_totals, SB_UNREAD_TOTALS},
              {6, q4, on_events, SB_UNREAD_EVENTS}};
    int nq = c->events > 0 ? 3 : 2;
    for (int i = 0; i < nq && !c->error; i++) {
        c->pending++;
        if (sb_admin_cmd(a, qs[i].cb, c, qs[i].argc, qs[i].argv, NULL) == 0) {
            sent++;
            continue;
        }
        c->pending--;
        if (sb_cluster_is_cluster(a->db)) {
            c->st.unread |= qs[i].bit; /* its shard is lost: partial */
            continue;
        }
        c->error = "unavailable";
    }
    if (sync && !sent) {
        free(c); /* nothing sent: no callback (the callback contract) */
        return -1;
    }
    settle(c);
    return 0;
}

int sb_status_collect(sb_admin_t *a, int events, sb_status_cb cb, void *data)
{
    collect_t *c = calloc(1, sizeof *c);
    if (!c)
        return SB_ENOMEM;
    c->a = a;
    c->events = events;
    c->cb = cb;
    c->data = data;
    int rc = sb_nodes_walk(a, on_nodes, c);
    if (rc == SB_EUNAVAIL && sb_cluster_is_cluster(a->db)) {
        /* P:nodes is on a lost shard: the figures without the node list, marked partial. */
        c->st.unread |= SB_UNREAD_NODES;
        return after_nodes(c, 1) == 0 ? 0 : SB_EUNAVAIL;
    }
    if (rc != 0)
        free(c);
    return rc;
}

static int by_id(const void *x, const void *y)
{
    const sb_node_info_t *a = x, *b = y;
    return strcmp(a->id, b->id);
}

static json_t *node_json(const sb_node_info_t *n, int64_t now)
{
    json_t *lease = n->lease;
    json_t *epoch = lease ? json_object_get(lease, "epoch") : NULL;
    json_t *sockets = lease ? json_object_get(lease, "sockets") : NULL;
    json_t *joined = lease ? json_object_get(lease, "joined") : NULL;
    json_t *started = lease ? json_object_get(lease, "started_ms") : NULL;
    json_t *draining = lease ? json_object_get(lease, "draining") : NULL;
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(n->id));
    json_object_set_new(o, "epoch", json_is_string(epoch) ? json_copy(epoch) : json_null());
    json_object_set_new(o, "sockets",
                        json_integer(json_is_integer(sockets) ? json_integer_value(sockets) : 0));
    if (json_is_integer(joined))
        json_object_set_new(o, "joined", json_integer(json_integer_value(joined)));
    /* age_ms: how long the node has been up, from the started_ms its lease carries. */
    if (json_is_integer(started)) {
        int64_t age = now - (int64_t)json_integer_value(started);
        json_object_set_new(o, "age_ms", json_integer(age > 0 ? age : 0));
    } else {
        json_object_set_new(o, "age_ms", json_null());
    }
    json_object_set_new(o, "draining", json_boolean(json_is_true(draining)));
    return o;
}

static int64_t less(int64_t total, int64_t part)
{
    return total > part ? total - part : 0;
}

sb_share_t sb_status_share(const sb_status_t *st, int peerjs)
{
    if (peerjs)
        return (sb_share_t){st->pj_members, st->pj_links, st->pj_away};
    return (sb_share_t){less(st->members, st->pj_members), less(st->links, st->pj_links),
                        less(st->away, st->pj_away)};
}

static json_t *share_json(const sb_status_t *st, int peerjs)
{
    sb_share_t s = sb_status_share(st, peerjs);
    return json_pack("{s:I,s:I,s:I}", "users", (json_int_t)s.users, "links", (json_int_t)s.links,
                     "away", (json_int_t)s.away);
}

json_t *sb_status_json(const sb_status_t *st)
{
    int64_t now = sb_now_ms();
    sb_node_info_t *sorted = NULL;
    if (st->nodes.n > 0) {
        sorted = malloc(sizeof *sorted * (size_t)st->nodes.n);
        if (sorted) {
            memcpy(sorted, st->nodes.v, sizeof *sorted * (size_t)st->nodes.n);
            qsort(sorted, (size_t)st->nodes.n, sizeof *sorted, by_id);
        }
    }
    json_t *nodes = json_array();
    for (int i = 0; sorted && i < st->nodes.n; i++)
        json_array_append_new(nodes, node_json(&sorted[i], now));
    free(sorted);
    /* Entries are {id, type, at, data}: the documented shape (docs/admin.md), plus the stream id
     * for clients that dedupe. */
    json_t *events = st->events ? json_incref(st->events) : json_array();
    json_t *totals = st->totals ? json_incref(st->totals) : json_null(); /* unreadable */
    json_t *o = json_pack("{s:o,s:I,s:I,s:I,s:I,s:O,s:o,s:o,s:b}", "nodes", nodes, "rooms",
                          (json_int_t)st->rooms, "active_users", (json_int_t)st->members,
                          "p2p_links", (json_int_t)st->links, "p2p_users", (json_int_t)st->linked,
                          "last_reconcile", st->last ? st->last : json_null(), "totals", totals,
                          "events", events, "partial", st->missing_slots > 0 || st->unread);
    if (o)
        json_object_set_new(o, "away_sockets", json_integer(st->away));
    /* The totals above split by protocol: PeerJS clients (issue 16) and native ones. */
    if (o) {
        json_object_set_new(o, "native", share_json(st, 0));
        json_object_set_new(o, "peerjs", share_json(st, 1));
    }
    /* Never silently low: figures that miss slots say which. */
    if (o && st->missing_slots > 0)
        json_object_set_new(
            o, "missing_slots",
            json_pack("{s:i,s:i}", "count", st->missing_slots, "first", st->first_missing));
    /* And the global keys that could not be read (their shard is lost), by what they feed. */
    if (o && st->unread) {
        static const struct {
            unsigned bit;
            const char *name;
        } names[] = {{SB_UNREAD_NODES, "nodes"},
                     {SB_UNREAD_LAST, "last_reconcile"},
                     {SB_UNREAD_TOTALS, "totals"},
                     {SB_UNREAD_EVENTS, "events"}};
        json_t *u = json_array();
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (st->unread & names[i].bit)
                json_array_append_new(u, json_string(names[i].name));
        json_object_set_new(o, "unreadable", u);
    }
    return o;
}
