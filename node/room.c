/* Rooms: what join, leave, signal and link do, and the node-local view of each room that has
 * local sockets. The view follows Redis through the room's sequenced events (contract section
 * 4, rule 3): events are applied strictly in sequence; a gap or a pub/sub reconnect re-reads the
 * room (a resync) and sends local clients the difference. A joiner's `joined` is sent only once
 * the view has reached its join's sequence number, and a signal is delivered only once its
 * recipient has been told of its sender: that is what orders `signal` after `peer-joined`. */
#include "node.h"
#include "auth.h"
#include "scripts.h"
#include "turn.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HELD_MAX 1024
#define HELD_TTL_MS 5000

/* ---- views ------------------------------------------------------------------------------ */

static sb_room_t *room_get(sb_node_t *n, const char *name)
{
    sb_room_t *r = sb_map_get(&n->rooms, name);
    if (r)
        return r;
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    snprintf(r->name, sizeof r->name, "%s", name);
    r->node = n;
    r->buffered = json_array();
    sb_map_put(&n->rooms, r->name, r);
    return r;
}

static void clear_members(sb_room_t *r)
{
    for (int i = 0; i < r->nmembers; i++)
        free(r->members[i].meta_json);
    r->nmembers = 0;
}

static void held_free(sb_held_t *h)
{
    free(h->data_json);
    free(h);
}

static void room_unref(sb_room_t *r)
{
    if (--r->refs > 0)
        return;
    sb_assert(r->local == NULL);
    sb_map_del(&r->node->rooms, r->name);
    clear_members(r);
    free(r->members);
    json_decref(r->buffered);
    for (sb_held_t *h = r->held; h;) {
        sb_held_t *next = h->next;
        held_free(h);
        h = next;
    }
    free(r);
}

static sb_member_t *member_find(sb_room_t *r, const char *id)
{
    for (int i = 0; i < r->nmembers; i++)
        if (strcmp(r->members[i].id, id) == 0)
            return &r->members[i];
    return NULL;
}

/* Adds or updates; returns 1 when the member is new. meta_json is copied. */
static int member_put(sb_room_t *r, const char *id, const char *node, const char *meta_json)
{
    sb_member_t *m = member_find(r, id);
    int added = 0;
    if (!m) {
        if (r->nmembers == r->cap) {
            int cap = r->cap ? r->cap * 2 : 2; /* pair rooms are common: start small */
            sb_member_t *v = realloc(r->members, sizeof *v * (size_t)cap);
            if (!v)
                return 0;
            r->members = v;
            r->cap = cap;
        }
        m = &r->members[r->nmembers++];
        memset(m, 0, sizeof *m);
        snprintf(m->id, sizeof m->id, "%s", id);
        added = 1;
    }
    snprintf(m->node, sizeof m->node, "%s", node);
    free(m->meta_json);
    m->meta_json = strdup(meta_json ? meta_json : "{}");
    return added;
}

static int member_del(sb_room_t *r, const char *id)
{
    sb_member_t *m = member_find(r, id);
    if (!m)
        return 0;
    free(m->meta_json);
    *m = r->members[--r->nmembers];
    return 1;
}

static void local_add(sb_room_t *r, sb_session_t *s)
{
    s->room_next = r->local;
    r->local = s;
    r->refs++;
}

/* Takes s out of its room's view (no Redis work). */
void sb_room_detach_session(sb_session_t *s)
{
    sb_room_t *r = s->room;
    if (!r)
        return;
    for (sb_session_t **p = &r->local; *p; p = &(*p)->room_next) {
        if (*p == s) {
            *p = s->room_next;
            break;
        }
    }
    s->room_next = NULL;
    s->room = NULL;
    if (s->in_redis) {
        s->in_redis = 0;
        s->node->njoined--;
    }
    s->state = SS_IDLE;
    if (s->join_rid) {
        json_decref(s->join_rid);
        s->join_rid = NULL;
    }
    for (int i = 0; i < s->nhalves; i++)
        free(s->halves[i]);
    s->nhalves = 0;
    room_unref(r);
}

static void halves_del(sb_session_t *s, const char *peer)
{
    for (int i = 0; i < s->nhalves; i++) {
        if (strcmp(s->halves[i], peer) == 0) {
            free(s->halves[i]);
            s->halves[i] = s->halves[--s->nhalves];
            return;
        }
    }
}

static void halves_add(sb_session_t *s, const char *peer)
{
    for (int i = 0; i < s->nhalves; i++)
        if (strcmp(s->halves[i], peer) == 0)
            return;
    char **v = realloc(s->halves, sizeof(char *) * (size_t)(s->nhalves + 1));
    if (!v)
        return;
    s->halves = v;
    s->halves[s->nhalves++] = strdup(peer);
}

static void on_relinked(redisReply *reply, const char *error, void *data)
{
    sb_session_t *s = data;
    const char *status = error ? error : sb_reply_str(reply, 0, NULL);
    sb_debug("session %s: half re-sent: %s", s->id,
             status ? status : (reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "?"));
    sb_session_unref(s);
}

