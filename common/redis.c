/* The Redis client wrapper (see redis.h). Owns one hiredis async context at a time, a tick
 * timer (command timeouts, connect timeout, reconnect backoff) and the list of commands in
 * flight. hiredis replies in order, so the oldest command is the head of the list and one timer
 * suffices; a command cannot be cancelled, so the first timeout drops the connection. */
#include "redis.h"
#include "redis_url.h"
#include "uvredis.h"
#include "grid.h"
#include "log.h"

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef enum { ST_DOWN, ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_UP, ST_CLOSED } state_t;

typedef struct cmd {
    sb_redis_t *r;
    sb_redis_cb cb;
    void *data;
    int64_t started_ms;
    int lazy; /* its reply may be read late (sb_redis_argv_lazy) */
    struct cmd *prev, *next;
} cmd_t;

/* Where a sharded subscriber's replies are built: one reply at a time (the reader finishes one
 * before it starts the next, and on_sharded_readable resets the arena after each), bump
 * allocated in blk; what does not fit goes to malloc'd overflow blocks, freed at the reset,
 * after which blk grows to what the reply needed (up to ARENA_MAX). Why: hiredis's default
 * reply functions make 8 allocations and 8 frees per pub/sub message (the array, its element
 * vector, and each of the 3 strings with its buffer). */
#define ARENA_MAX (256 * 1024)

typedef struct arena_big {
    struct arena_big *next;
    _Alignas(max_align_t) char data[];
} arena_big_t;

typedef struct {
    char *blk;
    size_t cap, used;
    size_t want; /* bytes the reply being built asked for */
    arena_big_t *big;
} arena_t;

typedef struct resolve_req {
    uv_getaddrinfo_t req;
    sb_redis_t *r;
} resolve_req_t;

struct sb_redis {
    sb_redis_opts_t o;
    char *url, *name;
    sb_redis_url_t u;
    redisAsyncContext *ac;
    state_t state;
    int refs;           /* the client itself + each resolution in flight */
    int resolving;      /* a lookup of u.host is running (at most one: connect_now) */
    cmd_t *head, *tail; /* commands in flight, oldest first */
    cmd_t *unexpired;   /* the oldest one not yet answered "timeout" (see on_tick) */
    int npending;
    int neager;            /* of those, not lazy (see sb_redis_argv_lazy) */
    int64_t last_reply_ms; /* when the last reply came (progress: see on_tick) */
    const char *drop_why;  /* error given to callbacks of a connection we drop */
    uv_timer_t tick;
    int64_t attempt_deadline; /* connect/handshake must finish by then */
    int64_t retry_at;         /* next attempt (ST_DOWN) */
    int64_t backoff_ms;
    char **channels;
    int nchannels;
    int handshake_left;
    int subs_pending; /* SUBSCRIBE confirmations still to come before on_up */
    /* Sharded mode: channels of the SSUBSCRIBE/SUNSUBSCRIBE commands sent and not yet answered,
     * oldest first (each such command names one channel and gets exactly one reply). */
    struct sent_sub {
        struct sent_sub *next;
        int subscribe;
        char channel[];
    } * sent_head, *sent_tail;
    arena_t arena; /* sharded subscriber: its replies (see arena_t) */
    char *fmt;     /* send_argv's command text, reused (see format_argv) */
    size_t fmtcap;
};

static void connect_now(sb_redis_t *r);
static void tick_on(sb_redis_t *r);

static void unref(sb_redis_t *r);

enum { TICK_MS = 20 };

static void on_tick_close(uv_handle_t *h)
{
    unref(h->data);
}

static void *arena_alloc(arena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15; /* malloc's alignment, for the next object */
    a->want += n;
    if (a->cap - a->used >= n) {
        void *p = a->blk + a->used;
        a->used += n;
        return p;
    }
    arena_big_t *b = malloc(sizeof *b + n);
    if (!b)
        return NULL;
    b->next = a->big;
    a->big = b;
    return b->data;
}

static void arena_reset(arena_t *a)
{
    while (a->big) {
        arena_big_t *b = a->big;
        a->big = b->next;
        free(b);
    }
    if (a->want > a->cap && a->want <= ARENA_MAX) {
        char *blk = malloc(a->want);
        if (blk) {
            free(a->blk);
            a->blk = blk;
            a->cap = a->want;
        }
    }
    a->used = a->want = 0;
}

