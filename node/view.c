/* The room view: members, sequence, early events, held signals, local sockets. Pure; see
 * view.h for the contract. Every mutating entry point starts a new batch and ends with
 * complete_joins, so `joined` goes out after everything the call applied. */
#include "view.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct local {
    uint64_t await_seq;          /* acked: its join's sequence number */
    uint64_t joined_batch;       /* > 0: `joined` was sent in that batch */
    struct local *jprev, *jnext; /* on the view's joining list while joined_batch is 0 */
    int acked;                   /* the join script answered ok */
    char id[];                   /* at its length: one per local socket (issue 14) */
} local_t;

typedef struct held {
    struct held *next;
    char from[SB_SID_MAX + 1];
    char to[SB_SID_MAX + 1];
    int64_t at_ms;
    size_t len;
    char data[]; /* len bytes + NUL */
} held_t;

typedef struct {
    uint64_t seq;
    int join;
    int change;
    char id[SB_SID_MAX + 1];
    char node[SB_NODE_ID_MAX + 1];
    char reason[16];
    char *meta_json; /* owned, may be NULL */
} early_t;

struct sb_view {
    int synced;      /* seq and members are valid */
    int resyncing;   /* a room read is in flight: events are buffered */
    int need_resync; /* something was lost (buffer overflow, no memory): read when possible */
    uint64_t seq;
    uint64_t batch;
    sb_map_t members; /* id -> sb_member_t */
    sb_map_t locals;  /* id -> local_t */
    size_t njoining;  /* locals not yet sent `joined` */
    /* Those locals, in a list: complete_joins walks them, not every local socket (a PeerJS
     * key's room may have thousands here, and a join pending during every event). */
    local_t *joining;
    held_t *held, *held_tail;
    size_t nheld;
    sb_map_t held_from; /* sender id -> (uintptr_t) signals held from it */
    early_t *early;     /* sorted by seq, from early_head to nearly */
    size_t early_head, nearly, early_cap;
    int64_t gap_since_ms;  /* > 0: a gap was seen then */
    int64_t resync_due_ms; /* > 0: read again then (a failed or additions-only resync) */
    char name[];           /* at its length: one view per room (issue 14) */
};

/* ---- actions ----------------------------------------------------------------------------- */

void sb_acts_init(sb_acts_t *a)
{
    memset(a, 0, sizeof *a);
}

void sb_acts_clear(sb_acts_t *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i].text);
    a->n = 0;
    a->oom = 0;
}

void sb_acts_free(sb_acts_t *a)
{
    sb_acts_clear(a);
    free(a->v);
    memset(a, 0, sizeof *a);
}

/* Appends an action; NULL (and acts->oom, and a resync later) when out of memory. */
static sb_act_t *act_push(sb_view_t *v, sb_acts_t *acts, sb_act_kind_t kind)
{
    if (acts->n == acts->cap) {
        size_t cap = acts->cap ? acts->cap * 2 : 8;
        sb_act_t *nv = realloc(acts->v, cap * sizeof *nv);
        if (!nv) {
            acts->oom = 1;
            v->need_resync = 1;
            return NULL;
        }
        acts->v = nv;
        acts->cap = cap;
    }
    sb_act_t *a = &acts->v[acts->n++];
    memset(a, 0, sizeof *a);
    a->kind = kind;
    a->batch = v->batch;
    return a;
}

static void act_ids(sb_act_t *a, const char *to, const char *peer)
{
    if (to)
        snprintf(a->to, sizeof a->to, "%s", to);
    if (peer)
        snprintf(a->peer, sizeof a->peer, "%s", peer);
}

/* ---- members ----------------------------------------------------------------------------- */