/* A member appeared in the view: local sockets that hold a half towards it send it again.
 * Normally there is none (halves are dropped when a peer leaves); after Redis lost its data
 * the nodes re-assert in any order, and the half of whichever came back first could not be
 * written then (room_assert skips peers that are not members yet). link_set is idempotent. */
static void relink_towards(sb_room_t *r, const char *id)
{
    sb_node_t *n = r->node;
    for (sb_session_t *s = r->local; s; s = s->room_next) {
        if (s->state != SS_JOINED || !s->in_redis)
            continue;
        for (int i = 0; i < s->nhalves; i++) {
            if (strcmp(s->halves[i], id) != 0)
                continue;
            char key[256];
            sb_key_room(key, sizeof key, n->cfg.prefix, r->name, "members");
            const char *args[] = {key, n->cfg.prefix, r->name, s->id, id, "up", n->cfg.id};
            sb_session_ref(s);
            if (sb_script_call(n->redis, sb_script("link_set"), 1, 7, args, NULL, on_relinked, s) !=
                0)
                sb_session_unref(s);
        }
    }
}

/* The socket was reaped (its presence or record is gone while it was connected here). */
static void expire_session(sb_session_t *s)
{
    sb_warn("session %s: reaped while connected: closing 4000", s->id);
    sb_room_detach_session(s);
    sb_session_close(s, 4000, "session expired");
}

/* ---- notifications to local clients --------------------------------------------------- */

static json_t *parse_meta(const char *meta_json)
{
    json_t *m = meta_json ? json_loads(meta_json, 0, NULL) : NULL;
    return m ? m : json_object();
}

static void notify_joined_peer(sb_room_t *r, const sb_member_t *m)
{
    for (sb_session_t *s = r->local; s; s = s->room_next) {
        if (s->state != SS_JOINED || strcmp(s->id, m->id) == 0)
            continue;
        json_t *o = json_pack("{s:s,s:s,s:o}", "type", "peer-joined", "id", m->id, "meta",
                              parse_meta(m->meta_json));
        sb_session_send_json(s, o);
    }
}

static void notify_left_peer(sb_room_t *r, const char *id, const char *reason)
{
    for (sb_session_t *s = r->local; s; s = s->room_next) {
        if (strcmp(s->id, id) == 0)
            continue;
        halves_del(s, id);
        if (s->state != SS_JOINED)
            continue;
        json_t *o = json_pack("{s:s,s:s,s:s}", "type", "peer-left", "id", id, "reason", reason);
        sb_session_send_json(s, o);
    }
}

json_t *sb_room_ice_servers(sb_session_t *s)
{
    sb_node_t *n = s->node;
    return sb_turn_ice_servers(n->turn_secret, n->turn_secret_len, n->cfg.turn_urls.v,
                               n->cfg.turn_urls.n, s->id, sb_now_ms() / 1000, n->cfg.turn_ttl_ms);
}

static void send_joined(sb_session_t *s)
{
    sb_room_t *r = s->room;
    json_t *peers = json_array();
    for (int i = 0; i < r->nmembers; i++) {
        if (strcmp(r->members[i].id, s->id) == 0)
            continue;
        json_array_append_new(peers, json_pack("{s:s,s:o}", "id", r->members[i].id, "meta",
                                               parse_meta(r->members[i].meta_json)));
    }
    json_t *o = sb_proto_reply("joined", s->join_rid);
    json_object_set_new(o, "room", json_string(r->name));
    json_object_set_new(o, "id", json_string(s->id));
    json_object_set_new(o, "peers", peers);
    json_object_set_new(o, "ice_servers", sb_room_ice_servers(s));
    if (s->join_rid) {
        json_decref(s->join_rid);
        s->join_rid = NULL;
    }
    s->state = SS_JOINED;
    sb_info("session %s: joined room %s (%d members)", s->id, r->name, r->nmembers);
    sb_session_send_json(s, o);
}

static void release_held(sb_room_t *r, const char *drop_from);

/* Sends `joined` to every joiner whose join the view has reached, then hands them the signals
 * held for them meanwhile. */
static void complete_joins(sb_room_t *r)
{
    if (!r->synced)
        return;
    int sent = 0;
    for (sb_session_t *s = r->local; s; s = s->room_next)
        if (s->state == SS_JOINING && s->in_redis && s->await_seq <= r->seq) {
            send_joined(s);
            sent = 1;
        }
    if (sent && r->held)
        release_held(r, NULL);
}

/* ---- signals ----------------------------------------------------------------------------- */

/* The local recipient of a signal in room r, or NULL when it is not (any more) here. */
static sb_session_t *recipient(sb_room_t *r, const char *to)
{
    sb_session_t *dst = sb_map_get(&r->node->sess_by_id, to);
    return dst && dst->room == r ? dst : NULL;
}

/* A recipient that has not been sent `joined` yet. A peer may learn of its join (from the
 * pub/sub event, or from this view on the same node) and signal it before the node has the
 * join script's reply: the reply and the events come on two connections, in either order.
 * Its signals wait for its `joined`, which lists the sender, instead of being lost. */
static int joining(const sb_session_t *dst)
{
    return dst && dst->state == SS_JOINING;
}

