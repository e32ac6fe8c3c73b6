/* The routing client (see cluster.h). Owns the slot map (slot -> primary_t), the primaries
 * (each with a command sb_redis_t and, once a channel lives there, a sharded subscriber), the
 * seed connections used to read the map when no primary answers, the commands being retried
 * (in the order they were first sent, and with them the later commands for the same key, which
 * wait behind them), and the list of subscribed channels. sb_redis_t does connecting, timeouts and
 * reconnects; this file only decides where things go. */
#include "cluster.h"
#include "grid.h"
#include "log.h"
#include "redis_url.h"
#include "scripts.h"
#include "slotmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    TICK_MS = 20,
    RECEIVER_WAIT_MS = 10, /* doubling up to 160: a dead receiver costs ~5 publishes a second */
    RECEIVER_WAIT_MAX_MS = 160,
    /* Map re-reads: soon after a hint (MOVED, lost primary), then this often while broken, and
     * this often anyway (a safety net for changes nothing told us about). */
    REFRESH_SOON_MS = 50,
    REFRESH_BROKEN_MS = 250,
    REFRESH_IDLE_MS = 5000,
    /* Held commands are counted per hash bucket of their key, so a new command asks "is an
     * earlier one with my key held?" with one array read in the common case. */
    ORDER_BUCKETS = 4096,
};

typedef struct primary {
    sb_cluster_t *c;
    char *host;
    int port;
    char *id;
    char run_id[48];
    int info_due; /* INFO was answered "timeout": re-sent by on_tick while connected */
    int nslots;
    sb_redis_t *cmd;
    sb_redis_t *sub; /* created for the first channel on this shard */
} primary_t;

typedef struct req {
    sb_cluster_t *c;
    unsigned slot;
    sb_redis_cb cb;
    void *data;
    const sb_embed_t *script; /* for NOSCRIPT */
    int argc;
    const char **argv;
    size_t *lens;
    primary_t *via;          /* where it was last sent (valid while its reply is pending) */
    int redirects, noscript; /* redirects: MOVED/ASK/TRYAGAIN met so far */
    int until_received;      /* SPUBLISH: again while nobody received it (see cluster.h); its
                              * reply may be read late (sb_redis_argv_lazy) */
    int64_t receiver_wait;   /* the next wait for that */
    int asking;              /* next send goes to ask_host:ask_port after ASKING */
    char ask_host[256];
    int ask_port;
    int64_t deadline, due;
    /* Held: retried at least once (or waiting behind one that was), so in c's held list until
     * answered; sent: on a connection now (else it waits for `due`). A command keeps its place in
     * the list across retries, which is what keeps a key's commands in order. */
    int held, sent;
    uint64_t seq;    /* the order it was given in */
    unsigned bucket; /* of key, while held */
    const char *key; /* the routing key (a copy in blob), which orders commands */
    size_t keylen;
    struct req *prev, *next; /* in the held list */
    char why[160];           /* the error text given to cb */
    /* lens[argc], argv[argc], then the argument bytes (each NUL terminated). Aligned for the
     * arrays: lens first (size_t), then pointers. */
    _Alignas(max_align_t) char blob[];
} req_t;

typedef struct {
    char *name;
    unsigned slot;
    primary_t *on; /* the primary whose subscriber has it, or NULL */
    int stale;     /* Redis refused or dropped it: subscribe again at the next map */
} channel_t;

struct sb_cluster {
    sb_cluster_opts_t o;
    char *url, *name;
    sb_redis_url_t u;
    int cluster;
    primary_t **prim;
    int nprim;
    primary_t *owner[SB_SLOTS];
    int map_loaded;
    sb_redis_t **seeds;
    int nseeds;
    int refreshing;          /* a CLUSTER SLOTS in flight */
    char *refresh_host;      /* the host it went to (for "" endpoints) */
    int64_t refresh_at;      /* next map read */
    int next_source;         /* round robin over primaries for map reads */
    req_t *held, *held_tail; /* see req_t; in the order given */
    req_t *failing;          /* send_held's: out of time, their callbacks to come */
    uint64_t seq;            /* of the last command given */
    int nheld;
    unsigned nheld_by[ORDER_BUCKETS];
    unsigned char blocked[ORDER_BUCKETS / 8]; /* on_tick's: a bucket with an earlier one waiting */
    channel_t *chans;
    int nchans;
    int was_up;
    int closed;
    /* Slots whose owner a MOVED changed since the last map: reported with the next map. */
    unsigned char moved[SB_SLOTS / 8];
    int nmoved;
    sb_cluster_stats_t stats;
    uv_timer_t tick;
};

static void check_state(sb_cluster_t *c);
static void tick_within(sb_cluster_t *c, int64_t ms);

/* --- requests ------------------------------------------------------------------------- */

static unsigned key_bucket(const req_t *q)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < q->keylen; i++)
        h = (h ^ (unsigned char)q->key[i]) * 16777619u;
    return h & (ORDER_BUCKETS - 1);
}

/* q joins the held list in the order commands were given: usually at its tail; before the
 * commands given after it when they got there first (they waited behind an earlier one of their
 * key while q was still on a connection, its reply in a later read). */
static void hold(req_t *q)
{
    sb_cluster_t *c = q->c;
    if (q->held)
        return;
    q->held = 1;
    q->bucket = key_bucket(q);
    c->nheld_by[q->bucket]++;
    c->nheld++;
    req_t *after = c->held_tail;
    while (after && after->seq > q->seq)
        after = after->prev;
    q->prev = after;
    q->next = after ? after->next : c->held;
    if (q->next)
        q->next->prev = q;
    else
        c->held_tail = q;
    if (after)
        after->next = q;
    else
        c->held = q;
    tick_within(c, 1);
}

