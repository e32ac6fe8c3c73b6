/* The node-local view of one room: its members, the room's sequence number, events that came
 * early, signals held until their recipient may see them, and which of its members are sockets
 * of this node. Pure: no lws, no hiredis, no JSON parsing, no clock (callers pass now_ms).
 *
 * The view follows Redis through the room's sequenced events (lua/README.md): events apply
 * strictly in sequence; one that comes early waits in a bounded buffer, and a gap that does not
 * fill within SB_VIEW_GAP_MS (or a buffer that overflows) asks for a resync, a full read of the
 * room whose reply replaces the view and tells local sockets the difference. A local socket's
 * `joined` goes out only once the view has reached its join's sequence number, and a signal is
 * delivered only once its recipient has been told of its sender (docs/protocol.md, ordering).
 *
 * Every call that changes the view appends what the caller must do to an action list and never
 * calls back: the caller runs the actions after the call returns, so nothing the actions do
 * (closing a socket, freeing the view) can happen while the view is half-updated. */
#ifndef SB_VIEW_H
#define SB_VIEW_H

#include "keys.h"
#include "map.h"

#include <stddef.h>
#include <stdint.h>

#define SB_NODE_ID_MAX 64
#define SB_VIEW_HELD_MAX 1024    /* held signals per room; past it the oldest is dropped */
#define SB_VIEW_HELD_TTL_MS 5000 /* a held signal older than this is dropped */
#define SB_VIEW_BUFFER_MAX 1024  /* early events per room; past it the buffer is dropped: resync */
#define SB_VIEW_GAP_MS 200       /* a gap not filled within this asks for a resync */
#define SB_VIEW_RETRY_MS 200     /* a failed or additions-only resync is retried after this */

/* One allocation: the record, then its id, node and meta at their exact lengths (a room view
 * holds one per member, and fixed 65-byte arrays and a separate meta made it 192 B of heap
 * where about 80 do; issue 14). An update that changes node or meta replaces the record, so a
 * pointer to one is good until the view is next changed. */
typedef struct {
    const char *node;      /* in the record, after id */
    const char *meta_json; /* compact JSON object text, in the record, after node */
    int mark;              /* scratch for resyncs */
    int away; /* its socket is lost and may resume (signals to it are queued in Redis) */
    char id[];
} sb_member_t;

typedef enum {
    SB_ACT_PEER_JOINED, /* tell every joined local socket but `peer` that `peer` joined (text:
                         * its meta). Only sockets joined before this call's batch (`batch`)
                         * are told: a later one has it in its `joined` list. */
    SB_ACT_PEER_LEFT,   /* tell every local socket but `peer` that `peer` left (`reason`): the
                         * joined ones get `peer-left`, all of them forget their half towards it */
    SB_ACT_JOINED,      /* send local `to` its `joined`; the member list is the view's as it is
                         * when the actions run */
    SB_ACT_DELIVER,     /* deliver to local `to` the signal from `peer` (text/len: its data) */
    SB_ACT_EXPIRED,     /* local `to` was removed from the room by someone else (reaped): the
                         * view has dropped it; close it with 4000 */
    SB_ACT_RELINK,      /* member `peer` is (again) in the room: local sockets holding a half
                         * towards it send the half again (after a data loss); `peer` "" (after
                         * a read of the room): the same for every member */
    SB_ACT_RESYNC,      /* read the room (room_read); sb_view_resync_start was already done */
    SB_ACT_PEER_AWAY,   /* tell every joined local socket but `peer` that `peer` is away */
    SB_ACT_PEER_BACK,   /* tell every joined local socket but `peer` that `peer` is back; text:
                         * the node that now holds it (a local `peer` joined here before is a
                         * stale copy when that is another node: drop it without cleanup) */
} sb_act_kind_t;

typedef struct {
    sb_act_kind_t kind;
    const char *reason; /* PEER_LEFT: static string */
    uint64_t batch;     /* PEER_JOINED: sockets joined in this batch or later are not told */
    char to[SB_SID_MAX + 1];
    char peer[SB_SID_MAX + 1];
    char *text; /* owned: PEER_JOINED meta, DELIVER data (NUL-terminated, len bytes) */
    size_t len;
} sb_act_t;

typedef struct {
    sb_act_t *v;
    size_t n, cap;
    int oom; /* an action could not be recorded: the view asked for a resync instead */
} sb_acts_t;

void sb_acts_init(sb_acts_t *a);
/* Frees the actions' texts and empties the list (keeps the array for reuse). */
void sb_acts_clear(sb_acts_t *a);
void sb_acts_free(sb_acts_t *a);

/* Session resume events (sb_view_event_t.change). */
#define SB_VIEW_AWAY 1 /* "away": the member's socket is lost; it stays a member */
#define SB_VIEW_BACK 2 /* "back": the member resumed on node `node` (meta_json: its meta) */

