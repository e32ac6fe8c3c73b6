/* Unit tests for common/keys.c: every key and channel name, exactly as the scripts build them
 * (each pattern is also looked up in lua/README.md's key schema, so the schema, the scripts'
 * legends and the C names cannot drift apart silently), truncation (-1 when the name does not
 * fit, at the exact boundary), and the room and socket id validators at their edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "slot.h"

#ifndef SB_LUA_README
#error "SB_LUA_README must name lua/README.md (tests/unit/CMakeLists.txt)"
#endif

/* ---- names ------------------------------------------------------------------------------- */

static void test_room_keys(void **state)
{
    (void)state;
    char buf[SB_KEY_MAX];
    assert_int_equal(sb_key_room(buf, sizeof buf, "sb", "demo", "members"), 17);
    assert_string_equal(buf, "sb:{demo}:members");
    assert_int_equal(sb_key_room(buf, sizeof buf, "p.x", "a-b_c.d", "presence:S1"),
                     (int)strlen("p.x:{a-b_c.d}:presence:S1"));
    assert_string_equal(buf, "p.x:{a-b_c.d}:presence:S1");
    assert_true(sb_key_room(buf, sizeof buf, "sb", "r", "links:S") > 0);
    assert_string_equal(buf, "sb:{r}:links:S");
    /* The counted form takes only room_len bytes of room: the rest (here "xyz") is not part. */
    assert_int_equal(sb_key_room_n(buf, sizeof buf, "sb", "demoxyz", 4, "stats"), 15);
    assert_string_equal(buf, "sb:{demo}:stats");
    /* An empty room builds a name (the validators, not the builders, refuse it). */
    assert_int_equal(sb_key_room_n(buf, sizeof buf, "sb", "", 0, "nodes"), 11);
    assert_string_equal(buf, "sb:{}:nodes");
}

static void test_global_and_node_keys(void **state)
{
    (void)state;
    char buf[SB_KEY_MAX];
    const struct {
        const char *suffix, *want;
    } globals[] = {{"instance", "sb:instance"},
                   {"nodes", "sb:nodes"},
                   {"events", "sb:events"},
                   {"admin:lock", "sb:admin:lock"},
                   {"admin:totals", "sb:admin:totals"},
                   {"admin:last", "sb:admin:last"}};
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
        assert_int_equal(sb_key_global(buf, sizeof buf, "sb", globals[i].suffix),
                         (int)strlen(globals[i].want));
        assert_string_equal(buf, globals[i].want);
    }
    /* Node ids may hold ':' and '.' (--id allows [A-Za-z0-9._:-]). */
    assert_int_equal(sb_key_node_lease(buf, sizeof buf, "sb", "host:8080"), 17);
    assert_string_equal(buf, "sb:node:host:8080");
    assert_int_equal(sb_key_node_sockets(buf, sizeof buf, "sb", "#", "host:8080"), 29);
    assert_string_equal(buf, "sb:{#}:node:host:8080:sockets");
    assert_int_equal(sb_channel_node(buf, sizeof buf, "sb", "#12", "n1"), 16);
    assert_string_equal(buf, "sb:{#12}:node:n1");
    assert_int_equal(sb_key_node_backlog(buf, sizeof buf, "sb", "#12", "n1"), 24);
    assert_string_equal(buf, "sb:{#12}:node:n1:backlog");
}

/* Bucket tags: one bucket on a single Redis; on a cluster the tag of the room's slot, so a
 * bucket key hashes where the room's keys do. The values are the ones tests/keyspace.py
 * computes (the Lua tests and invariants use them). */
