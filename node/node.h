/* The node's process context and the types its modules share. One sb_node_t per process,
 * passed explicitly; the only global is the signal flag in main.c. */
#ifndef SB_NODE_H
#define SB_NODE_H

#include "cluster.h"
#include "config.h"
#include "keys.h"
#include "map.h"
#include "prom.h"
#include "proto.h"
#include "ratelimit.h"
#include "view.h"
#include "peerjs.h"
#include "redis.h"

#include <jansson.h>
#include <libwebsockets.h>
#include <stdint.h>
#include <uv.h>

typedef struct {
    char *listen, *redis, *id, *prefix, *log_level;
    int64_t redis_timeout_ms, redis_lazy_reply_ms, presence_ttl_ms, heartbeat_ms, ping_interval_ms,
        ping_timeout_ms;
    int64_t max_message_bytes, max_room_members, rate, burst, max_send_queue_bytes;
    sb_strlist_t allowed_origins, turn_urls;
    char *auth_secret_file, *turn_secret_file, *tls_cert, *tls_key;
    int64_t auth_timeout_ms, turn_ttl_ms, drain_timeout_ms;
    int64_t max_connections, max_connections_per_ip; /* resolved at start (never 0) */
    int64_t queue_budget_bytes; /* resolved at start (never 0): session.c's node-wide budget */
    int64_t queue_stall_ms, join_timeout_ms;
    int64_t resume_grace_ms, resume_queue_max, resume_queue_bytes; /* session resume */
    /* PeerJS (docs/peerjs.md): peerjs_path NULL when off; peerjs_room "~pj.KEY". */
    char *peerjs_path, *peerjs_key, *peerjs_discovery_text;
    int peerjs_discovery;
    int64_t peerjs_expire_timeout_ms, peerjs_alive_timeout_ms;
    char peerjs_room[64];
    /* --websocket: "native" (conn.c, the node's own layer for plain connections; the default)
     * or "lws" (libwebsockets for every connection). */
    char *websocket_text;
    int ws_native;
} sb_node_config_t;

/* Parses options (defaults < env < flags) and checks combinations. Returns 0, 1 when --help or
 * --version was printed, or 2 after printing one line naming the bad option. */
int sb_node_options(sb_node_config_t *cfg, int argc, char **argv, char *const *envp);
void sb_node_options_free(sb_node_config_t *cfg);

typedef struct sb_node sb_node_t;
typedef struct sb_seat sb_seat_t; /* a socket's place in a room: route.c's, opaque elsewhere */
typedef struct sb_conn sb_conn_t; /* a connection of the node's own WebSocket layer (conn.c) */

/* Names lws knows the node's listener by (sb_listen_stats, sb_listen_adopt). */
#define SB_VHOST_NAME "switchboard"
#define SB_PROTOCOL_NAME "switchboard.v1"

/* Most bytes of queued frames one write carries (below lws's tx_packet_size, so lws sends it
 * in one piece). */
#define SB_WRITE_BATCH 65536

/* Longest Origin header a session keeps (a longer one counts as none, as when the session held
 * it in a 128-byte array), and longest reason text of the close frames we send. */
#define SB_ORIGIN_MAX 127
#define SB_CLOSE_REASON_MAX 63

typedef struct sb_outmsg {
    struct sb_outmsg *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE headroom, then len bytes */
} sb_outmsg_t;

/* A WebSocket client: the connection, its send queue, inbound reassembly, rate bucket and
 * liveness. Nothing about rooms: that is its seat, owned by route.c. Refcounted: the
 * connection holds one reference, every Redis command in flight for it holds one. When lws
 * closes the connection `closed` is set and wsi cleared; a late reply sees the mark and only
 * drops its reference. */
