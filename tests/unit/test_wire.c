/* Unit tests for node/wire.c: the end and the parse of an HTTP/1.1 request head (every prefix,
 * each malformation refused, the header limit), header lookup, Connection-style lists, the
 * query of a request target, the RFC 6455 accept key, frame headers both ways, unmasking in
 * pieces at every offset, and UTF-8 validation against a reference decoder. */
#include "utf8_ref.h"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

#define N_ELEM(a) (sizeof(a) / sizeof((a)[0]))

/* The upgrade request of a browser, with spaces and tabs around some values. */
static const char UPGRADE[] = "GET /ws?key=k HTTP/1.1\r\n"
                              "Host:  example.com:9000 \t\r\n"
                              "Upgrade:\twebsocket\r\n"
                              "Connection: keep-alive, Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n"
                              "X-Empty:  \t \r\n"
                              "\r\n";

/* Header i's name and value of h are name and value. */
static void assert_header(const sb_wire_head_t *h, int i, const char *name, const char *value)
{
    assert_true(i < h->nheaders);
    const sb_wire_header_t *x = &h->h[i];
    if (x->nlen != strlen(name) || memcmp(x->name, name, x->nlen) != 0)
        fail_msg("header %d: name \"%.*s\", expected \"%s\"", i, (int)x->nlen, x->name, name);
    if (x->vlen != strlen(value) || memcmp(x->value, value, x->vlen) != 0)
        fail_msg("header %d: value \"%.*s\", expected \"%s\"", i, (int)x->vlen, x->value, value);
}

static int parse(const char *s, sb_wire_head_t *h)
{
    return sb_wire_head_parse(s, strlen(s), h);
}

/* ---- sb_wire_head_end ---- */

static void test_head_end_prefixes(void **state)
{
    (void)state;
    size_t n = strlen(UPGRADE);
    for (size_t k = 0; k < n; k++)
        if (sb_wire_head_end(UPGRADE, k) != 0)
            fail_msg("a prefix of %zu of %zu bytes is complete", k, n);
    assert_int_equal(sb_wire_head_end(UPGRADE, n), n);

    /* The bytes after the head (a first frame sent early) are not part of it. */
    char buf[1024];
    memcpy(buf, UPGRADE, n);
    memcpy(buf + n, "\x81\x85\r\n\r\n", 6);
    assert_int_equal(sb_wire_head_end(buf, n + 6), n);

    const char *min = "GET / HTTP/1.1\r\n\r\n";
    assert_int_equal(sb_wire_head_end(min, strlen(min)), strlen(min));
}

static void test_head_end_leading_empty_lines(void **state)
{
    (void)state;
    char buf[1024];
    size_t n = strlen(UPGRADE);
    memcpy(buf, "\r\n\r\n\r\n", 6);
    memcpy(buf + 6, UPGRADE, n);
    for (size_t k = 0; k < n + 6; k++)
        if (sb_wire_head_end(buf, k) != 0)
            fail_msg("a prefix of %zu of %zu bytes is complete", k, n + 6);
    assert_int_equal(sb_wire_head_end(buf, n + 6), n + 6);

    /* Only empty lines: no request line yet. */
    assert_int_equal(sb_wire_head_end("\r\n\r\n", 4), 0);
    assert_int_equal(sb_wire_head_end("\r\n\r\n\r\n\r\n", 8), 0);
    /* Bare LFs never end a head. */
    const char *lf = "GET / HTTP/1.1\nHost: a\n\n";
    assert_int_equal(sb_wire_head_end(lf, strlen(lf)), 0);

    /* What sb_wire_head_end found parses, leading lines and all. */
    sb_wire_head_t h;
    assert_int_equal(sb_wire_head_parse(buf, n + 6, &h), 0);
    assert_int_equal(h.mlen, 3);
    assert_memory_equal(h.method, "GET", 3);
    assert_int_equal(h.nheaders, 6);
}

/* ---- sb_wire_head_parse ---- */

