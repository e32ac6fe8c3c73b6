/* The node's process context and the types its modules share. One sb_node_t per process,
 * passed explicitly; the only global is the signal flag in main.c. */
#ifndef SB_NODE_H
#define SB_NODE_H

#include "config.h"
#include "keys.h"
#include "map.h"
#include "prom.h"
#include "proto.h"
#include "ratelimit.h"
#include "redis.h"

#include <jansson.h>
#include <libwebsockets.h>
#include <stdint.h>
#include <uv.h>

typedef struct {
    char *listen, *redis, *id, *prefix, *log_level;
    int64_t redis_timeout_ms, presence_ttl_ms, heartbeat_ms, ping_interval_ms, ping_timeout_ms;
    int64_t max_message_bytes, max_room_members, rate, burst, max_send_queue_bytes;
    sb_strlist_t allowed_origins, turn_urls;
    char *auth_secret_file, *turn_secret_file, *tls_cert, *tls_key;
    int64_t auth_timeout_ms, turn_ttl_ms, drain_timeout_ms;
    int64_t max_connections, max_connections_per_ip; /* resolved at start (never 0) */
} sb_node_config_t;

/* Parses options (defaults < env < flags) and checks combinations. Returns 0, 1 when --help or
 * --version was printed, or 2 after printing one line naming the bad option. */
int sb_node_options(sb_node_config_t *cfg, int argc, char **argv, char *const *envp);
void sb_node_options_free(sb_node_config_t *cfg);

typedef struct sb_node sb_node_t;
typedef struct sb_room sb_room_t;

typedef struct sb_outmsg {
    struct sb_outmsg *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE headroom, then len bytes */
} sb_outmsg_t;

typedef enum { SS_IDLE, SS_JOINING, SS_JOINED, SS_LEAVING } sb_sess_state_t;

/* A WebSocket client. Refcounted: the connection holds one reference, every Redis command in
 * flight for it holds one. When lws closes the connection `closed` is set and wsi cleared; a
 * late reply sees the mark and only drops its reference. */
typedef struct sb_session {
    int refs;
    int closed;
    struct lws *wsi;
    sb_node_t *node;
    char id[SB_SID_MAX + 1];
    int64_t connected_ms;
    int64_t last_rx_ms;             /* the last frame or pong from the client (liveness) */
    int64_t ping_sent_ms;           /* our last ping; one per idle interval */
    int ping_due;                   /* a ping waits for the next WRITEABLE */
    int idle_killed;                /* hung up for silence past --ping-timeout-ms */
    struct sb_session *prev, *next; /* node's list of live sessions */

    sb_sess_state_t state;
    sb_room_t *room; /* while JOINING/JOINED/LEAVING */
    char room_name[SB_ROOM_MAX + 1];
    char *meta_json;                  /* compact meta as stored in Redis (with sub) */
    char maybe_room[SB_ROOM_MAX + 1]; /* a join that timed out may have run there: undone
                                       * before joining elsewhere and at close */
    uint64_t await_seq;               /* JOINING: send `joined` once the room view reaches this */
    json_t *join_rid;                 /* JOINING: rid of the join (new reference) */
    char **halves;                    /* peers this socket reported `link up` to (for re-assert) */
    int nhalves;
    struct sb_session *room_next; /* room's list of local sessions */

    sb_outmsg_t *qhead, *qtail;
    size_t qbytes;
    char *rx;
    size_t rxlen, rxcap;
    int in_redis; /* the join script succeeded and no removal has yet */
    sb_bucket_t bucket;
    int close_code; /* != 0: close with it at the next chance */
    char close_reason[64];
    int close_sent; /* our close frame is written */
} sb_session_t;

/* A node-local view of a room, kept in step with Redis through sequenced events. */
typedef struct {
    char id[SB_SID_MAX + 1];
    char node[65];
    char *meta_json; /* owned */
} sb_member_t;

typedef struct sb_held {
    struct sb_held *next;
    char from[SB_SID_MAX + 1];
    char to[SB_SID_MAX + 1];
    char *data_json; /* the signal's data, as JSON text (data_len bytes, NUL-terminated) */
    size_t data_len;
    int64_t at_ms;
} sb_held_t;

struct sb_room {
    char name[SB_ROOM_MAX + 1];
    sb_node_t *node;
    int synced; /* seq and members are valid */
    uint64_t seq;
    sb_member_t *members;
    int nmembers, cap;
    sb_session_t *local;         /* local sessions in the room (any state but IDLE) */
    json_t *buffered;            /* array of events waiting for their turn (new reference) */
    sb_held_t *held, *held_tail; /* signals from senders not yet known here */
    int64_t gap_since_ms;        /* > 0: a gap was seen at this time */
    int64_t resync_due_ms;       /* > 0: read the room again then (a resync applied additions only);
                                  * unlike gap_since_ms, applying later events does not clear it */
    int resyncing;
    int refs; /* local sessions + commands in flight */
};

typedef struct {
    uint64_t received[SB_MSG__COUNT];
    uint64_t sent, resyncs;
    sb_map_t errors; /* code -> (uintptr_t) count */
    sb_map_t closes; /* code text -> count */
    sb_hist_t redis_latency;
} sb_metrics_t;