static void test_bucket_tags(void **state)
{
    (void)state;
    assert_string_equal(sb_tag_of_room(0, "x7", 2), "#");
    assert_string_equal(sb_tag_of_slot(0), "#4549");
    assert_string_equal(sb_tag_of_slot(16383), "#10157");
    assert_string_equal(sb_tag_of_room(1, "x7", 2), "#10618");
    char buf[SB_KEY_MAX], members[SB_KEY_MAX];
    const char *rooms[] = {"a", "x7", "demo", "room-42", "Z.z_z"};
    for (size_t i = 0; i < sizeof rooms / sizeof rooms[0]; i++) {
        const char *tag = sb_tag_of_room(1, rooms[i], strlen(rooms[i]));
        assert_non_null(tag);
        assert_int_equal(tag[0], '#');
        assert_true(strlen(tag) < SB_TAG_MAX);
        sb_key_room(members, sizeof members, "sb", rooms[i], "members");
        sb_key_room(buf, sizeof buf, "sb", tag, "stats");
        assert_int_equal(sb_slot(buf, strlen(buf)), sb_slot(members, strlen(members)));
        sb_key_node_sockets(buf, sizeof buf, "sb", tag, "n1");
        assert_int_equal(sb_slot(buf, strlen(buf)), sb_slot(members, strlen(members)));
        sb_channel_node(buf, sizeof buf, "sb", tag, "n1");
        assert_int_equal(sb_slot(buf, strlen(buf)), sb_slot(members, strlen(members)));
    }
    /* Every slot has a tag, distinct, hashing to that slot. */
    for (unsigned s = 0; s < SB_SLOTS; s++) {
        const char *t = sb_tag_of_slot(s);
        assert_int_equal(sb_slot(t, strlen(t)), s);
    }
    /* A tag is never a valid room name: buckets and rooms cannot collide. */
    assert_false(sb_valid_room("#"));
    assert_false(sb_valid_room(sb_tag_of_slot(7)));
}

/* Each builder at its boundary: a buffer of exactly length + 1 fits, one byte less is -1. */
static void test_truncation_is_refused(void **state)
{
    (void)state;
    char buf[SB_KEY_MAX];
    char small[64];
    const char *want = "sb:{demo}:members"; /* 17 */
    assert_int_equal(sb_key_room(small, 18, "sb", "demo", "members"), 17);
    assert_string_equal(small, want);
    assert_int_equal(sb_key_room(small, 17, "sb", "demo", "members"), -1);
    assert_int_equal(sb_key_room(small, 1, "sb", "demo", "members"), -1);
    assert_int_equal(sb_key_room_n(small, 17, "sb", "demo", 4, "members"), -1);
    assert_int_equal(sb_key_global(small, 9, "sb", "events"), -1);
    assert_int_equal(sb_key_global(small, 10, "sb", "events"), 9);
    assert_int_equal(sb_key_node_lease(small, 10, "sb", "n1"), -1);
    assert_int_equal(sb_key_node_lease(small, 11, "sb", "n1"), 10);
    assert_int_equal(sb_key_node_sockets(small, 22, "sb", "#", "n1"), -1);
    assert_int_equal(sb_key_node_sockets(small, 23, "sb", "#", "n1"), 22);
    assert_int_equal(sb_channel_node(small, 14, "sb", "#", "n1"), -1);
    assert_int_equal(sb_channel_node(small, 15, "sb", "#", "n1"), 14);
    /* A room over SB_ROOM_MAX is refused whatever the buffer, so no key ever holds one. */
    char room[SB_ROOM_MAX + 2];
    memset(room, 'r', sizeof room - 1);
    room[sizeof room - 1] = '\0';
    assert_int_equal(sb_key_room(buf, sizeof buf, "sb", room, "members"), -1);
    assert_int_equal(sb_key_room_n(buf, sizeof buf, "sb", room, SB_ROOM_MAX + 1, "members"), -1);
    assert_true(sb_key_room_n(buf, sizeof buf, "sb", room, SB_ROOM_MAX, "members") > 0);
    /* The longest room key the node builds fits SB_KEY_MAX with the longest prefix and id. */
    char prefix[65], sid[SB_SID_MAX + 1], suffix[80];
    memset(prefix, 'p', 64);
    prefix[64] = '\0';
    memset(sid, 's', SB_SID_MAX);
    sid[SB_SID_MAX] = '\0';
    snprintf(suffix, sizeof suffix, "presence:%s", sid);
    assert_true(sb_key_room_n(buf, sizeof buf, prefix, room, SB_ROOM_MAX, suffix) > 0);
    assert_true(sb_key_node_sockets(buf, sizeof buf, prefix, "#167975", prefix) > 0);
}