/* Adds or updates a member. 1 when new, 0 when updated, -1 when out of memory. */
static int member_put(sb_view_t *v, const char *id, const char *node, const char *meta_json)
{
    node = node ? node : "";
    meta_json = meta_json ? meta_json : "{}";
    sb_member_t *old = sb_map_get(&v->members, id);
    if (old && strcmp(old->node, node) == 0 && strcmp(old->meta_json, meta_json) == 0)
        return 0;
    size_t il = strnlen(id, SB_SID_MAX), nl = strnlen(node, SB_NODE_ID_MAX), ml = strlen(meta_json);
    sb_member_t *m = malloc(sizeof *m + il + 1 + nl + 1 + ml + 1);
    if (!m)
        return -1;
    char *p = m->id;
    memcpy(p, id, il);
    p[il] = '\0';
    p += il + 1;
    memcpy(p, node, nl);
    p[nl] = '\0';
    m->node = p;
    p += nl + 1;
    memcpy(p, meta_json, ml + 1);
    m->meta_json = p;
    m->mark = old ? old->mark : 0;
    m->away = old ? old->away : 0;
    /* Replacing the value of a key already there allocates nothing and cannot fail. */
    if (sb_map_put(&v->members, m->id, m) != 0) {
        free(m);
        return -1;
    }
    int added = !old;
    free(old);
    return added;
}

static void free_value(void *value, void *arg)
{
    (void)arg;
    free(value);
}

static int member_del(sb_view_t *v, const char *id)
{
    sb_member_t *m = sb_map_del(&v->members, id);
    if (!m)
        return 0;
    free(m);
    return 1;
}

static void clear_members(sb_view_t *v)
{
    sb_map_each(&v->members, free_value, NULL);
    sb_map_free(&v->members);
    sb_map_init(&v->members);
}

const sb_member_t *sb_view_member(const sb_view_t *v, const char *id)
{
    return sb_map_get(&v->members, id);
}

size_t sb_view_nmembers(const sb_view_t *v)
{
    return v->members.count;
}

typedef struct {
    void (*fn)(const sb_member_t *m, void *arg);
    void *arg;
} each_member_t;

static void each_member_one(void *value, void *arg)
{
    each_member_t *e = arg;
    e->fn(value, e->arg);
}

void sb_view_each_member(const sb_view_t *v, void (*fn)(const sb_member_t *m, void *arg), void *arg)
{
    each_member_t e = {fn, arg};
    sb_map_each(&v->members, each_member_one, &e);
}

/* ---- the view ------------------------------------------------------------------------------ */

sb_view_t *sb_view_new(const char *name)
{
    size_t len = strnlen(name, SB_ROOM_MAX);
    sb_view_t *v = calloc(1, sizeof *v + len + 1);
    if (!v)
        return NULL;
    memcpy(v->name, name, len);
    sb_map_init(&v->members);
    sb_map_init(&v->locals);
    sb_map_init(&v->held_from);
    return v;
}

static void early_clear(sb_view_t *v)
{
    for (size_t i = v->early_head; i < v->nearly; i++)
        free(v->early[i].meta_json);
    v->early_head = v->nearly = 0;
}

void sb_view_free(sb_view_t *v)
{
    if (!v)
        return;
    clear_members(v);
    sb_map_free(&v->members);
    sb_map_each(&v->locals, free_value, NULL);
    sb_map_free(&v->locals);
    for (held_t *h = v->held; h;) {
        held_t *next = h->next;
        free(h);
        h = next;
    }
    sb_map_free(&v->held_from);
    early_clear(v);
    free(v->early);
    free(v);
}

const char *sb_view_name(const sb_view_t *v)
{
    return v->name;
}

int sb_view_synced(const sb_view_t *v)
{
    return v->synced;
}

uint64_t sb_view_seq(const sb_view_t *v)
{
    return v->seq;
}

/* ---- local sockets ----------------------------------------------------------------------- */

