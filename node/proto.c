/* Protocol v1 decoding and encoding. Everything a client sends passes through
 * sb_proto_decode first; nothing after it needs to re-validate types or sizes. */
#include "proto.h"
#include "keys.h"

#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

const char *const sb_msg_type_names[SB_MSG__COUNT] = {"join",        "signal", "link",   "leave",
                                                      "ice-servers", "ping",   "resume", "unknown"};

int sb_proto_new_sid(char *out, size_t outlen)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    /* 128 bits, as the header promises: 22 base64url characters in a 23-byte buffer. (This
     * used to draw 144 bits into 24 characters and refuse buffers under 25 bytes, so a caller
     * sizing its buffer from the header got -1.) */
    unsigned char raw[16];
    if (outlen < 23)
        return -1;
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    /* Five full 3-byte groups give 20 characters; the last byte gives two more. */
    for (int i = 0; i < 5; i++) {
        unsigned v = (unsigned)raw[3 * i] << 16 | (unsigned)raw[3 * i + 1] << 8 | raw[3 * i + 2];
        out[4 * i] = b64[(v >> 18) & 63];
        out[4 * i + 1] = b64[(v >> 12) & 63];
        out[4 * i + 2] = b64[(v >> 6) & 63];
        out[4 * i + 3] = b64[v & 63];
    }
    out[20] = b64[raw[15] >> 2];
    out[21] = b64[(raw[15] & 3) << 4];
    out[22] = '\0';
    return 0;
}

static int fail(sb_proto_err_t *err, const char *code, const char *message, json_t *rid)
{
    err->code = code;
    snprintf(err->message, sizeof err->message, "%s", message);
    /* Jansson's error texts quote the input near the error ("near '...'"), which may be cut in
     * the middle of a UTF-8 sequence or be no UTF-8 at all; json_string() would then refuse the
     * message and the error frame would go out without one. Keep it printable ASCII. */
    for (char *p = err->message; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    err->rid = rid ? json_incref(rid) : NULL;
    return -1;
}

/* rid: a string of at most 64 characters, or an integer in [0, 2^53-1]. */
static int rid_ok(json_t *rid)
{
    if (json_is_string(rid)) {
        /* Characters, not bytes (the contract counts characters): jansson only holds valid
         * UTF-8, so counting the bytes that do not continue a sequence counts code points. */
        const char *s = json_string_value(rid);
        size_t chars = 0;
        for (size_t i = 0, n = json_string_length(rid); i < n; i++)
            chars += ((unsigned char)s[i] & 0xC0) != 0x80;
        return chars <= SB_RID_MAX;
    }
    if (json_is_integer(rid)) {
        json_int_t v = json_integer_value(rid);
        return v >= 0 && v <= 9007199254740991LL;
    }
    return 0;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p is at a string's opening quote: returns the position past its closing quote, or NULL when
 * it is not terminated before end. *escaped is set when the string holds a backslash. */
static const char *skip_string(const char *p, const char *end, int *escaped)
{
    /* memchr for the quote, then for a backslash before it: relayed signals are mostly long
     * strings (SDP, padding), and memchr goes through them a vector at a time. The quote is
     * looked for again only once passed (it was escaped), so each byte is scanned at most
     * twice however many escapes. */
    const char *q = NULL;
    for (p++; p < end;) {
        if (!q || q < p) {
            q = memchr(p, '"', (size_t)(end - p));
            if (!q)
                return NULL;
        }
        const char *b = memchr(p, '\\', (size_t)(q - p));
        if (!b)
            return q + 1;
        *escaped = 1;
        p = b + 2; /* past the escaped character; a \u escape's hex digits are plain */
    }
    return NULL;
}

/* Past one value starting at p, or NULL when it does not end before end. */
static const char *skip_value(const char *p, const char *end)
{
    int escaped = 0;
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end, &escaped);
    if (*p == '{' || *p == '[') {
        size_t depth = 0;
        while (p < end) {
            if (*p == '"') {
                p = skip_string(p, end, &escaped);
                if (!p)
                    return NULL;
                continue;
            }
            if (*p == '{' || *p == '[')
                depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0)
                return p + 1;
            p++;
        }
        return NULL;
    }
    const char *start = p;
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' &&
           *p != '\n' && *p != '\r')
        p++;
    return p > start ? p : NULL;
}

