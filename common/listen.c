/* lws context creation on a foreign libuv loop, the fd budget and the connection caps (see
 * listen.h). The caps are applied at LWS_CALLBACK_FILTER_NETWORK_CONNECTION, the one point
 * where lws has accepted a socket and nothing else has happened yet: refusing there costs an
 * accept and a close, no memory, no header parsing. Does not know HTTP or WebSocket. */
#include "listen.h"
#include "config.h"
#include "log.h"
#include "map.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* One accepted connection's place in the counts, indexed by its fd. */
typedef struct {
    char *source;    /* key in by_source (our copy), NULL when the slot is free */
    struct lws *wsi; /* learnt at the first callback where lws shows the fd */
} fd_slot_t;

typedef struct {
    int64_t max_connections, max_per_source;
    int (*take)(void *user, int fd);
    void *user;
    sb_listen_stats_t stats;
    sb_map_t by_source; /* address text -> (uintptr_t) open connections from it */
    sb_map_t by_wsi;    /* "%p" of the wsi -> (uintptr_t) fd + 1 */
    fd_slot_t *fds;
    size_t nfds;
} limiter_t;

static int64_t fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 1024;
    return rl.rlim_cur == RLIM_INFINITY ? (int64_t)1 << 20 : (int64_t)rl.rlim_cur;
}

int sb_listen_limits(int64_t *max_connections, int64_t *max_per_source, const char *opt_max,
                     const char *opt_per_source, char *err, size_t errlen)
{
    /* Why raise the soft limit: it is 1024 by default on Debian, far below what a node holds;
     * the hard limit is what the administrator granted (LimitNOFILE, ulimit -Hn). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl); /* a failure leaves the soft limit, which is then used */
    }
    int64_t limit = fd_limit();
    int64_t room = limit - SB_LISTEN_OVERHEAD;
    if (room < 1) {
        snprintf(err, errlen,
                 "--%s: the fd limit (ulimit -n %lld) leaves no room for connections after a "
                 "reserve of %d",
                 opt_max, (long long)limit, SB_LISTEN_OVERHEAD);
        return -1;
    }
    if (*max_connections == 0) {
        *max_connections = room;
    } else if (*max_connections > room) {
        snprintf(err, errlen,
                 "--%s: %lld is more than the fd limit allows (ulimit -n %lld less a reserve of "
                 "%d: at most %lld)",
                 opt_max, (long long)*max_connections, (long long)limit, SB_LISTEN_OVERHEAD,
                 (long long)room);
        return -1;
    }
    if (*max_per_source == 0) {
        *max_per_source = *max_connections / 2 > 0 ? *max_connections / 2 : 1;
    } else if (*max_per_source > *max_connections) {
        snprintf(err, errlen, "--%s: %lld is more than --%s (%lld)", opt_per_source,
                 (long long)*max_per_source, opt_max, (long long)*max_connections);
        return -1;
    }
    return 0;
}

/* ---- the caps ------------------------------------------------------------------------------ */

static limiter_t *limiter_of(struct lws_vhost *vh, const struct lws_protocols *p0)
{
    if (!vh || !p0)
        return NULL;
    limiter_t **slot = lws_protocol_vh_priv_get(vh, p0);
    return slot ? *slot : NULL;
}

/* The peer's address as text (IPv4-mapped IPv6 as IPv4): the per-source key. */
static int source_of(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
        return inet_ntop(AF_INET, &in4->sin_addr, buf, (socklen_t)len) ? 0 : -1;
    }
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], buf, (socklen_t)len) ? 0 : -1;
        return inet_ntop(AF_INET6, &in6->sin6_addr, buf, (socklen_t)len) ? 0 : -1;
    }
    snprintf(buf, len, "local");
    return 0;
}

/* Gives back the place of the connection in slot (its source's count, the total). */
static void release_slot(limiter_t *lim, fd_slot_t *slot)
{
    if (!slot->source)
        return;
    uintptr_t n = (uintptr_t)sb_map_get(&lim->by_source, slot->source);
    if (n <= 1)
        sb_map_del(&lim->by_source, slot->source);
    else
        sb_map_put(&lim->by_source, slot->source, (void *)(n - 1)); /* replaces: no allocation */
    if (slot->wsi) {
        char key[32];
        snprintf(key, sizeof key, "%p", (void *)slot->wsi);
        sb_map_del(&lim->by_wsi, key);
    }
    free(slot->source);
    slot->source = NULL;
    slot->wsi = NULL;
    lim->stats.open--;
}

