/* A shared time grid for the process's periodic timers. */
#ifndef SB_GRID_H
#define SB_GRID_H

#include <stdint.h>
#include <uv.h>

/* sb_grid_next: the delay (ms, at least `at_least`) from `now` to the next multiple of `grid`;
 * sb_grid_delay: the same on the loop's clock (uv_now). Timers armed this way expire in the same
 * loop iteration when they are due on the same grid point, so a process wakes once for all of them
 * rather than once for each (a repeating timer keeps the phase it was started with; re-arming a
 * one-shot on the grid at each expiry does not drift). Re-arm with at_least 1, the next grid point:
 * a timer that expired a millisecond late and asked for a whole period would skip one.
 * docs/design.md, "Idle wake-ups". */
static inline uint64_t sb_grid_next(uint64_t now, uint64_t at_least, uint64_t grid)
{
    uint64_t due = now + at_least;
    uint64_t off = due % grid;
    return at_least + (off ? grid - off : 0);
}

static inline uint64_t sb_grid_delay(uv_loop_t *loop, uint64_t at_least, uint64_t grid)
{
    return sb_grid_next(uv_now(loop), at_least, grid);
}

#endif
