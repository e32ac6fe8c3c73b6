/* redis_tool: the benchmark's direct Redis work, in C so that client overhead stays small.
 *   populate  writes rooms, members, presence, link halves, degrees, node counts, room and
 *             bucket stats (P:{#}:..., the single Redis bucket), the socket index and node leases
 * in the key schema of lua/README.md, with a chosen share of members left without a presence key
 *   scan      a bare SCAN of the whole keyspace (the reconcile pass's reference)
 *   pubrtt    PUBLISH -> subscriber round trip, one message in flight (n samples, or for
 *             --seconds)
 *   sink      a subscriber that only drains a channel (for redis-benchmark PUBLISH)
 * Prints one JSON object on stdout. Does not start Redis or judge figures. */
#include <hiredis/hiredis.h>

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *host, *prefix, *channel;
    int port;
    long long links;
    int room_size, nodes, count, size;
    double stale_pct;
    long long ttl_ms, n;
    double seconds; /* pubrtt: stop after this long (0: after n samples) */
    long gap_us;    /* pubrtt: pause between samples (a probe that does not load Redis) */
} opts_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static redisContext *connect_or_die(const opts_t *o)
{
    redisContext *c = redisConnect(o->host, o->port);
    if (!c || c->err) {
        fprintf(stderr, "redis_tool: cannot connect to %s:%d: %s\n", o->host, o->port,
                c ? c->errstr : "oom");
        exit(1);
    }
    return c;
}

/* ---- populate ----------------------------------------------------------------------------- */

typedef struct {
    redisContext *c;
    long long appended, pending, errors;
} pipe_t;

static void pipe_drain(pipe_t *p)
{
    while (p->pending > 0) {
        redisReply *r = NULL;
        if (redisGetReply(p->c, (void **)&r) != REDIS_OK) {
            fprintf(stderr, "redis_tool: %s\n", p->c->errstr);
            exit(1);
        }
        if (r->type == REDIS_REPLY_ERROR && p->errors++ < 5)
            fprintf(stderr, "redis_tool: error reply: %s\n", r->str);
        freeReplyObject(r);
        p->pending--;
    }
}

static void pipe_argv(pipe_t *p, int argc, const char **argv, const size_t *lens)
{
    redisAppendCommandArgv(p->c, argc, argv, lens);
    p->appended++;
    if (++p->pending >= 20000)
        pipe_drain(p);
}

/* A dynamic argv of owned strings. */
typedef struct {
    char **v;
    size_t *len;
    int n, cap;
} args_t;

static void args_add(args_t *a, const char *s)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->v = realloc(a->v, sizeof *a->v * (size_t)a->cap);
        a->len = realloc(a->len, sizeof *a->len * (size_t)a->cap);
    }
    a->v[a->n] = strdup(s);
    a->len[a->n] = strlen(s);
    a->n++;
}

static void args_send(pipe_t *p, args_t *a)
{
    pipe_argv(p, a->n, (const char **)a->v, a->len);
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
    a->n = 0;
}

