/* The admin's process context and the types its modules share. One sb_admin_t per process,
 * passed explicitly; the only global is the signal handling libuv's signal handles stand in
 * for. One noun per file: main.c (wiring only: it exports nothing), options.c (option table,
 * token), auth.c (bearer check), http.c (lws, routes), lease.c (the reconcile lease, the pass
 * schedule, readiness), reconcile.c (the pass), nodes.c (walk of the node index), reap.c (dead
 * nodes and stale sockets), grace.c (away sessions at their deadline), scan.c (SSCAN walks),
 * status.c (mesh-status and metrics figures),
 * events.c (activity log), totals.c (P:admin:totals), metrics.c (Prometheus text). Key names
 * come from common/keys.h.
 * Every function here that takes a callback either returns an error and never calls it, or
 * returns 0 and calls it exactly once, later (never from inside the call). */
#ifndef SB_ADMIN_H
#define SB_ADMIN_H

#include "prom.h"
#include "cluster.h"
#include "config.h"
#include "keys.h"
#include "map.h"
#include "redis.h"

#include <jansson.h>
#include <stdint.h>
#include <uv.h>

struct lws_context;

typedef struct {
    char *listen, *redis, *prefix, *token_file, *log_level;
    int64_t redis_timeout_ms, reconcile_interval_ms, events_max;
    int64_t max_connections, max_connections_per_ip; /* resolved at start (never 0) */
} sb_admin_config_t;

/* Parses options (defaults < env < flags), checks them and loads the token (from --token-file,
 * else SWITCHBOARD_ADMIN_TOKEN). Returns 0, 1 when --help or --version was printed, or 2 after
 * printing one line naming the bad option. *token is malloc'd (the caller frees it). */
int sb_admin_options(sb_admin_config_t *cfg, char **token, size_t *token_len, int argc, char **argv,
                     char *const *envp);
void sb_admin_options_free(sb_admin_config_t *cfg);

/* Kinds of invariant violations a pass repairs (labels of
 * switchboard_invariant_violations_total{kind}). */
typedef enum {
    SB_VIOL_COUNTER = 0, /* a room's or P:stats's figures, node counts, index entries */
    SB_VIOL_HALF_LINK,   /* a half link towards a non-member (or itself) */
    SB_VIOL_DEGREE,      /* a wrong, missing or extra degree field */
    SB_VIOL__COUNT
} sb_violation_kind_t;

extern const char *const sb_violation_names[SB_VIOL__COUNT];  /* "counter", "half-link", ... */
extern const char *const sb_violation_totals[SB_VIOL__COUNT]; /* P:admin:totals fields */

/* The result of one reconcile pass (the JSON of last_reconcile). */
typedef struct {
    int64_t at_ms; /* wall clock at the start */
    int64_t duration_ms;
    int64_t stale_sockets; /* sockets reaped (dead nodes' and swept) */
    int64_t swept_sockets; /* of which found by the room sweep */
    int64_t stale_links;   /* links removed by those reaps + half links repaired */
    int64_t remaining_links;
    int64_t active_users;
    int64_t violations[SB_VIOL__COUNT];
    int64_t nodes_down; /* dead nodes forgotten */
    int64_t rooms_checked;
    int stats_checked; /* stats_check ran (skipped above SB_STATS_CHECK_MAX_ROOMS) */
    /* room_check or stats_check calls Redis refused (a key of the wrong type, ...): each is
     * logged and its room or bucket left as it is; the pass goes on with the others. */
    int64_t check_errors;
} sb_pass_result_t;

#define SB_STATS_CHECK_MAX_ROOMS 1500

/* Histogram of pass durations (this process's passes). */
typedef struct {
    sb_hist_t pass_duration; /* this process's passes (bounds set at the first one) */
} sb_admin_metrics_t;

typedef struct sb_admin sb_admin_t;
typedef struct sb_pass sb_pass_t;