int sb_view_local_add(sb_view_t *v, const char *id)
{
    if (sb_map_get(&v->locals, id))
        return -1;
    size_t len = strnlen(id, SB_SID_MAX);
    local_t *l = calloc(1, sizeof *l + len + 1);
    if (!l)
        return -1;
    memcpy(l->id, id, len);
    if (sb_map_put(&v->locals, l->id, l) != 0) {
        free(l);
        return -1;
    }
    l->jnext = v->joining;
    if (v->joining)
        v->joining->jprev = l;
    v->joining = l;
    v->njoining++;
    return 0;
}

/* l was sent `joined` (or goes): off the joining list. */
static void joining_unlink(sb_view_t *v, local_t *l)
{
    if (l->jprev)
        l->jprev->jnext = l->jnext;
    else
        v->joining = l->jnext;
    if (l->jnext)
        l->jnext->jprev = l->jprev;
    l->jprev = l->jnext = NULL;
    v->njoining--;
}

int sb_view_local_remove(sb_view_t *v, const char *id)
{
    local_t *l = sb_map_del(&v->locals, id);
    if (!l)
        return -1;
    if (!l->joined_batch)
        joining_unlink(v, l);
    free(l);
    return 0;
}

int sb_view_local_state(const sb_view_t *v, const char *id)
{
    const local_t *l = sb_map_get(&v->locals, id);
    return !l ? -1 : l->joined_batch ? 1 : 0;
}

size_t sb_view_nlocal(const sb_view_t *v)
{
    return v->locals.count;
}

typedef struct {
    void (*fn)(const char *id, uint64_t joined_batch, void *arg);
    void *arg;
} each_local_t;

static void each_local_one(void *value, void *arg)
{
    each_local_t *e = arg;
    const local_t *l = value;
    e->fn(l->id, l->joined_batch, e->arg);
}

void sb_view_each_local(const sb_view_t *v,
                        void (*fn)(const char *id, uint64_t joined_batch, void *arg), void *arg)
{
    each_local_t e = {fn, arg};
    sb_map_each(&v->locals, each_local_one, &e);
}

/* ---- held signals ------------------------------------------------------------------------ */

static size_t held_count_from(const sb_view_t *v, const char *from)
{
    return (size_t)(uintptr_t)sb_map_get(&v->held_from, from);
}

/* Adjusts the count of signals held from `from` by delta (+1 / -1). -1 when out of memory. */
static int held_count_add(sb_view_t *v, const char *from, int delta)
{
    size_t c = held_count_from(v, from) + (size_t)(ptrdiff_t)delta;
    if (c == 0) {
        sb_map_del(&v->held_from, from);
        return 0;
    }
    return sb_map_put(&v->held_from, from, (void *)(uintptr_t)c);
}

size_t sb_view_nheld(const sb_view_t *v)
{
    return v->nheld;
}

/* 1 when a signal from `from` to local `to` may be delivered now (order per sender aside). */
static int may_deliver(const sb_view_t *v, const char *from, const local_t *to)
{
    return v->synced && to && to->joined_batch && sb_map_get(&v->members, from);
}

static sb_view_signal_t hold(sb_view_t *v, const char *from, const char *to, const char *data,
                             size_t len, int64_t now_ms)
{
    if (v->nheld >= SB_VIEW_HELD_MAX)
        return SB_VIEW_DROPPED;
    held_t *h = malloc(sizeof *h + len + 1);
    if (!h)
        return SB_VIEW_DROPPED;
    memset(h, 0, sizeof *h);
    snprintf(h->from, sizeof h->from, "%s", from);
    snprintf(h->to, sizeof h->to, "%s", to);
    h->at_ms = now_ms;
    h->len = len;
    memcpy(h->data, data, len);
    h->data[len] = '\0';
    if (held_count_add(v, h->from, 1) != 0) {
        free(h);
        return SB_VIEW_DROPPED;
    }
    if (v->held_tail)
        v->held_tail->next = h;
    else
        v->held = h;
    v->held_tail = h;
    v->nheld++;
    return SB_VIEW_HELD;
}

