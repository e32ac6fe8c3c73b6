/* Admin metrics (docs/admin.md, "Metrics") as Prometheus text. The cluster figures and the _total
 * counters come from Redis (P:stats, P:admin:totals), so every admin reports the same values;
 * the pass duration histogram is this process's own passes. Label values are bounded: the
 * violation kinds are a fixed list. */
#include "admin.h"
#include "listen.h"
#include "log.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                0.1,   0.25,   0.5,   1.0,  2.5,   10.0};

void sb_admin_metrics_observe_pass(sb_admin_t *a, double seconds)
{
    sb_admin_metrics_t *m = &a->metrics;
    if (!m->pass_duration.bounds) {
        m->pass_duration.bounds = bounds;
        m->pass_duration.n = (int)(sizeof bounds / sizeof bounds[0]);
    }
    sb_hist_observe(&m->pass_duration, seconds);
}

static long long total(const sb_status_t *st, const char *field)
{
    json_t *v = st->totals ? json_object_get(st->totals, field) : NULL;
    return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

char *sb_admin_metrics_render(const sb_admin_t *a, const sb_status_t *st, size_t *len)
{
    sb_prom_t o;
    sb_prom_init(&o);
    sb_prom_gauge(&o, "switchboard_cluster_nodes", "Nodes with a live lease.", st->nodes.n);
    sb_prom_gauge(&o, "switchboard_cluster_rooms", "Rooms with at least one member.",
                  (long long)st->rooms);
    sb_prom_gauge(&o, "switchboard_cluster_active_users", "Joined sockets with live presence.",
                  (long long)st->members);
    sb_prom_gauge(&o, "switchboard_cluster_p2p_links",
                  "P2P links with both halves and both ends live.", (long long)st->links);
    sb_prom_gauge(&o, "switchboard_cluster_p2p_users", "Live sockets in at least one P2P link.",
                  (long long)st->linked);
    sb_prom_gauge(&o, "switchboard_cluster_away_sockets",
                  "Members whose socket is lost and may still resume (counted in active users).",
                  (long long)st->away);
    /* The same figures split by protocol; the unlabeled series above stay the totals. */
    static const struct {
        const char *name, *help;
        size_t off;
    } by[] = {
        {"switchboard_cluster_active_users_by_protocol", "Active users by client protocol.",
         offsetof(sb_share_t, users)},
        {"switchboard_cluster_p2p_links_by_protocol", "P2P links by client protocol.",
         offsetof(sb_share_t, links)},
        {"switchboard_cluster_away_sockets_by_protocol", "Away sockets by client protocol.",
         offsetof(sb_share_t, away)},
    };
    sb_share_t share[2] = {sb_status_share(st, 0), sb_status_share(st, 1)};
    static const char *const protocol[2] = {"native", "peerjs"};
    for (size_t i = 0; i < sizeof by / sizeof by[0]; i++) {
        sb_prom_printf(&o, "# HELP %s %s\n# TYPE %s gauge\n", by[i].name, by[i].help, by[i].name);
        for (int p = 0; p < 2; p++)
            sb_prom_printf(&o, "%s{protocol=\"%s\"} %lld\n", by[i].name, protocol[p],
                           (long long)*(const int64_t *)((const char *)&share[p] + by[i].off));
    }
    sb_prom_gauge(&o, "switchboard_cluster_missing_slots",
                  "Redis hash slots whose figures could not be read (the figures above are "
                  "partial when > 0).",
                  st->missing_slots);
    int unread = 0;
    for (unsigned bits = st->unread; bits; bits &= bits - 1)
        unread++;
    sb_prom_gauge(&o, "switchboard_cluster_unreadable",
                  "Kinds of global keys that could not be read, their shard lost (mesh-status "
                  "unreadable: nodes, last_reconcile, totals, events).",
                  unread);
    /* The counters of P:admin:totals, only when it was read: its shard lost (a Redis Cluster),
     * they are left out rather than 0, which Prometheus would take for a counter reset (and
     * count the whole value again as an increase once the shard is back). */
    if (st->totals) {
        sb_prom_counter(&o, "switchboard_stale_sockets_removed_total",
                        "Sockets reaped after their presence expired (all admins).",
                        total(st, "stale_sockets_removed"));
        sb_prom_counter(&o, "switchboard_stale_links_removed_total",
                        "Links removed by reaps, and half links repaired (all admins).",
                        total(st, "stale_links_removed"));
        sb_prom_counter(&o, "switchboard_reconcile_runs_total",
                        "Reconcile passes completed (all admins).", total(st, "reconcile_runs"));
        sb_prom_counter(&o, "switchboard_reconcile_check_errors_total",
                        "room_check and stats_check calls Redis refused, their room or bucket "
                        "left as it is (all admins).",
                        total(st, "check_errors"));
    }

    const sb_admin_metrics_t *m = &a->metrics;
    sb_hist_t passes = m->pass_duration; /* before the first pass: empty, same buckets */
    if (!passes.bounds) {
        passes.bounds = bounds;
        passes.n = (int)(sizeof bounds / sizeof bounds[0]);
    }
    sb_prom_hist(&o, "switchboard_reconcile_duration_seconds",
                 "Duration of this admin's reconcile passes.", &passes);

    if (st->totals) {
        sb_prom_printf(&o, "# HELP switchboard_invariant_violations_total Invariant violations "
                           "found and repaired, by kind (all admins).\n"
                           "# TYPE switchboard_invariant_violations_total counter\n");
        json_t *kinds = json_object_get(st->totals, "violations_by_kind");
        for (int k = 0; k < SB_VIOL__COUNT; k++) {
            json_t *v = kinds ? json_object_get(kinds, sb_violation_names[k]) : NULL;
            sb_prom_printf(&o, "switchboard_invariant_violations_total{kind=\"%s\"} %lld\n",
                           sb_violation_names[k],
                           json_is_integer(v) ? (long long)json_integer_value(v) : 0);
        }
    }
    sb_prom_gauge(&o, "switchboard_admin_lease_held",
                  "1 while this admin holds the reconcile lease (one admin reconciles at a time).",
                  a->lease_held);
    sb_prom_gauge(&o, "switchboard_admin_redis_up", "1 while this admin's Redis connection works.",
                  sb_lease_redis_ready(a));
    /* The listener's names are http.c's VHOST_NAME and PROTOCOL_NAME. */
    sb_listen_stats_t ls;
    sb_listen_stats(a->lws, "switchboard-admin", "http", &ls);
    sb_prom_gauge(&o, "switchboard_admin_connections",
                  "Open HTTP connections to this admin (capped by --max-connections).", ls.open);
    sb_prom_printf(&o,
                   "# HELP switchboard_admin_connections_refused_total Connections refused at "
                   "accept, by cap.\n# TYPE switchboard_admin_connections_refused_total counter\n"
                   "switchboard_admin_connections_refused_total{cap=\"max-connections\"} %llu\n"
                   "switchboard_admin_connections_refused_total{cap=\"max-connections-per-ip\"} "
                   "%llu\n",
                   (unsigned long long)ls.refused_max, (unsigned long long)ls.refused_source);
    sb_prom_printf(
        &o,
        "# HELP switchboard_build_info Build of this process.\n"
        "# TYPE switchboard_build_info gauge\nswitchboard_build_info{version=\"%s\"} 1\n",
        SB_VERSION);
    return sb_prom_take(&o, len);
}
