/* Node metrics (contract section 6): counters kept in sb_metrics_t, rendered as Prometheus
 * text on /metrics. Label values are bounded: message types by the protocol's list, error
 * and close codes by the contract's lists (anything else is counted as "other"). */
#include "node.h"
#include "listen.h"
#include "log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                0.01,   0.025,   0.05,   0.1,   0.5,    1.0};

static const char *const error_codes[] = {
    "bad-json",  "bad-message",    "unknown-type", "not-joined",   "already-joined", "bad-room",
    "room-full", "peer-not-found", "unauthorized", "rate-limited", "unavailable",    "internal"};

void sb_metrics_init(sb_metrics_t *m)
{
    memset(m, 0, sizeof *m);
    m->redis_latency.bounds = bounds;
    m->redis_latency.n = (int)(sizeof bounds / sizeof bounds[0]);
    sb_map_init(&m->errors);
    sb_map_init(&m->closes);
}

void sb_metrics_free(sb_metrics_t *m)
{
    sb_map_free(&m->errors);
    sb_map_free(&m->closes);
}

static void bump(sb_map_t *map, const char *key)
{
    uintptr_t v = (uintptr_t)sb_map_get(map, key);
    sb_map_put(map, key, (void *)(v + 1));
}

void sb_metrics_error(sb_node_t *n, const char *code)
{
    const char *label = "other";
    for (size_t i = 0; i < sizeof error_codes / sizeof error_codes[0]; i++)
        if (strcmp(code, error_codes[i]) == 0)
            label = error_codes[i];
    bump(&n->metrics.errors, label);
}

void sb_metrics_close(sb_node_t *n, int code)
{
    static const int known[] = {1000, 1001, 1002, 1006, 1009, 1011, 4000, 4001, 4002, 4003};
    char label[16] = "other";
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (code == known[i])
            snprintf(label, sizeof label, "%d", code);
    bump(&n->metrics.closes, label);
}

void sb_metrics_observe(double seconds, void *data)
{
    sb_node_t *n = data;
    sb_hist_observe(&n->metrics.redis_latency, seconds);
}

static void put_map(sb_prom_t *p, const sb_map_t *map, const char *name, const char *label)
{
    for (size_t i = 0; i < map->nbuckets; i++)
        for (sb_map_entry_t *e = map->buckets[i]; e; e = e->next)
            sb_prom_printf(p, "%s{%s=\"%s\"} %llu\n", name, label, e->key,
                           (unsigned long long)(uintptr_t)e->value);
}

char *sb_metrics_render(sb_node_t *n, size_t *len)
{
    sb_prom_t p;
    sb_prom_init(&p);
    sb_metrics_t *m = &n->metrics;
    sb_prom_gauge(&p, "switchboard_node_sockets", "Open WebSocket connections.", n->nsessions);
    sb_prom_gauge(&p, "switchboard_node_joined_sockets", "Sockets joined to a room.", n->njoined);
    sb_prom_printf(&p, "# HELP switchboard_node_messages_received_total Client messages by "
                       "type.\n# TYPE switchboard_node_messages_received_total counter\n");
    for (int i = 0; i < SB_MSG__COUNT; i++)
        sb_prom_printf(&p, "switchboard_node_messages_received_total{type=\"%s\"} %llu\n",
                       sb_msg_type_names[i], (unsigned long long)m->received[i]);
    sb_prom_counter(&p, "switchboard_node_messages_sent_total", "Frames queued to clients.",
                    (long long)m->sent);
    sb_prom_printf(&p, "# HELP switchboard_node_errors_total Error frames sent, by code.\n"
                       "# TYPE switchboard_node_errors_total counter\n");
    put_map(&p, &m->errors, "switchboard_node_errors_total", "code");
    sb_prom_printf(&p, "# HELP switchboard_node_closes_total Connections closed, by close "
                       "code.\n# TYPE switchboard_node_closes_total counter\n");
    put_map(&p, &m->closes, "switchboard_node_closes_total", "code");
    /* The listener's names are server.c's VHOST_NAME and PROTOCOL_NAME. */
    sb_listen_stats_t ls;
    sb_listen_stats(n->lws, SB_VHOST_NAME, SB_PROTOCOL_NAME, &ls);
    sb_prom_gauge(&p, "switchboard_node_connections",
                  "Open connections, HTTP and WebSocket (capped by --max-connections).", ls.open);
    sb_prom_printf(&p,
                   "# HELP switchboard_node_connections_refused_total Connections refused at "
                   "accept, by cap.\n# TYPE switchboard_node_connections_refused_total counter\n"
                   "switchboard_node_connections_refused_total{cap=\"max-connections\"} %llu\n"
                   "switchboard_node_connections_refused_total{cap=\"max-connections-per-ip\"} "
                   "%llu\n",
                   (unsigned long long)ls.refused_max, (unsigned long long)ls.refused_source);
    sb_prom_gauge(
        &p, "switchboard_node_send_queue_bytes",
        "Bytes queued to clients (frames waiting, and what the WebSocket layer holds of a "
        "partial write).",
        (long long)n->send_queue_bytes);
    sb_prom_gauge(&p, "switchboard_node_redis_up",
                  "1 when every hash slot is served by a connected Redis primary.",
                  n->db_up ? 1 : 0);
    sb_cluster_stats_t cs;
    sb_cluster_stats(n->db, &cs);
    sb_prom_gauge(&p, "switchboard_node_redis_primaries", "Redis primaries the node talks to.",
                  sb_cluster_nprimaries(n->db));
    sb_prom_counter(&p, "switchboard_node_redis_redirects_total",
                    "Redis Cluster redirects followed (MOVED and ASK).",
                    (long long)(cs.moved + cs.ask));
    sb_prom_counter(&p, "switchboard_node_redis_map_changes_total",
                    "Redis Cluster slot maps that moved a slot (failover, reshard).",
                    (long long)cs.map_changes);
    sb_prom_gauge(&p, "switchboard_node_send_queue_budget_bytes",
                  "The node-wide budget for queued bytes (--queue-budget-bytes).",
                  (long long)n->cfg.queue_budget_bytes);
    sb_prom_printf(&p,
                   "# HELP switchboard_node_send_queue_sheds_total Sockets closed 4003 for what "
                   "they had queued, by budget.\n"
                   "# TYPE switchboard_node_send_queue_sheds_total counter\n"
                   "switchboard_node_send_queue_sheds_total{budget=\"socket\"} %llu\n"
                   "switchboard_node_send_queue_sheds_total{budget=\"node\"} %llu\n"
                   "switchboard_node_send_queue_sheds_total{budget=\"stall\"} %llu\n",
                   (unsigned long long)m->sheds[SB_SHED_SOCKET],
                   (unsigned long long)m->sheds[SB_SHED_BUDGET],
                   (unsigned long long)m->sheds[SB_SHED_STALL]);
    sb_prom_hist(&p, "switchboard_node_redis_command_duration_seconds", "Redis command latency.",
                 &m->redis_latency);
    sb_prom_counter(&p, "switchboard_node_pubsub_resyncs_total",
                    "Rooms re-read after a gap or reconnect.", (long long)m->resyncs);
    sb_prom_counter(&p, "switchboard_node_redis_behind_refusals_total",
                    "Requests answered unavailable unsent: Redis ran behind by more than the "
                    "timeout.",
                    (long long)m->redis_shed);
    sb_prom_printf(&p,
                   "# HELP switchboard_build_info Build version.\n"
                   "# TYPE switchboard_build_info gauge\n"
                   "switchboard_build_info{version=\"%s\"} 1\n",
                   SB_VERSION);
    return sb_prom_take(&p, len);
}