static void unhold(req_t *q)
{
    sb_cluster_t *c = q->c;
    if (!q->held)
        return;
    q->held = 0;
    c->nheld_by[q->bucket]--;
    c->nheld--;
    if (q->prev)
        q->prev->next = q->next;
    else
        c->held = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        c->held_tail = q->prev;
    q->prev = q->next = NULL;
}

static int same_key(const req_t *p, const req_t *q)
{
    return p->slot == q->slot && p->keylen == q->keylen && memcmp(p->key, q->key, q->keylen) == 0;
}

/* 1 when an earlier command with q's key is held: q must not overtake it. */
static int behind_held(const req_t *q)
{
    const sb_cluster_t *c = q->c;
    if (c->nheld == 0 || c->nheld_by[key_bucket(q)] == 0)
        return 0;
    for (const req_t *p = c->held_tail; p; p = p->prev)
        if (same_key(p, q))
            return 1;
    return 0;
}

/* 1 when q (held) has an earlier command of its key waiting for its retry: q, turned away too,
 * must not be sent again before it, even where it alone could go at once (fewer redirects so
 * far, or NOSCRIPT where the earlier one was told to wait). */
static int earlier_waiting(const req_t *q)
{
    if (!q->held || q->c->nheld_by[q->bucket] < 2)
        return 0;
    for (const req_t *p = q->prev; p; p = p->prev)
        if (!p->sent && same_key(p, q))
            return 1;
    return 0;
}

static void finish(req_t *q, redisReply *reply, const char *error)
{
    unhold(q);
    if (q->cb)
        q->cb(reply, error, q->data);
    free(q);
}

/* Fails q with "unavailable: <what><detail>" (see cluster.h: callers map it to unavailable). */
static void fail_req(req_t *q, const char *what, const char *detail)
{
    snprintf(q->why, sizeof q->why, "unavailable: %s%s", what, detail);
    finish(q, NULL, q->why);
}

static primary_t *find_primary(sb_cluster_t *c, const char *host, int port)
{
    for (int i = 0; i < c->nprim; i++)
        if (c->prim[i]->port == port && strcmp(c->prim[i]->host, host) == 0)
            return c->prim[i];
    return NULL;
}

static primary_t *add_primary(sb_cluster_t *c, const char *host, int port, const char *id);

static void on_req_reply(redisReply *reply, const char *error, void *data);

/* Sends q to the slot's owner (or, after ASK, to the ASK target). 0, or SB_EUNAVAIL when the
 * target is unknown or not connected, SB_ENOMEM. */
static int dispatch(req_t *q)
{
    sb_cluster_t *c = q->c;
    primary_t *p;
    if (q->asking) {
        p = find_primary(c, q->ask_host, q->ask_port);
        if (!p)
            p = add_primary(c, q->ask_host, q->ask_port, "");
    } else {
        p = c->owner[q->slot];
    }
    if (!p || !sb_redis_up(p->cmd))
        return SB_EUNAVAIL;
    if (q->asking) {
        /* ASKING applies to the next command on this connection only; both go out back to
         * back, so nothing else can come between them. */
        const char *asking = "ASKING";
        size_t alen = 6;
        if (sb_redis_argv(p->cmd, NULL, NULL, 1, &asking, &alen) != 0)
            return SB_EUNAVAIL;
    }
    int rc = (q->until_received ? sb_redis_argv_lazy : sb_redis_argv)(p->cmd, on_req_reply, q,
                                                                      q->argc, q->argv, q->lens);
    if (rc == 0) {
        q->via = p;
        q->sent = 1;
    }
    return rc;
}

/* Retries q from the tick at now + delay_ms (or as soon as its target is connected), in its
 * place among the held commands (a new one goes last). */
static void delay_req(req_t *q, int64_t delay_ms)
{
    q->due = sb_mono_ms() + delay_ms;
    q->sent = 0;
    hold(q);
}

