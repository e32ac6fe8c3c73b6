/* The admin's HTTP side: an lws context on our libuv loop, routing, the bearer-token gate and
 * responses. Every route that returns data or changes state passes the gate first, whatever
 * the method, so a refused request learns nothing (not even which methods exist). Answers that
 * need Redis are asynchronous: a small refcounted request outlives the connection when lws
 * closes it first (the reply then only drops its reference). Does not compute figures. */
#include "listen.h"
#include "admin.h"
#include "embed.h"
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
    char *body;                           /* LWS_PRE headroom, then len bytes */
    size_t len;
} req_t;

typedef struct {
    req_t *req;
} pss_t;

static const struct {
    const char *path, *file;
} static_routes[] = {
    {"/admin/", "index.html"},
    {"/admin/index.html", "index.html"},
    {"/admin/dashboard.js", "dashboard.js"},
    {"/admin/dashboard.css", "dashboard.css"},
};

static void req_unref(req_t *r)
{
    if (--r->refs > 0)
        return;
    free(r->body);
    free(r);
}

/* Queues the response; the WRITEABLE callback writes headers, then the body. body is copied. */
static int reply(req_t *r, unsigned status, kind_t kind, const char *ctype, const char *body,
                 size_t len)
{
    if (r->closed || r->stage != 0)
        return 0;
    r->body = malloc(LWS_PRE + len + 1);
    if (!r->body) {
        lws_set_timeout(r->wsi, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
        return 0;
    }
    memcpy(r->body + LWS_PRE, body, len);
    r->len = len;
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

static const char *content_type(const char *file)
{
    const char *dot = strrchr(file, '.');
    if (dot && strcmp(dot, ".js") == 0)
        return "text/javascript; charset=utf-8";
    if (dot && strcmp(dot, ".css") == 0)
        return "text/css; charset=utf-8";
    return "text/html; charset=utf-8";
}

static int add_header(struct lws *wsi, const char *name, const char *value, unsigned char **p,
                      unsigned char *end)
{
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                       (const unsigned char *)value, (int)strlen(value), p, end);
}

static int write_headers(req_t *r)
{
    unsigned char hdr[LWS_PRE + 2048], *start = hdr + LWS_PRE, *p = start,
                                       *end = hdr + sizeof hdr - 1;
    struct lws *wsi = r->wsi;
    if (lws_add_http_common_headers(wsi, r->status, r->ctype, (lws_filepos_t)r->len, &p, end))
        return -1;
    /* Every answer: never cached (figures change; the page must not outlive a token). */
    if (add_header(wsi, "cache-control:", "no-store", &p, end) ||
        add_header(wsi, "x-content-type-options:", "nosniff", &p, end) ||
        add_header(wsi, "referrer-policy:", "no-referrer", &p, end))
        return -1;
    if (r->kind == KIND_PAGE) {
        static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                                  "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                  "form-action 'none'; frame-ancestors 'none'";
        if (add_header(wsi, "content-security-policy:", csp, &p, end) ||
            add_header(wsi, "x-frame-options:", "DENY", &p, end))
            return -1;
    }
    if (r->extra_name && add_header(wsi, r->extra_name, r->extra_value, &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    return 0;
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

typedef enum { M_GET, M_POST, M_PUT, M_DELETE, M_PATCH, M_OPTIONS, M_HEAD, M_OTHER } method_t;

static method_t method_of(struct lws *wsi, char *path, size_t len)
{
    static const struct {
        enum lws_token_indexes tok;
        method_t m;
    } methods[] = {
        {WSI_TOKEN_GET_URI, M_GET},     {WSI_TOKEN_POST_URI, M_POST},
        {WSI_TOKEN_PUT_URI, M_PUT},     {WSI_TOKEN_DELETE_URI, M_DELETE},
        {WSI_TOKEN_PATCH_URI, M_PATCH}, {WSI_TOKEN_OPTIONS_URI, M_OPTIONS},
        {WSI_TOKEN_HEAD_URI, M_HEAD},
    };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (lws_hdr_total_length(wsi, methods[i].tok) > 0) {
            if (lws_hdr_copy(wsi, path, (int)len, methods[i].tok) <= 0)
                path[0] = '\0';
            return methods[i].m;
        }
    }
    path[0] = '\0';
    return M_OTHER;
}

/* The query string rebuilt from lws's fragments ("a=1&b=2"), bounded. */
static void query_of(struct lws *wsi, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    char frag[512];
    for (int i = 0; i < 32; i++) {
        int fl = lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (fl < 0)
            break;
        int w = snprintf(buf + n, len - n, "%s%s", n ? "&" : "", frag);
        if (w < 0 || (size_t)w >= len - n)
            break;
        n += (size_t)w;
    }
}

/* limit=N of the events route: 1..EVENTS_LIMIT (larger is clamped); -1 when malformed. */
static int parse_limit(const char *query)
{
    const char *p = query;
    while (p && *p) {
        if (strncmp(p, "limit=", 6) == 0) {
            const char *d = p + 6;
            long v = 0;
            if (*d == '\0' || *d == '&')
                return -1;
            for (; *d && *d != '&'; d++) {
                if (*d < '0' || *d > '9')
                    return -1;
                if (v <= EVENTS_LIMIT)
                    v = v * 10 + (*d - '0');
            }
            if (v < 1)
                return -1;
            return v > EVENTS_LIMIT ? EVENTS_LIMIT : (int)v;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return EVENTS_DEFAULT;
}

static int authorized(struct lws *wsi, const sb_admin_t *a, const char *query)
{
    if (sb_admin_auth_query_has_token(query))
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
    char path[256], query[1024];
    method_t m = method_of(wsi, path, sizeof path);
    r->head = m == M_HEAD;
    query_of(wsi, query, sizeof query);

    if (strcmp(path, "/livez") == 0) {
        if (m != M_GET && m != M_HEAD)
            return reply_method(r, "GET, HEAD");
        return reply_json(r, 200, "{\"status\":\"ok\"}");
    }
    if (strcmp(path, "/readyz") == 0) {
        if (m != M_GET && m != M_HEAD)
            return reply_method(r, "GET, HEAD");
        if (sb_lease_redis_ready(a))
            return reply_json(r, 200, "{\"status\":\"ready\"}");
        return reply_json(r, 503, "{\"status\":\"unready\",\"reason\":\"redis unreachable\"}");
    }
    if (strcmp(path, "/admin") == 0) {
        if (m != M_GET && m != M_HEAD)
            return reply_method(r, "GET, HEAD");
        r->extra_name = "location:";
        r->extra_value = "/admin/";
        return reply_json(r, 308, "{\"location\":\"/admin/\"}");
    }
    for (size_t i = 0; i < sizeof static_routes / sizeof static_routes[0]; i++) {
        if (strcmp(path, static_routes[i].path) != 0)
            continue;
        if (m != M_GET && m != M_HEAD)
            return reply_method(r, "GET, HEAD");
        const sb_embed_t *f = sb_embed_find(sb_admin_files, static_routes[i].file);
        if (!f)
            break;
        int page = strstr(f->name, ".html") != NULL;
        return reply(r, 200, page ? KIND_PAGE : KIND_STATIC, content_type(f->name), f->data,
                     f->len);
    }

    /* Data routes: the token first, for every method. */
    const char *allow = NULL;
    method_t want = M_GET;
    if (strcmp(path, "/admin/mesh-status") == 0 || strcmp(path, "/admin/events") == 0 ||
        strcmp(path, "/metrics") == 0) {
        allow = "GET";
    } else if (strcmp(path, "/admin/reconcile") == 0) {
        allow = "POST";
        want = M_POST;
    }
    if (!allow)
        return reply_json(r, 404, "{\"error\":\"not found\"}");
    if (!authorized(wsi, a, query)) {
        sb_debug("http: refused an unauthorized request");
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
    int limit = parse_limit(query);
    if (limit < 0) {
        r->refs--;
        return reply_error(r, 400, "limit must be an integer from 1 to 1000");
    }
    char key[160], count[16];
    sb_key_global(key, sizeof key, a->cfg.prefix, "events"); /* fits: prefix <= 64 */
    snprintf(count, sizeof count, "%d", limit);
    const char *argv[] = {"XREVRANGE", key, "+", "-", "COUNT", count};
    return start_async(r, sb_redis_argv(a->redis, on_events, r, 6, argv, NULL));
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

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    (void)in;
    (void)len;
    pss_t *pss = user;
    struct lws_vhost *vh = lws_get_vhost(wsi);
    sb_admin_t *a = vh ? lws_vhost_user(vh) : NULL;
    if (!a && lws_get_context(wsi))
        a = lws_context_user(lws_get_context(wsi));

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
        if (!r->head && r->len > 0) {
            if (lws_write(wsi, (unsigned char *)r->body + LWS_PRE, r->len, LWS_WRITE_HTTP_FINAL) <
                0)
                return -1;
        }
        release(pss);
        if (lws_http_transaction_completed(wsi))
            return -1;
        break;
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
    {"http", callback, sizeof(pss_t), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int sb_http_start(sb_admin_t *a)
{
    sb_listen_t l = {.loop = a->loop,
                     .listen = a->cfg.listen,
                     .protocols = protocols,
                     .user = a,
                     .vhost_name = "switchboard-admin"};
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
