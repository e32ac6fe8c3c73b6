/* switchboard-admin: wiring only. Reads the options, makes the process context, the libuv
 * loop and the Redis client (whose hooks go to lease.c), starts HTTP and the lease, and stops
 * cleanly on SIGINT/SIGTERM (every handle closed, uv_loop_close() == 0). Exports nothing: the
 * work is in the other modules (admin.h lists them). */
#include "admin.h"
#include "listen.h"
#include "log.h"

#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void on_redis_reply(double seconds, void *data)
{
    (void)seconds;
    sb_lease_redis_replied(data);
}

static void on_redis_state(sb_cluster_t *c, int up, void *data)
{
    /* A shard lost: the others still answer, so the admin keeps reaping and reporting there
     * (its figures say partial); its lease needs the shard of P:admin:lock. */
    if (up || sb_cluster_partly_up(c))
        sb_lease_redis_up(data);
    else
        sb_lease_redis_down(data);
}

static void stop_now(sb_admin_t *a)
{
    a->stopping = 1;
    sb_lease_stop(a);
    sb_grace_stop(a);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    /* lws first: its connections are marked closed, so the errors that closing Redis hands to
     * the operations in flight only drop references. Closing the Redis client fails every call
     * in flight, which also ends a pass in progress (and answers its waiters). */
    sb_http_stop(a);
    sb_cluster_close(a->db);
}

static void on_signal(uv_signal_t *h, int signum)
{
    sb_admin_t *a = h->data;
    if (a->stopping)
        return;
    sb_info("signal %d: stopping", signum);
    stop_now(a);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        sb_debug("handle still open at shutdown: type %d", (int)h->type);
}

static void make_holder(sb_admin_t *a)
{
    char host[64] = "admin";
    unsigned char raw[8] = {0};
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
        memset(raw, 0, sizeof raw);
    char hex[17];
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    snprintf(a->holder, sizeof a->holder, "%s:%d:%s", host, (int)getpid(), hex);
}

int main(int argc, char **argv)
{
    sb_admin_t admin = {0}; /* the process context: on the stack, passed explicitly */
    sb_admin_t *a = &admin;
    char *token = NULL;
    size_t token_len = 0;
    int rc = sb_admin_options(&a->cfg, &token, &token_len, argc, argv, environ);
    if (rc != 0) {
        sb_admin_options_free(&a->cfg);
        return rc == 1 ? 0 : 2;
    }
    if (sb_admin_auth_init(a, token, token_len) != 0) {
        fprintf(stderr, "switchboard-admin: --token-file: cannot prepare the token\n");
        free(token);
        sb_admin_options_free(&a->cfg);
        return 2;
    }
    memset(token, 0, token_len);
    free(token);
    snprintf(a->events_max, sizeof a->events_max, "%lld", (long long)a->cfg.events_max);
    make_holder(a);
    sb_reap_init(a);
    sb_reconcile_init(a);
    srandom((unsigned)(time(NULL) ^ (getpid() << 8)));

    uv_loop_t loop;
    uv_loop_init(&loop);
    a->loop = &loop;
    sb_cluster_opts_t co = {.loop = &loop,
                            .url = a->cfg.redis,
                            .name = "redis",
                            .timeout_ms = a->cfg.redis_timeout_ms,
                            .on_state = on_redis_state,
                            .observe = on_redis_reply,
                            .data = a};
    a->db = sb_cluster_new(&co);
    a->cluster = a->db && sb_cluster_is_cluster(a->db);
    if (a->db && sb_http_start(a) != 0)
        sb_listen_exit(); /* logged; lws cannot be torn down safely now (common/listen.h) */
    if (!a->db) {
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        sb_admin_auth_free(a);
        sb_admin_options_free(&a->cfg);
        return 1;
    }
    sb_grace_start(a);
    a->on_marked_away = sb_grace_kick;
    sb_lease_start(a);
    uv_signal_init(&loop, &a->sigint);
    uv_signal_init(&loop, &a->sigterm);
    a->sigint.data = a->sigterm.data = a;
    uv_signal_start(&a->sigint, on_signal, SIGINT);
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    sb_info("admin %s: prefix %s, reconcile every %lld ms", a->holder, a->cfg.prefix,
            (long long)a->cfg.reconcile_interval_ms);

    struct lws_context *lws = a->lws; /* sb_http_stop clears a->lws after starting teardown */
    uv_run(&loop, UV_RUN_DEFAULT);
    /* lws on a foreign loop closes its handles asynchronously: let them finish. */
    uv_run(&loop, UV_RUN_DEFAULT);
    /* Why destroy it again (as the node does): on a foreign loop lws 4.1.6 only starts its
     * teardown in the first call; it frees the context, and runs PROTOCOL_DESTROY (which frees
     * the connection-cap state), on a second call once the loop no longer runs its handles. */
    if (lws) {
        lws_context_destroy(lws);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    uv_walk(&loop, close_walk, NULL);
    int lc = uv_loop_close(&loop);
    sb_info("stopped (uv_loop_close=%d)", lc);
    sb_reap_free(a);
    sb_reconcile_free(a);
    sb_admin_auth_free(a);
    sb_admin_options_free(&a->cfg);
    return lc == 0 ? 0 : 1;
}