static void want_refresh(sb_cluster_t *c, int64_t within_ms)
{
    int64_t at = sb_mono_ms() + within_ms;
    if (c->cluster && at < c->refresh_at) {
        c->refresh_at = at;
        tick_within(c, within_ms);
    }
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void on_req_reply(redisReply *reply, const char *error, void *data)
{
    req_t *q = data;
    sb_cluster_t *c = q->c;
    primary_t *via = q->via;
    q->via = NULL;
    q->sent = 0;
    if (error) {
        /* Why no retry: the command may have run before the connection dropped. The drop
         * itself makes the map be read again (on_cmd_down). */
        if (c->closed)
            finish(q, NULL, error);
        else
            fail_req(q, "", error);
        return;
    }
    if (reply->type != REDIS_REPLY_ERROR) {
        /* Nobody subscribed on the slot's shard: after a slot moved, the receivers are
         * re-subscribing on the new owner; published now, the message would be lost. */
        int64_t wait = q->receiver_wait ? q->receiver_wait : RECEIVER_WAIT_MS;
        if (q->until_received && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0 &&
            q->deadline - sb_mono_ms() > wait) {
            q->receiver_wait = wait * 2 < RECEIVER_WAIT_MAX_MS ? wait * 2 : RECEIVER_WAIT_MAX_MS;
            delay_req(q, wait);
            return;
        }
        finish(q, reply, NULL);
        return;
    }
    int was_asking = q->asking;
    q->asking = 0;
    int64_t delay = 0;
    sb_next_t next = sb_redirect_next(reply->str, reply->len, q->script != NULL, q->redirects,
                                      q->deadline - sb_mono_ms(), &delay);
    if (next != SB_NEXT_DONE) {
        sb_redirect_t rd;
        if (sb_redirect_parse(reply->str, reply->len, &rd) != 0)
            c->stats.tryagain++;
        else if (rd.ask)
            c->stats.ask++;
        else {
            c->stats.moved++;
            /* The slot moved for good: route it there now, read the whole map soon (other
             * slots probably moved too). ":port" (unknown endpoint): the host that answered. */
            const char *host = rd.host[0] ? rd.host : via->host;
            primary_t *p = find_primary(c, host, rd.port);
            if (!p)
                p = add_primary(c, host, rd.port, "");
            if (p && rd.slot < SB_SLOTS && c->owner[rd.slot] != p) {
                primary_t *old = c->owner[rd.slot];
                c->moved[rd.slot >> 3] |= (unsigned char)(1u << (rd.slot & 7));
                c->nmoved++;
                if (old)
                    old->nslots--;
                p->nslots++;
                c->owner[rd.slot] = p;
            }
            want_refresh(c, REFRESH_SOON_MS);
        }
        q->redirects++;
        if (next == SB_NEXT_FAIL) {
            fail_req(q, "slot moving or redirected too often, last: ", reply->str);
            return;
        }
        if (next == SB_NEXT_FOLLOW && rd.ask) {
            /* The slot is being migrated and this key already left: ask the target for this
             * one command; the slot still belongs to the source (map unchanged). */
            q->asking = 1;
            snprintf(q->ask_host, sizeof q->ask_host, "%s", rd.host[0] ? rd.host : via->host);
            q->ask_port = rd.port;
        }
        /* WAIT: TRYAGAIN, a script told ASK (it waits until the slot has moved), or a
         * redirect loop: to the owner again, later. */
        hold(q); /* later commands of its key wait until it is answered */
        if (next == SB_NEXT_WAIT || earlier_waiting(q))
            delay_req(q, next == SB_NEXT_WAIT ? delay : 0);
        else if (dispatch(q) != 0)
            delay_req(q, TICK_MS); /* target not connected yet */
        return;
    }
    if (starts(reply->str, "NOSCRIPT") && q->script && !q->noscript) {
        q->noscript = 1;
        c->stats.noscript++;
        sb_info("redis %s: script %s not loaded on %s:%d: loading", c->name, q->script->name,
                via->host, via->port);
        const char *load[3] = {"SCRIPT", "LOAD", q->script->data};
        size_t load_lens[3] = {6, 4, q->script->len};
        const char *asking = "ASKING";
        size_t alen = 6;
        if (earlier_waiting(q)) {
            /* The script is loaded now; the call waits for the tick, behind the earlier one. */
            sb_redis_argv(via->cmd, NULL, NULL, 3, load, load_lens);
            delay_req(q, 0);
            return;
        }
        /* Pipelined on the same connection: Redis runs them in order. After an ASK the retry
         * needs its own ASKING (it only covers the next command). */
        if (sb_redis_argv(via->cmd, NULL, NULL, 3, load, load_lens) == 0 &&
            (!was_asking || sb_redis_argv(via->cmd, NULL, NULL, 1, &asking, &alen) == 0) &&
            sb_redis_argv(via->cmd, on_req_reply, q, q->argc, q->argv, q->lens) == 0) {
            q->via = via;
            q->sent = 1;
            return;
        }
        fail_req(q, "", "connection lost");
        return;
    }
    if (starts(reply->str, "CLUSTERDOWN")) {
        c->stats.clusterdown++;
        want_refresh(c, REFRESH_SOON_MS);
        fail_req(q, "", reply->str);
        return;
    }
    finish(q, reply, NULL);
}

/* Builds a request for key (routing and order) with copies of argv. The first nprefix entries of
 * the final argv are prefix[] (e.g. EVALSHA sha n). */
static req_t *new_req(sb_cluster_t *c, const char *key, size_t keylen, sb_redis_cb cb, void *data,
                      int nprefix, const char **prefix, int argc, const char **argv,
                      const size_t *lens)
{
    size_t total = keylen + 1;
    for (int i = 0; i < nprefix; i++)
        total += strlen(prefix[i]) + 1;
    for (int i = 0; i < argc; i++)
        total += (lens ? lens[i] : strlen(argv[i])) + 1;
    int n = nprefix + argc;
    /* One allocation per command (the relay path sends one per signal): the struct, then the
     * argv and lens arrays, then the argument bytes, then the key's. */
    size_t arrays = (size_t)n * (sizeof(char *) + sizeof(size_t));
    req_t *q = calloc(1, sizeof *q + arrays + total);
    if (!q)
        return NULL;
    q->c = c;
    q->slot = sb_slot(key, keylen);
    q->cb = cb;
    q->data = data;
    q->argc = n;
    q->lens = (size_t *)(void *)q->blob;
    q->argv = (const char **)(void *)(q->blob + (size_t)n * sizeof(size_t));
    char *p = q->blob + arrays;
    for (int i = 0; i < q->argc; i++) {
        const char *a = i < nprefix ? prefix[i] : argv[i - nprefix];
        size_t l = i < nprefix ? strlen(a) : (lens ? lens[i - nprefix] : strlen(a));
        memcpy(p, a, l);
        p[l] = '\0';
        q->argv[i] = p;
        q->lens[i] = l;
        p += l + 1;
    }
    memcpy(p, key, keylen);
    p[keylen] = '\0';
    q->key = p;
    q->keylen = keylen;
    q->seq = ++c->seq;
    q->deadline = sb_mono_ms() + c->o.timeout_ms;
    return q;
}

static int start(req_t *q)
{
    if (!q)
        return SB_ENOMEM;
    if (q->c->closed) {
        free(q);
        return SB_EUNAVAIL;
    }
    if (behind_held(q)) {
        /* An earlier command with this key waits for a retry (a slot moving, nobody receiving
         * yet): sent now, this one could run first. It waits behind it, answered as it is. */
        delay_req(q, 0);
        return 0;
    }
    int rc = dispatch(q);
    if (rc != 0)
        free(q);
    return rc;
}

int sb_cluster_command(sb_cluster_t *c, const char *key, size_t keylen, sb_redis_cb cb, void *data,
                       int argc, const char **argv, const size_t *lens)
{
    if (argc < 1)
        return SB_EINVAL;
    return start(new_req(c, key, keylen, cb, data, 0, NULL, argc, argv, lens));
}

int sb_cluster_script(sb_cluster_t *c, const sb_embed_t *script, int nkeys, int nargs,
                      const char **args, const size_t *lens, sb_redis_cb cb, void *data)
{
    if (nkeys < 0 || nkeys > nargs)
        return SB_EINVAL;
    const char *key = nkeys > 0 ? args[0] : ""; /* no key: slot 0 */
    size_t keylen = nkeys > 0 ? (lens ? lens[0] : strlen(args[0])) : 0;
    char n[16];
    snprintf(n, sizeof n, "%d", nkeys);
    const char *prefix[3] = {"EVALSHA", script->sha1, n};
    req_t *q = new_req(c, key, keylen, cb, data, 3, prefix, nargs, args, lens);
    if (q)
        q->script = script;
    return start(q);
}

int sb_cluster_publish(sb_cluster_t *c, const char *channel, const char *payload, size_t len,
                       sb_redis_cb cb, void *data)
{
    const char *argv[3] = {"SPUBLISH", channel, payload};
    size_t lens[3] = {8, strlen(channel), len};
    return sb_cluster_command(c, channel, lens[1], cb, data, 3, argv, lens);
}

int sb_cluster_publish_received(sb_cluster_t *c, const char *channel, const char *payload,
                                size_t len, sb_redis_cb cb, void *data)
{
    const char *argv[3] = {"SPUBLISH", channel, payload};
    size_t lens[3] = {8, strlen(channel), len};
    req_t *q = new_req(c, channel, lens[1], cb, data, 0, NULL, 3, argv, lens);
    if (q)
        q->until_received = 1;
    return start(q);
}

/* --- primaries -------------------------------------------------------------------------- */

static void fire_topology(sb_cluster_t *c, const unsigned char *bits, const char *why)
{
    if (c->o.on_topology && !c->closed)
        c->o.on_topology(c, bits, why, c->o.data);
}

static void on_info(redisReply *reply, const char *error, void *data)
{
    primary_t *p = data;
    if (error && strcmp(error, "timeout") == 0) {
        /* Answered "timeout" by the connection's timer (Redis ran behind, or the connection
         * is being dropped as hung: p lives on either way; only "closing" frees it). Without
         * a run id a later restart of this server would go unnoticed: ask again. */
        p->info_due = 1;
        tick_within(p->c, 1);
        return;
    }
    if (error || !reply || reply->type != REDIS_REPLY_STRING)
        return; /* the connection is going (or gone): p may be about to be freed */
    const char *r = strstr(reply->str, "run_id:");
    if (!r)
        return;
    r += 7;
    size_t n = strcspn(r, "\r\n");
    if (n >= sizeof p->run_id)
        n = sizeof p->run_id - 1;
    char run_id[sizeof p->run_id];
    memcpy(run_id, r, n);
    run_id[n] = '\0';
    int restarted = p->run_id[0] && strcmp(p->run_id, run_id) != 0;
    memcpy(p->run_id, run_id, n + 1);
    if (!restarted)
        return;
    sb_cluster_t *c = p->c;
    sb_warn("redis %s: %s:%d restarted (run id changed): its data may be older than ours", c->name,
            p->host, p->port);
    unsigned char bits[SB_SLOTS / 8] = {0};
    for (unsigned s = 0; s < SB_SLOTS; s++)
        if (c->owner[s] == p)
            bits[s >> 3] |= (unsigned char)(1u << (s & 7));
    fire_topology(c, bits, "restart");
}

static void on_cmd_up(sb_redis_t *r, void *data)
{
    primary_t *p = data;
    /* Every script on every primary as it comes up: a failover or restart lands on a server
     * whose script cache is empty, and a NOSCRIPT retry costs a round trip. */
    sb_scripts_load_all(r);
    p->info_due = 0;
    sb_redis_command(r, on_info, p, "INFO server");
    check_state(p->c);
}

static void on_cmd_down(sb_redis_t *r, const char *why, void *data)
{
    (void)r;
    (void)why;
    primary_t *p = data;
    /* How a failover is noticed: the primary's connection drops; the map is then re-read
     * until a replica took over its slots. */
    want_refresh(p->c, REFRESH_SOON_MS);
    check_state(p->c);
}

static void on_sub_message(sb_redis_t *r, const char *channel, const char *payload, size_t len,
                           void *data)
{
    (void)r;
    primary_t *p = data;
    sb_cluster_t *c = p->c;
    if (c->o.on_message && !c->closed)
        c->o.on_message(c, channel, payload, len, c->o.data);
}

static channel_t *find_chan(sb_cluster_t *c, const char *name)
{
    for (int i = 0; i < c->nchans; i++)
        if (strcmp(c->chans[i].name, name) == 0)
            return &c->chans[i];
    return NULL;
}

static void on_sub_error(sb_redis_t *r, const char *channel, const char *error, void *data)
{
    (void)r;
    primary_t *p = data;
    sb_cluster_t *c = p->c;
    channel_t *ch = find_chan(c, channel);
    sb_info("redis %s: subscription %s on %s:%d lost (%s): reading the map", c->name, channel,
            p->host, p->port, error);
    if (ch && ch->on == p)
        ch->stale = 1;
    want_refresh(c, REFRESH_SOON_MS);
}

static void on_sub_confirmed(sb_redis_t *r, const char *channel, void *data)
{
    (void)r;
    primary_t *p = data;
    sb_cluster_t *c = p->c;
    channel_t *ch = find_chan(c, channel);
    if (ch && ch->on == p && c->o.on_subscribed && !c->closed)
        c->o.on_subscribed(c, channel, c->o.data);
}

/* The URL of a primary: the seed URL's credentials with this host and port. */
static char *primary_url(sb_cluster_t *c, const char *host, int port)
{
    if (!c->cluster)
        return strdup(c->url);
    char cred[1024] = "";
    size_t n = 0;
    /* Percent-encode user and password: they are decoded by sb_redis_url_parse again. */
    const char *parts[2] = {c->u.user, c->u.pass};
    for (int i = 0; i < 2; i++) {
        if (i == 1 && !c->u.pass)
            break;
        if (i == 1)
            cred[n++] = ':';
        for (const char *s = parts[i] ? parts[i] : ""; *s && n + 4 < sizeof cred; s++) {
            unsigned char ch = (unsigned char)*s;
            if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                ch == '-' || ch == '.' || ch == '_' || ch == '~')
                cred[n++] = (char)ch;
            else
                n += (size_t)snprintf(cred + n, 4, "%%%02X", ch);
        }
        if (i == 1)
            cred[n++] = '@';
    }
    cred[n] = '\0';
    size_t len = strlen(cred) + strlen(host) + 32;
    char *url = malloc(len);
    if (url)
        snprintf(url, len, strchr(host, ':') ? "redis://%s[%s]:%d" : "redis://%s%s:%d", cred, host,
                 port);
    return url;
}

