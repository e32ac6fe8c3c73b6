/* Unit tests for node/ratelimit.c: refill and capacity, costs above 1, the debt left by a
 * charge, the rolling abuse window, and clocks that step backwards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ratelimit.h"

#define RATE 50.0
#define BURST 100.0
#define T0 1000000 /* an arbitrary monotonic start, in ms, on a second boundary */

/* Takes n messages of cost at time now; returns how many were accepted. */
static int take_n(sb_bucket_t *b, int n, double cost, int64_t now)
{
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += sb_bucket_take(b, RATE, BURST, cost, now) == SB_RATE_OK;
    return ok;
}

static void test_burst_then_limited(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    assert_int_equal(take_n(&b, 100, 1, T0), 100);
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_rejected(&b, T0), 1);
}

static void test_refill_at_rate(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    take_n(&b, 100, 1, T0);
    /* 50 per second: one token every 20 ms, exactly. */
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 19), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 20), SB_RATE_OK);
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 20), SB_RATE_LIMITED);
    /* One second later: 50 more, not 51. */
    assert_int_equal(take_n(&b, 60, 1, T0 + 1020), 50);
}

static void test_refill_capped_at_burst(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    take_n(&b, 100, 1, T0);
    /* An hour idle refills to the burst, no further. */
    assert_int_equal(take_n(&b, 150, 1, T0 + 3600 * 1000), 100);
}

static void test_cost_ten(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    assert_int_equal(take_n(&b, 10, 10, T0), 10);
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 10, T0), SB_RATE_LIMITED);
    /* 9 tokens (180 ms) are not enough for a join; 10 (200 ms) are. */
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 10, T0 + 180), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 10, T0 + 200), SB_RATE_OK);
}

static void test_limited_takes_nothing(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    take_n(&b, 95, 1, T0);
    /* A refused join leaves the 5 tokens there for 5 ordinary messages. */
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 10, T0), SB_RATE_LIMITED);
    assert_int_equal(take_n(&b, 6, 1, T0), 5);
}

static void test_cost_above_burst_admitted_when_full(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, 5, T0);
    /* A burst below the cost would otherwise make joins impossible. */
    assert_int_equal(sb_bucket_take(&b, 1, 5, 10, T0), SB_RATE_OK);
    /* The debt of 5 takes 5 s to repay, then 1 s more for one token. */
    assert_int_equal(sb_bucket_take(&b, 1, 5, 1, T0 + 5999), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_take(&b, 1, 5, 1, T0 + 6000), SB_RATE_OK);
}

static void test_charge_leaves_debt(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    take_n(&b, 100, 1, T0);
    sb_bucket_charge(&b, RATE, BURST, 9, T0);
    /* 9 tokens of debt: the next message needs 10 tokens of refill (200 ms). */
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 199), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 200), SB_RATE_OK);
}

static void test_charge_debt_bounded(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    sb_bucket_charge(&b, RATE, BURST, 1e9, T0);
    /* Debt is capped at -burst: 2 * burst tokens (4 s) later the bucket is full again. */
    assert_int_equal(take_n(&b, 150, 1, T0 + 4000), 100);
    assert_int_equal(sb_bucket_rejected(&b, T0 + 4000), 50);
}

static void test_abuse_after_threshold(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    take_n(&b, 100, 1, T0);
    /* max(burst, 20) = 100 rejections are tolerated; the 101st in the window is abuse. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 1), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 1), SB_RATE_ABUSE);
    /* Sticky: even with tokens available again. */
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 60000), SB_RATE_ABUSE);
}

static void test_abuse_minimum_threshold(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, 10, T0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(sb_bucket_take(&b, 1, 10, 1, T0), SB_RATE_OK);
    /* With burst 10 the threshold is max(10, 20) = 20. */
    for (int i = 0; i < 20; i++)
        assert_int_equal(sb_bucket_take(&b, 1, 10, 1, T0), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_take(&b, 1, 10, 1, T0), SB_RATE_ABUSE);
}

