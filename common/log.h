/* Logging: one line per event on stderr: a millisecond UTC timestamp, the level, then the
 * message, which names the socket, node or module it is about (no component tag: each process
 * has its own stderr). Nothing here allocates; safe from any callback (not from a signal
 * handler). */
#ifndef SB_LOG_H
#define SB_LOG_H

#include <stdint.h>

typedef enum { SB_LOG_ERROR = 0, SB_LOG_WARN, SB_LOG_INFO, SB_LOG_DEBUG } sb_log_level_t;

/* Parses "error", "warn", "info" or "debug"; returns the level or -1. */
int sb_log_parse_level(const char *s);
void sb_log_set_level(sb_log_level_t level);
int sb_log_enabled(sb_log_level_t level);
void sb_log(sb_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sb_error(...) sb_log(SB_LOG_ERROR, __VA_ARGS__)
#define sb_warn(...) sb_log(SB_LOG_WARN, __VA_ARGS__)
#define sb_info(...) sb_log(SB_LOG_INFO, __VA_ARGS__)
#define sb_debug(...)                                                                              \
    do {                                                                                           \
        if (sb_log_enabled(SB_LOG_DEBUG))                                                          \
            sb_log(SB_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

/* Lines an outsider can trigger (a refused connection, a bad request, libwebsockets' own
 * errors such as "accept: errno 24") go through a rate limit, so that no client can grow the
 * log faster than SB_LOG_BURST lines per call site per second. One sb_log_rate_t per call site
 * (the sb_*_limited macros keep it in a static of the call site: log state is process-wide,
 * like the level). When lines were dropped, the next line that passes says how many. */
#define SB_LOG_BURST 10
typedef struct {
    int64_t window_ms; /* start of the current one-second window (monotonic) */
    unsigned lines;    /* lines written in it */
    uint64_t dropped;  /* lines dropped since the last one written */
} sb_log_rate_t;
/* Logs like sb_log when rate allows (at most SB_LOG_BURST lines a second for rate). */
void sb_log_rated(sb_log_rate_t *rate, sb_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define sb_log_limited(level, ...)                                                                 \
    do {                                                                                           \
        static sb_log_rate_t sb_rate_;                                                             \
        if (sb_log_enabled(level))                                                                 \
            sb_log_rated(&sb_rate_, level, __VA_ARGS__);                                           \
    } while (0)
#define sb_warn_limited(...) sb_log_limited(SB_LOG_WARN, __VA_ARGS__)
#define sb_info_limited(...) sb_log_limited(SB_LOG_INFO, __VA_ARGS__)
#define sb_debug_limited(...) sb_log_limited(SB_LOG_DEBUG, __VA_ARGS__)

/* libwebsockets' log lines (passed to lws_set_log_level as its emit function): written in our
 * format at our level ("lws: ..."), rate limited as one call site, since a client can make lws
 * log (for instance every failed accept). */
void sb_log_lws_emit(int lws_level, const char *line);

/* Invariants of our own code (never client input): prints file and line, then aborts. */
#define sb_assert(cond)                                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            sb_assert_fail(#cond, __FILE__, __LINE__);                                             \
    } while (0)
void sb_assert_fail(const char *what, const char *file, int line) __attribute__((noreturn));

/* Milliseconds since the epoch (wall clock) and monotonic milliseconds. */
int64_t sb_now_ms(void);
int64_t sb_mono_ms(void);

#endif
