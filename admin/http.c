/* The admin's HTTP side: an lws context on our libuv loop, routing, the bearer-token gate and
 * responses. Every route that returns data or changes state passes the gate first, whatever
 * the method, so a refused request learns nothing (not even which methods exist). Answers that
 * need Redis are asynchronous: a small refcounted request outlives the connection when lws
 * closes it first (the reply then only drops its reference). Does not compute figures. */
#include "listen.h"
#include "admin.h"
#include "embed.h"
#include "http.h"
#include "log.h"

#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern const sb_embed_t sb_admin_files[];

#define EVENTS_DEFAULT 100
#define EVENTS_LIMIT 1000
#define MESH_EVENTS 20
/* Names lws knows this listener by (sb_listen_stats in metrics.c uses the same). */
#define VHOST_NAME "switchboard-admin"
#define PROTOCOL_NAME "http"

typedef enum { KIND_JSON, KIND_PAGE, KIND_STATIC, KIND_TEXT } kind_t;

/* One HTTP transaction. References: the connection (until lws closes it or the transaction
 * completes) and the asynchronous operation answering it, if any. */
typedef struct req {
    int refs;
    int closed; /* lws closed the connection: wsi is gone */
    struct lws *wsi;
    sb_admin_t *a;
    int head;
    int stage; /* 0 waiting, 1 headers to write, 2 body to write */
    unsigned status;
    kind_t kind;
    const char *ctype;
    const char *extra_name, *extra_value; /* one more header (WWW-Authenticate, Allow, ...) */
    sb_http_body_t body;
} req_t;

typedef struct {
    req_t *req;
} pss_t;

static const sb_http_route_t static_routes[] = {
    {"/admin/", "index.html"},
    {"/admin/index.html", "index.html"},
    {"/admin/dashboard.js", "dashboard.js"},
    {"/admin/dashboard.css", "dashboard.css"},
};

static void req_unref(req_t *r)
{
    if (--r->refs > 0)
        return;
    sb_http_body_free(&r->body);
    free(r);
}

