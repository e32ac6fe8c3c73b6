/* The listener and the request side of both WebSocket layers: lws's context on our libuv loop
 * and its one protocol callback (HTTP endpoints here, they are small; lws's WebSocket events),
 * and the sb_conn_events_t through which conn.c (--websocket native, the default) calls up.
 * Upgrade checks, session start, receive and close are shared by both layers. */
#include "node.h"
#include "embed.h"
#include "http.h"
#include "listen.h"
#include "resume.h"
#include "auth.h"
#include "log.h"
#include "wire.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern const sb_embed_t sb_client_files[];

typedef struct pj_peers pj_peers_t;

typedef struct {
    sb_session_t *sess;  /* WebSocket: the session (one reference) */
    sb_http_body_t body; /* HTTP: the response body waiting for WRITEABLE */
    int head;            /* HTTP: a HEAD request (headers only) */
    /* HTTP: GET {peerjs}/{key}/peers waiting for Redis (its headers go at WRITEABLE) */
    pj_peers_t *peers;
    int head_due;       /* the answer's headers are due at the next WRITEABLE */
    char cors[256];     /* the Origin to echo ("" none) */
    sb_http_head_t due; /* the headers due */
} pss_t;

/* lws 4.1.6 keeps the close opcode of lws_write() private (4), as session.c notes. */
#define CLOSE_OPCODE ((enum lws_write_protocol)4)

static const sb_http_route_t static_routes[] = {
    {"/", "index.html"},     {"/index.html", "index.html"}, {"/switchboard.js", "switchboard.js"},
    {"/demo.js", "demo.js"}, {"/demo.css", "demo.css"},
};

