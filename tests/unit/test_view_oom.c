/* Allocation failures in node/view.c (issue 11, fault 3): the view is compiled here with an
 * allocator that fails at the k-th call, for every k a scenario reaches. Whatever fails, no
 * call crashes or leaks (ASan runs this too), and a view that lost an update asks for a resync
 * by itself once memory is back, so no client is left with a wrong picture. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static long fail_at = -1; /* the allocation (0-based) that fails; -1 none */
static long calls;

static int fails(void)
{
    return fail_at >= 0 && calls++ == fail_at;
}
static void *t_malloc(size_t n)
{
    return fails() ? NULL : malloc(n);
}
static void *t_calloc(size_t a, size_t b)
{
    return fails() ? NULL : calloc(a, b);
}
static void *t_realloc(void *p, size_t n)
{
    return fails() ? NULL : realloc(p, n);
}
static char *t_strdup(const char *s)
{
    return fails() ? NULL : strdup(s);
}

/* view.c (and the map it uses) with the failing allocator. */
#define malloc t_malloc
#define calloc t_calloc
#define realloc t_realloc
#define strdup t_strdup
#include "../../common/map.c"
#include "../../node/view.c"
#undef malloc
#undef calloc
#undef realloc
#undef strdup

#define T0 1000000
#define A "aaaaaaaaaaaaaaaaaaaaaa"
#define B "bbbbbbbbbbbbbbbbbbbbbb"
#define C "cccccccccccccccccccccc"
#define X "xxxxxxxxxxxxxxxxxxxxxx"

static int has_resync(const sb_acts_t *acts)
{
    for (size_t i = 0; i < acts->n; i++)
        if (acts->v[i].kind == SB_ACT_RESYNC)
            return 1;
    return 0;
}

/* Runs a scenario touching every allocating path; returns 1 when it was complete (no
 * allocation failed that the scenario could see). */
static void scenario(void)
{
    sb_acts_t acts;
    sb_acts_init(&acts);
    sb_view_t *v = sb_view_new("r");
    if (!v)
        return;
    int lost = 0;
    if (sb_view_local_add(v, A) == 0) {
        sb_view_member_in_t snap[] = {{X, "n2", "{\"a\":1}"}, {A, "n1", "{}"}};
        sb_view_local_joined(v, A, 10, snap, 2, T0, &acts);
        lost |= acts.oom;
        sb_acts_clear(&acts);
        sb_view_signal(v, C, A, "held", 4, T0, &acts);      /* C unknown yet: held (copied) */
        sb_view_event_t e12 = {1, 12, B, "n2", "{}", NULL}; /* early: a gap */
        sb_view_event(v, &e12, T0, &acts);
        lost |= acts.oom;
        sb_acts_clear(&acts);
        sb_view_event_t e11 = {1, 11, C, "n2", "{\"c\":1}", NULL};
        sb_view_event(v, &e11, T0, &acts);
        lost |= acts.oom;
        sb_acts_clear(&acts);
        sb_view_member_in_t room[] = {{A, "n1", "{}"}, {B, "n2", "{}"}, {C, "n2", "{}"}};
        if (sb_view_resyncing(v)) {
            /* A complete read repairs whatever was lost before it. */
            sb_view_resync_done(v, 1, 12, room, 3, 0, T0, &acts);
            lost = acts.oom;
        }
        sb_acts_clear(&acts);
    }
    long fail_at_was = fail_at;
    lost |= v->need_resync; /* the view's own mark that it lost something (view.c's field) */
    /* Memory is back: whatever was lost, the view now asks for a read (or never lost any). */
    fail_at = -1;
    sb_view_sweep(v, T0 + 10 * SB_VIEW_GAP_MS, &acts);
    if (lost && !(has_resync(&acts) || sb_view_resyncing(v)))
        fail_msg("allocation %ld failed and the view did not ask for a read", fail_at_was);
    sb_acts_free(&acts);
    sb_view_free(v);
}

static void test_every_allocation_failing(void **state)
{
    (void)state;
    /* How many allocations the scenario makes when none fails. */
    fail_at = -1;
    calls = 0;
    scenario();
    fail_at = 1L << 30;
    calls = 0;
    scenario();
    long total = calls;
    assert_true(total > 10);
    for (long k = 0; k < total; k++) {
        fail_at = k;
        calls = 0;
        scenario();
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_allocation_failing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