/* Releases held signals that may go now, in arrival order, keeping each sender's order: once a
 * signal of a sender stays, every later one of that sender stays too. Drops those from
 * drop_from (it left) and those older than SB_VIEW_HELD_TTL_MS, and those whose recipient is no
 * longer here. One pass; the senders blocked in it are kept in a map. */
static void release_held(sb_view_t *v, const char *drop_from, int64_t now_ms, sb_acts_t *acts)
{
    if (!v->held)
        return;
    sb_map_t blocked;
    sb_map_init(&blocked);
    held_t **p = &v->held, *last = NULL;
    while (*p) {
        held_t *h = *p;
        const local_t *to = sb_map_get(&v->locals, h->to);
        int drop = (drop_from && strcmp(h->from, drop_from) == 0) ||
                   now_ms - h->at_ms > SB_VIEW_HELD_TTL_MS || !to;
        int go = !drop && !sb_map_get(&blocked, h->from) && may_deliver(v, h->from, to);
        if (go) {
            sb_act_t *a = act_push(v, acts, SB_ACT_DELIVER);
            if (!a)
                break; /* keep the rest; the sweep tries again */
            act_ids(a, h->to, h->from);
            a->text = malloc(h->len + 1);
            if (!a->text) {
                acts->n--;
                break;
            }
            memcpy(a->text, h->data, h->len + 1);
            a->len = h->len;
        }
        if (drop || go) {
            *p = h->next;
            held_count_add(v, h->from, -1);
            v->nheld--;
            free(h);
            continue;
        }
        if (sb_map_put(&blocked, h->from, h) != 0) {
            last = NULL; /* recomputed below */
            break;       /* cannot keep order without it: stop here, the sweep tries again */
        }
        last = h;
        p = &h->next;
    }
    if (!*p) {
        v->held_tail = last;
    } else {
        held_t *t = *p;
        while (t->next)
            t = t->next;
        v->held_tail = t;
    }
    sb_map_free(&blocked);
}

sb_view_signal_t sb_view_signal(sb_view_t *v, const char *from, const char *to, const char *data,
                                size_t len, int64_t now_ms, sb_acts_t *acts)
{
    (void)acts;
    v->batch++;
    const local_t *l = sb_map_get(&v->locals, to);
    if (!l)
        return SB_VIEW_DROPPED; /* gone meanwhile: a signal is best effort past the sender's view */
    if (may_deliver(v, from, l) && held_count_from(v, from) == 0)
        return SB_VIEW_DELIVER;
    return hold(v, from, to, data, len, now_ms);
}

/* ---- joins --------------------------------------------------------------------------------- */

typedef struct {
    sb_view_t *v;
    sb_acts_t *acts;
    int sent;
} complete_t;

static void complete_one(local_t *l, complete_t *c)
{
    if (l->joined_batch || !l->acked || l->await_seq > c->v->seq)
        return;
    sb_act_t *a = act_push(c->v, c->acts, SB_ACT_JOINED);
    if (!a)
        return; /* stays joining; the next batch tries again */
    act_ids(a, l->id, NULL);
    l->joined_batch = c->v->batch;
    joining_unlink(c->v, l);
    c->sent = 1;
}

/* Sends `joined` to every local socket whose join the view has reached, then releases the
 * signals held for them meanwhile. */
static void complete_joins(sb_view_t *v, int64_t now_ms, sb_acts_t *acts)
{
    if (!v->synced || v->njoining == 0)
        return;
    complete_t c = {v, acts, 0};
    /* Oldest first (the list is newest first): as they joined. */
    local_t *l = v->joining;
    while (l && l->jnext)
        l = l->jnext;
    while (l) {
        local_t *prev = l->jprev;
        complete_one(l, &c);
        l = prev;
    }
    if (c.sent)
        release_held(v, NULL, now_ms, acts);
}

/* ---- events -------------------------------------------------------------------------------- */

