/* String-keyed hash map (FNV-1a). */
#include "map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

void sb_map_init(sb_map_t *m)
{
    m->buckets = NULL;
    m->nbuckets = 0;
    m->count = 0;
}

void sb_map_free(sb_map_t *m)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        sb_map_entry_t *e = m->buckets[i];
        while (e) {
            sb_map_entry_t *n = e->next;
            free(e);
            e = n;
        }
    }
    free(m->buckets);
    sb_map_init(m);
}

static sb_map_entry_t **find(const sb_map_t *m, const char *key)
{
    if (!m->nbuckets)
        return NULL;
    sb_map_entry_t **p = &m->buckets[hash(key) & (m->nbuckets - 1)];
    while (*p && strcmp((*p)->key, key) != 0)
        p = &(*p)->next;
    return p;
}

void *sb_map_get(const sb_map_t *m, const char *key)
{
    sb_map_entry_t **p = find(m, key);
    return p && *p ? (*p)->value : NULL;
}

static int grow(sb_map_t *m)
{
    /* Starts at 2: most maps are a room view's (a pair room's 2 members, its 1 or 2 local
     * sockets), and malloc rounds 4 buckets up to 48 B of heap where 2 take 32 (16 empty
     * buckets were 128 B per map, about 100 B per idle joined socket; issue 14, massif). */
    size_t n = m->nbuckets ? m->nbuckets * 2 : 2;
    sb_map_entry_t **b = calloc(n, sizeof *b);
    if (!b)
        return -1;
    for (size_t i = 0; i < m->nbuckets; i++) {
        sb_map_entry_t *e = m->buckets[i];
        while (e) {
            sb_map_entry_t *next = e->next;
            size_t j = hash(e->key) & (n - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
    return 0;
}

int sb_map_put(sb_map_t *m, const char *key, void *value)
{
    sb_map_entry_t **p = find(m, key);
    if (p && *p) {
        (*p)->value = value;
        return 0;
    }
    if (m->count >= m->nbuckets && grow(m) != 0)
        return -1;
    size_t kl = strlen(key);
    sb_map_entry_t *e = malloc(sizeof *e + kl + 1);
    if (!e)
        return -1;
    memcpy(e->key, key, kl + 1);
    e->value = value;
    size_t j = hash(key) & (m->nbuckets - 1);
    e->next = m->buckets[j];
    m->buckets[j] = e;
    m->count++;
    return 0;
}

void *sb_map_del(sb_map_t *m, const char *key)
{
    sb_map_entry_t **p = find(m, key);
    if (!p || !*p)
        return NULL;
    sb_map_entry_t *e = *p;
    void *v = e->value;
    *p = e->next;
    free(e);
    m->count--;
    return v;
}

void sb_map_each(const sb_map_t *m, void (*fn)(void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (sb_map_entry_t *e = m->buckets[i]; e; e = e->next)
            fn(e->value, arg);
}
