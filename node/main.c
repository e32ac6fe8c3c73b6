/* switchboard-node: options, the libuv loop, start-up and shutdown. Owns the process context;
 * the only global is the signal flag libuv's signal handles stand in for. */
#include "node.h"
#include "listen.h"
#include "auth.h"
#include "scripts.h"
#include "log.h"
#include "slot.h"
#include "grid.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern char **environ;

static void stop_now(sb_node_t *n);

/* ---- Redis connections ------------------------------------------------------------------- */

static void on_db_state(sb_cluster_t *c, int up, void *data)
{
    (void)c;
    sb_node_t *n = data;
    n->db_up = up;
    if (up) {
        sb_presence_on_up(n);
    } else if (!(n->cluster && sb_cluster_partly_up(n->db))) {
        n->instance_ok = 0;
        n->lease_ok = 0;
    }
    /* A Redis Cluster with some primaries still connected keeps both marks: the lease is
     * written (and lease_ok set or cleared) by every heartbeat, and the instance was verified
     * on shards that lost nothing (a shard that comes back empty is a topology change, and a
     * changed P:instance is found by the next heartbeat). Clearing them made every node
     * unready while the shard holding P:instance was down. A total outage clears them (here,
     * or in the heartbeat when the last primary goes: sb_presence_heartbeat_now). */
}

static void on_db_topology(sb_cluster_t *c, const unsigned char *affected, const char *why,
                           void *data)
{
    (void)c;
    sb_node_t *n = data;
    /* A promoted replica, or a primary restarted, may miss the last writes to these slots:
     * presence refreshes already in flight cannot tell a reaping from that (round_t), and our
     * sockets there are re-asserted (the keys of the ones Redis still has are left as they
     * are: room_assert only adds). */
    n->topology++;
    sb_presence_data_lost(n, affected, why);
}

static void on_db_message(sb_cluster_t *c, const char *channel, const char *payload, size_t len,
                          void *data)
{
    (void)c;
    (void)channel;
    sb_pubsub_on_message(data, payload, len);
}

static void on_db_subscribed(sb_cluster_t *c, const char *channel, void *data)
{
    (void)c;
    sb_pubsub_on_subscribed(data, channel);
}

/* On a cluster: whether the slot of our lease has a connected primary. lease_ok is only as
 * fresh as the last heartbeat's reply; a lost shard is known at once. */
static int lease_slot_up(const sb_node_t *n)
{
    if (!n->cluster)
        return 1;
    char key[SB_KEY_MAX];
    sb_key_node_lease(key, sizeof key, n->cfg.prefix, n->cfg.id);
    return sb_cluster_slot_up(n->db, sb_slot(key, strlen(key)));
}

int sb_node_ready(sb_node_t *n, const char **why)
{
    /* A Redis Cluster with a shard lost still serves the other shards' rooms, and every node
     * sees the same cluster: 503 on all of them would leave the load balancer nowhere to send
     * anyone (docs/design.md, "A whole shard lost"). The lease, the instance check and the
     * probe below still have to work. */
    if (n->draining)
        *why = "draining";
    else if (!n->db_up && !(n->cluster && sb_cluster_partly_up(n->db)))
        *why = "redis unreachable";
    else if (!n->instance_ok || !n->lease_ok || !lease_slot_up(n))
        *why = "lease not registered";
    else if (!n->pubsub_ok)
        *why = "pubsub not proven";
    else
        return 1;
    return 0;
}

/* ---- the sweep: probes, auth timeouts, drain progress ------------------------------------ */

static void on_drained(sb_node_t *n)
{
    sb_info("drain complete");
    stop_now(n);
}

/* SWEEP_IDLE_MS: the pub/sub probe's period (presence.c), all an idle node has to time. */
enum { SWEEP_MS = 50, SWEEP_IDLE_MS = 500 };

/* Nothing for the sweep to time but the pub/sub probe: no socket, no grace or PeerJS expiry
 * running, no room listed, no join waiting for a subscription, no drain. */
static int sweep_idle(const sb_node_t *n)
{
    return !n->nsessions && !n->draining && !n->bucket_waits && !sb_route_has_timed_work(n);
}