/* The caller's latency observer gets its own data, not the primary. */
static void on_observe(double seconds, void *data)
{
    primary_t *p = data;
    if (p->c->o.observe)
        p->c->o.observe(seconds, p->c->o.data);
}

static primary_t *add_primary(sb_cluster_t *c, const char *host, int port, const char *id)
{
    primary_t **v = realloc(c->prim, sizeof *v * (size_t)(c->nprim + 1));
    if (!v)
        return NULL;
    c->prim = v;
    primary_t *p = calloc(1, sizeof *p);
    char *url = primary_url(c, host, port);
    if (!p || !url || !(p->host = strdup(host)) || !(p->id = strdup(id))) {
        if (p) {
            free(p->host);
            free(p->id);
        }
        free(p);
        free(url);
        return NULL;
    }
    p->c = c;
    p->port = port;
    sb_redis_opts_t ro = {
        .loop = c->o.loop,
        .url = url,
        .name = c->name,
        .timeout_ms = c->o.timeout_ms,
        .lazy_ms = c->o.lazy_ms,
        .on_up = on_cmd_up,
        .on_down = on_cmd_down,
        .observe = on_observe,
        .data = p,
    };
    p->cmd = sb_redis_new(&ro);
    free(url);
    if (!p->cmd) {
        free(p->host);
        free(p->id);
        free(p);
        return NULL;
    }
    c->prim[c->nprim++] = p;
    sb_info("redis %s: primary %s:%d %s", c->name, host, port, id);
    return p;
}