static void test_head_parse_upgrade(void **state)
{
    (void)state;
    sb_wire_head_t h;
    assert_int_equal(sb_wire_head_parse(UPGRADE, strlen(UPGRADE), &h), 0);
    assert_ptr_equal(h.method, UPGRADE);
    assert_int_equal(h.mlen, 3);
    assert_memory_equal(h.method, "GET", 3);
    assert_int_equal(h.tlen, strlen("/ws?key=k"));
    assert_memory_equal(h.target, "/ws?key=k", h.tlen);
    assert_int_equal(h.minor, 1);
    assert_int_equal(h.nheaders, 6);
    assert_header(&h, 0, "Host", "example.com:9000");
    assert_header(&h, 1, "Upgrade", "websocket");
    assert_header(&h, 2, "Connection", "keep-alive, Upgrade");
    assert_header(&h, 3, "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    assert_header(&h, 4, "Sec-WebSocket-Version", "13");
    assert_header(&h, 5, "X-Empty", "");
    /* Pointers into the head itself. */
    assert_true(h.h[3].value > UPGRADE && h.h[3].value < UPGRADE + strlen(UPGRADE));

    assert_int_equal(parse("POST /a/b%20c HTTP/1.0\r\nX:y\r\n\r\n", &h), 0);
    assert_int_equal(h.minor, 0);
    assert_int_equal(h.mlen, 4);
    assert_memory_equal(h.method, "POST", 4);
    assert_int_equal(h.tlen, 8);
    assert_memory_equal(h.target, "/a/b%20c", 8);
    assert_int_equal(h.nheaders, 1);
    assert_header(&h, 0, "X", "y");

    /* No headers at all; a value with inner spaces, a colon and a tab kept as they are. */
    assert_int_equal(parse("GET / HTTP/1.1\r\n\r\n", &h), 0);
    assert_int_equal(h.nheaders, 0);
    assert_int_equal(h.tlen, 1);
    assert_int_equal(parse("GET * HTTP/1.9\r\nA-b: x: y\tz \r\n\r\n", &h), 0);
    assert_int_equal(h.minor, 9);
    assert_header(&h, 0, "A-b", "x: y\tz");

    /* The bytes after the empty line are not part of it (the caller passes more). */
    const char *more = "GET / HTTP/1.1\r\nA: 1\r\n\r\n\x81\x80garbage";
    assert_int_equal(parse(more, &h), 0);
    assert_int_equal(h.nheaders, 1);
}

static void test_head_parse_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        /* request line */
        "GET /ws\r\nHost: a\r\n\r\n",              /* no version */
        "GET /ws \r\nHost: a\r\n\r\n",             /* empty version */
        "GET /ws HTTP/2.0\r\nHost: a\r\n\r\n",     /* not 1.x */
        "GET /ws HTTP/1.x\r\nHost: a\r\n\r\n",     /* not a digit */
        "GET /ws HTTP/1.10\r\nHost: a\r\n\r\n",    /* two digits */
        "GET /ws HTTP/1.:\r\nHost: a\r\n\r\n",     /* past '9' */
        "GET /ws HTTP/1./\r\nHost: a\r\n\r\n",     /* before '0' */
        "GET /ws HTTP/1.\r\nHost: a\r\n\r\n",      /* no minor */
        "GET /ws http/1.1\r\nHost: a\r\n\r\n",     /* case-sensitive */
        "GET /ws HTTP/1.1 \r\nHost: a\r\n\r\n",    /* trailing space */
        "G T /ws HTTP/1.1\r\nHost: a\r\n\r\n",     /* a space in the method */
        "GE(T /ws HTTP/1.1\r\nHost: a\r\n\r\n",    /* not a token */
        " GET /ws HTTP/1.1\r\nHost: a\r\n\r\n",    /* no method */
        "GET  /ws HTTP/1.1\r\nHost: a\r\n\r\n",    /* two spaces */
        "GET /w s HTTP/1.1\r\nHost: a\r\n\r\n",    /* a space in the target */
        "GET /w\ts HTTP/1.1\r\nHost: a\r\n\r\n",   /* a tab in the target */
        "GET /w\x7fs HTTP/1.1\r\nHost: a\r\n\r\n", /* DEL in the target */
        "GET /ws HTTP/1.1\nHost: a\r\n\r\n",       /* bare LF after the request line */
        "GET /ws HTTP/1.1\r\n",                    /* no empty line */
        "GET /ws HTTP/1.1\r\nHost: a\r\n",         /* no empty line */
        "GET /ws HTTP/1.1\r\nHost: a\r\n\n",       /* the empty line a bare LF */
        "\r\n\r\n",                                /* nothing but empty lines */
        /* header lines */
        "GET /ws HTTP/1.1\r\nHost a\r\n\r\n",    /* no colon */
        "GET /ws HTTP/1.1\r\nHost : a\r\n\r\n",  /* a space before the colon */
        "GET /ws HTTP/1.1\r\nHost\t: a\r\n\r\n", /* a tab before the colon */
        "GET /ws HTTP/1.1\r\n: a\r\n\r\n",       /* empty name */
        "GET /ws HTTP/1.1\r\nHo(st: a\r\n\r\n",  /* not a token */
        "GET /ws HTTP/1.1\r\nX: a\x01"
        "b\r\n\r\n",                            /* a control character in the value */
        "GET /ws HTTP/1.1\r\nX: a\x1f\r\n\r\n", /* the same, at its end */
        "GET /ws HTTP/1.1\r\nX: a\x7f"
        "b\r\n\r\n",                                   /* DEL */
        "GET /ws HTTP/1.1\r\nX: a\rb\r\n\r\n",         /* a bare CR */
        "GET /ws HTTP/1.1\r\nX: a\nY: b\r\n\r\n",      /* a bare LF between headers */
        "GET /ws HTTP/1.1\r\nX: a\r\n\nY: b\r\n\r\n",  /* a bare LF as a line */
        "GET /ws HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", /* obsolete line folding */
        "GET /ws HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n",
    };
    for (size_t i = 0; i < N_ELEM(bad); i++) {
        sb_wire_head_t h;
        int rc = parse(bad[i], &h);
        if (rc != -1)
            fail_msg("case %zu: %d for \"%s\"", i, rc, bad[i]);
    }
    /* A NUL anywhere (strlen would not see it). */
    static const char nul_method[] = "G\0T / HTTP/1.1\r\n\r\n";
    static const char nul_name[] = "GET / HTTP/1.1\r\nA\0b: c\r\n\r\n";
    static const char nul_value[] = "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n";
    sb_wire_head_t h;
    assert_int_equal(sb_wire_head_parse(nul_method, sizeof nul_method - 1, &h), -1);
    assert_int_equal(sb_wire_head_parse(nul_name, sizeof nul_name - 1, &h), -1);
    assert_int_equal(sb_wire_head_parse(nul_value, sizeof nul_value - 1, &h), -1);
    /* A complete head cut short anywhere before its empty line is refused. */
    for (size_t k = 0; k < strlen(UPGRADE); k++) {
        int rc = sb_wire_head_parse(UPGRADE, k, &h);
        if (rc != -1)
            fail_msg("%d for the first %zu bytes", rc, k);
    }
}

/* RFC 9110 5.5: field-vchar = VCHAR / obs-text, obs-text = %x80-FF. A browser may send
 * non-ASCII bytes in a value (a User-Agent, a cookie); the head is still well-formed. */
