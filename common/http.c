/* HTTP helpers shared by the node and the admin (see http.h). */
#include "http.h"

#include <stdlib.h>
#include <string.h>

sb_http_method_t sb_http_method(struct lws *wsi, char *path, size_t len)
{
    static const struct {
        enum lws_token_indexes tok;
        sb_http_method_t m;
    } methods[] = {
        {WSI_TOKEN_GET_URI, SB_HTTP_GET},     {WSI_TOKEN_POST_URI, SB_HTTP_POST},
        {WSI_TOKEN_PUT_URI, SB_HTTP_PUT},     {WSI_TOKEN_DELETE_URI, SB_HTTP_DELETE},
        {WSI_TOKEN_PATCH_URI, SB_HTTP_PATCH}, {WSI_TOKEN_OPTIONS_URI, SB_HTTP_OPTIONS},
        {WSI_TOKEN_HEAD_URI, SB_HTTP_HEAD},
    };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (lws_hdr_total_length(wsi, methods[i].tok) > 0) {
            if (lws_hdr_copy(wsi, path, (int)len, methods[i].tok) <= 0)
                path[0] = '\0';
            char *q = strchr(path, '?');
            if (q)
                *q = '\0';
            return methods[i].m;
        }
    }
    path[0] = '\0';
    return SB_HTTP_OTHER;
}

/* 1 when s[0..n) holds a control character (below 0x20, or DEL). */
static int has_control(const char *s, int n)
{
    for (int i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 1;
    return 0;
}

/* 1 when the URI, url-decoded as lws keeps it, holds a control character: in the path (any
 * method's URI token) or in a query parameter (each a fragment of WSI_TOKEN_HTTP_URI_ARGS). */
static int uri_has_control(struct lws *wsi)
{
    static char buf[4096 + 1]; /* the header space (sb_listen): one request at a time */
    static const enum lws_token_indexes uris[] = {
        WSI_TOKEN_GET_URI,   WSI_TOKEN_POST_URI,    WSI_TOKEN_PUT_URI, WSI_TOKEN_DELETE_URI,
        WSI_TOKEN_PATCH_URI, WSI_TOKEN_OPTIONS_URI, WSI_TOKEN_HEAD_URI};
    for (size_t i = 0; i < sizeof uris / sizeof uris[0]; i++) {
        int n = lws_hdr_total_length(wsi, uris[i]) > 0 ? lws_hdr_copy(wsi, buf, sizeof buf, uris[i])
                                                       : 0;
        if (n > 0 && has_control(buf, n))
            return 1;
    }
    for (int i = 0;; i++) {
        int n = lws_hdr_copy_fragment(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
            return 0; /* no more (one too long to copy is the routes' to refuse) */
        if (has_control(buf, n))
            return 1;
    }
}

/* An HTTP/2 request (TLS with ALPN h2): it has a :path and no request line, so no version. */
static int is_h2(struct lws *wsi)
{
#if defined(LWS_ROLE_H2)
    return lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_COLON_PATH) > 0;
#else
    (void)wsi;
    return 0;
#endif
}

unsigned sb_http_check_framing(struct lws *wsi)
{
    /* A decoded CR or LF ("%0a") ends lws 4.1.6's request line where it is: the URI is cut
     * there, the version and the next header line are lost, and it would answer as HTTP/1.0 to
     * what it kept. Such a request is known by its missing version (lws keeps "HTTP/1.1" as
     * WSI_TOKEN_HTTP and "HTTP/1.0" as WSI_TOKEN_HTTP1_0). Any other control character that
     * reaches the decoded path or query would split a line in a log that prints it. */
    if ((!is_h2(wsi) && lws_hdr_total_length(wsi, WSI_TOKEN_HTTP) <= 0 &&
         lws_hdr_total_length(wsi, WSI_TOKEN_HTTP1_0) <= 0) ||
        uri_has_control(wsi))
        return HTTP_STATUS_BAD_REQUEST;
    /* No route takes a body, so no request needs Transfer-Encoding; with a Content-Length it
     * is the other classic smuggling pair (RFC 9112 section 6.1). */
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
        return HTTP_STATUS_BAD_REQUEST;
    int total = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH);
    if (total <= 0) {
        /* Absent, or present and empty: lws reports both as 0; an empty one is a fragment. */
        char none[2];
        if (lws_hdr_copy_fragment(wsi, none, sizeof none, WSI_TOKEN_HTTP_CONTENT_LENGTH, 0) >= 0)
            return HTTP_STATUS_BAD_REQUEST;
        return 0;
    }
    char v[32], extra[2];
    /* A second Content-Length line is a second fragment of the same token. */
    if (lws_hdr_copy_fragment(wsi, extra, sizeof extra, WSI_TOKEN_HTTP_CONTENT_LENGTH, 1) >= 0 ||
        lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, 1) > 0)
        return HTTP_STATUS_BAD_REQUEST;
    int n = lws_hdr_copy_fragment(wsi, v, sizeof v, WSI_TOKEN_HTTP_CONTENT_LENGTH, 0);
    if (n <= 0 || n > 18) /* 18 digits: below 2^63 whatever they are */
        return HTTP_STATUS_BAD_REQUEST;
    for (int i = 0; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return HTTP_STATUS_BAD_REQUEST;
    return 0;
}