/* PEER_AWAY / PEER_BACK for member id (node: BACK's new holder). */
static void act_away(sb_view_t *v, sb_acts_t *acts, const char *id, int away, const char *node)
{
    sb_act_t *a = act_push(v, acts, away ? SB_ACT_PEER_AWAY : SB_ACT_PEER_BACK);
    if (!a)
        return;
    act_ids(a, NULL, id);
    if (!away) {
        a->text = strdup(node ? node : "");
        a->len = a->text ? strlen(a->text) : 0;
        if (!a->text) {
            acts->n--;
            acts->oom = 1;
            v->need_resync = 1;
        }
    }
}

/* An away or back event: the member stays; its flag (and, back, its node) changes. */
static void apply_away(sb_view_t *v, const sb_view_event_t *ev, int64_t now_ms, sb_acts_t *acts)
{
    sb_member_t *m = sb_map_get(&v->members, ev->id);
    if (ev->change == SB_VIEW_BACK) {
        int added = member_put(v, ev->id, ev->node, ev->meta_json);
        if (added < 0) {
            v->need_resync = 1;
            return;
        }
        m = sb_map_get(&v->members, ev->id);
        m->away = 0;
        act_away(v, acts, ev->id, 0, ev->node);
        release_held(v, NULL, now_ms, acts);
        return;
    }
    if (m && !m->away) {
        m->away = 1;
        act_away(v, acts, ev->id, 1, NULL);
    }
}

static void apply(sb_view_t *v, const sb_view_event_t *ev, int64_t now_ms, sb_acts_t *acts)
{
    if (ev->change) {
        apply_away(v, ev, now_ms, acts);
        return;
    }
    if (ev->join) {
        int added = member_put(v, ev->id, ev->node, ev->meta_json);
        if (added < 0) {
            v->need_resync = 1;
            return;
        }
        if (added) {
            const sb_member_t *m = sb_map_get(&v->members, ev->id);
            sb_act_t *a = act_push(v, acts, SB_ACT_PEER_JOINED);
            if (a) {
                act_ids(a, NULL, ev->id);
                a->text = strdup(m->meta_json);
                a->len = a->text ? strlen(a->text) : 0;
                if (!a->text) {
                    acts->n--;
                    acts->oom = 1;
                    v->need_resync = 1;
                }
            }
        }
        sb_act_t *r = act_push(v, acts, SB_ACT_RELINK);
        if (r)
            act_ids(r, NULL, ev->id);
        release_held(v, NULL, now_ms, acts);
        return;
    }
    const char *reason = ev->reason && strcmp(ev->reason, "leave") == 0     ? "leave"
                         : ev->reason && strcmp(ev->reason, "expired") == 0 ? "expired"
                                                                            : "disconnect";
    if (member_del(v, ev->id)) {
        sb_act_t *a = act_push(v, acts, SB_ACT_PEER_LEFT);
        if (a) {
            act_ids(a, NULL, ev->id);
            a->reason = reason;
        }
    }
    release_held(v, ev->id, now_ms, acts);
    local_t *l = sb_map_get(&v->locals, ev->id);
    /* Removed by someone else while joined here (the admin reaped it), or while its join was
     * answered with an earlier sequence number: it is not in the room any more. */
    if (l && (l->joined_batch || (l->acked && l->await_seq < ev->seq))) {
        sb_view_local_remove(v, ev->id);
        sb_act_t *a = act_push(v, acts, SB_ACT_EXPIRED);
        if (a)
            act_ids(a, ev->id, NULL);
    }
}

static void early_free_at(sb_view_t *v, size_t i)
{
    free(v->early[i].meta_json);
    v->early[i].meta_json = NULL;
}

/* Keeps an event that came early, in sequence order. 0, or -1 when it could not be kept (the
 * buffer is full or no memory): the buffer is then dropped and a resync needed. */
