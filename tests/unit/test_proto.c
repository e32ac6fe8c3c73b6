/* Unit tests for node/proto.c: every message type decoded, every error code the decoder can
 * produce (with the rid echoed where docs/protocol.md says so), socket id generation, and the
 * shapes of encoded replies and errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto.h"

#define SID_A "AAAAAAAAAAAAAAAAAAAAAA" /* 22 characters: a well-formed socket id */

/* signal's data as a value (new reference), however it was decoded. */
static json_t *data_of(const sb_msg_t *m)
{
    if (m->data)
        return json_incref(m->data);
    assert_non_null(m->data_raw);
    json_t *v = json_loadb(m->data_raw, m->data_raw_len, JSON_DECODE_ANY, NULL);
    assert_non_null(v);
    return v;
}

/* What the session relies on is the same in a (sb_proto_decode) and t (the tree decoder). */
static void assert_same_msg(const sb_msg_t *a, const sb_msg_t *t)
{
    assert_int_equal(a->type, t->type);
    if (t->rid)
        assert_true(a->rid && json_equal(a->rid, t->rid));
    else
        assert_null(a->rid);
    switch (t->type) {
    case SB_MSG_SIGNAL: {
        assert_string_equal(a->to, t->to);
        /* the relayed text: the same bytes of the same frame */
        assert_ptr_equal(a->data_raw, t->data_raw);
        assert_int_equal(a->data_raw_len, t->data_raw_len);
        json_t *da = data_of(a), *dt = data_of(t);
        assert_true(json_equal(da, dt));
        json_decref(da);
        json_decref(dt);
        break;
    }
    case SB_MSG_LINK:
        assert_string_equal(a->peer, t->peer);
        assert_int_equal(a->up, t->up);
        break;
    default:
        break;
    }
}

/* Decodes buf[0..len) both ways; returns sb_proto_decode's msg for the caller to check and
 * free, and whether it went without a tree in *fast. */
static sb_msg_t decode_ok_n(const char *buf, size_t len, int *fast)
{
    sb_msg_t m, t;
    sb_proto_err_t e;
    int rc = sb_proto_decode(buf, len, &m, &e);
    if (rc != 0)
        fail_msg("expected success for %.*s, got %s: %s", (int)len, buf, e.code, e.message);
    assert_null(e.rid);
    rc = sb_proto_decode_tree(buf, len, &t, &e);
    assert_int_equal(rc, 0);
    assert_non_null(t.root);
    assert_same_msg(&m, &t);
    sb_msg_free(&t);
    if (fast)
        *fast = m.root == NULL;
    return m;
}

static sb_msg_t decode_ok(const char *s)
{
    return decode_ok_n(s, strlen(s), NULL);
}

/* Checks that an error reply can be built from e and has the shape docs/protocol.md gives. */
static void check_error_frame(const sb_proto_err_t *e)
{
    size_t len = 0;
    char *frame = sb_proto_error(e->code, e->message, e->rid, &len);
    assert_non_null(frame);
    assert_int_equal(len, strlen(frame));
    json_t *o = json_loads(frame, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "type")), "error");
    assert_string_equal(json_string_value(json_object_get(o, "code")), e->code);
    json_t *msg = json_object_get(o, "message");
    assert_true(json_is_string(msg));
    assert_true(json_string_length(msg) > 0);
    if (e->rid)
        assert_true(json_equal(json_object_get(o, "rid"), e->rid));
    else
        assert_null(json_object_get(o, "rid"));
    json_decref(o);
    free(frame);
}

/* Decodes buf[0..len) expecting error code; returns the echoed rid (new reference or NULL). */
static json_t *decode_err_n(const char *buf, size_t len, const char *code)
{
    sb_msg_t m;
    sb_proto_err_t e;
    int rc = sb_proto_decode(buf, len, &m, &e);
    if (rc == 0) {
        sb_msg_free(&m);
        fail_msg("expected %s for %.*s, got success", code, (int)len, buf);
    }
    assert_int_equal(rc, -1);
    assert_null(m.root);
    assert_non_null(e.code);
    if (strcmp(e.code, code) != 0)
        fail_msg("expected %s for %.*s, got %s: %s", code, (int)len, buf, e.code, e.message);
    assert_true(e.message[0] != '\0');
    check_error_frame(&e);
    return e.rid;
}

/* decode_err_n for a NUL-terminated text, asserting that no rid is echoed. */
static void decode_err(const char *s, const char *code)
{
    json_t *rid = decode_err_n(s, strlen(s), code);
    assert_null(rid);
}

static void test_join(void **state)
{
    (void)state;
    sb_msg_t m = decode_ok("{\"type\":\"join\",\"room\":\"lobby-1.A_b\",\"meta\":{\"name\":\"x\"},"
                           "\"token\":\"t.o.k\",\"extra\":[1,2]}");
    assert_int_equal(m.type, SB_MSG_JOIN);
    assert_string_equal(m.room, "lobby-1.A_b");
    assert_true(json_is_object(m.meta));
    assert_string_equal(json_string_value(json_object_get(m.meta, "name")), "x");
    assert_string_equal(m.token, "t.o.k");
    assert_null(m.rid);
    sb_msg_free(&m);
    assert_null(m.root);

    /* meta and token are optional, and null means absent. */
    m = decode_ok("{\"type\":\"join\",\"room\":\"r\"}");
    assert_null(m.meta);
    assert_null(m.token);
    sb_msg_free(&m);
    m = decode_ok("{\"type\":\"join\",\"room\":\"r\",\"meta\":null,\"token\":null}");
    assert_null(m.meta);
    assert_null(m.token);
    sb_msg_free(&m);
}

