/* Node metrics (contract section 6): counters kept in sb_metrics_t, rendered as Prometheus
 * text on /metrics. Label values are bounded: message types by the protocol's list, error
 * and close codes by the contract's lists (anything else is counted as "other"). */
#include "node.h"
#include "log.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double bounds[SB_HIST_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                               0.01,   0.025,   0.05,   0.1,   0.5,    1.0};

static const char *const error_codes[] = {
    "bad-json",       "bad-message",  "unknown-type", "not-joined",  "already-joined",
    "bad-room",       "room-full",    "peer-not-found", "unauthorized", "rate-limited",
    "unavailable",    "internal"};

void sb_metrics_init(sb_metrics_t *m)
{
    memset(m, 0, sizeof *m);
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
    static const int known[] = {1000, 1001, 1006, 1009, 1011, 4000, 4001, 4002, 4003};
    char label[16] = "other";
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (code == known[i])
            snprintf(label, sizeof label, "%d", code);
    bump(&n->metrics.closes, label);
}

void sb_metrics_observe(double seconds, void *data)
{
    sb_node_t *n = data;
    sb_metrics_t *m = &n->metrics;
    int i = 0;
    while (i < SB_HIST_BUCKETS && seconds > bounds[i])
        i++;
    m->hist[i]++;
    m->hist_sum += seconds;
    m->hist_count++;
}

typedef struct {
    char *buf;
    size_t len, cap;
} out_t;

static void __attribute__((format(printf, 2, 3))) put(out_t *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)(n > 0 ? n : 0);
        char *b = realloc(o->buf, cap);
        if (!b)
            return;
        o->buf = b;
        o->cap = cap;
    }
}

typedef struct {
    out_t *o;
    const char *name, *label;
} each_t;

static void put_map(out_t *o, const sb_map_t *map, const char *name, const char *label)
{
    for (size_t i = 0; i < map->nbuckets; i++)
        for (sb_map_entry_t *e = map->buckets[i]; e; e = e->next)
            put(o, "%s{%s=\"%s\"} %llu\n", name, label, e->key,
                (unsigned long long)(uintptr_t)e->value);
}

char *sb_metrics_render(sb_node_t *n, size_t *len)
{
    out_t o = {malloc(4096), 0, 4096};
    if (!o.buf)
        return NULL;
    sb_metrics_t *m = &n->metrics;
    put(&o, "# HELP switchboard_node_sockets Open WebSocket connections.\n"
            "# TYPE switchboard_node_sockets gauge\nswitchboard_node_sockets %d\n",
        n->nsessions);
    put(&o, "# HELP switchboard_node_joined_sockets Sockets joined to a room.\n"
            "# TYPE switchboard_node_joined_sockets gauge\nswitchboard_node_joined_sockets %d\n",
        n->njoined);
    put(&o, "# HELP switchboard_node_messages_received_total Client messages by type.\n"
            "# TYPE switchboard_node_messages_received_total counter\n");
    for (int i = 0; i < SB_MSG__COUNT; i++)
        put(&o, "switchboard_node_messages_received_total{type=\"%s\"} %llu\n",
            sb_msg_type_names[i], (unsigned long long)m->received[i]);
    put(&o, "# HELP switchboard_node_messages_sent_total Frames queued to clients.\n"
            "# TYPE switchboard_node_messages_sent_total counter\n"
            "switchboard_node_messages_sent_total %llu\n",
        (unsigned long long)m->sent);
    put(&o, "# HELP switchboard_node_errors_total Error frames sent, by code.\n"
            "# TYPE switchboard_node_errors_total counter\n");
    put_map(&o, &m->errors, "switchboard_node_errors_total", "code");
    put(&o, "# HELP switchboard_node_closes_total Connections closed, by close code.\n"
            "# TYPE switchboard_node_closes_total counter\n");
    put_map(&o, &m->closes, "switchboard_node_closes_total", "code");
    put(&o, "# HELP switchboard_node_send_queue_bytes Bytes queued to clients.\n"
            "# TYPE switchboard_node_send_queue_bytes gauge\n"
            "switchboard_node_send_queue_bytes %zu\n",
        n->send_queue_bytes);
    put(&o, "# HELP switchboard_node_redis_up 1 when the Redis command connection works.\n"
            "# TYPE switchboard_node_redis_up gauge\nswitchboard_node_redis_up %d\n",
        sb_redis_up(n->redis) ? 1 : 0);
    put(&o, "# HELP switchboard_node_redis_command_duration_seconds Redis command latency.\n"
            "# TYPE switchboard_node_redis_command_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < SB_HIST_BUCKETS; i++) {
        cum += m->hist[i];
        put(&o, "switchboard_node_redis_command_duration_seconds_bucket{le=\"%g\"} %llu\n",
            bounds[i], (unsigned long long)cum);
    }
    cum += m->hist[SB_HIST_BUCKETS];
    put(&o,
        "switchboard_node_redis_command_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
        "switchboard_node_redis_command_duration_seconds_sum %.6f\n"
        "switchboard_node_redis_command_duration_seconds_count %llu\n",
        (unsigned long long)cum, m->hist_sum, (unsigned long long)m->hist_count);
    put(&o, "# HELP switchboard_node_pubsub_resyncs_total Rooms re-read after a gap or reconnect.\n"
            "# TYPE switchboard_node_pubsub_resyncs_total counter\n"
            "switchboard_node_pubsub_resyncs_total %llu\n",
        (unsigned long long)m->resyncs);
    put(&o, "# HELP switchboard_build_info Build version.\n# TYPE switchboard_build_info gauge\n"
            "switchboard_build_info{version=\"%s\"} 1\n",
        SB_VERSION);
    *len = o.len;
    return o.buf;
}
