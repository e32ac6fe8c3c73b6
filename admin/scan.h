/* A walk over one Redis set with SSCAN in batches of bounded COUNT, one batch in flight at a
 * time (the reap index of a node, P:nodes, P:rooms). Owns the cursor and the check of the reply's
 * shape; what is done with a batch belongs to the caller. No allocation: the walk lives inside
 * the caller's own state, which must outlive the callback. */
#ifndef SB_ADMIN_SCAN_H
#define SB_ADMIN_SCAN_H

#include "cluster.h"
#include "keys.h"
#include "redis.h"

/* Each SSCAN asks for this many elements: no Redis call is long, whatever the set's size. */
#define SB_SCAN_COUNT "100"

/* items: the batch (an array reply, borrowed: valid during the call; may be empty, and may
 * repeat an element an earlier batch had, as SSCAN may), or NULL with error set. */
typedef void (*sb_scan_cb)(const redisReply *items, const char *error, void *data);

typedef struct {
    sb_cluster_t *db;
    char key[SB_KEY_MAX];
    char cursor[32];
    int started; /* a batch has come back: cursor "0" now means the walk is complete */
    sb_scan_cb cb;
    void *data;
} sb_scan_t;

/* Starts a walk over the set key (copied; -1 when longer than SB_KEY_MAX). Sends nothing. */
int sb_scan_init(sb_scan_t *s, sb_cluster_t *db, const char *key);
/* 1 once the batch last handed over was the set's last (nothing more to ask for). */
int sb_scan_done(const sb_scan_t *s);
/* Asks for the next batch. Returns 0 and calls cb exactly once, later, or an error (SB_EUNAVAIL)
 * without calling it. At most one call in flight per walk. */
int sb_scan_next(sb_scan_t *s, sb_scan_cb cb, void *data);

#endif
