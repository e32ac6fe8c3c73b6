/* The routing Redis client: one API for a single Redis and for a Redis Cluster. It owns the
 * slot map (read with CLUSTER SLOTS from any reachable node), one sb_redis_t per primary for
 * commands and scripts (and, when channels are subscribed, one sharded pub/sub connection per
 * primary), follows MOVED/ASK, retries TRYAGAIN, and notices failovers and restarts. It does
 * not know what the keys mean: callers pick the key a command is routed by.
 * With redis:// or unix:// it is one shard owning every slot and sends no CLUSTER command. */
#ifndef SB_CLUSTER_H
#define SB_CLUSTER_H

#include "embed.h"
#include "redis.h"
#include "slot.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sb_cluster sb_cluster_t;

typedef struct {
    uv_loop_t *loop;
    const char *url;    /* redis://, unix:// or redis-cluster://; copied */
    const char *name;   /* for logs; copied */
    int64_t timeout_ms; /* per command and connect; also how long a redirected or TRYAGAIN
                         * command may wait for its target before it fails */
    /* Slots changed hands: a slot moved to another primary (failover, reshard), or a primary
     * came back with a new run id (restart, possibly empty). Keys in those slots may hold
     * older state than this process wrote: re-assert it. affected is a bitmap of SB_SLOTS bits
     * (sb_cluster_slot_in), borrowed; why is "owner" or "restart". Not fired for the first
     * map. May be NULL. */
    void (*on_topology)(sb_cluster_t *c, const unsigned char *affected, const char *why,
                        void *data);
    /* sb_cluster_up() changed. May be NULL. */
    void (*on_state)(sb_cluster_t *c, int up, void *data);
    /* A message on a subscribed channel (sharded pub/sub). payload is borrowed. */
    void (*on_message)(sb_cluster_t *c, const char *channel, const char *payload, size_t len,
                       void *data);
    /* channel's subscription is (again) in place on the shard that owns it: first subscribe,
     * after its connection came back, after it moved shard. Messages published before may
     * have been missed: resync what the channel carries. May be NULL. */
    void (*on_subscribed)(sb_cluster_t *c, const char *channel, void *data);
    void (*observe)(double seconds, void *data); /* command latency; may be NULL */
    /* > 0: the replies of sb_cluster_publish_received may be read up to this many ms late, at
     * the loop's next wake-up for something else (sb_redis_opts_t.lazy_ms). */
    int lazy_ms;
    void *data;
} sb_cluster_opts_t;

/* Creates the client and starts connecting (and, for a cluster, reading the map). The URL must
 * be valid (config checked it). Returns NULL when out of memory or the URL is invalid. */
sb_cluster_t *sb_cluster_new(const sb_cluster_opts_t *opts);

/* Stops for good: every pending callback gets error "closing" (before this returns), no more
 * callbacks after; memory is released once the uv handles closed (let the loop run). */
void sb_cluster_close(sb_cluster_t *c);

/* 1 for redis-cluster:// URLs. */
int sb_cluster_is_cluster(const sb_cluster_t *c);

/* The callback contract of everything that sends: returns 0 and calls cb exactly once, later,
 * or returns SB_EUNAVAIL (the slot's primary is not connected, or no one serves the slot) or
 * SB_ENOMEM and never calls it. cb may be NULL. Arguments are copied. The reply is borrowed.
 * Redirects are followed inside: cb never sees MOVED, ASK, TRYAGAIN or NOSCRIPT (once); a
 * script told ASK or TRYAGAIN (its slot is migrating) is sent again with backoff until the slot
 * has moved, within timeout_ms, then fails "unavailable". When the command could not be served
 * because of the cluster's state (CLUSTERDOWN, lost primary, uncovered slot, redirect loop), cb
 * gets reply NULL and an error starting with "unavailable": callers map it like a transport error.
 * Order: commands with the same routing key (key, KEYS[1], the channel) run in the order they were
 * given while one of them is retried: the later ones wait behind it (from the next 20 ms tick, and
 * within their own timeout), and a retry keeps its place. Only a later one already sent when the
 * earlier one was turned away can run first, if what turned it away changed in between. A command
 * that waits behind another returns 0 even if its primary is down: it fails at its timeout.
 */

/* Runs argv (argc strings, lens may be NULL for strlen) on the primary of key's slot. */
int sb_cluster_command(sb_cluster_t *c, const char *key, size_t keylen, sb_redis_cb cb, void *data,
                       int argc, const char **argv, const size_t *lens);