struct sb_admin {
    sb_admin_config_t cfg;
    uv_loop_t *loop;
    struct lws_context *lws;
    sb_cluster_t *db; /* Redis: one server or a cluster (buckets.c routes commands by key) */
    int cluster;      /* db is a Redis Cluster: one bucket per slot (common/keys.h) */
    int redis_up;     /* every slot served by a connected primary (lease.c, from on_state) */
    unsigned char *token_digest; /* HMAC of the token under token_key (auth.c) */
    unsigned char token_key[32];
    char holder[80];             /* this process's id for the reconcile lease */
    char events_max[24];         /* cfg.events_max as text, for XADD MAXLEN ~ and room_remove */
    uv_signal_t sigint, sigterm; /* main.c */
    int stopping;
    /* lease.c */
    uv_timer_t tick;       /* lease attempts, every interval / 4 (at most 1 s) */
    uv_timer_t pass_timer; /* periodic passes, every interval */
    int64_t last_reply_ms; /* monotonic: the last reply from Redis (readiness) */
    int lease_held;
    int lease_pending; /* an admin_lock call is in flight */
    /* reconcile.c */
    sb_pass_t *pass;      /* the pass in progress, or NULL */
    sb_map_t known_nodes; /* node id -> epoch (malloc'd) seen by this admin's passes */
    int nodes_primed;     /* known_nodes was filled once (no node-up for those) */
    /* reap.c */
    sb_map_t reaping; /* node id -> reap in progress */
    /* Called when a reap marked a session away (main.c wires grace.c's sweep to it, so that
     * reap.c, which the sweep uses, does not call up into it), or NULL. */
    void (*on_marked_away)(sb_admin_t *a);
    /* grace.c */
    uv_timer_t grace_timer;       /* the earliest away deadline still ahead */
    struct sb_grace *grace_sweep; /* the sweep in progress, or NULL */
    int grace_again;              /* asked for during that sweep: another one after it */
    /* metrics.c */
    sb_admin_metrics_t metrics;
};

/* buckets.c: the admin's Redis. */
/* argv[1] is the key the command is routed by (every command the admin sends has one); the
 * callback contract of sb_cluster_command. */
int sb_admin_cmd(sb_admin_t *a, sb_redis_cb cb, void *data, int argc, const char **argv,
                 const size_t *lens);
/* Runs the embedded script name, routed by args[0] (KEYS[1]); sb_cluster_script's contract. */
int sb_admin_script(sb_admin_t *a, const char *name, int nkeys, int nargs, const char **args,
                    const size_t *lens, sb_redis_cb cb, void *data);
/* The bucket tag of room[0..len) (static), NULL when out of memory. */
const char *sb_admin_tag(const sb_admin_t *a, const char *room, size_t len);
/* What bucket_read found over every bucket of every primary. */
typedef struct {
    char (*tags)[SB_TAG_MAX]; /* buckets whose P:{T}:suffix exists */
    int n;
    int64_t rooms, members, links, linked; /* the buckets' figures, summed */
    int64_t away;                          /* sockets away (session resume), summed */
    /* The PeerJS share of members, links and away (the pj_* fields, rooms named ~pj.K:
     * docs/design.md), summed; 0 from a bucket_read that does not return them. */
    int64_t pj_members, pj_links, pj_away;
    int missing_slots; /* slots whose buckets could not be read (no primary, or it failed) */
    int first_missing; /* the lowest of them */
} sb_buckets_t;
/* b is borrowed (valid during the call); error is always NULL (failures are missing slots). */
typedef void (*sb_buckets_cb)(sb_admin_t *a, const sb_buckets_t *b, const char *error, void *data);
/* Reads every bucket: the sums of their figures, and which have P:{T}:suffix ("rooms",
 * "node:N:sockets", or ""). Returns 0 and calls cb once later, or SB_EUNAVAIL / SB_ENOMEM (no
 * primary reachable, out of memory) without calling it. */
