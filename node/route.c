/* Routing: what a client's message does. Decodes it (proto.c), admits it (the session's rate
 * bucket), runs join/leave/link/signal against Redis and answers; keeps each socket's seat (its
 * room, membership state, link halves, token deadline) and the node's room views (view.c),
 * and carries out what a view decides (notify, deliver, resync, expire). Sends go to the
 * session; nothing here knows lws. Pub/sub input arrives already parsed (pubsub.c). */
#include "node.h"
#include "auth.h"
#include "resume.h"
#include "scripts.h"
#include "turn.h"
#include "log.h"
#include "slot.h"
#include "peerjs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { SEAT_IDLE, SEAT_JOINING, SEAT_JOINED, SEAT_LEAVING } seat_state_t;

#define SB_FULL_SWEEP_MS 1000 /* every room is swept this often, listed or not (sweep_mark) */

/* A room this node has local sockets in: its view and who holds it. */
typedef struct sb_room {
    sb_node_t *node;
    sb_view_t *view;
    const char *tag; /* its bucket (common/keys.h; static) */
    int refs;        /* seats in it + commands in flight + action runs + the sweep list */
    int pj;          /* a PeerJS key's room ("~pj.K"): its sockets are PeerJS sockets */
    int sweep_listed;
    /* A PeerJS room: until then (monotonic ms) RELINK walks the local sockets as in a native
     * room; set when this node re-asserts a socket with halves here (a data loss). */
    int64_t relink_until_ms;
    struct sb_room *sweep_next; /* on the node's sweep list (sweep_mark) */
} room_t;

struct sb_seat {
    sb_session_t *s;
    /* state and the flags share a word, nhalves the other half of it: as ints they made every
     * socket's seat 32 B of heap bigger (issue 14). The resume flags are explained with the
     * resume fields below. */
    seat_state_t state : 2;      /* 4 states */
    unsigned in_redis : 1;       /* the join script succeeded and no removal has yet */
    unsigned awaiting_token : 1; /* in the node's token-timeout queue */
    unsigned has_hash : 1;
    unsigned used : 1;     /* a join or resume was asked: a resume must be the first message */
    unsigned resuming : 1; /* JOINING by a resume: `resumed`, not `joined`, completes it */
    unsigned renamed : 1;  /* resuming under the old id already (fresh_id is the welcome's) */
    unsigned reassert : 1; /* re-asserted after a data loss, not confirmed yet: a missing
                            * presence key means "not written yet", not "reaped" */
    unsigned queue_inflight : 16; /* its signals in flight to session_queue (route_signal) */
    unsigned superseded : 1;      /* PeerJS: another socket of this node claims its id: at its close
                                   * it neither goes away nor is removed (the claim takes the id) */
    int nhalves;                  /* entries in halves */
    room_t *room;                 /* JOINING/JOINED/LEAVING */
    char *meta_json;  /* compact meta as stored in Redis (with sub), once a join passed auth;
                       * NULL for "{}" (seat_set_meta) */
    char *maybe_room; /* a join that timed out may have run there: undone before joining
                       * elsewhere and at close (malloc'd, or NULL) */
    json_t *join_rid; /* JOINING: rid of the join (new reference) */
    char **halves;    /* peers this socket reported `link up` to (re-asserted after a loss) */
    sb_seat_t *auth_prev, *auth_next;
    /* Session resume. token: the resume token the coming `joined`/`resumed` carries
     * (malloc'd from the request to that reply, else NULL); tok_hash its SHA-256, binary, the
     * socket's incarnation in Redis when has_hash (hex where a script takes it: hash_hex). */
    char *token;
    unsigned char tok_hash[SB_RESUME_HASH_LEN / 2];
    char *sub;          /* JWT subject of the join (the resume record's), or NULL */
    char *fresh_id;     /* during a resume: the welcome's id (malloc'd), else NULL */
    char *resumed_tail; /* ,"joined":[...],"left":[...],"links":[...] of the `resumed` reply */
    char **queued;      /* "F DATA" signals queued while away, sent after `resumed` */
    size_t nqueued;
};

/* A socket this node marked away: its grace ends at due_ms (route's sweep then removes it,
 * unless it was resumed; the admin does it if this node is gone by then). FIFO: one grace. */
typedef struct sb_away {
    struct sb_away *next;
    int64_t due_ms;
    char room[SB_ROOM_MAX + 1];
    char sid[SB_SID_MAX + 1];
} sb_away_t;

/* ---- rooms ------------------------------------------------------------------------------- */

static room_t *room_get(sb_node_t *n, const char *name)
{
    room_t *r = sb_map_get(&n->rooms, name);
    if (r)
        return r;
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->node = n;
    r->tag = sb_tag_of_room(n->cluster, name, strlen(name));
    r->pj = sb_pj_is_room(name);
    r->view = r->tag ? sb_view_new(name) : NULL;
    if (!r->view || sb_map_put(&n->rooms, sb_view_name(r->view), r) != 0) {
        sb_view_free(r->view);
        free(r);
        return NULL;
    }
    return r;
}

static const char *room_name(const room_t *r)
{
    return sb_view_name(r->view);
}

static void room_unref(room_t *r)
{
    if (--r->refs > 0)
        return;
    sb_assert(sb_view_nlocal(r->view) == 0);
    sb_map_del(&r->node->rooms, room_name(r));
    sb_view_free(r->view);
    free(r);
}

/* Lists r for the next sweep when its view has work only time can bring (sb_view_wants_sweep:
 * a gap, a resync to retry, held signals, joins to complete). The sweep visits the listed rooms
 * instead of every room: walking 5,000 idle rooms every 50 ms was half of an idle node's CPU
 * (docs/design.md, "The sweep visits only rooms with work"). Called after every view call that
 * can leave such work (run, signal_local, a resync that could not be sent). A room without
 * local sockets is left to be freed. The list holds a reference. */
static void sweep_mark(room_t *r)
{
    if (r->sweep_listed || !sb_view_nlocal(r->view) || !sb_view_wants_sweep(r->view))
        return;
    r->sweep_listed = 1;
    r->refs++;
    r->sweep_next = r->node->sweep_head;
    r->node->sweep_head = r;
}

/* Runs a room script (lua/README.md): args[0] and args[1] are filled with its keys, the room's
 * P:{R}:members and its bucket's P:{T}:stats; nkeys 1 passes only the first. The callback
 * contract of sb_cluster_script. */
static int room_script(sb_node_t *n, const char *room, const char *script, int nkeys, int nargs,
                       const char **args, sb_redis_cb cb, void *data)
{
    char members[SB_KEY_MAX], bucket[SB_KEY_MAX];
    const char *tag = sb_tag_of_room(n->cluster, room, strlen(room));
    if (!tag || sb_key_room(members, sizeof members, n->cfg.prefix, room, "members") < 0 ||
        sb_key_room(bucket, sizeof bucket, n->cfg.prefix, tag, "stats") < 0)
        return SB_EINVAL;
    args[0] = members;
    if (nkeys > 1)
        args[1] = bucket;
    return sb_cluster_script(n->db, sb_script(script), nkeys, nargs, args, NULL, cb, data);
}

/* A room just got by room_get that nothing holds (a request could not start): dropped. */
static void room_drop_unused(room_t *r)
{
    if (r && r->refs == 0) {
        r->refs = 1;
        room_unref(r);
    }
}

/* ---- seats --------------------------------------------------------------------------------- */

static void auth_unlink(sb_node_t *n, sb_seat_t *t)
{
    if (!t->awaiting_token)
        return;
    if (t->auth_prev)
        t->auth_prev->auth_next = t->auth_next;
    else
        n->auth_head = t->auth_next;
    if (t->auth_next)
        t->auth_next->auth_prev = t->auth_prev;
    else
        n->auth_tail = t->auth_prev;
    t->auth_prev = t->auth_next = NULL;
    t->awaiting_token = 0;
}

/* The seat's token hash in hex, as scripts take it ("" when it has none). Returns out. */
static const char *hash_hex(const sb_seat_t *t, char out[SB_RESUME_HASH_LEN + 1])
{
    out[0] = '\0';
    for (size_t i = 0; t->has_hash && i < sizeof t->tok_hash; i++)
        snprintf(out + 2 * i, 3, "%02x", t->tok_hash[i]);
    return out;
}

/* The seat has no token nor token hash (no incarnation of its own in Redis). */
static void token_clear(sb_seat_t *t)
{
    free(t->token);
    t->token = NULL;
    t->has_hash = 0;
}

/* The seat's token hash from hex (SB_RESUME_HASH_LEN characters). */
static void hash_set(sb_seat_t *t, const char *hex)
{
    for (size_t i = 0; i < sizeof t->tok_hash; i++)
        sscanf(hex + 2 * i, "%2hhx", &t->tok_hash[i]);
    t->has_hash = 1;
}

/* A fresh resume token for the seat's next `joined`/`resumed`, and its hash. 0, or -1 (the
 * random source failed, or out of memory: the seat has neither). */
static int token_new(sb_seat_t *t)
{
    char token[SB_RESUME_TOKEN_MAX + 1], hex[SB_RESUME_HASH_LEN + 1];
    token_clear(t);
    if (sb_resume_token(token, hex) != 0 || !(t->token = strdup(token)))
        return -1;
    hash_set(t, hex);
    return 0;
}

int sb_route_attach(sb_session_t *s)
{
    sb_node_t *n = s->node;
    sb_seat_t *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    t->s = s;
    s->seat = t;
    if (n->auth_secret || n->cfg.join_timeout_ms > 0) {
        /* Sockets join the queue in connection order and share one timeout (auth's with auth
         * on, else --join-timeout-ms), so the sweep only ever looks at its head. */
        t->awaiting_token = 1;
        t->auth_prev = n->auth_tail;
        if (n->auth_tail)
            n->auth_tail->auth_next = t;
        else
            n->auth_head = t;
        n->auth_tail = t;
    }
    return 0;
}

static void halves_clear(sb_seat_t *t)
{
    for (int i = 0; i < t->nhalves; i++)
        free(t->halves[i]);
    t->nhalves = 0;
}

static void halves_del(sb_seat_t *t, const char *peer)
{
    for (int i = 0; i < t->nhalves; i++) {
        if (strcmp(t->halves[i], peer) == 0) {
            free(t->halves[i]);
            t->halves[i] = t->halves[--t->nhalves];
            return;
        }
    }
}

static int halves_has(const sb_seat_t *t, const char *peer)
{
    for (int i = 0; i < t->nhalves; i++)
        if (strcmp(t->halves[i], peer) == 0)
            return 1;
    return 0;
}

/* 0, or -1 when out of memory (the half is in Redis but would not be re-asserted after a data
 * loss: logged). */
static int halves_add(sb_seat_t *t, const char *peer)
{
    if (halves_has(t, peer))
        return 0;
    char *copy = strdup(peer);
    char **v = copy ? realloc(t->halves, sizeof(char *) * (size_t)(t->nhalves + 1)) : NULL;
    if (!v) {
        free(copy);
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory keeping a link half", t->s->id);
        return -1;
    }
    t->halves = v;
    t->halves[t->nhalves++] = copy;
    return 0;
}

/* Takes the seat out of its room (no Redis work): back to IDLE. from_view: also leave the
 * view (0 when the view already dropped it). */
/* The seat's re-assert after a data loss awaits (1) or no longer awaits (0) Redis's answer;
 * the node counts them (data_loss_grace). */
static void seat_reassert(sb_seat_t *t, int on)
{
    if (t->reassert == (unsigned)(on != 0))
        return;
    t->reassert = on != 0;
    t->s->node->reasserts_unconfirmed += on ? 1 : -1;
}

static void seat_leave_room(sb_seat_t *t, int from_view)
{
    seat_reassert(t, 0);
    room_t *r = t->room;
    if (!r)
        return;
    if (from_view)
        sb_view_local_remove(r->view, t->s->id);
    t->room = NULL;
    if (t->in_redis) {
        t->in_redis = 0;
        t->s->node->njoined--;
    }
    t->state = SEAT_IDLE;
    if (t->join_rid) {
        json_decref(t->join_rid);
        t->join_rid = NULL;
    }
    free(t->token); /* no `joined` will show it (the hash stays: what Redis may hold) */
    t->token = NULL;
    halves_clear(t);
    room_unref(r);
}

/* s was removed from its room by someone else (the admin reaped it, or its presence lapsed):
 * its seat leaves the room (from_view: the view still lists it) and it is closed with 4000. */
static void expire_seat(sb_session_t *s, int from_view, const char *when)
{
    sb_warn_limited("session %s: reaped %s: closing 4000", s->id, when);
    seat_leave_room(s->seat, from_view);
    sb_session_close(s, 4000, "session expired");
}

static void queued_clear(sb_seat_t *t)
{
    for (size_t i = 0; i < t->nqueued; i++)
        free(t->queued[i]);
    free(t->queued);
    t->queued = NULL;
    t->nqueued = 0;
    free(t->resumed_tail);
    t->resumed_tail = NULL;
}

/* The seat's meta becomes meta_json (taken; NULL: "{}"). "{}", the meta of most joins, is
 * kept as NULL: as text it was a 32-byte heap block per joined socket (issue 14). */
static void seat_set_meta(sb_seat_t *t, char *meta_json)
{
    if (meta_json && strcmp(meta_json, "{}") == 0) {
        free(meta_json);
        meta_json = NULL;
    }
    free(t->meta_json);
    t->meta_json = meta_json;
}

static void seat_free(sb_seat_t *t)
{
    seat_reassert(t, 0);
    halves_clear(t);
    queued_clear(t);
    free(t->token);
    free(t->fresh_id);
    free(t->sub);
    free(t->halves);
    free(t->meta_json);
    free(t->maybe_room);
    if (t->join_rid)
        json_decref(t->join_rid);
    free(t);
}

/* The local session with id in room r, or NULL. */
static sb_session_t *local_in(room_t *r, const char *id)
{
    /* PeerJS ids are chosen by clients: kept apart from native ids, which they may equal. */
    sb_session_t *s = sb_map_get(r->pj ? &r->node->pj_by_id : &r->node->sess_by_id, id);
    return s && s->seat && s->seat->room == r ? s : NULL;
}

/* ---- replies ------------------------------------------------------------------------------- */

static void send_unavailable(sb_session_t *s, json_t *rid)
{
    sb_session_send_error(s, "unavailable", "Redis is unreachable; retry later", rid);
}

/* Answers a request whose script call did not succeed with a status of its own: `unavailable`
 * when Redis could not run it now (no connection, a timeout, a transient error), `internal`
 * for anything a retry will not cure (a script error such as a key of the wrong type, or a
 * status this node does not know), logged as an error with the request and the reason. */
static void send_failure(sb_session_t *s, const char *what, redisReply *reply, const char *error,
                         json_t *rid)
{
    if (error || !reply) {
        send_unavailable(s, rid);
        return;
    }
    if (sb_reply_is_transient(reply)) { /* "not now": a retry may succeed */
        sb_warn_limited("session %s: %s refused by Redis: %s", s->id, what, reply->str);
        sb_session_send_error(s, "unavailable", "Redis cannot take this now; retry later", rid);
        return;
    }
    const char *status = sb_reply_str(reply, 0, NULL);
    sb_log_limited(SB_LOG_ERROR, "session %s: %s failed: %s", s->id, what,
                   reply->type == REDIS_REPLY_ERROR && reply->str ? reply->str
                   : status                                       ? status
                                                                  : "unexpected reply");
    char msg[96];
    snprintf(msg, sizeof msg, "%s failed on the server", what);
    sb_session_send_error(s, "internal", msg, rid);
}