static int populate(const opts_t *o)
{
    pipe_t p = {.c = connect_or_die(o)};
    int k = o->room_size;
    long long per_room = (long long)k * (k - 1) / 2;
    long long rooms = (o->links + per_room - 1) / per_room;
    long long stride = o->stale_pct > 0 ? llround(100.0 / o->stale_pct) : 0;
    long long members = 0, stale_members = 0, stale_links = 0, links = 0;
    long long *node_sockets = calloc((size_t)o->nodes, sizeof *node_sockets);
    char epoch[33], ttl[32], tmp[256], key[256];
    snprintf(epoch, sizeof epoch, "%08x%08x%08x%08x", (unsigned)random(), (unsigned)random(),
             (unsigned)random(), (unsigned)random());
    snprintf(ttl, sizeof ttl, "%lld", o->ttl_ms);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    long long seq0 = (long long)wall.tv_sec * 1000000LL + wall.tv_nsec / 1000;
    int64_t t0 = now_ns();
    args_t a = {0};
    char(*ids)[40] = calloc((size_t)k, sizeof *ids);
    int *stale = calloc((size_t)k, sizeof *stale);
    int *node_of = calloc((size_t)k, sizeof *node_of);
    int *per_node = calloc((size_t)o->nodes, sizeof *per_node);
    for (long long r = 0; r < rooms; r++) {
        char room[64], base[128];
        snprintf(room, sizeof room, "bench-%lld", r);
        snprintf(base, sizeof base, "%s:{%s}:", o->prefix, room);
        int nstale = 0;
        memset(per_node, 0, sizeof *per_node * (size_t)o->nodes);
        for (int j = 0; j < k; j++) {
            long long m = members + j;
            snprintf(ids[j], sizeof ids[j], "s%021lld", m); /* 22 characters, as real ids */
            stale[j] = stride > 0 && m % stride == stride / 2;
            nstale += stale[j];
            node_of[j] = j % o->nodes;
            per_node[node_of[j]]++;
            node_sockets[node_of[j]]++;
        }
        /* Records. */
        snprintf(key, sizeof key, "%smembers", base);
        args_add(&a, "HSET");
        args_add(&a, key);
        for (int j = 0; j < k; j++) {
            args_add(&a, ids[j]);
            snprintf(tmp, sizeof tmp, "{\"node\":\"benchnode-%d\",\"epoch\":\"%s\",\"meta\":{}}",
                     node_of[j], epoch);
            args_add(&a, tmp);
        }
        args_send(&p, &a);
        for (int j = 0; j < k; j++) {
            char node[32];
            snprintf(node, sizeof node, "benchnode-%d", node_of[j]);
            if (!stale[j]) {
                snprintf(key, sizeof key, "%spresence:%s", base, ids[j]);
                const char *argv[] = {"SET", key, node, "PX", ttl};
                pipe_argv(&p, 5, argv, NULL);
            }
            /* Both halves of every link: the room is a full mesh. */
            snprintf(key, sizeof key, "%slinks:%s", base, ids[j]);
            args_add(&a, "SADD");
            args_add(&a, key);
            for (int q = 0; q < k; q++)
                if (q != j)
                    args_add(&a, ids[q]);
            args_send(&p, &a);
            snprintf(key, sizeof key, "%s:{#}:node:%s:sockets", o->prefix, node); /* the bucket */
            snprintf(tmp, sizeof tmp, "%s %s", room, ids[j]);
            const char *sargv[] = {"SADD", key, tmp};
            pipe_argv(&p, 3, sargv, NULL);
        }
        snprintf(key, sizeof key, "%sdegree", base);
        args_add(&a, "HSET");
        args_add(&a, key);
        for (int j = 0; j < k; j++) {
            args_add(&a, ids[j]);
            snprintf(tmp, sizeof tmp, "%d", k - 1);
            args_add(&a, tmp);
        }
        args_send(&p, &a);
        snprintf(key, sizeof key, "%snodes", base);
        args_add(&a, "HSET");
        args_add(&a, key);
        for (int nd = 0; nd < o->nodes; nd++) {
            if (!per_node[nd])
                continue;
            snprintf(tmp, sizeof tmp, "benchnode-%d", nd);
            args_add(&a, tmp);
            snprintf(tmp, sizeof tmp, "%d", per_node[nd]);
            args_add(&a, tmp);
        }
        args_send(&p, &a);
        snprintf(key, sizeof key, "%sstats", base);
        char sm[32], sl[32], sq[32];
        snprintf(sm, sizeof sm, "%d", k);
        snprintf(sl, sizeof sl, "%lld", per_room);
        snprintf(sq, sizeof sq, "%lld", seq0 + r);
        const char *hargv[] = {"HSET", key, "members", sm, "links", sl, "linked", sm, "seq", sq};
        pipe_argv(&p, 10, hargv, NULL);
        snprintf(key, sizeof key, "%s:{#}:rooms", o->prefix);
        const char *rargv[] = {"SADD", key, room};
        pipe_argv(&p, 3, rargv, NULL);
        members += k;
        links += per_room;
        stale_members += nstale;
        stale_links += (long long)nstale * (k - 1) - (long long)nstale * (nstale - 1) / 2;
    }
    /* Global figures, the node index and leases that outlive the measurement. */
    char sr[32], sm[32], sl[32];
    snprintf(key, sizeof key, "%s:{#}:stats", o->prefix);
    snprintf(sr, sizeof sr, "%lld", rooms);
    snprintf(sm, sizeof sm, "%lld", members);
    snprintf(sl, sizeof sl, "%lld", links);
    const char *gargv[] = {"HSET", key, "rooms", sr, "members", sm, "links", sl, "linked", sm};
    pipe_argv(&p, 10, gargv, NULL);
    for (int nd = 0; nd < o->nodes; nd++) {
        char node[32], body[256];
        snprintf(node, sizeof node, "benchnode-%d", nd);
        snprintf(key, sizeof key, "%s:nodes", o->prefix);
        const char *nargv[] = {"SADD", key, node};
        pipe_argv(&p, 3, nargv, NULL);
        snprintf(key, sizeof key, "%s:node:%s", o->prefix, node);
        snprintf(body, sizeof body,
                 "{\"epoch\":\"%s\",\"sockets\":%lld,\"joined\":%lld,\"started_ms\":0,"
                 "\"draining\":false,\"version\":\"bench\"}",
                 epoch, node_sockets[nd], node_sockets[nd]);
        const char *largv[] = {"SET", key, body, "PX", ttl};
        pipe_argv(&p, 5, largv, NULL);
    }
    snprintf(key, sizeof key, "%s:instance", o->prefix);
    const char *iargv[] = {"SET", key, epoch, "NX"};
    pipe_argv(&p, 4, iargv, NULL);
    pipe_drain(&p);
    double secs = (double)(now_ns() - t0) / 1e9;
    printf("{\"rooms\":%lld,\"room_size\":%d,\"members\":%lld,\"links\":%lld,"
           "\"stale_members\":%lld,\"stale_links\":%lld,\"commands\":%lld,\"errors\":%lld,"
           "\"seconds\":%.3f}\n",
           rooms, k, members, links, stale_members, stale_links, p.appended, p.errors, secs);
    free(ids);
    free(stale);
    free(node_of);
    free(per_node);
    free(node_sockets);
    free(a.v);
    free(a.len);
    redisFree(p.c);
    return p.errors ? 1 : 0;
}

