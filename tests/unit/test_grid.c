/* Unit tests for common/grid.h: the delay to the next point of a timer grid (docs/design.md,
 * "Idle wake-ups"). A periodic timer re-armed as a one-shot at each expiry asks for the next
 * grid point with at_least 1; asking for a whole period (at_least = grid) skips a point when
 * the timer fired a millisecond late, which is what the sweep did under load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "grid.h"

static void test_points(void **state)
{
    (void)state;
    /* From a grid point, a whole period: the next point. */
    assert_int_equal(sb_grid_next(1000, 50, 50), 50);
    /* Started off the grid: to the next point at least at_least away. */
    assert_int_equal(sb_grid_next(1003, 50, 50), 97);
    /* Fired on its point and re-armed with at_least 1: the next point, not the same instant. */
    assert_int_equal(sb_grid_next(1100, 1, 50), 50);
    /* Fired 1 ms late (1101) and re-armed with at_least 1: 1150, no point skipped... */
    assert_int_equal(sb_grid_next(1101, 1, 50), 49);
    /* ...while asking for a whole period would land on 1200 and skip 1150. */
    assert_int_equal(sb_grid_next(1101, 50, 50), 99);
    /* The idle sweep's 500 ms grid and the 20 ms ticks share points: 1500 is on both. */
    assert_int_equal(1480 + sb_grid_next(1480, 1, 20), 1500);
    assert_int_equal(1003 + sb_grid_next(1003, 1, 500), 1500);
}

static void test_every_start(void **state)
{
    (void)state;
    static const uint64_t grids[] = {20, 50, 500};
    for (size_t g = 0; g < sizeof grids / sizeof grids[0]; g++) {
        uint64_t grid = grids[g];
        for (uint64_t now = 0; now < 3 * grid + 7; now++) {
            for (uint64_t at_least = 1; at_least <= grid; at_least += grid - 1) {
                uint64_t d = sb_grid_next(now, at_least, grid);
                assert_true(d >= at_least);       /* never sooner than asked */
                assert_true(d < at_least + grid); /* the first point that far, not a later one */
                assert_int_equal((now + d) % grid, 0);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_points),
        cmocka_unit_test(test_every_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