/* The arena of the reply being parsed: set by on_sharded_readable around its reads. Why not
 * the reader's privdata: hiredis 0.14 copies that into a read task when it starts one, and a
 * handshake reply's callback (became_up runs there) leaves one started with the old value. */
static _Thread_local arena_t *building;

/* hiredis reply object functions on the arena, making the same redisReply trees as its
 * defaults. */
static redisReply *arena_reply(const redisReadTask *task, int type, size_t extra)
{
    redisReply *r = building ? arena_alloc(building, sizeof *r + extra) : NULL;
    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    r->type = type;
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    return r;
}

static void *arena_string(const redisReadTask *task, char *str, size_t len)
{
    redisReply *r = arena_reply(task, task->type, len + 1);
    if (!r)
        return NULL;
    r->str = (char *)(r + 1);
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    r->len = len;
    return r;
}

static void *arena_array(const redisReadTask *task, int elements)
{
    size_t n = elements > 0 ? (size_t)elements : 0;
    redisReply *r = arena_reply(task, REDIS_REPLY_ARRAY, n * sizeof(redisReply *));
    if (!r)
        return NULL;
    r->elements = n;
    if (n) {
        r->element = (redisReply **)(void *)(r + 1);
        memset(r->element, 0, n * sizeof(redisReply *));
    }
    return r;
}

static void *arena_integer(const redisReadTask *task, long long value)
{
    redisReply *r = arena_reply(task, REDIS_REPLY_INTEGER, 0);
    if (r)
        r->integer = value;
    return r;
}

static void *arena_nil(const redisReadTask *task)
{
    return arena_reply(task, REDIS_REPLY_NIL, 0);
}

/* Nothing: hiredis frees a reply it gave up on (a reader error, the reader freed); the arena
 * is reset after each reply read and before a new connection's first. */
static void arena_free(void *reply)
{
    (void)reply;
}

static redisReplyObjectFunctions arena_fns = {arena_string, arena_array, arena_integer, arena_nil,
                                              arena_free};

static void forget_sent(sb_redis_t *r)
{
    while (r->sent_head) {
        struct sent_sub *s = r->sent_head;
        r->sent_head = s->next;
        free(s);
    }
    r->sent_tail = NULL;
}

static void unref(sb_redis_t *r)
{
    if (--r->refs > 0)
        return;
    forget_sent(r);
    arena_reset(&r->arena);
    free(r->arena.blk);
    free(r->fmt);
    for (int i = 0; i < r->nchannels; i++)
        free(r->channels[i]);
    free(r->channels);
    sb_redis_url_free(&r->u);
    free(r->url);
    free(r->name);
    free(r);
}

static void link_cmd(sb_redis_t *r, cmd_t *c)
{
    c->prev = r->tail;
    c->next = NULL;
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    if (!r->unexpired)
        r->unexpired = c;
    r->npending++;
    if (!c->lazy && r->neager++ == 0 && r->ac)
        sb_uvredis_eager(r->ac, 1);
    tick_on(r);
}

static void unlink_cmd(sb_redis_t *r, cmd_t *c)
{
    if (r->unexpired == c)
        r->unexpired = c->next;
    if (c->prev)
        c->prev->next = c->next;
    else
        r->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->tail = c->prev;
    r->npending--;
    if (!c->lazy && --r->neager == 0 && r->ac)
        sb_uvredis_eager(r->ac, 0);
}

/* Schedules the next attempt with jittered exponential backoff: 50 ms doubling to 1 s. */
static void schedule_retry(sb_redis_t *r)
{
    if (r->state == ST_CLOSED)
        return;
    r->state = ST_DOWN;
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : 50;
    if (r->backoff_ms > 1000)
        r->backoff_ms = 1000;
    /* Jitter in [backoff/2, backoff]: many nodes restarting together do not reconnect in step. */
    int64_t delay = r->backoff_ms / 2 + (int64_t)(random() % (r->backoff_ms / 2 + 1));
    r->retry_at = sb_mono_ms() + delay;
    tick_on(r);
}