/* 1 when the primary of room's slot is connected (so a command there can be sent), else the
 * client is told `unavailable`. */
static int need_redis(sb_session_t *s, const char *room, json_t *rid)
{
    sb_node_t *n = s->node;
    unsigned slot = sb_crc16(room, strlen(room)) & (SB_SLOTS - 1);
    if (!sb_cluster_slot_up(n->db, slot)) {
        send_unavailable(s, rid);
        return 0;
    }
    /* Redis runs behind by more than the timeout (the oldest command on the connection waited
     * that long): a request sent now would wait longer still, be answered `unavailable` on its
     * timer, and run in Redis all the same, adding to the queue (a join told `unavailable` that
     * made its socket a member anyway). Refused before it is sent. The node's own upkeep
     * (presence, lease, probe) does not come through here and is never refused. */
    int64_t lag = sb_cluster_slot_lag_ms(n->db, slot);
    if (lag > n->cfg.redis_timeout_ms) {
        n->metrics.redis_shed++;
        sb_warn_limited("redis runs %lld ms behind: requests refused as unavailable until it "
                        "catches up",
                        (long long)lag);
        sb_session_send_error(s, "unavailable", "Redis is behind; retry later", rid);
        return 0;
    }
    return 1;
}

/* A growable text buffer for frames built as text. On allocation failure `failed` is set and
 * further appends do nothing. */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} text_t;

/* Makes room for n more bytes (and the NUL); 0, or -1 with `failed` set. */
static int text_reserve(text_t *b, size_t n)
{
    if (b->failed)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void text_add(text_t *b, const char *s, size_t n)
{
    if (text_reserve(b, n) != 0)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void text_str(text_t *b, const char *s)
{
    text_add(b, s, strlen(s));
}

/* Appends a JSON value (borrowed) as compact text. */
static void text_json(text_t *b, const json_t *v)
{
    char *enc = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!enc) {
        b->failed = 1;
        return;
    }
    text_str(b, enc);
    free(enc);
}

/* Queues the built frame, or closes with 1011 when it could not be built. */
static void text_send(sb_session_t *s, text_t *b)
{
    if (b->failed) {
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory building a frame: closing 1011",
                       s->id);
        sb_session_close(s, 1011, "server out of memory");
    } else {
        sb_session_send(s, b->p, b->len);
    }
    free(b->p);
}

static json_t *ice_servers(sb_session_t *s)
{
    sb_node_t *n = s->node;
    return sb_turn_ice_servers(n->turn_secret, n->turn_secret_len, n->cfg.turn_urls.v,
                               n->cfg.turn_urls.n, s->id, sb_now_ms() / 1000, n->cfg.turn_ttl_ms);
}

/* ---- carrying out a view's actions ------------------------------------------------------- */

static void pj_deliver(sb_session_t *dst, const char *from, const char *frame, size_t len);

static void deliver_signal(sb_session_t *dst, const char *from, const char *data, size_t dlen)
{
    if (dst->pj) {
        pj_deliver(dst, from, data, dlen); /* data: the PeerJS frame, as the sender's node built */
        return;
    }
    static const char head[] = "{\"type\":\"signal\",\"from\":\"", mid[] = "\",\"data\":";
    const sb_part_t parts[] = {{head, sizeof head - 1},
                               {from, strlen(from)},
                               {mid, sizeof mid - 1},
                               {data, dlen},
                               {"}", 1}};
    sb_session_sendv(dst, parts, 5);
}

typedef struct {
    text_t *b;
    const char *self;
    int first;
} peers_t;

static void add_peer(const sb_member_t *m, void *arg)
{
    peers_t *p = arg;
    if (strcmp(m->id, p->self) == 0)
        return;
    text_str(p->b, p->first ? "{\"id\":\"" : ",{\"id\":\"");
    text_str(p->b, m->id);
    text_str(p->b, "\",\"meta\":");
    text_str(p->b, m->meta_json);
    text_str(p->b, m->away ? ",\"away\":true}" : "}");
    p->first = 0;
}

typedef struct {
    room_t *r;
    const sb_act_t *a;
} each_t;

/* `joined`, built as text: the member list is the view's now (meta texts are compact JSON). */
static void send_joined(sb_session_t *s, room_t *r)
{
    sb_seat_t *t = s->seat;
    text_t b = {0};
    text_str(&b, t->resuming ? "{\"type\":\"resumed\"" : "{\"type\":\"joined\"");
    if (t->join_rid) {
        text_str(&b, ",\"rid\":");
        text_json(&b, t->join_rid);
    }
    text_str(&b, ",\"room\":\"");
    text_str(&b, room_name(r));
    text_str(&b, "\",\"id\":\"");
    text_str(&b, s->id);
    if (t->token) {
        text_str(&b, "\",\"resume\":\"");
        text_str(&b, t->token);
    }
    text_str(&b, "\",\"peers\":[");
    peers_t p = {&b, s->id, 1};
    sb_view_each_member(r->view, add_peer, &p);
    text_str(&b, "],\"ice_servers\":");
    json_t *ice = ice_servers(s);
    if (ice)
        text_json(&b, ice);
    else
        b.failed = 1;
    json_decref(ice);
    if (t->resuming && t->resumed_tail)
        text_str(&b, t->resumed_tail);
    text_str(&b, "}");
    if (t->join_rid) {
        json_decref(t->join_rid);
        t->join_rid = NULL;
    }
    free(t->token); /* shown once; the hash stays */
    t->token = NULL;
    t->state = SEAT_JOINED;
    sb_info_limited("session %s: %s room %s (%zu members)", s->id,
                    t->resuming ? "resumed in" : "joined", room_name(r), sb_view_nmembers(r->view));
    text_send(s, &b);
    if (t->resuming) {
        /* What was queued while away, in order, before anything live (the view releases the
         * signals it held for this socket after this action). */
        for (size_t i = 0; i < t->nqueued; i++) {
            char *sp = strchr(t->queued[i], ' ');
            if (sp && sp > t->queued[i]) {
                *sp = '\0';
                deliver_signal(s, t->queued[i], sp + 1, strlen(sp + 1));
            }
        }
        queued_clear(t);
        t->resuming = 0;
    }
}

/* The local socket id when an action about another member is for it: it was sent `joined`
 * before the action's batch (a later one had the member's state in its list); else NULL. */
static sb_session_t *told_before(const each_t *e, const char *id, uint64_t joined_batch)
{
    if (!joined_batch || joined_batch >= e->a->batch || strcmp(id, e->a->peer) == 0)
        return NULL;
    return local_in(e->r, id);
}

/* PEER_AWAY / PEER_BACK to one local socket told of it before. */
static void tell_away(const char *id, uint64_t joined_batch, void *arg)
{
    each_t *e = arg;
    sb_session_t *s = told_before(e, id, joined_batch);
    if (!s)
        return;
    const char *head = e->a->kind == SB_ACT_PEER_AWAY ? "{\"type\":\"peer-away\",\"id\":\""
                                                      : "{\"type\":\"peer-back\",\"id\":\"";
    const sb_part_t parts[] = {{head, strlen(head)}, {e->a->peer, strlen(e->a->peer)}, {"\"}", 2}};
    sb_session_sendv(s, parts, 3);
}

/* PEER_JOINED to one local socket: only those sent `joined` before the action's batch (a later
 * one had the peer in its list). */
static void tell_joined(const char *id, uint64_t joined_batch, void *arg)
{
    each_t *e = arg;
    sb_session_t *s = told_before(e, id, joined_batch);
    if (!s)
        return;
    static const char head[] = "{\"type\":\"peer-joined\",\"id\":\"", mid[] = "\",\"meta\":";
    const sb_part_t parts[] = {{head, sizeof head - 1},
                               {e->a->peer, strlen(e->a->peer)},
                               {mid, sizeof mid - 1},
                               {e->a->text, e->a->len},
                               {"}", 1}};
    sb_session_sendv(s, parts, 5);
}

/* PEER_LEFT: every local socket forgets its half towards the peer (both halves are gone in
 * Redis); those told of it get `peer-left`. */
static void tell_left(const char *id, uint64_t joined_batch, void *arg)
{
    each_t *e = arg;
    if (strcmp(id, e->a->peer) == 0)
        return;
    sb_session_t *s = local_in(e->r, id);
    if (!s)
        return;
    halves_del(s->seat, e->a->peer);
    if (!joined_batch || joined_batch >= e->a->batch)
        return;
    static const char head[] = "{\"type\":\"peer-left\",\"id\":\"", mid[] = "\",\"reason\":\"";
    const sb_part_t parts[] = {{head, sizeof head - 1},
                               {e->a->peer, strlen(e->a->peer)},
                               {mid, sizeof mid - 1},
                               {e->a->reason, strlen(e->a->reason)},
                               {"\"}", 2}};
    sb_session_sendv(s, parts, 5);
}

static void on_relinked(redisReply *reply, const char *error, void *data)
{
    sb_session_t *s = data;
    const char *status = error ? error : sb_reply_str(reply, 0, NULL);
    sb_debug_limited("session %s: half re-sent: %s", s->id,
                     status ? status
                            : (reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "?"));
    sb_session_unref(s);
}

static int call_link_set(sb_session_t *s, const char *room, const char *peer, int up,
                         sb_redis_cb cb, void *data)
{
    sb_node_t *n = s->node;
    const char *args[] = {NULL,  NULL, n->cfg.prefix,      room,
                          s->id, peer, up ? "up" : "down", n->cfg.id};
    return room_script(n, room, "link_set", 2, 8, args, cb, data);
}

/* RELINK: a member is (again) in the room; local sockets that hold a half towards it send it
 * again. Normally there is none (halves are dropped when a peer leaves); after Redis lost its
 * data the nodes re-assert in any order, and the half of whichever came back first could not be
 * written then (room_assert skips peers that are not members yet). link_set is idempotent. */
static void relink_one(const char *id, uint64_t joined_batch, void *arg)
{
    each_t *e = arg;
    sb_session_t *s = joined_batch ? local_in(e->r, id) : NULL;
    if (!s || !s->seat->in_redis || !halves_has(s->seat, e->a->peer))
        return;
    sb_session_ref(s);
    if (call_link_set(s, room_name(e->r), e->a->peer, 1, on_relinked, s) != 0)
        sb_session_unref(s);
}

/* RELINK of every member (after a read of the room): each local socket's halves, once. */
static void relink_all(const char *id, uint64_t joined_batch, void *arg)
{
    each_t *e = arg;
    sb_session_t *s = joined_batch ? local_in(e->r, id) : NULL;
    if (!s || !s->seat->in_redis)
        return;
    for (int i = 0; i < s->seat->nhalves; i++) {
        const char *peer = s->seat->halves[i];
        if (!sb_view_member(e->r->view, peer))
            continue;
        sb_session_ref(s);
        if (call_link_set(s, room_name(e->r), peer, 1, on_relinked, s) != 0)
            sb_session_unref(s);
    }
}

static void resync(room_t *r);
static void pj_opened(sb_session_t *s, room_t *r);

/* s's session was taken over by a resume (elsewhere, or by a newer socket here): it leaves its
 * room without touching Redis (the session is not its any more) and is closed. */
static void drop_stale(sb_session_t *s)
{
    sb_info_limited("session %s: resumed by another socket: closing this copy", s->id);
    seat_leave_room(s->seat, 1);
    token_clear(s->seat);
    sb_session_close(s, 4000, "resumed elsewhere");
}

/* Carries out a view's actions, in order. The room is held for the whole run: an action may
 * drop its last seat (EXPIRED), and the view must outlive the loop. */
static void run(room_t *r, sb_acts_t *acts)
{
    r->refs++;
    for (size_t i = 0; i < acts->n; i++) {
        const sb_act_t *a = &acts->v[i];
        each_t e = {r, a};
        sb_session_t *s;
        switch (a->kind) {
        case SB_ACT_PEER_JOINED:
            /* PeerJS sockets are never told of members (and the walk would cost O(local
             * sockets) per claim). */
            if (!r->pj)
                sb_view_each_local(r->view, tell_joined, &e);
            break;
        case SB_ACT_PEER_LEFT:
            /* PeerJS: nobody is told, and no walk (local halves towards the peer stay until
             * the socket goes; links are set again whatever the local halves say). */
            if (!r->pj)
                sb_view_each_local(r->view, tell_left, &e);
            break;
        case SB_ACT_JOINED:
            if ((s = local_in(r, a->to)) && s->pj)
                pj_opened(s, r);
            else if (s)
                send_joined(s, r);
            break;
        case SB_ACT_DELIVER:
            if ((s = local_in(r, a->to)))
                deliver_signal(s, a->peer, a->text, a->len);
            break;
        case SB_ACT_EXPIRED:
            if ((s = local_in(r, a->to))) {
                /* Its own leave's event can beat the leave's reply (two connections): not a
                 * reaping, the reply completes the leave. */
                if (s->seat->state == SEAT_LEAVING)
                    seat_leave_room(s->seat, 0);
                else
                    expire_seat(s, 0, "while connected");
            }
            break;
        case SB_ACT_RELINK:
            /* In a PeerJS room a walk over every local socket per claim, so only for a while
             * after this node re-asserted its sockets there: a half skipped then (its peer not
             * back yet) is re-sent when the peer is back (docs/peerjs.md). */
            if (!r->pj || sb_mono_ms() < r->relink_until_ms)
                sb_view_each_local(r->view, a->peer[0] ? relink_one : relink_all, &e);
            break;
        case SB_ACT_RESYNC:
            resync(r);
            break;
        case SB_ACT_PEER_AWAY:
            /* Marked away while still connected here: the admin took it for lost (this node
             * was stopped past its presence TTL). Its client resumes it at once (1012; the
             * token is still good), and our refreshes stop keeping the away presence alive. */
            if ((s = local_in(r, a->peer)) && s->seat->state == SEAT_JOINED) {
                sb_warn_limited("session %s: marked away while connected: closing 1012", s->id);
                sb_session_close(s, 1012, "resume");
            }
            if (!r->pj)
                sb_view_each_local(r->view, tell_away, &e);
            break;
        case SB_ACT_PEER_BACK:
            /* Resumed on another node while a copy of it is still joined here (we had not
             * noticed the drop): that copy is stale; drop it without any cleanup. */
            if ((s = local_in(r, a->peer)) && s->seat->state == SEAT_JOINED && a->text &&
                strcmp(a->text, r->node->cfg.id) != 0)
                drop_stale(s);
            if (!r->pj)
                sb_view_each_local(r->view, tell_away, &e);
            break;
        }
    }
    if (acts->oom)
        sb_log_limited(SB_LOG_ERROR,
                       "room %s: out of memory applying an event: the room will be read again",
                       room_name(r));
    sb_acts_clear(acts);
    sweep_mark(r);
    room_unref(r);
}

/* ---- resync -------------------------------------------------------------------------------- */

/* A member record {"node":N,"epoch":E,"meta":{...}} as written by our scripts: node and meta
 * located in its text (no tree built). 0, or -1 when it does not hold them. */