typedef struct sb_session {
    int refs;
    /* Its flags, as bits in the word beside refs: five ints took a 16-byte step of malloc's
     * rounding from every socket (issue 14). */
    unsigned closed : 1;
    unsigned ping_due : 1;    /* a ping waits for the next WRITEABLE */
    unsigned idle_killed : 1; /* hung up: a ping went unanswered past --ping-timeout-ms */
    unsigned close_sent : 1;  /* our close frame is written */
    /* On the node's flush list (flush_prev, flush_next below). */
    unsigned flush_listed : 1;
    struct lws *wsi; /* libwebsockets' connection, or NULL: */
    sb_conn_t *conn; /* ... our own layer's (exactly one of them while the socket is open) */
    sb_node_t *node;
    sb_seat_t *seat; /* owned by route.c (sb_route_attach .. sb_route_disconnect) */
    /* Its id: in sid_buf when it fits (every id this node makes, 22 characters), else a
     * malloc'd copy (a PeerJS id or a resumed one can be up to SB_SID_MAX). A 65-byte array
     * here was 40 B of every socket's heap for the rare long id (issue 14). */
    char *id;
    char sid_buf[23];
    int64_t connected_ms;
    int64_t last_rx_ms;             /* the last frame, ping or pong from the client (liveness) */
    int64_t ping_sent_ms;           /* our last ping; one per idle interval */
    int peer_close;                 /* the code of the client's close frame (1005: none given;
                                     * 0: no close frame) */
    char *origin;                   /* its Origin header (malloc'd; NULL without one, or one over
                                     * SB_ORIGIN_MAX): a resume must match it */
    struct sb_session *prev, *next; /* node's list of live sessions */

    sb_outmsg_t *qhead, *qtail;
    size_t qbytes;     /* queued frames + held: what counts against the send budgets */
    size_t held;       /* a frame lws holds part of (a partial write), until its next WRITEABLE */
    int64_t qsince_ms; /* when qbytes last became non-zero (stall check) */
    struct sb_session *bl_prev, *bl_next; /* node's backlog: qbytes > 0, oldest qsince first */
    char *rx;
    size_t rxlen, rxcap;
    int64_t rx_since_ms; /* when rxlen last became non-zero: an unfinished message's start */
    sb_bucket_t bucket;
    int close_code;     /* != 0: close with it at the next chance */
    char *close_reason; /* malloc'd at the close (at most SB_CLOSE_REASON_MAX bytes), or NULL */
    /* The node's flush list: frames queued this loop iteration, written before it waits. */
    struct sb_session *flush_prev, *flush_next;
    sb_pj_t *pj; /* a PeerJS socket's state (route.c), NULL for a native one */
} sb_session_t;

/* Why a socket's queue was shed (closed 4003): session.c's budgets. */
typedef enum { SB_SHED_SOCKET, SB_SHED_BUDGET, SB_SHED_STALL, SB_SHED__COUNT } sb_shed_t;

typedef struct {
    uint64_t received[SB_MSG__COUNT];
    uint64_t sent, resyncs;
    uint64_t redis_shed; /* requests refused while Redis ran behind (need_redis) */
    uint64_t sheds[SB_SHED__COUNT];
    sb_map_t errors; /* code -> (uintptr_t) count */
    sb_map_t closes; /* code text -> count */
    sb_hist_t redis_latency;
} sb_metrics_t;

