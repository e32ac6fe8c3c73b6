/* The WebSocket protocol v1 (contract section 3), pure: decoding and validating client
 * messages, encoding server messages. No I/O, no Redis, no lws: unit tests and the fuzzer call
 * it directly. */
#ifndef SB_PROTO_H
#define SB_PROTO_H

#include "keys.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    SB_MSG_JOIN = 0,
    SB_MSG_SIGNAL,
    SB_MSG_LINK,
    SB_MSG_LEAVE,
    SB_MSG_ICE_SERVERS,
    SB_MSG_PING,
    SB_MSG_RESUME,
    SB_MSG_UNKNOWN,
    SB_MSG__COUNT
} sb_msg_type_t;

/* Names for metrics labels, indexed by sb_msg_type_t ("unknown" last). */
extern const char *const sb_msg_type_names[SB_MSG__COUNT];

#define SB_META_MAX 1024
#define SB_RID_MAX 64

typedef struct {
    sb_msg_type_t type;
    /* new reference: owns everything the borrowed pointers below point into; NULL when the
     * message was decoded without a tree (signal, ping, link: rid is then msg's own reference,
     * to / peer point into id, data is NULL and data_raw set) */
    json_t *root;
    json_t *rid;        /* borrowed (released by sb_msg_free); NULL when absent */
    const char *room;   /* join, resume */
    json_t *meta;       /* join: borrowed object, or NULL */
    const char *token;  /* join, resume: or NULL */
    const char *sid;    /* resume: the id to take back (unchecked: a bad one is refused later) */
    const char *resume; /* resume: the token presented */
    const char *to;     /* signal */
    json_t *data;       /* signal: borrowed, any JSON value */
    /* signal: the exact text of `data` inside the frame (borrowed from the decoded buffer, so
     * valid only as long as it is), to relay without re-encoding; NULL when not located (the
     * caller then encodes data). */
    const char *data_raw;
    size_t data_raw_len;
    const char *peer;        /* link */
    int up;                  /* link: 1 up, 0 down */
    char id[SB_SID_MAX + 1]; /* to / peer, when decoded without a tree */
} sb_msg_t;

typedef struct {
    const char *code; /* contract error code: "bad-json", "bad-message", ... (static) */
    char message[160];
    json_t *rid; /* new reference to the rid when it was valid and known, else NULL */
} sb_proto_err_t;

/* Decodes one text frame. Returns 0 and fills msg (release with sb_msg_free), or -1 and fills
 * err (release err->rid with json_decref). Never reads past len; buf need not be NUL
 * terminated. */
int sb_proto_decode(const char *buf, size_t len, sb_msg_t *msg, sb_proto_err_t *err);
/* The same, always through a jansson tree: what sb_proto_decode does for everything but the
 * common shapes of signal, ping and link, and the reference it must agree with (fuzzed). */
int sb_proto_decode_tree(const char *buf, size_t len, sb_msg_t *msg, sb_proto_err_t *err);
void sb_msg_free(sb_msg_t *msg);

/* Locates the value of the top-level member `key` of the JSON object text buf[0..len) without
 * decoding it: 1 and *val / *vlen set to its exact text, or 0 when not found. Meant for text a
 * strict parser has already accepted with duplicate keys refused (so the first match is the
 * only one); keys spelled with escapes are never matched (0: the caller falls back to the
 * parsed value). Never reads outside buf, whatever it holds. */
int sb_json_member_span(const char *buf, size_t len, const char *key, const char **val,
                        size_t *vlen);
/* The same for n keys (at most 16) in one pass over buf: bit i of the result set, and vals[i]
 * / vlens[i], when keys[i] was found. */
unsigned sb_json_member_spans(const char *buf, size_t len, size_t n, const char *const *keys,
                              const char **vals, size_t *vlens);

/* Fills out (at least 23 bytes) with a new socket id: 128 random bits from the OS, base64url,
 * 22 characters. Returns 0 or -1 when the OS random source fails. */
int sb_proto_new_sid(char *out, size_t outlen);

/* Serializes a message object compactly; returns a malloc'd string (caller frees) or NULL.
 * Steals msg. */
char *sb_proto_encode(json_t *msg, size_t *len);

/* {"type":"error","code":code,"message":message[,"rid":rid]}: malloc'd; rid borrowed. */
char *sb_proto_error(const char *code, const char *message, json_t *rid, size_t *len);

/* {"type":type[,"rid":rid]} as text into out (cap bytes, NUL-terminated), byte for byte what
 * sb_proto_encode(sb_proto_reply(type, rid)) gives: its length, or 0 when it does not fit or
 * the rid needs jansson to be written (escapes, non-ASCII). rid borrowed. */
size_t sb_proto_reply_text(char *out, size_t cap, const char *type, const json_t *rid);

/* {"type":t,...} with rid attached when given (borrowed): a new object. */
json_t *sb_proto_reply(const char *type, json_t *rid);

#endif