static int parse_record(const char *rec, size_t len, sb_view_member_in_t *m, char *node,
                        size_t node_cap, char **meta)
{
    const char *v;
    size_t vl;
    if (!sb_json_member_span(rec, len, "node", &v, &vl) || vl < 2 || v[0] != '"' ||
        vl - 2 > node_cap - 1)
        return -1;
    memcpy(node, v + 1, vl - 2);
    node[vl - 2] = '\0';
    m->node = node;
    *meta = NULL;
    if (sb_json_member_span(rec, len, "meta", &v, &vl) && vl >= 2 && v[0] == '{') {
        *meta = malloc(vl + 1);
        if (!*meta)
            return -1;
        memcpy(*meta, v, vl);
        (*meta)[vl] = '\0';
    }
    m->meta_json = *meta;
    m->away = sb_json_member_span(rec, len, "away", &v, &vl) && vl == 1 && v[0] == '1';
    return 0;
}

/* Members listed in reply from element `from` on as id, record pairs, parsed into a new array
 * (free with members_free). NULL with *n = 0 when there are none; NULL with *n = SIZE_MAX when
 * out of memory. */
typedef struct {
    sb_view_member_in_t *v;
    char (*nodes)[SB_NODE_ID_MAX + 1];
    char **metas;
    size_t n;
} members_t;

static void members_free(members_t *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->metas[i]);
    free(m->v);
    free(m->nodes);
    free(m->metas);
}

static int members_parse(const redisReply *reply, size_t from, int pj, members_t *out)
{
    memset(out, 0, sizeof *out);
    size_t count = reply->elements > from ? (reply->elements - from) / 2 : 0;
    if (!count)
        return 0;
    out->v = calloc(count, sizeof *out->v);
    out->nodes = calloc(count, sizeof *out->nodes);
    out->metas = calloc(count, sizeof *out->metas);
    if (!out->v || !out->nodes || !out->metas) {
        members_free(out);
        return -1;
    }
    for (size_t j = from; j + 1 < reply->elements; j += 2) {
        size_t idlen, reclen;
        const char *id = sb_reply_str(reply, j, &idlen);
        const char *rec = sb_reply_str(reply, j + 1, &reclen);
        if (!id || !rec || !(pj ? sb_pj_valid_id(id) : sb_valid_sid(id)))
            continue;
        sb_view_member_in_t *m = &out->v[out->n];
        m->id = id;
        if (parse_record(rec, reclen, m, out->nodes[out->n], sizeof out->nodes[0],
                         &out->metas[out->n]) != 0) {
            free(out->metas[out->n]);
            out->metas[out->n] = NULL;
            continue;
        }
        out->n++;
    }
    return 0;
}

static int data_loss_grace(const sb_node_t *n)
{
    /* Right after Redis lost its data the other nodes are still re-asserting their sockets: a
     * member missing now is most likely not back yet. And while it is not yet known whether
     * Redis lost its data (the check runs on every reconnect), an empty room may mean that. So
     * while a re-assert of ours awaits Redis (it was refused: a restarted shard answers
     * CLUSTERDOWN for a moment): our own socket missing from a read is not a reaping. */
    return sb_mono_ms() < n->loss_grace_until_ms || !n->instance_ok ||
           (n->reasserts_unconfirmed > 0 && sb_mono_ms() < n->reassert_until_ms);
}

static void on_resync(redisReply *reply, const char *error, void *data)
{
    room_t *r = data;
    sb_node_t *n = r->node;
    sb_acts_t acts;
    sb_acts_init(&acts);
    members_t m = {0};
    int ok = !error && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
             members_parse(reply, 1, r->pj, &m) == 0;
    if (!ok)
        sb_warn_limited("room %s: resync failed: %s", room_name(r), error ? error : "bad reply");
    else
        n->metrics.resyncs++;
    sb_view_resync_done(r->view, ok, ok ? (uint64_t)sb_reply_int(reply, 0, 0) : 0, m.v, m.n,
                        data_loss_grace(n), sb_mono_ms(), &acts);
    members_free(&m);
    run(r, &acts);
    sb_acts_free(&acts);
    room_unref(r); /* the reference the read held */
}

/* Sends room_read for a view that asked (sb_view_resync_start already done by the view). */
static void resync(room_t *r)
{
    sb_node_t *n = r->node;
    const char *args[] = {NULL, n->cfg.prefix, room_name(r)};
    r->refs++;
    if (room_script(n, room_name(r), "room_read", 1, 3, args, on_resync, r) != 0) {
        sb_acts_t acts;
        sb_acts_init(&acts);
        sb_view_resync_done(r->view, 0, 0, NULL, 0, 0, sb_mono_ms(), &acts); /* retried */
        sb_acts_free(&acts);
        sweep_mark(r);
        room_unref(r);
    }
}

/* Calls fn on every room, each held across its call (fn may drop the room's last seat). */
static void each_room(sb_node_t *n, void (*fn)(room_t *r, void *arg), void *arg)
{
    size_t count = n->rooms.count, k = 0;
    if (!count)
        return;
    room_t **v = malloc(count * sizeof *v);
    if (!v) {
        sb_log_limited(SB_LOG_ERROR, "out of memory walking %zu rooms", count);
        return;
    }
    for (size_t b = 0; b < n->rooms.nbuckets; b++)
        for (sb_map_entry_t *e = n->rooms.buckets[b]; e; e = e->next) {
            room_t *r = e->value;
            r->refs++;
            v[k++] = r;
        }
    for (size_t i = 0; i < k; i++) {
        fn(v[i], arg);
        room_unref(v[i]);
    }
    free(v);
}

static void resync_room(room_t *r, void *arg)
{
    sb_acts_t *acts = arg;
    sb_view_resync_request(r->view, acts);
    run(r, acts);
}

/* Re-reads every room (the grace after a data loss ended). */
static void resync_all(sb_node_t *n)
{
    sb_acts_t acts;
    sb_acts_init(&acts);
    each_room(n, resync_room, &acts);
    sb_acts_free(&acts);
}

static void on_loss_timer(uv_timer_t *t)
{
    sb_node_t *n = t->data;
    sb_info("resyncing every room after Redis data loss");
    resync_all(n);
}

void sb_route_loss_grace(sb_node_t *n)
{
    /* Why wait a heartbeat before resyncing: the other nodes re-assert their sockets when they
     * notice (on reconnect, or at their next heartbeat at the latest), and a re-assert Redis
     * refused is sent again at the next heartbeat; a resync before then would tell clients
     * their peers left. */
    n->loss_grace_until_ms = sb_mono_ms() + n->cfg.heartbeat_ms + 200;
    uv_timer_start(&n->loss_timer, on_loss_timer, (uint64_t)n->cfg.heartbeat_ms + 200, 0);
}

typedef struct {
    sb_acts_t acts;
    const char *tag;
} bucket_walk_t;

static void resync_room_of_bucket(room_t *r, void *arg)
{
    bucket_walk_t *w = arg;
    if (strcmp(r->tag, w->tag) == 0)
        resync_room(r, &w->acts);
}

void sb_route_resync_bucket(sb_node_t *n, const char *tag)
{
    bucket_walk_t w = {.tag = tag};
    sb_acts_init(&w.acts);
    each_room(n, resync_room_of_bucket, &w);
    sb_acts_free(&w.acts);
}

static void sweep_room(room_t *r, void *arg)
{
    sb_acts_t *acts = arg;
    sb_view_sweep(r->view, sb_mono_ms(), acts);
    run(r, acts);
}

static void away_sweep(sb_node_t *n, int64_t now_ms);

static void pj_sweep(sb_node_t *n, int64_t now_ms);

/* Empties the sweep list; with acts, sweeps each room it held first (run() lists again those
 * that still want it, on the new list). */
static void sweep_listed(sb_node_t *n, sb_acts_t *acts)
{
    room_t *due = n->sweep_head;
    n->sweep_head = NULL;
    while (due) {
        room_t *r = due;
        due = r->sweep_next;
        r->sweep_listed = 0;
        r->sweep_next = NULL;
        if (acts)
            sweep_room(r, acts);
        room_unref(r); /* the list's reference */
    }
}

int sb_route_has_timed_work(const sb_node_t *n)
{
    return n->away_head || n->pj_exp_head || n->sweep_head || n->auth_head ||
           n->reasserts_unconfirmed > 0;
}

void sb_route_sweep(sb_node_t *n, int64_t now_ms)
{
    away_sweep(n, now_ms);
    pj_sweep(n, now_ms);
    sb_acts_t acts;
    sb_acts_init(&acts);
    /* Every room once a second (the listed ones with them): a view call that should have
     * listed its room and did not (none is known) then costs a second of delay, not a signal
     * held forever. Otherwise the listed rooms only. */
    if (now_ms - n->full_sweep_ms >= SB_FULL_SWEEP_MS) {
        n->full_sweep_ms = now_ms;
        each_room(n, sweep_room, &acts);
    } else {
        sweep_listed(n, &acts);
    }
    sb_acts_free(&acts);
    /* Token and join timeouts: the queue is in connection order, so only its head can be due.
     * The idle-before-join timeout (auth off) bounds how long a socket that never joins holds
     * a connection slot. */
    int64_t timeout = n->auth_secret ? n->cfg.auth_timeout_ms : n->cfg.join_timeout_ms;
    while (n->auth_head && now_ms - n->auth_head->s->connected_ms > timeout) {
        sb_seat_t *t = n->auth_head;
        auth_unlink(n, t);
        sb_session_close(t->s, 4001, n->auth_secret ? "auth timeout" : "join timeout");
    }
}

/* ---- pub/sub input ------------------------------------------------------------------------ */

void sb_route_event(sb_node_t *n, const char *room, const sb_view_event_t *ev)
{
    room_t *r = sb_map_get(&n->rooms, room);
    if (!r)
        return; /* no local socket in that room (any more) */
    sb_acts_t acts;
    sb_acts_init(&acts);
    sb_view_event(r->view, ev, sb_mono_ms(), &acts);
    run(r, &acts);
    sb_acts_free(&acts);
}

/* A signal for local `to` in room r from `from`: delivered now, or held by the view. */
static void signal_local(room_t *r, const char *from, const char *to, const char *data, size_t dlen)
{
    sb_acts_t acts;
    sb_acts_init(&acts);
    if (sb_view_signal(r->view, from, to, data, dlen, sb_mono_ms(), &acts) == SB_VIEW_DELIVER) {
        sb_session_t *dst = local_in(r, to);
        if (dst)
            deliver_signal(dst, from, data, dlen);
    } else {
        sweep_mark(r); /* held: released or dropped by the sweep */
    }
    sb_acts_free(&acts);
}

void sb_route_signal_in(sb_node_t *n, const char *room, const char *from, const char *to,
                        const char *data, size_t dlen)
{
    room_t *r = sb_map_get(&n->rooms, room);
    if (r)
        signal_local(r, from, to, data, dlen);
}

void sb_route_link_event(sb_node_t *n, const char *room, const char *a, const char *b, int up)
{
    room_t *r = sb_map_get(&n->rooms, room);
    if (!r)
        return;
    const char *ends[2][2] = {{a, b}, {b, a}};
    for (int i = 0; i < 2; i++) {
        sb_session_t *s = local_in(r, ends[i][0]);
        if (!s || s->seat->state != SEAT_JOINED)
            continue;
        /* Both halves are gone in Redis, whichever side said down: forget ours too, or a
         * re-assert after a data loss would bring it back. */
        if (!up)
            halves_del(s->seat, ends[i][1]);
        if (s->pj)
            continue; /* PeerJS has no link messages */
        static const char head[] = "{\"type\":\"link-state\",\"peer\":\"";
        const char *tail = up ? "\",\"state\":\"up\"}" : "\",\"state\":\"down\"}";
        const sb_part_t parts[] = {
            {head, sizeof head - 1}, {ends[i][1], strlen(ends[i][1])}, {tail, strlen(tail)}};
        sb_session_sendv(s, parts, 3);
    }
}

void sb_route_unlink_event(sb_node_t *n, const char *room, const char *a, const char *b)
{
    room_t *r = sb_map_get(&n->rooms, room);
    sb_session_t *s = r ? local_in(r, b) : NULL;
    if (s)
        halves_del(s->seat, a);
}

/* ---- requests ------------------------------------------------------------------------------ */

/* A request in flight: the session (a reference), the rid (a reference), what it needs. */
typedef struct {
    sb_session_t *s;
    json_t *rid;
    char room[SB_ROOM_MAX + 1];
    char peer[SB_SID_MAX + 1];
    int up;
    const char *mode;                  /* removals: "leave", "disconnect", "expired" (static) */
    char hash[SB_RESUME_HASH_LEN + 1]; /* removals, away: the socket's incarnation ("" none) */
} req_t;

static req_t *req_new(sb_session_t *s, json_t *rid, const char *room)
{
    req_t *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->s = s;
    q->rid = rid ? json_incref(rid) : NULL;
    if (room)
        snprintf(q->room, sizeof q->room, "%s", room);
    sb_session_ref(s);
    return q;
}

static void req_free(req_t *q)
{
    if (q->rid)
        json_decref(q->rid);
    sb_session_unref(q->s);
    free(q);
}

/* room_remove for sid in room (mode leave / disconnect / expired / away); hash: the resume
 * token hash of the caller's incarnation of sid (NULL or "": none), so a removal never touches
 * a session resumed by another socket. Returns 0 and cb once later, or SB_EUNAVAIL (logged)
 * and cb is never called. cb may be NULL. */
static int run_remove(sb_node_t *n, const char *room, const char *sid, const char *mode,
                      const char *hash, sb_redis_cb cb, void *data)
{
    const char *args[] = {NULL, NULL, n->cfg.prefix, room, sid, mode, n->cfg.id, hash ? hash : ""};
    int rc = room_script(n, room, "room_remove", 2, 8, args, cb, data);
    if (rc != 0)
        sb_warn_limited(
            "session %s: cannot remove from room %s now (Redis unreachable); its presence "
            "will expire and the admin will reap it",
            sid, room);
    return rc;
}

/* The activity log's p2p-cleanup entry for a removal that took formed links with it
 * (room_remove leaves it to its caller: P:events is in another slot). Fire and forget: losing
 * it loses a log line, never a figure. */
static void log_cleanup(sb_node_t *n, const char *room, const char *sid, const char *mode,
                        redisReply *reply)
{
    const char *status = sb_reply_str(reply, 0, NULL);
    long long removed = sb_reply_int(reply, 1, 0);
    char key[SB_KEY_MAX], body[256];
    if (!status || strcmp(status, "ok") != 0 || removed <= 0 ||
        sb_key_global(key, sizeof key, n->cfg.prefix, "events") < 0)
        return;
    /* Room names and ids are of characters JSON never escapes. */
    snprintf(body, sizeof body,
             "{\"reason\":\"%s\",\"room\":\"%s\",\"id\":\"%s\",\"stale_connections\":%lld}", mode,
             room, sid, removed);
    const char *argv[] = {"XADD", key,    "MAXLEN",      "~",    "1000",
                          "*",    "type", "p2p-cleanup", "data", body};
    sb_cluster_command(n->db, key, strlen(key), NULL, NULL, 10, argv, NULL);
}

