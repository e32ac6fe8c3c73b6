/* Presence: the node lease, the per-socket presence keys (refreshed with PEXPIRE for every
 * joined socket from one timer), the pub/sub probe, and what happens after a reconnect:
 * P:instance tells a Redis that lost its data (re-assert everything we hold) from one that
 * did not (a missing presence key means the socket was reaped: close it with 4000). On a Redis
 * Cluster the cluster client also reports slots that changed hands (a failover may lose the
 * last writes): their sockets are re-asserted the same way (sb_presence_data_lost). */
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
    uint64_t topology; /* n->topology when the round was sent */
    /* The sockets this round refreshes (a reference each until their PEXPIRE is sent), sent
     * SB_REFRESH_WINDOW at a time: see sb_presence_heartbeat_now. */
    sb_session_t **todo;
    size_t ntodo, next;
    int inflight;
    char ttl[32];
} round_t;

/* PEXPIREs of one heartbeat in flight at once. All at once, 10,000 sockets left about 140 B
 * per socket of hiredis buffers and callback records in the heap for good (the allocator
 * keeps what a peak took); 256 keeps the pipeline full on loopback and on a LAN. */
#define SB_REFRESH_WINDOW 256

typedef struct {
    round_t *round;
    sb_session_t *s;
} refresh_t;

static void round_unref(round_t *rd)
{
    if (--rd->refs == 0) {
        free(rd->todo);
        free(rd);
    }
}

/* Writes the lease (and the node's entry in the index). Returns 0 and cb once later, or
 * SB_EUNAVAIL and cb is never called; cb may be NULL. */