int sb_buckets_read(sb_admin_t *a, const char *suffix, sb_buckets_cb cb, void *data);
/* A malloc'd copy of b's tags into *tags and *n (NULL and 0 when none); 0, or -1 when out of
 * memory. */
int sb_buckets_keep(const sb_buckets_t *b, char (**tags)[SB_TAG_MAX], int *n);

/* auth.c: the bearer token check. */
/* Keeps a keyed digest of token (copied) for sb_admin_auth_check; 0 or -1. */
int sb_admin_auth_init(sb_admin_t *a, const char *token, size_t len);
void sb_admin_auth_free(sb_admin_t *a);
/* 1 when header (the Authorization value, NUL-terminated, may be NULL) is "Bearer <token>"
 * with exactly our token; 0 otherwise. Takes the same time for every token of a given length
 * and never stops early at the first differing byte. */
int sb_admin_auth_check(const sb_admin_t *a, const char *header);
/* 1 when a query string (without '?', may be NULL) carries a parameter that looks like a
 * credential (token, access_token, auth, ...): such requests are refused. */
int sb_admin_auth_query_has_token(const char *query);

/* lease.c: the reconcile lease, the pass schedule, readiness. */
/* Starts the lease timer (every interval / 4, at most 1 s) and the pass timer (every
 * interval). a->loop must be set. */
void sb_lease_start(sb_admin_t *a);
/* Stops and closes both timers (shutdown). */
void sb_lease_stop(sb_admin_t *a);
/* The Redis client's hooks: a reply came back; every slot is served (tries the lease at once);
 * some slot is not (the lease is lost, readiness waits for a new reply). */
void sb_lease_redis_replied(sb_admin_t *a);
void sb_lease_redis_up(sb_admin_t *a);
void sb_lease_redis_down(sb_admin_t *a);
/* 1 while Redis works: every slot served, and a reply came back within two lease ticks plus
 * the command timeout (a connection to a stopped Redis can look connected). */
int sb_lease_redis_ready(const sb_admin_t *a);

/* http.c */
int sb_http_start(sb_admin_t *a);
void sb_http_stop(sb_admin_t *a);

/* events.c: the activity log (P:events). */
/* XADD P:events MAXLEN ~ events-max * type <type> data <data> (data stolen; fire and forget). */
void sb_events_add(sb_admin_t *a, const char *type, json_t *data);
/* Converts an XREVRANGE reply (borrowed) into a new JSON array of {id, type, at, data}. */
json_t *sb_events_from_reply(const redisReply *reply);
/* ISO 8601 UTC with milliseconds ("2026-01-01T00:00:00.000Z") of ms since the epoch. */
void sb_iso8601(int64_t ms, char *buf, size_t len);

/* totals.c: P:admin:totals. */
/* HINCRBY P:admin:totals field delta (fire and forget; nothing when delta is 0). */
void sb_totals_add(sb_admin_t *a, const char *field, int64_t delta);
/* The totals of an HGETALL reply (borrowed; NULL gives zeros) as a new JSON object: every
 * field, 0 when absent, and violations_by_kind. */
json_t *sb_totals_from_reply(const redisReply *reply);

/* reap.c: removing what a dead node left behind. */
/* The map of reaps in progress (a->reaping): at start, and at exit once the loop has ended. */
void sb_reap_init(sb_admin_t *a);
void sb_reap_free(sb_admin_t *a);
typedef struct {
    int64_t sockets; /* sockets this reap removed (room_remove answered "ok") */
    int64_t links;   /* links those removals ended */
    int forgotten;   /* this reap removed the node from P:nodes */
} sb_reap_result_t;
/* Called exactly once; r is borrowed; error is NULL or why the reap stopped early. */
typedef void (*sb_reap_cb)(sb_admin_t *a, const sb_reap_result_t *r, const char *error, void *data);
/* Reaps node N (whose lease lapsed) through its socket index: every socket whose presence is
 * gone is removed by room_remove "expired" (which re-checks), then the node leaves P:nodes (when
 * none of its sockets was live and every bucket could be read). Calls sharing a
 * node join the reap in progress. Returns 0 and calls cb once, or SB_EUNAVAIL without. Totals
 * and node-down events are recorded by the reap itself. */
