/* The libwebsockets side: context on our libuv loop, and the one protocol callback, which only
 * dispatches: HTTP endpoints here (they are small), WebSocket events to session.c. */
#include "node.h"
#include "embed.h"
#include "listen.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern const sb_embed_t sb_client_files[];

typedef struct {
    sb_session_t *sess; /* WebSocket: the session (one reference) */
    char *body;         /* HTTP: response body waiting for WRITEABLE (LWS_PRE headroom) */
    size_t body_len;
} pss_t;

static const struct {
    const char *path, *file;
} static_routes[] = {
    {"/", "index.html"},     {"/index.html", "index.html"}, {"/switchboard.js", "switchboard.js"},
    {"/demo.js", "demo.js"}, {"/demo.css", "demo.css"},
};

static const char *content_type(const char *file)
{
    const char *dot = strrchr(file, '.');
    if (dot && strcmp(dot, ".js") == 0)
        return "text/javascript; charset=utf-8";
    if (dot && strcmp(dot, ".css") == 0)
        return "text/css; charset=utf-8";
    return "text/html; charset=utf-8";
}

/* Writes headers now and keeps the body for HTTP_WRITEABLE. Returns what the callback returns. */
static int respond(struct lws *wsi, pss_t *pss, unsigned status, const char *type, const char *body,
                   size_t len, int is_page)
{
    unsigned char hdr[LWS_PRE + 1024], *start = hdr + LWS_PRE, *p = start,
                                       *end = hdr + sizeof hdr - 1;
    if (lws_add_http_common_headers(wsi, status, type, (lws_filepos_t)len, &p, end))
        return 1;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end))
        return 1;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"x-content-type-options:",
                                    (const unsigned char *)"nosniff", 7, &p, end))
        return 1;
    if (is_page) {
        static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                                  "connect-src 'self' ws: wss:; img-src 'self' data:; "
                                  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)"content-security-policy:",
                                        (const unsigned char *)csp, sizeof csp - 1, &p, end))
            return 1;
    }
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    pss->body = malloc(LWS_PRE + len + 1);
    if (!pss->body)
        return 1;
    memcpy(pss->body + LWS_PRE, body, len);
    pss->body_len = len;
    lws_callback_on_writable(wsi);
    return 0;
}

static int handle_http(struct lws *wsi, pss_t *pss, sb_node_t *n)
{
    char path[256] = "";
    /* Why lws_hdr_copy and not `in`: one source for the path in every callback. */
    if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) <= 0)
        return respond(wsi, pss, 405, "application/json", "{\"error\":\"method not allowed\"}", 30,
                       0);
    char *q = strchr(path, '?');
    if (q)
        *q = '\0';
    if (strcmp(path, "/livez") == 0)
        return respond(wsi, pss, 200, "application/json", "{\"status\":\"ok\"}", 15, 0);
    if (strcmp(path, "/readyz") == 0) {
        const char *why = NULL;
        char body[256];
        int ok = sb_node_ready(n, &why);
        int len =
            ok ? snprintf(body, sizeof body, "{\"status\":\"ready\"}")
               : snprintf(body, sizeof body, "{\"status\":\"unready\",\"reason\":\"%s\"}", why);
        return respond(wsi, pss, ok ? 200 : 503, "application/json", body, (size_t)len, 0);
    }
    if (strcmp(path, "/metrics") == 0) {
        size_t len;
        char *text = sb_metrics_render(n, &len);
        int rc = respond(wsi, pss, 200, "text/plain; version=0.0.4", text ? text : "",
                         text ? len : 0, 0);
        free(text);
        return rc;
    }
    if (strcmp(path, "/ws") == 0)
        return respond(wsi, pss, 426, "application/json",
                       "{\"error\":\"WebSocket upgrade required\"}", 37, 0);
    for (size_t i = 0; i < sizeof static_routes / sizeof static_routes[0]; i++) {
        if (strcmp(path, static_routes[i].path) != 0)
            continue;
        const sb_embed_t *f = sb_embed_find(sb_client_files, static_routes[i].file);
        if (f)
            return respond(wsi, pss, 200, content_type(f->name), f->data, f->len,
                           strstr(f->name, ".html") != NULL);
    }
    return respond(wsi, pss, 404, "application/json", "{\"error\":\"not found\"}", 21, 0);
}