static void test_head_parse_obs_text(void **state)
{
    (void)state;
    sb_wire_head_t h;
    int rc = parse("GET / HTTP/1.1\r\nUser-Agent: caf\xc3\xa9\r\nX: \x80\xff\r\n\r\n", &h);
    if (rc != 0)
        fail_msg("%d for a value with bytes 0x80-0xff (obs-text)", rc);
    assert_int_equal(h.nheaders, 2);
    assert_header(&h, 0, "User-Agent", "caf\xc3\xa9");
    assert_header(&h, 1, "X", "\x80\xff");
}

/* A head with n headers "X-i: v" into buf: its length. */
static size_t many_headers(char *buf, size_t cap, int n)
{
    size_t o = (size_t)snprintf(buf, cap, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < n; i++)
        o += (size_t)snprintf(buf + o, cap - o, "X-%d: v%d\r\n", i, i);
    o += (size_t)snprintf(buf + o, cap - o, "\r\n");
    assert_true(o < cap);
    return o;
}

static void test_head_parse_too_many_headers(void **state)
{
    (void)state;
    static char buf[SB_WIRE_HEAD_MAX];
    sb_wire_head_t h;
    size_t n = many_headers(buf, sizeof buf, SB_WIRE_HEADERS_MAX);
    assert_int_equal(sb_wire_head_parse(buf, n, &h), 0);
    assert_int_equal(h.nheaders, SB_WIRE_HEADERS_MAX);
    assert_header(&h, SB_WIRE_HEADERS_MAX - 1, "X-63", "v63");
    n = many_headers(buf, sizeof buf, SB_WIRE_HEADERS_MAX + 1);
    assert_int_equal(sb_wire_head_parse(buf, n, &h), -2);
    n = many_headers(buf, sizeof buf, SB_WIRE_HEADERS_MAX + 20);
    assert_int_equal(sb_wire_head_parse(buf, n, &h), -2);
}

/* ---- sb_wire_header, sb_wire_header_copy ---- */

static void test_header_lookup(void **state)
{
    (void)state;
    sb_wire_head_t h;
    assert_int_equal(parse("POST / HTTP/1.1\r\n"
                           "Host: a\r\n"
                           "Content-Length: 5\r\n"
                           "Sec-WebSocket-Key: k1\r\n"
                           "content-length:7\r\n"
                           "\r\n",
                           &h),
                     0);
    int count = -1;
    const sb_wire_header_t *v = sb_wire_header(&h, "sec-websocket-key", &count);
    assert_non_null(v);
    assert_ptr_equal(v, &h.h[2]);
    assert_int_equal(count, 1);
    v = sb_wire_header(&h, "HOST", &count);
    assert_ptr_equal(v, &h.h[0]);
    assert_int_equal(count, 1);
    /* Both Content-Length lines counted; the first returned. */
    v = sb_wire_header(&h, "Content-Length", &count);
    assert_ptr_equal(v, &h.h[1]);
    assert_int_equal(count, 2);
    assert_int_equal(v->vlen, 1);
    assert_memory_equal(v->value, "5", 1);
    /* count is optional */
    assert_ptr_equal(sb_wire_header(&h, "content-LENGTH", NULL), &h.h[1]);
    /* Absent, a prefix of a name, a name longer than one. */
    count = -1;
    assert_null(sb_wire_header(&h, "Upgrade", &count));
    assert_int_equal(count, 0);
    count = -1;
    assert_null(sb_wire_header(&h, "Hos", &count));
    assert_int_equal(count, 0);
    assert_null(sb_wire_header(&h, "Hosts", NULL));
    assert_null(sb_wire_header(&h, "", NULL));
}