static void test_signal(void **state)
{
    (void)state;
    sb_msg_t m = decode_ok("{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":{\"sdp\":\"v=0\"}}");
    assert_int_equal(m.type, SB_MSG_SIGNAL);
    assert_string_equal(m.to, SID_A);
    json_t *d = data_of(&m);
    assert_string_equal(json_string_value(json_object_get(d, "sdp")), "v=0");
    json_decref(d);
    sb_msg_free(&m);
    /* data is opaque: any JSON value, null included. */
    m = decode_ok("{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":null}");
    d = data_of(&m);
    assert_true(json_is_null(d));
    json_decref(d);
    sb_msg_free(&m);
}

/* The raw text of data, as relayed: exactly the bytes the client sent for it. */
static void assert_raw_data(const char *frame, const char *want)
{
    sb_msg_t m = decode_ok(frame);
    assert_int_equal(m.type, SB_MSG_SIGNAL);
    if (!want) {
        assert_null(m.data_raw);
    } else {
        assert_non_null(m.data_raw);
        assert_int_equal(m.data_raw_len, strlen(want));
        assert_memory_equal(m.data_raw, want, strlen(want));
        /* and it is the same JSON value as the parsed one (decode_ok compared them) */
    }
    sb_msg_free(&m);
}

static void test_signal_raw_data(void **state)
{
    (void)state;
    assert_raw_data("{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":{\"sdp\":\"v=0\"}}",
                    "{\"sdp\":\"v=0\"}");
    /* whitespace around it is not part of it; inside it is kept */
    assert_raw_data(" { \"data\" :\n [ 1, {\"a\" : \"}]\\\"\"} ] ,\"to\":\"" SID_A
                    "\",\"type\":\"signal\" } ",
                    "[ 1, {\"a\" : \"}]\\\"\"} ]");
    /* scalars, before and after other members; members with look-alike keys skipped */
    assert_raw_data("{\"type\":\"signal\",\"dat\":1,\"datas\":2,\"to\":\"" SID_A
                    "\",\"data\":-1.5e3}",
                    "-1.5e3");
    assert_raw_data("{\"data\":null,\"type\":\"signal\",\"to\":\"" SID_A "\"}", "null");
    assert_raw_data("{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":\"\\u00e9\\n\"}",
                    "\"\\u00e9\\n\"");
    /* the key written with an escape: not located, the caller re-encodes the parsed value */
    assert_raw_data("{\"type\":\"signal\",\"to\":\"" SID_A "\",\"d\\u0061ta\":true}", NULL);
}

static void test_member_span_never_overreads(void **state)
{
    (void)state;
    const char *val;
    size_t vlen;
    /* truncated and malformed inputs: not found, and (under ASan) no read past len */
    const char *cases[] = {"",
                           "{",
                           "{\"",
                           "{\"data",
                           "{\"data\"",
                           "{\"data\":",
                           "{\"data\":\"ab",
                           "{\"data\":{\"a\":[1,2",
                           "{\"data\":\"\\",
                           "[\"data\",1]",
                           "{data:1}",
                           "{\"x\":1 \"data\":2}",
                           "{\"data\"  1}"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t len = strlen(cases[i]);
        char *copy = malloc(len ? len : 1);
        memcpy(copy, cases[i], len);
        assert_int_equal(sb_json_member_span(copy, len, "data", &val, &vlen), 0);
        free(copy);
    }
    const char ok[] = "{\"data\":12}";
    assert_int_equal(sb_json_member_span(ok, sizeof ok - 1, "data", &val, &vlen), 1);
    assert_int_equal(vlen, 2);
    assert_memory_equal(val, "12", 2);
}

/* The one-pass finder (pub/sub messages) locates each key exactly where the one-key finder does,
 * first occurrence included, and only the keys that one finds. */
static void test_member_spans_agree_with_member_span(void **state)
{
    (void)state;
    static const char *const keys[] = {"t", "room", "from", "to", "data", "x"};
    const size_t n = sizeof keys / sizeof *keys;
    const char *cases[] = {
        "{\"t\":\"signal\",\"room\":\"r1\",\"from\":\"" SID_A "\",\"to\":\"" SID_A
        "\",\"data\":{\"sdp\":\"v=0\\r\\n\",\"n\":[1,2,{\"to\":3}]}}",
        "{\"data\":1,\"to\":\"a\",\"data\":2}",                  /* duplicate: the first */
        "{\"t\":\"join\",\"room\":\"r\",\"meta\":{\"from\":1}}", /* nested keys are not members */
        "{\"t\":\"signal\",\"room\":\"r\",\"from\":\"a\" \"to\":1}", /* broken after "from" */
        "{\"r\\u006fom\":\"r\",\"room\":\"s\"}", /* a key with an escape never matches */
        "{\"t\":\"x\",\"from\":[1,{\"a\":\"}\"}],\"to\":\"b\"", /* unterminated object */
        "{}",
        "",
        /* escapes in a skipped string: an escaped quote, an escaped backslash before the end */
        "{\"data\":\"a\\\"b\\\\\",\"to\":\"x\\\"\",\"t\":\"\\\\\"}",
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        size_t len = strlen(cases[c]);
        const char *vals[6];
        size_t vlens[6];
        unsigned got = sb_json_member_spans(cases[c], len, n, keys, vals, vlens);
        for (size_t i = 0; i < n; i++) {
            const char *v;
            size_t vl;
            int one = sb_json_member_span(cases[c], len, keys[i], &v, &vl);
            assert_int_equal(!!(got & 1u << i), one);
            if (one) {
                assert_ptr_equal(vals[i], v);
                assert_int_equal(vlens[i], vl);
            }
        }
    }
    /* the first case: every key but "x", with its exact text */
    const char *vals[6];
    size_t vlens[6];
    assert_int_equal(sb_json_member_spans(cases[0], strlen(cases[0]), n, keys, vals, vlens), 0x1f);
    assert_int_equal(vlens[3], 24);
    assert_memory_equal(vals[3], "\"" SID_A "\"", 24);
    assert_memory_equal(vals[4], "{\"sdp\"", 6);
}

/* A string of escapes only is skipped in linear time: 1 MiB of \n pairs in well under a second
 * (rescanning for the quote after each escape took minutes). */
static void test_member_span_escapes_linear(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *buf = malloc(n + 64);
    assert_non_null(buf);
    size_t len = 0;
    len += (size_t)sprintf(buf, "{\"data\":\"");
    for (size_t i = 0; i < n / 2; i++) {
        buf[len++] = '\\';
        buf[len++] = 'n';
    }
    len += (size_t)sprintf(buf + len, "\",\"to\":1}");
    const char *v;
    size_t vl;
    clock_t t0 = clock();
    assert_int_equal(sb_json_member_span(buf, len, "to", &v, &vl), 1);
    assert_int_equal(vl, 1);
    assert_true((double)(clock() - t0) / CLOCKS_PER_SEC < 1.0);
    free(buf);
}

static void test_link(void **state)
{
    (void)state;
    sb_msg_t m = decode_ok("{\"type\":\"link\",\"peer\":\"" SID_A "\",\"state\":\"up\"}");
    assert_int_equal(m.type, SB_MSG_LINK);
    assert_string_equal(m.peer, SID_A);
    assert_int_equal(m.up, 1);
    sb_msg_free(&m);
    m = decode_ok("{\"type\":\"link\",\"peer\":\"" SID_A "\",\"state\":\"down\"}");
    assert_int_equal(m.up, 0);
    sb_msg_free(&m);
}

static void test_simple_types(void **state)
{
    (void)state;
    const struct {
        const char *text;
        sb_msg_type_t type;
    } cases[] = {
        {"{\"type\":\"leave\"}", SB_MSG_LEAVE},
        {"{\"type\":\"ice-servers\"}", SB_MSG_ICE_SERVERS},
        {"{\"type\":\"ping\"}", SB_MSG_PING},
        {" \t\r\n{ \"type\" : \"ping\" , \"ignored\" : {\"deep\":[true]} } \n", SB_MSG_PING},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_msg_t m = decode_ok(cases[i].text);
        assert_int_equal(m.type, cases[i].type);
        sb_msg_free(&m);
    }
    assert_string_equal(sb_msg_type_names[SB_MSG_ICE_SERVERS], "ice-servers");
    assert_string_equal(sb_msg_type_names[SB_MSG_UNKNOWN], "unknown");
}

static void test_resume(void **state)
{
    (void)state;
    sb_msg_t m = decode_ok("{\"type\":\"resume\",\"id\":\"" SID_A "\",\"room\":\"r\","
                           "\"resume\":\"tok\",\"token\":\"jwt\",\"rid\":7}");
    assert_int_equal(m.type, SB_MSG_RESUME);
    assert_string_equal(m.sid, SID_A);
    assert_string_equal(m.room, "r");
    assert_string_equal(m.resume, "tok");
    assert_string_equal(m.token, "jwt");
    sb_msg_free(&m);
    m = decode_ok("{\"type\":\"resume\",\"id\":\"x\",\"room\":\"r\",\"resume\":\"t\"}");
    assert_null(m.token); /* a bad id is refused later, as resume-failed "unknown" */
    sb_msg_free(&m);
    assert_string_equal(sb_msg_type_names[SB_MSG_RESUME], "resume");
    decode_err("{\"type\":\"resume\",\"room\":\"r\",\"resume\":\"t\"}", "bad-message");
    decode_err("{\"type\":\"resume\",\"id\":\"" SID_A "\",\"room\":\"r\"}", "bad-message");
    decode_err("{\"type\":\"resume\",\"id\":\"" SID_A "\",\"room\":\"r\",\"resume\":1}",
               "bad-message");
    decode_err("{\"type\":\"resume\",\"id\":\"" SID_A "\",\"room\":\"r\",\"resume\":\"t\","
               "\"token\":5}",
               "bad-message");
}

static void test_valid_rids(void **state)
{
    (void)state;
    sb_msg_t m = decode_ok("{\"type\":\"ping\",\"rid\":0}");
    assert_int_equal(json_integer_value(m.rid), 0);
    sb_msg_free(&m);
    m = decode_ok("{\"type\":\"ping\",\"rid\":9007199254740991}");
    assert_int_equal(json_integer_value(m.rid), 9007199254740991LL);
    sb_msg_free(&m);
    m = decode_ok("{\"type\":\"ping\",\"rid\":\"\"}");
    assert_string_equal(json_string_value(m.rid), "");
    sb_msg_free(&m);

    char buf[512];
    char rid[65];
    memset(rid, 'r', 64);
    rid[64] = '\0';
    snprintf(buf, sizeof buf, "{\"type\":\"ping\",\"rid\":\"%s\"}", rid);
    m = decode_ok(buf);
    assert_string_equal(json_string_value(m.rid), rid);
    sb_msg_free(&m);
    /* 64 characters of two bytes each: the limit counts characters. */
    char wide[129] = "";
    for (int i = 0; i < 64; i++)
        strcat(wide, "\xc3\xa9");
    snprintf(buf, sizeof buf, "{\"type\":\"ping\",\"rid\":\"%s\"}", wide);
    m = decode_ok(buf);
    sb_msg_free(&m);
}

static void test_bad_json(void **state)
{
    (void)state;
    decode_err("", "bad-json");
    decode_err("{", "bad-json");
    decode_err("{\"type\":\"ping\"", "bad-json");
    decode_err("{\"type\":\"ping\",}", "bad-json");
    decode_err("{'type':'ping'}", "bad-json");
    decode_err("{\"type\":\"ping\"} {}", "bad-json");
    decode_err("\"ping\"", "bad-json"); /* only an object or array parses at the top */
    decode_err("42", "bad-json");
    decode_err("{\"type\":\"ping\",\"n\":1e999}", "bad-json");
    decode_err("{\"type\":\"ping\",\"n\":99999999999999999999}", "bad-json");
    /* Duplicate keys, at the top and inside. */
    decode_err("{\"type\":\"ping\",\"type\":\"ping\"}", "bad-json");
    decode_err("{\"type\":\"ping\",\"rid\":1,\"rid\":2}", "bad-json");
    decode_err("{\"type\":\"join\",\"room\":\"r\",\"meta\":{\"a\":1,\"a\":2}}", "bad-json");
}

static void test_bad_json_nul(void **state)
{
    (void)state;
    /* An escaped NUL would cut C strings short: refused wherever it is. */
    decode_err("{\"type\":\"ping\",\"x\":\"a\\u0000b\"}", "bad-json");
    decode_err("{\"type\":\"join\",\"room\":\"lob\\u0000by\"}", "bad-json");
    decode_err("{\"type\\u0000\":\"ping\"}", "bad-json");
    /* A raw NUL byte inside the frame. */
    const char raw[] = "{\"type\":\"ping\",\"x\":\"a\0b\"}";
    json_t *rid = decode_err_n(raw, sizeof raw - 1, "bad-json");
    assert_null(rid);
}

static void test_bad_json_utf8(void **state)
{
    (void)state;
    decode_err("{\"type\":\"ping\",\"x\":\"\xff\"}", "bad-json");
    decode_err("{\"type\":\"ping\",\"x\":\"\xc3\"}", "bad-json");         /* truncated */
    decode_err("{\"type\":\"ping\",\"x\":\"\xc0\xaf\"}", "bad-json");     /* overlong '/' */
    decode_err("{\"type\":\"ping\",\"x\":\"\xed\xa0\x80\"}", "bad-json"); /* raw surrogate */
    decode_err("{\"type\":\"ping\",\"x\":\"\\ud800\"}", "bad-json");      /* lone surrogate */
    decode_err("{\"type\":\"ping\",\"\xfe\":1}", "bad-json");
    decode_err("\xef\xbb\xbf{\"type\":\"ping\"}", "bad-json"); /* a BOM is not JSON */
    /* Jansson quotes the input near an error, here a cut UTF-8 sequence: the error frame must
     * still carry a message (check_error_frame), so it is made printable ASCII. */
    decode_err("{\"ty\\u000\xc7\x8f\x9a\xdd:\"ice-servers\"}", "bad-json");
    decode_err("{\"type\":\"\xc3\xa9\x01\"", "bad-json");
}

static void test_bad_json_deep_nesting(void **state)
{
    (void)state;
    const int depth = 10000;
    const char *head = "{\"type\":\"ping\",\"x\":";
    size_t hl = strlen(head), n = hl + 2 * (size_t)depth + 1;
    char *buf = malloc(n + 1);
    /* Reasonable nesting is fine (so the refusals below are about depth). */
    memcpy(buf, head, hl);
    memset(buf + hl, '[', 100);
    memset(buf + hl + 100, ']', 100);
    strcpy(buf + hl + 200, "}");
    sb_msg_t m = decode_ok(buf);
    sb_msg_free(&m);
    memcpy(buf, head, hl);
    memset(buf + hl, '[', (size_t)depth);
    memset(buf + hl + depth, ']', (size_t)depth);
    buf[n - 1] = '}';
    buf[n] = '\0';
    decode_err(buf, "bad-json");
    free(buf);
    /* The same with objects and arrays alternating, properly closed. */
    const int pairs = depth / 2;
    buf = malloc(hl + (size_t)pairs * 8 + 2);
    char *p = buf + hl;
    memcpy(buf, head, hl);
    for (int i = 0; i < pairs; i++, p += 6)
        memcpy(p, "{\"a\":[", 6);
    for (int i = 0; i < pairs; i++, p += 2)
        memcpy(p, "]}", 2);
    *p++ = '}';
    decode_err_n(buf, (size_t)(p - buf), "bad-json");
    free(buf);
}

static void test_not_nul_terminated(void **state)
{
    (void)state;
    /* The decoder reads exactly len bytes: what follows does not matter. */
    const char text[] = "{\"type\":\"ping\"}GARBAGE";
    sb_msg_t m;
    sb_proto_err_t e;
    assert_int_equal(sb_proto_decode(text, 15, &m, &e), 0);
    assert_int_equal(m.type, SB_MSG_PING);
    sb_msg_free(&m);
    decode_err_n(text, 14, "bad-json");
}

static void test_bad_message(void **state)
{
    (void)state;
    decode_err("[]", "bad-message");
    decode_err("[{\"type\":\"ping\"}]", "bad-message");
    decode_err("{}", "bad-message");
    decode_err("{\"type\":5}", "bad-message");
    decode_err("{\"type\":null}", "bad-message");
    decode_err("{\"type\":[\"ping\"]}", "bad-message");
    decode_err("{\"Type\":\"ping\"}", "bad-message");
    /* join */
    decode_err("{\"type\":\"join\"}", "bad-message");
    decode_err("{\"type\":\"join\",\"room\":5}", "bad-message");
    decode_err("{\"type\":\"join\",\"room\":null}", "bad-message");
    decode_err("{\"type\":\"join\",\"room\":\"r\",\"meta\":[]}", "bad-message");
    decode_err("{\"type\":\"join\",\"room\":\"r\",\"meta\":\"m\"}", "bad-message");
    decode_err("{\"type\":\"join\",\"room\":\"r\",\"token\":5}", "bad-message");
    decode_err("{\"type\":\"join\",\"room\":\"r\",\"token\":{}}", "bad-message");
    /* signal */
    decode_err("{\"type\":\"signal\",\"data\":{}}", "bad-message");
    decode_err("{\"type\":\"signal\",\"to\":\"" SID_A "\"}", "bad-message");
    decode_err("{\"type\":\"signal\",\"to\":5,\"data\":{}}", "bad-message");
    /* link */
    decode_err("{\"type\":\"link\",\"state\":\"up\"}", "bad-message");
    decode_err("{\"type\":\"link\",\"peer\":\"" SID_A "\"}", "bad-message");
    decode_err("{\"type\":\"link\",\"peer\":\"" SID_A "\",\"state\":\"UP\"}", "bad-message");
    decode_err("{\"type\":\"link\",\"peer\":\"" SID_A "\",\"state\":true}", "bad-message");
    decode_err("{\"type\":\"link\",\"peer\":[],\"state\":\"up\"}", "bad-message");
}

static void test_bad_rids(void **state)
{
    (void)state;
    char rid65[66], buf[256];
    memset(rid65, 'r', 65);
    rid65[65] = '\0';
    snprintf(buf, sizeof buf, "{\"type\":\"ping\",\"rid\":\"%s\"}", rid65);
    decode_err(buf, "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":-1}", "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":9007199254740992}", "bad-message"); /* 2^53 */
    decode_err("{\"type\":\"ping\",\"rid\":1.0}", "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":1.5}", "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":1e3}", "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":{}}", "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":[1]}", "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":true}", "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":null}", "bad-message");
    /* An invalid rid is not echoed, even with an unknown type. */
    decode_err("{\"type\":\"dance\",\"rid\":-1}", "bad-message");
}