static sb_redis_t *sub_of(primary_t *p)
{
    if (p->sub)
        return p->sub;
    char *url = primary_url(p->c, p->host, p->port);
    if (!url)
        return NULL;
    char name[128];
    snprintf(name, sizeof name, "%s-sub", p->c->name);
    sb_redis_opts_t ro = {
        .loop = p->c->o.loop,
        .url = url,
        .name = name,
        .timeout_ms = p->c->o.timeout_ms,
        .subscriber = 1,
        .sharded = 1,
        .on_message = on_sub_message,
        .on_sub_error = on_sub_error,
        .on_subscribed = on_sub_confirmed,
        .data = p,
    };
    p->sub = sb_redis_new(&ro);
    free(url);
    return p->sub;
}

/* Closes p's connections and frees it; it must no longer be in the map or a channel's .on.
 * Pending commands get "closing" from inside sb_redis_close: their handlers do not touch p. */
static void drop_primary(sb_cluster_t *c, primary_t *p)
{
    for (int i = 0; i < c->nprim; i++) {
        if (c->prim[i] == p) {
            c->prim[i] = c->prim[--c->nprim];
            break;
        }
    }
    if (!c->closed)
        sb_info("redis %s: %s:%d no longer serves any slot", c->name, p->host, p->port);
    sb_redis_t *cmd = p->cmd, *sub = p->sub;
    p->cmd = p->sub = NULL;
    if (sub)
        sb_redis_close(sub);
    sb_redis_close(cmd);
    free(p->host);
    free(p->id);
    free(p);
}

/* --- channels --------------------------------------------------------------------------- */

/* Moves every channel to the primary that now owns its slot. */
static void place_channels(sb_cluster_t *c)
{
    for (int i = 0; i < c->nchans; i++) {
        channel_t *ch = &c->chans[i];
        primary_t *to = c->owner[ch->slot];
        if (ch->on == to && !ch->stale)
            continue;
        if (ch->on && ch->on->sub && sb_redis_subscribed(ch->on->sub, ch->name))
            sb_redis_unsubscribe(ch->on->sub, ch->name);
        ch->on = NULL;
        ch->stale = 0;
        if (to) {
            sb_redis_t *s = sub_of(to);
            if (s && sb_redis_subscribe(s, ch->name) == 0)
                ch->on = to;
        }
    }
}

int sb_cluster_subscribe(sb_cluster_t *c, const char *channel)
{
    if (find_chan(c, channel))
        return SB_EINVAL;
    channel_t *v = realloc(c->chans, sizeof *v * (size_t)(c->nchans + 1));
    if (!v)
        return SB_ENOMEM;
    c->chans = v;
    channel_t *ch = &c->chans[c->nchans];
    memset(ch, 0, sizeof *ch);
    if (!(ch->name = strdup(channel)))
        return SB_ENOMEM;
    ch->slot = sb_slot(channel, strlen(channel));
    c->nchans++;
    place_channels(c);
    return 0;
}

