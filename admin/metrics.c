/* Admin metrics (contract section 6) as Prometheus text. The cluster figures and the _total
 * counters come from Redis (P:stats, P:admin:totals), so every admin reports the same values;
 * the pass duration histogram is this process's own passes. Label values are bounded: the
 * violation kinds are a fixed list. */
#include "admin.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double bounds[SB_ADMIN_HIST_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                     0.1,   0.25,   0.5,   1.0,  2.5,   10.0};

void sb_metrics_observe_pass(sb_admin_t *a, double seconds)
{
    sb_admin_metrics_t *m = &a->metrics;
    int i = 0;
    while (i < SB_ADMIN_HIST_BUCKETS && seconds > bounds[i])
        i++;
    m->hist[i]++;
    m->hist_sum += seconds;
    m->hist_count++;
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} out_t;

static void __attribute__((format(printf, 2, 3))) put(out_t *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *b = realloc(o->buf, cap);
        if (!b) {
            o->failed = 1;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
}

static void gauge(out_t *o, const char *name, const char *help, long long v)
{
    put(o, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, v);
}

static void counter(out_t *o, const char *name, const char *help, long long v)
{
    put(o, "# HELP %s %s\n# TYPE %s counter\n%s %lld\n", name, help, name, name, v);
}

static long long total(const sb_status_t *st, const char *field)
{
    json_t *v = st->totals ? json_object_get(st->totals, field) : NULL;
    return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

char *sb_metrics_render(const sb_admin_t *a, const sb_status_t *st, size_t *len)
{
    out_t o = {malloc(4096), 0, 4096, 0};
    if (!o.buf)
        return NULL;
    gauge(&o, "switchboard_cluster_nodes", "Nodes with a live lease.", st->nodes.n);
    gauge(&o, "switchboard_cluster_rooms", "Rooms with at least one member.", (long long)st->rooms);
    gauge(&o, "switchboard_cluster_active_users", "Joined sockets with live presence.",
          (long long)st->members);
    gauge(&o, "switchboard_cluster_p2p_links", "P2P links with both halves and both ends live.",
          (long long)st->links);
    gauge(&o, "switchboard_cluster_p2p_users", "Live sockets in at least one P2P link.",
          (long long)st->linked);
    counter(&o, "switchboard_stale_sockets_removed_total",
            "Sockets reaped after their presence expired (all admins).",
            total(st, "stale_sockets_removed"));
    counter(&o, "switchboard_stale_links_removed_total",
            "Links removed by reaps, and half links repaired (all admins).",
            total(st, "stale_links_removed"));
    counter(&o, "switchboard_reconcile_runs_total", "Reconcile passes completed (all admins).",
            total(st, "reconcile_runs"));

    const sb_admin_metrics_t *m = &a->metrics;
    put(&o, "# HELP switchboard_reconcile_duration_seconds Duration of this admin's reconcile "
            "passes.\n# TYPE switchboard_reconcile_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < SB_ADMIN_HIST_BUCKETS; i++) {
        cum += m->hist[i];
        put(&o, "switchboard_reconcile_duration_seconds_bucket{le=\"%g\"} %llu\n", bounds[i],
            (unsigned long long)cum);
    }
    cum += m->hist[SB_ADMIN_HIST_BUCKETS];
    put(&o, "switchboard_reconcile_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
        (unsigned long long)cum);
    put(&o, "switchboard_reconcile_duration_seconds_sum %.6f\n", m->hist_sum);
    put(&o, "switchboard_reconcile_duration_seconds_count %llu\n",
        (unsigned long long)m->hist_count);

    put(&o, "# HELP switchboard_invariant_violations_total Invariant violations found and "
            "repaired, by kind (all admins).\n"
            "# TYPE switchboard_invariant_violations_total counter\n");
    json_t *kinds = st->totals ? json_object_get(st->totals, "violations_by_kind") : NULL;
    for (int k = 0; k < SB_VIOL__COUNT; k++) {
        json_t *v = kinds ? json_object_get(kinds, sb_violation_names[k]) : NULL;
        put(&o, "switchboard_invariant_violations_total{kind=\"%s\"} %lld\n", sb_violation_names[k],
            json_is_integer(v) ? (long long)json_integer_value(v) : 0);
    }
    gauge(&o, "switchboard_admin_lease_held",
          "1 while this admin holds the reconcile lease (one admin reconciles at a time).",
          a->lease_held);
    gauge(&o, "switchboard_admin_redis_up", "1 while this admin's Redis connection works.",
          sb_admin_ready(a));
    put(&o,
        "# HELP switchboard_build_info Build of this process.\n"
        "# TYPE switchboard_build_info gauge\nswitchboard_build_info{version=\"%s\"} 1\n",
        SB_VERSION);
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    *len = o.len;
    return o.buf;
}
