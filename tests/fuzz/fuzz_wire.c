/* Fuzzes the node's own WebSocket layer (node/wire.c) with arbitrary bytes, read as what a
 * client sends: a request head (found, parsed, its headers and query looked up), then a stream
 * of frames (parsed, unmasked, their headers rebuilt and parsed back). What is parsed must lie
 * inside the bytes given (the head is copied to a buffer of exactly its length, so that ASan
 * sees any read past it), and the UTF-8 check must agree with a plain reference decoder. */
#include "fuzz.h"
#include "wire.h"
#include "../unit/utf8_ref.h"

#include <string.h>

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int same_name(const char *a, size_t alen, const char *lc)
{
    if (alen != strlen(lc))
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (lower((unsigned char)a[i]) != lc[i])
            return 0;
    return 1;
}

static int inside(const char *p, size_t len, const char *buf, size_t blen)
{
    return p >= buf && p <= buf + blen && len <= (size_t)(buf + blen - p);
}

/* The first "\r\n\r\n" at or after the leading empty lines, as sb_wire_head_end documents. */
static size_t head_end_ref(const uint8_t *d, size_t n)
{
    size_t i = 0;
    while (i + 1 < n && d[i] == '\r' && d[i + 1] == '\n')
        i += 2;
    for (; i + 4 <= n; i++)
        if (memcmp(d + i, "\r\n\r\n", 4) == 0)
            return i + 4;
    return 0;
}

static void check_lookup(const sb_wire_head_t *h, const char *name)
{
    int count = -1, want = 0;
    const sb_wire_header_t *first = NULL;
    for (int i = 0; i < h->nheaders; i++)
        if (same_name(h->h[i].name, h->h[i].nlen, name)) {
            if (!first)
                first = &h->h[i];
            want++;
        }
    const sb_wire_header_t *got = sb_wire_header(h, name, &count);
    FUZZ_CHECK(got == NULL || (got >= h->h && got < h->h + h->nheaders));
    FUZZ_CHECK(got == first && count == want);
    FUZZ_CHECK(sb_wire_header(h, name, NULL) == got);

    /* Copied into 64 bytes: -1 when absent or too long, else terminated and the same bytes. */
    char out[64];
    memset(out, 0x55, sizeof out);
    int rc = sb_wire_header_copy(h, name, out, sizeof out);
    FUZZ_CHECK(rc == -1 || (rc >= 0 && rc < (int)sizeof out));
    FUZZ_CHECK((rc == -1) == (!got || got->vlen >= sizeof out));
    if (rc >= 0) {
        FUZZ_CHECK((size_t)rc == got->vlen && out[rc] == '\0');
        FUZZ_CHECK(memcmp(out, got->value, (size_t)rc) == 0);
    }
    if (got) {
        (void)sb_wire_list_has(got->value, got->vlen, "upgrade");
        (void)sb_wire_list_has(got->value, got->vlen, "switchboard.v1");
        if (got->vlen <= 60) {
            char acc[29];
            FUZZ_CHECK(sb_wire_accept_key(got->value, got->vlen, acc) == 0);
            FUZZ_CHECK(strlen(acc) == 28);
        }
    }
}

/* One query argument into a buffer of exactly cap bytes (ASan catches a write past it). */
static void check_query(const char *target, size_t tlen, const char *name, size_t cap)
{
    char *out = malloc(cap);
    FUZZ_CHECK(out != NULL);
    int rc = sb_wire_query_arg(target, tlen, name, out, cap);
    FUZZ_CHECK(rc == -1 || rc == 0 || rc == 1);
    if (rc == 1)
        FUZZ_CHECK(memchr(out, '\0', cap) != NULL);
    if (!memchr(target, '?', tlen))
        FUZZ_CHECK(rc == 0);
    free(out);
}