/* The connection went away (ours or hiredis's doing): report once, then retry. */
static void went_down(sb_redis_t *r, const char *why)
{
    int was_up = r->state == ST_UP;
    forget_sent(r);
    schedule_retry(r);
    if (was_up)
        sb_warn("redis %s: connection lost: %s", r->name, why);
    else
        sb_debug("redis %s: connect failed: %s", r->name, why);
    if (r->o.on_down && r->state != ST_CLOSED)
        r->o.on_down(r, why, r->o.data);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    cmd_t *c = privdata;
    sb_redis_t *r = c->r;
    unlink_cmd(r, c);
    const char *err = NULL;
    if (!reply) {
        err = r->drop_why ? r->drop_why : (ac->errstr[0] ? ac->errstr : "disconnected");
    } else {
        r->last_reply_ms = sb_mono_ms();
        /* A lazy reply's wait includes the loop's, not only Redis's. */
        if (r->o.observe && !c->lazy)
            r->o.observe((double)(r->last_reply_ms - c->started_ms) / 1000.0, r->o.data);
    }
    /* cb is NULL for a command already answered "timeout" (on_tick): its late reply is
     * dropped. */
    if (c->cb)
        c->cb(reply, err, c->data);
    free(c);
}

/* Appends "<c><n>\r\n" at p; returns the end. */
static char *put_header(char *p, char c, size_t n)
{
    char digits[24];
    int k = 0;
    do
        digits[k++] = (char)('0' + n % 10);
    while ((n /= 10) > 0);
    *p++ = c;
    while (k > 0)
        *p++ = digits[--k];
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* The command as RESP text in r->fmt (grown as needed, kept): its length, or -1 out of memory.
 * Why not redisAsyncCommandArgv: it formats into a new sds per command with sdscatfmt (a
 * printf of its own per argument), then copies that into the output buffer and frees it; the
 * relay path sends one PUBLISH per signal. */
static long format_argv(sb_redis_t *r, int argc, const char **argv, const size_t *lens)
{
    size_t need = 24;
    for (int i = 0; i < argc; i++)
        need += 24 + 2 + (lens ? lens[i] : strlen(argv[i]));
    if (need > r->fmtcap) {
        char *f = realloc(r->fmt, need);
        if (!f)
            return -1;
        r->fmt = f;
        r->fmtcap = need;
    }
    char *p = put_header(r->fmt, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        size_t l = lens ? lens[i] : strlen(argv[i]);
        p = put_header(p, '$', l);
        memcpy(p, argv[i], l);
        p += l;
        *p++ = '\r';
        *p++ = '\n';
    }
    return (long)(p - r->fmt);
}

static int send_argv(sb_redis_t *r, sb_redis_cb cb, void *data, int argc, const char **argv,
                     const size_t *lens, int allow_handshake, int lazy)
{
    if (!r->ac || !(r->state == ST_UP || (allow_handshake && r->state == ST_HANDSHAKE)))
        return SB_EUNAVAIL;
    cmd_t *c = malloc(sizeof *c);
    if (!c)
        return SB_ENOMEM;
    c->r = r;
    c->cb = cb;
    c->data = data;
    c->started_ms = sb_mono_ms();
    c->lazy = lazy && r->o.lazy_ms > 0;
    long len = format_argv(r, argc, argv, lens);
    if (len < 0) {
        free(c);
        return SB_ENOMEM;
    }
    if (redisAsyncFormattedCommand(r->ac, on_reply, c, r->fmt, (size_t)len) != REDIS_OK) {
        free(c);
        return SB_EUNAVAIL;
    }
    link_cmd(r, c);
    return 0;
}

int sb_redis_argv(sb_redis_t *r, sb_redis_cb cb, void *data, int argc, const char **argv,
                  const size_t *lens)
{
    if (r->o.subscriber)
        return SB_EINVAL;
    return send_argv(r, cb, data, argc, argv, lens, 0, 0);
}

int sb_redis_argv_lazy(sb_redis_t *r, sb_redis_cb cb, void *data, int argc, const char **argv,
                       const size_t *lens)
{
    if (r->o.subscriber)
        return SB_EINVAL;
    return send_argv(r, cb, data, argc, argv, lens, 0, 1);
}

int sb_redis_command(sb_redis_t *r, sb_redis_cb cb, void *data, const char *fmt, ...)
{
    if (r->o.subscriber)
        return SB_EINVAL;
    if (!r->ac || r->state != ST_UP)
        return SB_EUNAVAIL;
    char *cmdbuf;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmdbuf, fmt, ap);
    va_end(ap);
    if (len < 0)
        return SB_ENOMEM;
    cmd_t *c = malloc(sizeof *c);
    if (!c) {
        redisFreeCommand(cmdbuf);
        return SB_ENOMEM;
    }
    c->r = r;
    c->cb = cb;
    c->data = data;
    c->started_ms = sb_mono_ms();
    c->lazy = 0;
    int rc = redisAsyncFormattedCommand(r->ac, on_reply, c, cmdbuf, (size_t)len);
    redisFreeCommand(cmdbuf);
    if (rc != REDIS_OK) {
        free(c);
        return SB_EUNAVAIL;
    }
    link_cmd(r, c);
    return 0;
}

