/* Unit tests for admin/events.c's pure parts: the ISO 8601 time of a stream id, and the
 * conversion of an XREVRANGE reply into {id, type, at, data} entries (malformed entries
 * skipped, data that is not JSON kept as text rather than dropped). Replies are built by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "admin.h"

static redisReply str(const char *s)
{
    redisReply r = {.type = REDIS_REPLY_STRING, .len = strlen(s), .str = (char *)s};
    return r;
}

static redisReply arr(redisReply **v, size_t n)
{
    redisReply r = {.type = REDIS_REPLY_ARRAY, .elements = n, .element = v};
    return r;
}

static void test_iso8601(void **state)
{
    (void)state;
    char buf[40];
    sb_iso8601(0, buf, sizeof buf);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    sb_iso8601(1767225600000LL, buf, sizeof buf);
    assert_string_equal(buf, "2026-01-01T00:00:00.000Z");
    sb_iso8601(1767225600000LL + 86399999LL, buf, sizeof buf);
    assert_string_equal(buf, "2026-01-01T23:59:59.999Z");
    sb_iso8601(951782400007LL, buf, sizeof buf); /* a leap day, 7 ms */
    assert_string_equal(buf, "2000-02-29T00:00:00.007Z");
}

/* [id, [field, value, ...]] */
typedef struct {
    redisReply id, fv, f[4], *fp[4], *pair[2], entry;
} entry_t;

static redisReply *entry(entry_t *e, const char *id, const char *type, const char *data)
{
    size_t n = 0;
    if (type) {
        e->f[n] = str("type");
        e->f[n + 1] = str(type);
        n += 2;
    }
    if (data) {
        e->f[n] = str("data");
        e->f[n + 1] = str(data);
        n += 2;
    }
    for (size_t i = 0; i < n; i++)
        e->fp[i] = &e->f[i];
    e->id = str(id);
    e->fv = arr(e->fp, n);
    e->pair[0] = &e->id;
    e->pair[1] = &e->fv;
    e->entry = arr(e->pair, 2);
    return &e->entry;
}

static void test_events_from_reply(void **state)
{
    (void)state;
    entry_t a, b, c;
    redisReply bad_int = {.type = REDIS_REPLY_INTEGER, .integer = 3};
    redisReply *v[] = {entry(&a, "1767225600000-0", "node-down", "{\"node\":\"n1\"}"),
                       &bad_int, /* not an entry: skipped */
                       entry(&b, "1767225600001-3", "reconcile", "not json"),
                       entry(&c, "1767225600002-0", NULL, NULL)};
    redisReply reply = arr(v, 4);
    json_t *out = sb_events_from_reply(&reply);
    assert_true(json_is_array(out));
    assert_int_equal(json_array_size(out), 3);
    json_t *e0 = json_array_get(out, 0);
    assert_string_equal(json_string_value(json_object_get(e0, "id")), "1767225600000-0");
    assert_string_equal(json_string_value(json_object_get(e0, "type")), "node-down");
    assert_string_equal(json_string_value(json_object_get(e0, "at")), "2026-01-01T00:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(json_object_get(e0, "data"), "node")),
                        "n1");
    json_t *e1 = json_array_get(out, 1);
    assert_string_equal(json_string_value(json_object_get(e1, "at")), "2026-01-01T00:00:00.001Z");
    assert_string_equal(json_string_value(json_object_get(e1, "data")), "not json");
    json_t *e2 = json_array_get(out, 2);
    assert_string_equal(json_string_value(json_object_get(e2, "type")), "unknown");
    assert_true(json_is_object(json_object_get(e2, "data")));
    json_decref(out);
    /* Not an array (an error reply, NULL): an empty list, never NULL. */
    redisReply err = {.type = REDIS_REPLY_ERROR, .len = 3, .str = (char *)"ERR"};
    out = sb_events_from_reply(&err);
    assert_int_equal(json_array_size(out), 0);
    json_decref(out);
    out = sb_events_from_reply(NULL);
    assert_int_equal(json_array_size(out), 0);
    json_decref(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iso8601),
        cmocka_unit_test(test_events_from_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
