/* echo: a bare libwebsockets echo server with the node's settings, the reference for the
 * node's memory per connection and its relay throughput. Same as node/server.c: lws on our own
 * libuv loop (foreign_loops + LWS_SERVER_OPTION_LIBUV), the same context options, header and
 * service buffers, timeouts, ping policy, the protocol "switchboard.v1" with the same
 * rx_buffer_size and tx_packet_size, inbound reassembly into a buffer released after each
 * message, and an outbound queue with one lws_write per WRITEABLE. Echoes every complete
 * message to its sender; no JSON, no Redis. Keep the constants in step with node/server.c. */
#include <libwebsockets.h>
#include <uv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#ifndef NODE_RX_BUFFER
#define NODE_RX_BUFFER 512 /* node/server.c SB_RX_BUFFER (protocols[0].rx_buffer_size) */
#endif
#define NODE_TX_PACKET 65536 /* node/server.c protocols[0].tx_packet_size */
#define NODE_MAX_MESSAGE 65536

typedef struct outmsg {
    struct outmsg *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE headroom, then len bytes */
} outmsg_t;

typedef struct {
    outmsg_t *qhead, *qtail;
    char *rx;
    size_t rxlen, rxcap;
} pss_t;

static void queue_free(pss_t *s)
{
    while (s->qhead) {
        outmsg_t *m = s->qhead;
        s->qhead = m->next;
        free(m);
    }
    s->qtail = NULL;
}

static int on_receive(struct lws *wsi, pss_t *s, const char *in, size_t len)
{
    if (s->rxlen + len > NODE_MAX_MESSAGE)
        return -1;
    if (s->rxlen + len > s->rxcap) {
        size_t cap = s->rxcap ? s->rxcap : 1024;
        while (cap < s->rxlen + len)
            cap *= 2;
        char *rx = realloc(s->rx, cap);
        if (!rx)
            return -1;
        s->rx = rx;
        s->rxcap = cap;
    }
    memcpy(s->rx + s->rxlen, in, len);
    s->rxlen += len;
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
        return 0;
    outmsg_t *m = malloc(sizeof *m + LWS_PRE + s->rxlen);
    if (!m)
        return -1;
    m->next = NULL;
    m->len = s->rxlen;
    memcpy(m->buf + LWS_PRE, s->rx, s->rxlen);
    s->rxlen = 0;
    if (s->qtail)
        s->qtail->next = m;
    else
        s->qhead = m;
    s->qtail = m;
    /* As the node: an idle connection keeps no receive buffer. */
    if (s->rxcap > 0) {
        free(s->rx);
        s->rx = NULL;
        s->rxcap = 0;
    }
    lws_callback_on_writable(wsi);
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    pss_t *s = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
        return -1;
    case LWS_CALLBACK_ESTABLISHED:
        memset(s, 0, sizeof *s);
        break;
    case LWS_CALLBACK_RECEIVE:
        return on_receive(wsi, s, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        outmsg_t *m = s->qhead;
        if (!m)
            break;
        s->qhead = m->next;
        if (!s->qhead)
            s->qtail = NULL;
        int rc = lws_write(wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
        free(m);
        if (rc < 0)
            return -1;
        if (s->qhead)
            lws_callback_on_writable(wsi);
        break;
    }
    case LWS_CALLBACK_CLOSED:
        queue_free(s);
        free(s->rx);
        s->rx = NULL;
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"switchboard.v1", callback, sizeof(pss_t), NODE_RX_BUFFER, 0, NULL, NODE_TX_PACKET},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static struct lws_context *ctx;
static uv_signal_t sigint, sigterm;

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
    if (ctx) {
        lws_context_destroy(ctx);
        ctx = NULL;
    }
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:8090";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else {
            fprintf(stderr, "Usage: echo [--listen HOST:PORT]\n");
            return 2;
        }
    }
    char host[64];
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host) {
        fprintf(stderr, "echo: --listen: HOST:PORT\n");
        return 2;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    static lws_retry_bo_t idle_policy = {.secs_since_valid_ping = 10,
                                         .secs_since_valid_hangup = 20};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    void *foreign[] = {&loop};
    info.foreign_loops = foreign;
    info.options =
        LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_DISABLE_IPV6;
    info.iface = host;
    info.port = atoi(colon + 1);
    info.protocols = protocols;
    info.vhost_name = "echo";
    info.max_http_header_data = 4096;
    info.pt_serv_buf_size = 16384;
    info.timeout_secs = 10;
    info.retry_and_idle_policy = &idle_policy;
    lws_set_log_level(LLL_ERR, NULL);
    ctx = lws_create_context(&info);
    if (!ctx) {
        fprintf(stderr, "echo: cannot listen on %s\n", listen);
        return 1;
    }
    uv_signal_init(&loop, &sigint);
    uv_signal_init(&loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    fprintf(stderr, "echo: listening on %s\n", listen);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_run(&loop, UV_RUN_DEFAULT);
    return uv_loop_close(&loop) == 0 ? 0 : 1;
}
