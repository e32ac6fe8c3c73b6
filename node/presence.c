/* Presence: the node lease, the per-socket presence keys (refreshed with PEXPIRE for every
 * joined socket from one timer), the pub/sub probe, and what happens after a reconnect:
 * P:instance tells a Redis that lost its data (re-assert everything we hold) from one that
 * did not (a missing presence key means the socket was reaped: close it with 4000). */
#include "node.h"
#include "scripts.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef struct {
    sb_node_t *n;
    int refs;
    int lost;          /* P:instance changed: presence replies of this round mean nothing */
    char expected[64]; /* P:instance as known when the round was sent ("" = not verified) */
} round_t;

typedef struct {
    round_t *round;
    sb_session_t *s;
} refresh_t;

static void round_unref(round_t *rd)
{
    if (--rd->refs == 0)
        free(rd);
}

static void lease_key(const sb_node_t *n, char *buf, size_t len)
{
    snprintf(buf, len, "%s:node:%s", n->cfg.prefix, n->cfg.id);
}

static void write_lease(sb_node_t *n, sb_redis_cb cb, void *data)
{
    char key[160], nodes[160], ttl[32], body[512];
    lease_key(n, key, sizeof key);
    snprintf(nodes, sizeof nodes, "%s:nodes", n->cfg.prefix);
    snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    snprintf(body, sizeof body,
             "{\"epoch\":\"%s\",\"sockets\":%d,\"joined\":%d,\"started_ms\":%lld,"
             "\"draining\":%s,\"version\":\"%s\"}",
             n->epoch, n->nsessions, n->njoined, (long long)n->started_ms,
             n->draining ? "true" : "false", SB_VERSION);
    const char *sadd[] = {"SADD", nodes, n->cfg.id};
    sb_redis_argv(n->redis, NULL, NULL, 3, sadd, NULL);
    const char *set[] = {"SET", key, body, "PX", ttl};
    if (sb_redis_argv(n->redis, cb, data, 5, set, NULL) != 0 && cb)
        cb(NULL, "unavailable", data);
}

static void on_lease(redisReply *reply, const char *error, void *data)
{
    sb_node_t *n = data;
    n->lease_ok = !error && reply && !sb_reply_is_error(reply);
}

/* ---- data loss: re-assert ---------------------------------------------------------------- */

static uv_timer_t *resync_timer;

static void on_resync_timer(uv_timer_t *t)
{
    sb_node_t *n = t->data;
    sb_info("resyncing every room after Redis data loss");
    sb_room_resync_all(n);
}

static void on_close_free(uv_handle_t *h)
{
    free(h);
}

static void on_asserted(redisReply *reply, const char *error, void *data)
{
    sb_session_t *s = data;
    if (error || sb_reply_is_error(reply))
        sb_warn("session %s: re-assert failed: %s", s->id, error ? error : reply->str);
    sb_session_unref(s);
}

static void reassert_all(sb_node_t *n)
{
    int count = 0;
    for (sb_session_t *s = n->sessions; s; s = s->next) {
        if (!s->in_redis || s->closed || !(s->state == SS_JOINED || s->state == SS_JOINING))
            continue;
        char key[256], ttl[32];
        sb_key_room(key, sizeof key, n->cfg.prefix, s->room_name, "members");
        snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
        int nargs = 8 + s->nhalves;
        const char **args = calloc((size_t)nargs, sizeof(char *));
        if (!args)
            continue;
        args[0] = key;
        args[1] = n->cfg.prefix;
        args[2] = s->room_name;
        args[3] = s->id;
        args[4] = n->cfg.id;
        args[5] = n->epoch;
        args[6] = s->meta_json ? s->meta_json : "{}";
        args[7] = ttl;
        for (int i = 0; i < s->nhalves; i++)
            args[8 + i] = s->halves[i];
        sb_session_ref(s);
        if (sb_script_call(n->redis, sb_script("room_assert"), 1, nargs, args, NULL, on_asserted,
                           s) != 0)
            sb_session_unref(s);
        free(args);
        count++;
    }
    sb_warn("Redis lost its data: re-asserted %d sockets, the lease and their link halves", count);
    write_lease(n, on_lease, n);
    /* Why wait a heartbeat before resyncing: the other nodes re-assert their sockets when they
     * notice (on reconnect, or at their next heartbeat at the latest); a resync before then
     * would tell clients their peers left. */
    n->loss_grace_until_ms = sb_mono_ms() + n->cfg.heartbeat_ms + 200;
    if (!resync_timer) {
        resync_timer = malloc(sizeof *resync_timer);
        uv_timer_init(n->loop, resync_timer);
        resync_timer->data = n;
    }
    uv_timer_start(resync_timer, on_resync_timer, (uint64_t)n->cfg.heartbeat_ms + 200, 0);
}

