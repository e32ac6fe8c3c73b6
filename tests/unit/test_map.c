/* common/map.c: the string map every room view and the node's id and room tables use. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "map.h"

static void count_value(void *value, void *arg)
{
    *(uintptr_t *)arg += (uintptr_t)value;
}

static void test_put_get_del(void **state)
{
    (void)state;
    sb_map_t m;
    sb_map_init(&m);
    assert_null(sb_map_get(&m, "a")); /* no buckets yet */
    assert_null(sb_map_del(&m, "a"));
    assert_int_equal(sb_map_put(&m, "a", (void *)1), 0);
    assert_int_equal(sb_map_put(&m, "b", (void *)2), 0);
    assert_ptr_equal(sb_map_get(&m, "a"), (void *)1);
    assert_int_equal(sb_map_put(&m, "a", (void *)3), 0); /* replaced, not added */
    assert_int_equal(m.count, 2);
    assert_ptr_equal(sb_map_get(&m, "a"), (void *)3);
    assert_ptr_equal(sb_map_del(&m, "a"), (void *)3);
    assert_ptr_equal(sb_map_del(&m, "b"), (void *)2);
    /* emptied, buckets kept: every key is absent, and the map fills again */
    assert_int_equal(m.count, 0);
    assert_true(m.nbuckets > 0);
    assert_null(sb_map_get(&m, "a"));
    assert_null(sb_map_get(&m, ""));
    assert_null(sb_map_del(&m, "b"));
    assert_int_equal(sb_map_put(&m, "b", (void *)4), 0);
    assert_ptr_equal(sb_map_get(&m, "b"), (void *)4);
    assert_null(sb_map_get(&m, "a"));
    sb_map_free(&m);
}

/* Many keys: growth rehashes every entry, and each one stays reachable. */
static void test_grow_and_each(void **state)
{
    (void)state;
    sb_map_t m;
    sb_map_init(&m);
    char key[32];
    for (uintptr_t i = 1; i <= 5000; i++) {
        snprintf(key, sizeof key, "k%lu", (unsigned long)i);
        assert_int_equal(sb_map_put(&m, key, (void *)i), 0);
    }
    assert_int_equal(m.count, 5000);
    for (uintptr_t i = 1; i <= 5000; i++) {
        snprintf(key, sizeof key, "k%lu", (unsigned long)i);
        assert_ptr_equal(sb_map_get(&m, key), (void *)i);
    }
    uintptr_t sum = 0;
    sb_map_each(&m, count_value, &sum);
    assert_int_equal(sum, 5000u * 5001u / 2);
    for (uintptr_t i = 1; i <= 5000; i += 2) {
        snprintf(key, sizeof key, "k%lu", (unsigned long)i);
        assert_ptr_equal(sb_map_del(&m, key), (void *)i);
    }
    for (uintptr_t i = 1; i <= 5000; i++) {
        snprintf(key, sizeof key, "k%lu", (unsigned long)i);
        assert_ptr_equal(sb_map_get(&m, key), i % 2 ? NULL : (void *)i);
    }
    sb_map_free(&m);
    assert_int_equal(m.count, 0);
    assert_null(sb_map_get(&m, "k2"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del),
        cmocka_unit_test(test_grow_and_each),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
