/* Our libuv event glue for hiredis 0.14 async contexts. Unlike Debian's adapters/libuv.h it
 * does not ignore poll errors: an error on the socket is handed to hiredis as a read (or, while
 * connecting, a write) so that hiredis sees the failure and disconnects. */
#ifndef SB_UVREDIS_H
#define SB_UVREDIS_H

#include <hiredis/async.h>
#include <uv.h>

/* Attaches ac to loop. Returns 0, or -1 (out of memory, or ac already attached). The glue is
 * released by hiredis's cleanup hook when ac is freed; the uv handle closes asynchronously. */
int sb_uvredis_attach(redisAsyncContext *ac, uv_loop_t *loop);

/* From now on, when ac's socket is readable call on_readable(ac) instead of hiredis's
 * redisAsyncHandleRead (NULL restores it). For a connection that reads its replies itself
 * (redis.c's sharded subscriber: hiredis 0.14's reply dispatch cannot take them). Returns 0, or
 * -1 when ac is not attached. */
int sb_uvredis_divert_reads(redisAsyncContext *ac, void (*on_readable)(redisAsyncContext *ac));

#endif