/* Queues the response; the WRITEABLE callback writes headers, then the body. body is copied. */
static int reply(req_t *r, unsigned status, kind_t kind, const char *ctype, const char *body,
                 size_t len)
{
    if (r->closed || r->stage != 0)
        return 0;
    if (sb_http_body_set(&r->body, body, len) != 0) {
        lws_set_timeout(r->wsi, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
        return 0;
    }
    r->status = status;
    r->kind = kind;
    r->ctype = ctype;
    r->stage = 1;
    lws_callback_on_writable(r->wsi);
    return 0;
}

static int reply_json(req_t *r, unsigned status, const char *json)
{
    return reply(r, status, KIND_JSON, "application/json", json, strlen(json));
}

/* json stolen. */
static int reply_json_obj(req_t *r, unsigned status, json_t *json)
{
    char *text = json ? json_dumps(json, JSON_COMPACT) : NULL;
    json_decref(json);
    if (!text)
        return reply_json(r, 500, "{\"error\":\"internal\"}");
    reply_json(r, status, text);
    free(text);
    return 0;
}

static int reply_error(req_t *r, unsigned status, const char *message)
{
    return reply_json_obj(r, status, json_pack("{s:s}", "error", message));
}

static int reply_unauthorized(req_t *r)
{
    /* No data, no hint of which check failed. */
    r->extra_name = "www-authenticate:";
    r->extra_value = "Bearer realm=\"switchboard-admin\"";
    return reply_json(r, 401, "{\"error\":\"unauthorized\"}");
}

static int reply_method(req_t *r, const char *allow)
{
    r->extra_name = "allow:";
    r->extra_value = allow;
    return reply_json(r, 405, "{\"error\":\"method not allowed\"}");
}

static int write_headers(req_t *r)
{
    static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                              "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                              "form-action 'none'; frame-ancestors 'none'";
    sb_http_head_t h = {.status = r->status,
                        .ctype = r->ctype,
                        .len = r->body.len,
                        .csp = r->kind == KIND_PAGE ? csp : NULL,
                        .extra_name = r->extra_name,
                        .extra_value = r->extra_value};
    return sb_http_write_head(r->wsi, &h);
}

/* ---- asynchronous answers ------------------------------------------------------------------ */

static void on_mesh(sb_admin_t *a, sb_status_t *st, const char *error, void *data)
{
    (void)a;
    req_t *r = data;
    if (error)
        reply_error(r, 503, "redis unavailable");
    else
        reply_json_obj(r, 200, sb_status_json(st));
    req_unref(r);
}

static void on_metrics(sb_admin_t *a, sb_status_t *st, const char *error, void *data)
{
    req_t *r = data;
    size_t len = 0;
    char *text = error ? NULL : sb_admin_metrics_render(a, st, &len);
    if (text)
        reply(r, 200, KIND_TEXT, "text/plain; version=0.0.4; charset=utf-8", text, len);
    else
        reply_error(r, 503, error ? "redis unavailable" : "internal");
    free(text);
    req_unref(r);
}

static void on_pass(sb_admin_t *a, const sb_pass_result_t *res, const char *error, void *data)
{
    (void)a;
    req_t *r = data;
    if (error)
        reply_error(r, 503, "reconcile pass failed: redis unavailable");
    else
        reply_json_obj(r, 200, sb_pass_json(res));
    req_unref(r);
}

static void on_events(redisReply *reply_, const char *error, void *data)
{
    req_t *r = data;
    if (error || sb_reply_is_error(reply_))
        reply_error(r, 503, "redis unavailable");
    else
        reply_json_obj(r, 200, json_pack("{s:o}", "events", sb_events_from_reply(reply_)));
    req_unref(r);
}

/* ---- routing ------------------------------------------------------------------------------- */

/* limit=N of the events route: 1..EVENTS_LIMIT (larger is clamped); -1 when malformed. */
static int parse_limit(const char *digits)
{
    long v = 0;
    if (*digits == '\0')
        return -1;
    for (const char *d = digits; *d; d++) {
        if (*d < '0' || *d > '9')
            return -1;
        if (v <= EVENTS_LIMIT)
            v = v * 10 + (*d - '0');
    }
    if (v < 1)
        return -1;
    return v > EVENTS_LIMIT ? EVENTS_LIMIT : (int)v;
}

/* What the query says, every parameter read. */
typedef struct {
    int unreadable; /* a parameter could not be read whole: the query is refused */
    int has_token;  /* a parameter looks like a credential: refused as unauthorized */
    int limit;      /* the first limit=N (EVENTS_DEFAULT when none, -1 when malformed) */
} query_t;

/* Reads every parameter of the query. lws keeps each, url-decoded, as one fragment of
 * WSI_TOKEN_HTTP_URI_ARGS; none can be longer than the header space (4096 bytes, sb_listen),
 * so the buffer holds any of them, and the loop ends at the first index lws does not have.
 * Why not a bounded rebuild of the query string: a scan that stops at its bounds (32
 * parameters, 512 bytes each, 1 KiB in all) let "token=" through after them. */
static void read_query(struct lws *wsi, query_t *q)
{
    static char frag[4096 + 1]; /* one request at a time on our loop */
    q->unreadable = q->has_token = 0;
    q->limit = EVENTS_DEFAULT;
    int seen_limit = 0;
    for (int i = 0;; i++) {
        int fl = lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (fl < 0) {
            if (lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i) > 0)
                q->unreadable = 1; /* there, but longer than we can read */
            return;
        }
        if ((size_t)fl != strlen(frag))
            q->unreadable = 1; /* an encoded NUL ("%00") would hide the rest from the check */
        if (sb_admin_auth_query_has_token(frag))
            q->has_token = 1;
        if (!seen_limit && strncmp(frag, "limit=", 6) == 0) {
            seen_limit = 1;
            q->limit = parse_limit(frag + 6);
        }
    }
}

static int authorized(struct lws *wsi, const sb_admin_t *a, const query_t *query)
{
    if (query->has_token)
        return 0; /* a token in a URL ends up in logs and histories: refused outright */
    char header[1200];
    int total = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
    if (total <= 0 || total >= (int)sizeof header)
        return 0;
    if (lws_hdr_copy(wsi, header, sizeof header, WSI_TOKEN_HTTP_AUTHORIZATION) <= 0)
        return 0;
    return sb_admin_auth_check(a, header);
}

static int start_async(req_t *r, int rc)
{
    if (rc != 0) {
        reply_error(r, 503, "redis unavailable");
        req_unref(r); /* the operation never took its reference (the connection holds one) */
    }
    return 0;
}

