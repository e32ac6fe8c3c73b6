/* Pub/sub: the node channels this node subscribes to (one per bucket it has rooms in, plus its
 * home channel for the probe), and dispatch of what arrives on them. Room events (join, left,
 * link, unlink) and relayed signals go to route.c, the probe to presence.c. Every payload is text
 * our own scripts or nodes wrote (lua/README.md); its fields are located in the text (no tree is
 * built) and checked (ids and room names by their character sets) before use: a malformed message
 * is dropped, never half applied. */
#include "node.h"
#include "log.h"
#include "slot.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The string member `key` of payload, without its quotes, into out (cap bytes with the NUL).
 * 1, or 0 when absent, not a string, too long, or escaped (none of our names needs escapes). */
static int str_member(const char *payload, size_t len, const char *key, char *out, size_t cap)
{
    const char *v;
    size_t vl;
    if (!sb_json_member_span(payload, len, key, &v, &vl) || vl < 2 || v[0] != '"' ||
        v[vl - 1] != '"' || vl - 2 >= cap || memchr(v + 1, '\\', vl - 2))
        return 0;
    memcpy(out, v + 1, vl - 2);
    out[vl - 2] = '\0';
    return 1;
}

/* The unsigned integer member `key`. 1, or 0 when absent or not a plain integer. */
static int uint_member(const char *payload, size_t len, const char *key, uint64_t *out)
{
    const char *v;
    size_t vl;
    char buf[24];
    if (!sb_json_member_span(payload, len, key, &v, &vl) || vl == 0 || vl >= sizeof buf)
        return 0;
    for (size_t i = 0; i < vl; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    memcpy(buf, v, vl);
    buf[vl] = '\0';
    errno = 0;
    unsigned long long q = strtoull(buf, NULL, 10);
    if (errno)
        return 0;
    *out = q;
    return 1;
}

/* A socket id of room: a native id, or a PeerJS id in a PeerJS key's room. */
static int sid_member(const char *room, const char *payload, size_t len, const char *key, char *out)
{
    return str_member(payload, len, key, out, SB_SID_MAX + 1) &&
           (sb_pj_is_room(room) ? sb_pj_valid_id(out) : sb_valid_sid(out));
}

static void on_signal(sb_node_t *n, const char *room, const char *payload, size_t len)
{
    char from[SB_SID_MAX + 1], to[SB_SID_MAX + 1];
    const char *data;
    size_t dlen;
    /* Relayed as the sender wrote it: data's text is handed on, not re-encoded. */
    if (sid_member(room, payload, len, "from", from) && sid_member(room, payload, len, "to", to) &&
        sb_json_member_span(payload, len, "data", &data, &dlen))
        sb_route_signal_in(n, room, from, to, data, dlen);
}

/* join, left, away or back (change: 0, SB_VIEW_AWAY, SB_VIEW_BACK). */
static void on_member_event(sb_node_t *n, const char *room, int join, int change,
                            const char *payload, size_t len)
{
    char id[SB_SID_MAX + 1], node[SB_NODE_ID_MAX + 1] = "", reason[16] = "";
    sb_view_event_t ev = {join, 0, id, NULL, NULL, NULL, change};
    if (!sid_member(room, payload, len, "id", id) || !uint_member(payload, len, "seq", &ev.seq))
        return;
    char *meta = NULL;
    if (change == SB_VIEW_AWAY) {
        /* nothing more to read */
    } else if (join || change == SB_VIEW_BACK) {
        const char *v;
        size_t vl;
        if (!str_member(payload, len, "node", node, sizeof node))
            return;
        ev.node = node;
        if (sb_json_member_span(payload, len, "meta", &v, &vl) && vl >= 2 && v[0] == '{') {
            meta = malloc(vl + 1);
            if (!meta) {
                /* Dropping it leaves a gap the view notices: it reads the room. */
                sb_error("room %s: out of memory reading a join event", room);
                return;
            }
            memcpy(meta, v, vl);
            meta[vl] = '\0';
        }
        ev.meta_json = meta;
    } else {
        str_member(payload, len, "reason", reason, sizeof reason);
        ev.reason = reason;
    }
    sb_route_event(n, room, &ev);
    free(meta);
}

void sb_pubsub_on_message(sb_node_t *n, const char *payload, size_t len)
{
    char type[16], room[SB_ROOM_MAX + 1];
    if (!str_member(payload, len, "t", type, sizeof type))
        return;
    if (strcmp(type, "probe") == 0) {
        uint64_t nonce;
        if (uint_member(payload, len, "nonce", &nonce))
            sb_presence_on_probe(n, nonce);
        return;
    }
    if (!str_member(payload, len, "room", room, sizeof room) ||
        !(sb_valid_room(room) || sb_pj_is_room(room)))
        return;
    if (strcmp(type, "signal") == 0) {
        on_signal(n, room, payload, len);
    } else if (strcmp(type, "join") == 0 || strcmp(type, "left") == 0) {
        on_member_event(n, room, type[0] == 'j', 0, payload, len);
    } else if (strcmp(type, "away") == 0 || strcmp(type, "back") == 0) {
        on_member_event(n, room, 0, type[0] == 'a' ? SB_VIEW_AWAY : SB_VIEW_BACK, payload, len);
    } else if (strcmp(type, "link") == 0 || strcmp(type, "unlink") == 0) {
        char a[SB_SID_MAX + 1], b[SB_SID_MAX + 1], state[8] = "";
        if (!sid_member(room, payload, len, "a", a) || !sid_member(room, payload, len, "b", b))
            return;
        if (type[0] == 'u')
            sb_route_unlink_event(n, room, a, b);
        else if (str_member(payload, len, "state", state, sizeof state) &&
                 (strcmp(state, "up") == 0 || strcmp(state, "down") == 0))
            sb_route_link_event(n, room, a, b, state[0] == 'u');
    }
}

/* ---- subscriptions ------------------------------------------------------------------------- */

typedef struct waiter {
    struct waiter *next;
    void (*cb)(sb_node_t *n, void *data, int ok);
    void *data;
    int64_t since_ms;
} waiter_t;

/* One node channel P:{T}:node:N. */
typedef struct {
    char channel[SB_KEY_MAX];
    char tag[SB_TAG_MAX];
    int ready;      /* Redis confirmed the subscription at least once */
    waiter_t *head; /* joins waiting for the first confirmation, oldest first */
    waiter_t *tail;
} bucket_t;

static bucket_t *bucket_get(sb_node_t *n, const char *tag)
{
    char channel[SB_KEY_MAX];
    if (sb_channel_node(channel, sizeof channel, n->cfg.prefix, tag, n->cfg.id) < 0)
        return NULL;
    bucket_t *b = sb_map_get(&n->buckets, channel);
    if (b)
        return b;
    b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    memcpy(b->channel, channel, sizeof channel);
    snprintf(b->tag, sizeof b->tag, "%s", tag);
    if (sb_map_put(&n->buckets, b->channel, b) != 0) {
        free(b);
        return NULL;
    }
    if (sb_cluster_subscribe(n->db, b->channel) != 0) {
        sb_map_del(&n->buckets, b->channel);
        free(b);
        return NULL;
    }
    return b;
}

int sb_pubsub_start(sb_node_t *n)
{
    const char *tag =
        n->cluster ? sb_tag_of_slot(sb_slot(n->cfg.id, strlen(n->cfg.id))) : SB_TAG_SINGLE;
    if (!tag || sb_channel_node(n->home, sizeof n->home, n->cfg.prefix, tag, n->cfg.id) < 0)
        return -1;
    return bucket_get(n, tag) ? 0 : -1;
}

static void free_bucket(void *value, void *arg)
{
    sb_node_t *n = arg;
    bucket_t *b = value;
    while (b->head) {
        waiter_t *w = b->head;
        b->head = w->next;
        w->cb(n, w->data, 0);
        free(w);
    }
    free(b);
}

void sb_pubsub_stop(sb_node_t *n)
{
    sb_map_each(&n->buckets, free_bucket, n);
    sb_map_free(&n->buckets);
    sb_map_init(&n->buckets);
    n->bucket_waits = 0;
}

int sb_pubsub_bucket(sb_node_t *n, const char *tag, void (*cb)(sb_node_t *n, void *data, int ok),
                     void *data)
{
    bucket_t *b = bucket_get(n, tag);
    if (!b)
        return SB_ENOMEM;
    if (b->ready)
        return 0;
    waiter_t *w = malloc(sizeof *w);
    if (!w)
        return SB_ENOMEM;
    *w = (waiter_t){NULL, cb, data, sb_mono_ms()};
    if (!b->head)
        n->bucket_waits++;
    if (b->tail)
        b->tail->next = w;
    else
        b->head = w;
    b->tail = w;
    return 1;
}

/* Calls back every waiter of b with ok (a callback may add waiters to other buckets). */
static void wake(sb_node_t *n, bucket_t *b, int ok)
{
    waiter_t *w = b->head;
    if (!w)
        return;
    b->head = b->tail = NULL;
    n->bucket_waits--;
    while (w) {
        waiter_t *next = w->next;
        w->cb(n, w->data, ok);
        free(w);
        w = next;
    }
}

/* The backlog of a bucket being replayed: what the scripts published to our channel while
 * nobody received it (lua/README.md). */
typedef struct {
    sb_node_t *n;
    char tag[SB_TAG_MAX];
} replay_t;

static void on_backlog(redisReply *reply, const char *error, void *data)
{
    replay_t *rp = data;
    sb_node_t *n = rp->n;
    if (error && strncmp(error, "closing", 7) == 0) {
        free(rp);
        return;
    }
    size_t count = 0;
    if (!error && reply && reply->type == REDIS_REPLY_ARRAY) {
        /* In the order published, before the resync: the view applies the join and left
         * events by seq (a live event that came first waits in its early buffer), so a socket
         * that joined and left meanwhile is told as such, not lost in the difference. */
        for (size_t i = 0; i < reply->elements; i++) {
            const redisReply *e = reply->element[i];
            if (e->type == REDIS_REPLY_STRING) {
                sb_pubsub_on_message(n, e->str, e->len);
                count++;
            }
        }
    } else if (error || sb_reply_is_error(reply)) {
        sb_warn_limited("bucket %s: backlog not read (%s): the resync tells the difference",
                        rp->tag, error ? error : reply->str);
    }
    if (count)
        sb_info("bucket %s: %zu events replayed from the backlog", rp->tag, count);
    sb_route_resync_bucket(n, rp->tag);
    free(rp);
}

/* Replays b's backlog, then re-reads b's rooms; or only the latter when that cannot be sent. */
static void replay_then_resync(sb_node_t *n, bucket_t *b)
{
    char key[SB_KEY_MAX];
    replay_t *rp = malloc(sizeof *rp);
    if (rp && sb_key_node_backlog(key, sizeof key, n->cfg.prefix, b->tag, n->cfg.id) > 0) {
        rp->n = n;
        memcpy(rp->tag, b->tag, sizeof rp->tag);
        const char *argv[3] = {"LPOP", key, "1024"};
        if (sb_cluster_command(n->db, key, strlen(key), on_backlog, rp, 3, argv, NULL) == 0)
            return;
    }
    free(rp);
    sb_route_resync_bucket(n, b->tag);
}

void sb_pubsub_on_subscribed(sb_node_t *n, const char *channel)
{
    bucket_t *b = sb_map_get(&n->buckets, channel);
    if (!b)
        return;
    int again = b->ready;
    b->ready = 1;
    if (!again) {
        /* A backlog left by an earlier process with our id is not for us: nothing of ours
         * was published before our first subscription (a join waits for it). */
        char key[SB_KEY_MAX];
        const char *argv[2] = {"DEL", key};
        if (sb_key_node_backlog(key, sizeof key, n->cfg.prefix, b->tag, n->cfg.id) > 0)
            sb_cluster_command(n->db, key, strlen(key), NULL, NULL, 2, argv, NULL);
    }
    wake(n, b, 1);
    /* Why re-read on a second confirmation: the subscription was lost (a reconnect, a slot
     * moving to another primary) and what was published meanwhile never reached us; the
     * scripts kept the room events of that gap in our backlog, replayed first. */
    if (again)
        replay_then_resync(n, b);
    if (strcmp(channel, n->home) == 0)
        sb_presence_on_pubsub_up(n);
}

static void sweep_bucket(void *value, void *arg)
{
    sb_node_t *n = arg;
    bucket_t *b = value;
    if (b->head && sb_mono_ms() - b->head->since_ms > n->cfg.redis_timeout_ms) {
        sb_warn_limited("subscription %s not confirmed within %lld ms: joins there fail",
                        b->channel, (long long)n->cfg.redis_timeout_ms);
        wake(n, b, 0);
    }
}

void sb_pubsub_sweep(sb_node_t *n, int64_t now_ms)
{
    (void)now_ms;
    /* Only while some join waits: otherwise this costs nothing however many buckets. */
    if (n->bucket_waits > 0)
        sb_map_each(&n->buckets, sweep_bucket, n);
}
