/* A libwebsockets server context on the caller's libuv loop, listening on HOST:PORT: what the
 * node and the admin share about lws set-up. */
#ifndef SB_LISTEN_H
#define SB_LISTEN_H

#include <libwebsockets.h>
#include <uv.h>

typedef struct {
    uv_loop_t *loop;
    const char *listen; /* HOST:PORT, already validated */
    const struct lws_protocols *protocols;
    void *user; /* lws_context_user() */
    const char *vhost_name;
    const lws_retry_bo_t *idle_policy; /* may be NULL */
    const char *tls_cert, *tls_key;    /* may be NULL */
    unsigned long extra_options;
} sb_listen_t;

/* Creates the context (NULL when it cannot listen; logged). Destroy with lws_context_destroy,
 * then let the loop run so lws closes its handles. */
struct lws_context *sb_listen(const sb_listen_t *l);

#endif