static void deliver_signal(sb_session_t *dst, const char *from, const char *data, size_t dlen)
{
    if (!dst || dst->state != SS_JOINED)
        return; /* gone meanwhile: a signal is best effort past the sender's view */
    static const char head[] = "{\"type\":\"signal\",\"from\":\"", mid[] = "\",\"data\":";
    const sb_part_t parts[] = {{head, sizeof head - 1},
                               {from, strlen(from)},
                               {mid, sizeof mid - 1},
                               {data, dlen},
                               {"}", 1}};
    sb_session_sendv(dst, parts, 5);
}

static int held_from(sb_room_t *r, const char *from)
{
    for (sb_held_t *h = r->held; h; h = h->next)
        if (strcmp(h->from, from) == 0)
            return 1;
    return 0;
}

/* Delivers now when the recipient's view knows the sender and nothing from that sender is
 * still held (order per sender is kept); holds it otherwise. */
static void deliver_or_hold(sb_room_t *r, const char *from, const char *to, const char *data,
                            size_t dlen)
{
    sb_session_t *dst = recipient(r, to);
    if (r->synced && member_find(r, from) && !held_from(r, from) && !joining(dst)) {
        deliver_signal(dst, from, data, dlen);
        return;
    }
    int count = 0;
    for (sb_held_t *h = r->held; h; h = h->next)
        count++;
    if (count >= HELD_MAX) {
        sb_warn("room %s: too many held signals; dropping one from %s", r->name, from);
        return;
    }
    sb_held_t *h = calloc(1, sizeof *h);
    if (!h)
        return;
    snprintf(h->from, sizeof h->from, "%s", from);
    snprintf(h->to, sizeof h->to, "%s", to);
    h->data_json = malloc(dlen + 1);
    if (!h->data_json) {
        free(h);
        return;
    }
    memcpy(h->data_json, data, dlen);
    h->data_json[dlen] = '\0';
    h->data_len = dlen;
    h->at_ms = sb_mono_ms();
    if (r->held_tail)
        r->held_tail->next = h;
    else
        r->held = h;
    r->held_tail = h;
}

/* Releases held signals whose sender is now known, in arrival order; drops those of departed
 * senders (drop_from) and expired ones. */
static void release_held(sb_room_t *r, const char *drop_from)
{
    sb_held_t **p = &r->held, *last = NULL;
    int64_t now = sb_mono_ms();
    /* Senders blocked in this pass: a later signal of theirs must wait behind an earlier one. */
    char blocked[16][SB_SID_MAX + 1];
    int nblocked = 0;
    while (*p) {
        sb_held_t *h = *p;
        int is_blocked = 0;
        for (int i = 0; i < nblocked; i++)
            if (strcmp(blocked[i], h->from) == 0)
                is_blocked = 1;
        int drop = (drop_from && strcmp(h->from, drop_from) == 0) || now - h->at_ms > HELD_TTL_MS;
        sb_session_t *dst = drop ? NULL : recipient(r, h->to);
        if (drop || (!is_blocked && r->synced && member_find(r, h->from) && !joining(dst))) {
            if (!drop)
                deliver_signal(dst, h->from, h->data_json, h->data_len);
            *p = h->next;
            held_free(h);
            continue;
        }
        if (!is_blocked && nblocked < 16)
            snprintf(blocked[nblocked++], SB_SID_MAX + 1, "%s", h->from);
        last = h;
        p = &h->next;
    }
    r->held_tail = last;
}

/* ---- sequenced events --------------------------------------------------------------------- */

static void resync(sb_room_t *r);

static void apply_event(sb_room_t *r, json_t *ev)
{
    const char *t = json_string_value(json_object_get(ev, "t"));
    const char *id = json_string_value(json_object_get(ev, "id"));
    if (!t || !id)
        return;
    if (strcmp(t, "join") == 0) {
        const char *node = json_string_value(json_object_get(ev, "node"));
        json_t *meta = json_object_get(ev, "meta");
        char *meta_json = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
        int added = member_put(r, id, node ? node : "", meta_json);
        free(meta_json);
        if (added)
            notify_joined_peer(r, member_find(r, id));
        relink_towards(r, id);
        release_held(r, NULL);
    } else if (strcmp(t, "left") == 0) {
        const char *reason = json_string_value(json_object_get(ev, "reason"));
        if (member_del(r, id))
            notify_left_peer(r, id, reason ? reason : "disconnect");
        release_held(r, id);
        sb_session_t *s = sb_map_get(&r->node->sess_by_id, id);
        if (s && s->room == r && s->state == SS_JOINED)
            expire_session(s); /* removed by someone else: the admin reaped it */
    }
}

static json_int_t ev_seq(json_t *ev)
{
    return json_integer_value(json_object_get(ev, "seq"));
}