struct sb_node {
    sb_node_config_t cfg;
    uv_loop_t *loop;
    struct lws_context *lws;
    char epoch[33];
    sb_cluster_t *db;      /* Redis: one server or a cluster (commands, scripts, sharded pub/sub) */
    int cluster;           /* db is a Redis Cluster: one bucket per slot (common/keys.h) */
    int db_up;             /* every slot is served by a connected primary (on_state) */
    char home[SB_KEY_MAX]; /* P:{T}:node:N of the bucket of our own id: the probe's channel */
    sb_map_t buckets;      /* pubsub.c: node channels subscribed, by channel name */
    int bucket_waits;      /* pubsub.c: buckets with joins waiting for their subscription */
    uint64_t topology;     /* bumped when slots changed owner or a primary restarted */
    char instance[64];     /* known value of P:instance ("" = not yet known) */
    int instance_ok;       /* instance checked on this connection */
    int lease_ok;          /* lease written since the last (re)connect */
    int pubsub_ok;         /* probe came back on the current pub/sub connection */
    uint64_t probe_nonce;  /* the probe in flight, or 0 */
    uint64_t probe_counter;
    int64_t probe_sent_ms;      /* when it was sent */
    int64_t probe_published_ms; /* when Redis answered its PUBLISH (0: not yet) */
    int draining;
    int64_t drain_deadline_ms;
    int64_t next_idle_check_ms; /* the next ping / silence pass over the sockets */
    int stopping;
    sb_session_t *sessions;
    int nsessions, njoined;
    size_t send_queue_bytes;                   /* session.c: every session's qbytes */
    sb_session_t *backlog_head, *backlog_tail; /* session.c: sessions with qbytes > 0 */
    int64_t stall_check_ms;                    /* session.c: the last stall check */
    /* session.c: sessions with frames to write, flushed by `flush` before the loop next polls,
     * each with one system call when its socket takes it (frames framed into `batch`). */
    sb_session_t *flush_head;
    uv_prepare_t flush;
    unsigned char batch[LWS_PRE + SB_WRITE_BATCH];
    sb_map_t sess_by_id;
    sb_map_t rooms;                   /* route.c: room name -> its view and references */
    struct sb_room *sweep_head;       /* route.c: rooms whose view wants the sweep */
    int64_t full_sweep_ms;            /* route.c: the last sweep of every room */
    sb_seat_t *auth_head, *auth_tail; /* route.c: sockets awaiting a join, oldest first */
    sb_metrics_t metrics;
    unsigned char *auth_secret;
    size_t auth_secret_len;
    unsigned char *turn_secret;
    size_t turn_secret_len;
    uv_timer_t heartbeat, sweep;
    uv_timer_t loss_timer; /* the full resync once a data loss's grace ends (route.c starts it) */
    uv_signal_t sigint, sigterm;
    int64_t started_ms;
    int64_t loss_grace_until_ms; /* after a data loss: resyncs only add until then */
    /* route.c: sockets re-asserted after a data loss and not confirmed by Redis yet, and until
     * when they are waited for (a missing presence key or member means "not written yet") */
    int reasserts_unconfirmed;
    int64_t reassert_until_ms;
    struct sb_away *away_head, *away_tail; /* route.c: sockets we marked away, by deadline */
    sb_map_t pj_by_id;                     /* route.c: PeerJS sockets by their PeerJS id */
    sb_map_t pj_orphans; /* route.c: ids whose socket closed while a claim of them was in flight */
    struct sb_pj_exp *pj_exp_head, *pj_exp_tail; /* route.c: PeerJS expire timers, by due */
    int64_t pj_alive_check_ms;                   /* route.c: the last alive-timeout pass */
    /* conn.c: connections with a deadline, the tick that enforces them, the receive buffer. */
    sb_conn_t *conn_dl_head;
    uv_timer_t conn_timer;
    unsigned char *rdbuf;
    const struct sb_conn_events *conn_ev; /* conn.c: its way up (server.c's) */
};

/* The data path, one way: conn.c (the node's own WebSocket layer; lws for TLS and HTTP) ->
 * server.c (upgrade checks, reassembly; through sb_conn_events_t, as lws through its protocol
 * callback) -> route.c (decode with proto.c, rate via the session, join/leave/link/signal and
 * their Redis replies, the room views) -> session.c (send queue) -> conn.c or lws (the write);
 * pub/sub -> pubsub.c -> route.c (room events, signals) or presence.c (the probe).
 *
 * Callback contract, everywhere (libuv's): a function that takes a callback either returns an
 * error and never calls it, or returns 0 and calls it exactly once, later. */

/* session.c */
/* A session for a new connection, registered by id; NULL when out of memory. */
sb_session_t *sb_session_new(sb_node_t *n, struct lws *wsi);
void sb_session_ref(sb_session_t *s);
void sb_session_unref(sb_session_t *s);
/* Gives s the id `id` (copied; registering it is the caller's). 0, or -1 when out of memory
 * (s keeps its id). */
int sb_session_set_id(sb_session_t *s, const char *id);
/* Queues a text frame (copied). Closes the session with 4003 (dropping its queue) when the
 * queue would exceed --max-send-queue-bytes, and with 1011 when the frame cannot be allocated
 * (a frame is never silently lost). When the node's queued bytes then pass
 * --queue-budget-bytes, the largest queues (maybe this one) are closed with 4003. */
