/* Unit tests for common/slot.c: the CRC16 test vector of the Redis Cluster specification and
 * key -> slot with the hash-tag rule. The expected slots were computed once with
 * `redis-cli CLUSTER KEYSLOT <key>` against a real redis-server 7.0.15 started with
 * --cluster-enabled yes, and hard-coded here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "slot.h"

static void test_crc16_vector(void **state)
{
    (void)state;
    /* The specification: the CRC16 of "123456789" is 0x31C3. */
    assert_int_equal(sb_crc16("123456789", 9), 0x31C3);
    assert_int_equal(sb_crc16("", 0), 0);
    /* 0x31C3 % 16384 == 12739, as CLUSTER KEYSLOT says. */
    assert_int_equal(sb_slot("123456789", 9), 12739);
}

static void test_against_redis(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        unsigned slot;
    } cases[] = {
        {"foo", 12182},
        {"bar", 5061},
        {"{user1000}.following", 3443},
        {"{user1000}.followers", 3443},
        {"foo{}{bar}", 8363},    /* first "{}" is empty: the whole key is hashed */
        {"foo{{bar}}zap", 4015}, /* tag is "{bar" */
        {"foo{bar}{zap}", 5061}, /* tag is "bar", the first one */
        {"{}", 15257},
        {"{}x", 10595},
        {"x{", 3596}, /* unclosed: whole key */
        {"x{y", 2740},
        {"{", 4092},
        {"}", 12090},
        {"a}b{c}", 7365}, /* a '}' before the '{' does not close it */
        {"", 0},
        {"P:{T}:stats", 6769},
        {"room:{abc}", 7638},
        {"{{}}", 4092}, /* tag is "{" */
        {"hello{wor}ld", 6233},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned got = sb_slot(cases[i].key, strlen(cases[i].key));
        if (got != cases[i].slot)
            fail_msg("slot of '%s': got %u, redis says %u", cases[i].key, got, cases[i].slot);
    }
}

static void test_tag_equivalence(void **state)
{
    (void)state;
    /* Keys sharing a tag share a slot whatever surrounds it; bytes after the tag are ignored,
     * including NUL bytes (keys are binary). */
    const char k1[] = "P:{room\0x}:a";
    const char k2[] = "{room\0x}";
    assert_int_equal(sb_slot(k1, sizeof k1 - 1), sb_slot(k2, sizeof k2 - 1));
    assert_int_equal(sb_slot(k1, sizeof k1 - 1), sb_slot("room\0x", 6));
    /* The length is respected: a '}' beyond len does not close the tag. */
    assert_int_equal(sb_slot("x{ab}", 4), sb_slot("x{ab", 4));
    for (unsigned i = 0; i < 1000; i++) {
        char key[32];
        int n = snprintf(key, sizeof key, "k%u", i);
        assert_true(sb_slot(key, (size_t)n) < SB_SLOTS);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_vector),
        cmocka_unit_test(test_against_redis),
        cmocka_unit_test(test_tag_equivalence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