int sb_cluster_unsubscribe(sb_cluster_t *c, const char *channel)
{
    channel_t *ch = find_chan(c, channel);
    if (!ch)
        return SB_EINVAL;
    if (ch->on && ch->on->sub && sb_redis_subscribed(ch->on->sub, ch->name))
        sb_redis_unsubscribe(ch->on->sub, ch->name);
    free(ch->name);
    *ch = c->chans[--c->nchans];
    return 0;
}

/* --- the map ---------------------------------------------------------------------------- */

static void apply_map(sb_cluster_t *c, sb_slotmap_t *m)
{
    unsigned char bits[SB_SLOTS / 8];
    int changed = c->nmoved;
    memcpy(bits, c->moved, sizeof bits);
    memset(c->moved, 0, sizeof c->moved);
    c->nmoved = 0;
    primary_t **byshard = calloc((size_t)m->nshards + 1, sizeof *byshard);
    if (!byshard)
        return;
    for (int s = 0; s < m->nshards; s++) {
        sb_node_addr_t *a = &m->shards[s].primary;
        primary_t *p = find_primary(c, a->host, a->port);
        if (p && a->id[0] && strcmp(p->id, a->id) != 0) {
            /* Same address, another node (a new process that joined afresh): its slots'
             * data is not what we wrote; treat every slot as moved. */
            if (p->id[0]) {
                for (unsigned slot = 0; slot < SB_SLOTS; slot++)
                    if (c->owner[slot] == p)
                        c->owner[slot] = NULL;
            }
            free(p->id);
            p->id = strdup(a->id);
            if (!p->id)
                p->id = strdup("");
        }
        if (!p)
            p = add_primary(c, a->host, a->port, a->id);
        byshard[s] = p;
    }
    for (int i = 0; i < c->nprim; i++)
        c->prim[i]->nslots = 0;
    for (unsigned slot = 0; slot < SB_SLOTS; slot++) {
        primary_t *p = m->owner[slot] >= 0 ? byshard[m->owner[slot]] : NULL;
        if (p != c->owner[slot]) {
            if (c->map_loaded && p) {
                bits[slot >> 3] |= (unsigned char)(1u << (slot & 7));
                changed++;
            }
            c->owner[slot] = p;
        }
        if (p)
            p->nslots++;
    }
    free(byshard);
    int first;
    int holes = sb_slotmap_holes(m, &first);
    if (!c->map_loaded || changed)
        sb_info("redis %s: slot map: %d primaries, %d slots changed owner, %d uncovered%s", c->name,
                m->nshards, changed, holes, holes ? " (cluster incomplete)" : "");
    c->map_loaded = 1;
    place_channels(c);
    /* Primaries that serve nothing any more (demoted after a failover, emptied by a reshard)
     * are closed last, once nothing points at them. One still awaiting replies is kept until
     * a later map: closing it would fail commands that a live server is about to answer. */
    for (int i = c->nprim - 1; i >= 0; i--) {
        primary_t *p = c->prim[i];
        if (p->nslots == 0 && (!sb_redis_up(p->cmd) || sb_redis_pending(p->cmd) == 0)) {
            drop_primary(c, p);
            i = c->nprim; /* the array was reordered: start over */
        }
    }
    if (changed) {
        c->stats.map_changes++;
        fire_topology(c, bits, "owner");
    }
    check_state(c);
}

static void on_slots(redisReply *reply, const char *error, void *data)
{
    sb_cluster_t *c = data;
    c->refreshing = 0;
    char *host = c->refresh_host;
    c->refresh_host = NULL;
    if (c->closed || error || !reply || reply->type == REDIS_REPLY_ERROR) {
        if (!c->closed)
            sb_debug("redis %s: CLUSTER SLOTS failed: %s", c->name,
                     error   ? error
                     : reply ? reply->str
                             : "no reply");
        want_refresh(c, REFRESH_BROKEN_MS);
        free(host);
        return;
    }
    sb_slotmap_t m;
    char err[160];
    if (sb_slotmap_parse_slots(&m, reply, host, err, sizeof err) != 0) {
        sb_warn("redis %s: %s", c->name, err);
        want_refresh(c, REFRESH_BROKEN_MS);
    } else {
        c->stats.map_reads++;
        apply_map(c, &m);
    }
    sb_slotmap_free(&m);
    free(host);
}

/* Sends CLUSTER SLOTS to a connected primary (round robin), else to a connected seed. */
static void refresh_now(sb_cluster_t *c)
{
    sb_redis_t *via = NULL;
    const char *host = NULL;
    for (int k = 0; k < c->nprim && !via; k++) {
        primary_t *p = c->prim[(c->next_source + k) % c->nprim];
        if (sb_redis_up(p->cmd)) {
            via = p->cmd;
            host = p->host;
        }
    }
    c->next_source++;
    for (int i = 0; i < c->nseeds && !via; i++) {
        if (c->seeds[i] && sb_redis_up(c->seeds[i])) {
            via = c->seeds[i];
            host = c->u.seeds[i].host;
        }
    }
    int64_t every = sb_cluster_up(c) ? REFRESH_IDLE_MS : REFRESH_BROKEN_MS;
    c->refresh_at = sb_mono_ms() + every;
    tick_within(c, every);
    if (!via)
        return; /* nothing connected yet: the next tick tries again */
    c->refresh_host = strdup(host);
    if (sb_redis_command(via, on_slots, c, "CLUSTER SLOTS") == 0)
        c->refreshing = 1;
    else {
        free(c->refresh_host);
        c->refresh_host = NULL;
    }
}

void sb_cluster_refresh(sb_cluster_t *c)
{
    want_refresh(c, 0);
}