void sb_session_send(sb_session_t *s, const char *text, size_t len);
/* Queues one text frame made of nparts pieces, copied once into the queue. */
typedef struct {
    const char *p;
    size_t n;
} sb_part_t;
void sb_session_sendv(sb_session_t *s, const sb_part_t *parts, int nparts);
/* Pings sockets idle for --ping-interval-ms and hangs up those whose ping went unanswered for
 * --ping-timeout-ms - --ping-interval-ms (so a stall of the node itself hangs up nobody: it
 * pings first); sheds (4003) sockets whose send queue has not been empty for
 * --queue-stall-ms; called from the node's sweep. Returns how many were hung up or shed. */
int sb_session_check_idle(sb_node_t *n, int64_t now_ms);
/* Encodes msg (stolen) and queues it. */
void sb_session_send_json(sb_session_t *s, json_t *msg);
/* {"type":type[,"rid":rid]}, built as text (rid borrowed). */
void sb_session_send_reply(sb_session_t *s, const char *type, json_t *rid);
void sb_session_send_error(sb_session_t *s, const char *code, const char *message, json_t *rid);
/* Takes one rate token for an arriving message: 1 when it may be handled; 0 when refused (the
 * session was sent `rate-limited` with rid, borrowed, and closed 4002 on abuse). */
int sb_session_admit(sb_session_t *s, json_t *rid);
/* What an accepted join or leave costs in rate tokens (docs/protocol.md); the message that
 * carried it paid 1 when it arrived, this charges the rest (a debt if the bucket is short). */
#define SB_JOIN_LEAVE_COST 10
void sb_session_charge_accepted(sb_session_t *s);
/* Closes with code after the queued frames, counted in metrics. */
void sb_session_close(sb_session_t *s, int code, const char *reason);
/* lws is about to free the connection (call sb_route_disconnect first). */
void sb_session_detach(sb_session_t *s);
/* WRITEABLE: writes the queued frames (in batches, until the socket is full); returns -1 to
 * close. */
int sb_session_writable(sb_session_t *s);
/* Lists s for the flush before the loop next polls. */
void sb_session_want_flush(sb_session_t *s);
/* Drops the connection of s in secs seconds (LWS_TO_KILL_ASYNC: as soon as may be), whatever
 * its layer. */
void sb_session_timeout(sb_session_t *s, int secs);
/* Starts / stops the flush of queued frames (a uv_prepare on n->loop; stop closes it). */
void sb_session_flush_start(sb_node_t *n);
void sb_session_flush_stop(sb_node_t *n);

/* route.c */
/* A new connection: its seat (and, with auth on, its place in the token-timeout queue).
 * 0, or -1 when out of memory (the caller refuses the connection). */
int sb_route_attach(sb_session_t *s);
/* A complete text message from the client (after reassembly). */
void sb_route_message(sb_session_t *s, const char *buf, size_t len);
/* A binary message (not part of either protocol): charged to the socket's rate like any other
 * message, then answered bad-message (PeerJS: "Invalid message"). */
void sb_route_binary(sb_session_t *s);
/* The socket went away without leave (clean close, reset, ping timeout, drain): removes it
 * from its room in Redis and frees its seat. */
void sb_route_disconnect(sb_session_t *s);
/* Pub/sub input, parsed by pubsub.c (strings borrowed): a join/left event of room; a signal
 * relayed by another node; a link formed or ended; a lone half removed. */
void sb_route_event(sb_node_t *n, const char *room, const sb_view_event_t *ev);
void sb_route_signal_in(sb_node_t *n, const char *room, const char *from, const char *to,
                        const char *data, size_t dlen);
void sb_route_link_event(sb_node_t *n, const char *room, const char *a, const char *b, int up);
void sb_route_unlink_event(sb_node_t *n, const char *room, const char *a, const char *b);
/* PeerJS (docs/peerjs.md). A new PeerJS socket: its key, id and token from the upgrade's query
 * (NULL when absent) and its JWT (NULL without): refused with an ERROR and closed, or claimed
 * (OPEN follows). */