static int origin_allowed(struct lws *wsi, sb_node_t *n)
{
    if (n->cfg.allowed_origins.n == 0)
        return 1;
    char origin[256];
    if (lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) <= 0)
        return 0;
    for (int i = 0; i < n->cfg.allowed_origins.n; i++)
        if (strcmp(origin, n->cfg.allowed_origins.v[i]) == 0)
            return 1;
    return 0;
}

/* 400 with "Sec-WebSocket-Version: 13" (lws has no text for 426). Returns what
 * LWS_CALLBACK_HTTP_CONFIRM_UPGRADE returns to refuse after answering. */
static int refuse_version(struct lws *wsi)
{
    unsigned char buf[LWS_PRE + 256], *start = buf + LWS_PRE, *p = start,
                                      *end = buf + sizeof buf - 1;
    if (lws_add_http_header_status(wsi, HTTP_STATUS_BAD_REQUEST, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"sec-websocket-version:",
                                    (const unsigned char *)"13", 2, &p, end) ||
        lws_add_http_header_content_length(wsi, 0, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    return 1;
}

static int confirm_upgrade(struct lws *wsi, sb_node_t *n)
{
    char upgrade[32] = "", path[64] = "", version[8] = "";
    /* Why not `in`: libwebsockets 4.1.6 may call this after releasing the header table that
     * `in` points into (a use-after-free fixed upstream later); lws_hdr_copy is safe. Only
     * "websocket" is accepted, which also refuses h2c. */
    if (lws_hdr_copy(wsi, upgrade, sizeof upgrade, WSI_TOKEN_UPGRADE) <= 0 ||
        strcasecmp(upgrade, "websocket") != 0)
        return -1;
    if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) <= 0 || strcmp(path, "/ws") != 0) {
        lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
        return 1;
    }
    /* Why check the version here: lws 4.1.6 answers 101 to any Sec-WebSocket-Version (or
     * none), and then ignores every frame of a version other than 13, leaving a connection
     * that only the ping timeout ends. RFC 6455 4.2.2: refuse, naming the version we speak. */
    if (lws_hdr_copy(wsi, version, sizeof version, WSI_TOKEN_VERSION) <= 0 ||
        strcmp(version, "13") != 0)
        return refuse_version(wsi);
    if (!origin_allowed(wsi, n)) {
        sb_info("refused a WebSocket upgrade: origin not allowed");
        lws_return_http_status(wsi, HTTP_STATUS_FORBIDDEN, NULL);
        return 1;
    }
    if (n->draining) {
        lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, NULL);
        return 1;
    }
    return 0;
}

static void send_welcome(sb_session_t *s)
{
    sb_node_t *n = s->node;
    json_t *limits = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I}", "max_message_bytes", (json_int_t)n->cfg.max_message_bytes,
        "max_room_members", (json_int_t)n->cfg.max_room_members, "rate", (json_int_t)n->cfg.rate,
        "burst", (json_int_t)n->cfg.burst, "max_meta_bytes", (json_int_t)SB_META_MAX,
        "max_send_queue_bytes", (json_int_t)n->cfg.max_send_queue_bytes);
    json_t *w = json_pack("{s:s,s:s,s:s,s:i,s:o}", "type", "welcome", "id", s->id, "node",
                          n->cfg.id, "protocol", 1, "limits", limits);
    sb_session_send_json(s, w);
}

