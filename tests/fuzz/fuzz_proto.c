/* Fuzzes the protocol decoder (node/proto.c) and its raw `data` locator with arbitrary
 * frames: whatever the decoder accepts must satisfy what the session relies on without
 * re-checking (the located `data` text included), what it decodes without a tree must be what
 * the tree decoder gives, and whatever it refuses must yield a well-formed error frame with an
 * error code of docs/protocol.md. */
#include "fuzz.h"
#include "proto.h"

#include <string.h>

static const char *const codes[] = {"bad-json", "bad-message", "unknown-type", "bad-room",
                                    "peer-not-found"};

static int known_code(const char *code)
{
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(code, codes[i]) == 0)
            return 1;
    return 0;
}

static int valid_rid(json_t *rid)
{
    if (json_is_integer(rid))
        return json_integer_value(rid) >= 0 && json_integer_value(rid) <= 9007199254740991LL;
    return json_is_string(rid) && json_string_length(rid) <= 4 * SB_RID_MAX;
}

/* Encodes and re-parses a frame; returns the parsed object (new reference). */
static json_t *roundtrip(char *frame, size_t len)
{
    FUZZ_CHECK(frame != NULL);
    FUZZ_CHECK(strlen(frame) == len);
    json_t *o = json_loads(frame, JSON_REJECT_DUPLICATES, NULL);
    free(frame);
    FUZZ_CHECK(json_is_object(o));
    return o;
}

/* sb_proto_decode without a tree must give what the tree decoder gives. */
static void check_same_as_tree(const sb_msg_t *m, const char *buf, size_t len)
{
    sb_msg_t t;
    sb_proto_err_t e;
    FUZZ_CHECK(sb_proto_decode_tree(buf, len, &t, &e) == 0);
    FUZZ_CHECK(t.root != NULL && t.type == m->type);
    FUZZ_CHECK(t.rid ? m->rid && json_equal(t.rid, m->rid) : !m->rid);
    if (t.type == SB_MSG_SIGNAL) {
        FUZZ_CHECK(strcmp(t.to, m->to) == 0);
        FUZZ_CHECK(t.data_raw == m->data_raw && t.data_raw_len == m->data_raw_len);
    }
    if (t.type == SB_MSG_LINK)
        FUZZ_CHECK(strcmp(t.peer, m->peer) == 0 && t.up == m->up);
    sb_msg_free(&t);
}

static void check_accepted(const sb_msg_t *m)
{
    /* a tree, or (signal, ping, link) none */
    FUZZ_CHECK(m->root != NULL || m->type == SB_MSG_SIGNAL || m->type == SB_MSG_PING ||
               m->type == SB_MSG_LINK);
    FUZZ_CHECK(m->type >= SB_MSG_JOIN && m->type < SB_MSG_UNKNOWN);
    FUZZ_CHECK(!m->rid || valid_rid(m->rid));
    switch (m->type) {
    case SB_MSG_JOIN:
        FUZZ_CHECK(m->room && sb_valid_room(m->room));
        FUZZ_CHECK(!m->meta || json_is_object(m->meta));
        if (m->meta) {
            char *s = json_dumps(m->meta, JSON_COMPACT);
            FUZZ_CHECK(s && strlen(s) <= SB_META_MAX);
            free(s);
        }
        break;
    case SB_MSG_SIGNAL:
        FUZZ_CHECK(m->to && sb_valid_sid(m->to));
        FUZZ_CHECK(m->data != NULL || (m->root == NULL && m->data_raw != NULL));
        if (m->data_raw && m->data) {
            /* what the node relays as is: the very same JSON value */
            json_t *v = json_loadb(m->data_raw, m->data_raw_len, JSON_DECODE_ANY, NULL);
            FUZZ_CHECK(v != NULL && json_equal(v, m->data));
            json_decref(v);
        }
        break;
    case SB_MSG_LINK:
        FUZZ_CHECK(m->peer && sb_valid_sid(m->peer));
        FUZZ_CHECK(m->up == 0 || m->up == 1);
        break;
    case SB_MSG_RESUME:
        FUZZ_CHECK(m->sid && m->room && m->resume && m->root);
        break;
    default:
        break;
    }
    /* A reply carrying the rid, as the session builds it. */
    size_t len = 0;
    char *frame = sb_proto_encode(sb_proto_reply("pong", m->rid), &len);
    /* the same reply built as text: byte for byte, when it is built at all */
    char text[256];
    size_t tl = sb_proto_reply_text(text, sizeof text, "pong", m->rid);
    FUZZ_CHECK(tl == 0 || (frame && tl == len && memcmp(text, frame, len) == 0));
    json_t *o = roundtrip(frame, len);
    FUZZ_CHECK(!m->rid || json_equal(json_object_get(o, "rid"), m->rid));
    json_decref(o);
}

static void check_refused(const sb_msg_t *m, const sb_proto_err_t *e)
{
    FUZZ_CHECK(m->root == NULL);
    FUZZ_CHECK(e->code && known_code(e->code));
    FUZZ_CHECK(e->message[0] != '\0');
    FUZZ_CHECK(!e->rid || valid_rid(e->rid));
    size_t len = 0;
    json_t *o = roundtrip(sb_proto_error(e->code, e->message, e->rid, &len), len);
    /* The message must survive encoding (jansson drops a non-UTF-8 one silently). */
    FUZZ_CHECK(json_is_string(json_object_get(o, "message")));
    FUZZ_CHECK(strcmp(json_string_value(json_object_get(o, "message")), e->message) == 0);
    FUZZ_CHECK(strcmp(json_string_value(json_object_get(o, "code")), e->code) == 0);
    FUZZ_CHECK(!e->rid || json_equal(json_object_get(o, "rid"), e->rid));
    json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sb_msg_t m;
    sb_proto_err_t e;
    /* The span finder on any bytes at all (the node only feeds it validated JSON): it stays
     * inside the input (ASan) and what it returns lies within it. */
    const char *val;
    size_t vlen;
    if (sb_json_member_span((const char *)data, size, "data", &val, &vlen))
        FUZZ_CHECK(val >= (const char *)data && val + vlen <= (const char *)data + size);
    /* The one-pass finder (pub/sub) agrees with it key by key. */
    static const char *const keys[] = {"t", "room", "from", "to", "data"};
    const char *vals[5];
    size_t vlens[5];
    unsigned got = sb_json_member_spans((const char *)data, size, 5, keys, vals, vlens);
    for (size_t i = 0; i < 5; i++) {
        int one = sb_json_member_span((const char *)data, size, keys[i], &val, &vlen);
        FUZZ_CHECK(!!(got & 1u << i) == one);
        FUZZ_CHECK(!one || (vals[i] == val && vlens[i] == vlen));
    }
    if (sb_proto_decode((const char *)data, size, &m, &e) == 0) {
        check_accepted(&m);
        if (!m.root)
            check_same_as_tree(&m, (const char *)data, size);
        sb_msg_free(&m);
        FUZZ_CHECK(m.root == NULL);
    } else {
        check_refused(&m, &e);
        if (e.rid)
            json_decref(e.rid);
    }
    return 0;
}
