/* Unit tests for node/view.c, one per ordering guarantee of docs/protocol.md: events out of
 * order, gaps, a resync racing later events, a signal before `peer-joined`, signals held during
 * a join, per-sender order, a recreated room; plus reaping, the data-loss grace, bounds, and the
 * batch rule that keeps `peer-joined` from following a `joined` that already listed the peer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "view.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0 1000000
/* Socket ids are 22..64 characters; the view does not check them, but use real-looking ones. */
#define A "aaaaaaaaaaaaaaaaaaaaaa"
#define B "bbbbbbbbbbbbbbbbbbbbbb"
#define C "cccccccccccccccccccccc"
#define X "xxxxxxxxxxxxxxxxxxxxxx"

static sb_acts_t acts;

static int setup(void **state)
{
    (void)state;
    sb_acts_init(&acts);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sb_acts_free(&acts);
    return 0;
}

static sb_view_event_t join_ev(uint64_t seq, const char *id, const char *meta)
{
    sb_view_event_t e = {1, seq, id, "n2", meta, NULL};
    return e;
}

static sb_view_event_t left_ev(uint64_t seq, const char *id, const char *reason)
{
    sb_view_event_t e = {0, seq, id, NULL, NULL, reason};
    return e;
}

/* A synced view of room "r" at seq 10 with remote member X and local socket A joined. */
static sb_view_t *view_with_a(void)
{
    sb_view_t *v = sb_view_new("r");
    assert_non_null(v);
    assert_int_equal(sb_view_local_add(v, A), 0);
    sb_view_member_in_t snap[] = {{X, "n2", "{\"n\":\"x\"}"}, {A, "n1", "{}"}};
    assert_int_equal(sb_view_local_joined(v, A, 10, snap, 2, T0, &acts), 0);
    assert_int_equal(acts.n, 1);
    assert_int_equal(acts.v[0].kind, SB_ACT_JOINED);
    assert_string_equal(acts.v[0].to, A);
    sb_acts_clear(&acts);
    return v;
}

/* The actions as one line, e.g. "joined:A deliver:A<X(data) peer-joined:*<C": ids shortened
 * to their first letter, so a whole sequence is checked with one string compare. */
static const char *render(void)
{
    static char out[2048];
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < acts.n; i++) {
        const sb_act_t *a = &acts.v[i];
        char to = a->to[0] ? a->to[0] : '*', peer = a->peer[0] ? a->peer[0] : '-';
        const char *k = a->kind == SB_ACT_PEER_JOINED ? "peer-joined"
                        : a->kind == SB_ACT_PEER_LEFT ? "peer-left"
                        : a->kind == SB_ACT_JOINED    ? "joined"
                        : a->kind == SB_ACT_DELIVER   ? "deliver"
                        : a->kind == SB_ACT_EXPIRED   ? "expired"
                        : a->kind == SB_ACT_RELINK    ? "relink"
                        : a->kind == SB_ACT_PEER_AWAY ? "peer-away"
                        : a->kind == SB_ACT_PEER_BACK ? "peer-back"
                                                      : "resync";
        o += (size_t)snprintf(out + o, sizeof out - o, "%s%s:%c<%c", i ? " " : "", k, to, peer);
        if (a->kind == SB_ACT_DELIVER)
            o += (size_t)snprintf(out + o, sizeof out - o, "(%s)", a->text);
        if (a->kind == SB_ACT_PEER_LEFT)
            o += (size_t)snprintf(out + o, sizeof out - o, "(%s)", a->reason);
        if (a->kind == SB_ACT_PEER_BACK)
            o += (size_t)snprintf(out + o, sizeof out - o, "(%s)", a->text);
    }
    return out;
}

static void test_events_in_order(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_event_t j = join_ev(11, C, "{\"n\":\"c\"}");
    sb_view_event(v, &j, T0, &acts);
    assert_string_equal(render(), "peer-joined:*<c relink:*<c");
    assert_string_equal(acts.v[0].text, "{\"n\":\"c\"}");
    assert_non_null(sb_view_member(v, C));
    sb_acts_clear(&acts);
    sb_view_event_t l = left_ev(12, X, "leave");
    sb_view_event(v, &l, T0, &acts);
    assert_string_equal(render(), "peer-left:*<x(leave)");
    assert_null(sb_view_member(v, X));
    assert_int_equal(sb_view_seq(v), 12);
    /* The same event again changes nothing. */
    sb_acts_clear(&acts);
    sb_view_event(v, &l, T0, &acts);
    assert_int_equal(acts.n, 0);
    sb_view_free(v);
}