/* ---- scan --------------------------------------------------------------------------------- */

static int scan(const opts_t *o)
{
    redisContext *c = connect_or_die(o);
    char cursor[32] = "0", count[16];
    snprintf(count, sizeof count, "%d", o->count);
    long long keys = 0, calls = 0;
    int64_t worst = 0, t0 = now_ns();
    do {
        const char *argv[] = {"SCAN", cursor, "COUNT", count};
        int64_t c0 = now_ns();
        redisReply *r = redisCommandArgv(c, 4, argv, NULL);
        int64_t dt = now_ns() - c0;
        if (dt > worst)
            worst = dt;
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            fprintf(stderr, "redis_tool: bad SCAN reply\n");
            return 1;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        keys += (long long)r->element[1]->elements;
        calls++;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    double secs = (double)(now_ns() - t0) / 1e9;
    printf("{\"keys\":%lld,\"calls\":%lld,\"count\":%d,\"seconds\":%.4f,"
           "\"max_call_ms\":%.3f}\n",
           keys, calls, o->count, secs, (double)worst / 1e6);
    redisFree(c);
    return 0;
}

/* ---- pubrtt and sink ---------------------------------------------------------------------- */

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, long long n, double p)
{
    long long k = (long long)ceil(p * (double)n);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

static void subscribe_or_die(redisContext *c, const char *channel)
{
    redisReply *r = redisCommand(c, "SUBSCRIBE %s", channel);
    if (!r) {
        fprintf(stderr, "redis_tool: SUBSCRIBE failed\n");
        exit(1);
    }
    freeReplyObject(r);
}

static int pubrtt(const opts_t *o)
{
    redisContext *pub = connect_or_die(o), *sub = connect_or_die(o);
    subscribe_or_die(sub, o->channel);
    char *payload = malloc((size_t)o->size + 1);
    memset(payload, 'x', (size_t)o->size);
    payload[o->size] = '\0';
    long long warm = o->seconds > 0 ? 100 : o->n / 10 + 100, total = o->n + warm;
    double *lat = malloc(sizeof *lat * (size_t)o->n);
    int64_t stop_at = o->seconds > 0 ? now_ns() + (int64_t)(o->seconds * 1e9) : 0;
    long long got = 0;
    for (long long i = 0; i < total && !(stop_at && i >= warm && now_ns() > stop_at); i++) {
        int64_t t0 = now_ns();
        redisAppendCommand(pub, "PUBLISH %s %s", o->channel, payload);
        int done = 0;
        while (!done)
            if (redisBufferWrite(pub, &done) != REDIS_OK) {
                fprintf(stderr, "redis_tool: write failed\n");
                return 1;
            }
        redisReply *m = NULL;
        if (redisGetReply(sub, (void **)&m) != REDIS_OK) {
            fprintf(stderr, "redis_tool: subscriber read failed\n");
            return 1;
        }
        int64_t t1 = now_ns();
        freeReplyObject(m);
        redisReply *r = NULL;
        if (redisGetReply(pub, (void **)&r) != REDIS_OK)
            return 1;
        freeReplyObject(r);
        if (i >= warm)
            lat[got++] = (double)(t1 - t0) / 1000.0;
        if (o->gap_us > 0) {
            struct timespec gap = {o->gap_us / 1000000, (o->gap_us % 1000000) * 1000};
            nanosleep(&gap, NULL);
        }
    }
    if (got == 0) {
        fprintf(stderr, "redis_tool: no samples\n");
        return 1;
    }
    qsort(lat, (size_t)got, sizeof *lat, cmpd);
    printf("{\"samples\":%lld,\"size\":%d,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
           "\"p999_us\":%.1f,\"max_us\":%.1f}\n",
           got, o->size, pct(lat, got, 0.5), pct(lat, got, 0.9), pct(lat, got, 0.99),
           pct(lat, got, 0.999), lat[got - 1]);
    free(lat);
    free(payload);
    redisFree(pub);
    redisFree(sub);
    return 0;
}

static int sink(const opts_t *o)
{
    redisContext *sub = connect_or_die(o);
    subscribe_or_die(sub, o->channel);
    printf("{\"subscribed\":\"%s\"}\n", o->channel);
    fflush(stdout);
    for (;;) {
        redisReply *m = NULL;
        if (redisGetReply(sub, (void **)&m) != REDIS_OK)
            break;
        freeReplyObject(m);
    }
    redisFree(sub);
    return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    opts_t o = {.host = "127.0.0.1",
                .port = 6379,
                .prefix = "sb",
                .channel = "bench",
                .links = 100000,
                .room_size = 4,
                .nodes = 2,
                .count = 1000,
                .size = 200,
                .stale_pct = 1.0,
                .ttl_ms = 3600000,
                .n = 20000};
    if (argc < 2) {
        fprintf(stderr, "Usage: redis_tool populate|scan|pubrtt|sink [--port P] [--host H] "
                        "[--prefix sb] [--links N] [--room-size K] [--nodes N] "
                        "[--stale-pct X] [--ttl-ms T] [--count C] [--n N] [--size B] "
                        "[--channel C] [--seconds S] [--gap-us U]\n");
        return 2;
    }
    const char *cmd = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port"))
            o.port = atoi(v);
        else if (!strcmp(k, "--host"))
            o.host = v;
        else if (!strcmp(k, "--prefix"))
            o.prefix = v;
        else if (!strcmp(k, "--links"))
            o.links = atoll(v);
        else if (!strcmp(k, "--room-size"))
            o.room_size = atoi(v);
        else if (!strcmp(k, "--nodes"))
            o.nodes = atoi(v);
        else if (!strcmp(k, "--stale-pct"))
            o.stale_pct = atof(v);
        else if (!strcmp(k, "--ttl-ms"))
            o.ttl_ms = atoll(v);
        else if (!strcmp(k, "--count"))
            o.count = atoi(v);
        else if (!strcmp(k, "--n"))
            o.n = atoll(v);
        else if (!strcmp(k, "--size"))
            o.size = atoi(v);
        else if (!strcmp(k, "--channel"))
            o.channel = v;
        else if (!strcmp(k, "--seconds"))
            o.seconds = atof(v);
        else if (!strcmp(k, "--gap-us"))
            o.gap_us = atol(v);
        else {
            fprintf(stderr, "redis_tool: unknown option %s\n", k);
            return 2;
        }
    }
    if (strncmp(o.host, "127.", 4) != 0 || o.room_size < 2 || o.room_size > 64 || o.nodes < 1 ||
        o.nodes > 64 || o.links < 1 || o.count < 1 || o.n < 1 || o.size < 0) {
        fprintf(stderr, "redis_tool: bad option value (loopback hosts only)\n");
        return 2;
    }
    srandom((unsigned)now_ns());
    if (!strcmp(cmd, "populate"))
        return populate(&o);
    if (!strcmp(cmd, "scan"))
        return scan(&o);
    if (!strcmp(cmd, "pubrtt"))
        return pubrtt(&o);
    if (!strcmp(cmd, "sink"))
        return sink(&o);
    fprintf(stderr, "redis_tool: unknown command %s\n", cmd);
    return 2;
}
