/* Unit tests for node/peerjs.c: PeerJS ids and keys, decoding a client's message (payload as
 * the client's bytes, dst checked, connection id), the frames we build, the connection ids a
 * socket saw, UUIDs and the HTTP routes under the PeerJS path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peerjs.h"

static void test_ids(void **state)
{
    (void)state;
    const char *good[] = {"a", "alice", "Al1ce", "a-b", "a_b", "a-b_c-d", "0", "x9-y8_z7"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(sb_pj_valid_id(good[i]));
    char max[SB_PJ_ID_MAX + 2];
    memset(max, 'x', SB_PJ_ID_MAX);
    max[SB_PJ_ID_MAX] = '\0';
    assert_true(sb_pj_valid_id(max));
    max[SB_PJ_ID_MAX] = 'x';
    max[SB_PJ_ID_MAX + 1] = '\0';
    assert_false(sb_pj_valid_id(max));
    /* peer allows a space inside; we do not (index entries are space-separated) */
    const char *bad[] = {"",     "a b", "-a",  "a-", "_a",  "a_",  "a--b",
                         "a-_b", "a.b", "a~b", "é",  "a:b", "a\"", NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(sb_pj_valid_id(bad[i]));
}

static void test_keys_and_rooms(void **state)
{
    (void)state;
    assert_true(sb_pj_valid_key("peerjs"));
    assert_true(sb_pj_valid_key("a.b_c-D9"));
    assert_false(sb_pj_valid_key(""));
    assert_false(sb_pj_valid_key("a b"));
    assert_false(sb_pj_valid_key("a~b"));
    assert_false(sb_pj_valid_key("k23456789012345678901234567890123")); /* 33 */
    assert_true(sb_pj_valid_key("k2345678901234567890123456789012"));   /* 32 */
    char room[64];
    assert_int_equal(sb_pj_room(room, sizeof room, "peerjs"), 10);
    assert_string_equal(room, "~pj.peerjs");
    assert_true(sb_pj_is_room(room));
    assert_int_equal(sb_pj_room(room, 8, "peerjs"), -1);
    assert_int_equal(sb_pj_room(room, sizeof room, "bad key"), -1);
    assert_false(sb_pj_is_room("peerjs"));
    assert_false(sb_pj_is_room("~pj."));
    assert_false(sb_pj_is_room("~pj.a b"));
}

static void test_decode(void **state)
{
    (void)state;
    sb_pj_msg_t m;
    const char *in = "{\"type\":\"OFFER\",\"src\":\"forged\",\"dst\":\"bob\",\"x\":1,"
                     "\"payload\": {\"connectionId\":\"dc_1\",\"n\":1.50, \"s\":\"\\u00e9\"}}";
    assert_int_equal(sb_pj_decode(in, strlen(in), &m), 0);
    assert_int_equal(m.type, SB_PJ_OFFER);
    assert_string_equal(m.tname, "OFFER");
    assert_string_equal(m.dst, "bob");
    assert_false(m.bad_dst);
    /* the client's own bytes: 1.50 and the escape kept, the space inside kept */
    assert_string_equal(m.payload, "{\"connectionId\":\"dc_1\",\"n\":1.50, \"s\":\"\\u00e9\"}");
    assert_int_equal(m.plen, strlen(m.payload));
    assert_string_equal(m.conn, "dc_1");
    sb_pj_msg_free(&m);

    const char *hb = "{\"type\":\"HEARTBEAT\",\"payload\":{}}";
    assert_int_equal(sb_pj_decode(hb, strlen(hb), &m), 0);
    assert_int_equal(m.type, SB_PJ_HEARTBEAT);
    assert_null(m.payload);
    sb_pj_msg_free(&m);

    const char *leave = "{\"type\":\"LEAVE\"}";
    assert_int_equal(sb_pj_decode(leave, strlen(leave), &m), 0);
    assert_int_equal(m.type, SB_PJ_LEAVE);
    assert_string_equal(m.dst, "");
    assert_false(m.bad_dst);
    assert_null(m.payload);
    sb_pj_msg_free(&m);

    const char *other = "{\"type\":\"SOMETHING\",\"dst\":\"bob\",\"payload\":1}";
    assert_int_equal(sb_pj_decode(other, strlen(other), &m), 0);
    assert_int_equal(m.type, SB_PJ_OTHER);
    assert_null(m.payload);
    sb_pj_msg_free(&m);

    const char *bad_dst[] = {"{\"type\":\"OFFER\",\"dst\":\"a b\"}",
                             "{\"type\":\"OFFER\",\"dst\":7}", "{\"type\":\"OFFER\",\"dst\":\"\"}"};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(sb_pj_decode(bad_dst[i], strlen(bad_dst[i]), &m), 0);
        assert_true(m.bad_dst);
        assert_string_equal(m.dst, "");
        sb_pj_msg_free(&m);
    }
    /* a key spelled with an escape: the payload is re-encoded from the tree */
    const char *esc = "{\"type\":\"ANSWER\",\"dst\":\"b\",\"p\\u0061yload\":{\"a\": 1}}";
    assert_int_equal(sb_pj_decode(esc, strlen(esc), &m), 0);
    assert_string_equal(m.payload, "{\"a\":1}");
    sb_pj_msg_free(&m);
    /* a long connection id is not tracked */
    char big[300];
    snprintf(big, sizeof big,
             "{\"type\":\"OFFER\",\"dst\":\"b\",\"payload\":{\"connectionId\":\"%0100d\"}}", 7);
    assert_int_equal(sb_pj_decode(big, strlen(big), &m), 0);
    assert_string_equal(m.conn, "");
    sb_pj_msg_free(&m);

    const char *junk[] = {"",
                          "{",
                          "[]",
                          "\"OFFER\"",
                          "{\"type\":1}",
                          "{\"dst\":\"b\"}",
                          "{\"type\":\"OFFER\",\"type\":\"ANSWER\"}",
                          "{\"type\":\"OFFER\"} x"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        assert_int_equal(sb_pj_decode(junk[i], strlen(junk[i]), &m), -1);
}