static void test_rid_echoed_on_errors(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"dance\",\"rid\":\"abc\"}";
    json_t *rid = decode_err_n(s, strlen(s), "unknown-type");
    assert_string_equal(json_string_value(rid), "abc");
    json_decref(rid);

    s = "{\"rid\":7}";
    rid = decode_err_n(s, strlen(s), "bad-message");
    assert_int_equal(json_integer_value(rid), 7);
    json_decref(rid);

    s = "{\"type\":\"join\",\"rid\":8}";
    rid = decode_err_n(s, strlen(s), "bad-message");
    assert_int_equal(json_integer_value(rid), 8);
    json_decref(rid);

    s = "{\"type\":\"join\",\"room\":\"no spaces\",\"rid\":\"r\"}";
    rid = decode_err_n(s, strlen(s), "bad-room");
    assert_string_equal(json_string_value(rid), "r");
    json_decref(rid);

    s = "{\"type\":\"signal\",\"to\":\"short\",\"data\":1,\"rid\":9}";
    rid = decode_err_n(s, strlen(s), "peer-not-found");
    assert_int_equal(json_integer_value(rid), 9);
    json_decref(rid);
}

static void test_unknown_type(void **state)
{
    (void)state;
    decode_err("{\"type\":\"dance\"}", "unknown-type");
    decode_err("{\"type\":\"\"}", "unknown-type");
    decode_err("{\"type\":\"PING\"}", "unknown-type");
    decode_err("{\"type\":\"unknown\"}", "unknown-type");
    decode_err("{\"type\":\"ping \"}", "unknown-type");
}