static int early_put(sb_view_t *v, const sb_view_event_t *ev)
{
    if (v->nearly - v->early_head >= SB_VIEW_BUFFER_MAX)
        goto lost;
    if (v->early_head > 0 && v->nearly == v->early_cap) {
        memmove(v->early, v->early + v->early_head, (v->nearly - v->early_head) * sizeof *v->early);
        v->nearly -= v->early_head;
        v->early_head = 0;
    }
    if (v->nearly == v->early_cap) {
        size_t cap = v->early_cap ? v->early_cap * 2 : 4;
        early_t *nv = realloc(v->early, cap * sizeof *nv);
        if (!nv)
            goto lost;
        v->early = nv;
        v->early_cap = cap;
    }
    /* Events mostly come in order: find the place from the end. */
    size_t i = v->nearly;
    while (i > v->early_head && v->early[i - 1].seq > ev->seq)
        i--;
    if (i > v->early_head && v->early[i - 1].seq == ev->seq)
        return 0; /* the same event twice */
    early_t e;
    memset(&e, 0, sizeof e);
    e.seq = ev->seq;
    e.join = ev->join;
    e.change = ev->change;
    snprintf(e.id, sizeof e.id, "%s", ev->id);
    snprintf(e.node, sizeof e.node, "%s", ev->node ? ev->node : "");
    snprintf(e.reason, sizeof e.reason, "%s", ev->reason ? ev->reason : "");
    if ((ev->join || ev->change == SB_VIEW_BACK) && ev->meta_json &&
        !(e.meta_json = strdup(ev->meta_json)))
        goto lost;
    memmove(v->early + i + 1, v->early + i, (v->nearly - i) * sizeof *v->early);
    v->early[i] = e;
    v->nearly++;
    return 0;
lost:
    early_clear(v);
    v->need_resync = 1;
    return -1;
}

/* Applies early events that are next in sequence, up to seq `upto`; drops stale ones. */
static void drain_upto(sb_view_t *v, uint64_t upto, int64_t now_ms, sb_acts_t *acts)
{
    while (v->early_head < v->nearly && v->early[v->early_head].seq <= v->seq + 1 &&
           v->early[v->early_head].seq <= upto) {
        early_t *e = &v->early[v->early_head];
        if (e->seq == v->seq + 1) {
            sb_view_event_t ev = {e->join,      e->seq,    e->id,    e->node,
                                  e->meta_json, e->reason, e->change};
            apply(v, &ev, now_ms, acts);
            v->seq = e->seq;
        }
        early_free_at(v, v->early_head);
        v->early_head++;
    }
    if (v->early_head == v->nearly) {
        /* Emptied: give the array back. Nearly every room gets an early event or two while its
         * first join completes, and an idle room kept the array for good (70 B per idle
         * joined socket, issue 14). */
        free(v->early);
        v->early = NULL;
        v->early_head = v->nearly = v->early_cap = 0;
    }
    v->gap_since_ms = v->nearly ? (v->gap_since_ms ? v->gap_since_ms : now_ms) : 0;
}

static void drain_early(sb_view_t *v, int64_t now_ms, sb_acts_t *acts)
{
    drain_upto(v, UINT64_MAX, now_ms, acts);
}

static void start_resync(sb_view_t *v, sb_acts_t *acts)
{
    if (!v->synced || v->resyncing)
        return;
    sb_act_t *a = act_push(v, acts, SB_ACT_RESYNC);
    if (!a)
        return; /* need_resync is set: the sweep asks again */
    v->resyncing = 1;
    v->need_resync = 0;
}

void sb_view_event(sb_view_t *v, const sb_view_event_t *ev, int64_t now_ms, sb_acts_t *acts)
{
    v->batch++;
    if (!v->synced || v->resyncing) {
        early_put(v, ev);
    } else if (ev->seq <= v->seq) {
        /* already applied (or a read covered it) */
    } else if (ev->seq == v->seq + 1) {
        apply(v, ev, now_ms, acts);
        v->seq = ev->seq;
        drain_early(v, now_ms, acts);
    } else {
        /* A gap: events of a room come on one ordered connection, so a missing number was
         * lost (or the room was recreated with a new sequence). Read the room. */
        early_put(v, ev);
        if (!v->gap_since_ms)
            v->gap_since_ms = now_ms;
        start_resync(v, acts);
    }
    complete_joins(v, now_ms, acts);
}