static void test_events_before_sync_out_of_order(void **state)
{
    (void)state;
    /* Events that come before the join reply are buffered, in whatever order, and applied in
     * sequence once the snapshot says where the room is. Stale ones are dropped. */
    sb_view_t *v = sb_view_new("r");
    sb_view_local_add(v, A);
    sb_view_event_t e12 = left_ev(12, C, "disconnect"), e11 = join_ev(11, C, NULL),
                    e9 = join_ev(9, X, NULL);
    sb_view_event(v, &e12, T0, &acts);
    sb_view_event(v, &e11, T0, &acts);
    sb_view_event(v, &e9, T0, &acts);
    assert_int_equal(acts.n, 0);
    sb_view_member_in_t snap[] = {{X, "n2", "{}"}, {A, "n1", "{}"}};
    sb_view_local_joined(v, A, 10, snap, 2, T0, &acts);
    /* 9 is stale; 11 and 12 apply in order; A's `joined` comes after them. (C came and went
     * within this batch: the caller tells A of neither, by the batch rule.) */
    assert_string_equal(render(),
                        "peer-joined:*<c relink:*<c peer-left:*<c(disconnect) joined:a<-");
    uint64_t batch = acts.v[0].batch;
    assert_int_equal(acts.v[2].batch, batch);
    int st = sb_view_local_state(v, A);
    assert_int_equal(st, 1);
    assert_int_equal(sb_view_seq(v), 12);
    assert_null(sb_view_member(v, C));
    sb_view_free(v);
}

typedef struct {
    uint64_t batch;
} jb_t;

static void get_batch(const char *id, uint64_t joined_batch, void *arg)
{
    (void)id;
    ((jb_t *)arg)->batch = joined_batch;
}

static void test_batch_rule(void **state)
{
    (void)state;
    /* The local joined in the same batch as a peer-joined: its joined_batch equals the action's
     * batch, which is how the caller knows the `joined` list already has the peer. */
    sb_view_t *v = sb_view_new("r");
    sb_view_local_add(v, A);
    sb_view_event_t e11 = join_ev(11, C, NULL);
    sb_view_event(v, &e11, T0, &acts);
    sb_view_member_in_t snap[] = {{A, "n1", "{}"}};
    sb_view_local_joined(v, A, 10, snap, 1, T0, &acts);
    assert_string_equal(render(), "peer-joined:*<c relink:*<c joined:a<-");
    jb_t jb = {0};
    sb_view_each_local(v, get_batch, &jb);
    assert_int_equal(jb.batch, acts.v[0].batch);
    /* A later event is for A too: its batch is greater than A's. */
    sb_acts_clear(&acts);
    sb_view_event_t e12 = left_ev(12, C, "leave");
    sb_view_event(v, &e12, T0, &acts);
    assert_true(acts.v[0].batch > jb.batch);
    sb_view_free(v);
}

static void test_gap_resyncs(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_event_t e12 = join_ev(12, C, NULL);
    sb_view_event(v, &e12, T0, &acts);
    /* 11 is missing: a read of the room, at once. */
    assert_string_equal(render(), "resync:*<-");
    assert_true(sb_view_resyncing(v));
    assert_null(sb_view_member(v, C));
    sb_acts_clear(&acts);
    /* The read: at seq 12, X gone and C there (11 was X's departure). */
    sb_view_member_in_t room[] = {{A, "n1", "{}"}, {C, "n2", "{}"}};
    sb_view_resync_done(v, 1, 12, room, 2, 0, T0 + 5, &acts);
    assert_string_equal(render(), "peer-left:*<x(disconnect) peer-joined:*<c relink:*<-");
    assert_int_equal(sb_view_seq(v), 12);
    assert_false(sb_view_resyncing(v));
    sb_view_free(v);
}

