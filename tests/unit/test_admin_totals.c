/* Unit tests for admin/totals.c's pure part: the totals of an HGETALL reply of P:admin:totals,
 * with every field present (0 when absent), violations by kind from their own fields, unknown
 * fields ignored, and zeros for no reply at all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "admin.h"

static long long field(json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_integer(v))
        fail_msg("%s missing or not an integer", name);
    return (long long)json_integer_value(v);
}

static void test_totals_from_reply(void **state)
{
    (void)state;
    const char *text[] = {"reconcile_runs",      "120", "violations_half_link", "2",
                          "stale_links_removed", "9",   "somebody_elses",       "77",
                          "violations_degree",   "1"};
    redisReply items[10], *v[10];
    for (int i = 0; i < 10; i++) {
        items[i] = (redisReply){
            .type = REDIS_REPLY_STRING, .len = strlen(text[i]), .str = (char *)text[i]};
        v[i] = &items[i];
    }
    redisReply reply = {.type = REDIS_REPLY_ARRAY, .elements = 10, .element = v};
    json_t *t = sb_totals_from_reply(&reply);
    assert_int_equal(field(t, "reconcile_runs"), 120);
    assert_int_equal(field(t, "stale_links_removed"), 9);
    assert_int_equal(field(t, "stale_sockets_removed"), 0);
    assert_int_equal(field(t, "violations_repaired"), 0);
    assert_null(json_object_get(t, "somebody_elses"));
    json_t *kinds = json_object_get(t, "violations_by_kind");
    assert_int_equal(json_object_size(kinds), SB_VIOL__COUNT);
    assert_int_equal(field(kinds, "counter"), 0);
    assert_int_equal(field(kinds, "half-link"), 2);
    assert_int_equal(field(kinds, "degree"), 1);
    assert_int_equal(field(t, "check_errors"), 0);
    assert_int_equal(json_object_size(t), 6); /* 5 totals and violations_by_kind */
    json_decref(t);

    t = sb_totals_from_reply(NULL);
    assert_int_equal(field(t, "reconcile_runs"), 0);
    assert_int_equal(field(json_object_get(t, "violations_by_kind"), "half-link"), 0);
    json_decref(t);
}

/* The names the metrics and the totals use for the kinds stay paired, one to one. */
static void test_violation_names(void **state)
{
    (void)state;
    assert_string_equal(sb_violation_names[SB_VIOL_COUNTER], "counter");
    assert_string_equal(sb_violation_names[SB_VIOL_HALF_LINK], "half-link");
    assert_string_equal(sb_violation_names[SB_VIOL_DEGREE], "degree");
    for (int k = 0; k < SB_VIOL__COUNT; k++)
        assert_int_equal(strncmp(sb_violation_totals[k], "violations_", 11), 0);
    assert_string_equal(sb_violation_totals[SB_VIOL_HALF_LINK], "violations_half_link");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_totals_from_reply),
        cmocka_unit_test(test_violation_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
