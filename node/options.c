/* The node's option table (contract section 1) and the checks that span options. */
#include "node.h"
#include "listen.h"
#include "log.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OFF(f) offsetof(sb_node_config_t, f)
#define DAY (86400000LL)

static const sb_option_t node_options[] = {
    {"listen", SB_OPT_HOSTPORT, "0.0.0.0:8080", 0, 0, OFF(listen), "address to listen on"},
    {"redis", SB_OPT_REDIS_URL, "redis://127.0.0.1:6379", 0, 0, OFF(redis),
     "redis://[user:pass@]host:port[/db], unix:///path or "
     "redis-cluster://[user:pass@]host:port[,host:port...]"},
    {"redis-timeout-ms", SB_OPT_INT, "1000", 10, 60000, OFF(redis_timeout_ms),
     "timeout of every Redis command and connect"},
    {"redis-lazy-reply-ms", SB_OPT_INT, "1", 0, 100, OFF(redis_lazy_reply_ms),
     "how late the reply to a relayed signal's PUBLISH may be read (at the node's next wake-up "
     "for anything else, at most this late); 0 = at once"},
    {"id", SB_OPT_NAME, NULL, 0, 0, OFF(id), "node id, [A-Za-z0-9._:-] (default hostname:port)"},
    {"prefix", SB_OPT_NAME, "sb", 0, 0, OFF(prefix), "Redis key prefix"},
    {"presence-ttl-ms", SB_OPT_INT, "15000", 100, DAY, OFF(presence_ttl_ms),
     "presence TTL of each socket and of the node lease"},
    {"heartbeat-ms", SB_OPT_INT, "5000", 20, DAY, OFF(heartbeat_ms),
     "presence refresh interval; ttl must be >= 2 x heartbeat + redis timeout"},
    {"ping-interval-ms", SB_OPT_INT, "10000", 1, DAY, OFF(ping_interval_ms),
     "idle time before the node pings a client (WebSocket ping)"},
    {"ping-timeout-ms", SB_OPT_INT, "20000", 1, DAY, OFF(ping_timeout_ms),
     "silence (no frame, no pong) before the node hangs up a client"},
    {"max-message-bytes", SB_OPT_INT, "65536", 256, 16777216, OFF(max_message_bytes),
     "largest inbound message, all fragments counted (close 1009 above)"},
    {"max-room-members", SB_OPT_INT, "64", 2, 10000, OFF(max_room_members), "room capacity"},
    {"rate", SB_OPT_INT, "50", 1, 1000000, OFF(rate), "message tokens per second per socket"},
    {"burst", SB_OPT_INT, "100", 10, 1000000, OFF(burst),
     "token bucket size per socket (an accepted join/leave costs 10)"},
    {"max-send-queue-bytes", SB_OPT_INT, "1048576", 1024, 1073741824, OFF(max_send_queue_bytes),
     "outbound queue per socket before closing it with 4003"},
    {"queue-budget-bytes", SB_OPT_INT, "0", 0, 1099511627776LL, OFF(queue_budget_bytes),
     "bytes queued to all clients together before the largest queues are closed with 4003; "
     "0 = a quarter of the memory the node may use (cgroup limit, else RAM)"},
    {"queue-stall-ms", SB_OPT_INT, "20000", 100, DAY, OFF(queue_stall_ms),
     "a socket whose send queue has not been empty for this long is closed with 4003"},
    {"allowed-origin", SB_OPT_ORIGINS, NULL, 0, 0, OFF(allowed_origins),
     "allowed Origin, exact scheme://host[:port], repeatable (none = any)"},
    {"auth-secret-file", SB_OPT_FILE, NULL, 0, 0, OFF(auth_secret_file),
     "HS256 secret (>= 32 bytes); when set, join needs a JWT"},
    {"auth-timeout-ms", SB_OPT_INT, "10000", 100, DAY, OFF(auth_timeout_ms),
     "with auth on, close sockets that have not joined by then (4001)"},
    {"join-timeout-ms", SB_OPT_INT, "30000", 0, DAY, OFF(join_timeout_ms),
     "with auth off, close sockets that have not joined by then (4001); 0 = never"},
    {"resume-grace-ms", SB_OPT_INT, "15000", 0, DAY, OFF(resume_grace_ms),
     "how long a lost socket stays a member (away) and may be resumed on any node; 0 = no "
     "resume (a lost socket leaves at once)"},
    {"resume-queue-max", SB_OPT_INT, "256", 1, 1000000, OFF(resume_queue_max),
     "signals queued in Redis for one away socket; past it the sender gets peer-queue-full"},
    {"resume-queue-bytes", SB_OPT_INT, "262144", 1024, 1073741824, OFF(resume_queue_bytes),
     "bytes of signals queued in Redis for one away socket; past it the sender gets "
     "peer-queue-full"},
    {"turn-secret-file", SB_OPT_FILE, NULL, 0, 0, OFF(turn_secret_file),
     "TURN REST shared secret (coturn use-auth-secret)"},
    {"turn-url", SB_OPT_URLS, NULL, 0, 0, OFF(turn_urls), "TURN/STUN URL, repeatable"},
    {"turn-ttl-ms", SB_OPT_INT, "86400000", 60000, 30 * DAY, OFF(turn_ttl_ms),
     "lifetime of TURN credentials"},
    {"tls-cert", SB_OPT_FILE, NULL, 0, 0, OFF(tls_cert), "PEM certificate (with --tls-key)"},
    {"tls-key", SB_OPT_FILE, NULL, 0, 0, OFF(tls_key), "PEM private key (with --tls-cert)"},
    {"drain-timeout-ms", SB_OPT_INT, "10000", 0, DAY, OFF(drain_timeout_ms),
     "on SIGTERM, how long to drain before exiting"},
    {"max-connections", SB_OPT_INT, "0", 0, 100000000, OFF(max_connections),
     "open connections (HTTP and WebSocket) before new ones are refused at accept; 0 = the fd "
     "limit less 112 (a reserve)"},
    {"max-connections-per-ip", SB_OPT_INT, "0", 0, 100000000, OFF(max_connections_per_ip),
     "open connections from one source address; 0 = half of --max-connections"},
    {"peerjs-path", SB_OPT_STRING, "/peerjs", 0, 0, OFF(peerjs_path),
     "where the PeerJS server is served (HTTP routes and the WebSocket at PATH/peerjs); off = "
     "no PeerJS"},
    {"peerjs-key", SB_OPT_STRING, "peerjs", 0, 0, OFF(peerjs_key),
     "the PeerJS key clients must give, 1-32 of [A-Za-z0-9._-]"},
    {"peerjs-discovery", SB_OPT_STRING, "false", 0, 0, OFF(peerjs_discovery_text),
     "true: GET PATH/KEY/peers lists the claimed PeerJS ids (else 401)"},
    {"peerjs-expire-timeout-ms", SB_OPT_INT, "5000", 100, DAY, OFF(peerjs_expire_timeout_ms),
     "how long a PeerJS message waits for an id that is not connected before its sender gets "
     "EXPIRE"},
    {"peerjs-alive-timeout-ms", SB_OPT_INT, "90000", 1000, DAY, OFF(peerjs_alive_timeout_ms),
     "a PeerJS socket that sends no message for this long is closed"},
    {"websocket", SB_OPT_STRING, "native", 0, 0, OFF(websocket_text),
     "native: plain (non-TLS) WebSockets are served by the node's own layer; lws: by "
     "libwebsockets (TLS always is)"},
    {"log-level", SB_OPT_LEVEL, "info", 0, 0, OFF(log_level), "error, warn, info or debug"},
    {0},
};