unsigned sb_json_member_spans(const char *buf, size_t len, size_t n, const char *const *keys,
                              const char **vals, size_t *vlens)
{
    const char *p = buf, *end = buf + len;
    size_t klens[16];
    if (n > 16)
        n = 16;
    for (size_t i = 0; i < n; i++)
        klens[i] = strlen(keys[i]);
    unsigned found = 0, all = (1u << n) - 1;
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return 0;
    p++;
    for (;;) {
        p = skip_ws(p, end);
        if (p >= end || *p != '"')
            return found; /* '}' (the rest not found) or not an object member */
        int escaped = 0;
        const char *ks = p + 1, *ke = skip_string(p, end, &escaped);
        if (!ke)
            return found;
        p = skip_ws(ke, end);
        if (p >= end || *p != ':')
            return found;
        const char *vs = skip_ws(p + 1, end), *ve = skip_value(vs, end);
        if (!ve)
            return found;
        size_t kl = (size_t)(ke - 1 - ks);
        for (size_t i = 0; !escaped && i < n; i++) {
            if (!(found & 1u << i) && klens[i] == kl && memcmp(ks, keys[i], kl) == 0) {
                vals[i] = vs;
                vlens[i] = (size_t)(ve - vs);
                found |= 1u << i;
                if (found == all)
                    return found;
                break;
            }
        }
        p = skip_ws(ve, end);
        if (p >= end || *p != ',')
            return found;
        p++;
    }
}

int sb_json_member_span(const char *buf, size_t len, const char *key, const char **val,
                        size_t *vlen)
{
    return (int)sb_json_member_spans(buf, len, 1, &key, val, vlen);
}

static const char *str_field(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ---- the hot messages without a tree ---------------------------------------------------------
 * `signal`, `ping` and `link` are most of what clients send. They are decoded by a scanner that
 * accepts only a strict subset of JSON: strings of printable ASCII with the short escapes (no
 * \u), numbers without an exponent of at most 18 characters, at most 16 levels of nesting and
 * 16 members per object (duplicates found by comparing keys, which carry no escapes). In that
 * subset the scanner accepts exactly what jansson (JSON_REJECT_DUPLICATES) accepts, and the
 * fields it reads are then those of the tree. Anything outside it, anything it would refuse
 * and every other message type goes to sb_proto_decode_tree, so every error reply is the one
 * jansson's path gives. The fuzzer checks that the two agree on every input it accepts. */

#define HOT_DEPTH 16
#define HOT_KEYS 16

typedef struct {
    const char *s;
    size_t n;
} span_t;

/* p at an opening quote: past the closing one, or NULL outside the subset (or unterminated).
 * *plain: no escape in it. */
static const char *hot_string(const char *p, const char *end, int *plain)
{
    *plain = 1;
    /* 8 bytes at a time while 8 remain in the buffer (the closing quote is one of the bytes that
     * need a look, so reading past it stays inside the message): a quote, a backslash, a control
     * character or a byte over 0x7f raises its byte's high bit in `hit`. Borrows only raise bits
     * above a true hit, so the lowest one is exact: the scan jumps straight to it. Keys, ids and
     * short values end within the first 8 bytes; long plain strings (SDP) go 8 at a time. */
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    for (p++;;) {
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
            uint64_t hit =
                (((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b) | x) & high;
            if (hit) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
                p += (size_t)__builtin_clzll(hit) >> 3; /* the first byte is the highest */
#else
                p += (size_t)__builtin_ctzll(hit) >> 3; /* the first byte is the lowest */
#endif
                break;
            }
            p += 8;
        }
        if (p >= end)
            return NULL;
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20 || c >= 0x80)
            return NULL; /* control characters (jansson refuses), UTF-8 (jansson checks it) */
        if (c == '\\') {
            if (++p >= end || !strchr("\"\\/bfnrt", *p) || *p == '\0')
                return NULL; /* \u and anything else: jansson's business */
            *plain = 0;
        }
        p++;
    }
}

static const char *hot_digits(const char *p, const char *end)
{
    const char *start = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p > start ? p : NULL;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)? of at most 18 characters: what jansson reads as an int64 or a
 * finite double. */
