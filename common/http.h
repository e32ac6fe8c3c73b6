/* HTTP on libwebsockets, what the node and the admin share: the request's method and framing
 * checks, response headers (the same security headers on every answer), the body written at
 * WRITEABLE, and embedded static files. Routing and what each route answers stay with each
 * binary (node/server.c, admin/http.c). */
#ifndef SB_HTTP_H
#define SB_HTTP_H

#include "embed.h"

#include <libwebsockets.h>
#include <stddef.h>

typedef enum {
    SB_HTTP_GET,
    SB_HTTP_POST,
    SB_HTTP_PUT,
    SB_HTTP_DELETE,
    SB_HTTP_PATCH,
    SB_HTTP_OPTIONS,
    SB_HTTP_HEAD,
    SB_HTTP_OTHER
} sb_http_method_t;

/* The request's method, and its path (without the query; "" when none) copied into path. */
sb_http_method_t sb_http_method(struct lws *wsi, char *path, size_t len);

/* 0 when the request's framing is acceptable, else the status to refuse it with (400): a
 * Content-Length that is repeated (lws keeps each as a fragment and reads the first), empty,
 * or anything but digits ("+44", "0, 44": RFC 9112 section 6.3, a request smuggling vector
 * behind a proxy that reads another value); any Transfer-Encoding (no route takes a body); a
 * request line without an HTTP version (a "%0a" in the URI ends lws's request line there); a
 * control character in the url-decoded path or query. */
unsigned sb_http_check_framing(struct lws *wsi);

/* One response's status line and headers. Every answer gets Cache-Control: no-store,
 * X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer; a page (csp set) also
 * gets that Content-Security-Policy and X-Frame-Options: DENY. */
typedef struct {
    unsigned status;
    const char *ctype;
    size_t len;                           /* Content-Length */
    const char *csp;                      /* NULL for anything but an HTML page */
    const char *extra_name, *extra_value; /* one more header ("allow:", ...), may be NULL */
    /* CORS (the node's PeerJS routes): Access-Control-Allow-Origin with this origin and
     * Vary: Origin, or NULL; a preflight's answer also gets the allowed methods and the
     * headers it asked for (cors_headers, may be "" or NULL). */
    const char *cors_origin, *cors_methods, *cors_headers;
} sb_http_head_t;

/* Writes the status line and headers now. 0, or -1 (close the connection). */
int sb_http_write_head(struct lws *wsi, const sb_http_head_t *h);

/* A response body waiting for HTTP_WRITEABLE, with LWS_PRE headroom. */
typedef struct {
    char *buf;
    size_t len;
} sb_http_body_t;

/* Copies body (len bytes) into b, replacing what it held. 0, or -1 when out of memory. */
int sb_http_body_set(sb_http_body_t *b, const char *body, size_t len);
/* At HTTP_WRITEABLE: writes the body (none for HEAD: skip_body), frees it and completes the
 * transaction. Returns what the callback returns (-1 closes the connection). */
int sb_http_body_write(struct lws *wsi, sb_http_body_t *b, int skip_body);
void sb_http_body_free(sb_http_body_t *b);

/* Content-Type of an embedded file by its extension (.js, .css, else HTML). */
const char *sb_http_content_type(const char *file);

/* A static route: request path -> embedded file name. */
typedef struct {
    const char *path, *file;
} sb_http_route_t;

/* The embedded file path routes to (routes has n entries), or NULL. */
const sb_embed_t *sb_http_static(const sb_http_route_t *routes, size_t n, const sb_embed_t *files,
                                 const char *path);

/* 1 when the embedded file is an HTML page (gets the CSP). */
int sb_http_is_page(const sb_embed_t *f);

#endif
