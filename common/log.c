/* Logging and clocks. Owns the process-wide log level (set once at start-up from options). */
#include "log.h"
#include "embed.h"

#include <libwebsockets.h>

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

static void vlog(sb_log_level_t level, const char *suffix, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

void sb_log(sb_log_level_t level, const char *fmt, ...)
{
    if (!sb_log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, NULL, fmt, ap);
    va_end(ap);
}

/* 1 when rate lets one more line through now; counts the ones it does not. */
static int rate_admits(sb_log_rate_t *rate, uint64_t *dropped_before)
{
    int64_t now = sb_mono_ms();
    if (rate->window_ms == 0 || now - rate->window_ms >= 1000) {
        rate->window_ms = now;
        rate->lines = 0;
    }
    if (rate->lines >= SB_LOG_BURST) {
        rate->dropped++;
        return 0;
    }
    rate->lines++;
    *dropped_before = rate->dropped;
    rate->dropped = 0;
    return 1;
}

void sb_log_rated(sb_log_rate_t *rate, sb_log_level_t level, const char *fmt, ...)
{
    uint64_t dropped = 0;
    if (!sb_log_enabled(level) || !rate_admits(rate, &dropped))
        return;
    char suffix[64] = "";
    if (dropped)
        snprintf(suffix, sizeof suffix, " (%llu similar lines not logged)",
                 (unsigned long long)dropped);
    va_list ap;
    va_start(ap, fmt);
    vlog(level, dropped ? suffix : NULL, fmt, ap);
    va_end(ap);
}

void sb_log_lws_emit(int lws_level, const char *line)
{
    static sb_log_rate_t rate;
    sb_log_level_t level = (lws_level & LLL_ERR)                   ? SB_LOG_ERROR
                           : (lws_level & LLL_WARN)                ? SB_LOG_WARN
                           : (lws_level & (LLL_NOTICE | LLL_USER)) ? SB_LOG_INFO
                                                                   : SB_LOG_DEBUG;
    /* lws ends its lines with a newline (and may prefix a timestamp of its own: kept). */
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    if (len > 1024)
        len = 1024;
    sb_log_rated(&rate, level, "lws: %.*s", (int)len, line);
}

static void vlog(sb_log_level_t level, const char *suffix, const char *fmt, va_list ap)
{
    char line[2048];
    int64_t now = sb_now_ms();
    time_t secs = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(now % 1000), level_names[level]);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = strlen(line);
    if (suffix) {
        size_t sl = strlen(suffix);
        if (len + sl < sizeof line - 1) {
            memcpy(line + len, suffix, sl + 1);
            len += sl;
        }
    }
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