static void test_resync_races_later_events(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_resync_request(v, &acts);
    assert_string_equal(render(), "resync:*<-");
    sb_acts_clear(&acts);
    /* While the read is in flight, events 11..13 come; the read answers at 12. */
    sb_view_event_t e11 = join_ev(11, B, NULL), e12 = left_ev(12, B, "leave"),
                    e13 = join_ev(13, C, NULL);
    sb_view_event(v, &e11, T0, &acts);
    sb_view_event(v, &e12, T0, &acts);
    sb_view_event(v, &e13, T0, &acts);
    assert_int_equal(acts.n, 0);
    sb_view_member_in_t room[] = {{A, "n1", "{}"}, {X, "n2", "{}"}};
    sb_view_resync_done(v, 1, 12, room, 2, 0, T0, &acts);
    /* 11 and 12 continue the view's sequence: applied before the read, so B's coming and
     * going is told (the read's difference alone would hide it); 13 applies after it. */
    assert_string_equal(render(), "peer-joined:*<b relink:*<b peer-left:*<b(leave) relink:*<- "
                                  "peer-joined:*<c relink:*<c");
    assert_int_equal(sb_view_seq(v), 13);
    assert_null(sb_view_member(v, B));
    sb_view_free(v);
}

static void test_failed_resync_retried_by_sweep(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    sb_view_resync_done(v, 0, 0, NULL, 0, 0, T0, &acts);
    assert_int_equal(acts.n, 0);
    sb_view_sweep(v, T0 + SB_VIEW_RETRY_MS - 1, &acts);
    assert_int_equal(acts.n, 0);
    sb_view_sweep(v, T0 + SB_VIEW_RETRY_MS, &acts);
    assert_string_equal(render(), "resync:*<-");
    sb_view_free(v);
}

/* sb_view_wants_sweep lists the room for the node's sweep: 1 exactly while the sweep could
 * have work without another call (held signals, a resync to retry, a join to complete). */
static void test_wants_sweep(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    assert_false(sb_view_wants_sweep(v));
    /* a held signal (unknown sender), released by the sender's join */
    assert_int_equal(sb_view_signal(v, C, A, "1", 1, T0, &acts), SB_VIEW_HELD);
    assert_true(sb_view_wants_sweep(v));
    sb_view_event_t e11 = join_ev(11, C, NULL);
    sb_view_event(v, &e11, T0, &acts);
    assert_int_equal(sb_view_nheld(v), 0);
    assert_false(sb_view_wants_sweep(v));
    sb_acts_clear(&acts);
    /* a failed read: retried by the sweep, then done */
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    sb_view_resync_done(v, 0, 0, NULL, 0, 0, T0, &acts);
    assert_true(sb_view_wants_sweep(v));
    sb_view_sweep(v, T0 + SB_VIEW_RETRY_MS, &acts);
    assert_string_equal(render(), "resync:*<-");
    sb_acts_clear(&acts);
    sb_view_member_in_t room[] = {{A, "n1", "{}"}, {X, "n2", "{}"}, {C, "n2", "{}"}};
    sb_view_resync_done(v, 1, 11, room, 3, 0, T0 + SB_VIEW_RETRY_MS, &acts);
    assert_false(sb_view_wants_sweep(v));
    sb_acts_clear(&acts);
    /* a local join waiting for its sequence (13; the view is at 11) */
    assert_int_equal(sb_view_local_add(v, B), 0);
    sb_view_local_joined(v, B, 13, NULL, 0, T0, &acts);
    assert_true(sb_view_wants_sweep(v));
    sb_view_event_t e12 = join_ev(12, X, NULL), e13 = join_ev(13, B, NULL);
    sb_view_event(v, &e12, T0, &acts);
    sb_view_event(v, &e13, T0, &acts);
    assert_int_equal(sb_view_local_state(v, B), 1);
    assert_false(sb_view_wants_sweep(v));
    sb_view_free(v);
}

