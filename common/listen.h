/* A libwebsockets server context on the caller's libuv loop, listening on HOST:PORT: what the
 * node and the admin share about lws set-up, and the edge of the process under hostile load:
 * the file descriptor budget and the connection caps (a global one and one per source
 * address), enforced when lws accepts a connection, before any byte of it is read. */
#ifndef SB_LISTEN_H
#define SB_LISTEN_H

#include <libwebsockets.h>
#include <stdint.h>
#include <uv.h>

/* File descriptors kept out of the connections' reach: Redis connections and their reconnects,
 * the resolver, logs, libuv's own. The caps (SB_LISTEN_OVERHEAD) leave this many, so a flood of
 * connections can never take the last descriptors the process needs to stay ready. */
#define SB_LISTEN_FD_RESERVE 64
/* Descriptors lws uses itself (listeners, its event pipe) inside its share. */
#define SB_LISTEN_LWS_OWN 16
/* Spare connections past --max-connections, only for a source holding fewer than
 * SB_LISTEN_SPARE_BELOW connections: health probes and the odd new client still get in while
 * a flood from a few addresses holds the node at its cap. Inside lws's share too. */
#define SB_LISTEN_SPARE 32
#define SB_LISTEN_SPARE_BELOW 4
/* What the fd limit must leave besides connections: the default --max-connections is the fd
 * limit less this (112). */
#define SB_LISTEN_OVERHEAD (SB_LISTEN_FD_RESERVE + SB_LISTEN_LWS_OWN + SB_LISTEN_SPARE)

typedef struct {
    uv_loop_t *loop;
    const char *listen; /* HOST:PORT, already validated */
    const struct lws_protocols *protocols;
    void *user; /* lws_context_user() */
    const char *vhost_name;
    const lws_retry_bo_t *idle_policy; /* may be NULL */
    const char *tls_cert, *tls_key;    /* may be NULL */
    unsigned long extra_options;
    int64_t max_connections; /* resolved by sb_listen_limits (never 0) */
    int64_t max_per_source;
    /* May be NULL. Offered every connection the caps admitted, before lws does anything with
     * it: fd is a descriptor of its own (a dup of the accepted one, counted in the caps in its
     * place). Returns 0 when it took fd (lws closes its copy and never sees the connection;
     * the taker hands it back with sb_listen_adopt or gives its place back with
     * sb_listen_release before closing it), else 1 (lws serves it; fd is closed). */
    int (*take)(void *user, int fd);
} sb_listen_t;

/* Connection figures of one listener (for metrics). */
typedef struct {
    int64_t open;            /* accepted connections not closed yet (HTTP and WebSocket) */
    uint64_t refused_max;    /* refused at accept: --max-connections (and the spare) reached */
    uint64_t refused_source; /* refused at accept: the source address's cap reached */
} sb_listen_stats_t;

/* Raises the soft RLIMIT_NOFILE to the hard limit, then resolves the caps: 0 in
 * *max_connections means "derived": the fd limit less SB_LISTEN_FD_RESERVE and
 * SB_LISTEN_LWS_OWN; 0 in *max_per_source means half of *max_connections (at least 1).
 * A value given above what the fd limit allows, or a per-source cap above the global one, is
 * an error. Returns 0, or -1 with one line naming the option (opt_max, opt_per_source are the
 * options' names, without dashes) in err. */
int sb_listen_limits(int64_t *max_connections, int64_t *max_per_source, const char *opt_max,
                     const char *opt_per_source, char *err, size_t errlen);

/* Creates the context (NULL when it cannot listen; logged). Destroy with lws_context_destroy,
 * then let the loop run so lws closes its handles. lws logs through sb_log_lws_emit. After
 * NULL the loop may hold lws handles that cannot be closed safely: the caller exits the
 * process without running the loop again (sb_listen_exit). */
struct lws_context *sb_listen(const sb_listen_t *l);
/* Ends the process with status 1 after sb_listen returned NULL, without atexit handlers (the
 * leak checker would report the context lws could not tear down). */
void sb_listen_exit(void);

/* The protocol callback calls this first, with the same arguments and its protocols[0].
 * Returns 1 when the callback must return *rc at once: a connection refused at accept by a
 * cap (*rc = 1, lws closes it), or a raw adoption (*rc = -1: lws turns a CONNECT request into
 * a raw socket with no timeout of its own, and nothing of ours speaks raw). Else 0. Keeps the
 * counts of open connections per source; frees its state at LWS_CALLBACK_PROTOCOL_DESTROY. */
int sb_listen_filter(struct lws *wsi, enum lws_callback_reasons reason, void *in,
                     const struct lws_protocols *p0, int *rc);

/* A connection taken (sb_listen_t.take) is done: its place in the caps is given back. Call
 * before closing fd. */
void sb_listen_release(struct lws_context *ctx, const char *vhost_name, const char *proto_name,
                       int fd);
/* A connection taken, handed to lws unread, as if lws had accepted it: lws serves it from
 * there and it stays counted until lws frees it. 0, or -1 when lws could not (fd is then
 * closed and its place given back). */
int sb_listen_adopt(struct lws_context *ctx, const char *vhost_name, const char *proto_name,
                    int fd);

/* What sb_listen_t.user was: the vhost's user (the context's while no vhost is bound). */
void *sb_listen_user(struct lws *wsi);

/* Figures of the listener of ctx: its vhost's name and the name of its protocols[0] (zeros
 * when unknown, e.g. ctx NULL). */
void sb_listen_stats(struct lws_context *ctx, const char *vhost_name, const char *proto_name,
                     sb_listen_stats_t *out);

#endif