static void test_header_copy(void **state)
{
    (void)state;
    sb_wire_head_t h;
    assert_int_equal(sb_wire_head_parse(UPGRADE, strlen(UPGRADE), &h), 0);
    char out[64];
    memset(out, 'z', sizeof out);
    assert_int_equal(sb_wire_header_copy(&h, "sec-websocket-key", out, sizeof out), 24);
    assert_string_equal(out, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_int_equal(sb_wire_header_copy(&h, "Host", out, sizeof out), 16);
    assert_string_equal(out, "example.com:9000");
    assert_int_equal(sb_wire_header_copy(&h, "x-empty", out, sizeof out), 0);
    assert_string_equal(out, "");
    /* Exactly fits (value and NUL), one byte short, absent. */
    memset(out, 'z', sizeof out);
    assert_int_equal(sb_wire_header_copy(&h, "Upgrade", out, 10), 9);
    assert_string_equal(out, "websocket");
    memset(out, 'z', sizeof out);
    assert_int_equal(sb_wire_header_copy(&h, "Upgrade", out, 9), -1);
    assert_int_equal(out[9], 'z'); /* nothing written past cap */
    assert_int_equal(out[8], 'z');
    assert_int_equal(sb_wire_header_copy(&h, "Sec-WebSocket-Key", out, 8), -1);
    assert_int_equal(sb_wire_header_copy(&h, "Origin", out, sizeof out), -1);
}

/* ---- sb_wire_list_has ---- */

static int has(const char *list, const char *token)
{
    return sb_wire_list_has(list, strlen(list), token);
}

static void test_list_has(void **state)
{
    (void)state;
    assert_true(has("Upgrade, HTTP2-Settings", "upgrade"));
    assert_true(has("Upgrade, HTTP2-Settings", "http2-settings"));
    assert_true(has("keep-alive,Upgrade", "upgrade"));
    assert_true(has("keep-alive,Upgrade", "Keep-Alive"));
    assert_true(has("upgrade", "UPGRADE"));
    assert_true(has(" \tkeep-alive ,\t upgrade \t, close", "upgrade"));
    assert_true(has(",,upgrade,", "upgrade"));
    assert_false(has("upgrade2", "upgrade"));
    assert_false(has("xupgrade", "upgrade"));
    assert_false(has("upgrade2, keep-alive", "upgrade"));
    assert_false(has("up grade", "upgrade"));
    assert_false(has("upgrad", "upgrade"));
    assert_false(has("", "upgrade"));
    assert_false(has(" , ", "upgrade"));
    assert_false(has("keep-alive", "upgrade"));
    /* vlen is the end: the token past it is not seen. */
    const char *s = "keep-alive, upgrade";
    assert_false(sb_wire_list_has(s, strlen("keep-alive,"), "upgrade"));
    assert_false(sb_wire_list_has(s, strlen(s) - 1, "upgrade"));
    assert_true(sb_wire_list_has(s, strlen("keep-alive"), "keep-alive"));
}

/* ---- sb_wire_query_arg ---- */

static int qarg(const char *target, const char *name, char *out, size_t cap)
{
    return sb_wire_query_arg(target, strlen(target), name, out, cap);
}

static void test_query_arg(void **state)
{
    (void)state;
    const char *t = "/peerjs/peerjs?key=peerjs&id=abc&token=t1";
    char out[64];
    assert_int_equal(qarg(t, "key", out, sizeof out), 1);
    assert_string_equal(out, "peerjs");
    assert_int_equal(qarg(t, "id", out, sizeof out), 1);
    assert_string_equal(out, "abc");
    assert_int_equal(qarg(t, "token", out, sizeof out), 1);
    assert_string_equal(out, "t1");
    assert_int_equal(qarg(t, "version", out, sizeof out), 0);
    assert_int_equal(qarg(t, "peerjs", out, sizeof out), 0); /* a value, not a name */
    assert_int_equal(qarg(t, "ke", out, sizeof out), 0);
    assert_int_equal(qarg(t, "tokens", out, sizeof out), 0);

    /* A name that is a prefix of another, either way round. */
    assert_int_equal(qarg("/p?idx=1&id=2", "id", out, sizeof out), 1);
    assert_string_equal(out, "2");
    assert_int_equal(qarg("/p?id=2&idx=1", "idx", out, sizeof out), 1);
    assert_string_equal(out, "1");
    assert_int_equal(qarg("/p?xid=1", "id", out, sizeof out), 0);
    /* The first of two; a name without '='; an empty value. */
    assert_int_equal(qarg("/p?id=1&id=2", "id", out, sizeof out), 1);
    assert_string_equal(out, "1");
    assert_int_equal(qarg("/p?id&x=1", "id", out, sizeof out), 0);
    assert_int_equal(qarg("/p?id&id=3", "id", out, sizeof out), 1);
    assert_string_equal(out, "3");
    assert_int_equal(qarg("/p?id=&x=1", "id", out, sizeof out), 1);
    assert_string_equal(out, "");
    assert_int_equal(qarg("/p?&&id=4&", "id", out, sizeof out), 1);
    assert_string_equal(out, "4");

    /* No query; the path is not the query. */
    assert_int_equal(qarg("/peerjs/peerjs", "id", out, sizeof out), 0);
    assert_int_equal(qarg("/id=1", "id", out, sizeof out), 0);
    assert_int_equal(qarg("/p?", "id", out, sizeof out), 0);
    assert_int_equal(qarg("", "id", out, sizeof out), 0);

    /* tlen is the end of the target. */
    const char *cut = "/p?id=abcdef&key=k";
    assert_int_equal(sb_wire_query_arg(cut, strlen("/p?id=abc"), "id", out, sizeof out), 1);
    assert_string_equal(out, "abc");
    assert_int_equal(sb_wire_query_arg(cut, strlen("/p?id=abcdef&ke"), "key", out, sizeof out), 0);
    assert_int_equal(sb_wire_query_arg(cut, 2, "id", out, sizeof out), 0);
}

static void test_query_arg_decoding(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(qarg("/p?id=%61bc", "id", out, sizeof out), 1);
    assert_string_equal(out, "abc");
    assert_int_equal(qarg("/p?id=%4A%4a%2b%26%3D", "id", out, sizeof out), 1);
    assert_string_equal(out, "JJ+&=");
    assert_int_equal(qarg("/p?id=a+b++c", "id", out, sizeof out), 1);
    assert_string_equal(out, "a b  c");
    assert_int_equal(qarg("/p?id=%2B", "id", out, sizeof out), 1);
    assert_string_equal(out, "+");
    assert_int_equal(qarg("/p?id=%c3%A9", "id", out, sizeof out), 1);
    assert_string_equal(out, "\xc3\xa9");
    /* Bad escapes: truncated (at the end, before '&', bare), not hex. */
    assert_int_equal(qarg("/p?id=%6", "id", out, sizeof out), -1);
    assert_int_equal(qarg("/p?id=ab%6&x=1", "id", out, sizeof out), -1);
    assert_int_equal(qarg("/p?id=%", "id", out, sizeof out), -1);
    assert_int_equal(qarg("/p?id=%&x=12", "id", out, sizeof out), -1);
    assert_int_equal(qarg("/p?id=%zz", "id", out, sizeof out), -1);
    assert_int_equal(qarg("/p?id=%6g", "id", out, sizeof out), -1);
    assert_int_equal(qarg("/p?id=%g6", "id", out, sizeof out), -1);
    /* A bad escape in another argument does not matter. */
    assert_int_equal(qarg("/p?x=%zz&id=ok", "id", out, sizeof out), 1);
    assert_string_equal(out, "ok");
    /* cut by tlen: "%61" seen as "%6" */
    assert_int_equal(sb_wire_query_arg("/p?id=%61", 8, "id", out, sizeof out), -1);
}

static void test_query_arg_cap(void **state)
{
    (void)state;
    char out[8];
    /* cap - 1 = 7 characters fit, 8 do not; decoded length is what counts. */
    memset(out, 'z', sizeof out);
    assert_int_equal(qarg("/p?id=abcdefg", "id", out, sizeof out), 1);
    assert_string_equal(out, "abcdefg");
    assert_int_equal(qarg("/p?id=abcdefgh", "id", out, sizeof out), -1);
    assert_int_equal(qarg("/p?id=%61%62%63%64%65%66%67", "id", out, sizeof out), 1);
    assert_string_equal(out, "abcdefg");
    assert_int_equal(qarg("/p?id=%61%62%63%64%65%66%67%68", "id", out, sizeof out), -1);
    /* Nothing written past cap when too long. */
    char big[16];
    memset(big, 'z', sizeof big);
    assert_int_equal(qarg("/p?id=0123456789", "id", big, 4), -1);
    for (size_t i = 4; i < sizeof big; i++)
        assert_int_equal(big[i], 'z');
    memset(big, 'z', sizeof big);
    assert_int_equal(qarg("/p?id=012", "id", big, 4), 1);
    assert_string_equal(big, "012");
    assert_int_equal(big[4], 'z');
    assert_int_equal(qarg("/p?id=", "id", big, 1), 1);
    assert_string_equal(big, "");
    assert_int_equal(qarg("/p?id=a", "id", big, 1), -1);
}

/* ---- sb_wire_accept_key ---- */

static void test_accept_key(void **state)
{
    (void)state;
    char out[29];
    memset(out, 'z', sizeof out);
    /* RFC 6455 1.3 */
    assert_int_equal(sb_wire_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* Computed independently when this test was written:
     *   printf '%s' 'x3JJHMbDL1EzLkh9GBhXDw==258EAFA5-E914-47DA-95CA-C5AB0DC85B11' \
     *     | openssl dgst -sha1 -binary | base64 */
    memset(out, 'z', sizeof out);
    assert_int_equal(sb_wire_accept_key("x3JJHMbDL1EzLkh9GBhXDw==", 24, out), 0);
    assert_string_equal(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    /* klen, not the terminator, bounds the key. */
    assert_int_equal(sb_wire_accept_key("dGhlIHNhbXBsZSBub25jZQ==\r\nX: y", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* A key far longer than any client's is refused, not overflowed. */
    char longkey[1000];
    memset(longkey, 'A', sizeof longkey);
    assert_int_equal(sb_wire_accept_key(longkey, sizeof longkey, out), -1);
}

/* ---- sb_wire_frame_parse ---- */

/* Every prefix shorter than hlen needs more bytes. */
static void assert_prefixes_incomplete(const uint8_t *p, size_t hlen)
{
    for (size_t k = 0; k < hlen; k++) {
        sb_wire_frame_t f;
        int rc = sb_wire_frame_parse(p, k, &f);
        if (rc != 0)
            fail_msg("%d for a prefix of %zu of a %zu-byte header", rc, k, hlen);
    }
}

static void test_frame_parse_masked_text(void **state)
{
    (void)state;
    const uint8_t fr[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    assert_prefixes_incomplete(fr, 6);
    sb_wire_frame_t f;
    memset(&f, 0xff, sizeof f);
    assert_int_equal(sb_wire_frame_parse(fr, sizeof fr, &f), 6);
    assert_int_equal(f.fin, 1);
    assert_int_equal(f.rsv, 0);
    assert_int_equal(f.opcode, 1);
    assert_int_equal(f.masked, 1);
    assert_int_equal(f.len, 5);
    assert_memory_equal(f.mask, fr + 2, 4);
    /* Exactly the header is enough. */
    assert_int_equal(sb_wire_frame_parse(fr, 6, &f), 6);
    /* The RFC 6455 5.7 example: masked "Hello". */
    uint8_t payload[5];
    memcpy(payload, fr + 6, 5);
    sb_wire_unmask(payload, 5, f.mask, 0);
    assert_memory_equal(payload, "Hello", 5);
}

static void test_frame_parse_unmasked(void **state)
{
    (void)state;
    const uint8_t fr[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
    assert_prefixes_incomplete(fr, 2);
    sb_wire_frame_t f;
    memset(&f, 0xff, sizeof f);
    assert_int_equal(sb_wire_frame_parse(fr, sizeof fr, &f), 2);
    assert_int_equal(f.fin, 1);
    assert_int_equal(f.opcode, 1);
    assert_int_equal(f.masked, 0);
    assert_int_equal(f.len, 5);
    static const uint8_t zero[4] = {0};
    assert_memory_equal(f.mask, zero, 4);

    /* A fragment without FIN, a continuation, a close, a ping with no payload. */
    const uint8_t frag[] = {0x01, 0x83, 1, 2, 3, 4};
    assert_int_equal(sb_wire_frame_parse(frag, sizeof frag, &f), 6);
    assert_int_equal(f.fin, 0);
    assert_int_equal(f.opcode, 1);
    assert_int_equal(f.len, 3);
    const uint8_t cont[] = {0x80, 0x80, 9, 8, 7, 6};
    assert_int_equal(sb_wire_frame_parse(cont, sizeof cont, &f), 6);
    assert_int_equal(f.fin, 1);
    assert_int_equal(f.opcode, 0);
    assert_int_equal(f.len, 0);
    assert_memory_equal(f.mask, cont + 2, 4);
    const uint8_t close[] = {0x88, 0x02};
    assert_int_equal(sb_wire_frame_parse(close, sizeof close, &f), 2);
    assert_int_equal(f.opcode, 8);
    assert_int_equal(f.len, 2);
    const uint8_t ping[] = {0x89, 0x00};
    assert_int_equal(sb_wire_frame_parse(ping, sizeof ping, &f), 2);
    assert_int_equal(f.opcode, 9);
    assert_int_equal(f.len, 0);
    /* The largest 7-bit length. */
    const uint8_t l125[] = {0x82, 0x7d};
    assert_int_equal(sb_wire_frame_parse(l125, sizeof l125, &f), 2);
    assert_int_equal(f.opcode, 2);
    assert_int_equal(f.len, 125);
}

static void test_frame_parse_rsv(void **state)
{
    (void)state;
    sb_wire_frame_t f;
    static const struct {
        uint8_t b0;
        unsigned fin, rsv, opcode;
    } cases[] = {
        {0xc1, 1, 4, 1}, {0xa1, 1, 2, 1},  {0x91, 1, 1, 1},
        {0xf2, 1, 7, 2}, {0x7f, 0, 7, 15}, {0x0b, 0, 0, 11},
    };
    for (size_t i = 0; i < N_ELEM(cases); i++) {
        const uint8_t fr[] = {cases[i].b0, 0x03};
        assert_int_equal(sb_wire_frame_parse(fr, sizeof fr, &f), 2);
        assert_int_equal(f.fin, cases[i].fin);
        assert_int_equal(f.rsv, cases[i].rsv);
        assert_int_equal(f.opcode, cases[i].opcode);
        assert_int_equal(f.len, 3);
    }
}

static void test_frame_parse_16bit(void **state)
{
    (void)state;
    sb_wire_frame_t f;
    const uint8_t un[] = {0x82, 0x7e, 0x01, 0x02};
    assert_prefixes_incomplete(un, 4);
    assert_int_equal(sb_wire_frame_parse(un, sizeof un, &f), 4);
    assert_int_equal(f.opcode, 2);
    assert_int_equal(f.masked, 0);
    assert_int_equal(f.len, 0x0102);

    const uint8_t m[] = {0x81, 0xfe, 0xff, 0xff, 0xa, 0xb, 0xc, 0xd};
    assert_prefixes_incomplete(m, 8);
    assert_int_equal(sb_wire_frame_parse(m, sizeof m, &f), 8);
    assert_int_equal(f.masked, 1);
    assert_int_equal(f.len, 65535);
    assert_memory_equal(f.mask, m + 4, 4);

    /* A length the 7-bit form could hold: accepted (wire.h). */
    const uint8_t nm[] = {0x81, 0x7e, 0x00, 0x05};
    assert_int_equal(sb_wire_frame_parse(nm, sizeof nm, &f), 4);
    assert_int_equal(f.len, 5);
}

static void test_frame_parse_64bit(void **state)
{
    (void)state;
    sb_wire_frame_t f;
    const uint8_t un[] = {0x82, 0x7f, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05};
    assert_prefixes_incomplete(un, 10);
    assert_int_equal(sb_wire_frame_parse(un, sizeof un, &f), 10);
    assert_int_equal(f.opcode, 2);
    assert_int_equal(f.masked, 0);
    assert_true(f.len == 0x0102030405ULL);

    const uint8_t m[] = {0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff,
                         0xff, 0xff, 0xff, 0x11, 0x22, 0x33, 0x44};
    assert_prefixes_incomplete(m, 14);
    assert_int_equal(sb_wire_frame_parse(m, sizeof m, &f), 14);
    assert_int_equal(f.masked, 1);
    assert_true(f.len == 0x7fffffffffffffffULL);
    assert_memory_equal(f.mask, m + 10, 4);

    const uint8_t small[] = {0x81, 0x7f, 0, 0, 0, 0, 0, 0, 0x00, 0x05};
    assert_int_equal(sb_wire_frame_parse(small, sizeof small, &f), 10);
    assert_int_equal(f.len, 5);

    /* The top bit set: refused once the length is there, masked or not. */
    const uint8_t top[] = {0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0};
    assert_prefixes_incomplete(top, 10);
    assert_int_equal(sb_wire_frame_parse(top, sizeof top, &f), -1);
    const uint8_t topm[] = {0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4};
    assert_int_equal(sb_wire_frame_parse(topm, 10, &f), -1);
    assert_int_equal(sb_wire_frame_parse(topm, sizeof topm, &f), -1);
}

/* ---- sb_wire_frame_header ---- */

static void test_frame_header(void **state)
{
    (void)state;
    static const struct {
        uint64_t len;
        size_t hlen;
        uint8_t bytes[10]; /* after the first */
    } cases[] = {
        {0, 2, {0x00}},
        {1, 2, {0x01}},
        {125, 2, {0x7d}},
        {126, 4, {0x7e, 0x00, 0x7e}},
        {127, 4, {0x7e, 0x00, 0x7f}},
        {256, 4, {0x7e, 0x01, 0x00}},
        {65535, 4, {0x7e, 0xff, 0xff}},
        {65536, 10, {0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00}},
        {0x0102030405060708ULL, 10, {0x7f, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08}},
        {0x7fffffffffffffffULL, 10, {0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
    };
    static const unsigned opcodes[] = {0, 1, 2, 8, 9, 10};
    for (size_t i = 0; i < N_ELEM(cases); i++)
        for (size_t j = 0; j < N_ELEM(opcodes); j++) {
            uint8_t out[16];
            memset(out, 0xee, sizeof out);
            size_t n = sb_wire_frame_header(out, opcodes[j], cases[i].len);
            assert_int_equal(n, cases[i].hlen);
            assert_int_equal(out[0], 0x80 | opcodes[j]);
            assert_memory_equal(out + 1, cases[i].bytes, n - 1);
            for (size_t k = n; k < sizeof out; k++)
                assert_int_equal(out[k], 0xee);
            sb_wire_frame_t f;
            assert_int_equal(sb_wire_frame_parse(out, n, &f), (int)n);
            assert_int_equal(f.fin, 1);
            assert_int_equal(f.rsv, 0);
            assert_int_equal(f.masked, 0);
            assert_int_equal(f.opcode, opcodes[j]);
            assert_true(f.len == cases[i].len);
        }
}

/* ---- sb_wire_unmask ---- */

static void ref_unmask(uint8_t *p, size_t len, const uint8_t mask[4], uint64_t at)
{
    for (size_t i = 0; i < len; i++)
        p[i] ^= mask[(at + i) & 3];
}

#define GUARD 8

static void test_unmask(void **state)
{
    (void)state;
    srand(6455);
    /* Offsets past 32 bits too: only at & 3 may matter. */
    static const uint64_t bases[] = {0, 0x100000000ULL, 0xfffffffffffffff0ULL};
    for (size_t b = 0; b < N_ELEM(bases); b++)
        for (size_t len = 0; len <= 40; len++)
            for (uint64_t off = 0; off < 8; off++) {
                uint64_t at = bases[b] + off;
                uint8_t mask[4], orig[40], want[40];
                for (int i = 0; i < 4; i++)
                    mask[i] = (uint8_t)rand();
                for (size_t i = 0; i < len; i++)
                    orig[i] = (uint8_t)rand();
                memcpy(want, orig, len);
                ref_unmask(want, len, mask, at);

                /* In one call, at every alignment of the pointer, and nothing around it
                 * touched. */
                for (size_t align = 0; align < 8; align++) {
                    uint8_t buf[GUARD + 8 + 40 + GUARD];
                    memset(buf, 0xa5, sizeof buf);
                    uint8_t *p = buf + GUARD + align;
                    memcpy(p, orig, len);
                    sb_wire_unmask(p, len, mask, at);
                    if (len && memcmp(p, want, len) != 0)
                        fail_msg("len %zu at %llu align %zu: differs from byte by byte", len,
                                 (unsigned long long)at, align);
                    for (size_t k = 0; k < sizeof buf; k++)
                        if ((buf + k < p || buf + k >= p + len) && buf[k] != 0xa5)
                            fail_msg("len %zu at %llu align %zu: byte %zu outside written", len,
                                     (unsigned long long)at, align, k);
                    /* Twice: the original. */
                    sb_wire_unmask(p, len, mask, at);
                    if (len && memcmp(p, orig, len) != 0)
                        fail_msg("len %zu at %llu: twice is not the original", len,
                                 (unsigned long long)at);
                }

                /* In two pieces, split anywhere. */
                for (size_t split = 0; split <= len; split++) {
                    uint8_t buf[40];
                    memcpy(buf, orig, len);
                    sb_wire_unmask(buf, split, mask, at);
                    sb_wire_unmask(buf + split, len - split, mask, at + split);
                    if (len && memcmp(buf, want, len) != 0)
                        fail_msg("len %zu at %llu split %zu: differs", len, (unsigned long long)at,
                                 split);
                }
            }
}

static void test_unmask_long(void **state)
{
    (void)state;
    /* A payload as long as a large signal, in uneven pieces as reads would deliver it. */
    enum { N = 70001 };
    uint8_t *a = malloc(N), *b = malloc(N), *o = malloc(N);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(o);
    srand(13);
    for (size_t i = 0; i < N; i++)
        o[i] = (uint8_t)rand();
    const uint8_t mask[4] = {0xde, 0xad, 0xbe, 0xef};
    memcpy(a, o, N);
    ref_unmask(a, N, mask, 0);
    memcpy(b, o, N);
    size_t at = 0;
    while (at < N) {
        size_t n = 1 + (size_t)rand() % 1500;
        if (n > N - at)
            n = N - at;
        sb_wire_unmask(b + at, n, mask, at);
        at += n;
    }
    assert_memory_equal(a, b, N);
    sb_wire_unmask(b, N, mask, 0);
    assert_memory_equal(b, o, N);
    free(a);
    free(b);
    free(o);
}

/* ---- sb_wire_utf8_ok ---- */

static int utf8(const char *s)
{
    return sb_wire_utf8_ok((const uint8_t *)s, strlen(s));
}

static const char *const UTF8_GOOD[] = {
    "\xc3\xa9",         /* é */
    "\xe2\x82\xac",     /* € */
    "\xf0\x9f\x98\x80", /* 😀 */
    "\xf4\x8f\xbf\xbf", /* U+10FFFF */
    "\xc2\x80",         /* U+0080 */
    "\xdf\xbf",         /* U+07FF */
    "\xe0\xa0\x80",     /* U+0800 */
    "\xed\x9f\xbf",     /* U+D7FF */
    "\xee\x80\x80",     /* U+E000 */
    "\xef\xbf\xbf",     /* U+FFFF */
    "\xf0\x90\x80\x80", /* U+10000 */
};

static const char *const UTF8_BAD[] = {
    "\xff\xfe",
    "\xc0\xaf",         /* overlong '/' */
    "\xc1\xbf",         /* overlong */
    "\xe0\x80\xaf",     /* overlong '/' */
    "\xe0\x9f\xbf",     /* overlong U+07FF */
    "\xf0\x8f\xbf\xbf", /* overlong U+FFFF */
    "\xed\xa0\x80",     /* U+D800 */
    "\xed\xbf\xbf",     /* U+DFFF */
    "\xf4\x90\x80\x80", /* U+110000 */
    "\xf5\x80\x80\x80",
    "\xf8\x88\x80\x80\x80",
    "\x80", /* a lone continuation */
    "\xbf",
    "\xc3",         /* truncated */
    "\xe2\x82",     /* truncated */
    "\xf0\x9f\x98", /* truncated */
    "\xe2\x28\xa1", /* not a continuation */
    "\xc3\xa9\xa9", /* one continuation too many */
};

static void test_utf8_cases(void **state)
{
    (void)state;
    assert_true(sb_wire_utf8_ok((const uint8_t *)"", 0));
    assert_true(utf8("hello, world"));
    assert_true(utf8("{\"type\":\"signal\",\"to\":\"AAAAAAAAAAAAAAAAAAAAAA\"}"));
    static const uint8_t nul[] = {'a', 0, 'b'};
    assert_true(sb_wire_utf8_ok(nul, sizeof nul));
    for (size_t i = 0; i < N_ELEM(UTF8_GOOD); i++)
        if (!utf8(UTF8_GOOD[i]))
            fail_msg("good case %zu refused", i);
    assert_true(utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80!"));
    for (size_t i = 0; i < N_ELEM(UTF8_BAD); i++)
        if (utf8(UTF8_BAD[i]))
            fail_msg("bad case %zu accepted", i);
    assert_false(utf8("abc\xe2\x82"));
    assert_false(utf8("abc\xe2\x82"
                      "def"));
    assert_false(utf8("abc\xe2"
                      "defghijklmnop"));
    assert_false(utf8("\xf0\x9f"
                      "abcdefghijklmnop"));
    /* len is the end: a sequence cut by it. */
    assert_false(sb_wire_utf8_ok((const uint8_t *)"ab\xe2\x82\xac", 4));
    assert_true(sb_wire_utf8_ok((const uint8_t *)"ab\xe2\x82\xac", 2));
}

/* Every case at every offset in a long ASCII run (the eight-at-a-time path), with ASCII
 * after it or not. */
static void test_utf8_offsets(void **state)
{
    (void)state;
    for (int good = 0; good < 2; good++) {
        const char *const *set = good ? UTF8_GOOD : UTF8_BAD;
        size_t n = good ? N_ELEM(UTF8_GOOD) : N_ELEM(UTF8_BAD);
        for (size_t i = 0; i < n; i++)
            for (size_t off = 0; off < 16; off++)
                for (size_t tail = 0; tail <= 17; tail += 17) {
                    uint8_t buf[64];
                    size_t cl = strlen(set[i]);
                    memset(buf, 'a', sizeof buf);
                    memcpy(buf + off, set[i], cl);
                    size_t len = off + cl + tail;
                    int want = good; /* a truncated sequence followed by ASCII is still bad */
                    if (sb_wire_utf8_ok(buf, len) != want)
                        fail_msg("%s case %zu at offset %zu, %zu after: %d", good ? "good" : "bad",
                                 i, off, tail, !want);
                    assert_int_equal(utf8_ref(buf, len), want);
                }
    }
    /* Two sequences back to back, straddling each eight-byte boundary. */
    for (size_t off = 0; off < 16; off++) {
        uint8_t buf[64];
        memset(buf, 'x', sizeof buf);
        memcpy(buf + off, "\xf0\x9f\x98\x80\xe2\x82\xac", 7);
        assert_true(sb_wire_utf8_ok(buf, sizeof buf));
        memcpy(buf + off, "\xf0\x9f\x98\xe2\x82\xac", 6);
        assert_false(sb_wire_utf8_ok(buf, sizeof buf));
    }
}

/* Every sequence of one to three bytes, alone and after seven ASCII bytes, against the
 * reference; four-byte sequences sampled with a bias towards the boundaries. */
static void test_utf8_exhaustive(void **state)
{
    (void)state;
    uint8_t buf[11] = "abcdefg";
    for (uint32_t v = 0; v < 0x1000000; v++) {
        buf[7] = (uint8_t)(v >> 16);
        buf[8] = (uint8_t)(v >> 8);
        buf[9] = (uint8_t)v;
        for (size_t n = 1; n <= 3; n++) {
            if (n < 3 && (v & ((1u << (8 * (3 - n))) - 1)) != 0)
                continue; /* each shorter sequence once */
            int want = utf8_ref(buf + 7, n);
            if (sb_wire_utf8_ok(buf + 7, n) != want || sb_wire_utf8_ok(buf, 7 + n) != want)
                fail_msg("%zu bytes %06x: expected %d", n, (unsigned)v, want);
        }
    }
    static const uint8_t edge[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0,
                                   0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xed, 0xef,
                                   0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff};
    srand(3629);
    for (int i = 0; i < 2000000; i++) {
        uint8_t s[4];
        for (int k = 0; k < 4; k++)
            s[k] = rand() % 2 ? edge[(size_t)rand() % sizeof edge] : (uint8_t)rand();
        int want = utf8_ref(s, 4);
        if (sb_wire_utf8_ok(s, 4) != want)
            fail_msg("%02x %02x %02x %02x: expected %d", s[0], s[1], s[2], s[3], want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_end_prefixes),
        cmocka_unit_test(test_head_end_leading_empty_lines),
        cmocka_unit_test(test_head_parse_upgrade),
        cmocka_unit_test(test_head_parse_rejects),
        cmocka_unit_test(test_head_parse_obs_text),
        cmocka_unit_test(test_head_parse_too_many_headers),
        cmocka_unit_test(test_header_lookup),
        cmocka_unit_test(test_header_copy),
        cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_query_arg),
        cmocka_unit_test(test_query_arg_decoding),
        cmocka_unit_test(test_query_arg_cap),
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_frame_parse_masked_text),
        cmocka_unit_test(test_frame_parse_unmasked),
        cmocka_unit_test(test_frame_parse_rsv),
        cmocka_unit_test(test_frame_parse_16bit),
        cmocka_unit_test(test_frame_parse_64bit),
        cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_unmask),
        cmocka_unit_test(test_unmask_long),
        cmocka_unit_test(test_utf8_cases),
        cmocka_unit_test(test_utf8_offsets),
        cmocka_unit_test(test_utf8_exhaustive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