int sb_reap_node(sb_admin_t *a, const char *node, sb_reap_cb cb, void *data);
/* 1 when s[0..len) is an index entry "R S" with R a room the keys may hold and S an id of 1..64
 * bytes (no space or NUL); *rlen is then R's length. Entries that fail were written by no script
 * (the callers drop them, logged). */
int sb_reap_entry(const char *s, size_t len, size_t *rlen);
/* room_remove "expired" of one socket. status: 1 removed (links set), 2 live, 0 gone, -1 error. */
typedef void (*sb_reap_socket_cb)(sb_admin_t *a, int status, int64_t links, void *data);
int sb_reap_socket(sb_admin_t *a, const char *room, size_t rlen, const char *sid, size_t slen,
                   const char *node, sb_reap_socket_cb cb, void *data);

/* A batch of calls issued together (the reaps of one SSCAN batch, and any other calls its owner
 * counts in): how many are in flight, what the reaps removed, the first failure. One batch at
 * a time per walk keeps every walk's Redis load bounded. */
typedef struct {
    int pending;            /* calls in flight, +1 while the batch is being issued */
    int64_t sockets, links; /* removed by this batch's reaps (room_remove answered "ok") */
    const char *error;      /* the first failure, or NULL */
} sb_batch_t;
/* Starts issuing a batch (holds the +1 that sb_batch_settle drops at the end of issuing). */
void sb_batch_open(sb_batch_t *b);
/* Counts a call about to be issued; then pass its return code to sb_batch_issued, which
 * uncounts it and records "unavailable" when it failed. Returns rc. */
void sb_batch_add(sb_batch_t *b);
int sb_batch_issued(sb_batch_t *b, int rc);
/* Records a failure (the first one is kept). error must outlive the batch: a literal, not a
 * reply's or a request's text. */
void sb_batch_fail(sb_batch_t *b, const char *error);
/* One call of the batch answered (or the issuing ended): 1 when it was the last. */
int sb_batch_settle(sb_batch_t *b);
/* sb_reap_socket counted in the batch (add, call, issued); its cb must call sb_batch_reaped. A
 * room or id that is not valid (SB_EINVAL) is skipped, logged, without failing the batch. */
int sb_batch_reap(sb_admin_t *a, sb_batch_t *b, const char *room, size_t rlen, const char *sid,
                  size_t slen, const char *node, sb_reap_socket_cb cb, void *data);
/* A reap of the batch answered (status and links as sb_reap_socket_cb's): counts what it
 * removed; 1 when it was the last call of the batch. */
int sb_batch_reaped(sb_batch_t *b, int status, int64_t links);
/* The batch is complete: adds what it removed to P:admin:totals, clears it for the next one and
 * returns its failure (NULL when none). */
const char *sb_batch_close(sb_admin_t *a, sb_batch_t *b);

/* grace.c: away sessions removed at the end of their grace (the lease holder's). */
/* Init and close of the timer (main.c, around the loop). */
void sb_grace_start(sb_admin_t *a);
void sb_grace_stop(sb_admin_t *a);
/* Sweeps the deadline index now, or once more after the sweep in progress: after every pass,
 * and when a reap marked a session away. Nothing when this admin does not hold the lease. */
void sb_grace_kick(sb_admin_t *a);

/* nodes.c: the node index walk. */
typedef struct {
    char *id;
    json_t *lease; /* parsed lease (new reference), or NULL when not JSON */
} sb_node_info_t;
typedef struct {
    sb_node_info_t *v; /* live nodes (lease present), in no particular order */
    int n, cap;
    sb_reap_result_t reaped; /* summed over the lapsed nodes reaped by this walk */
    /* Redis Cluster with a shard lost: leases that could not be read (those nodes are listed
     * with lease NULL and never reaped), and whether P:nodes itself could not be read (the
     * list is then empty). Figures built on them are partial. */
    int unknown, index_unread;
} sb_nodes_t;
void sb_nodes_free(sb_nodes_t *nodes);
/* Called exactly once. nodes is handed over (the callback frees it with sb_nodes_free, and
 * after an error it may be partial). */