static void on_message(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    sb_redis_t *r = privdata;
    redisReply *rep = reply;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3)
        return;
    size_t kl = 0, cl = 0, pl = 0;
    const char *kind = sb_reply_str(rep, 0, &kl);
    const char *chan = sb_reply_str(rep, 1, &cl);
    const char *payload = sb_reply_str(rep, 2, &pl);
    if (kind && strcmp(kind, "message") == 0 && chan && payload && r->o.on_message) {
        r->o.on_message(r, chan, payload, pl, r->o.data);
    } else if (kind && strcmp(kind, "subscribe") == 0 && r->subs_pending > 0) {
        /* Why wait for the confirmation: until Redis has processed SUBSCRIBE, a PUBLISH from
         * another connection is not delivered to us, so "up" would be a lie. */
        if (--r->subs_pending == 0 && r->o.on_up)
            r->o.on_up(r, r->o.data);
    }
}

/* Sharded mode: sends SSUBSCRIBE or SUNSUBSCRIBE for one channel without hiredis's callback
 * bookkeeping (the reply is read by on_sharded_readable) and remembers it to match the reply. */
static void send_sharded(sb_redis_t *r, int subscribe, const char *channel)
{
    size_t n = strlen(channel);
    struct sent_sub *s = malloc(sizeof *s + n + 1);
    if (!s) {
        sb_redis_drop(r, "out of memory");
        return;
    }
    s->next = NULL;
    s->subscribe = subscribe;
    memcpy(s->channel, channel, n + 1);
    const char *argv[2] = {subscribe ? "SSUBSCRIBE" : "SUNSUBSCRIBE", channel};
    size_t lens[2] = {subscribe ? 10 : 12, n};
    if (redisAppendCommandArgv(&r->ac->c, 2, argv, lens) != REDIS_OK) {
        free(s);
        sb_redis_drop(r, "out of memory");
        return;
    }
    if (r->sent_tail)
        r->sent_tail->next = s;
    else
        r->sent_head = s;
    r->sent_tail = s;
    /* What redisAsyncCommand would do after appending: ask the loop for writability; hiredis's
     * write handler flushes the output buffer. */
    r->ac->ev.addWrite(r->ac->ev.data);
}

static void subscribe_one(sb_redis_t *r, const char *channel)
{
    if (r->o.sharded) {
        send_sharded(r, 1, channel);
        return;
    }
    /* Why no cmd_t: the SUBSCRIBE callback stays registered for every message on the channel,
     * so it is not "in flight"; liveness of pub/sub is proven by the caller's probes. */
    redisAsyncCommand(r->ac, on_message, r, "SUBSCRIBE %s", channel);
}

static int find_channel(const sb_redis_t *r, const char *channel)
{
    for (int i = 0; i < r->nchannels; i++)
        if (strcmp(r->channels[i], channel) == 0)
            return i;
    return -1;
}

/* Sharded mode: one reply read off the wire. Either a push (smessage), or the one reply of the
 * oldest SSUBSCRIBE/SUNSUBSCRIBE sent, or a sunsubscribe Redis sent on its own (the channel's
 * slot moved to another shard: Redis 7 unsubscribes its clients then). */
