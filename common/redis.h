/* The Redis client both binaries use: hiredis 0.14 async on the caller's libuv loop, with what
 * hiredis lacks: non-blocking name resolution, a connect timeout, a timeout on every command,
 * exactly-once error callbacks on disconnect, reconnect with jittered backoff (capped at 1 s),
 * AUTH/SELECT from the URL, and a pub/sub mode that resubscribes after a reconnect.
 * It does not know about scripts (scripts.c) or what a connection is for. */
#ifndef SB_REDIS_H
#define SB_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sb_redis sb_redis_t;

/* Called exactly once per accepted command. reply is borrowed (copy what you keep) and may be
 * an error reply; on a transport failure reply is NULL and error says why ("timeout",
 * "disconnected", ...). */
typedef void (*sb_redis_cb)(redisReply *reply, const char *error, void *data);

typedef struct {
    uv_loop_t *loop;
    const char *url;    /* copied */
    const char *name;   /* for logs: "command", "pubsub"; copied */
    int64_t timeout_ms; /* per command, and for connecting */
    int subscriber;     /* 1: pub/sub mode (only sb_redis_subscribe) */
    /* After every (re)connect, once AUTH/SELECT succeeded (and, in pub/sub mode, once Redis
     * confirmed every SUBSCRIBE). Commands may be issued from here. */
    void (*on_up)(sb_redis_t *r, void *data);
    /* After a connection was lost; every pending callback has already had its error. */
    void (*on_down)(sb_redis_t *r, const char *why, void *data);
    /* With subscriber: Redis 7 sharded pub/sub (SSUBSCRIBE/SUNSUBSCRIBE, "smessage") instead of
     * classic SUBSCRIBE. The connection then parses its replies itself (see redis.c). */
    int sharded;
    /* Sharded mode: Redis refused an SSUBSCRIBE (error is its reply, e.g. "MOVED 12 h:p"), or
     * dropped a subscription on its own (error "sunsubscribe": the slot moved away). The
     * channel stays in this client's list (resubscribed after a reconnect) until the caller
     * calls sb_redis_unsubscribe. channel and error are borrowed. May be NULL. */
    void (*on_sub_error)(sb_redis_t *r, const char *channel, const char *error, void *data);
    /* Sharded mode: Redis confirmed an SSUBSCRIBE of channel (after every (re)subscription):
     * messages published from now on are delivered. May be NULL. */
    void (*on_subscribed)(sb_redis_t *r, const char *channel, void *data);
    /* Pub/sub mode: a message on a subscribed channel. payload is borrowed. */
    void (*on_message)(sb_redis_t *r, const char *channel, const char *payload, size_t len,
                       void *data);
    /* Latency of every completed command, in seconds (for a histogram); may be NULL. */
    void (*observe)(double seconds, void *data);
    /* > 0: replies of commands sent with sb_redis_argv_lazy may be read up to this many ms late,
     * at the loop's next wake-up for something else (common/uvredis.h, sb_uvredis_lazy): they
     * no longer wake the process on their own. Not in pub/sub mode. */
    int lazy_ms;
    void *data;
} sb_redis_opts_t;

enum { SB_EUNAVAIL = -1, SB_ENOMEM = -2, SB_EINVAL = -3 };

/* Creates a client and starts connecting. The URL must already be valid (config checked it).
 * Returns NULL only when out of memory or the URL is invalid (or a redis-cluster:// seed list:
 * that needs sb_cluster_new). */
sb_redis_t *sb_redis_new(const sb_redis_opts_t *opts);

/* 1 when connected and AUTH/SELECT done. */
int sb_redis_up(const sb_redis_t *r);
/* How long the oldest command still waiting for its reply has waited, in ms (0: none, or not
 * connected): how far Redis runs behind on this connection. Commands answered "timeout" count
 * until their late reply came, since Redis still runs them. */
int64_t sb_redis_lag_ms(const sb_redis_t *r);

/* Sends a command. Returns 0 and calls cb exactly once later, or returns SB_EUNAVAIL when not
 * connected (cb is never called). cb may be NULL (fire and forget). */
int sb_redis_command(sb_redis_t *r, sb_redis_cb cb, void *data, const char *fmt, ...);
int sb_redis_argv(sb_redis_t *r, sb_redis_cb cb, void *data, int argc, const char **argv,
                  const size_t *lens);
/* As sb_redis_argv, but with opts.lazy_ms set its reply may be read up to lazy_ms late (while
 * only such commands await replies); its latency is not observed. */
int sb_redis_argv_lazy(sb_redis_t *r, sb_redis_cb cb, void *data, int argc, const char **argv,
                       const size_t *lens);

/* Pub/sub mode: subscribes now if connected and again after every reconnect. */
int sb_redis_subscribe(sb_redis_t *r, const char *channel);

/* Pub/sub mode: forgets channel (UNSUBSCRIBE/SUNSUBSCRIBE now if connected). Returns 0, or
 * SB_EINVAL when channel was not subscribed. */
int sb_redis_unsubscribe(sb_redis_t *r, const char *channel);

/* 1 when channel is in this client's subscription list. */
int sb_redis_subscribed(const sb_redis_t *r, const char *channel);

/* Drops the connection (every pending callback gets error why) and reconnects with backoff.
 * Safe from any callback, including this client's own reply callbacks. */
void sb_redis_drop(sb_redis_t *r, const char *why);

/* Number of commands awaiting a reply, those already answered "timeout" included: they may
 * still be unsent (in hiredis's buffer, or the kernel's), and a close now would lose them (a
 * drain's session_away or room_remove); a drain waits for them, up to its deadline. */
int sb_redis_pending(const sb_redis_t *r);

/* Stops for good: pending callbacks get "closing", no reconnect; the struct is freed once its
 * uv handles are closed (let the loop run). */
void sb_redis_close(sb_redis_t *r);

/* Helpers for replies. */
int sb_reply_is_error(const redisReply *reply);
/* An error reply that means "not now" (Redis cannot take writes, is loading, busy, failing
 * over: OOM, LOADING, BUSY, READONLY, MASTERDOWN, MISCONF, TRYAGAIN, CLUSTERDOWN, NOREPLICAS):
 * a retry may succeed. 0 for any other reply, and for errors a retry will not cure. */
int sb_reply_is_transient(const redisReply *reply);
/* Element i of an array reply as a string (NULL when not a string/status). */
const char *sb_reply_str(const redisReply *reply, size_t i, size_t *len);
long long sb_reply_int(const redisReply *reply, size_t i, long long fallback);

#endif
