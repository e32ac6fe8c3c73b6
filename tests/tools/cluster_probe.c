/* cluster_probe: drives common/cluster.c against a real Redis (cluster or single) for
 * tests/integration/test_cluster_client.py. Reads one command per line on stdin, writes one
 * JSON object per line on stdout (replies and asynchronous events), on one libuv loop.
 *   cmd ID KEY ARG...      run ARG... routed by KEY         -> {"id":ID,"reply":...}
 *   script ID NKEYS ARG... the probe's script (INCRBY KEYS[1] ARGV[1], returns the value)
 *   pub ID CHANNEL PAYLOAD SPUBLISH                          -> {"id":ID,"reply":N}
 *   pubr ID CHANNEL PAYLOAD  the same, again while nobody receives it (publish_received)
 *   pubq ID CHANNEL PAYLOAD  as pubr; its callback, the first of them to come, quits (closes the
 *                            client inside a callback); each pubq reply says whether it came
 *                            after sb_cluster_close returned ("after_close")
 *   sub CHANNEL | unsub CHANNEL
 *   state                  -> {"state":{"up":..,"holes":..,"pending":..,"primaries":[...]}}
 *   owner SLOT             -> {"owner":"host:port"} (or null)
 *   refresh | quit
 * Events: {"event":"state"|"topology"|"message"|"subscribed", ...}. Arguments are single
 * words; "%20" in one stands for a space. An ID is any word chosen by the caller. */
#include "cluster.h"
#include "log.h"

#include <jansson.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static const char probe_lua[] = "return redis.call('INCRBY', KEYS[1], ARGV[1])";

typedef struct {
    uv_loop_t loop;
    uv_pipe_t in;
    sb_cluster_t *c;
    sb_embed_t script;
    char sha[41];
    char line[65536];
    size_t used;
    int quitting;
    int close_returned; /* sb_cluster_close has returned */
} probe_t;

static probe_t *the_probe;
static void quit(probe_t *p);

static void emit(json_t *o) /* steals o */
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(s);
    }
}

static json_t *reply_json(const redisReply *r) /* new */
{
    switch (r->type) {
    case REDIS_REPLY_INTEGER:
        return json_integer(r->integer);
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        return json_stringn(r->str, r->len);
    case REDIS_REPLY_ERROR:
        return json_pack("{s:s%}", "err", r->str, r->len);
    case REDIS_REPLY_ARRAY: {
        json_t *a = json_array();
        for (size_t i = 0; i < r->elements; i++)
            json_array_append_new(a, reply_json(r->element[i]));
        return a;
    }
    default:
        return json_null();
    }
}

static void on_reply(redisReply *reply, const char *error, void *data)
{
    char *id = data;
    if (error)
        emit(json_pack("{s:s,s:s}", "id", id, "error", error));
    else
        emit(json_pack("{s:s,s:o}", "id", id, "reply", reply_json(reply)));
    free(id);
}

static void on_reply_quit(redisReply *reply, const char *error, void *data)
{
    probe_t *p = the_probe;
    char *id = data;
    emit(json_pack("{s:s,s:o,s:o,s:b}", "id", id, "reply", reply ? reply_json(reply) : json_null(),
                   "error", error ? json_string(error) : json_null(), "after_close",
                   p->close_returned));
    free(id);
    if (!p->quitting)
        quit(p);
}

static void on_state(sb_cluster_t *c, int up, void *data)
{
    (void)c;
    (void)data;
    emit(json_pack("{s:s,s:b}", "event", "state", "up", up));
}

static void on_topology(sb_cluster_t *c, const unsigned char *bits, const char *why, void *data)
{
    (void)c;
    (void)data;
    int n = 0, first = -1;
    for (unsigned s = 0; s < SB_SLOTS; s++) {
        if (sb_cluster_slot_in(bits, s) && n++ == 0)
            first = (int)s;
    }
    emit(json_pack("{s:s,s:s,s:i,s:i}", "event", "topology", "why", why, "slots", n, "first",
                   first));
}