typedef void (*sb_nodes_cb)(sb_admin_t *a, sb_nodes_t *nodes, const char *error, void *data);
/* Walks P:nodes with SSCAN, reads each lease, and reaps (awaited) every node whose lease is
 * gone. Returns 0 and calls cb once, or SB_EUNAVAIL without calling it. */
int sb_nodes_walk(sb_admin_t *a, sb_nodes_cb cb, void *data);

/* reconcile.c */
/* The nodes this admin's passes have seen (a->known_nodes, for node-up): at start, and at exit
 * once the loop has ended. */
void sb_reconcile_init(sb_admin_t *a);
void sb_reconcile_free(sb_admin_t *a);
/* Called exactly once; r is borrowed. */
typedef void (*sb_pass_cb)(sb_admin_t *a, const sb_pass_result_t *r, const char *error, void *data);
/* Runs a pass now, or joins the one in progress (concurrent callers share one pass). cb may be
 * NULL. Returns 0 and calls cb once, or SB_EUNAVAIL without calling it. */
int sb_reconcile_run(sb_admin_t *a, sb_pass_cb cb, void *data);
/* The pass result as JSON (new reference), the shape of mesh-status's last_reconcile. */
json_t *sb_pass_json(const sb_pass_result_t *r);

/* status.c: figures for mesh-status and metrics. */
typedef struct {
    sb_nodes_t nodes;
    int64_t rooms, members, links, linked;
    int64_t away; /* sockets away (session resume): members whose socket may still resume */
    int64_t pj_members, pj_links, pj_away; /* the PeerJS share of members, links and away */
    int missing_slots, first_missing;      /* slots whose figures could not be read (partial) */
    json_t *last;                          /* P:admin:last parsed (new reference) or NULL */
    json_t *totals; /* object of P:admin:totals as integers (new reference), NULL when unread */
    json_t *events; /* newest events (new reference) or NULL */
    /* Global keys that could not be read (a Redis Cluster shard lost): SB_UNREAD_* bits. */
    unsigned unread;
} sb_status_t;
enum {
    SB_UNREAD_NODES = 1,  /* P:nodes, or some node's lease */
    SB_UNREAD_LAST = 2,   /* P:admin:last */
    SB_UNREAD_TOTALS = 4, /* P:admin:totals */
    SB_UNREAD_EVENTS = 8, /* P:events */
};
typedef void (*sb_status_cb)(sb_admin_t *a, sb_status_t *st, const char *error, void *data);
/* Reaps lapsed nodes, then reads the figures, the last pass, the totals and (with events > 0)
 * that many newest events. Returns 0 and calls cb once with st borrowed (valid during cb), or
 * SB_EUNAVAIL without calling it. */
int sb_status_collect(sb_admin_t *a, int events, sb_status_cb cb, void *data);
/* The figures of one protocol's share: peerjs 1 the PeerJS members, links and away; 0 the
 * native ones (the totals less the PeerJS share, never below 0). */
typedef struct {
    int64_t users, links, away;
} sb_share_t;
sb_share_t sb_status_share(const sb_status_t *st, int peerjs);
/* mesh-status JSON (docs/admin.md) of st (new reference). */
json_t *sb_status_json(const sb_status_t *st);

/* metrics.c: the admin's Prometheus text (the node's is node/metrics.c). */
/* Adds one pass of this process to the duration histogram. */
void sb_admin_metrics_observe_pass(sb_admin_t *a, double seconds);
/* Prometheus text of st and this process's counters; malloc'd (NULL on OOM), *len set. */
char *sb_admin_metrics_render(const sb_admin_t *a, const sb_status_t *st, size_t *len);

#endif