static void test_bad_room(void **state)
{
    (void)state;
    char room65[66], buf[256];
    memset(room65, 'a', 65);
    room65[65] = '\0';
    snprintf(buf, sizeof buf, "{\"type\":\"join\",\"room\":\"%s\"}", room65);
    decode_err(buf, "bad-room");
    room65[64] = '\0';
    snprintf(buf, sizeof buf, "{\"type\":\"join\",\"room\":\"%s\"}", room65);
    sb_msg_t m = decode_ok(buf);
    sb_msg_free(&m);
    const char *bad[] = {"", "a b", "a/b", "../x", "r:1", "{r}", "caf\xc3\xa9", "a\\tb"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(buf, sizeof buf, "{\"type\":\"join\",\"room\":\"%s\"}", bad[i]);
        decode_err(buf, "bad-room");
    }
}

/* A join whose meta {"k":"xxx..."} serializes to exactly n bytes. */
static char *join_with_meta(size_t n)
{
    size_t fill = n - strlen("{\"k\":\"\"}");
    char *buf = malloc(fill + 64);
    int off = sprintf(buf, "{\"type\":\"join\",\"room\":\"r\",\"meta\":{\"k\":\"");
    memset(buf + off, 'x', fill);
    strcpy(buf + off + fill, "\"}}");
    return buf;
}