/* A join, left, away or back event of the room, parsed by the caller. Strings are borrowed. */
typedef struct {
    int join; /* 1 join, 0 left (when change is 0) */
    uint64_t seq;
    const char *id;
    const char *node;      /* join */
    const char *meta_json; /* join: compact JSON object text, or NULL for {} */
    const char *reason;    /* left: "leave", "disconnect", "expired" */
    int change;            /* 0, SB_VIEW_AWAY or SB_VIEW_BACK */
} sb_view_event_t;

/* A member as a room read or a join reply lists it (borrowed strings). */
typedef struct {
    const char *id;
    const char *node;
    const char *meta_json;
    int away; /* the read lists it as away */
} sb_view_member_in_t;

typedef struct sb_view sb_view_t;

/* A new, empty, unsynced view of room name; NULL when out of memory. */
sb_view_t *sb_view_new(const char *name);
void sb_view_free(sb_view_t *v);
const char *sb_view_name(const sb_view_t *v);
int sb_view_synced(const sb_view_t *v);
uint64_t sb_view_seq(const sb_view_t *v);

/* Members. sb_view_member: NULL when id is not a member as far as the view knows. */
const sb_member_t *sb_view_member(const sb_view_t *v, const char *id);
size_t sb_view_nmembers(const sb_view_t *v);
void sb_view_each_member(const sb_view_t *v, void (*fn)(const sb_member_t *m, void *arg),
                         void *arg);

/* Local sockets. A socket is added when its join is sent (JOINING: signals to it are held),
 * told its join's sequence number when the join script answered (sb_view_local_joined), and
 * removed when it leaves, closes or its join failed. Returns 0, or -1 (out of memory / already
 * there / not there). */
int sb_view_local_add(sb_view_t *v, const char *id);
int sb_view_local_remove(sb_view_t *v, const char *id);
/* The join of local id succeeded at seq. When the view is not synced yet (the first local
 * socket of the room), snapshot (n members, the joiner included) is the room at seq and
 * becomes the view; otherwise it is ignored. JOINED follows once the view reaches seq. */
int sb_view_local_joined(sb_view_t *v, const char *id, uint64_t seq,
                         const sb_view_member_in_t *snapshot, size_t n, int64_t now_ms,
                         sb_acts_t *acts);
/* 1 joined (sent `joined`), 0 joining, -1 not a local socket of this view. */
int sb_view_local_state(const sb_view_t *v, const char *id);
size_t sb_view_nlocal(const sb_view_t *v);
/* Calls fn for each local socket id; joined_batch is the batch in which it was sent `joined`
 * (0 = still joining). fn must not change the view. */
void sb_view_each_local(const sb_view_t *v,
                        void (*fn)(const char *id, uint64_t joined_batch, void *arg), void *arg);

/* A join or left event from pub/sub. */
void sb_view_event(sb_view_t *v, const sb_view_event_t *ev, int64_t now_ms, sb_acts_t *acts);

typedef enum {
    SB_VIEW_DELIVER, /* deliver now (the caller has the data; nothing was copied) */
    SB_VIEW_HELD,    /* held; a DELIVER action follows when it may go */
    SB_VIEW_DROPPED, /* not kept (no memory, or the held list was full) */
} sb_view_signal_t;

/* A signal from member `from` to local socket `to` (data: len bytes, copied when held). Held
 * while the view is not synced, does not know the sender yet, still holds an earlier signal
 * from the same sender (per-pair order), or `to` has not been sent `joined`. */
sb_view_signal_t sb_view_signal(sb_view_t *v, const char *from, const char *to, const char *data,
                                size_t len, int64_t now_ms, sb_acts_t *acts);
size_t sb_view_nheld(const sb_view_t *v);

/* Resync: sb_view_resync_start marks a read as in flight (0), or returns -1 when one already
 * is. While it is, events are buffered. sb_view_resync_done applies the reply: ok = 0 (the read
 * failed: retried later by the sweep), or the room at seq with n members. grace = 1 applies
 * additions only (Redis just lost its data and the other nodes may not have re-asserted yet)
 * and reads again after SB_VIEW_RETRY_MS. */
int sb_view_resync_start(sb_view_t *v);
int sb_view_resyncing(const sb_view_t *v);
void sb_view_resync_done(sb_view_t *v, int ok, uint64_t seq, const sb_view_member_in_t *members,
                         size_t n, int grace, int64_t now_ms, sb_acts_t *acts);
/* Forces a full read of a synced view (pub/sub reconnected, data loss): RESYNC unless one is
 * already in flight. */
void sb_view_resync_request(sb_view_t *v, sb_acts_t *acts);

/* Periodic: a gap older than SB_VIEW_GAP_MS or a due retry asks for a resync; held signals
 * that may go now are delivered, expired ones dropped. */
void sb_view_sweep(sb_view_t *v, int64_t now_ms, sb_acts_t *acts);
/* 1 when sb_view_sweep may have work now or later without another call (a gap, a resync to
 * retry or to start, held signals, joins to complete); 0 when only a call can give it some. */
int sb_view_wants_sweep(const sb_view_t *v);

#endif
