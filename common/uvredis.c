/* libuv <-> hiredis glue: one uv_poll_t per async context. Owns only the poll handle; the
 * context itself belongs to the caller (common/redis.c). */
#include "uvredis.h"
#include "log.h"

#include <stdint.h>
#include <stdlib.h>

typedef struct {
    redisAsyncContext *ac; /* NULL once hiredis has cleaned up */
    uv_poll_t poll;
    int events;                                 /* what hiredis wants watched */
    int watched;                                /* what the poll handle watches now */
    void (*on_readable)(redisAsyncContext *ac); /* NULL: hiredis reads */
    /* Output hiredis buffered while connected is written from `flush`, before the loop next
     * polls, instead of after a POLLOUT round trip; POLLOUT only when the socket is full. */
    uv_prepare_t flush;
    int flush_due; /* hiredis has output for the flush */
    int writing;   /* inside redisAsyncHandleWrite: a write request now means "socket full" */
    int open;      /* uv handles not yet closed */
    /* Lazy replies (sb_uvredis_lazy): while `deferred`, the poll does not watch for reads.
     * Replies are read by `check` after each wake-up of the loop (for anything else); `late`
     * runs in one of two roles: `bound`, lazy_ms after the first reply not yet read (read it
     * then), or quiet, QUIET_MS after the last write (watch reads again: an idle connection
     * notices a close as usual). */
    int lazy_ms;       /* 0: off */
    int eager;         /* a command whose reply is wanted at once is pending */
    int deferred;      /* reads not watched now */
    int bound;         /* `late` is the bound of a reply not yet read */
    int behind;        /* a reply was still missing at the bound: reads watched until it came */
    int unflushed;     /* commands hiredis queued since the last write (not sent yet) */
    uint64_t wrote_at; /* loop time of the last write (or read) while deferred */
    uv_check_t check;
    uv_timer_t late;
} glue_t;

/* hiredis has callbacks waiting for replies (commands sent or buffered, not yet answered). */
static int awaiting(const glue_t *g)
{
    return g->ac && g->ac->replies.head != NULL;
}

/* A command already written is still unanswered: hiredis keeps one callback per command, oldest
 * first, and the last `unflushed` of them are still in its output buffer. Why not `awaiting`:
 * the wake-up that reads the last reply usually queues the next command before the check runs,
 * and that one is not due yet. */
static int answer_due(const glue_t *g)
{
    if (!g->ac)
        return 0;
    int n = 0;
    for (const redisCallback *cb = g->ac->replies.head; cb; cb = cb->next)
        if (++n > g->unflushed)
            return 1;
    return 0;
}

static void on_poll(uv_poll_t *handle, int status, int events)
{
    glue_t *g = handle->data;
    if (!g->ac)
        return;
    if (status < 0) {
        /* Why: hiredis only learns of a failure by doing I/O. While connecting, a write event
         * makes it check SO_ERROR; once connected, a read returns the error. Either way hiredis
         * disconnects and every pending callback gets its error. */
        if (!(g->ac->c.flags & REDIS_CONNECTED)) {
            /* libuv reports POLLERR as UV_EBADF: while connecting that is just a refused
             * connection, which the connect callback reports; not worth a warning per retry. */
            sb_debug("redis: poll error while connecting on fd %d: %s", g->ac->c.fd,
                     uv_strerror(status));
            redisAsyncHandleWrite(g->ac);
            return;
        }
        sb_warn("redis: poll error on fd %d: %s", g->ac->c.fd, uv_strerror(status));
        if (g->on_readable)
            g->on_readable(g->ac);
        else
            redisAsyncHandleRead(g->ac);
        return;
    }
    if (events & UV_READABLE) {
        if (g->on_readable)
            g->on_readable(g->ac);
        else
            redisAsyncHandleRead(g->ac);
        if (g->behind && !answer_due(g))
            g->behind = 0; /* caught up: the next write defers reads again */
    }
    /* The read may have freed the context (disconnect): cleanup cleared g->ac then. */
    if (g->ac && (events & UV_WRITABLE)) {
        g->unflushed = 0;
        g->writing = 1;
        redisAsyncHandleWrite(g->ac);
        g->writing = 0;
    }
}

static void on_check(uv_check_t *h);
static void on_late(uv_timer_t *t);

/* Why not `bound` alone: a connection that stays deferred while traffic flows would then need a
 * timer every lazy_ms to notice it went idle, and that timer wakes the loop between messages. */
enum { QUIET_MS = 50 };

static void arm_quiet(glue_t *g)
{
    uint64_t quiet = QUIET_MS > g->lazy_ms ? QUIET_MS : (uint64_t)g->lazy_ms;
    uint64_t since = uv_now(g->poll.loop) - g->wrote_at;
    g->bound = 0;
    uv_timer_start(&g->late, on_late, since < quiet ? quiet - since : 0, 0);
}

/* Why compare first: libuv 1.44's uv_poll_start re-registers the fd (epoll_ctl DEL, then ADD)
 * even when the events are the same, and hiredis asks for reads after every write (which is
 * also when a lazy connection defers its reads: hiredis calls add_read after each write). */