static void on_sweep(uv_timer_t *t)
{
    sb_node_t *n = t->data;
    int64_t now = sb_mono_ms();
    if (n->stopping)
        return;
    /* Every 50 ms on the grid (grid.h): at every other 100 ms it shares a wake-up with the
     * Redis clients' 20 ms ticks when they run. Every 500 ms while idle (docs/design.md, "Idle
     * wake-ups"); sb_node_sweep_soon brings it back to 50 ms when a socket comes. */
    uv_timer_start(t, on_sweep, sb_grid_delay(t->loop, 1, sweep_idle(n) ? SWEEP_IDLE_MS : SWEEP_MS),
                   0);
    sb_route_sweep(n, now);
    sb_pubsub_sweep(n, now);
    sb_presence_probe_tick(n, now);
    /* Idle sockets: a tick of a quarter of the shorter of the two (50 ms to 1 s), so a ping
     * and a hang-up come at most that late; one pass over the sockets per tick. */
    int64_t tick = (n->cfg.ping_interval_ms < n->cfg.ping_timeout_ms ? n->cfg.ping_interval_ms
                                                                     : n->cfg.ping_timeout_ms) /
                   4;
    tick = tick < 50 ? 50 : tick > 1000 ? 1000 : tick;
    if (now >= n->next_idle_check_ms) {
        n->next_idle_check_ms = now + tick;
        /* lws on a foreign libuv loop re-arms its timer for an earlier timeout only when it
         * next services something (see the drain below). */
        if (sb_session_check_idle(n, now) > 0)
            lws_cancel_service(n->lws);
    }
    if (n->draining && !n->stopping) {
        /* Why drop stragglers a Redis timeout before the deadline: a client that never lets
         * us write its close would otherwise still be open at the deadline, closed only while
         * stopping, when its cleanup can no longer run; its peers would then wait for the
         * admin to reap it. Dropped now, its cleanup (peers told, links removed) has time.
         * Why a timeout and not a close: lws defers a close until buffered output is flushed,
         * which for such a client is never; a timeout marks the socket unusable and closes it.
         * Why lws_cancel_service: lws 4.1.6 on a foreign libuv loop re-arms its timer for an
         * earlier timeout only when it next services something. */
        if (n->nsessions && now > n->drain_deadline_ms - n->cfg.redis_timeout_ms) {
            for (sb_session_t *s = n->sessions; s; s = s->next)
                sb_session_timeout(s, LWS_TO_KILL_ASYNC);
            lws_cancel_service(n->lws);
        }
        int pending = sb_cluster_pending(n->db);
        if ((n->nsessions == 0 && pending == 0) || now > n->drain_deadline_ms) {
            if (n->nsessions)
                sb_warn("drain timeout: %d sockets still open", n->nsessions);
            n->stopping = 1;
            if (!n->db_up || sb_presence_release(n, on_drained) != 0)
                on_drained(n);
        }
    }
}

void sb_node_sweep_soon(sb_node_t *n)
{
    if (!n->stopping && uv_is_active((uv_handle_t *)&n->sweep) &&
        uv_timer_get_due_in(&n->sweep) > SWEEP_MS)
        uv_timer_start(&n->sweep, on_sweep, sb_grid_delay(n->sweep.loop, 1, SWEEP_MS), 0);
}

void sb_node_begin_drain(sb_node_t *n)
{
    if (n->draining)
        return;
    n->draining = 1;
    sb_node_sweep_soon(n); /* drain progress is timed by the sweep */
    n->drain_deadline_ms = sb_mono_ms() + n->cfg.drain_timeout_ms;
    /* With resume on, 1012: the client resumes elsewhere at once (its session goes away, not
     * gone: route.c); without, 1001: reconnect and join again. */
    int code = n->cfg.resume_grace_ms > 0 ? 1012 : 1001;
    sb_info("draining: closing %d sockets with %d", n->nsessions, code);
    for (sb_session_t *s = n->sessions; s; s = s->next)
        sb_session_close(s, code, code == 1012 ? "resume elsewhere" : "draining");
}

static void on_signal(uv_signal_t *h, int signum)
{
    sb_node_t *n = h->data;
    if (n->draining) {
        sb_warn("second signal %d: stopping now", signum);
        if (!n->stopping) {
            n->stopping = 1;
            stop_now(n);
        }
        return;
    }
    sb_info("signal %d: draining", signum);
    sb_node_begin_drain(n);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        sb_debug("handle still open at shutdown: type %d", (int)h->type);
}

static void stop_now(sb_node_t *n)
{
    /* Everything that holds a uv handle is closed here; uv_run then returns once the close
     * callbacks ran. */
    uv_timer_stop(&n->sweep);
    uv_close((uv_handle_t *)&n->sweep, NULL);
    uv_close((uv_handle_t *)&n->sigint, NULL);
    uv_close((uv_handle_t *)&n->sigterm, NULL);
    sb_presence_stop(n);
    sb_server_stop(n);
    sb_pubsub_stop(n);
    sb_cluster_close(n->db);
}