static void check_parsed(const sb_wire_head_t *h, const char *buf, size_t len)
{
    FUZZ_CHECK(h->method && h->mlen > 0 && inside(h->method, h->mlen, buf, len));
    FUZZ_CHECK(h->target && h->tlen > 0 && inside(h->target, h->tlen, buf, len));
    FUZZ_CHECK(h->target == h->method + h->mlen + 1 && h->target[-1] == ' ');
    /* " HTTP/1.x\r\n" after the target */
    FUZZ_CHECK(inside(h->target + h->tlen, 11, buf, len));
    FUZZ_CHECK(memcmp(h->target + h->tlen, " HTTP/1.", 8) == 0);
    FUZZ_CHECK(h->minor >= 0 && h->minor <= 9);
    FUZZ_CHECK(h->target[h->tlen + 8] == '0' + h->minor);
    FUZZ_CHECK(memchr(h->method, ' ', h->mlen) == NULL && memchr(h->target, ' ', h->tlen) == NULL);
    FUZZ_CHECK(h->nheaders >= 0 && h->nheaders <= SB_WIRE_HEADERS_MAX);
    const char *prev = h->target + h->tlen;
    for (int i = 0; i < h->nheaders; i++) {
        const sb_wire_header_t *x = &h->h[i];
        FUZZ_CHECK(x->name && x->nlen > 0 && inside(x->name, x->nlen, buf, len));
        FUZZ_CHECK(x->value && inside(x->value, x->vlen, buf, len));
        FUZZ_CHECK(x->name > prev && x->value > x->name + x->nlen);
        FUZZ_CHECK(x->name[x->nlen] == ':' && memchr(x->name, ':', x->nlen) == NULL);
        FUZZ_CHECK(memchr(x->name, '\r', x->nlen) == NULL &&
                   memchr(x->name, '\n', x->nlen) == NULL);
        FUZZ_CHECK(memchr(x->value, '\r', x->vlen) == NULL &&
                   memchr(x->value, '\n', x->vlen) == NULL);
        FUZZ_CHECK(x->vlen == 0 || (x->value[0] != ' ' && x->value[0] != '\t' &&
                                    x->value[x->vlen - 1] != ' ' && x->value[x->vlen - 1] != '\t'));
        prev = x->value + x->vlen;
    }
    /* the empty line ends it */
    FUZZ_CHECK(inside(prev, 4, buf, len) && memcmp(buf + len - 2, "\r\n", 2) == 0);

    static const char *const names[] = {"upgrade", "connection", "sec-websocket-key",
                                        "sec-websocket-protocol", "host"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        check_lookup(h, names[i]);
    static const char *const args[] = {"id", "key", "token"};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
        check_query(h->target, h->tlen, args[i], 41);
        check_query(h->target, h->tlen, args[i], 1);
    }
}

static void check_head(const uint8_t *data, size_t size)
{
    size_t end = sb_wire_head_end((const char *)data, size);
    FUZZ_CHECK(end == 0 || (end >= 4 && end <= size));
    FUZZ_CHECK(end == 0 || memcmp(data + end - 4, "\r\n\r\n", 4) == 0);
    FUZZ_CHECK(end == head_end_ref(data, size));

    /* The parser on the whole input (as if it were a head), into a buffer of its very size. */
    sb_wire_head_t *all = malloc(sizeof *all);
    char *copy = malloc(size ? size : 1);
    FUZZ_CHECK(all && copy);
    memcpy(copy, data, size);
    int arc = sb_wire_head_parse(copy, size, all);
    FUZZ_CHECK(arc == 0 || arc == -1 || arc == -2);
    /* a head it accepts ends with an empty line, which sb_wire_head_end must have found */
    FUZZ_CHECK(arc != 0 || end != 0);
    if (end) {
        sb_wire_head_t *h = malloc(sizeof *h);
        char *head = malloc(end);
        FUZZ_CHECK(h && head);
        memcpy(head, data, end);
        int rc = sb_wire_head_parse(head, end, h);
        FUZZ_CHECK(rc == 0 || rc == -1 || rc == -2);
        /* what follows the empty line changes nothing */
        FUZZ_CHECK(rc == arc);
        if (rc == 0) {
            check_parsed(h, head, end);
            FUZZ_CHECK(h->nheaders == all->nheaders && h->mlen == all->mlen &&
                       h->tlen == all->tlen && h->minor == all->minor);
            FUZZ_CHECK(h->method - head == all->method - copy);
            for (int i = 0; i < h->nheaders; i++)
                FUZZ_CHECK(h->h[i].name - head == all->h[i].name - copy &&
                           h->h[i].value - head == all->h[i].value - copy &&
                           h->h[i].nlen == all->h[i].nlen && h->h[i].vlen == all->h[i].vlen);
        }
        free(head);
        free(h);
    }
    free(copy);
    free(all);
}

static void check_unmask(const uint8_t *p, size_t len, const uint8_t mask[4], size_t split)
{
    uint8_t *a = malloc(len ? len : 1), *b = malloc(len ? len : 1);
    FUZZ_CHECK(a && b);
    memcpy(a, p, len);
    memcpy(b, p, len);
    sb_wire_unmask(a, len, mask, 0);
    for (size_t i = 0; i < len; i++)
        FUZZ_CHECK(a[i] == (uint8_t)(p[i] ^ mask[i & 3]));
    /* in two pieces, the second at its offset in the payload (as reads split a frame) */
    sb_wire_unmask(b, split, mask, 0);
    sb_wire_unmask(b + split, len - split, mask, split);
    FUZZ_CHECK(memcmp(a, b, len) == 0);
    /* the payload as a text frame's */
    FUZZ_CHECK(sb_wire_utf8_ok(a, len) == utf8_ref(a, len));
    sb_wire_unmask(a, len, mask, 0);
    FUZZ_CHECK(memcmp(a, p, len) == 0);
    free(b);
    free(a);
}