int sb_view_local_joined(sb_view_t *v, const char *id, uint64_t seq,
                         const sb_view_member_in_t *snapshot, size_t n, int64_t now_ms,
                         sb_acts_t *acts)
{
    local_t *l = sb_map_get(&v->locals, id);
    if (!l)
        return -1;
    v->batch++;
    l->acked = 1;
    l->await_seq = seq;
    if (!v->synced) {
        /* The first local socket in this room: the snapshot is the room at seq. */
        clear_members(v);
        for (size_t i = 0; i < n; i++) {
            if (!snapshot[i].id)
                continue;
            if (member_put(v, snapshot[i].id, snapshot[i].node, snapshot[i].meta_json) < 0) {
                v->need_resync = 1;
                continue;
            }
            ((sb_member_t *)sb_map_get(&v->members, snapshot[i].id))->away = snapshot[i].away;
        }
        v->seq = seq;
        v->synced = 1;
        drain_early(v, now_ms, acts);
        if (v->need_resync)
            start_resync(v, acts);
    } else if (v->seq < seq && !v->gap_since_ms) {
        /* Its join event is on its way on the pub/sub connection; if it does not come, the
         * sweep reads the room. */
        v->gap_since_ms = now_ms;
    }
    complete_joins(v, now_ms, acts);
    return 0;
}

/* ---- resync -------------------------------------------------------------------------------- */

int sb_view_resync_start(sb_view_t *v)
{
    if (v->resyncing)
        return -1;
    v->resyncing = 1;
    v->need_resync = 0;
    return 0;
}

int sb_view_resyncing(const sb_view_t *v)
{
    return v->resyncing;
}

void sb_view_resync_request(sb_view_t *v, sb_acts_t *acts)
{
    v->batch++;
    start_resync(v, acts);
}

static void unmark(void *value, void *arg)
{
    (void)arg;
    ((sb_member_t *)value)->mark = 0;
}

typedef struct {
    char (*ids)[SB_SID_MAX + 1];
    size_t n;
} gone_t;

static void collect_unmarked(void *value, void *arg)
{
    gone_t *g = arg;
    sb_member_t *m = value;
    if (!m->mark)
        snprintf(g->ids[g->n++], sizeof g->ids[0], "%s", m->id);
}

typedef struct {
    sb_view_t *v;
    char (*ids)[SB_SID_MAX + 1];
    size_t n;
} reaped_t;

static void collect_reaped(void *value, void *arg)
{
    reaped_t *r = arg;
    local_t *l = value;
    if (l->joined_batch && !sb_map_get(&r->v->members, l->id))
        snprintf(r->ids[r->n++], sizeof r->ids[0], "%s", l->id);
}