static void test_frames(void **state)
{
    (void)state;
    size_t len;
    char *f = sb_pj_frame("OFFER", "alice", "bob", "{\"x\":1}", 7, &len);
    assert_string_equal(
        f, "{\"type\":\"OFFER\",\"src\":\"alice\",\"dst\":\"bob\",\"payload\":{\"x\":1}}");
    assert_int_equal(len, strlen(f));
    sb_pj_type_t t;
    char conn[SB_PJ_CONNID_MAX + 1];
    sb_pj_frame_info(f, len, &t, conn);
    assert_int_equal(t, SB_PJ_OFFER);
    assert_string_equal(conn, "");
    free(f);
    f = sb_pj_frame("EXPIRE", "ghost", "alice", NULL, 0, &len);
    assert_string_equal(f, "{\"type\":\"EXPIRE\",\"src\":\"ghost\",\"dst\":\"alice\"}");
    sb_pj_frame_info(f, len, &t, conn);
    assert_int_equal(t, SB_PJ_EXPIRE);
    free(f);
    const char *ans = "{\"type\":\"ANSWER\",\"src\":\"b\",\"dst\":\"a\",\"payload\":"
                      "{\"sdp\":{},\"connectionId\":\"mc_77\"}}";
    sb_pj_frame_info(ans, strlen(ans), &t, conn);
    assert_int_equal(t, SB_PJ_ANSWER);
    assert_string_equal(conn, "mc_77");
}

static void test_connection_ids(void **state)
{
    (void)state;
    sb_pj_t *p = calloc(1, sizeof *p);
    assert_non_null(p);
    sb_pj_conn_add(p, SB_PJ_SENT_OFFER, "bob", "dc_1");
    sb_pj_conn_add(p, SB_PJ_GOT_OFFER, "carol", "dc_2");
    sb_pj_conn_add(p, SB_PJ_SENT_OFFER, "bob", ""); /* none: not kept */
    assert_true(sb_pj_conn_has(p, SB_PJ_SENT_OFFER, "bob", "dc_1"));
    assert_false(sb_pj_conn_has(p, SB_PJ_GOT_OFFER, "bob", "dc_1"));
    assert_false(sb_pj_conn_has(p, SB_PJ_SENT_OFFER, "carol", "dc_1"));
    assert_false(sb_pj_conn_has(p, SB_PJ_SENT_OFFER, "bob", ""));
    assert_true(sb_pj_conn_has(p, SB_PJ_GOT_OFFER, "carol", "dc_2"));
    sb_pj_conn_forget(p, "bob");
    assert_false(sb_pj_conn_has(p, SB_PJ_SENT_OFFER, "bob", "dc_1"));
    assert_true(sb_pj_conn_has(p, SB_PJ_GOT_OFFER, "carol", "dc_2"));
    /* a ring: the oldest go first */
    char conn[16];
    for (int i = 0; i < SB_PJ_CONNS + 5; i++) {
        snprintf(conn, sizeof conn, "c%d", i);
        sb_pj_conn_add(p, SB_PJ_SENT_OFFER, "dave", conn);
    }
    assert_false(sb_pj_conn_has(p, SB_PJ_SENT_OFFER, "dave", "c0"));
    assert_false(sb_pj_conn_has(p, SB_PJ_GOT_OFFER, "carol", "dc_2"));
    snprintf(conn, sizeof conn, "c%d", SB_PJ_CONNS + 4);
    assert_true(sb_pj_conn_has(p, SB_PJ_SENT_OFFER, "dave", conn));
    assert_int_equal(p->nconns, SB_PJ_CONNS);
    sb_pj_free(p);
}

static void test_uuid(void **state)
{
    (void)state;
    char a[40], b[40];
    assert_int_equal(sb_pj_uuid(a), 0);
    assert_int_equal(sb_pj_uuid(b), 0);
    assert_int_equal(strlen(a), 36);
    assert_string_not_equal(a, b);
    assert_true(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-');
    assert_int_equal(a[14], '4');
    assert_non_null(strchr("89ab", a[19]));
}

static void test_http_routes(void **state)
{
    (void)state;
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjs"), SB_PJ_HTTP_ROOT);
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjs/"), SB_PJ_HTTP_ROOT);
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjs/peerjs"), SB_PJ_HTTP_WS);
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjs/k/id"), SB_PJ_HTTP_ID);
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjs/anykey/peers"), SB_PJ_HTTP_PEERS);
    assert_int_equal(sb_pj_http_route("/a/b", "/a/b/peerjs/id"), SB_PJ_HTTP_ID);
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjsx"), SB_PJ_HTTP_NONE);
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjs//id"), SB_PJ_HTTP_NONE);
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjs/a/b/id"), SB_PJ_HTTP_NONE);
    assert_int_equal(sb_pj_http_route("/peerjs", "/peerjs/k/nope"), SB_PJ_HTTP_NONE);
    assert_int_equal(sb_pj_http_route("/peerjs", "/ws"), SB_PJ_HTTP_NONE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_keys_and_rooms),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_frames),
        cmocka_unit_test(test_connection_ids),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_http_routes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