static void test_signal_before_peer_joined(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    /* C's signal comes (from another node) before the view has C's join event. */
    assert_int_equal(sb_view_signal(v, C, A, "1", 1, T0, &acts), SB_VIEW_HELD);
    assert_int_equal(sb_view_signal(v, C, A, "2", 1, T0, &acts), SB_VIEW_HELD);
    assert_int_equal(acts.n, 0);
    assert_int_equal(sb_view_nheld(v), 2);
    sb_view_event_t e11 = join_ev(11, C, NULL);
    sb_view_event(v, &e11, T0 + 10, &acts);
    assert_string_equal(render(), "peer-joined:*<c relink:*<c deliver:a<c(1) deliver:a<c(2)");
    assert_int_equal(sb_view_nheld(v), 0);
    /* Now known, nothing held from C: straight through. */
    sb_acts_clear(&acts);
    assert_int_equal(sb_view_signal(v, C, A, "3", 1, T0, &acts), SB_VIEW_DELIVER);
    sb_view_free(v);
}

static void test_per_sender_order_kept(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_local_add(v, B); /* B is joining: signals to it wait */
    assert_int_equal(sb_view_signal(v, X, B, "1", 1, T0, &acts), SB_VIEW_HELD);
    /* X's signal to A may go, but another from X to B must not overtake the held one. */
    assert_int_equal(sb_view_signal(v, X, A, "a", 1, T0, &acts), SB_VIEW_HELD);
    assert_int_equal(sb_view_signal(v, X, B, "2", 1, T0, &acts), SB_VIEW_HELD);
    sb_view_sweep(v, T0 + 1, &acts);
    assert_int_equal(acts.n, 0); /* B still joining: everything from X stays, in order */
    sb_view_member_in_t none[] = {{NULL, NULL, NULL}};
    sb_view_local_joined(v, B, 10, none, 0, T0 + 2, &acts);
    assert_string_equal(render(), "joined:b<- deliver:b<x(1) deliver:a<x(a) deliver:b<x(2)");
    sb_view_free(v);
}

static void test_signals_held_during_join(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    /* B's join is sent; its reply has not come, but A learned of B (B's join event came first
     * on the pub/sub connection) and signals it. */
    sb_view_local_add(v, B);
    sb_view_event_t e11 = join_ev(11, B, NULL);
    sb_view_event(v, &e11, T0, &acts);
    sb_acts_clear(&acts);
    assert_int_equal(sb_view_signal(v, A, B, "offer", 5, T0, &acts), SB_VIEW_HELD);
    /* The join reply: seq 11, which the view has reached: joined, then the offer. */
    sb_view_local_joined(v, B, 11, NULL, 0, T0 + 1, &acts);
    assert_string_equal(render(), "joined:b<- deliver:b<a(offer)");
    sb_view_free(v);
}

static void test_joined_waits_for_its_sequence(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_local_add(v, B);
    /* The reply (seq 12) beats the events 11 and 12 on the other connection. */
    sb_view_local_joined(v, B, 12, NULL, 0, T0, &acts);
    assert_int_equal(acts.n, 0);
    assert_int_equal(sb_view_local_state(v, B), 0);
    sb_view_event_t e11 = join_ev(11, C, NULL), e12 = join_ev(12, B, NULL);
    sb_view_event(v, &e11, T0, &acts);
    assert_string_equal(render(), "peer-joined:*<c relink:*<c");
    sb_acts_clear(&acts);
    sb_view_event(v, &e12, T0, &acts);
    assert_string_equal(render(), "peer-joined:*<b relink:*<b joined:b<-");
    sb_view_free(v);
}

/* Joins completing in one call go out oldest first, and a socket leaving while joining leaves
 * the joining list (the view walks only that list, not every local socket). */
static void test_joins_complete_in_join_order(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_local_add(v, C);
    sb_view_local_add(v, X);
    sb_view_local_add(v, B);
    sb_view_local_joined(v, C, 11, NULL, 0, T0, &acts);
    sb_view_local_joined(v, X, 12, NULL, 0, T0, &acts);
    sb_view_local_joined(v, B, 13, NULL, 0, T0, &acts);
    assert_int_equal(acts.n, 0);
    assert_int_equal(sb_view_local_remove(v, X), 0); /* gone while joining */
    /* A read of the room at 13 completes C and B in one call. */
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    const sb_view_member_in_t room[] = {
        {A, "n1", "{}", 0}, {C, "n1", "{}", 0}, {X, "n1", "{}", 0}, {B, "n1", "{}", 0}};
    sb_view_resync_done(v, 1, 13, room, 4, 0, T0, &acts);
    const char *r = render();
    const char *jc = strstr(r, "joined:c<-"), *jb = strstr(r, "joined:b<-");
    assert_non_null(jc);
    assert_non_null(jb);
    assert_true(jc < jb);
    assert_null(strstr(r, "joined:x"));
    assert_int_equal(sb_view_local_state(v, C), 1);
    assert_int_equal(sb_view_local_state(v, B), 1);
    assert_int_equal(sb_view_local_state(v, X), -1);
    sb_acts_clear(&acts);
    sb_view_free(v);
}