static const char *hot_number(const char *p, const char *end)
{
    const char *start = p;
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0')
        p++;
    else if (!(p = hot_digits(p, end)))
        return NULL;
    if (p < end && *p == '.' && !(p = hot_digits(p + 1, end)))
        return NULL;
    if (p < end && (*p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9')))
        return NULL;
    return p - start <= 18 ? p : NULL;
}

static const char *hot_value(const char *p, const char *end, int depth);

/* p at '{': past the '}', or NULL. With keys, the object's members are reported there. */
static const char *hot_object(const char *p, const char *end, int depth, span_t *keys, span_t *vals,
                              int *nkeys)
{
    span_t own[HOT_KEYS];
    int n = 0;
    if (!keys)
        keys = own;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        goto done;
    for (;;) {
        int plain;
        if (p >= end || *p != '"' || n == HOT_KEYS)
            return NULL;
        const char *ke = hot_string(p, end, &plain);
        if (!ke || !plain)
            return NULL;
        span_t k = {p + 1, (size_t)(ke - p - 2)};
        for (int i = 0; i < n; i++)
            if (keys[i].n == k.n && memcmp(keys[i].s, k.s, k.n) == 0)
                return NULL; /* a duplicate: jansson's error */
        p = skip_ws(ke, end);
        if (p >= end || *p != ':')
            return NULL;
        const char *vs = skip_ws(p + 1, end), *ve = hot_value(vs, end, depth + 1);
        if (!ve)
            return NULL;
        if (vals)
            vals[n] = (span_t){vs, (size_t)(ve - vs)};
        keys[n++] = k;
        p = skip_ws(ve, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}')
            break;
        return NULL;
    }
done:
    if (nkeys)
        *nkeys = n;
    return p + 1;
}

static const char *hot_value(const char *p, const char *end, int depth)
{
    int plain;
    if (p >= end || depth > HOT_DEPTH)
        return NULL;
    switch (*p) {
    case '"':
        return hot_string(p, end, &plain);
    case '{':
        return hot_object(p, end, depth, NULL, NULL, NULL);
    case '[':
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']')
            return p + 1;
        for (;;) {
            if (!(p = hot_value(p, end, depth + 1)))
                return NULL;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            return p < end && *p == ']' ? p + 1 : NULL;
        }
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return hot_number(p, end);
    }
}

/* A string value without escapes: its characters (NUL-terminated) into out, or 0. */
static int hot_plain(span_t v, char *out, size_t cap)
{
    if (v.n < 2 || v.s[0] != '"' || v.n - 2 >= cap || memchr(v.s + 1, '\\', v.n - 2))
        return 0;
    memcpy(out, v.s + 1, v.n - 2);
    out[v.n - 2] = '\0';
    return 1;
}

static int span_is(span_t k, const char *name)
{
    return k.n == strlen(name) && memcmp(k.s, name, k.n) == 0;
}

/* 1 with msg filled when buf is a well-formed signal, ping or link in the subset; 0 otherwise
 * (msg then holds nothing to free). */
static int decode_hot(const char *buf, size_t len, sb_msg_t *msg)
{
    const char *p = skip_ws(buf, buf + len), *end = buf + len;
    span_t keys[HOT_KEYS], vals[HOT_KEYS];
    int n = 0;
    if (p >= end || *p != '{' || !(p = hot_object(p, end, 1, keys, vals, &n)) ||
        skip_ws(p, end) != end)
        return 0;
    span_t type = {0}, rid = {0}, to = {0}, data = {0}, peer = {0}, state = {0};
    for (int i = 0; i < n; i++) {
        span_t *f = span_is(keys[i], "type")    ? &type
                    : span_is(keys[i], "rid")   ? &rid
                    : span_is(keys[i], "to")    ? &to
                    : span_is(keys[i], "data")  ? &data
                    : span_is(keys[i], "peer")  ? &peer
                    : span_is(keys[i], "state") ? &state
                                                : NULL;
        if (f)
            *f = vals[i];
    }
    char t[8], word[8];
    if (!hot_plain(type, t, sizeof t))
        return 0;
    if (strcmp(t, "signal") == 0) {
        if (!data.s || !hot_plain(to, msg->id, sizeof msg->id) || !sb_valid_sid(msg->id))
            return 0;
        msg->type = SB_MSG_SIGNAL;
        msg->to = msg->id;
        msg->data_raw = data.s;
        msg->data_raw_len = data.n;
    } else if (strcmp(t, "link") == 0) {
        if (!hot_plain(peer, msg->id, sizeof msg->id) || !sb_valid_sid(msg->id) ||
            !hot_plain(state, word, sizeof word) ||
            (strcmp(word, "up") != 0 && strcmp(word, "down") != 0))
            return 0;
        msg->type = SB_MSG_LINK;
        msg->peer = msg->id;
        msg->up = word[0] == 'u';
    } else if (strcmp(t, "ping") == 0) {
        msg->type = SB_MSG_PING;
    } else {
        return 0;
    }
    if (!rid.s)
        return 1;
    if (rid.s[0] == '"') {
        /* Plain ASCII: bytes are characters. */
        if (rid.n - 2 > SB_RID_MAX || memchr(rid.s + 1, '\\', rid.n - 2))
            return 0;
        msg->rid = json_stringn(rid.s + 1, rid.n - 2);
    } else {
        /* 0 .. 2^53-1, digits only (a sign, a fraction: the tree decides). */
        json_int_t v = 0;
        if (rid.n > 16)
            return 0;
        for (size_t i = 0; i < rid.n; i++) {
            if (rid.s[i] < '0' || rid.s[i] > '9')
                return 0;
            v = v * 10 + (rid.s[i] - '0');
        }
        if (v > 9007199254740991LL)
            return 0;
        msg->rid = json_integer(v);
    }
    return msg->rid != NULL; /* out of memory: the tree path reports it as it does */
}

int sb_proto_decode(const char *buf, size_t len, sb_msg_t *msg, sb_proto_err_t *err)
{
    memset(msg, 0, sizeof *msg);
    memset(err, 0, sizeof *err);
    if (decode_hot(buf, len, msg))
        return 0;
    return sb_proto_decode_tree(buf, len, msg, err);
}

int sb_proto_decode_tree(const char *buf, size_t len, sb_msg_t *msg, sb_proto_err_t *err)
{
    memset(msg, 0, sizeof *msg);
    memset(err, 0, sizeof *err);
    json_error_t jerr;
    /* JSON_REJECT_DUPLICATES: duplicate keys are bad-json (contract). Without JSON_ALLOW_NUL a
     * \u0000 inside a string is refused, so every string we keep is a proper C string.
     * Jansson caps nesting depth itself (2048), so deep nesting is bad-json, not a crash. */
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(err, "bad-json", jerr.text[0] ? jerr.text : "invalid JSON", NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(err, "bad-message", "a message must be a JSON object", NULL);
    }
    json_t *rid = json_object_get(root, "rid");
    if (rid && !rid_ok(rid)) {
        json_decref(root);
        return fail(err, "bad-message",
                    "rid must be a string of up to 64 characters or an integer 0..2^53-1", NULL);
    }
    json_t *type = json_object_get(root, "type");
    if (!json_is_string(type)) {
        int rc = fail(err, "bad-message", "missing or non-string \"type\"", rid);
        json_decref(root);
        return rc;
    }
    const char *t = json_string_value(type);
    msg->root = root;
    msg->rid = rid;
    msg->type = SB_MSG_UNKNOWN;
    for (int i = 0; i < SB_MSG_UNKNOWN; i++)
        if (strcmp(t, sb_msg_type_names[i]) == 0)
            msg->type = (sb_msg_type_t)i;

    const char *why = NULL, *code = "bad-message";
    switch (msg->type) {
    case SB_MSG_JOIN: {
        json_t *room = json_object_get(root, "room");
        json_t *meta = json_object_get(root, "meta");
        json_t *token = json_object_get(root, "token");
        if (!json_is_string(room)) {
            why = "join needs a string \"room\"";
        } else if (!sb_valid_room(json_string_value(room))) {
            code = "bad-room";
            why = "room names are 1 to 64 characters of [A-Za-z0-9._-]";
        } else if (meta && !json_is_null(meta) && !json_is_object(meta)) {
            why = "\"meta\" must be an object";
        } else if (token && !json_is_null(token) && !json_is_string(token)) {
            why = "\"token\" must be a string";
        } else {
            msg->room = json_string_value(room);
            msg->meta = json_is_object(meta) ? meta : NULL;
            msg->token = json_is_string(token) ? json_string_value(token) : NULL;
            if (msg->meta) {
                char *s = json_dumps(msg->meta, JSON_COMPACT);
                size_t n = s ? strlen(s) : SB_META_MAX + 1;
                free(s);
                if (n > SB_META_MAX)
                    why = "\"meta\" is over 1024 bytes serialized";
            }
        }
        break;
    }
    case SB_MSG_SIGNAL:
        msg->to = str_field(root, "to");
        msg->data = json_object_get(root, "data");
        if (!msg->to)
            why = "signal needs a string \"to\"";
        else if (!msg->data)
            why = "signal needs \"data\"";
        else if (!sb_valid_sid(msg->to))
            code = "peer-not-found", why = "no such peer in the room";
        else if (!sb_json_member_span(buf, len, "data", &msg->data_raw, &msg->data_raw_len))
            msg->data_raw = NULL, msg->data_raw_len = 0;
        break;
    case SB_MSG_LINK: {
        msg->peer = str_field(root, "peer");
        const char *state = str_field(root, "state");
        if (!msg->peer)
            why = "link needs a string \"peer\"";
        else if (!state || (strcmp(state, "up") != 0 && strcmp(state, "down") != 0))
            why = "link needs \"state\": \"up\" or \"down\"";
        else if (!sb_valid_sid(msg->peer))
            code = "peer-not-found", why = "no such peer in the room";
        else
            msg->up = strcmp(state, "up") == 0;
        break;
    }
    case SB_MSG_RESUME: {
        json_t *token = json_object_get(root, "token");
        msg->sid = str_field(root, "id");
        msg->room = str_field(root, "room");
        msg->resume = str_field(root, "resume");
        if (!msg->sid || !msg->room || !msg->resume)
            why = "resume needs strings \"id\", \"room\" and \"resume\"";
        else if (token && !json_is_null(token) && !json_is_string(token))
            why = "\"token\" must be a string";
        else
            msg->token = json_is_string(token) ? json_string_value(token) : NULL;
        break;
    }
    case SB_MSG_UNKNOWN:
        code = "unknown-type";
        why = "unknown message type";
        break;
    default:
        break;
    }
    if (why) {
        fail(err, code, why, rid);
        sb_msg_free(msg);
        return -1;
    }
    return 0;
}

void sb_msg_free(sb_msg_t *msg)
{
    if (msg->root)
        json_decref(msg->root);
    else if (msg->rid)
        json_decref(msg->rid); /* decoded without a tree: the rid was made for msg */
    memset(msg, 0, sizeof *msg);
}

char *sb_proto_encode(json_t *msg, size_t *len)
{
    char *s = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (s && len)
        *len = strlen(s);
    return s;
}

json_t *sb_proto_reply(const char *type, json_t *rid)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    if (rid)
        json_object_set(o, "rid", rid);
    return o;
}

