/* See wire.h. */
#include "wire.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <string.h>
#include <strings.h>

size_t sb_wire_head_end(const char *buf, size_t len)
{
    size_t i = 0;
    /* RFC 9112 2.2: empty lines before the request line are ignored. */
    while (i + 1 < len && buf[i] == '\r' && buf[i + 1] == '\n')
        i += 2;
    for (; i + 3 < len; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n')
            return i + 4;
    return 0;
}

static int tchar(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

int sb_wire_head_parse(const char *buf, size_t len, sb_wire_head_t *out)
{
    memset(out, 0, sizeof *out);
    const char *p = buf, *end = buf + len;
    while (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
        p += 2;
    /* request-line = method SP request-target SP HTTP-version CRLF */
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    if (!eol || eol + 1 >= end || eol[1] != '\n')
        return -1;
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (!sp1 || sp1 == p)
        return -1;
    for (const char *c = p; c < sp1; c++)
        if (!tchar(*c))
            return -1;
    const char *t = sp1 + 1;
    const char *sp2 = memchr(t, ' ', (size_t)(eol - t));
    if (!sp2 || sp2 == t || eol - sp2 != 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 || sp2[8] < '0' ||
        sp2[8] > '9')
        return -1;
    for (const char *c = t; c < sp2; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f)
            return -1;
    out->method = p;
    out->mlen = (size_t)(sp1 - p);
    out->target = t;
    out->tlen = (size_t)(sp2 - t);
    out->minor = sp2[8] - '0';
    p = eol + 2;
    /* field-line = field-name ":" OWS field-value OWS CRLF; no obsolete line folding. */
    while (p < end) {
        eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol || eol + 1 >= end || eol[1] != '\n')
            return -1;
        if (eol == p)
            return 0; /* the empty line */
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || colon == p)
            return -1;
        for (const char *c = p; c < colon; c++)
            if (!tchar(*c))
                return -1;
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        for (const char *c = v; c < ve; c++)
            if (((unsigned char)*c < ' ' && *c != '\t') || *c == 0x7f)
                return -1; /* RFC 9110 5.5: CR, LF, NUL (and other controls) refused */
        if (out->nheaders == SB_WIRE_HEADERS_MAX)
            return -2;
        sb_wire_header_t *h = &out->h[out->nheaders++];
        h->name = p;
        h->nlen = (size_t)(colon - p);
        h->value = v;
        h->vlen = (size_t)(ve - v);
        p = eol + 2;
    }
    return -1;
}

const sb_wire_header_t *sb_wire_header(const sb_wire_head_t *h, const char *name, int *count)
{
    size_t nl = strlen(name);
    const sb_wire_header_t *first = NULL;
    int n = 0;
    for (int i = 0; i < h->nheaders; i++)
        if (h->h[i].nlen == nl && strncasecmp(h->h[i].name, name, nl) == 0) {
            if (!first)
                first = &h->h[i];
            n++;
        }
    if (count)
        *count = n;
    return first;
}

int sb_wire_header_copy(const sb_wire_head_t *h, const char *name, char *out, size_t cap)
{
    const sb_wire_header_t *v = sb_wire_header(h, name, NULL);
    if (!v || v->vlen >= cap)
        return -1;
    memcpy(out, v->value, v->vlen);
    out[v->vlen] = '\0';
    return (int)v->vlen;
}

int sb_wire_header_has(const sb_wire_head_t *h, const char *name, const char *token)
{
    size_t nl = strlen(name);
    for (int i = 0; i < h->nheaders; i++)
        if (h->h[i].nlen == nl && strncasecmp(h->h[i].name, name, nl) == 0 &&
            sb_wire_list_has(h->h[i].value, h->h[i].vlen, token))
            return 1;
    return 0;
}

int sb_wire_list_has(const char *value, size_t vlen, const char *token)
{
    size_t tl = strlen(token);
    const char *p = value, *end = value + vlen;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        const char *a = p, *b = e;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if ((size_t)(b - a) == tl && strncasecmp(a, token, tl) == 0)
            return 1;
        p = comma ? comma + 1 : end;
    }
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int sb_wire_query_arg(const char *target, size_t tlen, const char *name, char *out, size_t cap)
{
    const char *q = memchr(target, '?', tlen), *end = target + tlen;
    size_t nl = strlen(name);
    if (!q)
        return 0;
    if (cap == 0)
        return -1; /* not even room for the NUL */
    for (const char *p = q + 1; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t o = 0;
            for (const char *c = p + nl + 1; c < e; c++) {
                char ch = *c;
                if (ch == '%') {
                    int hi = e - c >= 3 ? hexval(c[1]) : -1, lo = e - c >= 3 ? hexval(c[2]) : -1;
                    if (hi < 0 || lo < 0)
                        return -1;
                    ch = (char)(hi << 4 | lo);
                    if (ch == '\0')
                        return -1; /* it would cut the value short */
                    c += 2;
                } else if (ch == '+') {
                    ch = ' ';
                }
                if (o + 1 >= cap)
                    return -1;
                out[o++] = ch;
            }
            out[o] = '\0';
            return 1;
        }
        p = amp ? amp + 1 : end;
    }
    return 0;
}