static int add_header(struct lws *wsi, const char *name, const char *value, unsigned char **p,
                      unsigned char *end)
{
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                       (const unsigned char *)value, (int)strlen(value), p, end);
}

int sb_http_write_head(struct lws *wsi, const sb_http_head_t *h)
{
    unsigned char hdr[LWS_PRE + 2048], *start = hdr + LWS_PRE, *p = start,
                                       *end = hdr + sizeof hdr - 1;
    if (lws_add_http_common_headers(wsi, h->status, h->ctype, (lws_filepos_t)h->len, &p, end))
        return -1;
    /* Every answer: never cached (figures change; a page must not outlive a token). */
    if (add_header(wsi, "cache-control:", "no-store", &p, end) ||
        add_header(wsi, "x-content-type-options:", "nosniff", &p, end) ||
        add_header(wsi, "referrer-policy:", "no-referrer", &p, end))
        return -1;
    if (h->csp && (add_header(wsi, "content-security-policy:", h->csp, &p, end) ||
                   add_header(wsi, "x-frame-options:", "DENY", &p, end)))
        return -1;
    if (h->extra_name && add_header(wsi, h->extra_name, h->extra_value, &p, end))
        return -1;
    if (h->cors_origin &&
        (add_header(wsi, "access-control-allow-origin:", h->cors_origin, &p, end) ||
         add_header(wsi, "vary:", "Origin", &p, end)))
        return -1;
    if (h->cors_methods &&
        add_header(wsi, "access-control-allow-methods:", h->cors_methods, &p, end))
        return -1;
    if (h->cors_headers && h->cors_headers[0] &&
        add_header(wsi, "access-control-allow-headers:", h->cors_headers, &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    return 0;
}

int sb_http_body_set(sb_http_body_t *b, const char *body, size_t len)
{
    sb_http_body_free(b);
    b->buf = malloc(LWS_PRE + len + 1);
    if (!b->buf)
        return -1;
    if (len > 0)
        memcpy(b->buf + LWS_PRE, body, len);
    b->len = len;
    return 0;
}

int sb_http_body_write(struct lws *wsi, sb_http_body_t *b, int skip_body)
{
    int rc = 0;
    if (!skip_body && b->buf && b->len > 0)
        rc = lws_write(wsi, (unsigned char *)b->buf + LWS_PRE, b->len, LWS_WRITE_HTTP_FINAL);
    sb_http_body_free(b);
    if (rc < 0)
        return -1;
    /* Keep-alive: lws waits for the next request on this connection, or closes it (-1). */
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

void sb_http_body_free(sb_http_body_t *b)
{
    free(b->buf);
    b->buf = NULL;
    b->len = 0;
}

const char *sb_http_content_type(const char *file)
{
    const char *dot = strrchr(file, '.');
    if (dot && strcmp(dot, ".js") == 0)
        return "text/javascript; charset=utf-8";
    if (dot && strcmp(dot, ".css") == 0)
        return "text/css; charset=utf-8";
    return "text/html; charset=utf-8";
}

const sb_embed_t *sb_http_static(const sb_http_route_t *routes, size_t n, const sb_embed_t *files,
                                 const char *path)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(path, routes[i].path) == 0)
            return sb_embed_find(files, routes[i].file);
    return NULL;
}

int sb_http_is_page(const sb_embed_t *f)
{
    return strstr(f->name, ".html") != NULL;
}