static void on_disconnect_removed(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    const char *sid = q->peer[0] ? q->peer : q->s->id; /* peer: another id's (an orphan's) */
    if (error) {
        sb_warn_limited("session %s: cleanup failed: %s", sid, error);
    } else if (reply && reply->type == REDIS_REPLY_ARRAY) {
        sb_debug_limited("session %s: cleanup %s, %lld links removed", sid,
                         sb_reply_str(reply, 0, NULL) ? sb_reply_str(reply, 0, NULL) : "?",
                         sb_reply_int(reply, 1, 0));
        log_cleanup(q->s->node, q->room, sid, q->mode, reply);
    }
    req_free(q);
}

/* Removes sid (hash: its incarnation) from room in Redis in the background, for s: s's own id,
 * or another's whose cleanup s runs (a PeerJS orphan). */
static void remove_id_later(sb_session_t *s, const char *room, const char *sid, const char *hash,
                            const char *mode)
{
    req_t *q = req_new(s, NULL, room);
    if (!q) {
        sb_log_limited(SB_LOG_ERROR,
                       "session %s: out of memory removing it from room %s: the admin will reap it",
                       sid, room);
        return;
    }
    q->mode = mode;
    if (strcmp(sid, s->id) != 0)
        snprintf(q->peer, sizeof q->peer, "%s", sid); /* on_disconnect_removed logs it */
    snprintf(q->hash, sizeof q->hash, "%s", hash);
    if (run_remove(s->node, room, sid, mode, q->hash, on_disconnect_removed, q) != 0)
        req_free(q);
}

/* Removes s from room in Redis in the background (disconnect or expired). */
static void remove_later(sb_session_t *s, const char *room, const char *mode)
{
    char hash[SB_RESUME_HASH_LEN + 1] = "";
    if (s->seat)
        hash_hex(s->seat, hash);
    remove_id_later(s, room, s->id, hash, mode);
}

static void forget_maybe_room(sb_seat_t *t)
{
    free(t->maybe_room);
    t->maybe_room = NULL;
}

/* The join or resume script's reply says s is in r at seq: the view learns it, with the member
 * list at list[from..] when the view has none yet (otherwise it is not even parsed). */
static void local_joined(room_t *r, sb_session_t *s, uint64_t seq, const redisReply *list,
                         size_t from)
{
    members_t m = {0};
    if (!sb_view_synced(r->view) && members_parse(list, from, r->pj, &m) != 0)
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory reading room %s: reading it again",
                       s->id, room_name(r));
    sb_acts_t acts;
    sb_acts_init(&acts);
    sb_view_local_joined(r->view, s->id, seq, m.v, m.n, sb_mono_ms(), &acts);
    members_free(&m);
    run(r, &acts);
    sb_acts_free(&acts);
}

static void on_joined(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    sb_node_t *n = s->node;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (s->closed) {
        /* Closed while the join was in flight: the join went through, or timed out and may
         * still run (the removal queues behind it on the slot's connection), so undo it. */
        if ((status && strcmp(status, "ok") == 0) || error)
            remove_later(s, q->room, "disconnect");
        req_free(q);
        return;
    }
    sb_seat_t *t = s->seat;
    room_t *r = t->room;
    if (!status || strcmp(status, "ok") != 0) {
        /* The script may still run after our timeout: remember to undo it. */
        if (error) {
            forget_maybe_room(t);
            t->maybe_room = strdup(q->room);
        }
        seat_leave_room(t, 1);
        if (status && strcmp(status, "room-full") == 0)
            sb_session_send_error(s, "room-full", "the room is full", q->rid);
        else
            send_failure(s, "join", reply, error, q->rid);
        req_free(q);
        return;
    }
    sb_session_charge_accepted(s);
    forget_maybe_room(t);
    auth_unlink(n, t); /* joined: no join timeout any more (with auth, the token ended it) */
    t->in_redis = 1;
    n->njoined++;
    uint64_t seq = (uint64_t)sb_reply_int(reply, 1, 0);
    /* The snapshot matters only to the first local socket of the room (the view is not synced
     * yet); otherwise it is not even parsed. */
    local_joined(r, s, seq, reply, 2);
    req_free(q);
}

/* The join's meta as stored: the client's, with `sub` set only from a verified token. Returns
 * a malloc'd compact text, or NULL after answering the client. */
static char *join_meta(sb_session_t *s, const sb_msg_t *m)
{
    sb_node_t *n = s->node;
    json_t *meta = m->meta ? json_deep_copy(m->meta) : json_object();
    if (!meta) {
        sb_session_send_error(s, "internal", "out of memory", m->rid);
        return NULL;
    }
    json_object_del(meta, "sub"); /* only a verified token may set it */
    if (n->auth_secret) {
        char why[128], *sub = NULL;
        if (!m->token) {
            json_decref(meta);
            sb_session_send_error(s, "unauthorized", "join needs a token", m->rid);
            return NULL;
        }
        if (sb_auth_verify(n->auth_secret, n->auth_secret_len, m->token, m->room,
                           sb_now_ms() / 1000, &sub, why, sizeof why) != 0) {
            json_decref(meta);
            sb_info_limited("session %s: join refused: %s", s->id, why);
            sb_session_send_error(s, "unauthorized", why, m->rid);
            return NULL;
        }
        /* The server's word, so peers can trust it. */
        if (sub)
            json_object_set_new(meta, "sub", json_string(sub));
        free(s->seat->sub);
        s->seat->sub = sub; /* the resume record's subject */
        auth_unlink(n, s->seat);
    }
    char *meta_json = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    if (!meta_json) {
        sb_session_send_error(s, "internal", "out of memory", m->rid);
        return NULL;
    }
    if (strlen(meta_json) > SB_META_MAX + 64) {
        free(meta_json);
        sb_session_send_error(s, "bad-message", "\"meta\" is too large", m->rid);
        return NULL;
    }
    return meta_json;
}

/* A join that could not be sent: its seat leaves the room, the client hears `unavailable`. */
static void join_failed(req_t *q)
{
    sb_session_t *s = q->s;
    if (!s->closed && s->seat && s->seat->state == SEAT_JOINING) {
        seat_leave_room(s->seat, 1);
        send_unavailable(s, q->rid);
    }
    req_free(q);
}

/* Runs room_join for the seat of q (JOINING, its bucket's channel subscribed). */
static void join_send(req_t *q)
{
    sb_session_t *s = q->s;
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    char ttl[32], max[32], grace[32], hash[SB_RESUME_HASH_LEN + 1];
    snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    snprintf(max, sizeof max, "%lld", (long long)n->cfg.max_room_members);
    snprintf(grace, sizeof grace, "%lld", (long long)n->cfg.resume_grace_ms);
    /* A fresh token per join, bound to the socket and the room (only its hash is stored). */
    token_clear(t);
    if (n->cfg.resume_grace_ms > 0)
        (void)token_new(t); /* failed: neither, and the join goes on without resume */
    const char *origin = s->origin ? s->origin : "";
    hash_hex(t, hash);
    const char *meta = t->meta_json ? t->meta_json : "{}";
    const char *args[] = {
        NULL, NULL,   n->cfg.prefix,        q->room, s->id, n->cfg.id, n->epoch, meta, ttl, max,
        hash, origin, t->sub ? t->sub : "", grace};
    if (room_script(n, q->room, "room_join", 2, 14, args, on_joined, q) != 0)
        join_failed(q);
}

static void on_bucket_ready(sb_node_t *n, void *data, int ok)
{
    (void)n;
    req_t *q = data;
    sb_session_t *s = q->s;
    if (s->closed || !s->seat || s->seat->state != SEAT_JOINING) {
        req_free(q); /* closed meanwhile: nothing was sent, nothing to undo */
        return;
    }
    if (ok)
        join_send(q);
    else
        join_failed(q);
}

static void route_join(sb_session_t *s, const sb_msg_t *m)
{
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    if (t->state != SEAT_IDLE) {
        sb_session_send_error(s, "already-joined", "this socket is already in a room", m->rid);
        return;
    }
    char *meta_json = join_meta(s, m);
    if (!meta_json)
        return;
    t->used = 1;
    if (!need_redis(s, m->room, m->rid)) {
        free(meta_json);
        return;
    }
    if (t->maybe_room && strcmp(t->maybe_room, m->room) != 0) {
        /* A join to another room timed out earlier and may have run: undo it first (the
         * script refuses harmlessly when it had not). The same room is simply retried:
         * room_join answers a repeated join of the same socket as a success. */
        run_remove(n, t->maybe_room, s->id, "disconnect", NULL, NULL, NULL);
        forget_maybe_room(t);
    }
    room_t *r = room_get(n, m->room);
    req_t *q = r ? req_new(s, m->rid, m->room) : NULL;
    if (!q || sb_view_local_add(r->view, s->id) != 0) {
        free(meta_json);
        if (q)
            req_free(q);
        room_drop_unused(r);
        sb_session_send_error(s, "internal", "out of memory", m->rid);
        return;
    }
    r->refs++;
    seat_set_meta(t, meta_json);
    t->room = r;
    t->state = SEAT_JOINING;
    t->join_rid = m->rid ? json_incref(m->rid) : NULL;
    /* Why wait for the subscription: the room's events and the signals for this socket come
     * on the bucket's node channel; subscribed before the join runs, nothing published after
     * the join is missed (the join's reply carries the members up to its seq). */
    int rc = sb_pubsub_bucket(n, r->tag, on_bucket_ready, q);
    if (rc == 0)
        join_send(q);
    else if (rc < 0)
        join_failed(q);
}

/* A "gone" answer (the script found s's presence missing, or held by another node or another
 * incarnation) while s's re-assert after a data loss has not been confirmed: maybe the data
 * loss, maybe not. Not taken for a reaping: the request is answered `unavailable` (the client
 * retries it), and the next presence refresh tells which (a missing key is re-asserted then,
 * sb_route_refreshed; a key another node holds is not claimed back). 1; otherwise 0: a reaping
 * (rule 1). */
static int lost_not_reaped(sb_session_t *s, json_t *rid)
{
    sb_node_t *n = s->node;
    if (!sb_route_present_room(s) || !s->seat->reassert || sb_mono_ms() >= n->reassert_until_ms)
        return 0;
    sb_info_limited("session %s: request found its presence missing after a data loss: "
                    "unavailable until its next presence refresh",
                    s->id);
    send_unavailable(s, rid);
    return 1;
}

static void on_left(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (s->closed) {
        req_free(q);
        return;
    }
    sb_seat_t *t = s->seat;
    if (status && strcmp(status, "ok") == 0) {
        log_cleanup(s->node, q->room, s->id, "leave", reply);
        sb_session_charge_accepted(s);
        seat_leave_room(t, 1);
        static const char head[] = "{\"type\":\"left\"", mid[] = ",\"room\":\"";
        text_t b = {0};
        text_str(&b, head);
        if (q->rid) {
            text_str(&b, ",\"rid\":");
            text_json(&b, q->rid);
        }
        text_str(&b, mid);
        text_str(&b, q->room);
        text_str(&b, "\"}");
        text_send(s, &b);
        sb_info_limited("session %s: left room %s", s->id, q->room);
    } else if (status && strcmp(status, "gone") == 0) {
        t->state = t->room ? SEAT_JOINED : SEAT_IDLE; /* as it was, if lost_not_reaped holds */
        if (!lost_not_reaped(s, q->rid))
            expire_seat(s, 1, "while leaving");
    } else {
        /* Still in the room, unless its own left event already took it out of the view. */
        t->state = t->room ? SEAT_JOINED : SEAT_IDLE;
        send_failure(s, "leave", reply, error, q->rid);
    }
    req_free(q);
}

static void route_leave(sb_session_t *s, json_t *rid)
{
    sb_seat_t *t = s->seat;
    if (t->state != SEAT_JOINED) {
        sb_session_send_error(s, "not-joined", "this socket is not in a room", rid);
        return;
    }
    if (!need_redis(s, room_name(t->room), rid))
        return;
    req_t *q = req_new(s, rid, room_name(t->room));
    if (!q) {
        sb_session_send_error(s, "internal", "out of memory", rid);
        return;
    }
    t->state = SEAT_LEAVING;
    char hash[SB_RESUME_HASH_LEN + 1];
    if (run_remove(s->node, q->room, s->id, "leave", hash_hex(t, hash), on_left, q) != 0) {
        t->state = SEAT_JOINED;
        req_free(q);
        send_unavailable(s, rid);
    }
}

/* ---- session resume: away, grace, queue ------------------------------------------------ */

/* A grace timer for sid in room (its deadline: now + the grace, a little after Redis's). */
static void away_timer(sb_node_t *n, const char *room, const char *sid)
{
    sb_away_t *w = calloc(1, sizeof *w);
    if (!w) {
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory: the admin will end its grace",
                       sid);
        return;
    }
    /* Why 50 ms late: the deadline is Redis's clock; a removal a moment early answers "live"
     * and would leave it to the admin. */
    w->due_ms = sb_mono_ms() + n->cfg.resume_grace_ms + 50;
    snprintf(w->room, sizeof w->room, "%s", room);
    snprintf(w->sid, sizeof w->sid, "%s", sid);
    if (n->away_tail)
        n->away_tail->next = w;
    else
        n->away_head = w;
    n->away_tail = w;
    sb_node_sweep_soon(n); /* the reply can come after the node's last socket went: idle sweep */
}

void sb_route_away_free(sb_node_t *n)
{
    while (n->away_head) {
        sb_away_t *w = n->away_head;
        n->away_head = w->next;
        free(w);
    }
    n->away_tail = NULL;
}

void sb_route_sweep_free(sb_node_t *n)
{
    sweep_listed(n, NULL);
}

typedef struct {
    sb_node_t *node;
    char room[SB_ROOM_MAX + 1];
    char sid[SB_SID_MAX + 1];
} expiry_t;

static void on_grace_over(redisReply *reply, const char *error, void *data)
{
    expiry_t *x = data;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (status && strcmp(status, "ok") == 0) {
        sb_info_limited("session %s: resume grace over in room %s: removed", x->sid, x->room);
        log_cleanup(x->node, x->room, x->sid, "disconnect", reply);
    } else {
        sb_debug_limited("session %s: grace end: %s", x->sid,
                         status  ? status
                         : error ? error
                                 : "error reply");
    }
    free(x);
}

/* Ends the graces that are due (room_remove "away": a no-op when the socket was resumed). */
static void away_sweep(sb_node_t *n, int64_t now_ms)
{
    while (n->away_head && n->away_head->due_ms <= now_ms) {
        sb_away_t *w = n->away_head;
        n->away_head = w->next;
        if (!n->away_head)
            n->away_tail = NULL;
        expiry_t *x = calloc(1, sizeof *x);
        if (x) {
            x->node = n;
            memcpy(x->room, w->room, sizeof x->room);
            memcpy(x->sid, w->sid, sizeof x->sid);
            if (run_remove(n, w->room, w->sid, "away", NULL, on_grace_over, x) != 0)
                free(x);
        }
        free(w);
    }
}

static void on_away(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_node_t *n = q->s->node;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (status && strcmp(status, "ok") == 0) {
        sb_info_limited("session %s: away in room %s", q->peer, q->room);
        away_timer(n, q->room, q->peer);
    } else if (status && strcmp(status, "none") == 0) {
        /* No resume record (joined before resume was on): removed as before. */
        if (run_remove(n, q->room, q->peer, "disconnect", q->hash, NULL, NULL) != 0)
            sb_debug_limited("session %s: cleanup deferred to the admin", q->peer);
    } else {
        /* gone (resumed elsewhere, or removed); or Redis failed: its presence lapses and the
         * admin marks it away then (room_remove "expired"). */
        sb_debug_limited("session %s: away: %s", q->peer,
                         status  ? status
                         : error ? error
                                 : "error reply");
    }
    req_free(q);
}