/* Grows the slot table to hold fd: 0, or -1 out of memory. */
static int slot_room(limiter_t *lim, int fd)
{
    if ((size_t)fd < lim->nfds)
        return 0;
    size_t n = lim->nfds ? lim->nfds : 256;
    while (n <= (size_t)fd)
        n *= 2;
    fd_slot_t *fds = realloc(lim->fds, n * sizeof *fds);
    if (!fds)
        return -1;
    memset(fds + lim->nfds, 0, (n - lim->nfds) * sizeof *fds);
    lim->fds = fds;
    lim->nfds = n;
    return 0;
}

/* 1 to refuse the connection on fd, 0 to let lws adopt it (then counted). */
static int on_accept(limiter_t *lim, int fd)
{
    if (fd < 0 || slot_room(lim, fd) != 0)
        return 1;
    /* An adoption that failed after we counted it never told us; its fd is free again. */
    release_slot(lim, &lim->fds[fd]);
    char src[INET6_ADDRSTRLEN + 8];
    if (source_of(fd, src, sizeof src) != 0)
        return 1; /* the peer is gone already */
    uintptr_t n = (uintptr_t)sb_map_get(&lim->by_source, src);
    /* At the cap, only a source with next to nothing open gets one of the spare slots: the
     * flood's addresses are full, a health probe's is not. */
    if (lim->stats.open >= lim->max_connections &&
        (n >= SB_LISTEN_SPARE_BELOW || lim->stats.open >= lim->max_connections + SB_LISTEN_SPARE)) {
        lim->stats.refused_max++;
        sb_warn_limited("refused a connection from %s: --max-connections (%lld) reached", src,
                        (long long)lim->max_connections);
        return 1;
    }
    if ((int64_t)n >= lim->max_per_source) {
        lim->stats.refused_source++;
        sb_warn_limited("refused a connection from %s: its %lld connections reach the "
                        "per-source cap",
                        src, (long long)n);
        return 1;
    }
    char *copy = strdup(src);
    if (!copy || sb_map_put(&lim->by_source, src, (void *)(n + 1)) != 0) {
        free(copy);
        return 1;
    }
    lim->fds[fd].source = copy;
    lim->fds[fd].wsi = NULL;
    lim->stats.open++;
    return 0;
}

/* lws shows the fd of a new wsi only once it is bound (at WSI_CREATE it has none yet, and at
 * WSI_DESTROY the socket is closed already): remember which wsi holds which counted fd. */
static void learn_wsi(limiter_t *lim, struct lws *wsi)
{
    int fd = (int)lws_get_socket_fd(wsi);
    if (fd < 0 || (size_t)fd >= lim->nfds || !lim->fds[fd].source || lim->fds[fd].wsi)
        return;
    char key[32];
    snprintf(key, sizeof key, "%p", (void *)wsi);
    if (sb_map_put(&lim->by_wsi, key, (void *)((uintptr_t)fd + 1)) == 0)
        lim->fds[fd].wsi = wsi;
}

static void on_destroy(limiter_t *lim, struct lws *wsi)
{
    char key[32];
    snprintf(key, sizeof key, "%p", (void *)wsi);
    uintptr_t fd1 = (uintptr_t)sb_map_get(&lim->by_wsi, key);
    if (fd1 == 0 || fd1 - 1 >= lim->nfds)
        return;
    release_slot(lim, &lim->fds[fd1 - 1]);
}

/* Moves the count of fd to a dup of it and offers that to the taker: 1 when taken (lws then
 * closes fd, which is no longer counted), 0 when not (lws serves fd as usual). */
static int offer(limiter_t *lim, int fd)
{
    int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (nfd < 0)
        return 0;
    if (slot_room(lim, nfd) != 0) {
        close(nfd);
        return 0;
    }
    release_slot(lim, &lim->fds[nfd]); /* stale: an fd number closed without telling us */
    lim->fds[nfd] = lim->fds[fd];
    lim->fds[fd].source = NULL;
    lim->fds[fd].wsi = NULL;
    if (lim->take(lim->user, nfd) == 0)
        return 1;
    lim->fds[fd] = lim->fds[nfd];
    lim->fds[nfd].source = NULL;
    close(nfd);
    return 0;
}