static void on_message(sb_cluster_t *c, const char *channel, const char *payload, size_t len,
                       void *data)
{
    (void)c;
    (void)data;
    emit(json_pack("{s:s,s:s,s:s%}", "event", "message", "channel", channel, "payload", payload,
                   len));
}

static void on_subscribed(sb_cluster_t *c, const char *channel, void *data)
{
    (void)c;
    (void)data;
    emit(json_pack("{s:s,s:s}", "event", "subscribed", "channel", channel));
}

static void unescape(char *w)
{
    char *o = w;
    for (char *p = w; *p; p++) {
        if (p[0] == '%' && p[1] == '2' && p[2] == '0') {
            *o++ = ' ';
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
}

static void print_state(probe_t *p)
{
    int first;
    int holes = sb_cluster_holes(p->c, &first);
    json_t *prims = json_array();
    for (int i = 0; i < sb_cluster_nprimaries(p->c); i++) {
        sb_cluster_node_t n;
        sb_cluster_primary(p->c, i, &n);
        json_array_append_new(prims, json_pack("{s:s,s:i,s:s,s:s,s:i,s:b}", "host", n.host, "port",
                                               n.port, "id", n.id, "run_id", n.run_id, "nslots",
                                               n.nslots, "up", n.up));
    }
    sb_cluster_stats_t st;
    sb_cluster_stats(p->c, &st);
    json_t *stats =
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "moved", (json_int_t)st.moved, "ask",
                  (json_int_t)st.ask, "tryagain", (json_int_t)st.tryagain, "noscript",
                  (json_int_t)st.noscript, "clusterdown", (json_int_t)st.clusterdown, "map_reads",
                  (json_int_t)st.map_reads, "map_changes", (json_int_t)st.map_changes);
    emit(json_pack("{s:{s:b,s:b,s:i,s:i,s:i,s:o,s:o}}", "state", "up", sb_cluster_up(p->c),
                   "cluster", sb_cluster_is_cluster(p->c), "holes", holes, "first_hole", first,
                   "pending", sb_cluster_pending(p->c), "primaries", prims, "stats", stats));
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void quit(probe_t *p)
{
    p->quitting = 1;
    uv_read_stop((uv_stream_t *)&p->in);
    sb_cluster_close(p->c);
    p->close_returned = 1;
    uv_close((uv_handle_t *)&p->in, on_closed);
}

static void run_line(probe_t *p, char *line)
{
    char *argv[64];
    int argc = 0;
    for (char *save = NULL, *w = strtok_r(line, " ", &save); w && argc < 64;
         w = strtok_r(NULL, " ", &save)) {
        unescape(w);
        argv[argc++] = w;
    }
    if (argc == 0 || p->quitting)
        return;
    const char *verb = argv[0];
    int rc = 0;
    char *id = argc > 1 ? strdup(argv[1]) : NULL;
    if (strcmp(verb, "cmd") == 0 && argc >= 4) {
        rc = sb_cluster_command(p->c, argv[2], strlen(argv[2]), on_reply, id, argc - 3,
                                (const char **)argv + 3, NULL);
    } else if (strcmp(verb, "script") == 0 && argc >= 3) {
        rc = sb_cluster_script(p->c, &p->script, atoi(argv[2]), argc - 3, (const char **)argv + 3,
                               NULL, on_reply, id);
    } else if (strcmp(verb, "pub") == 0 && argc == 4) {
        rc = sb_cluster_publish(p->c, argv[2], argv[3], strlen(argv[3]), on_reply, id);
    } else if (strcmp(verb, "pubr") == 0 && argc == 4) {
        rc = sb_cluster_publish_received(p->c, argv[2], argv[3], strlen(argv[3]), on_reply, id);
    } else if (strcmp(verb, "pubq") == 0 && argc == 4) {
        rc =
            sb_cluster_publish_received(p->c, argv[2], argv[3], strlen(argv[3]), on_reply_quit, id);
    } else {
        free(id);
        id = NULL;
        if (strcmp(verb, "sub") == 0 && argc == 2)
            emit(json_pack("{s:s,s:i}", "sub", argv[1], "rc", sb_cluster_subscribe(p->c, argv[1])));
        else if (strcmp(verb, "unsub") == 0 && argc == 2)
            emit(json_pack("{s:s,s:i}", "unsub", argv[1], "rc",
                           sb_cluster_unsubscribe(p->c, argv[1])));
        else if (strcmp(verb, "state") == 0)
            print_state(p);
        else if (strcmp(verb, "owner") == 0 && argc == 2) {
            int i = sb_cluster_slot_owner(p->c, (unsigned)atoi(argv[1]));
            sb_cluster_node_t n;
            char hp[300];
            if (i >= 0 && sb_cluster_primary(p->c, i, &n) == 0) {
                snprintf(hp, sizeof hp, "%s:%d", n.host, n.port);
                emit(json_pack("{s:s,s:b}", "owner", hp, "up",
                               sb_cluster_slot_up(p->c, (unsigned)atoi(argv[1]))));
            } else {
                emit(json_pack("{s:n,s:b}", "owner", "up", 0));
            }
        } else if (strcmp(verb, "refresh") == 0)
            sb_cluster_refresh(p->c);
        else if (strcmp(verb, "quit") == 0)
            quit(p);
        else
            emit(json_pack("{s:s}", "bad", verb));
        return;
    }
    if (rc != 0) {
        emit(json_pack("{s:s,s:i}", "id", id, "rc", rc));
        free(id);
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    probe_t *p = h->data;
    buf->base = p->line + p->used;
    buf->len = sizeof p->line - p->used - 1;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    probe_t *p = s->data;
    if (n < 0) {
        /* stdin closed: behave as "quit". */
        if (!p->quitting) {
            char q[] = "quit";
            run_line(p, q);
        }
        return;
    }
    p->used += (size_t)n;
    char *start = p->line, *nl;
    while (!p->quitting && (nl = memchr(start, '\n', p->used - (size_t)(start - p->line)))) {
        *nl = '\0';
        run_line(p, start);
        start = nl + 1;
    }
    if (p->quitting)
        return;
    size_t left = p->used - (size_t)(start - p->line);
    memmove(p->line, start, left);
    p->used = left;
    if (p->used >= sizeof p->line - 1)
        p->used = 0; /* a line longer than the buffer: dropped */
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s REDIS_URL < commands\n", argv[0]);
        return 2;
    }
    sb_log_set_level(getenv("PROBE_DEBUG") ? SB_LOG_DEBUG : SB_LOG_INFO);
    static probe_t p;
    the_probe = &p;
    uv_loop_init(&p.loop);
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)probe_lua, sizeof probe_lua - 1, md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(p.sha + 2 * i, 3, "%02x", md[i]);
    p.script = (sb_embed_t){"probe.lua", probe_lua, sizeof probe_lua - 1, p.sha};
    sb_cluster_opts_t o = {
        .loop = &p.loop,
        .url = argv[1],
        .name = "probe",
        .timeout_ms = 2000,
        .on_topology = on_topology,
        .on_state = on_state,
        .on_message = on_message,
        .on_subscribed = on_subscribed,
    };
    p.c = sb_cluster_new(&o);
    if (!p.c)
        return 1;
    uv_pipe_init(&p.loop, &p.in, 0);
    uv_pipe_open(&p.in, 0);
    p.in.data = &p;
    uv_read_start((uv_stream_t *)&p.in, on_alloc, on_read);
    uv_run(&p.loop, UV_RUN_DEFAULT);
    /* Everything closed cleanly: no handle left behind. */
    int rc = uv_loop_close(&p.loop);
    emit(json_pack("{s:s,s:i}", "event", "exit", "loop_close", rc));
    return rc == 0 ? 0 : 1;
}