/* The socket of sid in room was lost: its session goes away (grace) instead of leaving. */
static void go_away(sb_session_t *s, const char *room, const char *sid, const char *hash)
{
    sb_node_t *n = s->node;
    req_t *q = req_new(s, NULL, room);
    if (!q) {
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory: its presence will lapse", sid);
        return;
    }
    snprintf(q->peer, sizeof q->peer, "%s", sid);
    snprintf(q->hash, sizeof q->hash, "%s", hash);
    const char *args[] = {NULL, NULL, n->cfg.prefix, room, sid, n->cfg.id, hash};
    if (room_script(n, room, "session_away", 2, 7, args, on_away, q) != 0) {
        sb_warn_limited("session %s: cannot mark it away now (Redis unreachable); its presence "
                        "will lapse and the admin will",
                        sid);
        req_free(q);
    }
}

/* Whether a closed socket keeps its session for the grace: a lost socket (no close frame, a
 * reset, a ping timeout) or a drain (1012) does; a deliberate end does not: a close frame with
 * 1000, 1001 or no code from the client, or a close of ours for its behaviour (4002, 4003,
 * 1009, ...). */
static int gets_grace(const sb_session_t *s)
{
    if (s->node->cfg.resume_grace_ms <= 0 || !s->seat || !s->seat->has_hash)
        return 0;
    if (s->peer_close == 1000 || s->peer_close == 1001 || s->peer_close == 1005)
        return 0;
    return s->close_code == 0 || s->close_code == 1012;
}

/* A PeerJS socket that closed while another socket of this node claimed its id: the cleanup
 * its close would have run, kept until the claim is answered. */
typedef struct {
    int grace; /* session_away (a lost socket), else room_remove */
    char room[SB_ROOM_MAX + 1];
    char hash[SB_RESUME_HASH_LEN + 1];
} pj_orphan_t;

static void pj_orphan_keep(sb_node_t *n, const char *id, const char *room, const char *hash,
                           int grace)
{
    free(sb_map_del(&n->pj_orphans, id)); /* an older one of the id: this close is later */
    pj_orphan_t *o = calloc(1, sizeof *o);
    if (!o || sb_map_put(&n->pj_orphans, id, o) != 0) {
        sb_log_limited(SB_LOG_ERROR,
                       "session %s: out of memory: if the claim of its id fails, "
                       "its presence will lapse and the admin will reap it",
                       id);
        free(o);
        return;
    }
    o->grace = grace;
    snprintf(o->room, sizeof o->room, "%s", room);
    snprintf(o->hash, sizeof o->hash, "%s", hash);
}

/* The claim of id by s is answered: taken over (the id is s's now), the orphan's cleanup is
 * dropped; not taken over, it runs now, with the orphan's own hash (so it can only touch the
 * record of the socket that closed). */
static void pj_orphan_settle(sb_node_t *n, const char *id, sb_session_t *s, int taken_over)
{
    pj_orphan_t *o = sb_map_del(&n->pj_orphans, id);
    if (!o)
        return;
    if (taken_over) {
        /* nothing left to clean: the claim replaced its record */
    } else if (o->grace) {
        go_away(s, o->room, id, o->hash);
    } else {
        remove_id_later(s, o->room, id, o->hash, "disconnect");
    }
    free(o);
}

void sb_route_disconnect(sb_session_t *s)
{
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    if (s->pj && sb_map_get(&n->pj_by_id, s->id) == s)
        sb_map_del(&n->pj_by_id, s->id);
    if (!t)
        return;
    auth_unlink(n, t);
    if (t->maybe_room &&
        !(t->in_redis && t->room && strcmp(t->maybe_room, room_name(t->room)) == 0))
        remove_later(s, t->maybe_room, "disconnect");
    char hash[SB_RESUME_HASH_LEN + 1];
    int cleanup = t->room && t->in_redis && t->state != SEAT_LEAVING;
    int grace = cleanup && t->state == SEAT_JOINED && gets_grace(s);
    if (t->superseded) {
        /* A PeerJS id's hash is fixed (its token's), so this socket's session_away or removal,
         * sent after the other socket's pj_claim, would pass as this incarnation's and mark
         * away or remove the new holder. The claim takes the id over; if it does not, the
         * cleanup kept here runs when its answer comes (pj_orphan_settle). */
        sb_debug_limited("session %s: closed while another socket claims its id", s->id);
        if (cleanup)
            pj_orphan_keep(n, s->id, room_name(t->room), hash_hex(t, hash), grace);
    } else if (grace) {
        go_away(s, room_name(t->room), s->id, hash_hex(t, hash));
    } else if (cleanup) {
        remove_later(s, room_name(t->room), "disconnect");
    }
    /* JOINING: the join's reply sees `closed` and undoes it (on_joined). LEAVING: the leave
     * runs on. Either way the seat leaves the view now. */
    seat_leave_room(t, 1);
    s->seat = NULL;
    seat_free(t);
    sb_pj_free(s->pj);
    s->pj = NULL;
}

static void on_signal_published(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    if (!q->s->closed) {
        if (error || sb_reply_is_error(reply))
            send_unavailable(q->s, q->rid);
        else if (q->rid)
            sb_session_send_reply(q->s, "signal-ack", q->rid);
    }
    req_free(q);
}

static void signal_ack(sb_session_t *s, json_t *rid)
{
    if (rid)
        sb_session_send_reply(s, "signal-ack", rid);
}

static void publish_signal(sb_session_t *s, const char *rn, const char *tag, const char *to,
                           const char *node, const char *data, size_t dlen, json_t *rid);
static void queue_signal(sb_session_t *s, const char *room, const char *to, const char *data,
                         size_t dlen, json_t *rid);

static void route_signal(sb_session_t *s, const sb_msg_t *m)
{
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    if (t->state != SEAT_JOINED) {
        sb_session_send_error(s, "not-joined", "signal needs a joined room", m->rid);
        return;
    }
    room_t *r = t->room;
    const sb_member_t *peer = strcmp(m->to, s->id) == 0 ? NULL : sb_view_member(r->view, m->to);
    if (!peer) {
        sb_session_send_error(s, "peer-not-found", "no such peer in the room", m->rid);
        return;
    }
    /* data as the client wrote it (already validated by the decoder), else re-encoded. */
    char *encoded = NULL;
    const char *data = m->data_raw;
    size_t dlen = m->data_raw_len;
    if (!data) {
        encoded = json_dumps(m->data, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!encoded) {
            sb_session_send_error(s, "internal", "cannot encode data", m->rid);
            return;
        }
        data = encoded;
        dlen = strlen(encoded);
    }
    if (peer->away || t->queue_inflight > 0) {
        /* Its socket is lost: the signal waits in Redis for its resume. And while a signal of
         * this socket is in flight to session_queue, the next ones go the same way: that one
         * may come back "present" (a resume our view has not seen yet) and be sent on only
         * then, so one sent directly meanwhile would overtake it. The replies come in the
         * order sent, so each is sent on in that order (as pj_relay does for PeerJS). */
        queue_signal(s, room_name(r), m->to, data, dlen, m->rid);
    } else if (strcmp(peer->node, n->cfg.id) == 0) {
        /* Same node: no Redis round trip. The recipient may still be joining (held). */
        signal_local(r, s->id, m->to, data, dlen);
        signal_ack(s, m->rid);
    } else if (need_redis(s, room_name(r), m->rid)) {
        publish_signal(s, room_name(r), r->tag, m->to, peer->node, data, dlen, m->rid);
    }
    free(encoded);
}

/* Publishes a signal of s to `to` on node's channel of the room's bucket (tag); acked with rid
 * once Redis took it. */
/* {"t":"signal","room":R,"from":F,"to":T,"data":D} into b, written directly: the room name and
 * both ids are of characters JSON never escapes ([A-Za-z0-9._~-]), and D is valid JSON. */
static void signal_event(text_t *b, const char *rn, const char *from, const char *to,
                         const char *data, size_t dlen)
{
    static const char p1[] = "{\"t\":\"signal\",\"room\":\"", p2[] = "\",\"from\":\"",
                      p3[] = "\",\"to\":\"", p4[] = "\",\"data\":";
    /* One allocation of the exact size: this is the cross-node hot path. */
    text_reserve(b, sizeof p1 + sizeof p2 + sizeof p3 + sizeof p4 + strlen(rn) + strlen(from) +
                        strlen(to) + dlen);
    text_add(b, p1, sizeof p1 - 1);
    text_str(b, rn);
    text_add(b, p2, sizeof p2 - 1);
    text_str(b, from);
    text_add(b, p3, sizeof p3 - 1);
    text_str(b, to);
    text_add(b, p4, sizeof p4 - 1);
    text_add(b, data, dlen);
    text_add(b, "}", 1);
}

static void publish_signal(sb_session_t *s, const char *rn, const char *tag, const char *to,
                           const char *node, const char *data, size_t dlen, json_t *rid)
{
    sb_node_t *n = s->node;
    text_t b = {0};
    signal_event(&b, rn, s->id, to, data, dlen);
    char channel[SB_KEY_MAX];
    req_t *q = b.failed ? NULL : req_new(s, rid, NULL);
    /* The recipient's node channel of the room's bucket: the room's slot, like its events. */
    if (!q || sb_channel_node(channel, sizeof channel, n->cfg.prefix, tag, node) < 0) {
        if (q)
            req_free(q);
        free(b.p);
        sb_session_send_error(s, "internal", "out of memory", rid);
        return;
    }
    /* Until received: the recipient's node subscribes to this channel while the recipient is
     * here, so 0 receivers means its subscription is moving with the slot (a moment). */
    if (sb_cluster_publish_received(n->db, channel, b.p, b.len, on_signal_published, q) != 0) {
        req_free(q);
        send_unavailable(s, rid);
    }
    free(b.p);
}

/* A signal to an away member in flight to session_queue: the data is kept for the case the
 * recipient is back (answered "present"). */
typedef struct {
    req_t *q;
    char *data;
    size_t dlen;
    int counted; /* in its seat's queue_inflight */
} queued_t;

static void on_queued(redisReply *reply, const char *error, void *data)
{
    queued_t *w = data;
    req_t *q = w->q;
    sb_session_t *s = q->s;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (w->counted && s->seat && s->seat->queue_inflight > 0)
        s->seat->queue_inflight--;
    if (s->closed || !s->seat || s->seat->state != SEAT_JOINED || !s->seat->room ||
        strcmp(room_name(s->seat->room), q->room) != 0) {
        /* gone or elsewhere meanwhile: nothing to answer */
    } else if (status && strcmp(status, "ok") == 0) {
        signal_ack(s, q->rid);
    } else if (status && strcmp(status, "full") == 0) {
        sb_session_send_error(s, "peer-queue-full",
                              "the peer is away and its queue is full; nothing was queued", q->rid);
    } else if (status && strcmp(status, "gone") == 0) {
        sb_session_send_error(s, "peer-not-found", "no such peer in the room", q->rid);
    } else if (status && strcmp(status, "present") == 0) {
        /* Back already (our view has not seen the event yet): send it to where it is now. */
        const char *node = sb_reply_str(reply, 1, NULL);
        room_t *r = s->seat->room;
        if (node && strcmp(node, s->node->cfg.id) == 0) {
            signal_local(r, s->id, q->peer, w->data, w->dlen);
            signal_ack(s, q->rid);
        } else if (node && node[0]) {
            publish_signal(s, q->room, r->tag, q->peer, node, w->data, w->dlen, q->rid);
        } else {
            send_failure(s, "signal", reply, error, q->rid);
        }
    } else {
        send_failure(s, "signal", reply, error, q->rid);
    }
    req_free(q);
    free(w->data);
    free(w);
}

static void queue_signal(sb_session_t *s, const char *room, const char *to, const char *data,
                         size_t dlen, json_t *rid)
{
    sb_node_t *n = s->node;
    if (!need_redis(s, room, rid))
        return;
    queued_t *w = calloc(1, sizeof *w);
    req_t *q = w ? req_new(s, rid, room) : NULL;
    char *copy = q ? malloc(dlen + 1) : NULL;
    if (!copy) {
        if (q)
            req_free(q);
        free(w);
        sb_session_send_error(s, "internal", "out of memory", rid);
        return;
    }
    memcpy(copy, data, dlen);
    copy[dlen] = '\0';
    w->q = q;
    w->data = copy;
    w->dlen = dlen;
    snprintf(q->peer, sizeof q->peer, "%s", to);
    char max[32], bytes[32];
    snprintf(max, sizeof max, "%lld", (long long)n->cfg.resume_queue_max);
    snprintf(bytes, sizeof bytes, "%lld", (long long)n->cfg.resume_queue_bytes);
    const char *args[] = {NULL, NULL, n->cfg.prefix, room, to, s->id, copy, max, bytes};
    if (room_script(n, room, "session_queue", 2, 9, args, on_queued, w) != 0) {
        req_free(q);
        free(copy);
        free(w);
        send_unavailable(s, rid);
        return;
    }
    if (s->seat->queue_inflight < 0xFFFF) {
        s->seat->queue_inflight++;
        w->counted = 1;
    }
}

static void on_link_set(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (s->closed || s->seat->state != SEAT_JOINED) {
        req_free(q);
        return;
    }
    sb_seat_t *t = s->seat;
    if (status && strcmp(status, "ok") == 0) {
        if (q->up)
            halves_add(t, q->peer);
        else
            halves_del(t, q->peer);
        json_t *o = sb_proto_reply("link-ack", q->rid);
        json_object_set_new(o, "peer", json_string(q->peer));
        json_object_set_new(o, "state", json_string(q->up ? "up" : "down"));
        sb_session_send_json(s, o);
    } else if (status && strcmp(status, "peer-not-found") == 0) {
        sb_session_send_error(s, "peer-not-found", "no such peer in the room", q->rid);
    } else if (status && strcmp(status, "gone") == 0) {
        if (!lost_not_reaped(s, q->rid)) {
            if (sb_route_present_room(s))
                sb_route_reaped(s); /* as when a presence refresh finds the key gone */
            else
                expire_seat(s, 1, "(link refused)");
        }
    } else {
        send_failure(s, "link", reply, error, q->rid);
    }
    req_free(q);
}

static void route_link(sb_session_t *s, const sb_msg_t *m)
{
    sb_seat_t *t = s->seat;
    if (t->state != SEAT_JOINED) {
        sb_session_send_error(s, "not-joined", "link needs a joined room", m->rid);
        return;
    }
    if (strcmp(m->peer, s->id) == 0) {
        sb_session_send_error(s, "peer-not-found", "a socket cannot link to itself", m->rid);
        return;
    }
    if (!need_redis(s, room_name(t->room), m->rid))
        return;
    req_t *q = req_new(s, m->rid, room_name(t->room));
    if (!q) {
        sb_session_send_error(s, "internal", "out of memory", m->rid);
        return;
    }
    snprintf(q->peer, sizeof q->peer, "%s", m->peer);
    q->up = m->up;
    if (call_link_set(s, q->room, m->peer, m->up, on_link_set, q) != 0) {
        req_free(q);
        send_unavailable(s, m->rid);
    }
}

/* ---- session resume: the request ------------------------------------------------------- */

