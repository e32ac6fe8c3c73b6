/* Fuzzes the PeerJS wire protocol (node/peerjs.c) with what a PeerJS client may send: decoding
 * never reads out of bounds; a decoded message's dst is valid or empty; its payload is the
 * client's JSON text (it parses, and equals the tree's payload); the frame built from it parses
 * back to type, src, dst and that payload, and tells the same type and connection id; the id
 * check agrees with a plain model of ^[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*$ of 1..64. */
#include "fuzz.h"
#include "peerjs.h"

#include <jansson.h>
#include <string.h>

static int alnum(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* The id rule as a small state machine: runs of alphanumerics joined by single separators. */
static int model_id(const char *s, size_t n)
{
    if (n < 1 || n > SB_PJ_ID_MAX)
        return 0;
    int need_alnum = 1;
    for (size_t i = 0; i < n; i++) {
        if (alnum(s[i]))
            need_alnum = 0;
        else if ((s[i] == '_' || s[i] == '-') && !need_alnum)
            need_alnum = 1;
        else
            return 0;
    }
    return !need_alnum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    char id[SB_PJ_ID_MAX + 2];
    if (size <= SB_PJ_ID_MAX + 1 && !memchr(data, 0, size)) {
        memcpy(id, data, size);
        id[size] = '\0';
        FUZZ_CHECK(sb_pj_valid_id(id) == model_id(id, size));
    }
    sb_pj_msg_t m;
    if (sb_pj_decode(buf, size, &m) != 0)
        return 0;
    FUZZ_CHECK(m.dst[0] == '\0' || sb_pj_valid_id(m.dst));
    FUZZ_CHECK(!m.bad_dst || m.dst[0] == '\0');
    json_t *tree = json_loadb(buf, size, JSON_REJECT_DUPLICATES, NULL);
    FUZZ_CHECK(tree != NULL);
    if (m.payload) {
        FUZZ_CHECK(m.type != SB_PJ_OTHER && m.type != SB_PJ_HEARTBEAT);
        FUZZ_CHECK(strlen(m.payload) == m.plen || memchr(m.payload, 0, m.plen));
        json_t *p = json_loadb(m.payload, m.plen, JSON_DECODE_ANY, NULL);
        FUZZ_CHECK(p != NULL && json_equal(p, json_object_get(tree, "payload")));
        json_decref(p);
    }
    if (m.tname && m.dst[0]) {
        size_t flen;
        char *f = sb_pj_frame(m.tname, "src-1", m.dst, m.payload, m.plen, &flen);
        FUZZ_CHECK(f != NULL);
        json_t *o = json_loadb(f, flen, JSON_REJECT_DUPLICATES, NULL);
        FUZZ_CHECK(o != NULL);
        FUZZ_CHECK(strcmp(json_string_value(json_object_get(o, "type")), m.tname) == 0);
        FUZZ_CHECK(strcmp(json_string_value(json_object_get(o, "src")), "src-1") == 0);
        FUZZ_CHECK(strcmp(json_string_value(json_object_get(o, "dst")), m.dst) == 0);
        FUZZ_CHECK(json_object_size(o) == (m.payload ? 4u : 3u));
        if (m.payload)
            FUZZ_CHECK(json_equal(json_object_get(o, "payload"), json_object_get(tree, "payload")));
        sb_pj_type_t t;
        char conn[SB_PJ_CONNID_MAX + 1];
        sb_pj_frame_info(f, flen, &t, conn);
        FUZZ_CHECK(t == m.type);
        if (m.type == SB_PJ_OFFER || m.type == SB_PJ_ANSWER)
            FUZZ_CHECK(strcmp(conn, m.conn) == 0);
        json_decref(o);
        free(f);
    }
    json_decref(tree);
    sb_pj_msg_free(&m);
    return 0;
}