static int on_receive(struct lws *wsi, sb_session_t *s, const char *in, size_t len)
{
    sb_node_t *n = s->node;
    /* What the frame header announces counts too: lws hands payload over in pieces as it
     * arrives, so without it a client announcing 2^63-1 bytes would be let trickle up to the
     * limit before being refused. */
    if (s->close_code)
        return 0; /* closing: what the client still sends is read and dropped */
    size_t announced = lws_remaining_packet_payload(wsi);
    if (s->rxlen + len + announced > (size_t)n->cfg.max_message_bytes) {
        /* All fragments count: the limit is on the message, not on a frame. The error frame,
         * then our close frame, go out in order; the rest of the message is read and dropped
         * meanwhile, so the client gets the close instead of a TCP reset. */
        sb_session_send_error(s, "bad-message", "message over max_message_bytes", NULL);
        sb_session_close(s, 1009, "message too big");
        free(s->rx);
        s->rx = NULL;
        s->rxcap = s->rxlen = 0;
        return 0;
    }
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
    if (len > 0) { /* an empty frame carries no pointer worth copying from */
        memcpy(s->rx + s->rxlen, in, len);
        s->rxlen += len;
    }
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
        return 0;
    size_t total = s->rxlen;
    s->rxlen = 0;
    if (lws_frame_is_binary(wsi)) {
        n->metrics.received[SB_MSG_UNKNOWN]++;
        sb_session_send_error(s, "bad-message", "binary frames are not part of the protocol", NULL);
    } else {
        sb_session_on_message(s, s->rx ? s->rx : "", total);
    }
    /* Why release the buffer after every message: an idle socket should hold no receive memory
     * (node RSS per idle socket is a target). Keeping even a 1 KiB one cost 1 KiB of RSS per
     * idle joined socket in tests/bench, and freeing it cost no measurable CPU per message. */
    if (s->rxcap > 0) {
        free(s->rx);
        s->rx = NULL;
        s->rxcap = 0;
    }
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    pss_t *pss = user;
    struct lws_vhost *vh = lws_get_vhost(wsi);
    sb_node_t *n = vh ? lws_vhost_user(vh) : NULL;
    if (!n && lws_get_context(wsi))
        n = lws_context_user(lws_get_context(wsi));

    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return confirm_upgrade(wsi, n);
    case LWS_CALLBACK_HTTP:
        return handle_http(wsi, pss, n);
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (!pss || !pss->body)
            break;
        int rc = lws_write(wsi, (unsigned char *)pss->body + LWS_PRE, pss->body_len,
                           LWS_WRITE_HTTP_FINAL);
        free(pss->body);
        pss->body = NULL;
        if (rc < 0)
            return -1;
        if (lws_http_transaction_completed(wsi))
            return -1;
        break;
    }
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (pss && pss->body) {
            free(pss->body);
            pss->body = NULL;
        }
        break;
    case LWS_CALLBACK_ESTABLISHED: {
        sb_session_t *s = sb_session_new(n, wsi);
        if (!s)
            return -1;
        pss->sess = s;
        sb_debug("session %s: connected", s->id);
        send_welcome(s);
        break;
    }
    case LWS_CALLBACK_RECEIVE:
        if (!pss->sess || pss->sess->closed)
            return -1;
        pss->sess->last_rx_ms = sb_mono_ms();
        return on_receive(wsi, pss->sess, in, len);
    case LWS_CALLBACK_RECEIVE_PONG:
        if (pss && pss->sess)
            pss->sess->last_rx_ms = sb_mono_ms();
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (!pss->sess)
            return -1;
        return sb_session_writable(pss->sess);
    case LWS_CALLBACK_CLOSED:
        if (pss && pss->sess) {
            sb_debug("session %s: closed", pss->sess->id);
            sb_session_detach(pss->sess);
            pss->sess = NULL;
        }
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    /* Index 0 is also what a client without a subprotocol gets: v1. rx_buffer_size is what
     * lws allocates per connection for receiving; larger messages arrive in pieces and are
     * reassembled in session memory only while they are in flight. tx_packet_size: without it
     * lws caps each send() at rx_buffer_size and copies the rest of a larger frame aside (a
     * 4 KiB signal took 4 sends; tests/bench measured +25% msgs/s for 4 KiB signals with it). */
    {"switchboard.v1", callback, sizeof(pss_t), 1024, 0, NULL, 65536},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* Why no libwebsockets ping policy (all zeros turns its validity timers off): lws 4.1.6 keeps
 * every connection's validity timer in one sorted list and re-inserts it, by a walk over the
 * list, on every ping sent and pong received, so idle sockets cost CPU quadratically (79% of
 * an idle node's samples at 15,000 sockets, stalls past the Redis timeout). The node pings
 * from its own sweep instead (sb_session_check_idle): one pass over its sockets per tick. */
static lws_retry_bo_t idle_policy;

int sb_server_start(sb_node_t *n)
{
    sb_listen_t l = {.loop = n->loop,
                     .listen = n->cfg.listen,
                     .protocols = protocols,
                     .user = n,
                     .vhost_name = "switchboard",
                     .idle_policy = &idle_policy,
                     .tls_cert = n->cfg.tls_cert,
                     .tls_key = n->cfg.tls_key,
                     .extra_options = LWS_SERVER_OPTION_VALIDATE_UTF8};
    n->lws = sb_listen(&l);
    if (!n->lws)
        return -1;
    sb_info("node %s listening on %s (epoch %s)", n->cfg.id, n->cfg.listen, n->epoch);
    return 0;
}

void sb_server_stop(sb_node_t *n)
{
    if (n->lws) {
        lws_context_destroy(n->lws);
        n->lws = NULL;
    }
}