/* As sb_script_call (nkeys keys first in args, then ARGV), routed by args[0] (KEYS[1]); every
 * key of a script must be in that slot (Redis refuses CROSSSLOT otherwise). With no keys the
 * call goes to slot 0's primary. NOSCRIPT: the script is loaded on that primary and the call
 * retried once. */
int sb_cluster_script(sb_cluster_t *c, const sb_embed_t *script, int nkeys, int nargs,
                      const char **args, const size_t *lens, sb_redis_cb cb, void *data);

/* SPUBLISH channel payload on the primary of the channel's slot; the reply is the number of
 * receivers on that shard. */
int sb_cluster_publish(sb_cluster_t *c, const char *channel, const char *payload, size_t len,
                       sb_redis_cb cb, void *data);

/* As sb_cluster_publish, but while the reply is 0 (nobody subscribed on that shard) it is
 * published again after 10, 20, 40, 80, 160, 160, ... ms until someone receives it or the
 * timeout passes (the reply is then 0; a receiver that is dead costs a few publishes). For a
 * channel someone is known to subscribe to: after its slot moved, the subscribers re-subscribe on
 * the new owner a moment later, and a message published in between is lost. Order: later commands
 * for the same channel wait behind it (as behind any command being retried, below). With
 * opts.lazy_ms its reply may be read that much late (it then does not wake the process). */
int sb_cluster_publish_received(sb_cluster_t *c, const char *channel, const char *payload,
                                size_t len, sb_redis_cb cb, void *data);

/* Sharded pub/sub: SSUBSCRIBE channel on the shard owning its slot, kept across reconnects and
 * map changes (on_subscribed tells when it is in place). Returns 0, SB_EINVAL when already
 * subscribed, or SB_ENOMEM. */
int sb_cluster_subscribe(sb_cluster_t *c, const char *channel);
int sb_cluster_unsubscribe(sb_cluster_t *c, const char *channel);

/* Commands sent and not yet answered (or waiting for a retry), over every primary. */
int sb_cluster_pending(const sb_cluster_t *c);

/* Drops the pub/sub connection that carries channel (it reconnects and resubscribes all its
 * channels; on_subscribed fires for each): for a subscription that looks alive and delivers
 * nothing. 0, or SB_EINVAL when channel is not placed on a connection. */
int sb_cluster_drop_subscriber(sb_cluster_t *c, const char *channel, const char *why);

/* 1 when the map is read, every slot is covered and every primary is connected. */
int sb_cluster_up(const sb_cluster_t *c);

/* 1 when the map is read and some primary serving slots is connected: some rooms can be
 * served (a shard lost leaves the others working). */
int sb_cluster_partly_up(const sb_cluster_t *c);

/* 1 when slot's primary is known and connected (commands for it can be sent). */
int sb_cluster_slot_up(const sb_cluster_t *c, unsigned slot);
/* sb_redis_lag_ms of the command connection to slot's primary (0 when none). */
int64_t sb_cluster_slot_lag_ms(const sb_cluster_t *c, unsigned slot);

/* Number of slots no primary serves (SB_SLOTS before the first map); *first gets the lowest. */
int sb_cluster_holes(const sb_cluster_t *c, int *first);

/* Asks for the map to be read again soon (e.g. after the caller saw an odd error). */
void sb_cluster_refresh(sb_cluster_t *c);

typedef struct {
    const char *host; /* borrowed: valid until the loop runs again */
    int port;
    const char *id;     /* cluster node id, "" in single mode */
    const char *run_id; /* INFO run_id of the server, "" until known */
    int nslots;
    int up;
    sb_redis_t *redis; /* its command connection (e.g. for SCAN); do not close it */
} sb_cluster_node_t;

/* Counters since sb_cluster_new, for metrics and tests. */
typedef struct {
    uint64_t moved, ask, tryagain, noscript, clusterdown; /* replies seen and handled */
    uint64_t map_reads, map_changes; /* CLUSTER SLOTS answered; maps that moved a slot */
} sb_cluster_stats_t;

void sb_cluster_stats(const sb_cluster_t *c, sb_cluster_stats_t *out);

/* Primaries are numbered 0..n-1; numbers are valid until the loop runs again (a map change
 * renumbers them). */
int sb_cluster_nprimaries(const sb_cluster_t *c);
int sb_cluster_primary(const sb_cluster_t *c, int i, sb_cluster_node_t *out);
/* The number of slot's primary, or -1 when no one serves it. */
int sb_cluster_slot_owner(const sb_cluster_t *c, unsigned slot);

static inline int sb_cluster_slot_in(const unsigned char *bits, unsigned slot)
{
    return (bits[slot >> 3] >> (slot & 7)) & 1;
}

#endif