static void test_join_event_missing_resyncs_after_gap_timeout(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_local_add(v, B);
    sb_view_local_joined(v, B, 11, NULL, 0, T0, &acts);
    assert_int_equal(acts.n, 0);
    sb_view_sweep(v, T0 + SB_VIEW_GAP_MS, &acts);
    assert_int_equal(acts.n, 0);
    sb_view_sweep(v, T0 + SB_VIEW_GAP_MS + 1, &acts);
    assert_string_equal(render(), "resync:*<-");
    sb_acts_clear(&acts);
    sb_view_member_in_t room[] = {{A, "n1", "{}"}, {X, "n2", "{}"}, {B, "n1", "{}"}};
    sb_view_resync_done(v, 1, 11, room, 3, 0, T0 + 300, &acts);
    assert_string_equal(render(), "peer-joined:*<b relink:*<- joined:b<-");
    sb_view_free(v);
}

static void test_recreated_room(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    /* Redis lost the room; it was created afresh (its sequence starts at TIME in us). */
    uint64_t fresh = 1800000000000000ULL;
    sb_view_event_t e = join_ev(fresh, C, NULL);
    sb_view_event(v, &e, T0, &acts);
    assert_string_equal(render(), "resync:*<-");
    sb_acts_clear(&acts);
    sb_view_member_in_t room[] = {{A, "n1", "{}"}, {C, "n2", "{}"}};
    sb_view_resync_done(v, 1, fresh, room, 2, 0, T0, &acts);
    assert_string_equal(render(), "peer-left:*<x(disconnect) peer-joined:*<c relink:*<-");
    assert_int_equal(sb_view_seq(v), fresh);
    /* The early event (the same number) was dropped as stale, not applied twice. */
    sb_acts_clear(&acts);
    sb_view_sweep(v, T0 + 1000, &acts);
    assert_int_equal(acts.n, 0);
    sb_view_free(v);
}

static void test_local_reaped_by_event_and_by_resync(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_event_t e = left_ev(11, A, "expired");
    sb_view_event(v, &e, T0, &acts);
    assert_string_equal(render(), "peer-left:*<a(expired) expired:a<-");
    assert_int_equal(sb_view_local_state(v, A), -1);
    sb_view_free(v);
    sb_acts_clear(&acts);

    v = view_with_a();
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    sb_view_member_in_t room[] = {{X, "n2", "{}"}};
    sb_view_resync_done(v, 1, 15, room, 1, 0, T0, &acts);
    assert_string_equal(render(), "peer-left:*<a(disconnect) relink:*<- expired:a<-");
    sb_view_free(v);
}

static void test_grace_adds_only(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    /* Right after a data loss only A is back: X's node has not re-asserted yet. */
    sb_view_member_in_t room[] = {{A, "n1", "{}"}, {C, "n2", "{}"}};
    sb_view_resync_done(v, 1, 3, room, 2, 1, T0, &acts);
    assert_string_equal(render(), "peer-joined:*<c relink:*<-");
    assert_non_null(sb_view_member(v, X));
    /* And reads again later, when the removal counts. */
    sb_acts_clear(&acts);
    sb_view_sweep(v, T0 + SB_VIEW_RETRY_MS, &acts);
    assert_string_equal(render(), "resync:*<-");
    sb_acts_clear(&acts);
    sb_view_resync_done(v, 1, 3, room, 2, 0, T0 + SB_VIEW_RETRY_MS, &acts);
    assert_string_equal(render(), "peer-left:*<x(disconnect) relink:*<-");
    sb_view_free(v);
}