static int write_lease(sb_node_t *n, sb_redis_cb cb, void *data)
{
    char key[SB_KEY_MAX], nodes[SB_KEY_MAX], ttl[32], body[512];
    sb_key_node_lease(key, sizeof key, n->cfg.prefix, n->cfg.id);
    sb_key_global(nodes, sizeof nodes, n->cfg.prefix, "nodes");
    snprintf(ttl, sizeof ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    snprintf(body, sizeof body,
             "{\"epoch\":\"%s\",\"sockets\":%d,\"joined\":%d,\"started_ms\":%lld,"
             "\"draining\":%s,\"version\":\"%s\"}",
             n->epoch, n->nsessions, n->njoined, (long long)n->started_ms,
             n->draining ? "true" : "false", SB_VERSION);
    const char *sadd[] = {"SADD", nodes, n->cfg.id};
    sb_cluster_command(n->db, nodes, strlen(nodes), NULL, NULL, 3, sadd, NULL);
    const char *set[] = {"SET", key, body, "PX", ttl};
    return sb_cluster_command(n->db, key, strlen(key), cb, data, 5, set, NULL);
}

static void on_lease(redisReply *reply, const char *error, void *data)
{
    sb_node_t *n = data;
    n->lease_ok = !error && reply && !sb_reply_is_error(reply);
}

/* ---- data loss: re-assert ---------------------------------------------------------------- */

void sb_presence_data_lost(sb_node_t *n, const unsigned char *slots, const char *why)
{
    int count = sb_route_reassert(n, slots);
    sb_warn("Redis may have lost data (%s): re-asserted %d sockets, the lease and their link "
            "halves",
            why, count);
    if (write_lease(n, on_lease, n) != 0)
        n->lease_ok = 0;
    sb_route_loss_grace(n);
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
        sb_presence_data_lost(n, NULL, "P:instance changed");
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
    rd->topology = n->topology;
    if (n->instance_ok)
        snprintf(rd->expected, sizeof rd->expected, "%s", n->instance);
    return rd;
}

/* Sends GET P:instance for rd (taking a reference). */
static void get_instance(sb_node_t *n, round_t *rd)
{
    char key[SB_KEY_MAX];
    sb_key_global(key, sizeof key, n->cfg.prefix, "instance");
    rd->refs++;
    const char *argv[] = {"GET", key};
    if (sb_cluster_command(n->db, key, strlen(key), on_instance_get, rd, 2, argv, NULL) != 0)
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
        char key[SB_KEY_MAX], value[40];
        sb_key_global(key, sizeof key, n->cfg.prefix, "instance");
        random_hex(value, 16);
        rd->lost = 1;
        const char *argv[] = {"SET", key, value, "NX"};
        sb_cluster_command(n->db, key, strlen(key), on_instance_set, n, 4, argv, NULL);
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

static void send_refreshes(round_t *rd);

static void on_refresh(redisReply *reply, const char *error, void *data)
{
    refresh_t *f = data;
    sb_session_t *s = f->s;
    round_t *rd = f->round;
    /* A round sent before slots changed hands may have asked a server that lost the key in a
     * failover: only a round that saw no change can tell a reaping. */
    if (!error && reply && reply->type == REDIS_REPLY_INTEGER && !rd->lost &&
        rd->topology == s->node->topology && !s->closed)
        sb_route_refreshed(s, reply->integer != 0);
    sb_session_unref(s);
    free(f);
    rd->inflight--;
    send_refreshes(rd);
    round_unref(rd);
}

/* Sends the round's next PEXPIREs, up to SB_REFRESH_WINDOW in flight. The round holds one
 * reference of its own until every socket of it was sent (or skipped). */
static void send_refreshes(round_t *rd)
{
    sb_node_t *n = rd->n;
    while (rd->next < rd->ntodo && rd->inflight < SB_REFRESH_WINDOW) {
        sb_session_t *s = rd->todo[rd->next++];
        const char *room = s->closed ? NULL : sb_route_present_room(s);
        refresh_t *f = room ? malloc(sizeof *f) : NULL;
        if (room && !f)
            sb_error("out of memory refreshing presence: a socket waits for the next heartbeat");
        if (!f) {
            sb_session_unref(s);
            continue;
        }
        char pkey[SB_KEY_MAX], suffix[16 + SB_SID_MAX];
        snprintf(suffix, sizeof suffix, "presence:%s", s->id);
        sb_key_room(pkey, sizeof pkey, n->cfg.prefix, room, suffix);
        f->round = rd;
        f->s = s; /* the todo reference moves to f */
        const char *argv[] = {"PEXPIRE", pkey, rd->ttl};
        rd->refs++;
        rd->inflight++;
        if (sb_cluster_command(n->db, pkey, strlen(pkey), on_refresh, f, 3, argv, NULL) != 0) {
            /* That slot's primary is not connected: the others still get theirs. */
            rd->refs--;
            rd->inflight--;
            sb_session_unref(s);
            free(f);
        }
    }
    if (rd->next == rd->ntodo && rd->todo) {
        free(rd->todo);
        rd->todo = NULL;
        round_unref(rd); /* the round's own reference for sending */
    }
}

void sb_presence_heartbeat_now(sb_node_t *n)
{
    /* On a cluster, a slot nobody serves must not stop the lease and the other slots'
     * presence (their primaries are there): each command fails alone when its slot's primary
     * is not connected. Without this the admin reaped every socket of the node. */
    if (!n->db_up && !n->cluster)
        return;
    if (n->cluster && !n->db_up && !sb_cluster_partly_up(n->db)) {
        /* Every primary lost (on_db_state kept the marks while some were left): verify the
         * instance and write the lease again before being ready. */
        n->instance_ok = 0;
        n->lease_ok = 0;
    }
    round_t *rd = round_new(n);
    if (!rd)
        return;
    get_instance(n, rd);
    snprintf(rd->ttl, sizeof rd->ttl, "%lld", (long long)n->cfg.presence_ttl_ms);
    /* Why pipelined PEXPIRE and not a script: the keys live in many rooms (slots); PEXPIRE
     * cannot re-create a reaped key, which is exactly rule 1. Replies come in order, after the
     * instance check of this round. The sockets are taken now (a reference each) and sent a
     * window at a time, so a socket that closes meanwhile is skipped, never freed under us. */
    size_t count = 0;
    for (sb_session_t *s = n->sessions; s; s = s->next)
        count += !s->closed && sb_route_present_room(s);
    rd->todo = count ? malloc(count * sizeof *rd->todo) : NULL;
    if (count && !rd->todo)
        sb_error("out of memory refreshing presence: the sockets wait for the next heartbeat");
    for (sb_session_t *s = n->sessions; s && rd->todo && rd->ntodo < count; s = s->next) {
        if (s->closed || !sb_route_present_room(s))
            continue;
        sb_session_ref(s);
        rd->todo[rd->ntodo++] = s;
    }
    if (write_lease(n, on_lease, n) != 0)
        n->lease_ok = 0; /* its slot's primary is not connected: not written */
    if (rd->todo) {
        rd->refs++; /* the round's own reference for sending, dropped by send_refreshes */
        send_refreshes(rd);
    }
    round_unref(rd);
}

static void on_heartbeat(uv_timer_t *t)
{
    sb_presence_heartbeat_now(t->data);
}

void sb_presence_on_up(sb_node_t *n)
{
    /* A single Redis may be back empty: nothing counts before the instance is read again. A
     * cluster back from a partial outage keeps its marks (on_db_state in main.c). */
    if (!n->cluster) {
        n->instance_ok = 0;
        n->lease_ok = 0;
    }
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
    uv_timer_init(n->loop, &n->loss_timer);
    n->loss_timer.data = n;
    uv_timer_init(n->loop, &n->heartbeat);
    n->heartbeat.data = n;
    uv_timer_start(&n->heartbeat, on_heartbeat, (uint64_t)n->cfg.heartbeat_ms,
                   (uint64_t)n->cfg.heartbeat_ms);
}

void sb_presence_stop(sb_node_t *n)
{
    uv_timer_stop(&n->heartbeat);
    uv_close((uv_handle_t *)&n->heartbeat, NULL);
    uv_timer_stop(&n->loss_timer);
    uv_close((uv_handle_t *)&n->loss_timer, NULL);
}

/* ---- release at the end of a drain ------------------------------------------------------- */

typedef struct {
    sb_node_t *n;
    void (*cb)(sb_node_t *n);
} release_t;

static void on_forgotten(redisReply *reply, const char *error, void *data)
{
    release_t *rl = data;
    if (error || sb_reply_is_error(reply))
        sb_warn("drain: could not remove the lease: %s", error ? error : reply->str);
    else
        sb_info("drain: lease removed");
    rl->cb(rl->n);
    free(rl);
}

int sb_presence_release(sb_node_t *n, void (*cb)(sb_node_t *n))
{
    char key[SB_KEY_MAX], nodes_key[SB_KEY_MAX];
    sb_key_node_lease(key, sizeof key, n->cfg.prefix, n->cfg.id);
    sb_key_global(nodes_key, sizeof nodes_key, n->cfg.prefix, "nodes");
    release_t *rl = malloc(sizeof *rl);
    if (!rl)
        return SB_ENOMEM;
    rl->n = n;
    rl->cb = cb;
    /* Out of the reap index only when no socket of ours is left in a room: otherwise the admin
     * must still find us there to reap what our removals could not remove. */
    if (n->njoined == 0) {
        const char *srem[] = {"SREM", nodes_key, n->cfg.id};
        sb_cluster_command(n->db, nodes_key, strlen(nodes_key), NULL, NULL, 3, srem, NULL);
    }
    const char *del[] = {"DEL", key};
    int rc = sb_cluster_command(n->db, key, strlen(key), on_forgotten, rl, 2, del, NULL);
    if (rc != 0)
        free(rl);
    return rc;
}

/* ---- the pub/sub probe --------------------------------------------------------------------- */

/* Publishes a probe to our own channel; the pub/sub connection must deliver it back within the
 * Redis timeout of Redis taking it (a subscription can look healthy and deliver nothing). The
 * clock starts at the PUBLISH's reply, not at the send: behind a queue of slow commands the
 * PUBLISH itself waits, and that is the command connection's delay (its own timeouts answer
 * it), not a dead subscription. */
typedef struct {
    sb_node_t *n;
    uint64_t nonce;
} probe_t;

static void on_probe_published(redisReply *reply, const char *error, void *data)
{
    probe_t *p = data;
    sb_node_t *n = p->n;
    if (n->probe_nonce == p->nonce) {
        if (error || sb_reply_is_error(reply))
            n->probe_nonce = 0; /* not published: the next tick sends another */
        else
            n->probe_published_ms = sb_mono_ms();
    }
    free(p);
}

static void send_probe(sb_node_t *n)
{
    char body[96];
    uint64_t nonce = ++n->probe_counter;
    int len =
        snprintf(body, sizeof body, "{\"t\":\"probe\",\"nonce\":%llu}", (unsigned long long)nonce);
    probe_t *p = malloc(sizeof *p);
    if (!p)
        return;
    *p = (probe_t){n, nonce};
    if (sb_cluster_publish(n->db, n->home, body, (size_t)len, on_probe_published, p) == 0) {
        n->probe_nonce = nonce;
        n->probe_sent_ms = sb_mono_ms();
        n->probe_published_ms = 0;
    } else {
        free(p);
    }
}

void sb_presence_on_pubsub_up(sb_node_t *n)
{
    n->pubsub_ok = 0;
    n->probe_nonce = 0;
    send_probe(n);
}

void sb_presence_on_probe(sb_node_t *n, uint64_t nonce)
{
    if (n->probe_nonce && nonce == n->probe_nonce) {
        n->pubsub_ok = 1;
        n->probe_nonce = 0;
    }
}

void sb_presence_probe_tick(sb_node_t *n, int64_t now_ms)
{
    /* A probe every 500 ms; one not back within the Redis timeout means the subscription is
     * dead even if its TCP connection looks fine: reconnect it. */
    if (!n->db_up)
        return;
    if (n->probe_nonce && n->probe_published_ms &&
        now_ms - n->probe_published_ms > n->cfg.redis_timeout_ms) {
        sb_warn("pubsub probe not delivered within %lld ms of its PUBLISH: reconnecting",
                (long long)n->cfg.redis_timeout_ms);
        n->pubsub_ok = 0;
        n->probe_nonce = 0;
        sb_cluster_drop_subscriber(n->db, n->home, "probe timeout");
    } else if (!n->probe_nonce && now_ms - n->probe_sent_ms >= 500 - 25) {
        /* 500 less a margin: the probe's time is read a few ms after its sweep's grid point,
         * and an idle node sweeps every 500 ms exactly, so ">= 500" skipped every other one. */
        send_probe(n);
    }
}