static void check_frames(const uint8_t *p, size_t n)
{
    while (n > 0) {
        sb_wire_frame_t f;
        memset(&f, 0, sizeof f);
        int r = sb_wire_frame_parse(p, n, &f);
        FUZZ_CHECK(r == -1 || r == 0 || (r >= 2 && r <= 14 && (size_t)r <= n));
        if (r == -1) /* only a 64-bit length with its top bit set */
            FUZZ_CHECK(n >= 10 && (p[1] & 127) == 127 && (p[2] & 0x80));
        if (r <= 0)
            return;
        unsigned l7 = p[1] & 127;
        FUZZ_CHECK(f.fin == p[0] >> 7 && f.rsv == ((p[0] >> 4) & 7) && f.opcode == (p[0] & 15));
        FUZZ_CHECK(f.masked == p[1] >> 7);
        FUZZ_CHECK((size_t)r == 2 + (l7 == 126 ? 2u : l7 == 127 ? 8u : 0u) + (f.masked ? 4u : 0u));
        FUZZ_CHECK(l7 >= 126 || f.len == l7);
        FUZZ_CHECK(l7 != 126 || f.len == ((uint64_t)p[2] << 8 | p[3]));
        FUZZ_CHECK(f.len >> 63 == 0);
        FUZZ_CHECK(f.masked ? memcmp(f.mask, p + r - 4, 4) == 0
                            : (f.mask[0] | f.mask[1] | f.mask[2] | f.mask[3]) == 0);
        /* any shorter prefix of the header asks for more bytes */
        for (int k = 0; k < r; k++) {
            sb_wire_frame_t g;
            FUZZ_CHECK(sb_wire_frame_parse(p, (size_t)k, &g) == 0);
        }

        size_t rest = n - (size_t)r;
        size_t pl = f.len < rest ? (size_t)f.len : rest;
        if (f.masked)
            check_unmask(p + r, pl, f.mask, pl ? p[0] % (pl + 1) : 0);

        /* the header of a server frame of that opcode and length, parsed back */
        uint64_t len = f.len < (1ULL << 40) ? f.len : 5;
        uint8_t hb[16];
        memset(hb, 0xee, sizeof hb);
        size_t hl = sb_wire_frame_header(hb, f.opcode, len);
        FUZZ_CHECK(hl == (len < 126 ? 2u : len < 65536 ? 4u : 10u));
        sb_wire_frame_t g;
        FUZZ_CHECK(sb_wire_frame_parse(hb, hl, &g) == (int)hl);
        FUZZ_CHECK(g.len == len && g.opcode == f.opcode && g.fin == 1 && g.masked == 0 &&
                   g.rsv == 0);
        FUZZ_CHECK(hb[hl] == 0xee);

        p += (size_t)r + pl;
        n -= (size_t)r + pl;
    }
}

static void check_accept(const uint8_t *data, size_t size)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static int once;
    char *out = malloc(29);
    FUZZ_CHECK(out != NULL);
    if (!once) {
        /* RFC 6455 1.3 */
        once = 1;
        FUZZ_CHECK(sb_wire_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out) == 0);
        FUZZ_CHECK(strcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
    }
    size_t klen = size < 60 ? size : 60;
    memset(out, 0x55, 29);
    FUZZ_CHECK(sb_wire_accept_key((const char *)data, klen, out) == 0);
    FUZZ_CHECK(out[28] == '\0' && out[27] == '=' && out[26] != '=');
    for (int i = 0; i < 27; i++)
        FUZZ_CHECK(out[i] != '\0' && strchr(b64, out[i]) != NULL);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_head(data, size);
    (void)sb_wire_list_has((const char *)data, size, "upgrade");
    (void)sb_wire_list_has((const char *)data, size, "");
    check_frames(data, size);
    FUZZ_CHECK(sb_wire_utf8_ok(data, size) == utf8_ref(data, size));
    if (size > 1) /* off the eight-byte stride */
        FUZZ_CHECK(sb_wire_utf8_ok(data + 1, size - 1) == utf8_ref(data + 1, size - 1));
    check_accept(data, size);
    return 0;
}
