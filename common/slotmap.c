/* Slot map parsing (see slotmap.h). A CLUSTER SLOTS reply is an array of ranges:
 *   [start, end, [host, port, id, {metadata}], [replica host, port, id, ...], ...]
 * (Redis 7 adds the metadata map; Redis 6 omits it; Redis 3 omits the id). */
#include "slotmap.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failf(char *err, size_t errlen, const char *why, long long at)
{
    snprintf(err, errlen, "CLUSTER SLOTS reply: %s (range %lld)", why, at);
    return -1;
}

static void addr_free(sb_node_addr_t *a)
{
    free(a->host);
    free(a->id);
    a->host = a->id = NULL;
}

void sb_slotmap_free(sb_slotmap_t *m)
{
    for (int i = 0; i < m->nshards; i++) {
        addr_free(&m->shards[i].primary);
        for (int j = 0; j < m->shards[i].nreplicas; j++)
            addr_free(&m->shards[i].replicas[j]);
        free(m->shards[i].replicas);
    }
    free(m->shards);
    m->shards = NULL;
    m->nshards = 0;
    for (int s = 0; s < SB_SLOTS; s++)
        m->owner[s] = -1;
}

static void init(sb_slotmap_t *m)
{
    m->nshards = 0;
    m->shards = NULL;
    for (int s = 0; s < SB_SLOTS; s++)
        m->owner[s] = -1;
}

static int is_int(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_INTEGER;
}

/* Reads one node entry [host, port, id?, ...] into a; 0 or -1 (malformed). */
static int parse_node(const redisReply *n, const char *seed_host, sb_node_addr_t *a,
                      const char **why)
{
    *why = "node entry is not [host, port, ...]";
    if (!n || n->type != REDIS_REPLY_ARRAY || n->elements < 2 || !is_int(n->element[1]))
        return -1;
    const redisReply *h = n->element[0];
    const char *host;
    if (h->type == REDIS_REPLY_NIL)
        host = "";
    else if (h->type == REDIS_REPLY_STRING)
        host = h->str;
    else
        return -1;
    /* Why: Redis answers NULL or "" (older) or "?" (unknown endpoint) when it does not know the
     * address clients should use; the specification says to use the address we asked. */
    if (!*host || strcmp(host, "?") == 0)
        host = seed_host ? seed_host : "";
    *why = "node has no usable host";
    if (!*host || strlen(host) > 255)
        return -1;
    long long port = n->element[1]->integer;
    *why = "port out of range";
    if (port < 1 || port > 65535)
        return -1;
    const char *id = "";
    if (n->elements >= 3 && n->element[2]->type == REDIS_REPLY_STRING)
        id = n->element[2]->str;
    a->host = strdup(host);
    a->id = strdup(id);
    a->port = (int)port;
    *why = "out of memory";
    if (!a->host || !a->id) {
        addr_free(a);
        return -1;
    }
    return 0;
}

int sb_slotmap_find(const sb_slotmap_t *m, const char *host, int port)
{
    for (int i = 0; i < m->nshards; i++)
        if (m->shards[i].primary.port == port && strcmp(m->shards[i].primary.host, host) == 0)
            return i;
    return -1;
}

/* Adds replica a to shard s unless it is there already (a primary with several ranges lists
 * its replicas once per range). Takes a. */
static int add_replica(sb_shard_t *s, sb_node_addr_t *a)
{
    for (int j = 0; j < s->nreplicas; j++) {
        if (s->replicas[j].port == a->port && strcmp(s->replicas[j].host, a->host) == 0) {
            addr_free(a);
            return 0;
        }
    }
    sb_node_addr_t *v = realloc(s->replicas, sizeof *v * (size_t)(s->nreplicas + 1));
    if (!v) {
        addr_free(a);
        return -1;
    }
    s->replicas = v;
    s->replicas[s->nreplicas++] = *a;
    return 0;
}