#define RESUME_RETRY_MS 1000 /* `retry_ms` of a resume refused for a transient reason */

/* {"type":"error","code":"resume-failed","reason":why,...}: "unknown" (nothing changed: join
 * anew) or "retry" (transient: the same token may be sent again after retry_ms). */
static void resume_failed(sb_session_t *s, const char *why, const char *message, json_t *rid)
{
    json_t *o = sb_proto_reply("error", rid);
    json_object_set_new(o, "code", json_string("resume-failed"));
    json_object_set_new(o, "reason", json_string(why));
    json_object_set_new(o, "message", json_string(message));
    if (strcmp(why, "retry") == 0)
        json_object_set_new(o, "retry_ms", json_integer(RESUME_RETRY_MS));
    sb_session_send_json(s, o);
    sb_metrics_error(s->node, "resume-failed");
}

/* Gives session s the id `id` (registered by it; the old registration dropped). */
static int rename_session(sb_session_t *s, const char *id)
{
    sb_node_t *n = s->node;
    if (sb_map_get(&n->sess_by_id, s->id) == s)
        sb_map_del(&n->sess_by_id, s->id);
    if (sb_session_set_id(s, id) != 0)
        return -1;
    return sb_map_put(&n->sess_by_id, s->id, s);
}

/* A resume that did not take place: the socket is the fresh one of its welcome again. */
static void resume_undo(sb_session_t *s)
{
    sb_seat_t *t = s->seat;
    seat_leave_room(t, 1);
    if (t->renamed) {
        rename_session(s, t->fresh_id);
        t->renamed = 0;
    }
    free(t->fresh_id);
    t->fresh_id = NULL;
    t->resuming = 0;
    t->used = 0; /* nothing else was asked on this socket: the client may try again */
    token_clear(t);
    queued_clear(t);
}

/* Appends ,"name":[ids] from an array reply (ids checked). */
static void text_ids(text_t *b, const char *name, const redisReply *arr)
{
    text_str(b, ",\"");
    text_str(b, name);
    text_str(b, "\":[");
    int first = 1;
    for (size_t i = 0; arr && arr->type == REDIS_REPLY_ARRAY && i < arr->elements; i++) {
        const char *id = sb_reply_str(arr, i, NULL);
        if (!id || !sb_valid_sid(id))
            continue;
        text_str(b, first ? "\"" : ",\"");
        text_str(b, id);
        text_str(b, "\"");
        first = 0;
    }
    text_str(b, "]");
}

/* The "F DATA" items of a script's reply (an array) into the seat's queue, sent after its
 * `resumed` or OPEN. 0, or -1 when out of memory. */
static int queued_take(sb_seat_t *t, const redisReply *queued)
{
    if (!queued->elements)
        return 0;
    t->queued = calloc(queued->elements, sizeof *t->queued);
    if (!t->queued)
        return -1;
    for (size_t i = 0; i < queued->elements; i++) {
        size_t len;
        const char *item = sb_reply_str(queued, i, &len);
        if (item && (t->queued[t->nqueued] = strndup(item, len)))
            t->nqueued++;
    }
    return 0;
}

/* 1 when a script's reply is {"ok", ...} with count elements, those from `arrays` on arrays. */
static int ok_with_arrays(const redisReply *reply, const char *status, size_t count, size_t arrays)
{
    int ok = status && strcmp(status, "ok") == 0 && reply->elements == count;
    for (size_t i = arrays; ok && i < count; i++)
        ok = reply->element[i]->type == REDIS_REPLY_ARRAY;
    return ok;
}

/* The session is ours after session_resume ok: halves, meta, what `resumed` will say. 0, or
 * -1 when out of memory. */
static int resume_take(sb_seat_t *t, const redisReply *reply)
{
    const redisReply *members = reply->element[2];
    for (size_t i = 0; i + 1 < members->elements; i += 2) {
        size_t len;
        const char *id = sb_reply_str(members, i, NULL);
        const char *rec = sb_reply_str(members, i + 1, &len);
        const char *v;
        size_t vl;
        if (id && rec && strcmp(id, t->s->id) == 0 &&
            sb_json_member_span(rec, len, "meta", &v, &vl) && vl >= 2 && v[0] == '{') {
            seat_set_meta(t, strndup(v, vl));
        }
    }
    const redisReply *halves = reply->element[5];
    for (size_t i = 0; i < halves->elements; i++) {
        const char *p = sb_reply_str(halves, i, NULL);
        if (p && sb_valid_sid(p) && halves_add(t, p) != 0)
            return -1;
    }
    if (queued_take(t, reply->element[7]) != 0)
        return -1;
    text_t b = {0};
    text_ids(&b, "joined", reply->element[3]);
    text_ids(&b, "left", reply->element[4]);
    text_ids(&b, "links", reply->element[6]);
    text_str(&b, "");
    if (b.failed) {
        free(b.p);
        return -1;
    }
    free(t->resumed_tail);
    t->resumed_tail = b.p;
    return 0;
}

/* The reply of a takeover (session_resume, pj_claim) found the new socket closed: 1 (q freed).
 * When the script succeeded the session is ours, so it goes away again (with the token this
 * node issued for it; without grace, freed). */
static int gone_meanwhile(req_t *q, int ok, const char *error)
{
    sb_session_t *s = q->s;
    if (!s->closed && s->seat)
        return 0;
    /* Taken over (or, given up on at a timeout, maybe taken over) for a socket that is gone:
     * the session goes away; session_away refuses if the script had not run. */
    if (ok || error)
        go_away(s, q->room, q->peer, q->hash);
    req_free(q);
    return 1;
}

static int pj_rename(sb_session_t *s, const char *id);

/* The script made s the holder of id q->peer (a resume, a PeerJS reclaim): a stale copy of it
 * here (we had not noticed its drop) goes, without cleanup, and s takes the id and its place in
 * the view. 0, or -1 when out of memory (s closed, the session away again, q freed). */
static int take_over(req_t *q, room_t *r)
{
    sb_session_t *s = q->s;
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    if (t->renamed)
        return 0;
    sb_session_t *stale = sb_map_get(s->pj ? &n->pj_by_id : &n->sess_by_id, q->peer);
    if (stale && stale != s && stale->seat && stale->seat->room)
        drop_stale(stale);
    else if (stale && stale != s && s->pj)
        sb_session_close(stale, 4000, "resumed elsewhere"); /* still claiming: it loses */
    if ((s->pj ? pj_rename(s, q->peer) : rename_session(s, q->peer)) != 0 ||
        sb_view_local_add(r->view, s->id) != 0) {
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory taking it over", q->peer);
        sb_session_close(s, 1011, "out of memory");
        go_away(s, q->room, q->peer, q->hash);
        req_free(q);
        return -1;
    }
    t->renamed = 1;
    return 0;
}

static void on_resumed(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    sb_node_t *n = s->node;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    int ok = ok_with_arrays(reply, status, 8, 2);
    if (gone_meanwhile(q, ok, error))
        return;
    sb_seat_t *t = s->seat;
    if (!ok) {
        resume_undo(s);
        if (status && strcmp(status, "unknown") == 0) {
            t->used = 1; /* a resume must be the first request: only `retry` allows another */
            sb_info_limited("session %s: resume of %s refused", s->id, q->peer);
            resume_failed(s, "unknown", "no such session to resume: join anew", q->rid);
        } else {
            if (reply && reply->type == REDIS_REPLY_ERROR)
                sb_log_limited(SB_LOG_ERROR, "session %s: resume failed: %s", s->id, reply->str);
            resume_failed(s, "retry", "the session cannot be resumed now: retry", q->rid);
        }
        /* A resume we gave up on (timeout) may still have run: the session is then this node's,
         * with the hash of a next token nobody got, and no socket holds it. It goes away (its
         * grace, peer-away) instead of looking present until its presence lapses; session_away
         * refuses if it had not run (as for a PeerJS claim). */
        if (error)
            go_away(s, q->room, q->peer, q->hash);
        req_free(q);
        return;
    }
    room_t *r = t->room;
    if (take_over(q, r) != 0)
        return;
    free(t->fresh_id); /* the resume took place: no way back to the welcome's id */
    t->fresh_id = NULL;
    auth_unlink(n, t);
    t->in_redis = 1;
    n->njoined++;
    if (resume_take(t, reply) != 0)
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory reading its resume", s->id);
    uint64_t seq = (uint64_t)sb_reply_int(reply, 1, 0);
    local_joined(r, s, seq, reply->element[2], 0);
    req_free(q);
}

static void resume_send(req_t *q)
{
    sb_session_t *s = q->s;
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    char ttl[32], grace[32];
    snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    snprintf(grace, sizeof grace, "%lld", (long long)n->cfg.resume_grace_ms);
    char presented[SB_RESUME_HASH_LEN + 1];
    snprintf(presented, sizeof presented, "%s", q->hash);
    /* q->hash now carries the next token's hash (the presented one is spent on success). */
    hash_hex(t, q->hash);
    const char *origin = s->origin ? s->origin : "";
    const char *args[] = {NULL,      NULL,      n->cfg.prefix, q->room,
                          q->peer,   presented, origin,        t->sub ? t->sub : "",
                          n->cfg.id, n->epoch,  q->hash,       grace,
                          ttl};
    if (room_script(n, q->room, "session_resume", 2, 13, args, on_resumed, q) != 0) {
        resume_undo(s);
        resume_failed(s, "retry", "Redis is unreachable: retry", q->rid);
        req_free(q);
    }
}

static void on_resume_bucket(sb_node_t *n, void *data, int ok)
{
    (void)n;
    req_t *q = data;
    sb_session_t *s = q->s;
    if (s->closed || !s->seat || !s->seat->resuming) {
        req_free(q);
        return;
    }
    if (ok) {
        resume_send(q);
        return;
    }
    resume_undo(s);
    resume_failed(s, "retry", "Redis is unreachable: retry", q->rid);
    req_free(q);
}

/* {"type":"resume","id":S,"room":R,"resume":T[,"token":JWT]}: take session S back. */
static void route_resume(sb_session_t *s, const sb_msg_t *m)
{
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    char hash[SB_RESUME_HASH_LEN + 1];
    if (n->cfg.resume_grace_ms <= 0 || t->state != SEAT_IDLE || t->used || !sb_valid_sid(m->sid) ||
        !sb_valid_room(m->room) || strlen(m->resume) > SB_RESUME_TOKEN_MAX ||
        strcmp(m->sid, s->id) == 0) {
        resume_failed(s, "unknown", "no such session to resume: join anew", m->rid);
        return;
    }
    free(t->sub);
    t->sub = NULL;
    if (n->auth_secret) {
        /* The same subject as the session's: checked against its record in Redis. */
        char why[128];
        if (!m->token || sb_auth_verify(n->auth_secret, n->auth_secret_len, m->token, m->room,
                                        sb_now_ms() / 1000, &t->sub, why, sizeof why) != 0) {
            resume_failed(s, "unknown", "no such session to resume: join anew", m->rid);
            return;
        }
    }
    if (!n->db_up || sb_resume_hash(m->resume, hash) != 0) {
        resume_failed(s, "retry", "Redis is unreachable: retry", m->rid);
        return;
    }
    /* As need_redis: sent into a Redis already behind, it would be answered on its timer and
     * run anyway, spending the token. */
    unsigned slot = sb_crc16(m->room, strlen(m->room)) & (SB_SLOTS - 1);
    if (sb_cluster_slot_lag_ms(n->db, slot) > n->cfg.redis_timeout_ms) {
        n->metrics.redis_shed++;
        resume_failed(s, "retry", "Redis is behind: retry", m->rid);
        return;
    }
    room_t *r = room_get(n, m->room);
    req_t *q = r ? req_new(s, m->rid, m->room) : NULL;
    if (!q || token_new(t) != 0 || !(t->fresh_id = strdup(s->id))) {
        token_clear(t);
        if (q)
            req_free(q);
        room_drop_unused(r);
        resume_failed(s, "retry", "out of memory: retry", m->rid);
        return;
    }
    snprintf(q->peer, sizeof q->peer, "%s", m->sid);
    snprintf(q->hash, sizeof q->hash, "%s", hash);
    r->refs++;
    t->room = r;
    t->state = SEAT_JOINING;
    t->used = 1;
    t->resuming = 1;
    t->join_rid = m->rid ? json_incref(m->rid) : NULL;
    /* Why the old id at once when no copy of it is here: signals for it that arrive before the
     * reply (the resume's "back" event reaches senders first) are held for it, not lost. */
    if (!sb_map_get(&n->sess_by_id, m->sid)) {
        if (rename_session(s, m->sid) != 0 || sb_view_local_add(r->view, s->id) != 0) {
            t->renamed = 1;
            resume_undo(s);
            req_free(q);
            resume_failed(s, "retry", "out of memory: retry", m->rid);
            return;
        }
        t->renamed = 1;
    }
    int rc = sb_pubsub_bucket(n, r->tag, on_resume_bucket, q);
    if (rc == 0)
        resume_send(q);
    else if (rc < 0) {
        resume_undo(s);
        resume_failed(s, "retry", "Redis is unreachable: retry", q->rid);
        req_free(q);
    }
}

static void route_ice_servers(sb_session_t *s, json_t *rid)
{
    if (s->seat->state != SEAT_JOINED) {
        sb_session_send_error(s, "not-joined", "ice-servers needs a joined room", rid);
        return;
    }
    json_t *o = sb_proto_reply("ice-servers", rid);
    json_object_set_new(o, "ice_servers", ice_servers(s));
    sb_session_send_json(s, o);
}

static void pj_message(sb_session_t *s, const char *buf, size_t len);
static void pj_error(sb_session_t *s, const char *msg, int code);

/* A PeerJS message pays 1 from the socket's bucket: 1, or 0 after answering (and closing 4002
 * on abuse). */
static int pj_admit(sb_session_t *s, int64_t now)
{
    sb_node_t *n = s->node;
    sb_rate_result_t rr =
        sb_bucket_take(&s->bucket, (double)n->cfg.rate, (double)n->cfg.burst, 1, now);
    if (rr == SB_RATE_OK)
        return 1;
    pj_error(s, "Rate limited: message dropped", rr == SB_RATE_ABUSE ? 4002 : 0);
    return 0;
}

void sb_route_binary(sb_session_t *s)
{
    if (s->close_code || !s->seat)
        return;
    s->node->metrics.received[SB_MSG_UNKNOWN]++;
    if (s->pj) {
        if (pj_admit(s, sb_mono_ms()))
            sb_session_send(s, SB_PJ_INVALID_MESSAGE, sizeof SB_PJ_INVALID_MESSAGE - 1);
    } else if (sb_session_admit(s, NULL)) {
        sb_session_send_error(s, "bad-message", "binary frames are not part of the protocol", NULL);
    }
}