/* ---- instance ---------------------------------------------------------------------------- */

static void check_instance_value(sb_node_t *n, const char *value, round_t *rd)
{
    if (!value)
        return;
    if (!n->instance[0]) {
        snprintf(n->instance, sizeof n->instance, "%s", value);
        n->instance_ok = 1;
        return;
    }
    if (strcmp(n->instance, value) != 0) {
        snprintf(n->instance, sizeof n->instance, "%s", value);
        if (rd)
            rd->lost = 1;
        reassert_all(n);
    }
    n->instance_ok = 1;
}

static void on_instance_get(redisReply *reply, const char *error, void *data);

static round_t *round_new(sb_node_t *n)
{
    round_t *rd = calloc(1, sizeof *rd);
    if (!rd)
        return NULL;
    rd->n = n;
    rd->refs = 1;
    if (n->instance_ok)
        snprintf(rd->expected, sizeof rd->expected, "%s", n->instance);
    return rd;
}

/* Sends GET P:instance for rd (taking a reference). */
static void get_instance(sb_node_t *n, round_t *rd)
{
    char key[160];
    snprintf(key, sizeof key, "%s:instance", n->cfg.prefix);
    rd->refs++;
    if (sb_redis_command(n->redis, on_instance_get, rd, "GET %s", key) != 0)
        rd->refs--;
}

static void on_instance_set(redisReply *reply, const char *error, void *data)
{
    (void)reply;
    sb_node_t *n = data;
    if (error)
        return;
    round_t *rd = round_new(n);
    if (!rd)
        return;
    get_instance(n, rd);
    round_unref(rd);
}