/* Applies buffered events that are next in sequence; drops stale ones. */
static void drain_buffer(sb_room_t *r)
{
    int progress = 1;
    while (progress) {
        progress = 0;
        size_t i;
        json_t *ev;
        json_array_foreach(r->buffered, i, ev)
        {
            uint64_t q = (uint64_t)ev_seq(ev);
            if (q <= r->seq) {
                json_array_remove(r->buffered, i);
                progress = 1;
                break;
            }
            if (q == r->seq + 1) {
                json_incref(ev);
                json_array_remove(r->buffered, i);
                apply_event(r, ev);
                r->seq = q;
                json_decref(ev);
                progress = 1;
                break;
            }
        }
    }
    r->gap_since_ms =
        json_array_size(r->buffered) ? (r->gap_since_ms ? r->gap_since_ms : sb_mono_ms()) : 0;
}

static void on_room_event(sb_room_t *r, json_t *ev)
{
    uint64_t q = (uint64_t)ev_seq(ev);
    if (!r->synced || r->resyncing) {
        json_array_append(r->buffered, ev);
        return;
    }
    if (q <= r->seq)
        return;
    if (q == r->seq + 1) {
        apply_event(r, ev);
        r->seq = q;
        drain_buffer(r);
        complete_joins(r);
        return;
    }
    /* A gap: pub/sub on one connection is ordered, so a missing number was lost (or the room
     * was recreated). Re-read the room. */
    json_array_append(r->buffered, ev);
    sb_debug("room %s: gap (have %llu, got %llu): resync", r->name, (unsigned long long)r->seq,
             (unsigned long long)q);
    resync(r);
}

static void on_link_event(sb_room_t *r, json_t *ev)
{
    const char *a = json_string_value(json_object_get(ev, "a"));
    const char *b = json_string_value(json_object_get(ev, "b"));
    const char *state = json_string_value(json_object_get(ev, "state"));
    if (!a || !b || !state)
        return;
    const char *ends[2][2] = {{a, b}, {b, a}};
    for (int i = 0; i < 2; i++) {
        sb_session_t *s = sb_map_get(&r->node->sess_by_id, ends[i][0]);
        if (!s || s->room != r || s->state != SS_JOINED)
            continue;
        /* Both halves are gone in Redis, whichever side said down: forget ours too, or a
         * re-assert after a data loss would bring it back. */
        if (strcmp(state, "down") == 0)
            halves_del(s, ends[i][1]);
        json_t *o =
            json_pack("{s:s,s:s,s:s}", "type", "link-state", "peer", ends[i][1], "state", state);
        sb_session_send_json(s, o);
    }
}

void sb_room_on_event(sb_node_t *n, const char *payload, size_t len)
{
    json_t *ev = json_loadb(payload, len, 0, NULL);
    if (!ev)
        return;
    const char *t = json_string_value(json_object_get(ev, "t"));
    const char *room = json_string_value(json_object_get(ev, "room"));
    sb_room_t *r = room ? sb_map_get(&n->rooms, room) : NULL;
    if (!t) {
    } else if (strcmp(t, "probe") == 0) {
        json_int_t nonce = json_integer_value(json_object_get(ev, "nonce"));
        if (n->probe_nonce && (uint64_t)nonce == n->probe_nonce) {
            n->pubsub_ok = 1;
            n->probe_nonce = 0;
        }
    } else if (!r) {
        /* No local socket in that room (any more): nothing to do. */
    } else if (strcmp(t, "signal") == 0) {
        const char *from = json_string_value(json_object_get(ev, "from"));
        const char *to = json_string_value(json_object_get(ev, "to"));
        /* Relayed as the sender wrote it: the payload is ours (sb_room_signal), so its data
         * member is found in the text, not re-encoded. */
        const char *data;
        size_t dlen;
        if (from && to && sb_valid_sid(from) &&
            sb_json_member_span(payload, len, "data", &data, &dlen))
            deliver_or_hold(r, from, to, data, dlen);
    } else if (strcmp(t, "link") == 0) {
        on_link_event(r, ev);
    } else if (strcmp(t, "unlink") == 0) {
        const char *a = json_string_value(json_object_get(ev, "a"));
        const char *b = json_string_value(json_object_get(ev, "b"));
        sb_session_t *s = b ? sb_map_get(&n->sess_by_id, b) : NULL;
        if (a && s && s->room == r)
            halves_del(s, a);
    } else if (strcmp(t, "join") == 0 || strcmp(t, "left") == 0) {
        on_room_event(r, ev);
    }
    json_decref(ev);
}

/* ---- resync -------------------------------------------------------------------------------- */