void sb_route_pj_open(sb_session_t *s, const char *key, const char *id, const char *token,
                      const char *jwt);
/* Frees the PeerJS timers (at exit). */
void sb_route_pj_free(sb_node_t *n);

/* Periodic: gap timeouts, held signals, token timeouts, resume graces that ended. */
void sb_route_sweep(sb_node_t *n, int64_t now_ms);
/* 1 while the sweep has something of route.c's to time: graces, PeerJS expiries, listed rooms,
 * token or join timeouts, re-asserted sockets not confirmed yet. */
int sb_route_has_timed_work(const sb_node_t *n);
/* After a data loss: resyncs add members only until a heartbeat (+200 ms) from now, then every
 * room is read in full (n->loss_timer). Again when the last refused re-assert of ours went
 * through (the other nodes' are sent again at their heartbeats). */
void sb_route_loss_grace(sb_node_t *n);
/* Frees the grace timers of sockets marked away (at exit; the admin expires what is left). */
void sb_route_away_free(sb_node_t *n);
/* Drops the sweep list's references to rooms (at exit). */
void sb_route_sweep_free(sb_node_t *n);
/* The room s is in according to Redis (its join succeeded and no removal yet), else NULL. */
const char *sb_route_present_room(const sb_session_t *s);
/* The presence key of s is gone while it is connected here: it was reaped. Runs the expired
 * removal (a no-op when the admin already did) and closes s with 4000. */
void sb_route_reaped(sb_session_t *s);
/* Redis lost its data: re-creates the state of every live socket whose room's slot is in
 * slots (a bitmap of SB_SLOTS bits; NULL: all) with room_assert. Returns how many. */
int sb_route_reassert(sb_node_t *n, const unsigned char *slots);
/* A presence refresh of s answered (present: the key was there). Missing: re-asserted again
 * when a re-assert of s is not confirmed yet (Redis lost its data and refused the first one),
 * else reaped (sb_route_reaped). */
void sb_route_refreshed(sb_session_t *s, int present);
/* Re-reads every room of bucket tag (its node channel was subscribed again). */
void sb_route_resync_bucket(sb_node_t *n, const char *tag);

/* pubsub.c */
/* A message on one of our node channels (borrowed): room events and signals to route.c, the
 * probe to presence.c. Never trusts it further than its own checks. */
void sb_pubsub_on_message(sb_node_t *n, const char *payload, size_t len);
/* Subscribes our home channel (the probe's). 0, or -1 when out of memory. */
int sb_pubsub_start(sb_node_t *n);
void sb_pubsub_stop(sb_node_t *n);
/* Our node channel of bucket tag must be subscribed before a join script runs there (its
 * events and signals for us arrive on it). Returns 0 when it is (cb is not called), 1 when
 * cb(n, data, ok) will be called once, later (ok 0: not subscribed within the Redis timeout),
 * or SB_ENOMEM (cb is never called). Subscriptions are kept (at most one per slot). */
int sb_pubsub_bucket(sb_node_t *n, const char *tag, void (*cb)(sb_node_t *n, void *data, int ok),
                     void *data);
/* A subscription is (again) in place: wakes the joins waiting for it; a second one means
 * messages may have been missed: the bucket's rooms are re-read. */
void sb_pubsub_on_subscribed(sb_node_t *n, const char *channel);
/* Fails the joins that waited longer than the Redis timeout. */
void sb_pubsub_sweep(sb_node_t *n, int64_t now_ms);

/* presence.c */
void sb_presence_start(sb_node_t *n);
void sb_presence_on_up(sb_node_t *n);
void sb_presence_heartbeat_now(sb_node_t *n);
/* Redis may have lost the last writes to slots (a bitmap of SB_SLOTS bits; NULL: all of them):
 * re-asserts our sockets there and the lease, then resyncs every room once the other nodes had
 * a heartbeat to do the same. why is for the log. */
void sb_presence_data_lost(sb_node_t *n, const unsigned char *slots, const char *why);
/* The pub/sub probe: sends one every 500 ms to our home channel and drops its connection when
 * one is not back within the Redis timeout (called from the sweep). */
