/* A string-keyed hash map (open chaining, power-of-two buckets, grows at load 1). Keys are
 * copied; values are borrowed pointers the caller owns. Used for sessions by id and rooms by
 * name. Pure. */
#ifndef SB_MAP_H
#define SB_MAP_H

#include <stddef.h>

typedef struct sb_map_entry {
    struct sb_map_entry *next;
    void *value;
    char key[];
} sb_map_entry_t;

typedef struct {
    sb_map_entry_t **buckets;
    size_t nbuckets, count;
} sb_map_t;

void sb_map_init(sb_map_t *m);
/* Frees the entries (not the values). */
void sb_map_free(sb_map_t *m);
void *sb_map_get(const sb_map_t *m, const char *key);
/* Inserts or replaces; returns 0 or -1 when out of memory. */
int sb_map_put(sb_map_t *m, const char *key, void *value);
/* Removes key; returns its value or NULL. */
void *sb_map_del(sb_map_t *m, const char *key);
/* Calls fn for every value; fn must not change the map. */
void sb_map_each(const sb_map_t *m, void (*fn)(void *value, void *arg), void *arg);

#endif