static void on_resync(redisReply *reply, const char *error, void *data)
{
    sb_room_t *r = data;
    r->resyncing = 0;
    if (error || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
        sb_warn("room %s: resync failed: %s", r->name, error ? error : "bad reply");
        r->resync_due_ms = sb_mono_ms() + 200; /* retried by the sweep */
        room_unref(r);
        return;
    }
    r->node->metrics.resyncs++;
    uint64_t seq = (uint64_t)sb_reply_int(reply, 0, 0);
    /* Right after Redis lost its data the other nodes are still re-asserting their sockets:
     * a member missing now is most likely not back yet. Until the grace ends (and a full
     * resync runs) only additions are applied. */
    int grace = sb_mono_ms() < r->node->loss_grace_until_ms;
    if (!r->node->instance_ok) {
        /* Not yet known whether Redis lost its data (the check runs on every reconnect): an
         * empty room now may just mean that. Apply additions only and read again soon. */
        grace = 1;
    }
    /* Members that are gone: told as peer-left. */
    for (int i = 0; i < r->nmembers && !grace;) {
        int found = 0;
        for (size_t j = 1; j + 1 < reply->elements; j += 2) {
            const char *id = sb_reply_str(reply, j, NULL);
            if (id && strcmp(id, r->members[i].id) == 0)
                found = 1;
        }
        if (found) {
            i++;
            continue;
        }
        char id[SB_SID_MAX + 1];
        snprintf(id, sizeof id, "%s", r->members[i].id);
        member_del(r, id);
        notify_left_peer(r, id, "disconnect");
        release_held(r, id);
    }
    /* Members that are new: told as peer-joined. */
    for (size_t j = 1; j + 1 < reply->elements; j += 2) {
        const char *id = sb_reply_str(reply, j, NULL);
        const char *rec = sb_reply_str(reply, j + 1, NULL);
        if (!id || !rec)
            continue;
        json_t *o = json_loads(rec, 0, NULL);
        const char *node = o ? json_string_value(json_object_get(o, "node")) : NULL;
        char *meta_json = o && json_object_get(o, "meta")
                              ? json_dumps(json_object_get(o, "meta"), JSON_COMPACT)
                              : NULL;
        if (member_put(r, id, node ? node : "", meta_json))
            notify_joined_peer(r, member_find(r, id));
        /* Every member, not only new ones: after a data loss the room comes back with a new
         * sequence (a gap), and this resync is where our halves towards it are re-sent. */
        relink_towards(r, id);
        free(meta_json);
        json_decref(o);
    }
    r->seq = seq;
    r->synced = 1;
    if (!grace)
        r->gap_since_ms = 0;
    /* Local joined sockets missing from Redis were reaped. */
    for (sb_session_t *s = r->local, *next; s && !grace; s = next) {
        next = s->room_next;
        if (s->state == SS_JOINED && !member_find(r, s->id))
            expire_session(s);
    }
    drain_buffer(r);
    /* Read again later when removals were held back; a full read clears it. */
    r->resync_due_ms = grace ? sb_mono_ms() + 200 : 0;
    release_held(r, NULL);
    complete_joins(r);
    room_unref(r);
}

static void resync(sb_room_t *r)
{
    sb_node_t *n = r->node;
    if (r->resyncing)
        return;
    char key[256];
    sb_key_room(key, sizeof key, n->cfg.prefix, r->name, "members");
    const char *args[] = {key, n->cfg.prefix, r->name};
    r->refs++;
    r->resyncing = 1;
    if (sb_script_call(n->redis, sb_script("room_read"), 1, 3, args, NULL, on_resync, r) != 0) {
        r->resyncing = 0;
        r->resync_due_ms = sb_mono_ms() + 200;
        room_unref(r);
    }
}

static void resync_one(void *value, void *arg)
{
    (void)arg;
    sb_room_t *r = value;
    if (r->synced)
        resync(r);
}

void sb_room_resync_all(sb_node_t *n)
{
    sb_map_each(&n->rooms, resync_one, NULL);
}

static void sweep_one(void *value, void *arg)
{
    (void)arg;
    sb_room_t *r = value;
    int64_t now = sb_mono_ms();
    if (r->synced && ((r->gap_since_ms && now - r->gap_since_ms > 200) ||
                      (r->resync_due_ms && now >= r->resync_due_ms)))
        resync(r);
    if (r->held)
        release_held(r, NULL);
}

void sb_room_sweep(sb_node_t *n)
{
    sb_map_each(&n->rooms, sweep_one, NULL);
}

/* ---- client requests --------------------------------------------------------------------- */

/* Redis errors that mean "not now" (it cannot take writes, or is loading, busy, failing over):
 * a retry may succeed, so the client is told `unavailable`. */
