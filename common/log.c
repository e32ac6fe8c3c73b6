/* Logging and clocks. Owns the process-wide log level (set once at start-up from options). */
#include "log.h"
#include "embed.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static sb_log_level_t current_level = SB_LOG_INFO;
static const char *level_names[] = {"error", "warn", "info", "debug"};

int sb_log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void sb_log_set_level(sb_log_level_t level)
{
    current_level = level;
}

int sb_log_enabled(sb_log_level_t level)
{
    return level <= current_level;
}

void sb_log(sb_log_level_t level, const char *fmt, ...)
{
    if (!sb_log_enabled(level))
        return;
    char line[2048];
    int64_t now = sb_now_ms();
    time_t secs = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(now % 1000), level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    /* One write per line, so lines of concurrent processes sharing a file do not interleave. */
    fwrite(line, 1, len, stderr);
    fflush(stderr);
}

void sb_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "assertion failed: %s at %s:%d\n", what, file, line);
    abort();
}

int64_t sb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sb_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const sb_embed_t *sb_embed_find(const sb_embed_t *table, const char *name)
{
    for (const sb_embed_t *e = table; e->name; e++)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}