static void test_meta_size(void **state)
{
    (void)state;
    char *s = join_with_meta(SB_META_MAX);
    sb_msg_t m = decode_ok(s);
    char *dumped = json_dumps(m.meta, JSON_COMPACT);
    assert_int_equal(strlen(dumped), SB_META_MAX);
    free(dumped);
    sb_msg_free(&m);
    free(s);
    s = join_with_meta(SB_META_MAX + 1);
    decode_err(s, "bad-message");
    free(s);
    /* Counted serialized, not as sent: padding whitespace does not count against it. */
    char buf[4096];
    int off = sprintf(buf, "{\"type\":\"join\",\"room\":\"r\",\"meta\":{");
    memset(buf + off, ' ', 2000);
    strcpy(buf + off + 2000, "\"a\":1}}");
    m = decode_ok(buf);
    sb_msg_free(&m);
}

static void test_peer_not_found(void **state)
{
    (void)state;
    decode_err("{\"type\":\"signal\",\"to\":\"short\",\"data\":1}", "peer-not-found");
    decode_err("{\"type\":\"signal\",\"to\":\"AAAAAAAAAAAAAAAAAAAAA!\",\"data\":1}",
               "peer-not-found");
    decode_err("{\"type\":\"link\",\"peer\":\"\",\"state\":\"up\"}", "peer-not-found");
    decode_err("{\"type\":\"link\",\"peer\":\"AAAAAAAAAAA AAAAAAAAAA\",\"state\":\"down\"}",
               "peer-not-found");
    char peer65[66], buf[256];
    memset(peer65, 'A', 65);
    peer65[65] = '\0';
    snprintf(buf, sizeof buf, "{\"type\":\"link\",\"peer\":\"%s\",\"state\":\"up\"}", peer65);
    decode_err(buf, "peer-not-found");
}