void sb_route_message(sb_session_t *s, const char *buf, size_t len)
{
    sb_node_t *n = s->node;
    if (s->close_code || !s->seat)
        return;
    if (s->pj) {
        pj_message(s, buf, len);
        return;
    }
    sb_msg_t m;
    sb_proto_err_t err;
    int rc = sb_proto_decode(buf, len, &m, &err);
    n->metrics.received[rc == 0 ? m.type : SB_MSG_UNKNOWN]++;
    /* Rate: every message costs 1 here; an accepted join or leave costs SB_JOIN_LEAVE_COST in
     * all, the rest charged once Redis has accepted it (a refused one costs 1, like any
     * other message). */
    if (!sb_session_admit(s, rc == 0 ? m.rid : err.rid)) {
        if (rc == 0)
            sb_msg_free(&m);
        else if (err.rid)
            json_decref(err.rid);
        return;
    }
    if (rc != 0) {
        sb_session_send_error(s, err.code, err.message, err.rid);
        if (err.rid)
            json_decref(err.rid);
        return;
    }
    switch (m.type) {
    case SB_MSG_PING:
        sb_session_send_reply(s, "pong", m.rid);
        break;
    case SB_MSG_JOIN:
        route_join(s, &m);
        break;
    case SB_MSG_LEAVE:
        route_leave(s, m.rid);
        break;
    case SB_MSG_SIGNAL:
        route_signal(s, &m);
        break;
    case SB_MSG_LINK:
        route_link(s, &m);
        break;
    case SB_MSG_ICE_SERVERS:
        route_ice_servers(s, m.rid);
        break;
    case SB_MSG_RESUME:
        route_resume(s, &m);
        break;
    default:
        break;
    }
    sb_msg_free(&m);
}

/* ---- presence's questions ------------------------------------------------------------------ */

const char *sb_route_present_room(const sb_session_t *s)
{
    const sb_seat_t *t = s->seat;
    return t && t->in_redis && t->room && (t->state == SEAT_JOINED || t->state == SEAT_JOINING)
               ? room_name(t->room)
               : NULL;
}

void sb_route_reaped(sb_session_t *s)
{
    const char *room = sb_route_present_room(s);
    if (!room)
        return;
    /* Rule 1: the key is gone, so the socket was reaped (or is about to be). Never re-create
     * it: reap it properly (a no-op when the admin already did) and close. */
    remove_later(s, room, "expired");
    if (s->node->cfg.resume_grace_ms > 0) {
        /* With resume on that removal (or the admin's) marks the session away, its grace
         * running: the client resumes it, as when the away event comes first (SB_ACT_PEER_AWAY
         * in run()). 4000 would tell it to join anew and leave the session to its grace. */
        sb_warn_limited("session %s: presence lapsed while connected: closing 1012", s->id);
        seat_leave_room(s->seat, 1);
        sb_session_close(s, 1012, "resume");
        return;
    }
    expire_seat(s, 1, "while connected");
}

static void on_asserted(redisReply *reply, const char *error, void *data)
{
    sb_session_t *s = data;
    if (error || sb_reply_is_error(reply))
        sb_warn_limited("session %s: re-assert failed: %s (again at its next presence refresh "
                        "that finds the key missing)",
                        s->id, error ? error : reply->str);
    else if (s->seat && s->seat->reassert) {
        seat_reassert(s->seat, 0);
        if (s->node->reasserts_unconfirmed == 0)
            sb_route_loss_grace(s->node);
    }
    sb_session_unref(s);
}

/* room_assert of s in room (ttl: the presence TTL as text). 0 when sent. The seat stays marked
 * until Redis confirms: a shard that restarted empty answers CLUSTERDOWN for a moment, and the
 * presence refresh that then finds the key missing re-asserts again (sb_route_refreshed). */
static int reassert_one(sb_node_t *n, sb_session_t *s, const char *room, const char *ttl)
{
    sb_seat_t *t = s->seat;
    seat_reassert(t, 1);
    char record[SB_RESUME_HASH_LEN + 512] = "";
    if (t->has_hash && n->cfg.resume_grace_ms > 0) {
        /* Its resume record, as room_join wrote it: origin and subject as JSON strings. */
        char hash[SB_RESUME_HASH_LEN + 1];
        json_t *rec =
            json_pack("{s:s,s:s,s:s,s:I}", "h", hash_hex(t, hash), "o", s->origin ? s->origin : "",
                      "u", t->sub ? t->sub : "", "g", (json_int_t)n->cfg.resume_grace_ms);
        char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
        if (text && strlen(text) < sizeof record)
            memcpy(record, text, strlen(text) + 1);
        free(text);
        json_decref(rec);
    }
    if (t->nhalves && t->room->pj) {
        /* The other nodes re-assert theirs within their heartbeat of noticing the loss;
         * twice the presence TTL bounds that (a node that re-asserts later leaves such a link
         * uncounted until a new ANSWER: docs/peerjs.md). */
        t->room->relink_until_ms = sb_mono_ms() + 2 * (int64_t)n->cfg.presence_ttl_ms;
    }
    int nargs = 10 + t->nhalves;
    const char **args = calloc((size_t)nargs, sizeof(char *));
    if (!args) {
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory re-asserting it", s->id);
        return -1;
    }
    args[2] = n->cfg.prefix;
    args[3] = room;
    args[4] = s->id;
    args[5] = n->cfg.id;
    args[6] = n->epoch;
    args[7] = t->meta_json ? t->meta_json : "{}";
    args[8] = ttl;
    args[9] = record;
    for (int i = 0; i < t->nhalves; i++)
        args[10 + i] = t->halves[i];
    sb_session_ref(s);
    int rc = room_script(n, room, "room_assert", 2, nargs, args, on_asserted, s);
    if (rc != 0)
        sb_session_unref(s);
    free(args);
    return rc;
}

int sb_route_reassert(sb_node_t *n, const unsigned char *slots)
{
    int count = 0;
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    /* How long a refused re-assert is sent again rather than its socket taken for reaped: a
     * restarted shard rejoins its cluster within seconds; past this, rule 1 applies again. */
    n->reassert_until_ms = sb_mono_ms() + 4 * n->cfg.presence_ttl_ms;
    for (sb_session_t *s = n->sessions; s; s = s->next) {
        const char *room = s->closed ? NULL : sb_route_present_room(s);
        if (!room)
            continue;
        if (slots && !sb_cluster_slot_in(slots, sb_crc16(room, strlen(room)) & (SB_SLOTS - 1)))
            continue;
        if (reassert_one(n, s, room, ttl) == 0)
            count++;
    }
    return count;
}

void sb_route_refreshed(sb_session_t *s, int present)
{
    const char *room = sb_route_present_room(s);
    if (!room)
        return;
    if (present) {
        seat_reassert(s->seat, 0);
    } else if (s->seat->reassert && sb_mono_ms() < s->node->reassert_until_ms) {
        /* Lost with the data and not re-written yet (the re-assert failed): not a reaping. */
        char ttl[32];
        snprintf(ttl, sizeof ttl, "%lld", (long long)s->node->cfg.presence_ttl_ms);
        sb_info_limited("session %s: presence still missing after a data loss: re-asserting "
                        "it again",
                        s->id);
        reassert_one(s->node, s, room, ttl);
    } else {
        seat_reassert(s->seat, 0);
        sb_route_reaped(s); /* rule 1: never re-create it */
    }
}

/* ---- PeerJS (docs/peerjs.md) ------------------------------------------------------------- */

/* A PeerJS expire timer: src's messages queued for dst are dropped at due_ms (if still there),
 * and src gets EXPIRE. FIFO: one timeout for all. */
typedef struct sb_pj_exp {
    struct sb_pj_exp *next;
    int64_t due_ms;
    char src[SB_PJ_ID_MAX + 1], dst[SB_PJ_ID_MAX + 1];
} sb_pj_exp_t;

#define PJ_CLAIM_ERROR "Server unavailable, retry"

/* {"type":"ERROR","payload":{"msg":msg}} (msg needs no escapes), then a close with code (0:
 * stays open). */
static void pj_error(sb_session_t *s, const char *msg, int code)
{
    static const char head[] = "{\"type\":\"ERROR\",\"payload\":{\"msg\":\"";
    const sb_part_t parts[] = {{head, sizeof head - 1}, {msg, strlen(msg)}, {"\"}}", 3}};
    sb_session_sendv(s, parts, 3);
    if (code)
        sb_session_close(s, code, msg);
}

/* s takes its PeerJS id: registered under it among the PeerJS sockets (a copy of it still
 * registered here is replaced). 0, or -1 when out of memory. */
static int pj_rename(sb_session_t *s, const char *id)
{
    sb_node_t *n = s->node;
    if (sb_map_get(&n->sess_by_id, s->id) == s)
        sb_map_del(&n->sess_by_id, s->id);
    if (sb_map_get(&n->pj_by_id, s->id) == s)
        sb_map_del(&n->pj_by_id, s->id);
    if (sb_session_set_id(s, id) != 0)
        return -1;
    if (sb_map_get(&n->pj_by_id, id))
        sb_map_del(&n->pj_by_id, id);
    return sb_map_put(&n->pj_by_id, s->id, s);
}

/* A claim that did not take place: the seat leaves the room; the socket is told and closed. */
/* A claim of id by s that did not take place (an answer, or not sent): the copy of id here, if
 * any, is its holder again and cleans up at its close as before. */
static void pj_claim_over(sb_node_t *n, const char *id, sb_session_t *s)
{
    sb_session_t *copy = sb_map_get(&n->pj_by_id, id);
    if (copy && copy != s && copy->seat)
        copy->seat->superseded = 0;
    pj_orphan_settle(n, id, s, 0); /* or it closed meanwhile: its cleanup, now */
}

static void pj_claim_failed(sb_session_t *s, int taken)
{
    seat_leave_room(s->seat, 1);
    if (taken) {
        static const char msg[] = "{\"type\":\"ID-TAKEN\",\"payload\":{\"msg\":\"ID is taken\"}}";
        sb_session_send(s, msg, sizeof msg - 1);
        sb_session_close(s, 1000, "ID is taken");
    } else {
        pj_error(s, PJ_CLAIM_ERROR, 1013);
    }
}

static void on_pj_claimed(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    sb_node_t *n = s->node;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    int ok = ok_with_arrays(reply, status, 6, 3);
    pj_orphan_settle(n, q->peer, s, ok);
    if (gone_meanwhile(q, ok, error))
        return;
    sb_seat_t *t = s->seat;
    if (!ok) {
        if (!(status && strcmp(status, "taken") == 0))
            sb_warn_limited("session %s: PeerJS claim of %s failed: %s", s->id, q->peer,
                            error                                       ? error
                            : reply && reply->type == REDIS_REPLY_ERROR ? reply->str
                                                                        : "bad reply");
        pj_claim_failed(s, status && strcmp(status, "taken") == 0);
        /* A claim we gave up on (timeout) may still have run: the id then goes away (grace,
         * or freed) instead of waiting for the admin; session_away refuses if it had not. */
        if (error)
            go_away(s, q->room, q->peer, q->hash);
        else
            pj_claim_over(n, q->peer, s);
        req_free(q);
        return;
    }
    room_t *r = t->room;
    if (take_over(q, r) != 0)
        return;
    auth_unlink(n, t);
    t->in_redis = 1;
    n->njoined++;
    const redisReply *halves = reply->element[4];
    if (queued_take(t, reply->element[3]) != 0)
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory reading its queue", s->id);
    for (size_t i = 0; i < halves->elements; i++) {
        const char *p = sb_reply_str(halves, i, NULL);
        if (p && sb_pj_valid_id(p))
            halves_add(t, p);
    }
    sb_info_limited("session %s: PeerJS id %s (%s)", s->id, room_name(r),
                    sb_reply_str(reply, 2, NULL) ? sb_reply_str(reply, 2, NULL) : "?");
    local_joined(r, s, (uint64_t)sb_reply_int(reply, 1, 0), reply->element[5], 0);
    req_free(q);
}

static void pj_claim_send(req_t *q)
{
    sb_session_t *s = q->s;
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    char ttl[32], grace[32];
    snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    snprintf(grace, sizeof grace, "%lld", (long long)n->cfg.resume_grace_ms);
    /* The member list only for a node with no view of the room yet: the room may hold
     * thousands of ids, and a view, once synced, follows the events. */
    const char *list = sb_view_synced(t->room->view) ? "0" : "1";
    const char *args[] = {
        NULL, NULL,  n->cfg.prefix,        q->room, q->peer, n->cfg.id, n->epoch, q->hash,
        ttl,  grace, t->sub ? t->sub : "", list};
    if (room_script(n, q->room, "pj_claim", 2, 12, args, on_pj_claimed, q) != 0) {
        pj_claim_over(n, q->peer, s);
        pj_claim_failed(s, 0);
        req_free(q);
    }
}

static void on_pj_bucket(sb_node_t *n, void *data, int ok)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    if (s->closed || !s->seat || s->seat->state != SEAT_JOINING) {
        req_free(q);
        return;
    }
    if (ok) {
        pj_claim_send(q);
        return;
    }
    pj_claim_over(n, q->peer, s);
    pj_claim_failed(s, 0);
    req_free(q);
}

void sb_route_pj_open(sb_session_t *s, const char *key, const char *id, const char *token,
                      const char *jwt)
{
    sb_node_t *n = s->node;
    sb_seat_t *t = s->seat;
    char hash[SB_RESUME_HASH_LEN + 1];
    const char *room = n->cfg.peerjs_room;
    if (!key || !id || !token || !key[0] || !id[0] || !token[0]) {
        pj_error(s, "No id, token, or key supplied to websocket server", 1000);
        return;
    }
    if (strcmp(key, n->cfg.peerjs_key) != 0) {
        pj_error(s, "Invalid key provided", 1000);
        return;
    }
    if (!sb_pj_valid_id(id)) {
        pj_error(s, "Invalid id", 1000);
        return;
    }
    if (strcmp(token, "~") == 0) { /* longer than SB_PJ_TOKEN_MAX (server.c) */
        pj_error(s, "Invalid token", 1000);
        return;
    }
    if (n->nsessions >= n->cfg.max_connections) { /* this one is the last slot */
        pj_error(s, "Server has reached its concurrent user limit", 1000);
        return;
    }
    if (n->auth_secret) {
        char why[128];
        free(t->sub);
        t->sub = NULL;
        if (!jwt || sb_auth_verify(n->auth_secret, n->auth_secret_len, jwt, room,
                                   sb_now_ms() / 1000, &t->sub, why, sizeof why) != 0) {
            sb_info_limited("session %s: PeerJS claim refused: %s", s->id, jwt ? why : "no JWT");
            pj_error(s, "unauthorized", 1008);
            return;
        }
    }
    if (!n->db_up || !sb_cluster_slot_up(n->db, sb_crc16(room, strlen(room)) & (SB_SLOTS - 1)) ||
        sb_resume_hash(token, hash) != 0) {
        pj_error(s, PJ_CLAIM_ERROR, 1013);
        return;
    }
    s->pj = calloc(1, sizeof *s->pj);
    room_t *r = s->pj ? room_get(n, room) : NULL;
    req_t *q = r ? req_new(s, NULL, room) : NULL;
    if (!q) {
        room_drop_unused(r);
        pj_error(s, PJ_CLAIM_ERROR, 1011);
        return;
    }
    s->pj->last_msg_ms = sb_mono_ms();
    snprintf(q->peer, sizeof q->peer, "%s", id);
    snprintf(q->hash, sizeof q->hash, "%s", hash);
    /* The token's hash is the id's incarnation (fixed: PeerJS reclaims with the same token). */
    hash_set(t, hash);
    r->refs++;
    t->room = r;
    t->state = SEAT_JOINING;
    t->used = 1;
    /* The id at once when no copy of it is here: messages for it that come before the reply
     * are held for it by the view. */
    sb_session_t *copy = sb_map_get(&n->pj_by_id, id);
    if (!copy) {
        if (pj_rename(s, id) != 0 || sb_view_local_add(r->view, s->id) != 0) {
            pj_claim_failed(s, 0);
            req_free(q);
            return;
        }
        t->renamed = 1;
    } else if (copy != s && copy->seat) {
        copy->seat->superseded = 1; /* see its close (sb_route_disconnect) */
    }
    int rc = sb_pubsub_bucket(n, r->tag, on_pj_bucket, q);
    if (rc == 0)
        pj_claim_send(q);
    else if (rc < 0) {
        pj_claim_failed(s, 0);
        req_free(q);
    }
}