int main(int argc, char **argv)
{
    static sb_node_t node;
    sb_node_t *n = &node;
    int rc = sb_node_options(&n->cfg, argc, argv, environ);
    if (rc != 0) {
        sb_node_options_free(&n->cfg);
        return rc == 1 ? 0 : 2;
    }
    if (n->cfg.auth_secret_file) {
        char why[160];
        if (sb_auth_load_secret(n->cfg.auth_secret_file, &n->auth_secret, &n->auth_secret_len, why,
                                sizeof why) != 0) {
            fprintf(stderr, "switchboard-node: --auth-secret-file: %s\n", why);
            sb_node_options_free(&n->cfg);
            return 2;
        }
    }
    if (n->cfg.turn_secret_file) {
        char why[160];
        if (sb_auth_read_secret(n->cfg.turn_secret_file, 1, &n->turn_secret, &n->turn_secret_len,
                                why, sizeof why) != 0) {
            fprintf(stderr, "switchboard-node: --turn-secret-file: %s\n", why);
            free(n->auth_secret);
            sb_node_options_free(&n->cfg);
            return 2;
        }
    }
    if (n->cfg.allowed_origins.n == 0 && !n->auth_secret)
        sb_warn("no --allowed-origin and no --auth-secret-file: any web page may use this node");
    srandom((unsigned)(time(NULL) ^ (getpid() << 8)));
    uv_loop_t loop;
    uv_loop_init(&loop);
    n->loop = &loop;
    n->started_ms = sb_now_ms();
    sb_map_init(&n->sess_by_id);
    sb_map_init(&n->pj_by_id);
    sb_map_init(&n->pj_orphans);
    sb_map_init(&n->rooms);
    sb_map_init(&n->buckets);
    sb_metrics_init(&n->metrics);
    sb_presence_start(n);

    sb_cluster_opts_t co = {.loop = &loop,
                            .url = n->cfg.redis,
                            .name = "redis",
                            .timeout_ms = n->cfg.redis_timeout_ms,
                            .on_topology = on_db_topology,
                            .on_state = on_db_state,
                            .on_message = on_db_message,
                            .on_subscribed = on_db_subscribed,
                            .observe = sb_metrics_observe,
                            /* A relayed signal's SPUBLISH reply is read at the next wake-up
                             * (docs/design.md, "Lazy PUBLISH replies"). */
                            .lazy_ms = (int)n->cfg.redis_lazy_reply_ms,
                            .data = n};
    n->db = sb_cluster_new(&co);
    n->cluster = n->db && sb_cluster_is_cluster(n->db);
    if (!n->db || sb_pubsub_start(n) != 0) {
        fprintf(stderr, "switchboard-node: out of memory starting the Redis client\n");
        if (n->db)
            sb_cluster_close(n->db);
        sb_presence_stop(n);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        sb_node_options_free(&n->cfg);
        return 1;
    }

    if (sb_server_start(n) != 0)
        sb_listen_exit(); /* logged; lws cannot be torn down safely now (common/listen.h) */
    uv_timer_init(&loop, &n->sweep);
    n->sweep.data = n;
    uv_timer_start(&n->sweep, on_sweep, sb_grid_delay(&loop, SWEEP_MS, SWEEP_MS), 0);
    uv_signal_init(&loop, &n->sigint);
    uv_signal_init(&loop, &n->sigterm);
    n->sigint.data = n->sigterm.data = n;
    uv_signal_start(&n->sigint, on_signal, SIGINT);
    uv_signal_start(&n->sigterm, on_signal, SIGTERM);
    struct lws_context *lws = n->lws; /* stop_now clears n->lws after starting its teardown */

    uv_run(&loop, UV_RUN_DEFAULT);
    /* lws on a foreign loop closes its handles asynchronously: let them finish. */
    uv_run(&loop, UV_RUN_DEFAULT);
    /* Why destroy it again: on a foreign loop lws 4.1.6 only starts its teardown in the call
     * stop_now made; it frees the context on a second call, once the loop no longer runs its
     * handles (otherwise valgrind finds some 340 KB of it at exit). */
    lws_context_destroy(lws);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_walk(&loop, close_walk, NULL);
    int lc = uv_loop_close(&loop);
    sb_info("stopped (uv_loop_close=%d)", lc);
    sb_route_away_free(n);
    sb_route_sweep_free(n);
    sb_route_pj_free(n);
    sb_map_free(&n->sess_by_id);
    sb_map_free(&n->pj_by_id);
    sb_map_free(&n->pj_orphans); /* its values freed by sb_route_pj_free */
    sb_map_free(&n->rooms);
    sb_map_free(&n->buckets);
    sb_metrics_free(&n->metrics);
    free(n->auth_secret);
    free(n->turn_secret);
    sb_node_options_free(&n->cfg);
    return lc == 0 ? 0 : 1;
}