static void on_seed_up(sb_redis_t *r, void *data)
{
    (void)r;
    sb_cluster_t *c = data;
    if (!c->map_loaded)
        want_refresh(c, 0);
}

/* --- state, tick ------------------------------------------------------------------------ */

int sb_cluster_up(const sb_cluster_t *c)
{
    if (!c->map_loaded || c->closed)
        return 0;
    for (unsigned s = 0; s < SB_SLOTS; s++)
        if (!c->owner[s])
            return 0;
    for (int i = 0; i < c->nprim; i++)
        if (c->prim[i]->nslots > 0 && !sb_redis_up(c->prim[i]->cmd))
            return 0;
    return 1;
}

static void check_state(sb_cluster_t *c)
{
    int up = sb_cluster_up(c);
    if (up == c->was_up)
        return;
    c->was_up = up;
    if (up)
        sb_info("redis %s: every slot served and every primary connected", c->name);
    else
        sb_warn("redis %s: not every slot can be served", c->name);
    if (!up)
        want_refresh(c, REFRESH_SOON_MS);
    if (c->o.on_state && !c->closed)
        c->o.on_state(c, up, c->o.data);
}

/* Sends what is due among the held commands, oldest first. A command whose key has an earlier
 * one still waiting waits too (blocked per key bucket, so a rare collision waits a tick more);
 * one behind an earlier one now on a connection is sent: the same connection runs them in order,
 * and if the earlier one is turned away again, so is this one, keeping its place. The ones that
 * ran out of time are failed after the walk, whose list their callbacks could change. */
static void send_held(sb_cluster_t *c, int64_t now)
{
    memset(c->blocked, 0, sizeof c->blocked);
    req_t **tail = &c->failing; /* empty: only this fills it, and it empties it before returning */
    for (req_t *q = c->held, *next; q; q = next) {
        next = q->next;
        if (q->sent)
            continue;
        unsigned char bit = (unsigned char)(1u << (q->bucket & 7));
        int blocked = (c->blocked[q->bucket >> 3] & bit) != 0;
        /* Out of time and not blocked: one last try now (its 20 ms wait for a primary may end
         * past the deadline, and the primary may be back). */
        if (!blocked && (now >= q->due || now >= q->deadline) && dispatch(q) == 0)
            continue;
        if (now >= q->deadline) {
            /* Out of time: waiting behind an earlier one, or its primary not connected. (A
             * wait for a redirect or a receiver never ends past the deadline.) */
            snprintf(q->why, sizeof q->why, "unavailable: %s",
                     blocked ? "an earlier command for its key is still being retried"
                             : "no connected primary for the slot");
            unhold(q);
            *tail = q;
            tail = &q->next;
            continue;
        }
        if (!blocked && now >= q->due)
            q->due = now + TICK_MS; /* its primary is not connected (yet) */
        c->blocked[q->bucket >> 3] |= bit;
    }
    /* Kept in c: a callback that closes the client has sb_cluster_close finish the rest
     * ("closing", before it returns), as the contract says. */
    while (c->failing) {
        req_t *q = c->failing;
        c->failing = q->next;
        finish(q, NULL, q->why);
    }
}

static void on_tick(uv_timer_t *t);

/* The tick comes at the first point of the 20 ms grid (grid.h) at least ms from now (1: the
 * next one), or sooner if it was due sooner. Why not
 * every 20 ms as before: an idle node then woke 50 times a second for nothing; the tick now runs
 * while it has work (held commands, an INFO to ask again) and otherwise at the next map read
 * (every 5 s on a cluster; never on a single Redis). Whatever gives it work calls this. */
static void tick_within(sb_cluster_t *c, int64_t ms)
{
    if (c->closed)
        return;
    uint64_t delay = sb_grid_delay(c->o.loop, ms > 1 ? (uint64_t)ms : 1, TICK_MS);
    if (!uv_is_active((uv_handle_t *)&c->tick) || uv_timer_get_due_in(&c->tick) > delay)
        uv_timer_start(&c->tick, on_tick, delay, 0);
}

static void on_tick(uv_timer_t *t)
{
    sb_cluster_t *c = t->data;
    int64_t now = sb_mono_ms();
    if (c->cluster && !c->refreshing && now >= c->refresh_at)
        refresh_now(c);
    int again = 0; /* more work for the next 20 ms tick */
    for (int i = 0; i < c->nprim; i++) {
        primary_t *p = c->prim[i];
        if (p->info_due && sb_redis_up(p->cmd)) {
            p->info_due = 0;
            sb_redis_command(p->cmd, on_info, p, "INFO server");
        }
        again |= p->info_due; /* not connected yet: ask when it is */
    }
    if (c->held && !c->closed)
        send_held(c, now);
    if (c->closed)
        return;
    if (again || c->held)
        tick_within(c, 1); /* the next grid point */
    else if (c->cluster)
        tick_within(c, c->refresh_at - sb_mono_ms());
}