static void on_sharded_reply(sb_redis_t *r, redisReply *rep)
{
    size_t kl = 0, cl = 0, pl = 0;
    const char *kind = sb_reply_str(rep, 0, &kl);
    const char *chan = sb_reply_str(rep, 1, &cl);
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 && kind && chan &&
        strcmp(kind, "smessage") == 0) {
        const char *payload = sb_reply_str(rep, 2, &pl);
        if (payload && r->o.on_message)
            r->o.on_message(r, chan, payload, pl, r->o.data);
        return;
    }
    struct sent_sub *s = r->sent_head;
    int answers_sent = s && (rep->type == REDIS_REPLY_ERROR ||
                             (kind && chan && strcmp(chan, s->channel) == 0 &&
                              strcmp(kind, s->subscribe ? "ssubscribe" : "sunsubscribe") == 0));
    if (!answers_sent) {
        /* Unsolicited: Redis dropped our subscription. */
        if (kind && chan && strcmp(kind, "sunsubscribe") == 0 && find_channel(r, chan) >= 0 &&
            r->o.on_sub_error)
            r->o.on_sub_error(r, chan, "sunsubscribe", r->o.data);
        return;
    }
    r->sent_head = s->next;
    if (!r->sent_head)
        r->sent_tail = NULL;
    if (rep->type == REDIS_REPLY_ERROR) {
        sb_warn("redis %s: %s %s refused: %s", r->name,
                s->subscribe ? "SSUBSCRIBE" : "SUNSUBSCRIBE", s->channel, rep->str);
        if (s->subscribe && r->o.on_sub_error && find_channel(r, s->channel) >= 0)
            r->o.on_sub_error(r, s->channel, rep->str, r->o.data);
    } else if (s->subscribe && r->o.on_subscribed && find_channel(r, s->channel) >= 0)
        r->o.on_subscribed(r, s->channel, r->o.data);
    if (r->ac && s->subscribe && r->subs_pending > 0 && --r->subs_pending == 0 && r->o.on_up)
        r->o.on_up(r, r->o.data);
    free(s);
}

/* Sharded mode, once up: reads for hiredis. Why: hiredis 0.14.1 routes a reply that no
 * pending callback claims through redisProcessCallbacks, which asserts the context is in
 * (classic) subscribed mode; SSUBSCRIBE does not set that mode (only a command named
 * [P]SUBSCRIBE does), so the first "smessage" aborts the process. Registering a classic
 * SUBSCRIBE of the same name would make hiredis find a callback, at the price of a second,
 * classic subscription on the server and of SSUBSCRIBE callbacks piling up in hiredis's
 * "invalid" queue. Instead this connection's socket reads go here: hiredis's own buffer and
 * parser are used (redisBufferRead, redisGetReplyFromReader) but not its dispatch. Writes and
 * the connect/AUTH handshake still go through hiredis. */
static void on_sharded_readable(redisAsyncContext *ac)
{
    sb_redis_t *r = ac->data;
    if (ac->c.reader->fn != &arena_fns) {
        /* The connection's first read here: its replies are built in the arena from now on.
         * Not earlier: became_up may run inside a handshake reply's callback, which hiredis
         * frees with the reader's functions after it returns. No reply object is half built
         * now (we sent nothing after the handshake before this read). */
        arena_reset(&r->arena);
        ac->c.reader->fn = &arena_fns;
    }
    if (redisBufferRead(&ac->c) != REDIS_OK) {
        /* Static text, not ac->c.errstr: the context is freed inside sb_redis_drop, which
         * logs its reason afterwards. */
        sb_debug("redis %s: read failed: %s", r->name, ac->c.errstr);
        sb_redis_drop(r, "server closed the connection");
        return;
    }
    while (r->ac == ac) {
        void *reply = NULL;
        building = &r->arena;
        int rc = redisGetReplyFromReader(&ac->c, &reply);
        building = NULL;
        if (rc != REDIS_OK) {
            sb_redis_drop(r, "protocol error");
            return;
        }
        if (!reply)
            break;
        on_sharded_reply(r, reply);
        arena_reset(&r->arena); /* r outlives its callbacks: freed by a close callback */
    }
}

static void became_up(sb_redis_t *r)
{
    r->state = ST_UP;
    r->backoff_ms = 0;
    sb_info("redis %s: connected to %s", r->name, r->u.path ? r->u.path : r->u.host);
    if (r->o.subscriber && r->o.sharded && sb_uvredis_divert_reads(r->ac, on_sharded_readable)) {
        sb_redis_drop(r, "event loop attach failed");
        return;
    }
    if (r->o.subscriber && r->nchannels > 0) {
        r->subs_pending = r->nchannels;
        for (int i = 0; i < r->nchannels; i++)
            subscribe_one(r, r->channels[i]);
        return; /* on_up once every SUBSCRIBE is confirmed */
    }
    if (r->o.on_up)
        r->o.on_up(r, r->o.data);
}