static int route(req_t *r, struct lws *wsi)
{
    sb_admin_t *a = r->a;
    char path[256];
    sb_http_method_t m = sb_http_method(wsi, path, sizeof path);
    r->head = m == SB_HTTP_HEAD;
    if (sb_http_check_framing(wsi))
        return reply_error(r, 400, "bad request");
    query_t query;
    read_query(wsi, &query);

    if (strcmp(path, "/livez") == 0) {
        if (m != SB_HTTP_GET && m != SB_HTTP_HEAD)
            return reply_method(r, "GET, HEAD");
        return reply_json(r, 200, "{\"status\":\"ok\"}");
    }
    if (strcmp(path, "/readyz") == 0) {
        if (m != SB_HTTP_GET && m != SB_HTTP_HEAD)
            return reply_method(r, "GET, HEAD");
        if (sb_lease_redis_ready(a))
            return reply_json(r, 200, "{\"status\":\"ready\"}");
        return reply_json(r, 503, "{\"status\":\"unready\",\"reason\":\"redis unreachable\"}");
    }
    if (strcmp(path, "/admin") == 0) {
        if (m != SB_HTTP_GET && m != SB_HTTP_HEAD)
            return reply_method(r, "GET, HEAD");
        r->extra_name = "location:";
        r->extra_value = "/admin/";
        return reply_json(r, 308, "{\"location\":\"/admin/\"}");
    }
    const sb_embed_t *f = sb_http_static(
        static_routes, sizeof static_routes / sizeof static_routes[0], sb_admin_files, path);
    if (f) {
        if (m != SB_HTTP_GET && m != SB_HTTP_HEAD)
            return reply_method(r, "GET, HEAD");
        return reply(r, 200, sb_http_is_page(f) ? KIND_PAGE : KIND_STATIC,
                     sb_http_content_type(f->name), f->data, f->len);
    }

    /* Data routes: the token first, for every method. */
    const char *allow = NULL;
    sb_http_method_t want = SB_HTTP_GET;
    if (strcmp(path, "/admin/mesh-status") == 0 || strcmp(path, "/admin/events") == 0 ||
        strcmp(path, "/metrics") == 0) {
        allow = "GET";
    } else if (strcmp(path, "/admin/reconcile") == 0) {
        allow = "POST";
        want = SB_HTTP_POST;
    }
    if (!allow)
        return reply_json(r, 404, "{\"error\":\"not found\"}");
    if (query.unreadable)
        return reply_error(r, 400, "query parameter too long to check");
    if (!authorized(wsi, a, &query)) {
        sb_debug_limited("http: refused an unauthorized request");
        return reply_unauthorized(r);
    }
    if (m != want)
        return reply_method(r, allow);

    /* Answers from Redis may take a pass's time: give lws a deadline well past ours. */
    lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, 300);
    r->refs++;
    if (strcmp(path, "/admin/mesh-status") == 0)
        return start_async(r, sb_status_collect(a, MESH_EVENTS, on_mesh, r));
    if (strcmp(path, "/metrics") == 0)
        return start_async(r, sb_status_collect(a, 0, on_metrics, r));
    if (strcmp(path, "/admin/reconcile") == 0)
        return start_async(r, sb_reconcile_run(a, on_pass, r));
    int limit = query.limit;
    if (limit < 0) {
        r->refs--;
        return reply_error(r, 400, "limit must be an integer from 1 to 1000");
    }
    char key[160], count[16];
    sb_key_global(key, sizeof key, a->cfg.prefix, "events"); /* fits: prefix <= 64 */
    snprintf(count, sizeof count, "%d", limit);
    const char *argv[] = {"XREVRANGE", key, "+", "-", "COUNT", count};
    return start_async(r, sb_admin_cmd(a, on_events, r, 6, argv, NULL));
}

/* ---- the lws callback ---------------------------------------------------------------------- */

static void release(pss_t *pss)
{
    if (!pss || !pss->req)
        return;
    req_t *r = pss->req;
    pss->req = NULL;
    r->closed = 1;
    r->wsi = NULL;
    req_unref(r);
}

static const struct lws_protocols protocols[2];

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    (void)len;
    pss_t *pss = user;
    sb_admin_t *a = sb_listen_user(wsi);
    int rc;
    if (sb_listen_filter(wsi, reason, in, &protocols[0], &rc))
        return rc; /* refused at accept (a cap), or a raw socket (CONNECT) */
    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return -1; /* no WebSocket here */
    case LWS_CALLBACK_HTTP: {
        release(pss);
        req_t *r = calloc(1, sizeof *r);
        if (!r)
            return -1;
        r->refs = 1;
        r->wsi = wsi;
        r->a = a;
        pss->req = r;
        route(r, wsi);
        return 0;
    }
    case LWS_CALLBACK_HTTP_BODY:
        return 0; /* no route reads a body: ignore it */
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        req_t *r = pss ? pss->req : NULL;
        if (!r || r->stage == 0)
            break;
        if (r->stage == 1) {
            if (write_headers(r) != 0)
                return -1;
            r->stage = 2;
            lws_callback_on_writable(wsi);
            break;
        }
        /* The body goes out after the headers, then the transaction completes (and the next
         * request on this connection may start): the request is released first. */
        sb_http_body_t body = r->body;
        r->body = (sb_http_body_t){0};
        int head = r->head;
        release(pss);
        return sb_http_body_write(wsi, &body, head);
    }
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        release(pss);
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {PROTOCOL_NAME, callback, sizeof(pss_t), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int sb_http_start(sb_admin_t *a)
{
    sb_listen_t l = {.loop = a->loop,
                     .listen = a->cfg.listen,
                     .protocols = protocols,
                     .user = a,
                     .vhost_name = VHOST_NAME,
                     .max_connections = a->cfg.max_connections,
                     .max_per_source = a->cfg.max_connections_per_ip};
    a->lws = sb_listen(&l);
    if (!a->lws)
        return -1;
    sb_info("admin listening on %s (dashboard at /admin/)", a->cfg.listen);
    return 0;
}

void sb_http_stop(sb_admin_t *a)
{
    if (a->lws) {
        lws_context_destroy(a->lws);
        a->lws = NULL;
    }
}