sb_cluster_t *sb_cluster_new(const sb_cluster_opts_t *opts)
{
    sb_cluster_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->o = *opts;
    c->url = strdup(opts->url);
    c->name = strdup(opts->name ? opts->name : "redis");
    char err[160];
    if (!c->url || !c->name || sb_redis_url_parse(c->url, &c->u, err, sizeof err) != 0) {
        if (c->url && c->name)
            sb_error("redis: %s", err);
        free(c->url);
        free(c->name);
        free(c);
        return NULL;
    }
    c->o.url = c->url;
    c->o.name = c->name;
    c->cluster = c->u.cluster;
    uv_timer_init(opts->loop, &c->tick);
    c->tick.data = c;
    uv_timer_start(&c->tick, on_tick, TICK_MS, 0);
    if (!c->cluster) {
        /* One shard owning every slot; its "map" never changes. */
        primary_t *p = add_primary(c, c->u.path ? c->u.path : c->u.host, c->u.port, "");
        if (!p) {
            sb_cluster_close(c);
            return NULL;
        }
        for (unsigned s = 0; s < SB_SLOTS; s++)
            c->owner[s] = p;
        p->nslots = SB_SLOTS;
        c->map_loaded = 1;
        return c;
    }
    c->seeds = calloc((size_t)c->u.nseeds, sizeof *c->seeds);
    if (!c->seeds) {
        sb_cluster_close(c);
        return NULL;
    }
    for (int i = 0; i < c->u.nseeds; i++) {
        char *url = primary_url(c, c->u.seeds[i].host, c->u.seeds[i].port);
        char name[128];
        snprintf(name, sizeof name, "%s-seed", c->name);
        sb_redis_opts_t ro = {.loop = opts->loop,
                              .url = url,
                              .name = name,
                              .timeout_ms = opts->timeout_ms,
                              .on_up = on_seed_up,
                              .data = c};
        /* Same index as c->u.seeds; NULL when it could not be made (out of memory). */
        c->seeds[i] = url ? sb_redis_new(&ro) : NULL;
        free(url);
    }
    c->nseeds = c->u.nseeds;
    c->refresh_at = sb_mono_ms();
    return c;
}

static void on_tick_closed(uv_handle_t *h)
{
    sb_cluster_t *c = h->data;
    sb_redis_url_free(&c->u);
    free(c->url);
    free(c->name);
    free(c);
}

void sb_cluster_close(sb_cluster_t *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    /* The held commands not on a connection end here (with those out of time whose callbacks
     * send_held has not made yet); those on one end with it. */
    req_t *waiting = c->failing, **tail = &waiting;
    c->failing = NULL;
    while (*tail)
        tail = &(*tail)->next;
    for (req_t *q = c->held, *next; q; q = next) {
        next = q->next;
        if (!q->sent) {
            unhold(q);
            *tail = q;
            tail = &q->next;
        }
    }
    while (waiting) {
        req_t *q = waiting;
        waiting = q->next;
        finish(q, NULL, "closing");
    }
    for (int i = 0; i < c->nchans; i++)
        free(c->chans[i].name);
    free(c->chans);
    c->chans = NULL;
    c->nchans = 0;
    for (int i = 0; i < c->nseeds; i++)
        if (c->seeds[i])
            sb_redis_close(c->seeds[i]);
    free(c->seeds);
    c->seeds = NULL;
    c->nseeds = 0;
    for (unsigned s = 0; s < SB_SLOTS; s++)
        c->owner[s] = NULL;
    while (c->nprim > 0)
        drop_primary(c, c->prim[c->nprim - 1]);
    free(c->prim);
    c->prim = NULL;
    free(c->refresh_host);
    c->refresh_host = NULL;
    uv_timer_stop(&c->tick);
    uv_close((uv_handle_t *)&c->tick, on_tick_closed);
}

/* --- queries ---------------------------------------------------------------------------- */

int sb_cluster_is_cluster(const sb_cluster_t *c)
{
    return c->cluster;
}

int sb_cluster_partly_up(const sb_cluster_t *c)
{
    if (!c->map_loaded || c->closed)
        return 0;
    for (int i = 0; i < c->nprim; i++)
        if (c->prim[i]->nslots > 0 && sb_redis_up(c->prim[i]->cmd))
            return 1;
    return 0;
}

int sb_cluster_slot_up(const sb_cluster_t *c, unsigned slot)
{
    return slot < SB_SLOTS && c->owner[slot] && sb_redis_up(c->owner[slot]->cmd);
}

int64_t sb_cluster_slot_lag_ms(const sb_cluster_t *c, unsigned slot)
{
    return slot < SB_SLOTS && c->owner[slot] ? sb_redis_lag_ms(c->owner[slot]->cmd) : 0;
}

int sb_cluster_holes(const sb_cluster_t *c, int *first)
{
    int n = 0;
    if (first)
        *first = -1;
    for (unsigned s = 0; s < SB_SLOTS; s++) {
        if (!c->owner[s] && n++ == 0 && first)
            *first = (int)s;
    }
    return n;
}

int sb_cluster_nprimaries(const sb_cluster_t *c)
{
    return c->nprim;
}

int sb_cluster_primary(const sb_cluster_t *c, int i, sb_cluster_node_t *out)
{
    if (i < 0 || i >= c->nprim)
        return SB_EINVAL;
    primary_t *p = c->prim[i];
    out->host = p->host;
    out->port = p->port;
    out->id = p->id;
    out->run_id = p->run_id;
    out->nslots = p->nslots;
    out->up = sb_redis_up(p->cmd);
    out->redis = p->cmd;
    return 0;
}

int sb_cluster_slot_owner(const sb_cluster_t *c, unsigned slot)
{
    if (slot >= SB_SLOTS || !c->owner[slot])
        return -1;
    for (int i = 0; i < c->nprim; i++)
        if (c->prim[i] == c->owner[slot])
            return i;
    return -1;
}

void sb_cluster_stats(const sb_cluster_t *c, sb_cluster_stats_t *out)
{
    *out = c->stats;
}

int sb_cluster_pending(const sb_cluster_t *c)
{
    int n = 0;
    for (int i = 0; i < c->nprim; i++)
        n += sb_redis_pending(c->prim[i]->cmd);
    for (const req_t *q = c->held; q; q = q->next)
        n += !q->sent; /* the sent ones are counted by their connection */
    return n;
}

int sb_cluster_drop_subscriber(sb_cluster_t *c, const char *channel, const char *why)
{
    channel_t *ch = find_chan(c, channel);
    if (!ch || !ch->on || !ch->on->sub)
        return SB_EINVAL;
    sb_redis_drop(ch->on->sub, why);
    return 0;
}
