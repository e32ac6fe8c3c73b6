/* lws context creation on a foreign libuv loop (see listen.h). */
#include "listen.h"
#include "config.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

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
    lws_set_log_level(
        getenv("SB_LWS_DEBUG") ? (LLL_ERR | LLL_WARN | LLL_NOTICE | LLL_INFO | LLL_DEBUG) : LLL_ERR,
        NULL);
    struct lws_context *ctx = lws_create_context(&info);
    if (!ctx)
        sb_error("cannot listen on %s", l->listen);
    return ctx;
}