void sb_presence_probe_tick(sb_node_t *n, int64_t now_ms);
/* The pub/sub connection came up (pubsub_ok is proven again by the next probe). */
void sb_presence_on_pubsub_up(sb_node_t *n);
/* A probe came back on the pub/sub connection. */
void sb_presence_on_probe(sb_node_t *n, uint64_t nonce);
void sb_presence_stop(sb_node_t *n);
/* Removes the lease (and, with no socket left in a room, our entry in P:nodes) at the end of a
 * drain: 0 and cb once later (whether or not Redis managed it, which is logged), or an error
 * (Redis unreachable) and cb is never called. */
int sb_presence_release(sb_node_t *n, void (*cb)(sb_node_t *n));

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
/* conn.c: the node's own WebSocket layer (--websocket native, the default). */
/* A request being upgraded: lws's (wsi) or one conn.c parsed (head). */
typedef struct {
    struct lws *wsi;
    const struct sb_wire_head *head;
} sb_req_t;
/* check_upgrade: refuse with 400 naming version 13. */
#define SB_REFUSE_VERSION 1
/* What conn.c calls up (server.c's, given at sb_conn_start; lws's protocol callback is the
 * same for the lws layer): the data path flows one way, conn.c names nothing above it. */
typedef struct sb_conn_events {
    /* Whether an upgrade may go ahead: 0; SB_REFUSE_VERSION; an HTTP status to refuse with;
     * or -1 to drop the connection without an answer. */
    int (*check_upgrade)(sb_node_t *n, const sb_req_t *r);
    /* The upgrade went through: the session of the new socket (welcome sent, or the PeerJS
     * claim under way), or NULL (out of memory: drop the connection). */
    sb_session_t *(*established)(sb_node_t *n, const sb_req_t *r, sb_conn_t *c);
    /* A piece of a data message: len bytes at in (final: its frame ends the message),
     * announced bytes more of this frame to come; text checked as UTF-8 when check_utf8. 0,
     * or -1 to drop the connection (out of memory). */
    int (*receive)(sb_session_t *s, const char *in, size_t len, int final, size_t announced,
                   int binary, int check_utf8);
    /* The connection of s is gone: its Redis cleanup, then the session is detached. */
    void (*closed)(sb_session_t *s);
    /* The socket takes bytes again (lws's WRITEABLE): -1 to drop the connection. */
    int (*writable)(sb_session_t *s);
    /* s has something to write before the loop next polls. */
    void (*want_flush)(sb_session_t *s);
} sb_conn_events_t;
/* sb_listen_t.take: 0 when it took fd (a plain connection), 1 to leave it to lws. */
int sb_conn_take(void *node, int fd);
int sb_conn_start(sb_node_t *n, const sb_conn_events_t *ev);
/* Closes every connection of ours (their sessions' cleanup runs) and the deadline tick. */
void sb_conn_stop(sb_node_t *n);
/* 1 while bytes of an earlier write are held (POLLOUT brings them; nothing else may be
 * written then but whole frames after them). */
int sb_conn_busy(const sb_conn_t *c);
/* Sends len bytes of whole frames (what the kernel does not take is held and sent at POLLOUT,
 * then sb_session_writable runs). 0, or -1 when the connection is unusable. */
int sb_conn_send(sb_conn_t *c, const unsigned char *p, size_t len);
/* sb_session_writable is wanted: at the flush when nothing is held, else after it is out. */
void sb_conn_want_writable(sb_conn_t *c);
/* For the flush: 1 (and cleared) when a WRITEABLE is due now. */
int sb_conn_writable_due(sb_conn_t *c);
/* Drops the connection in secs seconds (< 0: at the next tick), replacing an earlier one. */
void sb_conn_timeout(sb_conn_t *c, int secs);
int sb_conn_fd(const sb_conn_t *c);

/* main.c */
/* 1 and a reason when /readyz should answer 200. */
int sb_node_ready(sb_node_t *n, const char **why);
void sb_node_begin_drain(sb_node_t *n);
/* The next sweep within 50 ms (a socket came to an idle node, whose sweep runs every 500). */
void sb_node_sweep_soon(sb_node_t *n);

#endif
