/* Prometheus text building: see prom.h. */
#include "prom.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void sb_prom_init(sb_prom_t *p)
{
    p->cap = 4096;
    p->len = 0;
    p->buf = malloc(p->cap);
    p->failed = p->buf == NULL;
}

void sb_prom_printf(sb_prom_t *p, const char *fmt, ...)
{
    while (!p->failed) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(p->buf + p->len, p->cap - p->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            p->failed = 1;
            return;
        }
        if ((size_t)n < p->cap - p->len) {
            p->len += (size_t)n;
            return;
        }
        size_t cap = p->cap * 2 + (size_t)n;
        char *b = realloc(p->buf, cap);
        if (!b) {
            p->failed = 1;
            return;
        }
        p->buf = b;
        p->cap = cap;
    }
}

void sb_prom_gauge(sb_prom_t *p, const char *name, const char *help, long long value)
{
    sb_prom_printf(p, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, value);
}

void sb_prom_counter(sb_prom_t *p, const char *name, const char *help, long long value)
{
    sb_prom_printf(p, "# HELP %s %s\n# TYPE %s counter\n%s %lld\n", name, help, name, name, value);
}

void sb_prom_hist(sb_prom_t *p, const char *name, const char *help, const sb_hist_t *h)
{
    sb_prom_printf(p, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        sb_prom_printf(p, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i],
                       (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    sb_prom_printf(p, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                   (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}

char *sb_prom_take(sb_prom_t *p, size_t *len)
{
    if (p->failed) {
        free(p->buf);
        p->buf = NULL;
        return NULL;
    }
    *len = p->len;
    char *b = p->buf;
    p->buf = NULL;
    return b;
}

void sb_hist_observe(sb_hist_t *h, double value)
{
    int i = 0;
    while (i < h->n && value > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += value;
    h->count++;
}