static void test_valid_room_and_sid(void **state)
{
    (void)state;
    assert_true(sb_valid_room("a"));
    assert_true(sb_valid_room("A.z_0-9"));
    assert_false(sb_valid_room(""));
    assert_false(sb_valid_room("a:b"));
    assert_true(sb_valid_sid(SID_A));
    assert_true(sb_valid_sid("abcdefghijklmnopqrstu-_"));
    assert_false(sb_valid_sid("AAAAAAAAAAAAAAAAAAAAA"));  /* 21 */
    assert_false(sb_valid_sid("AAAAAAAAAAAAAAAAAAAAA.")); /* '.' is not base64url */
    char s64[66];
    memset(s64, 'x', 65);
    s64[64] = '\0';
    assert_true(sb_valid_sid(s64));
    s64[64] = 'x';
    s64[65] = '\0';
    assert_false(sb_valid_sid(s64));
    /* every byte, against the charsets spelled out (the validators use a table) */
    for (int c = 1; c < 256; c++) {
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        char room[4] = {'a', (char)c, 'b', '\0'}, sid[24];
        memset(sid, 'A', 22);
        sid[11] = (char)c;
        sid[22] = '\0';
        assert_int_equal(sb_valid_room(room), alnum || c == '.' || c == '_' || c == '-');
        assert_int_equal(sb_valid_sid(sid), alnum || c == '_' || c == '-');
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_new_sid(void **state)
{
    (void)state;
    enum { N = 1000 };
    static char ids[N][SB_SID_MAX + 1];
    for (int i = 0; i < N; i++) {
        assert_int_equal(sb_proto_new_sid(ids[i], sizeof ids[i]), 0);
        size_t len = strlen(ids[i]);
        assert_int_equal(len, 22);
        for (size_t j = 0; j < len; j++) {
            char c = ids[i][j];
            assert_true((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                        (c >= '0' && c <= '9') || c == '-' || c == '_');
        }
        assert_true(sb_valid_sid(ids[i]));
    }
    qsort(ids, N, sizeof ids[0], cmp_str);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    /* The header's minimum buffer is 23 bytes; less is refused. */
    char small[23];
    assert_int_equal(sb_proto_new_sid(small, sizeof small), 0);
    assert_int_equal(strlen(small), 22);
    assert_int_equal(sb_proto_new_sid(small, 22), -1);
}

static void test_new_sid_uses_all_characters(void **state)
{
    (void)state;
    /* Over 1000 ids every one of the 64 characters shows up in the first 21 positions (the
     * 22nd carries 2 bits): a constant or truncated alphabet would not. */
    int seen[256] = {0};
    char id[SB_SID_MAX + 1];
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(sb_proto_new_sid(id, sizeof id), 0);
        for (int j = 0; j < 21; j++)
            seen[(unsigned char)id[j]] = 1;
    }
    int distinct = 0;
    for (int c = 0; c < 256; c++)
        distinct += seen[c];
    assert_int_equal(distinct, 64);
}

static void test_encode(void **state)
{
    (void)state;
    size_t len = 0;
    json_t *o = json_pack("{s:s, s:[i, s]}", "type", "pong", "x", 1, "\xc3\xa9");
    char *s = sb_proto_encode(o, &len); /* steals o */
    assert_string_equal(s, "{\"type\":\"pong\",\"x\":[1,\"\xc3\xa9\"]}");
    assert_int_equal(len, strlen(s));
    free(s);
    s = sb_proto_encode(json_object(), NULL);
    assert_string_equal(s, "{}");
    free(s);
}

static void test_reply(void **state)
{
    (void)state;
    json_t *rid = json_integer(42);
    json_t *r = sb_proto_reply("pong", rid);
    assert_int_equal(json_object_size(r), 2);
    assert_string_equal(json_string_value(json_object_get(r, "type")), "pong");
    assert_ptr_equal(json_object_get(r, "rid"), rid); /* borrowed: the same value, shared */
    json_decref(r);
    assert_int_equal(json_integer_value(rid), 42); /* still ours */
    json_decref(rid);

    r = sb_proto_reply("signal-ack", NULL);
    assert_int_equal(json_object_size(r), 1);
    json_decref(r);
}

static void test_error_frame(void **state)
{
    (void)state;
    size_t len;
    json_t *rid = json_string("q1");
    char *s = sb_proto_error("room-full", "the room is full", rid, &len);
    assert_string_equal(s, "{\"type\":\"error\",\"rid\":\"q1\",\"code\":\"room-full\",\"message\":"
                           "\"the room is full\"}");
    free(s);
    json_decref(rid);
    s = sb_proto_error("internal", "oops", NULL, &len);
    assert_string_equal(s, "{\"type\":\"error\",\"code\":\"internal\",\"message\":\"oops\"}");
    free(s);
}

/* signal, ping and link in their common shapes are decoded without a tree; outside the subset
 * the tree decodes them, with the same result (decode_ok_n compares the two every time). */
static void test_hot_path(void **state)
{
    (void)state;
    const char *fast[] = {
        "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":{\"type\":\"offer\",\"sdp\":\"v=0\\r\\n"
        "o=- 1 2 IN IP4 127.0.0.1\\r\\n\"}}",
        "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":{\"candidate\":\"candidate:1 1 udp "
        "2122260223 10.0.0.1 5000 typ host\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0}}",
        " {\"data\" : [ true, false, null, -0, 0.5, -12.25, \"\\\"\\\\\\/\\b\\f\\n\\r\\t\", {}, [] "
        "],"
        " \"to\" : \"" SID_A "\" , \"rid\" : \"r-1\", \"type\" : \"signal\"}\n",
        "{\"type\":\"signal\",\"rid\":9007199254740991,\"to\":\"" SID_A "\",\"data\":\"x\"}",
        "{\"type\":\"ping\"}",
        "{\"type\":\"ping\",\"rid\":0,\"extra\":{\"a\":[1,{\"b\":null}]}}",
        "{\"type\":\"link\",\"peer\":\"" SID_A "\",\"state\":\"up\",\"rid\":\"\"}",
        "{\"state\":\"down\",\"type\":\"link\",\"peer\":\"" SID_A "\"}",
    };
    for (size_t i = 0; i < sizeof fast / sizeof *fast; i++) {
        int f = 0;
        sb_msg_t m = decode_ok_n(fast[i], strlen(fast[i]), &f);
        if (!f)
            fail_msg("expected the tree-less decoder to take %s", fast[i]);
        sb_msg_free(&m);
    }
    const char *slow[] = {
        /* \u escapes, UTF-8, exponents, long numbers: jansson's to check */
        "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":\"\\u00e9\"}",
        "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":\"\xc3\xa9\"}",
        "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":1e3}",
        "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":1234567890123456789}",
        /* an escaped id, key or rid */
        "{\"type\":\"signal\",\"to\":\"\\u0041AAAAAAAAAAAAAAAAAAAAA\",\"data\":1}",
        "{\"type\":\"ping\",\"r\\u0069d\":1}",
        "{\"type\":\"ping\",\"rid\":\"a\\nb\"}",
        "{\"type\":\"ping\",\"rid\":-0}",
        "{\"t\\u0079pe\":\"ping\"}",
        /* other types */
        "{\"type\":\"leave\"}",
        "{\"type\":\"join\",\"room\":\"r\"}",
    };
    for (size_t i = 0; i < sizeof slow / sizeof *slow; i++) {
        int f = 1;
        sb_msg_t m = decode_ok_n(slow[i], strlen(slow[i]), &f);
        if (f)
            fail_msg("expected the tree decoder to take %s", slow[i]);
        sb_msg_free(&m);
    }
    /* 16 members and 16 levels are the subset's bounds; past them, the tree (same result). */
    char buf[1024];
    for (int members = 15; members <= 17; members++) {
        int n = snprintf(buf, sizeof buf, "{\"type\":\"ping\"");
        for (int i = 1; i < members; i++)
            n += snprintf(buf + n, sizeof buf - (size_t)n, ",\"k%d\":%d", i, i);
        snprintf(buf + n, sizeof buf - (size_t)n, "}");
        int f = 0;
        sb_msg_t m = decode_ok_n(buf, strlen(buf), &f);
        assert_int_equal(f, members <= 16);
        sb_msg_free(&m);
    }
    for (int depth = 14; depth <= 16; depth++) {
        int n = snprintf(buf, sizeof buf, "{\"type\":\"ping\",\"x\":");
        for (int i = 0; i < depth; i++)
            buf[n++] = '[';
        for (int i = 0; i < depth; i++)
            buf[n++] = ']';
        snprintf(buf + n, sizeof buf - (size_t)n, "}");
        int f = 0;
        sb_msg_t m = decode_ok_n(buf, strlen(buf), &f);
        assert_int_equal(f, depth <= 15); /* the object is level 1 */
        sb_msg_free(&m);
    }
}

/* The tree-less decoder skips plain string bytes eight at a time: a byte it must look at (a
 * control character, UTF-8, an escape) is seen at every position of a long string. */
static void test_hot_string_every_position(void **state)
{
    (void)state;
    for (int pos = 0; pos < 24; pos++) {
        char text[32], frame[128];
        memset(text, 'y', 26);
        text[26] = '\0';
        /* a tab: jansson refuses it, and so must the fast path */
        text[pos] = '\t';
        snprintf(frame, sizeof frame, "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":\"%s\"}",
                 text);
        decode_err(frame, "bad-json");
        /* UTF-8: jansson's to check (the tree decoder takes it) */
        memcpy(text + pos, "\xc3\xa9", 2);
        snprintf(frame, sizeof frame, "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":\"%s\"}",
                 text);
        int f = 1;
        sb_msg_t m = decode_ok_n(frame, strlen(frame), &f);
        assert_int_equal(f, 0);
        sb_msg_free(&m);
        /* an escaped quote: the string goes on past it, without a tree */
        memcpy(text + pos, "\\\"", 2);
        snprintf(frame, sizeof frame, "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":\"%s\"}",
                 text);
        f = 0;
        m = decode_ok_n(frame, strlen(frame), &f);
        assert_int_equal(f, 1);
        assert_int_equal(m.data_raw_len, 28);
        sb_msg_free(&m);
    }
}

/* What the subset looks like but jansson refuses is refused, with jansson's error. */
static void test_hot_path_refusals(void **state)
{
    (void)state;
    const char *bad_json[] = {
        "{\"type\":\"signal\",\"to\":\"" SID_A "\",\"data\":{\"a\":1,\"a\":2}}",
        "{\"type\":\"ping\",\"type\":\"ping\"}",
        "{\"type\":\"ping\"} x",
        "{\"type\":\"ping\",}",
        "{\"type\":\"ping\",\"x\":[1,]}",
        "{\"type\":\"ping\",\"x\":01}",
        "{\"type\":\"ping\",\"x\":-}",
        "{\"type\":\"ping\",\"x\":1.}",
        "{\"type\":\"ping\",\"x\":.5}",
        "{\"type\":\"ping\",\"x\":\"a\tb\"}",
        "{\"type\":\"ping\",\"x\":\"\\x\"}",
        "{\"type\":\"ping\",\"x\":tru}",
        "{\"type\":\"ping\" \"x\":1}",
    };
    for (size_t i = 0; i < sizeof bad_json / sizeof *bad_json; i++)
        decode_err(bad_json[i], "bad-json");
    decode_err("{\"type\":\"signal\",\"to\":\"short\",\"data\":1}", "peer-not-found");
    decode_err("{\"type\":\"signal\",\"to\":\"" SID_A "\"}", "bad-message");
    decode_err("{\"type\":\"link\",\"peer\":\"" SID_A "\",\"state\":\"sideways\"}", "bad-message");
    const char *to_not_string = "{\"type\":\"signal\",\"rid\":7,\"to\":1,\"data\":1}";
    json_t *rid = decode_err_n(to_not_string, strlen(to_not_string), "bad-message");
    assert_int_equal(json_integer_value(rid), 7);
    json_decref(rid);
    decode_err("{\"type\":\"ping\",\"rid\":9007199254740992}", "bad-message");
    decode_err("{\"type\":\"ping\",\"rid\":1.0}", "bad-message");
}

/* Replies built as text are byte for byte jansson's; rids that need escaping are left to it. */
static void test_reply_text(void **state)
{
    (void)state;
    json_t *rids[] = {NULL,
                      json_integer(0),
                      json_integer(42),
                      json_integer(9007199254740991LL),
                      json_string(""),
                      json_string("abc"),
                      json_string("a/b c~")};
    for (size_t i = 0; i < sizeof rids / sizeof *rids; i++) {
        char out[256];
        size_t len = sb_proto_reply_text(out, sizeof out, "signal-ack", rids[i]);
        size_t jl = 0;
        char *j = sb_proto_encode(sb_proto_reply("signal-ack", rids[i]), &jl);
        assert_int_equal(len, jl);
        assert_string_equal(out, j);
        free(j);
        /* too small a buffer: 0, never a cut frame */
        assert_int_equal(sb_proto_reply_text(out, len, "signal-ack", rids[i]), 0);
        assert_int_equal(sb_proto_reply_text(out, len + 1, "signal-ack", rids[i]), len);
        if (rids[i])
            json_decref(rids[i]);
    }
    const char *escaped[] = {"a\"b", "a\\b", "\n", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof escaped / sizeof *escaped; i++) {
        char out[256];
        json_t *rid = json_string(escaped[i]);
        assert_int_equal(sb_proto_reply_text(out, sizeof out, "pong", rid), 0);
        json_decref(rid);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_join),
        cmocka_unit_test(test_signal),
        cmocka_unit_test(test_signal_raw_data),
        cmocka_unit_test(test_member_span_never_overreads),
        cmocka_unit_test(test_member_spans_agree_with_member_span),
        cmocka_unit_test(test_member_span_escapes_linear),
        cmocka_unit_test(test_hot_string_every_position),
        cmocka_unit_test(test_link),
        cmocka_unit_test(test_simple_types),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_valid_rids),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_json_nul),
        cmocka_unit_test(test_bad_json_utf8),
        cmocka_unit_test(test_bad_json_deep_nesting),
        cmocka_unit_test(test_not_nul_terminated),
        cmocka_unit_test(test_bad_message),
        cmocka_unit_test(test_bad_rids),
        cmocka_unit_test(test_rid_echoed_on_errors),
        cmocka_unit_test(test_unknown_type),
        cmocka_unit_test(test_bad_room),
        cmocka_unit_test(test_meta_size),
        cmocka_unit_test(test_peer_not_found),
        cmocka_unit_test(test_valid_room_and_sid),
        cmocka_unit_test(test_new_sid),
        cmocka_unit_test(test_new_sid_uses_all_characters),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_reply),
        cmocka_unit_test(test_error_frame),
        cmocka_unit_test(test_hot_path),
        cmocka_unit_test(test_hot_path_refusals),
        cmocka_unit_test(test_reply_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
