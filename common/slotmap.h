/* The Redis Cluster slot map: which primary (and replicas) serves each of the 16384 slots, as
 * read from a CLUSTER SLOTS reply, and the -MOVED / -ASK redirect errors. Pure: no I/O; replies
 * are hiredis reply trees the caller owns. */
#ifndef SB_SLOTMAP_H
#define SB_SLOTMAP_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "slot.h"

typedef struct {
    char *host; /* never NULL; IPv6 without brackets */
    int port;
    char *id; /* cluster node id (40 hex), "" when the reply did not say */
} sb_node_addr_t;

typedef struct {
    sb_node_addr_t primary;
    int nreplicas;
    sb_node_addr_t *replicas;
    int nslots; /* slots this primary owns */
} sb_shard_t;

typedef struct {
    int nshards;
    sb_shard_t *shards;
    int16_t owner[SB_SLOTS]; /* index into shards, -1 when no one serves the slot */
} sb_slotmap_t;

/* Parses a CLUSTER SLOTS reply into m (which the caller frees with sb_slotmap_free, also after
 * a failure). Ranges of the same primary (same host and port) are merged into one shard. An
 * endpoint that is NULL, "" or "?" means "the host you asked": seed_host is used then.
 * Returns 0, or -1 with a reason in err when the reply is not a well-formed CLUSTER SLOTS reply
 * (an empty array is well formed: every slot is a hole). */
int sb_slotmap_parse_slots(sb_slotmap_t *m, const redisReply *reply, const char *seed_host,
                           char *err, size_t errlen);

/* A map with one shard (host, port, no id) owning every slot: single-instance mode. */
int sb_slotmap_single(sb_slotmap_t *m, const char *host, int port);

void sb_slotmap_free(sb_slotmap_t *m);

/* Number of slots no shard serves; *first (may be NULL) gets the lowest one, or -1. */
int sb_slotmap_holes(const sb_slotmap_t *m, int *first);

/* Index of the shard whose primary is host:port, or -1. */
int sb_slotmap_find(const sb_slotmap_t *m, const char *host, int port);

typedef struct {
    int ask;        /* 1: -ASK (one command, map unchanged); 0: -MOVED (the slot moved for good) */
    int slot;       /* 0..16383 */
    char host[256]; /* "" when the error carried no host (":port"): the host that answered */
    int port;
} sb_redirect_t;

/* Parses an error reply text "MOVED 3999 127.0.0.1:6381" or "ASK 3999 [::1]:6381" /
 * "ASK 3999 ::1:6381" (Redis writes IPv6 without brackets: the port is after the last ':').
 * Returns 0 and fills out, or -1 when err is not a well-formed redirect. */
int sb_redirect_parse(const char *err, size_t len, sb_redirect_t *out);

/* What a command does next after an error reply (cluster.c; docs/design.md, "Slot migrations"). */
typedef enum {
    SB_NEXT_DONE,   /* not a redirect or a retry: the reply is the caller's */
    SB_NEXT_FOLLOW, /* MOVED, or ASK of a plain command: send it to the target now */
    SB_NEXT_WAIT,   /* send it to the slot's owner again after *delay_ms */
    SB_NEXT_FAIL,   /* no time left: "unavailable" */
} sb_next_t;

enum { SB_MAX_FOLLOWS = 5 }; /* redirects followed at once; past that they wait (a loop) */

/* The decision for error text err (len bytes) of a command that was redirected or retried
 * `tries` times already and may wait left_ms more. A script never follows ASK: the slot is
 * migrating and the script's undeclared keys may still be on the source, so it waits, like
 * TRYAGAIN, until the slot has moved (MOVED). Waits back off 10, 20, .. 50 ms. Pure. */
sb_next_t sb_redirect_next(const char *err, size_t len, int script, int tries, int64_t left_ms,
                           int64_t *delay_ms);

#endif