static void on_handshake(redisReply *reply, const char *error, void *data)
{
    sb_redis_t *r = data;
    if (error)
        return; /* the connection is already going down */
    if (sb_reply_is_error(reply)) {
        sb_error("redis %s: handshake refused: %s", r->name, reply->str);
        sb_redis_drop(r, "handshake refused");
        return;
    }
    if (--r->handshake_left == 0)
        became_up(r);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    sb_redis_t *r = ac->data;
    if (!r || r->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        r->ac = NULL;
        went_down(r, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    r->state = ST_HANDSHAKE;
    r->handshake_left = 0;
    /* Why raw send_argv with allow_handshake: normal commands are refused until AUTH/SELECT
     * are through, so nothing can run against the wrong database. */
    if (r->u.pass) {
        const char *argv[3] = {"AUTH", r->u.user ? r->u.user : r->u.pass, r->u.pass};
        int argc = r->u.user ? 3 : 2;
        if (send_argv(r, on_handshake, r, argc, argv, NULL, 1, 0) == 0)
            r->handshake_left++;
    }
    if (r->u.db > 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", r->u.db);
        const char *argv[2] = {"SELECT", db};
        if (send_argv(r, on_handshake, r, 2, argv, NULL, 1, 0) == 0)
            r->handshake_left++;
    }
    if (r->handshake_left == 0)
        became_up(r);
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    (void)status;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    sb_redis_t *r = ac->data;
    if (!r || r->ac != ac)
        return; /* a context we dropped ourselves: already handled */
    r->ac = NULL;
    went_down(r, ac->errstr[0] ? ac->errstr : "server closed the connection");
}

static void start_context(sb_redis_t *r, const char *ip)
{
    redisAsyncContext *ac =
        r->u.path ? redisAsyncConnectUnix(r->u.path) : redisAsyncConnect(ip, r->u.port);
    if (!ac || ac->err) {
        const char *why = ac ? ac->errstr : "out of memory";
        sb_debug("redis %s: cannot start connecting: %s", r->name, why);
        if (ac)
            redisAsyncFree(ac);
        went_down(r, "connect failed");
        return;
    }
    if (sb_uvredis_attach(ac, r->o.loop) != 0) {
        redisAsyncFree(ac);
        went_down(r, "event loop attach failed");
        return;
    }
    if (r->o.lazy_ms > 0 && !r->o.subscriber)
        sb_uvredis_lazy(ac, r->o.lazy_ms);
    ac->data = r;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->state = ST_CONNECTING;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    resolve_req_t *rr = (resolve_req_t *)req;
    sb_redis_t *r = rr->r;
    free(rr);
    r->resolving = 0;
    /* Any attempt's answer will do: attempts started while it ran waited for it (connect_now).
     * One that lands while the client waits to retry (its attempt timed out: a DNS slower than
     * the timeout) is used now; dropped, every retry's lookup met the same fate. */
    if (r->state == ST_DOWN && status == 0 && res) {
        r->drop_why = NULL;
        r->state = ST_RESOLVING;
    }
    if (r->state != ST_RESOLVING) {
        if (res)
            uv_freeaddrinfo(res);
        unref(r);
        return;
    }
    unref(r);
    if (status != 0 || !res) {
        went_down(r, status ? uv_strerror(status) : "no address");
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "";
    if (res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, sizeof ip);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, ip, sizeof ip);
    uv_freeaddrinfo(res);
    /* The connect gets its own timeout, not what the lookup left of the attempt's. */
    r->attempt_deadline = sb_mono_ms() + r->o.timeout_ms;
    start_context(r, ip);
}

static void connect_now(sb_redis_t *r)
{
    r->drop_why = NULL;
    r->attempt_deadline = sb_mono_ms() + r->o.timeout_ms;
    tick_on(r);
    if (r->u.path) {
        start_context(r, NULL);
        return;
    }
    /* An address needs no lookup: it must not wait in libuv's thread pool behind lookups
     * of names that hang (below). */
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, r->u.host, addr) == 1 || inet_pton(AF_INET6, r->u.host, addr) == 1) {
        start_context(r, r->u.host);
        return;
    }
    /* A lookup of this name is still running (a DNS that does not answer: Docker's forwards an
     * unknown name upstream, 20 s per try): wait for it rather than start another. Each attempt
     * started one before, and libuv's 4 pool threads were soon all stuck in lookups of one
     * seed, so every connection, to any address, waited behind them. */
    if (r->resolving) {
        r->state = ST_RESOLVING;
        return;
    }
    /* Why: hiredis resolves names with a blocking getaddrinfo; resolve on libuv's thread pool
     * and hand hiredis a numeric address. */
    resolve_req_t *rr = calloc(1, sizeof *rr);
    if (!rr) {
        went_down(r, "out of memory");
        return;
    }
    rr->r = r;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    r->state = ST_RESOLVING;
    r->resolving = 1;
    r->refs++;
    if (uv_getaddrinfo(r->o.loop, &rr->req, on_resolved, r->u.host, NULL, &hints) != 0) {
        r->resolving = 0;
        r->refs--;
        free(rr);
        went_down(r, "resolve failed");
    }
}