static void update(glue_t *g)
{
    if (g->lazy_ms && !g->eager && !g->behind && g->ac && (g->ac->c.flags & REDIS_CONNECTED) &&
        awaiting(g)) {
        if (!g->deferred || !g->bound) {
            /* The bound runs from the first reply not yet read, not from the last write. */
            g->deferred = 1;
            g->bound = 1;
            uv_timer_start(&g->late, on_late, (uint64_t)g->lazy_ms, 0);
        }
        uv_check_start(&g->check, on_check);
        g->wrote_at = uv_now(g->poll.loop);
    } else if (g->eager || g->behind || !g->lazy_ms) {
        g->deferred = 0;
    }
    int want = g->deferred ? g->events & ~UV_READABLE : g->events;
    if (want == g->watched)
        return;
    g->watched = want;
    if (want)
        uv_poll_start(&g->poll, want, on_poll);
    else
        uv_poll_stop(&g->poll);
}

/* After the loop's poll returned (woken for anything): the replies that came meanwhile. A read
 * that finds none costs one recv returning EAGAIN. */
static void on_check(uv_check_t *h)
{
    glue_t *g = h->data;
    if (g->deferred && answer_due(g))
        redisAsyncHandleRead(g->ac); /* may free the context (g->ac cleared) */
    if (answer_due(g))
        return;
    /* The next write (the flush before the next poll) starts both again. */
    uv_check_stop(h);
    if (g->ac && g->deferred && g->bound)
        arm_quiet(g);
}

static void on_late(uv_timer_t *t)
{
    glue_t *g = t->data;
    if (!g->ac || !g->deferred)
        return;
    if (g->bound) {
        redisAsyncHandleRead(g->ac);
        if (!g->ac)
            return;
        if (!answer_due(g)) {
            arm_quiet(g);
            return;
        }
        /* A reply still missing: Redis runs behind. Its reply wakes the loop as usual, and
         * reads stay watched until it came (not this timer every lazy_ms meanwhile). */
        g->behind = 1;
    }
    g->deferred = 0;
    update(g);
}

static void on_flush(uv_prepare_t *h)
{
    glue_t *g = h->data;
    uv_prepare_stop(h);
    if (!g->ac || !g->flush_due)
        return;
    g->flush_due = 0;
    g->unflushed = 0;
    /* May free the context (a write error disconnects): g itself lives until its handles
     * closed, which is after this callback. */
    g->writing = 1;
    redisAsyncHandleWrite(g->ac);
    g->writing = 0;
}

static void add_read(void *p)
{
    glue_t *g = p;
    g->events |= UV_READABLE;
    update(g);
}

static void del_read(void *p)
{
    glue_t *g = p;
    g->events &= ~UV_READABLE;
    update(g);
}

static void add_write(void *p)
{
    glue_t *g = p;
    /* While connecting, POLLOUT is how hiredis learns the connect finished; and a write asked
     * for from inside a write means the socket took only part of the buffer. */
    if ((g->ac->c.flags & REDIS_CONNECTED) && !g->writing) {
        g->flush_due = 1;
        g->unflushed++; /* hiredis asks once per command it queues */
        uv_prepare_start(&g->flush, on_flush);
        return;
    }
    g->events |= UV_WRITABLE;
    update(g);
}

static void del_write(void *p)
{
    glue_t *g = p;
    g->flush_due = 0;
    g->events &= ~UV_WRITABLE;
    update(g);
}

static void on_close(uv_handle_t *h)
{
    glue_t *g = h->data;
    if (--g->open == 0)
        free(g);
}

static void cleanup(void *p)
{
    glue_t *g = p;
    g->ac = NULL;
    uv_poll_stop(&g->poll);
    /* Why: a uv handle may only be freed in its close callback (all four, here). */
    uv_close((uv_handle_t *)&g->poll, on_close);
    uv_close((uv_handle_t *)&g->flush, on_close);
    uv_close((uv_handle_t *)&g->check, on_close);
    uv_close((uv_handle_t *)&g->late, on_close);
}

int sb_uvredis_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data)
        return -1;
    glue_t *g = calloc(1, sizeof *g);
    if (!g)
        return -1;
    if (uv_poll_init(loop, &g->poll, ac->c.fd) != 0) {
        free(g);
        return -1;
    }
    uv_prepare_init(loop, &g->flush);
    uv_check_init(loop, &g->check);
    uv_timer_init(loop, &g->late);
    g->open = 4;
    g->ac = ac;
    g->poll.data = g;
    g->flush.data = g;
    g->check.data = g;
    g->late.data = g;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = g;
    return 0;
}

int sb_uvredis_divert_reads(redisAsyncContext *ac, void (*on_readable)(redisAsyncContext *ac))
{
    glue_t *g = ac->ev.data;
    if (!g || ac->ev.addRead != add_read)
        return -1;
    g->on_readable = on_readable;
    return 0;
}

int sb_uvredis_lazy(redisAsyncContext *ac, int ms)
{
    glue_t *g = ac->ev.data;
    if (!g || ac->ev.addRead != add_read || g->on_readable || ms < 0)
        return -1;
    g->lazy_ms = ms;
    if (!ms) {
        g->deferred = 0;
        update(g);
    }
    return 0;
}

void sb_uvredis_eager(redisAsyncContext *ac, int eager)
{
    glue_t *g = ac->ev.data;
    if (!g || ac->ev.addRead != add_read || !g->lazy_ms || g->eager == !!eager)
        return;
    g->eager = !!eager;
    if (g->eager && g->deferred) {
        g->deferred = 0;
        update(g); /* its reply wakes the loop as usual */
    }
}
