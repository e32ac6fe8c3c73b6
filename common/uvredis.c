/* libuv <-> hiredis glue: one uv_poll_t per async context. Owns only the poll handle; the
 * context itself belongs to the caller (common/redis.c). */
#include "uvredis.h"
#include "log.h"

#include <stdlib.h>

typedef struct {
    redisAsyncContext *ac; /* NULL once hiredis has cleaned up */
    uv_poll_t poll;
    int events;
    void (*on_readable)(redisAsyncContext *ac); /* NULL: hiredis reads */
} glue_t;

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
    }
    /* The read may have freed the context (disconnect): cleanup cleared g->ac then. */
    if (g->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(g->ac);
}

static void update(glue_t *g)
{
    if (g->events)
        uv_poll_start(&g->poll, g->events, on_poll);
    else
        uv_poll_stop(&g->poll);
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
    g->events |= UV_WRITABLE;
    update(g);
}

static void del_write(void *p)
{
    glue_t *g = p;
    g->events &= ~UV_WRITABLE;
    update(g);
}

static void on_close(uv_handle_t *h)
{
    free(h->data);
}

static void cleanup(void *p)
{
    glue_t *g = p;
    g->ac = NULL;
    uv_poll_stop(&g->poll);
    /* Why: a uv handle may only be freed in its close callback. */
    uv_close((uv_handle_t *)&g->poll, on_close);
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
    g->ac = ac;
    g->poll.data = g;
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