void sb_redis_drop(sb_redis_t *r, const char *why)
{
    if (r->state == ST_CLOSED || r->state == ST_DOWN)
        return;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac) {
        /* Pending callbacks fire inside redisAsyncFree (or, when called from a hiredis
         * callback, once that returns) with a NULL reply and this reason. */
        r->drop_why = why;
        redisAsyncFree(ac);
    }
    went_down(r, why);
}

static void on_tick(uv_timer_t *t);

/* Why a 20 ms tick: command timeouts and readiness must be noticed well within the 2 s the
 * contract allows, at negligible cost (one timer per connection, not per command). Why it runs
 * only while there is something to time (a connection being made or retried, a command awaiting
 * its reply): an idle process should not wake 50 times a second for each of its connections.
 * Armed on the 20 ms grid (grid.h), so the ticks of every connection and of the cluster client
 * come in one wake-up (docs/design.md, "Idle wake-ups"). */
static void tick_on(sb_redis_t *r)
{
    if (r->state != ST_CLOSED && !uv_is_active((uv_handle_t *)&r->tick))
        uv_timer_start(&r->tick, on_tick, sb_grid_delay(r->o.loop, 1, TICK_MS), 0);
}

static void tick_check(sb_redis_t *r, int64_t now)
{
    switch (r->state) {
    case ST_DOWN:
        if (now >= r->retry_at)
            connect_now(r);
        break;
    case ST_RESOLVING:
    case ST_CONNECTING:
    case ST_HANDSHAKE:
        if (now > r->attempt_deadline)
            sb_redis_drop(r, "connect timeout");
        break;
    case ST_UP: {
        if (!r->head)
            break;
        /* Dead or hung: no reply for the timeout while a command waits. (A subscriber: its
         * oldest command waited that long.) */
        int64_t since = r->head->started_ms;
        if (!r->o.subscriber && r->last_reply_ms > since)
            since = r->last_reply_ms;
        if (now - since > r->o.timeout_ms) {
            sb_redis_drop(r, "timeout");
            break;
        }
        if (r->o.subscriber)
            break;
        /* Answering, only slower than the timeout (a burst queued thousands of scripts): the
         * commands past it are answered "timeout" now, and their replies dropped when they
         * come. Why not drop the connection as for a dead one: that failed every other command
         * in flight too, Redis ran them anyway, and the reconnect added to the load (a 20,000
         * link burst in make bench section 1 had 1,204 answered "unavailable" that way). */
        while (r->unexpired && now - r->unexpired->started_ms > r->o.timeout_ms) {
            cmd_t *c = r->unexpired;
            r->unexpired = c->next;
            sb_redis_cb cb = c->cb;
            c->cb = NULL;
            if (cb) {
                cb(NULL, "timeout", c->data);
                if (r->state != ST_UP)
                    break; /* the callback dropped or closed the connection */
            }
        }
        break;
    }
    case ST_CLOSED:
        break;
    }
}

static void on_tick(uv_timer_t *t)
{
    sb_redis_t *r = t->data;
    tick_check(r, sb_mono_ms());
    /* Again while there is something to time (tick_on starts it when there is again). */
    if (r->state != ST_CLOSED && !(r->state == ST_UP && !r->head))
        uv_timer_start(&r->tick, on_tick, sb_grid_delay(r->o.loop, 1, TICK_MS), 0);
}

