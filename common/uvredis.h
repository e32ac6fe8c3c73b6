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

/* Lazy replies, for a connection whose replies may wait a little (the node's command
 * connections: the reply to a relayed signal's SPUBLISH). While every command awaiting its reply
 * may wait, the loop does not watch the socket for reads: replies are read after the loop's next
 * wake-up for anything else, and at the latest ms after the first one was due, so a reply no
 * longer wakes the process on its own when other traffic flows. As soon as a command that may not
 * wait is pending (sb_uvredis_eager), reads are watched again. A connection that writes nothing
 * for 50 ms (at least ms) is watched as usual; one whose reply is still missing ms after it was
 * due is watched until that reply came. ms 0 turns it off. Returns 0, or -1 when ac is not attached
 * or its reads are diverted. */
int sb_uvredis_lazy(redisAsyncContext *ac, int ms);

/* eager 1: a command whose reply may not wait is pending on ac (read at once, as without lazy
 * replies); 0: none is. No effect unless sb_uvredis_lazy turned lazy replies on. */
void sb_uvredis_eager(redisAsyncContext *ac, int eager);

#endif