int sb_wire_accept_key(const char *key, size_t klen, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char digest[SHA_DIGEST_LENGTH];
    char in[128];
    if (klen + sizeof guid > sizeof in)
        return -1;
    memcpy(in, key, klen);
    memcpy(in + klen, guid, sizeof guid - 1);
    SHA1((const unsigned char *)in, klen + sizeof guid - 1, digest);
    return EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH) == 28 ? 0 : -1;
}

int sb_wire_frame_parse(const uint8_t *p, size_t n, sb_wire_frame_t *f)
{
    if (n < 2)
        return 0;
    f->fin = p[0] >> 7;
    f->rsv = (p[0] >> 4) & 7;
    f->opcode = p[0] & 15;
    f->masked = p[1] >> 7;
    uint64_t len = p[1] & 127;
    size_t at = 2;
    if (len == 126) {
        if (n < 4)
            return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        at = 4;
    } else if (len == 127) {
        if (n < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        if (len >> 63)
            return -1;
        at = 10;
    }
    f->len = len;
    if (f->masked) {
        if (n < at + 4)
            return 0;
        memcpy(f->mask, p + at, 4);
        at += 4;
    } else {
        memset(f->mask, 0, 4);
    }
    return (int)at;
}

size_t sb_wire_frame_header(uint8_t *out, unsigned opcode, uint64_t len)
{
    out[0] = (uint8_t)(0x80 | (opcode & 15));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

void sb_wire_unmask(uint8_t *p, size_t len, const uint8_t mask[4], uint64_t at)
{
    size_t i = 0;
    /* Aligned to the mask, eight bytes at a time: most of a signal's cost is here otherwise. */
    while (i < len && ((at + i) & 3) != 0) {
        p[i] ^= mask[(at + i) & 3];
        i++;
    }
    uint64_t m8;
    uint8_t mb[8] = {mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]};
    memcpy(&m8, mb, 8);
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= m8;
        memcpy(p + i, &v, 8);
    }
    for (; i < len; i++)
        p[i] ^= mask[(at + i) & 3];
}

int sb_wire_utf8_ok(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* ASCII, eight bytes at a time where it can. */
        if (i + 8 <= len) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            if ((v & 0x8080808080808080ULL) == 0) {
                i += 8;
                continue;
            }
        }
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return 0; /* a continuation byte first, C0/C1 (overlong) or past F4 */
        }
        if (i + need >= len)
            return 0;
        for (size_t k = 1; k <= need; k++) {
            uint8_t cc = p[i + k];
            if ((cc & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (cc & 0x3f);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}