void sb_view_resync_done(sb_view_t *v, int ok, uint64_t seq, const sb_view_member_in_t *members,
                         size_t n, int grace, int64_t now_ms, sb_acts_t *acts)
{
    v->batch++;
    v->resyncing = 0;
    if (!ok) {
        v->resync_due_ms = now_ms + SB_VIEW_RETRY_MS;
        return;
    }
    /* Events that came during the read and continue our sequence are the room's exact history
     * up to the read: applied first, so a member that joined and left meanwhile is told both
     * (the difference alone would hide it; issue 12, events replayed after a slot moved). */
    if (v->synced)
        drain_upto(v, seq, now_ms, acts);
    /* Members that are gone (one pass: mark what the read lists, drop the rest), told as
     * peer-left. Skipped during the grace after a data loss. */
    if (!grace) {
        sb_map_each(&v->members, unmark, NULL);
        for (size_t i = 0; i < n; i++) {
            sb_member_t *m = members[i].id ? sb_map_get(&v->members, members[i].id) : NULL;
            if (m)
                m->mark = 1;
        }
        size_t count = v->members.count;
        gone_t g = {count ? calloc(count, sizeof *g.ids) : NULL, 0};
        if (count && !g.ids) {
            v->need_resync = 1;
        } else {
            sb_map_each(&v->members, collect_unmarked, &g);
            for (size_t i = 0; i < g.n; i++) {
                member_del(v, g.ids[i]);
                sb_act_t *a = act_push(v, acts, SB_ACT_PEER_LEFT);
                if (a) {
                    act_ids(a, NULL, g.ids[i]);
                    a->reason = "disconnect";
                }
                release_held(v, g.ids[i], now_ms, acts);
            }
        }
        free(g.ids);
    }
    /* Members that are new, told as peer-joined; then one RELINK for the whole room (after a
     * data loss the room comes back with a new sequence, and this is where halves towards its
     * members are sent again). Why one and not one per member: the caller walks its local
     * sockets' halves once (locals x halves), where a RELINK per member walked every local
     * socket per member (members x locals: 1,000,000 steps for a 1,000-member room). */
    for (size_t i = 0; i < n; i++) {
        if (!members[i].id)
            continue;
        int added = member_put(v, members[i].id, members[i].node, members[i].meta_json);
        if (added < 0) {
            v->need_resync = 1;
            continue;
        }
        sb_member_t *mm = sb_map_get(&v->members, members[i].id);
        int was_away = added ? 0 : mm->away;
        mm->away = members[i].away;
        if (added) {
            sb_act_t *a = act_push(v, acts, SB_ACT_PEER_JOINED);
            if (a) {
                act_ids(a, NULL, members[i].id);
                a->text = strdup(members[i].meta_json ? members[i].meta_json : "{}");
                a->len = a->text ? strlen(a->text) : 0;
                if (!a->text)
                    acts->n--;
            }
        }
        /* Away state as read: told when it differs from what local sockets were told. */
        if (mm->away != was_away)
            act_away(v, acts, members[i].id, mm->away, mm->node);
    }
    if (n)
        act_push(v, acts, SB_ACT_RELINK); /* peer "": every member */
    v->seq = seq;
    v->synced = 1;
    if (!grace) {
        v->gap_since_ms = 0;
        /* Local joined sockets missing from the read were reaped. */
        size_t count = v->locals.count;
        reaped_t r = {v, count ? calloc(count, sizeof *r.ids) : NULL, 0};
        if (r.ids) {
            sb_map_each(&v->locals, collect_reaped, &r);
            for (size_t i = 0; i < r.n; i++) {
                sb_view_local_remove(v, r.ids[i]);
                sb_act_t *a = act_push(v, acts, SB_ACT_EXPIRED);
                if (a)
                    act_ids(a, r.ids[i], NULL);
            }
        }
        free(r.ids);
    }
    drain_early(v, now_ms, acts);
    /* Read again later when removals were held back; a full read clears it. */
    v->resync_due_ms = grace ? now_ms + SB_VIEW_RETRY_MS : 0;
    release_held(v, NULL, now_ms, acts);
    complete_joins(v, now_ms, acts);
}

/* ---- sweep --------------------------------------------------------------------------------- */

int sb_view_wants_sweep(const sb_view_t *v)
{
    return v->gap_since_ms || v->resync_due_ms || v->need_resync || v->nheld ||
           (v->synced && v->njoining);
}

void sb_view_sweep(sb_view_t *v, int64_t now_ms, sb_acts_t *acts)
{
    v->batch++;
    if (v->synced && !v->resyncing &&
        ((v->gap_since_ms && now_ms - v->gap_since_ms > SB_VIEW_GAP_MS) ||
         (v->resync_due_ms && now_ms >= v->resync_due_ms) || v->need_resync))
        start_resync(v, acts);
    release_held(v, NULL, now_ms, acts);
    complete_joins(v, now_ms, acts);
}