sb_redis_t *sb_redis_new(const sb_redis_opts_t *opts)
{
    sb_redis_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->o = *opts;
    r->url = strdup(opts->url);
    r->name = strdup(opts->name ? opts->name : "redis");
    r->o.url = r->url;
    r->o.name = r->name;
    char err[128];
    int bad = sb_redis_url_parse(r->url, &r->u, err, sizeof err) != 0;
    if (!bad && r->u.cluster) {
        /* Why refuse: this client talks to one server; given a seed list it would send every
         * command to the first seed and fail with MOVED for two thirds of the keys. */
        snprintf(err, sizeof err, "a redis-cluster:// URL needs the cluster client (cluster.h)");
        sb_redis_url_free(&r->u);
        bad = 1;
    }
    if (bad) {
        sb_error("redis: %s", err);
        free(r->url);
        free(r->name);
        free(r);
        return NULL;
    }
    r->refs = 1;
    uv_timer_init(opts->loop, &r->tick);
    r->tick.data = r;
    connect_now(r); /* starts the tick (tick_on) */
    return r;
}

int sb_redis_up(const sb_redis_t *r)
{
    return r->state == ST_UP;
}

int64_t sb_redis_lag_ms(const sb_redis_t *r)
{
    return r->state == ST_UP && r->head ? sb_mono_ms() - r->head->started_ms : 0;
}

int sb_redis_pending(const sb_redis_t *r)
{
    return r->npending;
}

int sb_redis_subscribe(sb_redis_t *r, const char *channel)
{
    char **v = realloc(r->channels, sizeof(char *) * (size_t)(r->nchannels + 1));
    if (!v)
        return SB_ENOMEM;
    r->channels = v;
    if (!(r->channels[r->nchannels] = strdup(channel)))
        return SB_ENOMEM;
    r->nchannels++;
    if (r->state == ST_UP && r->ac)
        subscribe_one(r, channel);
    return 0;
}

int sb_redis_unsubscribe(sb_redis_t *r, const char *channel)
{
    int i = find_channel(r, channel);
    if (i < 0)
        return SB_EINVAL;
    if (r->state == ST_UP && r->ac) {
        if (r->o.sharded)
            send_sharded(r, 0, channel);
        else
            /* hiredis 0.14 pushes no callback for UNSUBSCRIBE; its reply reaches the channel's
             * callback (on_message), which ignores it. */
            redisAsyncCommand(r->ac, NULL, NULL, "UNSUBSCRIBE %s", channel);
    }
    free(r->channels[i]);
    r->channels[i] = r->channels[--r->nchannels];
    return 0;
}

int sb_redis_subscribed(const sb_redis_t *r, const char *channel)
{
    return find_channel(r, channel) >= 0;
}

void sb_redis_close(sb_redis_t *r)
{
    if (r->state == ST_CLOSED)
        return;
    redisAsyncContext *ac = r->ac;
    r->state = ST_CLOSED;
    r->ac = NULL;
    if (ac) {
        r->drop_why = "closing";
        redisAsyncFree(ac);
    }
    uv_timer_stop(&r->tick);
    uv_close((uv_handle_t *)&r->tick, on_tick_close);
}

int sb_reply_is_transient(const redisReply *reply)
{
    static const char *const prefixes[] = {"OOM",      "LOADING",     "BUSY",
                                           "READONLY", "MASTERDOWN",  "MISCONF",
                                           "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"};
    if (!sb_reply_is_error(reply) || !reply->str)
        return 0;
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (strncmp(reply->str, prefixes[i], strlen(prefixes[i])) == 0)
            return 1;
    return 0;
}

int sb_reply_is_error(const redisReply *reply)
{
    return reply && reply->type == REDIS_REPLY_ERROR;
}

const char *sb_reply_str(const redisReply *reply, size_t i, size_t *len)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || i >= reply->elements)
        return NULL;
    redisReply *e = reply->element[i];
    if (e->type != REDIS_REPLY_STRING && e->type != REDIS_REPLY_STATUS)
        return NULL;
    if (len)
        *len = e->len;
    return e->str;
}

long long sb_reply_int(const redisReply *reply, size_t i, long long fallback)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || i >= reply->elements)
        return fallback;
    redisReply *e = reply->element[i];
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return fallback;
}