int sb_slotmap_parse_slots(sb_slotmap_t *m, const redisReply *reply, const char *seed_host,
                           char *err, size_t errlen)
{
    init(m);
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        return failf(err, errlen, "not an array", -1);
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *r = reply->element[i];
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 3 || !is_int(r->element[0]) ||
            !is_int(r->element[1])) {
            sb_slotmap_free(m);
            return failf(err, errlen, "range is not [start, end, primary, ...]", (long long)i);
        }
        long long lo = r->element[0]->integer, hi = r->element[1]->integer;
        if (lo < 0 || hi >= SB_SLOTS || lo > hi) {
            sb_slotmap_free(m);
            return failf(err, errlen, "slot range out of bounds", (long long)i);
        }
        sb_node_addr_t p = {0};
        const char *why;
        if (parse_node(r->element[2], seed_host, &p, &why) != 0) {
            sb_slotmap_free(m);
            return failf(err, errlen, why, (long long)i);
        }
        int s = sb_slotmap_find(m, p.host, p.port);
        if (s >= 0) {
            addr_free(&p);
        } else {
            sb_shard_t *v = realloc(m->shards, sizeof *v * (size_t)(m->nshards + 1));
            if (!v || m->nshards >= INT16_MAX) {
                if (v)
                    m->shards = v;
                addr_free(&p);
                sb_slotmap_free(m);
                return failf(err, errlen, "out of memory", (long long)i);
            }
            m->shards = v;
            s = m->nshards++;
            memset(&m->shards[s], 0, sizeof m->shards[s]);
            m->shards[s].primary = p;
        }
        for (size_t j = 3; j < r->elements; j++) {
            sb_node_addr_t a = {0};
            if (parse_node(r->element[j], seed_host, &a, &why) != 0 ||
                add_replica(&m->shards[s], &a) != 0) {
                sb_slotmap_free(m);
                return failf(err, errlen, why, (long long)i);
            }
        }
        for (long long slot = lo; slot <= hi; slot++) {
            /* Two ranges claiming one slot: a reply taken mid-change; the later one wins, as
             * the last word a node gave. */
            if (m->owner[slot] >= 0)
                m->shards[m->owner[slot]].nslots--;
            m->owner[slot] = (int16_t)s;
            m->shards[s].nslots++;
        }
    }
    return 0;
}

int sb_slotmap_single(sb_slotmap_t *m, const char *host, int port)
{
    init(m);
    m->shards = calloc(1, sizeof *m->shards);
    if (!m->shards)
        return -1;
    m->shards[0].primary.host = strdup(host ? host : "");
    m->shards[0].primary.id = strdup("");
    m->shards[0].primary.port = port;
    m->shards[0].nslots = SB_SLOTS;
    m->nshards = 1;
    if (!m->shards[0].primary.host || !m->shards[0].primary.id) {
        sb_slotmap_free(m);
        return -1;
    }
    for (int s = 0; s < SB_SLOTS; s++)
        m->owner[s] = 0;
    return 0;
}

int sb_slotmap_holes(const sb_slotmap_t *m, int *first)
{
    int n = 0;
    if (first)
        *first = -1;
    for (int s = 0; s < SB_SLOTS; s++) {
        if (m->owner[s] < 0) {
            if (n++ == 0 && first)
                *first = s;
        }
    }
    return n;
}

int sb_redirect_parse(const char *err, size_t len, sb_redirect_t *out)
{
    memset(out, 0, sizeof *out);
    const char *p = err, *end = err + len;
    if (len > 6 && memcmp(p, "MOVED ", 6) == 0) {
        p += 6;
    } else if (len > 4 && memcmp(p, "ASK ", 4) == 0) {
        out->ask = 1;
        p += 4;
    } else {
        return -1;
    }
    long slot = 0;
    const char *q = p;
    while (q < end && isdigit((unsigned char)*q) && q - p < 6)
        slot = slot * 10 + (*q++ - '0');
    if (q == p || q >= end || *q != ' ' || slot >= SB_SLOTS)
        return -1;
    out->slot = (int)slot;
    const char *addr = q + 1;
    /* The port follows the last ':' (an IPv6 address has colons of its own). */
    const char *colon = NULL;
    for (const char *c = addr; c < end; c++)
        if (*c == ':')
            colon = c;
    if (!colon || colon + 1 >= end)
        return -1;
    long port = 0;
    for (const char *c = colon + 1; c < end; c++) {
        if (!isdigit((unsigned char)*c) || (port = port * 10 + (*c - '0')) > 65535)
            return -1;
    }
    if (port < 1)
        return -1;
    const char *hs = addr, *he = colon;
    if (he > hs && *hs == '[' && he[-1] == ']') {
        hs++;
        he--;
    }
    if ((size_t)(he - hs) >= sizeof out->host)
        return -1;
    for (const char *c = hs; c < he; c++)
        if (*c == ' ' || *c == '[' || *c == ']')
            return -1;
    memcpy(out->host, hs, (size_t)(he - hs));
    out->host[he - hs] = '\0';
    out->port = (int)port;
    return 0;
}

sb_next_t sb_redirect_next(const char *err, size_t len, int script, int tries, int64_t left_ms,
                           int64_t *delay_ms)
{
    sb_redirect_t rd;
    int redirect = sb_redirect_parse(err, len, &rd) == 0;
    if (!redirect && !(len >= 8 && memcmp(err, "TRYAGAIN", 8) == 0))
        return SB_NEXT_DONE;
    if (redirect && tries < SB_MAX_FOLLOWS && !(rd.ask && script))
        return SB_NEXT_FOLLOW;
    *delay_ms = 10 * (int64_t)(tries + 1 < 5 ? tries + 1 : 5);
    return left_ms > *delay_ms ? SB_NEXT_WAIT : SB_NEXT_FAIL;
}
