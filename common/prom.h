/* Prometheus text exposition, shared by the node and the admin: a growable text buffer and a
 * fixed-bucket histogram. Pure (no I/O). */
#ifndef SB_PROM_H
#define SB_PROM_H

#include <stddef.h>
#include <stdint.h>

#define SB_HIST_MAX 16

typedef struct {
    char *buf;
    size_t len, cap;
    int failed; /* out of memory once: everything after is dropped, take() returns NULL */
} sb_prom_t;

typedef struct {
    const double *bounds; /* upper bounds, ascending; +Inf is implicit */
    int n;                /* number of bounds, at most SB_HIST_MAX */
    uint64_t counts[SB_HIST_MAX + 1];
    double sum;
    uint64_t count;
} sb_hist_t;

void sb_prom_init(sb_prom_t *p);
void sb_prom_printf(sb_prom_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* # HELP / # TYPE lines and one sample without labels. */
void sb_prom_gauge(sb_prom_t *p, const char *name, const char *help, long long value);
void sb_prom_counter(sb_prom_t *p, const char *name, const char *help, long long value);
/* A whole histogram: HELP, TYPE, cumulative buckets, _sum and _count. */
void sb_prom_hist(sb_prom_t *p, const char *name, const char *help, const sb_hist_t *h);
/* The text (malloc'd, the caller frees) and its length; NULL after a failure. */
char *sb_prom_take(sb_prom_t *p, size_t *len);

void sb_hist_observe(sb_hist_t *h, double value);

#endif