struct sb_node {
    sb_node_config_t cfg;
    uv_loop_t *loop;
    struct lws_context *lws;
    char epoch[33];
    sb_redis_t *redis;  /* commands */
    sb_redis_t *pubsub; /* our channel */
    char channel[128];  /* P:node:N */
    char instance[64];  /* known value of P:instance ("" = not yet known) */
    int instance_ok;    /* instance checked on this connection */
    int lease_ok;       /* lease written since the last (re)connect */
    int pubsub_ok;      /* probe came back on the current pub/sub connection */
    uint64_t probe_nonce;
    int64_t probe_sent_ms;
    int draining;
    int64_t drain_deadline_ms;
    int64_t next_idle_check_ms; /* the next ping / silence pass over the sockets */
    int stopping;
    sb_session_t *sessions;
    int nsessions, njoined;
    size_t send_queue_bytes;
    sb_map_t sess_by_id;
    sb_map_t rooms;
    sb_metrics_t metrics;
    unsigned char *auth_secret;
    size_t auth_secret_len;
    unsigned char *turn_secret;
    size_t turn_secret_len;
    uv_timer_t heartbeat, sweep;
    uv_signal_t sigint, sigterm;
    int64_t started_ms;
    int64_t loss_grace_until_ms; /* after a data loss: resyncs only add until then */
};

/* session.c */
sb_session_t *sb_session_new(sb_node_t *n, struct lws *wsi);
void sb_session_ref(sb_session_t *s);
void sb_session_unref(sb_session_t *s);
/* Queues a text frame (copied). Closes the session with 4003 when the queue would exceed
 * --max-send-queue-bytes. */
void sb_session_send(sb_session_t *s, const char *text, size_t len);
/* Queues one text frame made of nparts pieces, copied once into the queue. */
typedef struct {
    const char *p;
    size_t n;
} sb_part_t;
void sb_session_sendv(sb_session_t *s, const sb_part_t *parts, int nparts);
/* Pings sockets idle for --ping-interval-ms and hangs up those silent for --ping-timeout-ms;
 * called from the node's sweep. Returns how many were hung up. */
int sb_session_check_idle(sb_node_t *n, int64_t now_ms);
/* Encodes msg (stolen) and queues it. */
void sb_session_send_json(sb_session_t *s, json_t *msg);
void sb_session_send_error(sb_session_t *s, const char *code, const char *message, json_t *rid);
/* What an accepted join or leave costs in rate tokens (contract section 1); the message that
 * carried it paid 1 when it arrived, this charges the rest (a debt if the bucket is short). */
#define SB_JOIN_LEAVE_COST 10
void sb_session_charge_accepted(sb_session_t *s);
/* Closes with code after the queued frames (or at once when kill), counted in metrics. */
void sb_session_close(sb_session_t *s, int code, const char *reason);
/* lws is about to free the connection. */
void sb_session_detach(sb_session_t *s);
/* WRITEABLE: writes one queued frame; returns -1 to close. */
int sb_session_writable(sb_session_t *s);
/* A complete text message arrived (after reassembly). */
void sb_session_on_message(sb_session_t *s, const char *buf, size_t len);

/* room.c */
void sb_room_join(sb_session_t *s, sb_msg_t *m);
void sb_room_leave(sb_session_t *s, json_t *rid);
void sb_room_signal(sb_session_t *s, sb_msg_t *m);
void sb_room_link(sb_session_t *s, sb_msg_t *m);
/* The socket went away without leave (clean close, reset, ping timeout, drain). */
void sb_room_disconnect(sb_session_t *s);
/* A message on our pub/sub channel (JSON, borrowed). */
void sb_room_on_event(sb_node_t *n, const char *payload, size_t len);
/* Periodic: gap timeouts, held signals expiry. */
void sb_room_sweep(sb_node_t *n);
/* Re-reads every room (pub/sub reconnected, or after data loss). */
void sb_room_resync_all(sb_node_t *n);
void sb_room_detach_session(sb_session_t *s);
/* The socket was reaped while connected here: leave the view, close with 4000. */
void sb_room_expire_session(sb_session_t *s);
/* ice_servers for s: TURN credentials when configured, else []. A new reference. */
json_t *sb_room_ice_servers(sb_session_t *s);

/* presence.c */
void sb_presence_start(sb_node_t *n);
void sb_presence_on_up(sb_node_t *n);
void sb_presence_heartbeat_now(sb_node_t *n);
void sb_presence_stop(sb_node_t *n);
/* Removes the lease and index at the end of a drain; cb when done (or failed). */
void sb_presence_release(sb_node_t *n, void (*cb)(sb_node_t *n));

/* metrics.c */
void sb_metrics_init(sb_metrics_t *m);
void sb_metrics_free(sb_metrics_t *m);
void sb_metrics_error(sb_node_t *n, const char *code);
void sb_metrics_close(sb_node_t *n, int code);
void sb_metrics_observe(double seconds, void *node);
/* Prometheus text; malloc'd. */
char *sb_metrics_render(sb_node_t *n, size_t *len);

/* server.c */
int sb_server_start(sb_node_t *n);
void sb_server_stop(sb_node_t *n);
/* 1 and a reason when /readyz should answer 200. */
int sb_node_ready(sb_node_t *n, const char **why);

/* main.c */
void sb_node_begin_drain(sb_node_t *n);


#endif