static void limiter_free(limiter_t *lim)
{
    for (size_t i = 0; i < lim->nfds; i++)
        free(lim->fds[i].source);
    free(lim->fds);
    sb_map_free(&lim->by_source);
    sb_map_free(&lim->by_wsi);
    free(lim);
}

void *sb_listen_user(struct lws *wsi)
{
    struct lws_vhost *vh = lws_get_vhost(wsi);
    void *user = vh ? lws_vhost_user(vh) : NULL;
    if (!user && lws_get_context(wsi))
        user = lws_context_user(lws_get_context(wsi));
    return user;
}

int sb_listen_filter(struct lws *wsi, enum lws_callback_reasons reason, void *in,
                     const struct lws_protocols *p0, int *rc)
{
    *rc = 0;
    if (reason == LWS_CALLBACK_RAW_ADOPT) {
        *rc = -1;
        return 1;
    }
    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
    case LWS_CALLBACK_HTTP_BIND_PROTOCOL:
    case LWS_CALLBACK_RAW_SKT_BIND_PROTOCOL:
    case LWS_CALLBACK_RAW_ADOPT:
    case LWS_CALLBACK_WSI_DESTROY:
    case LWS_CALLBACK_PROTOCOL_DESTROY:
        break;
    default:
        return 0;
    }
    struct lws_vhost *vh = lws_get_vhost(wsi);
    limiter_t *lim = limiter_of(vh, p0);
    if (!lim)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        /* `in` is the accepted socket; wsi is the listener's. */
        *rc = on_accept(lim, (int)(intptr_t)in);
        if (*rc == 0 && lim->take)
            *rc = offer(lim, (int)(intptr_t)in);
        return *rc;
    case LWS_CALLBACK_WSI_DESTROY:
        on_destroy(lim, wsi);
        break;
    case LWS_CALLBACK_PROTOCOL_DESTROY: {
        limiter_t **slot = lws_protocol_vh_priv_get(vh, p0);
        *slot = NULL;
        limiter_free(lim);
        break;
    }
    default:
        learn_wsi(lim, wsi);
        break;
    }
    return 0;
}

static limiter_t *limiter_by_name(struct lws_context *ctx, const char *vhost_name,
                                  const char *proto_name, struct lws_vhost **vhp)
{
    struct lws_vhost *vh = ctx ? lws_get_vhost_by_name(ctx, vhost_name) : NULL;
    const struct lws_protocols *p = vh ? lws_vhost_name_to_protocol(vh, proto_name) : NULL;
    if (vhp)
        *vhp = vh;
    return limiter_of(vh, p);
}

void sb_listen_release(struct lws_context *ctx, const char *vhost_name, const char *proto_name,
                       int fd)
{
    limiter_t *lim = limiter_by_name(ctx, vhost_name, proto_name, NULL);
    if (lim && fd >= 0 && (size_t)fd < lim->nfds)
        release_slot(lim, &lim->fds[fd]);
}

int sb_listen_adopt(struct lws_context *ctx, const char *vhost_name, const char *proto_name, int fd)
{
    struct lws_vhost *vh;
    limiter_t *lim = limiter_by_name(ctx, vhost_name, proto_name, &vh);
    struct lws *wsi = vh ? lws_adopt_socket_vhost(vh, fd) : NULL;
    if (!wsi) {
        /* lws closed fd when it failed after taking it; without a vhost it never had it. */
        sb_listen_release(ctx, vhost_name, proto_name, fd);
        if (!vh)
            close(fd);
        return -1;
    }
    if (lim)
        learn_wsi(lim, wsi);
    /* Why: lws 4.1.6 on a foreign libuv loop re-arms its own timers only when it next services
     * something; the wake-up starts the adopted connection's header timeout now. (It was added
     * when the head's bytes were handed over, which lws then served only at its next event.) */
    lws_cancel_service(ctx);
    return 0;
}