static int transient_redis_error(const char *str)
{
    static const char *const prefixes[] = {"OOM",      "LOADING",     "BUSY",
                                           "READONLY", "MASTERDOWN",  "MISCONF",
                                           "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (strncmp(str, prefixes[i], strlen(prefixes[i])) == 0)
            return 1;
    return 0;
}

/* Answers a request whose script call did not succeed with a status of its own: `unavailable`
 * when Redis could not run it now (no connection, a timeout, a transient error), `internal`
 * for anything a retry will not cure (a script error such as a key of the wrong type, or a
 * status this node does not know), logged as an error with the request and the reason. */
static void send_failure(sb_session_t *s, const char *what, redisReply *reply, const char *error,
                         json_t *rid)
{
    if (error || !reply) {
        sb_session_send_error(s, "unavailable", "Redis is unreachable; retry later", rid);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && reply->str && transient_redis_error(reply->str)) {
        sb_warn("session %s: %s refused by Redis: %s", s->id, what, reply->str);
        sb_session_send_error(s, "unavailable", "Redis cannot take this now; retry later", rid);
        return;
    }
    const char *status = sb_reply_str(reply, 0, NULL);
    sb_error("session %s: %s failed: %s", s->id, what,
             reply->type == REDIS_REPLY_ERROR && reply->str ? reply->str
             : status                                       ? status
                                                            : "unexpected reply");
    char msg[96];
    snprintf(msg, sizeof msg, "%s failed on the server", what);
    sb_session_send_error(s, "internal", msg, rid);
}

static int need_redis(sb_session_t *s, json_t *rid)
{
    if (sb_redis_up(s->node->redis))
        return 1;
    sb_session_send_error(s, "unavailable", "Redis is unreachable; retry later", rid);
    return 0;
}

static void run_remove(sb_node_t *n, const char *room, const char *sid, const char *mode,
                       sb_redis_cb cb, void *data)
{
    char key[256], evmax[] = "1000";
    sb_key_room(key, sizeof key, n->cfg.prefix, room, "members");
    const char *args[] = {key, n->cfg.prefix, room, sid, mode, n->cfg.id, evmax};
    if (sb_script_call(n->redis, sb_script("room_remove"), 1, 7, args, NULL, cb, data) != 0) {
        sb_warn("session %s: cannot remove from room %s now (Redis unreachable); its presence "
                "will expire and the admin will reap it",
                sid, room);
        if (cb)
            cb(NULL, "unavailable", data);
    }
}

static void on_disconnect_removed(redisReply *reply, const char *error, void *data)
{
    sb_session_t *s = data;
    if (error)
        sb_warn("session %s: cleanup failed: %s", s->id, error);
    else if (reply && reply->type == REDIS_REPLY_ARRAY)
        sb_debug("session %s: cleanup %s, %lld links removed", s->id,
                 sb_reply_str(reply, 0, NULL) ? sb_reply_str(reply, 0, NULL) : "?",
                 sb_reply_int(reply, 1, 0));
    sb_session_unref(s);
}

static void on_joined(redisReply *reply, const char *error, void *data)
{
    sb_session_t *s = data;
    sb_node_t *n = s->node;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (s->closed) {
        /* Closed while the join was in flight: the join went through, so undo it. */
        if (status && strcmp(status, "ok") == 0) {
            sb_session_ref(s);
            run_remove(n, s->room_name, s->id, "disconnect", on_disconnect_removed, s);
        }
        sb_session_unref(s);
        return;
    }
    sb_room_t *r = s->room;
    json_t *rid = s->join_rid ? json_incref(s->join_rid) : NULL;
    if (!status || strcmp(status, "ok") != 0) {
        /* The script may still run after our timeout: remember to undo it. */
        if (error)
            snprintf(s->maybe_room, sizeof s->maybe_room, "%s", s->room_name);
        sb_room_detach_session(s);
        if (status && strcmp(status, "room-full") == 0)
            sb_session_send_error(s, "room-full", "the room is full", rid);
        else
            send_failure(s, "join", reply, error, rid);
        if (rid)
            json_decref(rid);
        sb_session_unref(s);
        return;
    }
    if (rid)
        json_decref(rid);
    sb_session_charge_accepted(s);
    s->maybe_room[0] = '\0';
    s->in_redis = 1;
    n->njoined++;
    uint64_t seq = (uint64_t)sb_reply_int(reply, 1, 0);
    s->await_seq = seq;
    if (!r->synced) {
        /* The first local socket in this room: the snapshot is the view at `seq`. */
        for (size_t j = 2; j + 1 < reply->elements; j += 2) {
            const char *id = sb_reply_str(reply, j, NULL);
            const char *rec = sb_reply_str(reply, j + 1, NULL);
            json_t *o = rec ? json_loads(rec, 0, NULL) : NULL;
            const char *node = o ? json_string_value(json_object_get(o, "node")) : NULL;
            char *meta_json = o && json_object_get(o, "meta")
                                  ? json_dumps(json_object_get(o, "meta"), JSON_COMPACT)
                                  : NULL;
            if (id)
                member_put(r, id, node ? node : "", meta_json);
            free(meta_json);
            json_decref(o);
        }
        r->seq = seq;
        r->synced = 1;
        drain_buffer(r);
    } else if (r->seq < seq && !r->gap_since_ms) {
        /* Our own join event is on its way on the pub/sub connection; if it does not arrive
         * the sweep resyncs. */
        r->gap_since_ms = sb_mono_ms();
    }
    complete_joins(r);
    sb_session_unref(s);
}

void sb_room_join(sb_session_t *s, sb_msg_t *m)
{
    sb_node_t *n = s->node;
    if (s->state != SS_IDLE) {
        sb_session_send_error(s, "already-joined", "this socket is already in a room", m->rid);
        return;
    }
    json_t *meta = m->meta ? json_deep_copy(m->meta) : json_object();
    if (n->auth_secret) {
        char why[128], *sub = NULL;
        if (!m->token) {
            json_decref(meta);
            sb_session_send_error(s, "unauthorized", "join needs a token", m->rid);
            return;
        }
        if (sb_auth_verify(n->auth_secret, n->auth_secret_len, m->token, m->room,
                           sb_now_ms() / 1000, &sub, why, sizeof why) != 0) {
            json_decref(meta);
            sb_info("session %s: join refused: %s", s->id, why);
            sb_session_send_error(s, "unauthorized", why, m->rid);
            return;
        }
        /* The server's word, so peers can trust it: a client-sent sub is replaced. */
        json_object_del(meta, "sub");
        if (sub)
            json_object_set_new(meta, "sub", json_string(sub));
        free(sub);
    } else {
        json_object_del(meta, "sub"); /* only a verified token may set it */
    }
    if (!need_redis(s, m->rid)) {
        json_decref(meta);
        return;
    }
    if (s->maybe_room[0] && strcmp(s->maybe_room, m->room) != 0) {
        /* A join to another room timed out earlier and may have run: undo it first (the
         * script refuses harmlessly when it had not). The same room is simply retried:
         * room_join answers a repeated join of the same socket as a success. */
        run_remove(n, s->maybe_room, s->id, "disconnect", NULL, NULL);
        s->maybe_room[0] = '\0';
    }
    char *meta_json = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    if (!meta_json || strlen(meta_json) > SB_META_MAX + 64) {
        free(meta_json);
        sb_session_send_error(s, "bad-message", "\"meta\" is too large", m->rid);
        return;
    }
    sb_room_t *r = room_get(n, m->room);
    if (!r) {
        free(meta_json);
        sb_session_send_error(s, "internal", "out of memory", m->rid);
        return;
    }
    free(s->meta_json);
    s->meta_json = meta_json;
    snprintf(s->room_name, sizeof s->room_name, "%s", m->room);
    s->room = r;
    s->state = SS_JOINING;
    s->join_rid = m->rid ? json_incref(m->rid) : NULL;
    local_add(r, s);

    char key[256], ttl[32], max[32];
    sb_key_room(key, sizeof key, n->cfg.prefix, m->room, "members");
    snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    snprintf(max, sizeof max, "%lld", (long long)n->cfg.max_room_members);
    const char *args[] = {key,      n->cfg.prefix, m->room, s->id, n->cfg.id,
                          n->epoch, meta_json,     ttl,     max};
    sb_session_ref(s);
    if (sb_script_call(n->redis, sb_script("room_join"), 1, 9, args, NULL, on_joined, s) != 0) {
        sb_session_unref(s);
        sb_room_detach_session(s);
        sb_session_send_error(s, "unavailable", "Redis is unreachable; retry later", m->rid);
    }
}

typedef struct {
    sb_session_t *s;
    json_t *rid;
    char peer[SB_SID_MAX + 1];
    int up;
} req_t;

static req_t *req_new(sb_session_t *s, json_t *rid)
{
    req_t *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->s = s;
    q->rid = rid ? json_incref(rid) : NULL;
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

static void on_left(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (s->closed) {
        req_free(q);
        return;
    }
    if (status && strcmp(status, "ok") == 0) {
        char room[SB_ROOM_MAX + 1];
        snprintf(room, sizeof room, "%s", s->room_name);
        sb_session_charge_accepted(s);
        sb_room_detach_session(s);
        json_t *o = sb_proto_reply("left", q->rid);
        json_object_set_new(o, "room", json_string(room));
        sb_session_send_json(s, o);
        sb_info("session %s: left room %s", s->id, room);
    } else if (status && strcmp(status, "gone") == 0) {
        expire_session(s);
    } else {
        s->state = SS_JOINED;
        send_failure(s, "leave", reply, error, q->rid);
    }
    req_free(q);
}

void sb_room_leave(sb_session_t *s, json_t *rid)
{
    if (s->state != SS_JOINED) {
        sb_session_send_error(s, "not-joined", "this socket is not in a room", rid);
        return;
    }
    if (!need_redis(s, rid))
        return;
    req_t *q = req_new(s, rid);
    if (!q)
        return;
    s->state = SS_LEAVING;
    run_remove(s->node, s->room_name, s->id, "leave", on_left, q);
}

void sb_room_disconnect(sb_session_t *s)
{
    if (s->maybe_room[0] && !(s->in_redis && strcmp(s->maybe_room, s->room_name) == 0)) {
        run_remove(s->node, s->maybe_room, s->id, "disconnect", NULL, NULL);
        s->maybe_room[0] = '\0';
    }
    if (s->state == SS_JOINED && s->in_redis) {
        sb_session_ref(s);
        run_remove(s->node, s->room_name, s->id, "disconnect", on_disconnect_removed, s);
        sb_room_detach_session(s);
    } else if (s->state == SS_JOINED || s->state == SS_JOINING) {
        /* JOINING: the join reply sees `closed` and undoes the join (on_joined). */
        sb_room_t *r = s->room;
        if (s->state == SS_JOINING && r) {
            /* Keep in_redis accounting right: on_joined has not run. */
            for (sb_session_t **p = &r->local; *p; p = &(*p)->room_next)
                if (*p == s) {
                    *p = s->room_next;
                    break;
                }
            s->room = NULL;
            room_unref(r);
        }
    } else if (s->state == SS_LEAVING) {
        sb_room_detach_session(s);
    }
}

static void on_signal_published(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    if (!q->s->closed) {
        if (error || sb_reply_is_error(reply))
            sb_session_send_error(q->s, "unavailable", "Redis is unreachable; retry later", q->rid);
        else if (q->rid)
            sb_session_send_json(q->s, sb_proto_reply("signal-ack", q->rid));
    }
    req_free(q);
}

static char *signal_event(const char *room, const char *from, const char *to, const char *data,
                          size_t dlen, size_t *len)
{
    size_t cap = strlen(room) + strlen(from) + strlen(to) + dlen + 64;
    char *p = malloc(cap);
    if (!p)
        return NULL;
    int n = snprintf(
        p, cap, "{\"t\":\"signal\",\"room\":\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"data\":", room,
        from, to);
    if (n < 0 || (size_t)n + dlen + 2 > cap) {
        free(p);
        return NULL;
    }
    memcpy(p + n, data, dlen);
    p[n + dlen] = '}';
    p[n + dlen + 1] = '\0';
    *len = (size_t)n + dlen + 1;
    return p;
}

void sb_room_signal(sb_session_t *s, sb_msg_t *m)
{
    sb_node_t *n = s->node;
    if (s->state != SS_JOINED) {
        sb_session_send_error(s, "not-joined", "signal needs a joined room", m->rid);
        return;
    }
    sb_room_t *r = s->room;
    sb_member_t *peer = strcmp(m->to, s->id) == 0 ? NULL : member_find(r, m->to);
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
    if (strcmp(peer->node, n->cfg.id) == 0) {
        /* Same node: no Redis round trip. The recipient already knows us (we are joined, so our
         * join was applied to this view before our `joined` went out). */
        deliver_or_hold(r, s->id, m->to, data, dlen);
        if (m->rid)
            sb_session_send_json(s, sb_proto_reply("signal-ack", m->rid));
        free(encoded);
        return;
    }
    if (!need_redis(s, m->rid)) {
        free(encoded);
        return;
    }
    /* {"t":"signal","room":R,"from":F,"to":T,"data":D}, written directly: the room name and
     * both ids are of characters JSON never escapes ([A-Za-z0-9._-]), and D is valid JSON. */
    size_t len = 0;
    char *payload = signal_event(r->name, s->id, m->to, data, dlen, &len);
    free(encoded);
    if (!payload) {
        sb_session_send_error(s, "internal", "out of memory", m->rid);
        return;
    }
    char channel[160];
    snprintf(channel, sizeof channel, "%s:node:%s", n->cfg.prefix, peer->node);
    req_t *q = req_new(s, m->rid);
    const char *argv[] = {"PUBLISH", channel, payload};
    size_t lens[] = {7, strlen(channel), len};
    if (!q || sb_redis_argv(n->redis, on_signal_published, q, 3, argv, lens) != 0) {
        if (q)
            req_free(q);
        sb_session_send_error(s, "unavailable", "Redis is unreachable; retry later", m->rid);
    }
    free(payload);
}

static void on_link_set(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_session_t *s = q->s;
    const char *status = error ? NULL : sb_reply_str(reply, 0, NULL);
    if (s->closed || s->state != SS_JOINED) {
        req_free(q);
        return;
    }
    if (status && strcmp(status, "ok") == 0) {
        if (q->up)
            halves_add(s, q->peer);
        else
            halves_del(s, q->peer);
        json_t *o = sb_proto_reply("link-ack", q->rid);
        json_object_set_new(o, "peer", json_string(q->peer));
        json_object_set_new(o, "state", json_string(q->up ? "up" : "down"));
        sb_session_send_json(s, o);
    } else if (status && strcmp(status, "peer-not-found") == 0) {
        sb_session_send_error(s, "peer-not-found", "no such peer in the room", q->rid);
    } else if (status && strcmp(status, "gone") == 0) {
        expire_session(s);
    } else {
        send_failure(s, "link", reply, error, q->rid);
    }
    req_free(q);
}

void sb_room_link(sb_session_t *s, sb_msg_t *m)
{
    sb_node_t *n = s->node;
    if (s->state != SS_JOINED) {
        sb_session_send_error(s, "not-joined", "link needs a joined room", m->rid);
        return;
    }
    if (strcmp(m->peer, s->id) == 0) {
        sb_session_send_error(s, "peer-not-found", "a socket cannot link to itself", m->rid);
        return;
    }
    if (!need_redis(s, m->rid))
        return;
    req_t *q = req_new(s, m->rid);
    if (!q)
        return;
    snprintf(q->peer, sizeof q->peer, "%s", m->peer);
    q->up = m->up;
    char key[256];
    sb_key_room(key, sizeof key, n->cfg.prefix, s->room_name, "members");
    const char *args[] = {key,     n->cfg.prefix,         s->room_name, s->id,
                          m->peer, m->up ? "up" : "down", n->cfg.id};
    if (sb_script_call(n->redis, sb_script("link_set"), 1, 7, args, NULL, on_link_set, q) != 0) {
        req_free(q);
        sb_session_send_error(s, "unavailable", "Redis is unreachable; retry later", m->rid);
    }
}

void sb_room_expire_session(sb_session_t *s)
{
    expire_session(s);
}
