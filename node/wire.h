/* The bytes of the node's own WebSocket layer (conn.c), with no I/O: an HTTP/1.1 request head,
 * the handshake's accept key, RFC 6455 frame headers, UTF-8 and the query of a request target.
 * Pure, so the unit tests drive it byte by byte (tests/unit/test_wire.c). */
#ifndef SB_WIRE_H
#define SB_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* The largest request head read (request line and headers, up to the empty line): what lws
 * held for the node (sb_listen: max_http_header_data). A longer head is refused with 431. */
#define SB_WIRE_HEAD_MAX 4096
/* Headers kept from one head; a head with more is refused (431) like an oversized one. */
#define SB_WIRE_HEADERS_MAX 64

typedef struct {
    const char *name, *value; /* into the head (not terminated) */
    size_t nlen, vlen;        /* value without surrounding spaces and tabs */
} sb_wire_header_t;

typedef struct sb_wire_head {
    const char *method, *target; /* into the head */
    size_t mlen, tlen;
    int minor; /* HTTP/1.minor */
    int nheaders;
    sb_wire_header_t h[SB_WIRE_HEADERS_MAX];
} sb_wire_head_t;

/* The length of the head at buf (through its empty line), 0 when it is not complete in len
 * bytes. Leading empty lines (RFC 9112 2.2) are part of it. */
size_t sb_wire_head_end(const char *buf, size_t len);
/* Parses a complete head of len bytes (as sb_wire_head_end found it). 0, or -1 when it is not
 * a well-formed HTTP/1.x request head (or has more than SB_WIRE_HEADERS_MAX headers: -2). */
int sb_wire_head_parse(const char *buf, size_t len, sb_wire_head_t *out);
/* The value of header name (case-insensitive) and how many times it occurs; NULL when none. */
const sb_wire_header_t *sb_wire_header(const sb_wire_head_t *h, const char *name, int *count);
/* Copies the value of header name into out (terminated) when it fits: its length, -1 when
 * absent or too long. */
int sb_wire_header_copy(const sb_wire_head_t *h, const char *name, char *out, size_t cap);
/* 1 when any field line of header name (a list split over several lines is one list, RFC 9110
 * 5.3) holds token, as sb_wire_list_has. */
int sb_wire_header_has(const sb_wire_head_t *h, const char *name, const char *token);
/* 1 when the comma-separated list value (e.g. Connection, Sec-WebSocket-Protocol) holds token
 * (case-insensitive). */
int sb_wire_list_has(const char *value, size_t vlen, const char *token);

/* Query parameter name of target ("/path?a=1&b=2"), percent-decoded (and '+' as a space), into
 * out: 1; 0 when absent; -1 when its value is longer than cap - 1 or its escapes are bad. */
int sb_wire_query_arg(const char *target, size_t tlen, const char *name, char *out, size_t cap);

/* Sec-WebSocket-Accept of key (RFC 6455 4.2.2): 28 characters and a NUL into out. 0 or -1. */
int sb_wire_accept_key(const char *key, size_t klen, char out[29]);

/* A frame header, parsed. */
typedef struct {
    unsigned fin : 1, masked : 1;
    unsigned rsv : 3;
    unsigned opcode : 4;
    uint64_t len;
    uint8_t mask[4];
} sb_wire_frame_t;

/* Parses the frame header at p (n bytes available): its length (2 to 14), 0 when more bytes
 * are needed, or -1 when it breaks RFC 6455 whatever follows (a length with the top bit set,
 * a 16-bit or 64-bit length that the shorter form could hold is still accepted: browsers never
 * send those and the RFC only says "minimal number of bytes" must be used, not checked). */
int sb_wire_frame_parse(const uint8_t *p, size_t n, sb_wire_frame_t *f);
/* The header of an unmasked server frame (FIN set) of opcode and len bytes at out (at least
 * 10 bytes): its length, 2, 4 or 10. */
size_t sb_wire_frame_header(uint8_t *out, unsigned opcode, uint64_t len);
/* Unmasks (or masks) len bytes at p, the first of them at offset `at` of the payload. */
void sb_wire_unmask(uint8_t *p, size_t len, const uint8_t mask[4], uint64_t at);

/* 1 when len bytes at p are well-formed UTF-8 (no overlongs, surrogates or code points past
 * U+10FFFF), else 0. */
int sb_wire_utf8_ok(const uint8_t *p, size_t len);

#endif