static void test_abuse_window_rolls(void **state)
{
    (void)state;
    sb_bucket_t b;
    const double rate = 0.001, burst = 20; /* practically no refill: every extra is refused */
    sb_bucket_init(&b, burst, T0);
    for (int i = 0; i < 20; i++)
        sb_bucket_take(&b, rate, burst, 1, T0);
    /* 20 rejections in second 0, then none until second 10: the window (seconds 1..10) no
     * longer holds them, so 20 more are tolerated. */
    for (int i = 0; i < 20; i++)
        assert_int_equal(sb_bucket_take(&b, rate, burst, 1, T0), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_rejected(&b, T0 + 9999), 20);
    assert_int_equal(sb_bucket_rejected(&b, T0 + 10000), 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(sb_bucket_take(&b, rate, burst, 1, T0 + 10000), SB_RATE_LIMITED);
    /* But 20 in second 9 and 1 in second 10 share a window. */
    sb_bucket_init(&b, burst, T0);
    for (int i = 0; i < 20; i++)
        sb_bucket_take(&b, rate, burst, 1, T0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(sb_bucket_take(&b, rate, burst, 1, T0 + 9000), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_take(&b, rate, burst, 1, T0 + 10999), SB_RATE_ABUSE);
    /* Slots are reused as the window moves on: 19 in second 0, 1 in second 5, then second 10
     * reuses second 0's slot, which must start empty (window 1..10 holds 1 + these). */
    sb_bucket_init(&b, burst, T0);
    for (int i = 0; i < 20; i++)
        sb_bucket_take(&b, rate, burst, 1, T0);
    for (int i = 0; i < 19; i++)
        assert_int_equal(sb_bucket_take(&b, rate, burst, 1, T0), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_take(&b, rate, burst, 1, T0 + 5000), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_rejected(&b, T0 + 9999), 20);
    for (int i = 0; i < 19; i++)
        assert_int_equal(sb_bucket_take(&b, rate, burst, 1, T0 + 10000), SB_RATE_LIMITED);
    assert_int_equal(sb_bucket_rejected(&b, T0 + 10000), 20);
    assert_int_equal(sb_bucket_take(&b, rate, burst, 1, T0 + 10000), SB_RATE_ABUSE);
}

static void test_steady_overload_is_abuse(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    /* A client sending 100/s against a 50/s limit for long enough gets closed; one sending
     * 50/s never does. */
    int64_t t = T0;
    sb_rate_result_t last = SB_RATE_OK;
    for (int i = 0; i < 3000 && last != SB_RATE_ABUSE; i++, t += 10)
        last = sb_bucket_take(&b, RATE, BURST, 1, t);
    assert_int_equal(last, SB_RATE_ABUSE);
    sb_bucket_init(&b, BURST, T0);
    for (int i = 0; i < 30000; i++)
        assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 20 * (int64_t)i), SB_RATE_OK);
}

static void test_clock_backwards(void **state)
{
    (void)state;
    sb_bucket_t b;
    sb_bucket_init(&b, BURST, T0);
    take_n(&b, 100, 1, T0);
    /* Going back mints nothing... */
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 - 5000), SB_RATE_LIMITED);
    /* ...and does not delay the refill that is due from the last real time. */
    assert_int_equal(sb_bucket_take(&b, RATE, BURST, 1, T0 + 20), SB_RATE_OK);
    assert_int_equal(sb_bucket_rejected(&b, T0), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_limited),
        cmocka_unit_test(test_refill_at_rate),
        cmocka_unit_test(test_refill_capped_at_burst),
        cmocka_unit_test(test_cost_ten),
        cmocka_unit_test(test_limited_takes_nothing),
        cmocka_unit_test(test_cost_above_burst_admitted_when_full),
        cmocka_unit_test(test_charge_leaves_debt),
        cmocka_unit_test(test_charge_debt_bounded),
        cmocka_unit_test(test_abuse_after_threshold),
        cmocka_unit_test(test_abuse_minimum_threshold),
        cmocka_unit_test(test_abuse_window_rolls),
        cmocka_unit_test(test_steady_overload_is_abuse),
        cmocka_unit_test(test_clock_backwards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