static void random_hex(char *out, size_t bytes)
{
    unsigned char raw[32];
    if (bytes > sizeof raw)
        bytes = sizeof raw;
    if (getrandom(raw, bytes, 0) != (ssize_t)bytes)
        memset(raw, 0, sizeof raw);
    for (size_t i = 0; i < bytes; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* The reply to GET P:instance of round rd (a heartbeat's, or a lone check's). */
static void on_instance_get(redisReply *reply, const char *error, void *data)
{
    round_t *rd = data;
    sb_node_t *n = rd->n;
    if (!error && reply && reply->type == REDIS_REPLY_NIL) {
        /* Missing: Redis lost its data (or is new). Create it; whoever wins the SET NX sets
         * the value every node then compares with. */
        char key[160], value[40];
        snprintf(key, sizeof key, "%s:instance", n->cfg.prefix);
        random_hex(value, 16);
        rd->lost = 1;
        sb_redis_command(n->redis, on_instance_set, n, "SET %s %s NX", key, value);
    } else if (!error && reply && reply->type == REDIS_REPLY_STRING) {
        /* Why compare with the value known when the round was sent: another node may already
         * have re-created P:instance after a data loss, and our own check of it may have run
         * between this round's GET and its PEXPIREs; those PEXPIREs then ran before our
         * re-assert and their zeros mean "lost", not "reaped". */
        if (!rd->expected[0] || strcmp(rd->expected, reply->str) != 0)
            rd->lost = 1;
        check_instance_value(n, reply->str, rd);
    } else {
        rd->lost = 1; /* no answer about the instance: trust nothing in this round */
    }
    round_unref(rd);
}

/* ---- heartbeat --------------------------------------------------------------------------- */

static void on_reaped_cleanup(redisReply *reply, const char *error, void *data)
{
    (void)reply;
    (void)error;
    free(data);
}

static void on_refresh(redisReply *reply, const char *error, void *data)
{
    refresh_t *f = data;
    sb_session_t *s = f->s;
    sb_node_t *n = s->node;
    if (!error && reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0 &&
        !f->round->lost && !s->closed && s->in_redis &&
        (s->state == SS_JOINED || s->state == SS_JOINING)) {
        /* Rule 1: the key is gone, so the socket was reaped (or is about to be). Never
         * re-create it: reap it properly (a no-op when the admin already did) and close. */
        char key[256], evmax[] = "1000";
        sb_key_room(key, sizeof key, n->cfg.prefix, s->room_name, "members");
        const char *args[] = {key, n->cfg.prefix, s->room_name, s->id, "expired", n->cfg.id, evmax};
        sb_script_call(n->redis, sb_script("room_remove"), 1, 7, args, NULL, on_reaped_cleanup,
                       NULL);
        sb_room_expire_session(s);
    }
    round_unref(f->round);
    sb_session_unref(s);
    free(f);
}

void sb_presence_heartbeat_now(sb_node_t *n)
{
    if (!sb_redis_up(n->redis))
        return;
    round_t *rd = round_new(n);
    if (!rd)
        return;
    char ttl[32];
    get_instance(n, rd);
    snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    /* Why pipelined PEXPIRE and not a script: the keys live in many rooms (slots); PEXPIRE
     * cannot re-create a reaped key, which is exactly rule 1. Replies come in order, after the
     * instance check of this round. */
    for (sb_session_t *s = n->sessions; s; s = s->next) {
        if (!s->in_redis || s->closed)
            continue;
        refresh_t *f = malloc(sizeof *f);
        if (!f)
            break;
        char pkey[256], suffix[128];
        snprintf(suffix, sizeof suffix, "presence:%s", s->id);
        sb_key_room(pkey, sizeof pkey, n->cfg.prefix, s->room_name, suffix);
        f->round = rd;
        f->s = s;
        rd->refs++;
        sb_session_ref(s);
        const char *argv[] = {"PEXPIRE", pkey, ttl};
        if (sb_redis_argv(n->redis, on_refresh, f, 3, argv, NULL) != 0) {
            rd->refs--;
            sb_session_unref(s);
            free(f);
            break;
        }
    }
    write_lease(n, on_lease, n);
    round_unref(rd);
}

static void on_heartbeat(uv_timer_t *t)
{
    sb_presence_heartbeat_now(t->data);
}

void sb_presence_on_up(sb_node_t *n)
{
    sb_scripts_load_all(n->redis);
    n->instance_ok = 0;
    n->lease_ok = 0;
    round_t *rd = round_new(n);
    if (rd) {
        get_instance(n, rd);
        round_unref(rd);
    }
    /* A heartbeat right away: the lease and every presence key, and any socket reaped while
     * we were away is found now. */
    sb_presence_heartbeat_now(n);
}

void sb_presence_start(sb_node_t *n)
{
    random_hex(n->epoch, 16);
    uv_timer_init(n->loop, &n->heartbeat);
    n->heartbeat.data = n;
    uv_timer_start(&n->heartbeat, on_heartbeat, (uint64_t)n->cfg.heartbeat_ms,
                   (uint64_t)n->cfg.heartbeat_ms);
}

void sb_presence_stop(sb_node_t *n)
{
    uv_timer_stop(&n->heartbeat);
    uv_close((uv_handle_t *)&n->heartbeat, NULL);
    if (resync_timer) {
        uv_timer_stop(resync_timer);
        uv_close((uv_handle_t *)resync_timer, on_close_free);
        resync_timer = NULL;
    }
}

/* ---- release at the end of a drain ------------------------------------------------------- */

typedef struct {
    sb_node_t *n;
    void (*cb)(sb_node_t *n);
} release_t;

static void on_forgotten(redisReply *reply, const char *error, void *data)
{
    (void)reply;
    release_t *rl = data;
    if (error)
        sb_warn("drain: could not remove the lease: %s", error);
    else
        sb_info("drain: lease removed");
    rl->cb(rl->n);
    free(rl);
}

void sb_presence_release(sb_node_t *n, void (*cb)(sb_node_t *n))
{
    char key[160];
    lease_key(n, key, sizeof key);
    release_t *rl = malloc(sizeof *rl);
    rl->n = n;
    rl->cb = cb;
    const char *del[] = {"DEL", key};
    sb_redis_argv(n->redis, NULL, NULL, 2, del, NULL);
    const char *args[] = {n->cfg.prefix, n->cfg.id};
    char nodes_key[160];
    snprintf(nodes_key, sizeof nodes_key, "%s:nodes", n->cfg.prefix);
    const char *cargs[] = {nodes_key, args[0], args[1]};
    if (sb_script_call(n->redis, sb_script("node_forget"), 1, 3, cargs, NULL, on_forgotten, rl) !=
        0) {
        rl->cb(n);
        free(rl);
    }
}