static void pj_message(sb_session_t *s, const char *buf, size_t len);

/* The view's JOINED for a PeerJS socket: OPEN, then what was queued for the id, then what the
 * socket sent before. */
static void pj_opened(sb_session_t *s, room_t *r)
{
    (void)r;
    sb_seat_t *t = s->seat;
    sb_pj_t *p = s->pj;
    t->state = SEAT_JOINED;
    p->open = 1;
    static const char open[] = "{\"type\":\"OPEN\"}";
    sb_session_send(s, open, sizeof open - 1);
    for (size_t i = 0; i < t->nqueued; i++) {
        char *sp = strchr(t->queued[i], ' ');
        if (sp && sp > t->queued[i]) {
            *sp = '\0';
            pj_deliver(s, t->queued[i], sp + 1, strlen(sp + 1));
        }
    }
    queued_clear(t);
    sb_pj_pending_t *m = sb_pj_pending_take(p);
    while (m) {
        sb_pj_pending_t *next = m->next;
        if (!s->close_code && s->seat && s->pj == p)
            pj_message(s, m->text, m->len);
        free(m);
        m = next;
    }
}

static void on_pj_half(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (!s->closed && s->seat && s->seat->state == SEAT_JOINED && status &&
        strcmp(status, "ok") == 0) {
        if (q->up)
            halves_add(s->seat, q->peer);
        else
            halves_del(s->seat, q->peer);
    } else if (!status) {
        sb_debug_limited("session %s: PeerJS link half: %s", s->id, error ? error : "error");
    }
    req_free(q);
}

/* s's half of its link with peer, up or down (the native link_set; idempotent). */
static void pj_half(sb_session_t *s, const char *peer, int up)
{
    sb_seat_t *t = s->seat;
    if (!t || t->state != SEAT_JOINED || !t->in_redis || strcmp(peer, s->id) == 0)
        return;
    req_t *q = req_new(s, NULL, room_name(t->room));
    if (!q)
        return;
    snprintf(q->peer, sizeof q->peer, "%s", peer);
    q->up = up;
    if (call_link_set(s, q->room, peer, up, on_pj_half, q) != 0)
        req_free(q);
}

static void pj_deliver(sb_session_t *dst, const char *from, const char *frame, size_t len)
{
    sb_session_send(dst, frame, len);
    sb_pj_type_t type;
    char conn[SB_PJ_CONNID_MAX + 1];
    sb_pj_frame_info(frame, len, &type, conn);
    /* Links as this node sees them (docs/peerjs.md): an OFFER's connection id, and the ANSWER
     * that comes back with it, set this socket's half. */
    if (type == SB_PJ_OFFER)
        sb_pj_conn_add(dst->pj, SB_PJ_GOT_OFFER, from, conn);
    else if (type == SB_PJ_ANSWER && sb_pj_conn_has(dst->pj, SB_PJ_SENT_OFFER, from, conn))
        pj_half(dst, from, 1);
    else if (type == SB_PJ_LEAVE)
        sb_pj_conn_forget(dst->pj, from);
}

static void pj_expire_timer(sb_node_t *n, const char *src, const char *dst)
{
    for (sb_pj_exp_t *x = n->pj_exp_head; x; x = x->next)
        if (strcmp(x->src, src) == 0 && strcmp(x->dst, dst) == 0)
            return; /* one EXPIRE per pair */
    sb_pj_exp_t *x = calloc(1, sizeof *x);
    if (!x)
        return;
    x->due_ms = sb_mono_ms() + n->cfg.peerjs_expire_timeout_ms;
    snprintf(x->src, sizeof x->src, "%s", src);
    snprintf(x->dst, sizeof x->dst, "%s", dst);
    if (n->pj_exp_tail)
        n->pj_exp_tail->next = x;
    else
        n->pj_exp_head = x;
    n->pj_exp_tail = x;
    sb_node_sweep_soon(n); /* as away_timer's */
}

/* A message in flight to pj_send, with its frame (kept for "here"). */
typedef struct {
    req_t *q;
    size_t len;
    char frame[];
} pj_sent_t;

static void on_pj_sent(redisReply *reply, const char *error, void *data)
{
    pj_sent_t *w = data;
    req_t *q = w->q;
    sb_session_t *s = q->s;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (s->pj && s->pj->inflight > 0)
        s->pj->inflight--;
    room_t *r = sb_map_get(&s->node->rooms, q->room);
    if (status && strcmp(status, "here") == 0 && r)
        signal_local(r, s->id, q->peer, w->frame, w->len); /* before any later message */
    else if (status && strcmp(status, "queued") == 0)
        pj_expire_timer(s->node, s->id, q->peer);
    else if (status && strcmp(status, "full") == 0)
        sb_info_limited("session %s: PeerJS queue of %s full: message dropped", s->id, q->peer);
    else if (!status)
        sb_warn_limited("session %s: PeerJS message to %s lost: %s", s->id, q->peer,
                        error                                       ? error
                        : reply && reply->type == REDIS_REPLY_ERROR ? reply->str
                                                                    : "bad reply");
    req_free(q);
    free(w);
}

/* To an id this node cannot hand it to directly: pj_send publishes or queues it in Redis. */
static void pj_send_script(sb_session_t *s, const char *room, const char *dst, const char *frame,
                           size_t flen, int queue_it)
{
    sb_node_t *n = s->node;
    pj_sent_t *w = malloc(sizeof *w + flen + 1);
    req_t *q = w ? req_new(s, NULL, room) : NULL;
    if (!q) {
        free(w);
        return;
    }
    w->q = q;
    w->len = flen;
    memcpy(w->frame, frame, flen + 1);
    snprintf(q->peer, sizeof q->peer, "%s", dst);
    char max[32], bytes[32], life[32];
    snprintf(max, sizeof max, "%lld", (long long)n->cfg.resume_queue_max);
    snprintf(bytes, sizeof bytes, "%lld", (long long)n->cfg.resume_queue_bytes);
    /* The sender's node drops what is left at the expire timeout; the key's own expiry only
     * covers a node that died before. */
    snprintf(life, sizeof life, "%lld", (long long)(2 * n->cfg.peerjs_expire_timeout_ms + 1000));
    const char *args[] = {NULL,  NULL,  n->cfg.prefix, room,
                          s->id, dst,   frame,         queue_it ? "1" : "0",
                          max,   bytes, life,          n->cfg.id};
    if (room_script(n, room, "pj_send", 2, 12, args, on_pj_sent, w) != 0) {
        sb_warn_limited("session %s: PeerJS message to %s lost: Redis unreachable", s->id, dst);
        req_free(q);
        free(w);
        return;
    }
    s->pj->inflight++;
}

static void on_pj_published(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    if (error || sb_reply_is_error(reply))
        sb_warn_limited("session %s: PeerJS message to %s lost: %s", q->s->id, q->peer,
                        error ? error : reply->str);
    req_free(q);
}

static void pj_publish(sb_session_t *s, room_t *r, const char *dst, const char *node,
                       const char *frame, size_t flen)
{
    sb_node_t *n = s->node;
    text_t b = {0};
    signal_event(&b, room_name(r), s->id, dst, frame, flen);
    char channel[SB_KEY_MAX];
    req_t *q = b.failed ? NULL : req_new(s, NULL, NULL);
    if (q)
        snprintf(q->peer, sizeof q->peer, "%s", dst);
    if (!q || sb_channel_node(channel, sizeof channel, n->cfg.prefix, r->tag, node) < 0 ||
        sb_cluster_publish_received(n->db, channel, b.p, b.len, on_pj_published, q) != 0) {
        sb_warn_limited("session %s: PeerJS message to %s lost", s->id, dst);
        if (q)
            req_free(q);
    }
    free(b.p);
}

static void pj_relay(sb_session_t *s, const sb_pj_msg_t *m)
{
    sb_node_t *n = s->node;
    room_t *r = s->seat->room;
    size_t flen;
    /* src is the socket's own id, never the client's word; other fields are dropped. */
    char *frame = sb_pj_frame(m->tname, s->id, m->dst, m->payload, m->plen, &flen);
    if (!frame) {
        sb_session_close(s, 1011, "server out of memory");
        return;
    }
    if (m->type == SB_PJ_OFFER)
        sb_pj_conn_add(s->pj, SB_PJ_SENT_OFFER, m->dst, m->conn);
    else if (m->type == SB_PJ_ANSWER && sb_pj_conn_has(s->pj, SB_PJ_GOT_OFFER, m->dst, m->conn))
        pj_half(s, m->dst, 1);
    else if (m->type == SB_PJ_LEAVE) {
        sb_pj_conn_forget(s->pj, m->dst);
        pj_half(s, m->dst, 0);
    }
    const sb_member_t *peer = sb_view_member(r->view, m->dst);
    int queue_it = m->type == SB_PJ_OFFER || m->type == SB_PJ_ANSWER || m->type == SB_PJ_CANDIDATE;
    /* While a message of this socket is in flight to pj_send, the next go the same way (one
     * connection to the room's slot: they arrive in the order they were sent). */
    if (!peer || peer->away || s->pj->inflight > 0)
        pj_send_script(s, room_name(r), m->dst, frame, flen, queue_it);
    else if (strcmp(peer->node, n->cfg.id) == 0)
        signal_local(r, s->id, m->dst, frame, flen);
    else
        pj_publish(s, r, m->dst, peer->node, frame, flen);
    free(frame);
}

static void on_pj_left(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (status && strcmp(status, "ok") == 0)
        log_cleanup(s->node, q->room, s->id, "leave", reply);
    if (!s->closed && s->seat) {
        if (status && (strcmp(status, "ok") == 0 || strcmp(status, "gone") == 0))
            seat_leave_room(s->seat, 1);
        else
            s->seat->state = s->seat->room ? SEAT_JOINED : SEAT_IDLE;
        sb_session_close(s, 1000, "left");
    }
    req_free(q);
}

/* LEAVE without dst: the id is given up for good, and the socket closed. */
static void pj_leave(sb_session_t *s)
{
    sb_seat_t *t = s->seat;
    req_t *q = req_new(s, NULL, room_name(t->room));
    if (!q)
        return;
    t->state = SEAT_LEAVING;
    char hash[SB_RESUME_HASH_LEN + 1];
    if (run_remove(s->node, q->room, s->id, "leave", hash_hex(t, hash), on_pj_left, q) != 0) {
        t->state = SEAT_JOINED;
        req_free(q);
    }
}

static void pj_message(sb_session_t *s, const char *buf, size_t len)
{
    sb_node_t *n = s->node;
    sb_pj_t *p = s->pj;
    int64_t now = sb_mono_ms();
    p->last_msg_ms = now;
    if (!p->open) {
        /* Before OPEN (a client may send as soon as its socket is open): kept, in order. */
        if (sb_pj_pending_add(p, buf, len) != 0)
            sb_debug_limited("session %s: message before OPEN dropped", s->id);
        return;
    }
    n->metrics.received[SB_MSG_SIGNAL]++;
    if (!pj_admit(s, now))
        return;
    sb_pj_msg_t m;
    if (sb_pj_decode(buf, len, &m) != 0) {
        sb_session_send(s, SB_PJ_INVALID_MESSAGE, sizeof SB_PJ_INVALID_MESSAGE - 1);
        return;
    }
    /* Not once it is leaving for good (LEAVE without dst): nothing more goes out. */
    int joined = s->seat->room && s->seat->state == SEAT_JOINED;
    if (joined && m.type == SB_PJ_LEAVE && !m.dst[0] && !m.bad_dst)
        pj_leave(s);
    else if (joined && m.type != SB_PJ_OTHER && m.type != SB_PJ_HEARTBEAT && m.dst[0])
        pj_relay(s, &m);
    sb_pj_msg_free(&m);
}

typedef struct {
    sb_node_t *node;
    char src[SB_PJ_ID_MAX + 1], dst[SB_PJ_ID_MAX + 1];
} pj_expiry_t;

static void on_pj_expired(redisReply *reply, const char *error, void *data)
{
    pj_expiry_t *x = data;
    long long removed = error ? 0 : sb_reply_int(reply, 0, 0);
    sb_session_t *s = removed > 0 ? sb_map_get(&x->node->pj_by_id, x->src) : NULL;
    if (s && s->pj && s->pj->open && !s->close_code) {
        size_t len;
        char *frame = sb_pj_frame("EXPIRE", x->dst, x->src, NULL, 0, &len);
        if (frame)
            sb_session_send(s, frame, len);
        free(frame);
    }
    free(x);
}

/* The expire timer at the head when it is due (taken off the list), else NULL. */
static sb_pj_exp_t *pj_exp_due(sb_node_t *n, int64_t now_ms)
{
    sb_pj_exp_t *w = n->pj_exp_head;
    if (!w || w->due_ms > now_ms)
        return NULL;
    n->pj_exp_head = w->next;
    if (!n->pj_exp_head)
        n->pj_exp_tail = NULL;
    return w;
}

static void pj_sweep(sb_node_t *n, int64_t now_ms)
{
    sb_pj_exp_t *w;
    while ((w = pj_exp_due(n, now_ms))) {
        /* pj_expire drops what is left of w->src's messages to w->dst; src hears EXPIRE. */
        pj_expiry_t *x = calloc(1, sizeof *x);
        const char *args[] = {NULL, NULL, n->cfg.prefix, n->cfg.peerjs_room, w->src, w->dst};
        if (x) {
            x->node = n;
            memcpy(x->src, w->src, sizeof x->src);
            memcpy(x->dst, w->dst, sizeof x->dst);
        }
        if (x && room_script(n, n->cfg.peerjs_room, "pj_expire", 2, 6, args, on_pj_expired, x))
            free(x);
        free(w);
    }
    /* The alive timeout (peer's alive_timeout): a PeerJS socket that sent nothing for that
     * long is closed; its id is freed (a deliberate end). One pass a second. */
    if (now_ms - n->pj_alive_check_ms < 1000)
        return;
    n->pj_alive_check_ms = now_ms;
    for (sb_session_t *s = n->sessions; s; s = s->next)
        if (s->pj && !s->closed && !s->close_code &&
            now_ms - s->pj->last_msg_ms > n->cfg.peerjs_alive_timeout_ms) {
            sb_info_limited("session %s: PeerJS socket silent past the alive timeout: closing",
                            s->id);
            sb_session_close(s, 1000, "alive timeout");
        }
}

static void free_value(void *value, void *arg)
{
    (void)arg;
    free(value);
}

void sb_route_pj_free(sb_node_t *n)
{
    sb_map_each(&n->pj_orphans, free_value, NULL);
    while (n->pj_exp_head) {
        sb_pj_exp_t *x = n->pj_exp_head;
        n->pj_exp_head = x->next;
        free(x);
    }
    n->pj_exp_tail = NULL;
}