static void test_held_dropped_when_sender_leaves_or_expires(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_local_add(v, B);
    assert_int_equal(sb_view_signal(v, X, B, "1", 1, T0, &acts), SB_VIEW_HELD);
    assert_int_equal(sb_view_signal(v, C, B, "2", 1, T0, &acts), SB_VIEW_HELD);
    sb_view_event_t e = left_ev(11, X, "leave");
    sb_view_event(v, &e, T0, &acts);
    assert_int_equal(sb_view_nheld(v), 1); /* X's went with X */
    sb_acts_clear(&acts);
    sb_view_sweep(v, T0 + SB_VIEW_HELD_TTL_MS + 1, &acts);
    assert_int_equal(sb_view_nheld(v), 0); /* C never came: dropped after the TTL */
    assert_int_equal(acts.n, 0);
    /* A signal to a socket that is not here is dropped at once, never held. */
    assert_int_equal(sb_view_signal(v, X, C, "3", 1, T0, &acts), SB_VIEW_DROPPED);
    sb_view_free(v);
}

static void test_held_bounded(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    for (int i = 0; i < SB_VIEW_HELD_MAX; i++)
        assert_int_equal(sb_view_signal(v, C, A, "x", 1, T0, &acts), SB_VIEW_HELD);
    assert_int_equal(sb_view_signal(v, C, A, "x", 1, T0, &acts), SB_VIEW_DROPPED);
    assert_int_equal(sb_view_nheld(v), SB_VIEW_HELD_MAX);
    /* Released in one pass, in order. */
    sb_view_event_t e = join_ev(11, C, NULL);
    sb_view_event(v, &e, T0, &acts);
    assert_int_equal(acts.n, 2 + SB_VIEW_HELD_MAX);
    assert_int_equal(sb_view_nheld(v), 0);
    sb_view_free(v);
}

static void test_early_buffer_bounded(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    /* A read in flight and more events than the buffer holds: the buffer is dropped, and the
     * view reads the room again after the read in flight. */
    for (uint64_t q = 11; q < 11 + SB_VIEW_BUFFER_MAX + 5; q++) {
        sb_view_event_t e = join_ev(q, C, NULL);
        sb_view_event(v, &e, T0, &acts);
    }
    assert_int_equal(acts.n, 0);
    sb_view_member_in_t room[] = {{A, "n1", "{}"}, {X, "n2", "{}"}};
    sb_view_resync_done(v, 1, 12, room, 2, 0, T0, &acts);
    sb_acts_clear(&acts);
    sb_view_sweep(v, T0 + 1, &acts);
    assert_string_equal(render(), "resync:*<-");
    sb_view_free(v);
}

static void test_large_room(void **state)
{
    (void)state;
    /* 10,000 members: joins, a resync and signals stay linear (this would take minutes with a
     * quadratic step; the test only checks the results). */
    enum { N = 10000 };
    static char ids[N][SB_SID_MAX + 1];
    static sb_view_member_in_t room[N];
    sb_view_t *v = view_with_a();
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "m%021d", i);
        sb_view_event_t e = join_ev(11 + (uint64_t)i, ids[i], NULL);
        sb_view_event(v, &e, T0, &acts);
        sb_acts_clear(&acts);
        room[i].id = ids[i];
        room[i].node = "n2";
        room[i].meta_json = "{}";
    }
    assert_int_equal(sb_view_nmembers(v), N + 2);
    for (int i = 0; i < N; i++)
        assert_int_equal(sb_view_signal(v, ids[i], A, "s", 1, T0, &acts), SB_VIEW_DELIVER);
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    sb_view_resync_done(v, 1, 20 + N, room, N, 0, T0, &acts);
    /* X left (not in the read) and A was reaped: peer-left for both, one relink for the room (not
     * one per member: the caller would walk its local sockets per member), expired. */
    assert_int_equal(sb_view_nmembers(v), N);
    assert_string_equal(
        render(), "peer-left:*<a(disconnect) peer-left:*<x(disconnect) relink:*<- expired:a<-");
    sb_view_free(v);
}

/* ---- session resume: away and back ---------------------------------------------------------- */

static sb_view_event_t away_ev(uint64_t seq, const char *id)
{
    sb_view_event_t e = {0, seq, id, NULL, NULL, NULL, SB_VIEW_AWAY};
    return e;
}