/* The memory this process may use: its cgroup's limit (v2 memory.max, or v1
 * memory.limit_in_bytes) when one is set and below the RAM, else the RAM. 0 when unknown. */
static uint64_t memory_available(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t ram = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    char line[512], path[700];
    FILE *f = fopen("/proc/self/cgroup", "r");
    uint64_t limit = 0;
    while (f && !limit && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        const char *v1 = strstr(line, ":memory:");
        if (strncmp(line, "0::", 3) == 0)
            snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max",
                     strcmp(line + 3, "/") == 0 ? "" : line + 3);
        else if (v1)
            snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.limit_in_bytes",
                     strcmp(v1 + 8, "/") == 0 ? "" : v1 + 8);
        else
            continue;
        FILE *m = fopen(path, "r");
        unsigned long long v;
        if (m && fscanf(m, "%llu", &v) == 1) /* "max" (no limit) does not scan */
            limit = v;
        if (m)
            fclose(m);
    }
    if (f)
        fclose(f);
    return limit && (!ram || limit < ram) ? limit : ram;
}

/* --peerjs-*: the path ("off", or /segment[/segment...] of [A-Za-z0-9._~-], no route of the
 * node's own), the key, discovery as a boolean. 0, or -1 with the option named in err. */
static int peerjs_options(sb_node_config_t *cfg, char *err, size_t len)
{
    const char *d = cfg->peerjs_discovery_text;
    if (strcmp(d, "true") == 0 || strcmp(d, "1") == 0 || strcmp(d, "yes") == 0 ||
        strcmp(d, "on") == 0)
        cfg->peerjs_discovery = 1;
    else if (strcmp(d, "false") == 0 || strcmp(d, "0") == 0 || strcmp(d, "no") == 0 ||
             strcmp(d, "off") == 0)
        cfg->peerjs_discovery = 0;
    else {
        snprintf(err, len, "--peerjs-discovery: '%s' is not true or false", d);
        return -1;
    }
    if (sb_pj_room(cfg->peerjs_room, sizeof cfg->peerjs_room, cfg->peerjs_key) < 0) {
        snprintf(err, len, "--peerjs-key: must be 1-32 of [A-Za-z0-9._-]");
        return -1;
    }
    const char *p = cfg->peerjs_path;
    if (strcmp(p, "off") == 0) {
        free(cfg->peerjs_path);
        cfg->peerjs_path = NULL;
        return 0;
    }
    size_t n = strlen(p);
    int ok = n >= 2 && n <= 64 && p[0] == '/' && p[n - 1] != '/' && !strstr(p, "//") &&
             strcmp(p, "/ws") != 0 && strcmp(p, "/livez") != 0 && strcmp(p, "/readyz") != 0 &&
             strcmp(p, "/metrics") != 0;
    for (size_t i = 0; ok && i < n; i++)
        ok = (p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z') ||
             (p[i] >= '0' && p[i] <= '9') || strchr("/._~-", p[i]);
    if (!ok) {
        snprintf(err, len,
                 "--peerjs-path: '%s' must be off or /NAME[/NAME...] of [A-Za-z0-9._~-] (at "
                 "most 64 characters, not a route of the node)",
                 p);
        return -1;
    }
    return 0;
}

/* One line naming the option, exit status 2 (contract section 1). */
static int bad(const char *line)
{
    fprintf(stderr, "switchboard-node: %s\n", line);
    return 2;
}

int sb_node_options(sb_node_config_t *cfg, int argc, char **argv, char *const *envp)
{
    char err[512];
    memset(cfg, 0, sizeof *cfg);
    int rc = sb_config_parse(node_options, "SWITCHBOARD_", argc, argv, envp, cfg, err, sizeof err);
    if (rc == SB_CONFIG_HELP) {
        static char help[8192];
        sb_config_help(node_options, "SWITCHBOARD_",
                       "Usage: switchboard-node [--option value]...\n"
                       "WebSocket signaling node of Switchboard (state in Redis).",
                       help, sizeof help);
        fputs(help, stdout);
        return 1;
    }
    if (rc == SB_CONFIG_VERSION) {
        printf("switchboard-node %s\n", SB_VERSION);
        return 1;
    }
    if (rc != SB_CONFIG_OK)
        return bad(err);
    if (cfg->presence_ttl_ms < 2 * cfg->heartbeat_ms + cfg->redis_timeout_ms) {
        snprintf(err, sizeof err,
                 "--presence-ttl-ms: %lld is less than 2 x --heartbeat-ms + --redis-timeout-ms "
                 "(%lld)",
                 (long long)cfg->presence_ttl_ms,
                 (long long)(2 * cfg->heartbeat_ms + cfg->redis_timeout_ms));
        return bad(err);
    }
    if (cfg->ping_timeout_ms <= cfg->ping_interval_ms)
        return bad("--ping-timeout-ms: must be more than --ping-interval-ms");
    if (!!cfg->tls_cert != !!cfg->tls_key)
        return bad(cfg->tls_cert ? "--tls-key: needed with --tls-cert"
                                 : "--tls-cert: needed with --tls-key");
    if (cfg->turn_urls.n > 0 && !cfg->turn_secret_file)
        return bad("--turn-secret-file: needed with --turn-url");
    if (cfg->turn_secret_file && cfg->turn_urls.n == 0)
        return bad("--turn-url: needed with --turn-secret-file");
    if (peerjs_options(cfg, err, sizeof err) != 0)
        return bad(err);
    if (strcmp(cfg->websocket_text, "native") == 0)
        cfg->ws_native = 1;
    else if (strcmp(cfg->websocket_text, "lws") != 0)
        return bad("--websocket: must be native or lws");
    if (sb_listen_limits(&cfg->max_connections, &cfg->max_connections_per_ip, "max-connections",
                         "max-connections-per-ip", err, sizeof err) != 0)
        return bad(err);
    if (cfg->queue_budget_bytes == 0) {
        /* A quarter: the rest is for the sockets themselves (about 4 KB each), lws, Redis
         * replies and the allocator's slack. At least 16 MiB when the memory is unknown. */
        uint64_t mem = memory_available();
        cfg->queue_budget_bytes = mem >= 64ULL << 20 ? (int64_t)(mem / 4) : 16LL << 20;
    }
    if (!cfg->id) {
        char host[256] = "node", hp[300];
        gethostname(host, sizeof host - 1);
        const char *port = strrchr(cfg->listen, ':');
        snprintf(hp, sizeof hp, "%s:%s", host, port ? port + 1 : "0");
        if (!sb_config_valid_name(hp)) {
            snprintf(err, sizeof err, "--id: the default '%s' is not a valid id; set --id", hp);
            return bad(err);
        }
        cfg->id = strdup(hp);
    }
    sb_log_set_level((sb_log_level_t)sb_log_parse_level(cfg->log_level));
    return 0;
}

void sb_node_options_free(sb_node_config_t *cfg)
{
    sb_config_free(node_options, cfg);
}