static const char page_csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self' ws: wss:; img-src 'self' data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/* Writes headers now and keeps the body for HTTP_WRITEABLE. Returns what the callback returns. */
static int respond(struct lws *wsi, pss_t *pss, const sb_http_head_t *h, const char *body)
{
    if (sb_http_write_head(wsi, h) != 0 || sb_http_body_set(&pss->body, body, h->len) != 0)
        return -1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int respond_json(struct lws *wsi, pss_t *pss, unsigned status, const char *json)
{
    sb_http_head_t h = {.status = status, .ctype = "application/json", .len = strlen(json)};
    return respond(wsi, pss, &h, json);
}

static int origin_allowed(const sb_req_t *r, sb_node_t *n);

/* 405 naming the methods allowed (with the CORS origin to echo, or NULL). */
static int respond_405(struct lws *wsi, pss_t *pss, const char *allow, const char *cors)
{
    static const char body[] = "{\"error\":\"method not allowed\"}";
    sb_http_head_t h = {.status = 405,
                        .ctype = "application/json",
                        .len = sizeof body - 1,
                        .extra_name = "allow:",
                        .extra_value = allow,
                        .cors_origin = cors};
    return respond(wsi, pss, &h, body);
}

/* GET {peerjs}/{key}/peers in flight: the connection may close before Redis answers (wsi is
 * then cleared, and the reply only frees this). */
struct pj_peers {
    struct lws *wsi;
};

static void on_pj_peers(redisReply *reply, const char *error, void *data)
{
    pj_peers_t *q = data;
    struct lws *wsi = q->wsi;
    pss_t *pss = wsi ? lws_wsi_user(wsi) : NULL;
    free(q);
    if (!pss)
        return;
    pss->peers = NULL;
    int ok = !error && reply && reply->type == REDIS_REPLY_ARRAY;
    /* ["id",...]: the ids are of characters JSON never escapes. */
    size_t cap = 3, len = 0;
    for (size_t i = 0; ok && i < reply->elements; i++) {
        const char *id = sb_reply_str(reply, i, NULL);
        cap += id ? strlen(id) + 3 : 0;
    }
    char *body = ok ? malloc(cap) : NULL;
    ok = body != NULL;
    if (ok) {
        body[len++] = '[';
        for (size_t i = 0; i < reply->elements; i++) {
            const char *id = sb_reply_str(reply, i, NULL);
            if (id && sb_pj_valid_id(id))
                len += (size_t)snprintf(body + len, cap - len, "%s\"%s\"", len > 1 ? "," : "", id);
        }
        body[len++] = ']';
    }
    pss->due = (sb_http_head_t){.status = ok ? 200 : 503,
                                .ctype = "application/json; charset=utf-8",
                                .len = ok ? len : 0,
                                .cors_origin = pss->cors[0] ? pss->cors : NULL};
    if (sb_http_body_set(&pss->body, ok ? body : "", ok ? len : 0) == 0)
        pss->head_due = 1;
    free(body);
    lws_callback_on_writable(wsi);
}

/* The PeerJS routes under --peerjs-path (docs/peerjs.md), with peer's CORS (the Origin echoed,
 * when the node's origin list allows it). */
static int handle_pj_http(struct lws *wsi, pss_t *pss, sb_node_t *n, sb_http_method_t m, int route)
{
    pss->cors[0] = '\0';
    if (lws_hdr_copy(wsi, pss->cors, sizeof pss->cors, WSI_TOKEN_ORIGIN) <= 0 ||
        !origin_allowed(&(sb_req_t){.wsi = wsi}, n))
        pss->cors[0] = '\0';
    const char *cors = pss->cors[0] ? pss->cors : NULL;
    if (m == SB_HTTP_OPTIONS) {
        char asked[256] = "";
        if (lws_hdr_copy(wsi, asked, sizeof asked, WSI_TOKEN_HTTP_AC_REQUEST_HEADERS) < 0)
            asked[0] = '\0';
        sb_http_head_t h = {.status = 204,
                            .ctype = "text/plain",
                            .cors_origin = cors,
                            .cors_methods = "GET,HEAD,PUT,PATCH,POST,DELETE",
                            .cors_headers = asked};
        return respond(wsi, pss, &h, "");
    }
    if (m != SB_HTTP_GET && m != SB_HTTP_HEAD)
        return respond_405(wsi, pss, "GET, HEAD, OPTIONS", cors);
    sb_http_head_t h = {
        .status = 200, .ctype = "application/json; charset=utf-8", .cors_origin = cors};
    if (route == SB_PJ_HTTP_ROOT) {
        h.len = sizeof SB_PJ_DESCRIPTION - 1;
        return respond(wsi, pss, &h, SB_PJ_DESCRIPTION);
    }
    if (route == SB_PJ_HTTP_ID) {
        char id[40];
        if (sb_pj_uuid(id) != 0)
            return -1;
        h.ctype = "text/html; charset=utf-8";
        h.len = strlen(id);
        return respond(wsi, pss, &h, id);
    }
    if (route == SB_PJ_HTTP_PEERS && n->cfg.peerjs_discovery) {
        char key[SB_KEY_MAX];
        pj_peers_t *q = calloc(1, sizeof *q);
        if (!q || sb_key_room(key, sizeof key, n->cfg.prefix, n->cfg.peerjs_room, "members") < 0) {
            free(q);
            return -1;
        }
        const char *argv[] = {"HKEYS", key};
        q->wsi = wsi;
        if (sb_cluster_command(n->db, key, strlen(key), on_pj_peers, q, 2, argv, NULL) != 0) {
            free(q);
            h.status = 503;
            h.ctype = "application/json";
            h.len = 0;
            return respond(wsi, pss, &h, "");
        }
        pss->peers = q;
        return 0; /* answered at the reply */
    }
    h.status = 401; /* as peer: discovery off */
    h.ctype = "text/plain; charset=utf-8";
    h.len = sizeof "Unauthorized" - 1;
    return respond(wsi, pss, &h, "Unauthorized");
}

static int handle_http(struct lws *wsi, pss_t *pss, sb_node_t *n)
{
    char path[256];
    sb_http_method_t m = sb_http_method(wsi, path, sizeof path);
    pss->head = m == SB_HTTP_HEAD;
    if (sb_http_check_framing(wsi))
        return respond_json(wsi, pss, 400, "{\"error\":\"bad request\"}");
    int pj = n->cfg.peerjs_path ? sb_pj_http_route(n->cfg.peerjs_path, path) : SB_PJ_HTTP_NONE;
    if (pj == SB_PJ_HTTP_WS)
        return respond_json(wsi, pss, 426, "{\"error\":\"WebSocket upgrade required\"}");
    if (pj != SB_PJ_HTTP_NONE)
        return handle_pj_http(wsi, pss, n, m, pj);
    /* Every route here is read-only: GET and HEAD, nothing else (RFC 9110 15.5.6). */
    if (m != SB_HTTP_GET && m != SB_HTTP_HEAD)
        return respond_405(wsi, pss, "GET, HEAD", NULL);
    if (strcmp(path, "/livez") == 0)
        return respond_json(wsi, pss, 200, "{\"status\":\"ok\"}");
    if (strcmp(path, "/readyz") == 0) {
        const char *why = NULL;
        char body[256];
        int ok = sb_node_ready(n, &why);
        if (ok)
            snprintf(body, sizeof body, "{\"status\":\"ready\"}");
        else
            snprintf(body, sizeof body, "{\"status\":\"unready\",\"reason\":\"%s\"}", why);
        return respond_json(wsi, pss, ok ? 200 : 503, body);
    }
    if (strcmp(path, "/metrics") == 0) {
        size_t len = 0;
        char *text = sb_metrics_render(n, &len);
        sb_http_head_t h = {.status = text ? 200 : 500,
                            .ctype = "text/plain; version=0.0.4",
                            .len = text ? len : 0};
        int rc = respond(wsi, pss, &h, text ? text : "");
        free(text);
        return rc;
    }
    if (strcmp(path, "/ws") == 0)
        return respond_json(wsi, pss, 426, "{\"error\":\"WebSocket upgrade required\"}");
    const sb_embed_t *f = sb_http_static(
        static_routes, sizeof static_routes / sizeof static_routes[0], sb_client_files, path);
    if (f) {
        sb_http_head_t h = {.status = 200,
                            .ctype = sb_http_content_type(f->name),
                            .len = f->len,
                            .csp = sb_http_is_page(f) ? page_csp : NULL};
        return respond(wsi, pss, &h, f->data);
    }
    return respond_json(wsi, pss, 404, "{\"error\":\"not found\"}");
}

/* A request's header: lws's token of it, or our own parse of the head (conn.c). Its length, or
 * -1 (absent, or longer than cap - 1). */
static int req_copy(const sb_req_t *r, enum lws_token_indexes tok, const char *name, char *out,
                    size_t cap)
{
    if (r->wsi)
        return lws_hdr_copy(r->wsi, out, (int)cap, tok);
    return sb_wire_header_copy(r->head, name, out, cap);
}

/* The request's path, without its query: 1, or 0 when it does not fit. */
static int req_path(const sb_req_t *r, char *out, size_t cap)
{
    if (r->wsi)
        return lws_hdr_copy(r->wsi, out, (int)cap, WSI_TOKEN_GET_URI) > 0;
    const char *q = memchr(r->head->target, '?', r->head->tlen);
    size_t len = q ? (size_t)(q - r->head->target) : r->head->tlen;
    if (len >= cap)
        return 0;
    memcpy(out, r->head->target, len);
    out[len] = '\0';
    return 1;
}

/* Keeps the Origin header in s->origin: malloc'd, or NULL when absent, empty or longer than
 * SB_ORIGIN_MAX (a resume then matches only a socket without one). 0, or -1 out of memory. */
static int session_origin(sb_session_t *s, const sb_req_t *r)
{
    char origin[SB_ORIGIN_MAX + 1];
    int len = req_copy(r, WSI_TOKEN_ORIGIN, "origin", origin, sizeof origin);
    if (len <= 0)
        return 0;
    s->origin = strndup(origin, (size_t)len);
    return s->origin ? 0 : -1;
}

static int origin_allowed(const sb_req_t *r, sb_node_t *n)
{
    if (n->cfg.allowed_origins.n == 0)
        return 1;
    char origin[256];
    int len = req_copy(r, WSI_TOKEN_ORIGIN, "origin", origin, sizeof origin);
    if (len <= 0)
        return 0;
    /* The whole value, by its length: "https://ok.example\0.evil" is not "https://ok.example"
     * (strcmp would stop at the NUL a client put there). */
    for (int i = 0; i < n->cfg.allowed_origins.n; i++) {
        const char *allowed = n->cfg.allowed_origins.v[i];
        if (strlen(allowed) == (size_t)len && memcmp(origin, allowed, (size_t)len) == 0)
            return 1;
    }
    return 0;
}

/* RFC 6455 4.1/4.2.1: Sec-WebSocket-Key is 16 bytes in base64, i.e. 22 characters of the
 * base64 alphabet and "==". lws 4.1.6 hashes whatever it is given. */
static int key_valid(const sb_req_t *r)
{
    char key[32];
    int len = req_copy(r, WSI_TOKEN_KEY, "sec-websocket-key", key, sizeof key);
    if (len != 24 || key[22] != '=' || key[23] != '=')
        return 0;
    for (int i = 0; i < 22; i++) {
        char c = key[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return 0;
    }
    /* The last character carries 2 bits of the 16th byte and 4 bits of padding: zeros. */
    return strchr("AQgw", key[21]) != NULL;
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

/* 1 when the upgrade's path is the PeerJS WebSocket ({peerjs}/peerjs). */
static int pj_upgrade(const sb_req_t *r, sb_node_t *n)
{
    char path[128] = "";
    return n->cfg.peerjs_path && req_path(r, path, sizeof path) &&
           sb_pj_http_route(n->cfg.peerjs_path, path) == SB_PJ_HTTP_WS;
}

/* sb_http_check_framing on our own parse of the head: any Transfer-Encoding, or a
 * Content-Length that is not one value of at most 18 digits, is refused. */
static int head_framing_bad(const sb_wire_head_t *h)
{
    int count;
    if (sb_wire_header(h, "transfer-encoding", NULL))
        return 1;
    const sb_wire_header_t *cl = sb_wire_header(h, "content-length", &count);
    if (!cl)
        return 0;
    if (count > 1 || cl->vlen == 0 || cl->vlen > 18)
        return 1;
    for (size_t i = 0; i < cl->vlen; i++)
        if (cl->value[i] < '0' || cl->value[i] > '9')
            return 1;
    return 0;
}

static int check_upgrade(sb_node_t *n, const sb_req_t *r)
{
    char upgrade[32] = "", path[64] = "", version[8] = "";
    /* Why not `in`: libwebsockets 4.1.6 may call this after releasing the header table that
     * `in` points into (a use-after-free fixed upstream later); lws_hdr_copy is safe. Only
     * "websocket" is accepted, which also refuses h2c (lws has answered 403 by then; our own
     * layer answers it here). */
    if (req_copy(r, WSI_TOKEN_UPGRADE, "upgrade", upgrade, sizeof upgrade) <= 0 ||
        strcasecmp(upgrade, "websocket") != 0)
        return r->wsi ? -1 : HTTP_STATUS_FORBIDDEN;
    if (!r->wsi) {
        /* What lws checks before it asks us (RFC 6455 4.2.1): a GET of HTTP/1.1 or later, with
         * "Upgrade" among its Connection options. */
        if (r->head->mlen != 3 || memcmp(r->head->method, "GET", 3) != 0 || r->head->minor < 1 ||
            !sb_wire_header_has(r->head, "connection", "upgrade"))
            return HTTP_STATUS_BAD_REQUEST;
    }
    if (!pj_upgrade(r, n) && (!req_path(r, path, sizeof path) || strcmp(path, "/ws") != 0))
        return HTTP_STATUS_NOT_FOUND;
    /* Why check the version here: lws 4.1.6 answers 101 to any Sec-WebSocket-Version (or
     * none), and then ignores every frame of a version other than 13, leaving a connection
     * that only the ping timeout ends. RFC 6455 4.2.2: refuse, naming the version we speak. */
    if (req_copy(r, WSI_TOKEN_VERSION, "sec-websocket-version", version, sizeof version) <= 0 ||
        strcmp(version, "13") != 0)
        return SB_REFUSE_VERSION;
    if (!key_valid(r) || (r->wsi ? sb_http_check_framing(r->wsi) != 0 : head_framing_bad(r->head)))
        return HTTP_STATUS_BAD_REQUEST;
    if (!origin_allowed(r, n)) {
        sb_info_limited("refused a WebSocket upgrade: origin not allowed");
        return HTTP_STATUS_FORBIDDEN;
    }
    if (n->draining)
        return HTTP_STATUS_SERVICE_UNAVAILABLE;
    return 0;
}

static int confirm_upgrade(struct lws *wsi, sb_node_t *n)
{
    int rc = check_upgrade(n, &(sb_req_t){.wsi = wsi});
    if (rc == SB_REFUSE_VERSION)
        return refuse_version(wsi);
    if (rc > 0) {
        lws_return_http_status(wsi, (unsigned)rc, NULL);
        return 1;
    }
    return rc;
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
    if (limits)
        json_object_set_new(limits, "resume_grace_ms", json_integer(n->cfg.resume_grace_ms));
    char token[SB_RESUME_TOKEN_MAX + 1];
    /* The socket's token; only the one `joined` carries is bound to a session in Redis (a
     * socket that never joined has nothing to resume), so this one is never hashed. */
    if (w && n->cfg.resume_grace_ms > 0 && sb_resume_token(token, NULL) == 0)
        json_object_set_new(w, "resume", json_string(token));
    sb_session_send_json(s, w);
}

/* The value of query parameter name (lws keeps each "name=value" as a fragment, decoded) into
 * out: 1; 0 when absent; -1 when longer than cap - 1 (out is then "~", which no check takes). */
static int query_arg(const sb_req_t *r, const char *name, char *out, size_t cap)
{
    if (!r->wsi) {
        int rc = sb_wire_query_arg(r->head->target, r->head->tlen, name, out, cap);
        if (rc < 0)
            snprintf(out, cap, "~");
        return rc;
    }
    struct lws *wsi = r->wsi;
    size_t nl = strlen(name);
    for (int i = 0;; i++) {
        int flen = lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (flen <= 0)
            return 0;
        char *frag = malloc((size_t)flen + 1);
        int len =
            frag ? lws_hdr_copy_fragment(wsi, frag, flen + 1, WSI_TOKEN_HTTP_URI_ARGS, i) : -1;
        int rc = 0;
        if (len > (int)nl && strncmp(frag, name, nl) == 0 && frag[nl] == '=') {
            rc = (size_t)len - nl - 1 < cap ? 1 : -1;
            if (rc > 0)
                memcpy(out, frag + nl + 1, (size_t)len - nl);
            else
                snprintf(out, cap, "~");
        }
        free(frag);
        if (rc)
            return rc;
    }
}

/* The JWT of a PeerJS upgrade: the cookie switchboard_jwt, else the query parameter jwt. */
static int pj_jwt(const sb_req_t *r, char *out, size_t cap)
{
    static const char name[] = "switchboard_jwt=";
    const sb_wire_header_t *h = r->wsi ? NULL : sb_wire_header(r->head, "cookie", NULL);
    int len = r->wsi ? lws_hdr_total_length(r->wsi, WSI_TOKEN_HTTP_COOKIE) : h ? (int)h->vlen : 0;
    char *cookie = len > 0 ? malloc((size_t)len + 1) : NULL;
    if (cookie && req_copy(r, WSI_TOKEN_HTTP_COOKIE, "cookie", cookie, (size_t)len + 1) > 0) {
        for (char *p = cookie; p && *p;) {
            while (*p == ' ' || *p == ';')
                p++;
            char *end = strchr(p, ';');
            size_t vl = end ? (size_t)(end - p) : strlen(p);
            if (vl > sizeof name - 1 && strncmp(p, name, sizeof name - 1) == 0 &&
                vl - (sizeof name - 1) < cap) {
                memcpy(out, p + sizeof name - 1, vl - (sizeof name - 1));
                out[vl - (sizeof name - 1)] = '\0';
                free(cookie);
                return 1;
            }
            p = end;
        }
    }
    free(cookie);
    return query_arg(r, "jwt", out, cap);
}

/* A PeerJS socket: no welcome; its claim, from the upgrade's query. */
static void pj_open(const sb_req_t *r, sb_session_t *s)
{
    /* A value too long to be valid comes as "~", refused by its check as invalid. */
    char key[SB_PJ_KEY_MAX + 1], id[SB_PJ_ID_MAX + 1], token[SB_PJ_TOKEN_MAX + 1];
    char *jwt = s->node->auth_secret ? malloc(SB_AUTH_TOKEN_MAX + 1) : NULL;
    int has_key = query_arg(r, "key", key, sizeof key);
    int has_id = query_arg(r, "id", id, sizeof id);
    int has_token = query_arg(r, "token", token, sizeof token);
    int has_jwt = jwt && pj_jwt(r, jwt, SB_AUTH_TOKEN_MAX + 1) > 0;
    sb_route_pj_open(s, has_key ? key : NULL, has_id ? id : NULL, has_token ? token : NULL,
                     has_jwt ? jwt : NULL);
    free(jwt);
}

/* Why validate here for our own layer only: lws validates text frames itself
 * (LWS_SERVER_OPTION_VALIDATE_UTF8) and closes 1007; conn.c checks a whole message once. */
static int text_ok(sb_session_t *s, const char *p, size_t len, int check)
{
    if (!check || sb_wire_utf8_ok((const uint8_t *)p, len))
        return 1;
    sb_session_close(s, 1007, "invalid UTF-8");
    return 0;
}

static int receive(sb_session_t *s, const char *in, size_t len, int final, size_t announced,
                   int binary, int check_utf8)
{
    sb_node_t *n = s->node;
    /* What the frame header announces counts too: payload is handed over in pieces as it
     * arrives, so without it a client announcing 2^63-1 bytes would be let trickle up to the
     * limit before being refused. */
    if (s->close_code)
        return 0; /* closing: what the client still sends is read and dropped */
    if (s->rxlen + len + announced > (size_t)n->cfg.max_message_bytes) {
        /* All fragments count: the limit is on the message, not on a frame. The error frame,
         * then our close frame, go out in order; the rest of the message is read and dropped
         * meanwhile, so the client gets the close instead of a TCP reset. */
        if (!s->pj) /* PeerJS has no such message: the close code says it */
            sb_session_send_error(s, "bad-message", "message over max_message_bytes", NULL);
        sb_session_close(s, 1009, "message too big");
        free(s->rx);
        s->rx = NULL;
        s->rxcap = s->rxlen = 0;
        return 0;
    }
    int last = final && announced == 0; /* this piece ends the message */
    if (last && s->rxlen == 0 && !binary) {
        /* The whole message in one piece (most are): routed from the receive buffer, which
         * nothing touches until we return, without the copy into our own. */
        if (text_ok(s, in, len, check_utf8))
            sb_route_message(s, len ? in : "", len);
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
        if (s->rxlen == 0)
            s->rx_since_ms = sb_mono_ms(); /* sb_session_check_idle bounds how long it stays */
        memcpy(s->rx + s->rxlen, in, len);
        s->rxlen += len;
    }
    if (!last)
        return 0;
    size_t total = s->rxlen;
    s->rxlen = 0;
    if (binary) {
        sb_route_binary(s);
    } else if (text_ok(s, s->rx ? s->rx : "", total, check_utf8)) {
        sb_route_message(s, s->rx ? s->rx : "", total);
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

/* Milliseconds since the kernel last received data on the socket of wsi (any frame: a text
 * frame, a pong, and also the client's own pings, which lws 4.1.6 answers without telling us);
 * -1 when unknown. */
static int64_t kernel_rx_age_ms(const sb_session_t *s)
{
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    int fd = s->conn ? sb_conn_fd(s->conn) : s->wsi ? (int)lws_get_socket_fd(s->wsi) : -1;
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) != 0)
        return -1;
    return (int64_t)ti.tcpi_last_data_recv;
}

/* Before our ping goes out: a client that pinged us (or sent anything) within the ping
 * interval is alive, though lws never showed us its pings. Its last sign of life is taken
 * from the kernel and the ping is called off; a client whose bytes stopped is pinged as
 * before. Why here: the WRITEABLE of a due ping is the one point server.c sees between the
 * sweep's decision and the hang-up (session.c could ask kernel_rx_age_ms in its sweep). */
static void heard_by_kernel(sb_session_t *s)
{
    int64_t age = kernel_rx_age_ms(s);
    if (age < 0)
        return;
    int64_t now = sb_mono_ms(), heard = now - age;
    if (heard > s->last_rx_ms)
        s->last_rx_ms = heard;
    if (now - s->last_rx_ms < s->node->cfg.ping_interval_ms) {
        s->ping_due = 0;
        s->ping_sent_ms = 0;
    }
}

static sb_session_t *established(sb_node_t *n, const sb_req_t *r, struct lws *wsi, sb_conn_t *c)
{
    sb_session_t *s = sb_session_new(n, wsi);
    if (!s)
        return NULL;
    s->conn = c;
    if (session_origin(s, r) != 0 || sb_route_attach(s) != 0) {
        s->conn = NULL;
        sb_session_detach(s);
        return NULL;
    }
    sb_debug_limited("session %s: connected", s->id);
    if (pj_upgrade(r, n))
        pj_open(r, s);
    else
        send_welcome(s);
    return s;
}

static void closed(sb_session_t *s)
{
    sb_debug_limited("session %s: closed", s->id);
    sb_route_disconnect(s); /* its Redis cleanup needs the seat: first */
    sb_session_detach(s);
}

static sb_session_t *conn_established(sb_node_t *n, const sb_req_t *r, sb_conn_t *c)
{
    return established(n, r, NULL, c);
}

/* conn.c's way up: what lws reaches through `callback` below. */
static const sb_conn_events_t conn_events = {
    .check_upgrade = check_upgrade,
    .established = conn_established,
    .receive = receive,
    .closed = closed,
    .writable = sb_session_writable,
    .want_flush = sb_session_want_flush,
};

static const struct lws_protocols protocols[2];

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    pss_t *pss = user;
    sb_node_t *n = sb_listen_user(wsi);
    int rc;
    if (sb_listen_filter(wsi, reason, in, &protocols[0], &rc))
        return rc; /* refused at accept (a cap), or a raw socket (CONNECT) */
    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return confirm_upgrade(wsi, n);
    case LWS_CALLBACK_HTTP:
        return handle_http(wsi, pss, n);
    case LWS_CALLBACK_HTTP_BODY:
        return 0; /* no route reads a body (the method check refused what could have one) */
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (pss && pss->head_due) {
            /* An answer that waited for Redis: its headers now, the body next time. */
            pss->head_due = 0;
            if (sb_http_write_head(wsi, &pss->due) != 0)
                return -1;
            lws_callback_on_writable(wsi);
            break;
        }
        if (!pss || !pss->body.buf)
            break;
        return sb_http_body_write(wsi, &pss->body, pss->head);
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (pss) {
            sb_http_body_free(&pss->body);
            if (pss->peers)
                pss->peers->wsi = NULL; /* its reply only frees it */
            pss->peers = NULL;
        }
        break;
    case LWS_CALLBACK_ESTABLISHED:
        pss->sess = established(n, &(sb_req_t){.wsi = wsi}, wsi, NULL);
        return pss->sess ? 0 : -1;
    case LWS_CALLBACK_RECEIVE:
        if (!pss->sess || pss->sess->closed)
            return -1;
        pss->sess->last_rx_ms = sb_mono_ms();
        return receive(pss->sess, in, len, lws_is_final_fragment(wsi),
                       lws_remaining_packet_payload(wsi), lws_frame_is_binary(wsi), 0);
    case LWS_CALLBACK_RECEIVE_PONG:
        if (pss && pss->sess)
            pss->sess->last_rx_ms = sb_mono_ms();
        break;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        /* Which code the client closed with decides its resume grace (route.c). */
        if (pss && pss->sess) {
            const unsigned char *c = in;
            pss->sess->peer_close = len >= 2 ? (c[0] << 8 | c[1]) : 1005;
        }
        /* A close frame's payload is empty or a 2-byte code (and a reason): RFC 6455 5.5.1.
         * lws 4.1.6 echoes a 1-byte payload as an empty close; answer 1002 instead. */
        if (len == 1 && pss && pss->sess) {
            unsigned char frame[LWS_PRE + 2];
            frame[LWS_PRE] = (unsigned char)(LWS_CLOSE_STATUS_PROTOCOL_ERR >> 8);
            frame[LWS_PRE + 1] = (unsigned char)(LWS_CLOSE_STATUS_PROTOCOL_ERR & 0xff);
            lws_write(wsi, frame + LWS_PRE, 2, CLOSE_OPCODE);
            sb_metrics_close(n, LWS_CLOSE_STATUS_PROTOCOL_ERR);
            return -1;
        }
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (!pss->sess)
            return -1;
        if (pss->sess->ping_due)
            heard_by_kernel(pss->sess);
        return sb_session_writable(pss->sess);
    case LWS_CALLBACK_CLOSED:
        if (pss && pss->sess) {
            closed(pss->sess);
            pss->sess = NULL;
        }
        break;
    default:
        break;
    }
    return 0;
}

/* What lws allocates per connection for receiving, kept for the connection's life. Why 512:
 * an ICE candidate signal (~300 B) still arrives in one piece, and each idle socket costs
 * 512 B less than with 1024 (RSS per idle joined socket 3,808-3,832 B -> 3,306 B, 10,000
 * sockets); larger messages (SDP) arrive in more pieces: node CPU per message at 4,000 msg/s
 * was +0-10% for 200 B, +10-15% for 1.6 KB, +10% for 4 KB signals; 256 cost +25-35% for
 * those and saved only 260 B more (issue 14; docs/design.md). Settable at build time for
 * measurements (-DSB_RX_BUFFER=N). */
#ifndef SB_RX_BUFFER
#define SB_RX_BUFFER 512
#endif

static const struct lws_protocols protocols[] = {
    /* Index 0 is also what a client without a subprotocol gets: v1. rx_buffer_size is what
     * lws allocates per connection for receiving; larger messages arrive in pieces and are
     * reassembled in session memory only while they are in flight. tx_packet_size: without it
     * lws caps each send() at rx_buffer_size and copies the rest of a larger frame aside (a
     * 4 KiB signal took 4 sends; tests/bench measured +25% msgs/s for 4 KiB signals with it). */
    {SB_PROTOCOL_NAME, callback, sizeof(pss_t), SB_RX_BUFFER, 0, NULL, 65536},
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
                     .vhost_name = SB_VHOST_NAME,
                     .idle_policy = &idle_policy,
                     .tls_cert = n->cfg.tls_cert,
                     .tls_key = n->cfg.tls_key,
                     .extra_options = LWS_SERVER_OPTION_VALIDATE_UTF8,
                     .max_connections = n->cfg.max_connections,
                     .max_per_source = n->cfg.max_connections_per_ip,
                     /* Our own WebSocket layer takes plain connections first (conn.c); TLS
                      * stays lws's. */
                     .take = n->cfg.ws_native && !n->cfg.tls_cert ? sb_conn_take : NULL};
    if (l.take && sb_conn_start(n, &conn_events) != 0)
        return -1;
    n->lws = sb_listen(&l);
    if (!n->lws)
        return -1;
    if (n->cfg.resume_grace_ms > 0) {
        /* Why one token now: the first hash maps about 2 MB of libcrypto (code and tables), a
         * cost of the process, not of the first socket (issue 14 measures RSS per socket). */
        char token[SB_RESUME_TOKEN_MAX + 1], hash[SB_RESUME_HASH_LEN + 1];
        (void)sb_resume_token(token, hash);
    }
    sb_session_flush_start(n);
    sb_info("node %s listening on %s (epoch %s)", n->cfg.id, n->cfg.listen, n->epoch);
    return 0;
}

void sb_server_stop(sb_node_t *n)
{
    if (n->lws) {
        sb_conn_stop(n);
        sb_session_flush_stop(n);
        lws_context_destroy(n->lws);
        n->lws = NULL;
    }
}