/* Every name pattern stands in the README's key schema (with P, R, S and N as placeholders). */
static void test_names_match_the_readme_schema(void **state)
{
    (void)state;
    FILE *f = fopen(SB_LUA_README, "rb");
    assert_non_null(f);
    static char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *schema = strstr(text, "## Key schema");
    assert_non_null(schema);
    char buf[SB_KEY_MAX], line[SB_KEY_MAX + 32];
    const char *rooms[] = {"members", "presence:S", "links:S", "degree", "nodes", "stats"};
    for (size_t i = 0; i < sizeof rooms / sizeof rooms[0]; i++) {
        assert_true(sb_key_room(buf, sizeof buf, "P", "R", rooms[i]) > 0);
        snprintf(line, sizeof line, "\n%s ", buf);
        if (!strstr(schema, line))
            fail_msg("%s is not in lua/README.md's key schema", buf);
    }
    const char *globals[] = {"instance",   "nodes",        "events",
                             "admin:lock", "admin:totals", "admin:last"};
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
        assert_true(sb_key_global(buf, sizeof buf, "P", globals[i]) > 0);
        snprintf(line, sizeof line, "\n%s ", buf);
        if (!strstr(schema, line))
            fail_msg("%s is not in lua/README.md's key schema", buf);
    }
    sb_key_node_lease(buf, sizeof buf, "P", "N");
    snprintf(line, sizeof line, "\n%s ", buf);
    char *lease = strstr(schema, line);
    assert_non_null(lease);
    assert_non_null(strstr(lease + 1, "string")); /* the lease row is a string key */
    const char *buckets[] = {"stats", "rooms"};
    for (size_t i = 0; i < sizeof buckets / sizeof buckets[0]; i++) {
        assert_true(sb_key_room(buf, sizeof buf, "P", "T", buckets[i]) > 0);
        snprintf(line, sizeof line, "\n%s ", buf);
        if (!strstr(schema, line))
            fail_msg("%s is not in lua/README.md's key schema", buf);
    }
    sb_key_node_sockets(buf, sizeof buf, "P", "T", "N");
    snprintf(line, sizeof line, "\n%s ", buf);
    assert_non_null(strstr(schema, line));
    sb_key_node_backlog(buf, sizeof buf, "P", "T", "N");
    snprintf(line, sizeof line, "\n%s ", buf);
    assert_non_null(strstr(schema, line));
    /* The channel row, marked channel. */
    sb_channel_node(buf, sizeof buf, "P", "T", "N");
    snprintf(line, sizeof line, "\n%s", buf);
    int channel = 0;
    for (const char *p = strstr(schema, line); p; p = strstr(p + 1, line)) {
        const char *eol = strchr(p + 1, '\n');
        const char *word = strstr(p + 1, "channel");
        if (word && (!eol || word < eol))
            channel = 1;
    }
    assert_true(channel);
}

/* ---- validators -------------------------------------------------------------------------- */

/* What the admin takes from Redis: native rooms and PeerJS keys' rooms (it skipped those, and a
 * dead node's reap failed on them). */