void sb_listen_stats(struct lws_context *ctx, const char *vhost_name, const char *proto_name,
                     sb_listen_stats_t *out)
{
    memset(out, 0, sizeof *out);
    limiter_t *lim = limiter_by_name(ctx, vhost_name, proto_name, NULL);
    if (lim)
        *out = lim->stats;
}

/* ---- the context --------------------------------------------------------------------------- */

struct lws_context *sb_listen(const sb_listen_t *l)
{
    char host[256];
    int port;
    if (sb_config_split_hostport(l->listen, host, sizeof host, &port) != 0)
        return NULL;
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    void *foreign[] = {l->loop};
    /* Why a foreign loop: lws, hiredis and our timers share one libuv loop, and Debian's lws
     * build cannot link an lws-owned uv loop. */
    info.foreign_loops = foreign;
    info.options = LWS_SERVER_OPTION_LIBUV | l->extra_options;
    /* Why: with an IPv4 address, lws would otherwise listen on every address (v6 any). */
    if (!strchr(host, ':'))
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    if (strcmp(host, "0.0.0.0") != 0 && strcmp(host, "::") != 0)
        info.iface = host;
    info.port = port;
    info.protocols = l->protocols;
    info.user = l->user;
    info.vhost_name = l->vhost_name;
    info.max_http_header_data = 4096;
    info.pt_serv_buf_size = 16384;
    info.timeout_secs = 10;
    info.retry_and_idle_policy = l->idle_policy;
    if (l->tls_cert) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = l->tls_cert;
        info.ssl_private_key_filepath = l->tls_key;
    }
    /* Every line lws writes goes through our rate limit: a client can make lws log (each
     * failed accept was logged, 150,000 lines a second at the fd limit). */
    lws_set_log_level(
        getenv("SB_LWS_DEBUG") ? (LLL_ERR | LLL_WARN | LLL_NOTICE | LLL_INFO | LLL_DEBUG) : LLL_ERR,
        sb_log_lws_emit);

    /* The fd budget. lws sizes its fd table to the soft fd limit it sees at creation and
     * refuses a socket whose number is past it, so it is created under the whole limit: any
     * descriptor number the process can get is one lws can take. (It was created under the
     * limit less SB_LISTEN_FD_RESERVE, so that it would stop accepting at its own count; but
     * the caps stop accepting first, and numbers, not counts, are what its table checks: with
     * the node's own descriptors below them, a health probe on a spare slot got a number past
     * the table and was closed. test_09_hostile_load test_04.) fd_limit_per_thread is left to
     * lws: below the limit it would switch every fd lookup to a linear scan (lws 4.1.6
     * wsi_from_fd). The reserve is kept by the caps (sb_listen_limits). */
    struct lws_context *ctx = lws_create_context(&info);
    if (!ctx) {
        sb_error("cannot listen on %s", l->listen);
        return NULL;
    }
    /* The caps' state lives in the vhost's private data of protocols[0], where the callback
     * finds it; lws frees that slot, sb_listen_filter frees what it points to. */
    struct lws_vhost *vh = lws_get_vhost_by_name(ctx, l->vhost_name);
    limiter_t **slot = vh ? lws_protocol_vh_priv_zalloc(vh, &l->protocols[0], sizeof *slot) : NULL;
    limiter_t *lim = calloc(1, sizeof *lim);
    if (!slot || !lim) {
        /* No vhost: lws could not bind (the address is in use, or not ours), and said why on
         * the line before. The context is not destroyed: on a foreign loop lws 4.1.6 unloads
         * its event-lib plugin under the loop's pending close callbacks, and the caller's next
         * uv_run crashed (SIGSEGV). The caller exits instead (sb_listen's contract). */
        free(lim);
        sb_error("cannot listen on %s: %s", l->listen,
                 vh ? "out of memory" : "the address cannot be bound (in use?)");
        return NULL;
    }
    lim->max_connections = l->max_connections > 0 ? l->max_connections : INT64_MAX / 2;
    lim->max_per_source = l->max_per_source > 0 ? l->max_per_source : INT64_MAX;
    lim->take = l->take;
    lim->user = l->user;
    sb_map_init(&lim->by_source);
    sb_map_init(&lim->by_wsi);
    *slot = lim;
    return ctx;
}

void sb_listen_exit(void)
{
    fflush(stderr);
    _exit(1);
}
