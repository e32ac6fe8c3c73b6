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