static sb_view_event_t back_ev(uint64_t seq, const char *id, const char *node)
{
    sb_view_event_t e = {0, seq, id, node, "{\"n\":\"x\"}", NULL, SB_VIEW_BACK};
    return e;
}

static void test_away_and_back_events(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_event_t a = away_ev(11, X);
    sb_view_event(v, &a, T0, &acts);
    assert_string_equal(render(), "peer-away:*<x");
    assert_true(sb_view_member(v, X)->away);
    assert_int_equal(sb_view_seq(v), 11);
    /* Still a member: a signal from it is delivered (it was sent before it went away). */
    sb_acts_clear(&acts);
    assert_int_equal(sb_view_signal(v, X, A, "1", 1, T0, &acts), SB_VIEW_DELIVER);
    /* Back on another node: the member moves there. */
    sb_view_event_t b = back_ev(12, X, "n3");
    sb_view_event(v, &b, T0, &acts);
    assert_string_equal(render(), "peer-back:*<x(n3)");
    assert_false(sb_view_member(v, X)->away);
    assert_string_equal(sb_view_member(v, X)->node, "n3");
    assert_string_equal(sb_view_member(v, X)->meta_json, "{\"n\":\"x\"}");
    /* The same events again change nothing. */
    sb_acts_clear(&acts);
    sb_view_event(v, &a, T0, &acts);
    sb_view_event(v, &b, T0, &acts);
    assert_string_equal(render(), "");
    sb_view_free(v);
}

/* Ids, node names and room names at their maxima (64) are kept whole, now that the records
 * hold them at their length; an update that changes a member's node or meta replaces its
 * record and keeps its flags. */
static void test_longest_names(void **state)
{
    (void)state;
    char room[SB_ROOM_MAX + 1], id[SB_SID_MAX + 1], peer[SB_SID_MAX + 1], node[SB_NODE_ID_MAX + 1];
    memset(room, 'r', SB_ROOM_MAX);
    room[SB_ROOM_MAX] = '\0';
    memset(id, 'a', SB_SID_MAX);
    id[SB_SID_MAX] = '\0';
    memset(peer, 'x', SB_SID_MAX);
    peer[SB_SID_MAX] = '\0';
    memset(node, 'n', SB_NODE_ID_MAX);
    node[SB_NODE_ID_MAX] = '\0';
    sb_view_t *v = sb_view_new(room);
    assert_non_null(v);
    assert_string_equal(sb_view_name(v), room);
    assert_int_equal(sb_view_local_add(v, id), 0);
    sb_view_member_in_t snap[] = {{peer, "n2", "{}"}, {id, node, "{}"}};
    assert_int_equal(sb_view_local_joined(v, id, 10, snap, 2, T0, &acts), 0);
    assert_int_equal(sb_view_local_state(v, id), 1);
    assert_string_equal(sb_view_member(v, id)->id, id);
    assert_string_equal(sb_view_member(v, id)->node, node);
    assert_string_equal(sb_view_member(v, peer)->meta_json, "{}");
    sb_view_event_t a = away_ev(11, peer);
    sb_view_event(v, &a, T0, &acts);
    assert_true(sb_view_member(v, peer)->away);
    /* Its join again, from the longest node name and with a meta: still away. */
    sb_view_event_t j = {1, 12, peer, node, "{\"k\":1}", NULL};
    sb_view_event(v, &j, T0, &acts);
    const sb_member_t *m = sb_view_member(v, peer);
    assert_true(m->away);
    assert_string_equal(m->id, peer);
    assert_string_equal(m->node, node);
    assert_string_equal(m->meta_json, "{\"k\":1}");
    sb_view_event_t b = back_ev(13, peer, "n3");
    sb_view_event(v, &b, T0, &acts);
    m = sb_view_member(v, peer);
    assert_false(m->away);
    assert_string_equal(m->node, "n3");
    assert_int_equal(sb_view_nmembers(v), 2);
    assert_int_equal(sb_view_seq(v), 13);
    sb_view_free(v);
}

