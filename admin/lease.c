/* The reconcile lease and the schedule of passes, and the readiness they prove. The lease
 * (admin_lock.lua, P:admin:lock) is taken or renewed every tick (interval / 4, at most every
 * second) with a TTL of 2/3 interval, so a survivor takes over within one interval of the
 * holder's death; the holder starts a pass every interval (pass timer), and at once on a
 * takeover. Each attempt is also a reply from Redis at least every tick: /readyz rests on that.
 * Correctness never rests on the lease: every reap re-checks presence inside its script.
 * Does not run the pass itself (reconcile.c). */
#include "admin.h"
#include "log.h"
#include "scripts.h"

#include <stdio.h>

static int64_t lease_ttl_ms(const sb_admin_t *a)
{
    int64_t ttl = a->cfg.reconcile_interval_ms * 2 / 3;
    return ttl < 50 ? 50 : ttl;
}

/* The tick's period: interval / 4, at most 1 s. */
static int64_t tick_ms(const sb_admin_t *a)
{
    int64_t t = a->cfg.reconcile_interval_ms / 4;
    return t > 1000 ? 1000 : t;
}

/* Starts a pass when this admin holds the lease and none runs. */
static void pass_if_holder(sb_admin_t *a)
{
    if (a->stopping || !a->lease_held || a->pass)
        return;
    if (sb_reconcile_run(a, NULL, NULL) != 0)
        sb_debug("reconcile: cannot start a pass now");
}

static void on_lock(redisReply *reply, const char *error, void *data)
{
    sb_admin_t *a = data;
    a->lease_pending = 0;
    if (a->stopping)
        return;
    int held = !error && reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
    if (!error && sb_reply_is_error(reply))
        sb_error("admin_lock refused: %s", reply->str);
    if (held && !a->lease_held) {
        sb_info("reconcile lease taken (%s)", a->holder);
    } else if (!held && a->lease_held) {
        sb_info("reconcile lease lost: %s", error ? error : "another admin holds it");
        /* The node list is learnt again after the next takeover (no duplicate node-up). */
        a->nodes_primed = 0;
    }
    int taken = held && !a->lease_held;
    a->lease_held = held;
    /* A takeover reconciles at once; after that the pass timer keeps the interval. */
    if (taken)
        pass_if_holder(a);
}

/* Takes or renews the lease (one attempt in flight at a time). */
static void try_lease(sb_admin_t *a)
{
    if (a->stopping)
        return;
    if (!a->redis_up) {
        if (a->lease_held)
            sb_info("reconcile lease: Redis unreachable; not reconciling");
        a->lease_held = 0;
        a->nodes_primed = 0;
        return;
    }
    if (a->lease_pending)
        return;
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%lld", (long long)lease_ttl_ms(a));
    char lock[SB_KEY_MAX];
    sb_key_global(lock, sizeof lock, a->cfg.prefix, "admin:lock"); /* fits: prefix <= 64 */
    const char *args[] = {lock, a->cfg.prefix, a->holder, ttl};
    int rc = sb_admin_script(a, "admin_lock", 1, 4, args, NULL, on_lock, a);
    if (rc == 0) {
        a->lease_pending = 1;
        return;
    }
    if (rc != SB_EUNAVAIL || !sb_cluster_is_cluster(a->db))
        return;
    /* The shard of P:admin:lock is lost (the others answer): no lease, so no pass, but the
     * figures are still served (partial). A PING to a connected primary keeps /readyz's "a
     * reply within two ticks" about the admin's Redis, not about the lock's shard. */
    if (a->lease_held)
        sb_warn("reconcile lease: its shard is lost; not reconciling");
    a->lease_held = 0;
    a->nodes_primed = 0;
    for (int i = 0; i < sb_cluster_nprimaries(a->db); i++) {
        sb_cluster_node_t p;
        if (sb_cluster_primary(a->db, i, &p) == 0 && p.up && p.nslots > 0 &&
            sb_redis_command(p.redis, NULL, NULL, "PING") == 0)
            break;
    }
}

static void on_tick(uv_timer_t *t)
{
    try_lease(t->data);
}

static void on_pass_timer(uv_timer_t *t)
{
    pass_if_holder(t->data);
}

void sb_lease_start(sb_admin_t *a)
{
    uint64_t period = (uint64_t)tick_ms(a);
    uv_timer_init(a->loop, &a->tick);
    a->tick.data = a;
    uv_timer_start(&a->tick, on_tick, period, period);
    uv_timer_init(a->loop, &a->pass_timer);
    a->pass_timer.data = a;
    uv_timer_start(&a->pass_timer, on_pass_timer, (uint64_t)a->cfg.reconcile_interval_ms,
                   (uint64_t)a->cfg.reconcile_interval_ms);
}

void sb_lease_stop(sb_admin_t *a)
{
    uv_timer_stop(&a->tick);
    uv_close((uv_handle_t *)&a->tick, NULL);
    uv_timer_stop(&a->pass_timer);
    uv_close((uv_handle_t *)&a->pass_timer, NULL);
}

void sb_lease_redis_replied(sb_admin_t *a)
{
    a->last_reply_ms = sb_mono_ms();
}

void sb_lease_redis_up(sb_admin_t *a)
{
    a->redis_up = 1;
    /* Try the lease at once: a fresh admin (or one back from a Redis outage) reconciles
     * without waiting for the next tick. */
    try_lease(a);
}

void sb_lease_redis_down(sb_admin_t *a)
{
    a->redis_up = 0;
    /* A new connection must prove itself with a reply of its own before /readyz says 200. */
    a->last_reply_ms = 0;
    if (a->lease_held)
        sb_info("reconcile lease: Redis connection lost");
    a->lease_held = 0;
    a->nodes_primed = 0;
}

int sb_lease_redis_ready(const sb_admin_t *a)
{
    /* The lease is tried every tick, so a reply is due at least that often; allow one missed
     * attempt and the command timeout on top. */
    int64_t window = 2 * tick_ms(a) + a->cfg.redis_timeout_ms;
    return a->redis_up && a->last_reply_ms > 0 && sb_mono_ms() - a->last_reply_ms <= window;
}