char *sb_proto_error(const char *code, const char *message, json_t *rid, size_t *len)
{
    json_t *o = sb_proto_reply("error", rid);
    json_object_set_new(o, "code", json_string(code));
    json_object_set_new(o, "message", json_string(message));
    return sb_proto_encode(o, len);
}

size_t sb_proto_reply_text(char *out, size_t cap, const char *type, const json_t *rid)
{
    char num[32];
    const char *rt = NULL;
    size_t rl = 0;
    int quote = 0;
    if (json_is_integer(rid)) {
        rl = (size_t)snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(rid));
        rt = num;
    } else if (json_is_string(rid)) {
        /* Copied as is only where jansson would write the same bytes: no escapes needed, and
         * ASCII (so no question of how a code point is written). */
        rt = json_string_value(rid);
        rl = json_string_length(rid);
        for (size_t i = 0; i < rl; i++) {
            unsigned char c = (unsigned char)rt[i];
            if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
                return 0;
        }
        quote = 1;
    } else if (rid) {
        return 0;
    }
    size_t tl = strlen(type);
    /* {"type":"T"} or {"type":"T","rid":R} */
    size_t need = 10 + tl + 2 + (rt ? 7 + rl + 2 * (size_t)quote : 0); /* with the NUL */
    if (need > cap)
        return 0;
    char *p = out;
    memcpy(p, "{\"type\":\"", 9);
    p += 9;
    memcpy(p, type, tl);
    p += tl;
    *p++ = '"';
    if (rt) {
        memcpy(p, ",\"rid\":", 7);
        p += 7;
        if (quote)
            *p++ = '"';
        memcpy(p, rt, rl);
        p += rl;
        if (quote)
            *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return (size_t)(p - out);
}