static void test_away_event_out_of_order(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_event_t b = back_ev(12, X, "n2");
    sb_view_event(v, &b, T0, &acts); /* a gap: kept, and the room is read */
    assert_string_equal(render(), "resync:*<-");
    assert_false(sb_view_member(v, X)->away);
    sb_acts_clear(&acts);
    sb_view_event_t a = away_ev(11, X);
    sb_view_event(v, &a, T0, &acts); /* buffered while the read is in flight */
    assert_string_equal(render(), "");
    /* The read answers at seq 10: both events then apply, in order. */
    sb_view_member_in_t read[] = {{X, "n2", "{\"n\":\"x\"}", 0}, {A, "n1", "{}", 0}};
    sb_view_resync_done(v, 1, 10, read, 2, 0, T0, &acts);
    assert_string_equal(render(), "relink:*<- peer-away:*<x peer-back:*<x(n2)");
    assert_false(sb_view_member(v, X)->away);
    assert_int_equal(sb_view_seq(v), 12);
    sb_view_free(v);
}

static void test_resync_reports_away_state(void **state)
{
    (void)state;
    sb_view_t *v = view_with_a();
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    sb_view_member_in_t read1[] = {{X, "n2", "{\"n\":\"x\"}", 1}, {A, "n1", "{}", 0}};
    sb_view_resync_done(v, 1, 20, read1, 2, 0, T0, &acts);
    assert_string_equal(render(), "peer-away:*<x relink:*<-");
    assert_true(sb_view_member(v, X)->away);
    sb_acts_clear(&acts);
    sb_view_resync_request(v, &acts);
    sb_acts_clear(&acts);
    sb_view_member_in_t read2[] = {{X, "n3", "{\"n\":\"x\"}", 0}, {A, "n1", "{}", 0}};
    sb_view_resync_done(v, 1, 21, read2, 2, 0, T0, &acts);
    assert_string_equal(render(), "peer-back:*<x(n3) relink:*<-");
    assert_false(sb_view_member(v, X)->away);
    /* A first snapshot (join reply) keeps the flags too. */
    sb_view_t *w = sb_view_new("r");
    assert_int_equal(sb_view_local_add(w, A), 0);
    sb_acts_clear(&acts);
    assert_int_equal(sb_view_local_joined(w, A, 10, read1, 2, T0, &acts), 0);
    assert_true(sb_view_member(w, X)->away);
    sb_view_free(w);
    sb_view_free(v);
}

/* A resume on this node: the socket is added under its old id before the reply, signals for it
 * are held, and its `resumed` (JOINED) goes out once the view reaches the resume's seq, before
 * them. */
static void test_resume_holds_signals_until_resumed(void **state)
{
    (void)state;
    sb_view_t *v = sb_view_new("r");
    assert_int_equal(sb_view_local_add(v, A), 0);
    sb_view_member_in_t snap[] = {{X, "n2", "{}", 0}, {A, "n1", "{}", 0}, {B, "n9", "{}", 1}};
    assert_int_equal(sb_view_local_joined(v, A, 10, snap, 3, T0, &acts), 0);
    sb_acts_clear(&acts);
    assert_int_equal(sb_view_local_add(v, B), 0); /* B resumes here */
    assert_int_equal(sb_view_signal(v, X, B, "s", 1, T0, &acts), SB_VIEW_HELD);
    sb_view_event_t b = back_ev(11, B, "n1");
    sb_view_event(v, &b, T0, &acts);
    assert_string_equal(render(), "peer-back:*<b(n1)");
    sb_acts_clear(&acts);
    assert_int_equal(sb_view_local_joined(v, B, 11, NULL, 0, T0, &acts), 0);
    assert_string_equal(render(), "joined:b<- deliver:b<x(s)");
    sb_view_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_events_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_before_sync_out_of_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_rule, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gap_resyncs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resync_races_later_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_resync_retried_by_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wants_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signal_before_peer_joined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_per_sender_order_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signals_held_during_join, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joins_complete_in_join_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joined_waits_for_its_sequence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_join_event_missing_resyncs_after_gap_timeout, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_recreated_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_reaped_by_event_and_by_resync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grace_adds_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_held_dropped_when_sender_leaves_or_expires, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_held_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_early_buffer_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_away_and_back_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_longest_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_away_event_out_of_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resync_reports_away_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_holds_signals_until_resumed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
