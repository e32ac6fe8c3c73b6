/* common/log.c: the rate limit on lines an outsider can trigger (issue 17: libwebsockets
 * logged "accept: errno 24" 150,000 times a second), and libwebsockets' lines through it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "log.h"

#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char path[256];

/* stderr goes to a fresh file for each test. */
static int setup(void **state)
{
    (void)state;
    snprintf(path, sizeof path, "%s/test_log_%d.txt", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    assert_non_null(freopen(path, "w", stderr));
    sb_log_set_level(SB_LOG_INFO);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    return 0;
}

/* Lines written to stderr so far, and whether any holds needle. */
static int count_lines(const char *needle, int *found)
{
    fflush(stderr);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    int n = 0;
    *found = 0;
    while (fgets(line, sizeof line, f)) {
        n++;
        if (needle && strstr(line, needle))
            *found = 1;
    }
    fclose(f);
    return n;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_burst_then_summary(void **state)
{
    (void)state;
    sb_log_rate_t rate = {0};
    for (int i = 0; i < 25; i++)
        sb_log_rated(&rate, SB_LOG_WARN, "refused %d", i);
    int found;
    assert_int_equal(count_lines(NULL, &found), SB_LOG_BURST);
    /* The next window: one line passes and says how many were dropped. */
    sleep_ms(1050);
    sb_log_rated(&rate, SB_LOG_WARN, "refused again");
    assert_int_equal(count_lines("refused again (15 similar lines not logged)", &found),
                     SB_LOG_BURST + 1);
    assert_true(found);
    /* And the one after has nothing to report. */
    sb_log_rated(&rate, SB_LOG_WARN, "quiet");
    count_lines("quiet (", &found);
    assert_false(found);
}

static void test_call_sites_are_separate(void **state)
{
    (void)state;
    for (int i = 0; i < 30; i++) {
        sb_warn_limited("site one %d", i);
        sb_warn_limited("site two %d", i);
    }
    int found;
    assert_int_equal(count_lines(NULL, &found), 2 * SB_LOG_BURST);
}

static void test_level_filters_before_counting(void **state)
{
    (void)state;
    sb_log_rate_t rate = {0};
    for (int i = 0; i < 30; i++)
        sb_log_rated(&rate, SB_LOG_DEBUG, "hidden %d", i); /* below the level: not counted */
    int found;
    assert_int_equal(count_lines(NULL, &found), 0);
    sb_log_rated(&rate, SB_LOG_WARN, "shown");
    count_lines("shown", &found);
    assert_true(found);
    count_lines("not logged", &found);
    assert_false(found);
}

static void test_lws_lines(void **state)
{
    (void)state;
    for (int i = 0; i < 1000; i++)
        sb_log_lws_emit(LLL_ERR, "accept: Too many open files\n");
    int found;
    assert_int_equal(count_lines("error lws: accept: Too many open files", &found), SB_LOG_BURST);
    assert_true(found);
    /* lws's own newline is not doubled (an empty line would count as one more). */
    assert_int_equal(count_lines(NULL, &found), SB_LOG_BURST);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_burst_then_summary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_sites_are_separate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_filters_before_counting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lws_lines, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