static void test_valid_stored_room(void **state)
{
    (void)state;
#define STORED(s) sb_valid_stored_room_n((s), strlen(s))
    assert_true(STORED("a"));
    assert_true(STORED("Room-1_x.y"));
    assert_true(STORED("~pj.peerjs"));
    assert_true(STORED("~pj.my.key-1_x"));
    assert_true(STORED("~pj.abcdefghijklmnopqrstuvwxyz012345"));   /* a 32-character key */
    assert_false(STORED("~pj.abcdefghijklmnopqrstuvwxyz0123456")); /* 33 */
    assert_false(STORED("~pj."));
    assert_false(STORED("~pj.a b"));
    assert_false(STORED("~pj.a:b"));
    assert_false(STORED("~pjx"));
    assert_false(STORED("~px.peerjs"));
    assert_false(STORED("~other"));
    assert_false(STORED(""));
    assert_false(sb_valid_stored_room_n(NULL, 0));
    assert_true(sb_valid_stored_room_n("~pj.ab!", 6)); /* counted: the bytes after are not read */
#undef STORED
}

static void test_valid_room(void **state)
{
    (void)state;
    char room[SB_ROOM_MAX + 2];
    memset(room, 'a', sizeof room);
    room[SB_ROOM_MAX] = '\0';
    assert_true(sb_valid_room(room)); /* 64 */
    room[SB_ROOM_MAX] = 'a';
    room[SB_ROOM_MAX + 1] = '\0';
    assert_false(sb_valid_room(room)); /* 65 */
    assert_true(sb_valid_room("a"));
    assert_true(sb_valid_room("Room-1_x.y"));
    assert_true(sb_valid_room("..."));
    assert_false(sb_valid_room(""));
    assert_false(sb_valid_room(NULL));
    const char *bad[] = {"a b", "a/b", "{a}", "a:b", "a*", "a\tb", "caf\xc3\xa9", "a\x7f", "a+b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (sb_valid_room(bad[i]))
            fail_msg("room %zu accepted", i);
    /* Counted: exactly len bytes, an embedded NUL refused, NULL refused. */
    assert_true(sb_valid_room_n("abc!", 3));
    assert_false(sb_valid_room_n("abc!", 4));
    assert_false(sb_valid_room_n("a\0b", 3));
    assert_false(sb_valid_room_n("abc", 0));
    assert_false(sb_valid_room_n(NULL, 3));
    assert_true(sb_valid_room_n(room, SB_ROOM_MAX));
    assert_false(sb_valid_room_n(room, SB_ROOM_MAX + 1));
}

static void test_valid_sid(void **state)
{
    (void)state;
    char sid[SB_SID_MAX + 2];
    memset(sid, 'A', sizeof sid);
    sid[21] = '\0';
    assert_false(sb_valid_sid(sid)); /* 21: under 128 bits of base64url */
    sid[21] = 'A';
    sid[22] = '\0';
    assert_true(sb_valid_sid(sid)); /* 22 */
    memset(sid, 'z', sizeof sid);
    sid[SB_SID_MAX] = '\0';
    assert_true(sb_valid_sid(sid)); /* 64 */
    sid[SB_SID_MAX] = 'z';
    sid[SB_SID_MAX + 1] = '\0';
    assert_false(sb_valid_sid(sid)); /* 65 */
    assert_true(sb_valid_sid("abcdefghij-_ABCDEFGH0123"));
    assert_false(sb_valid_sid("abcdefghij.kABCDEFGH0123")); /* '.' is a room character only */
    assert_false(sb_valid_sid("abcdefghij kABCDEFGH0123"));
    assert_false(sb_valid_sid("abcdefghij:kABCDEFGH0123"));
    assert_false(sb_valid_sid("abcdefghij+kABCDEFGH0123"));
    assert_false(sb_valid_sid(""));
    assert_false(sb_valid_sid(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_room_keys),
        cmocka_unit_test(test_global_and_node_keys),
        cmocka_unit_test(test_bucket_tags),
        cmocka_unit_test(test_truncation_is_refused),
        cmocka_unit_test(test_names_match_the_readme_schema),
        cmocka_unit_test(test_valid_room),
        cmocka_unit_test(test_valid_stored_room),
        cmocka_unit_test(test_valid_sid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
