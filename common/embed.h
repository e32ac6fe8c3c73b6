/* Files embedded into a binary at build time (cmake/embed.cmake): the Lua scripts, the demo
 * page and the admin dashboard. The tables end with an all-zero entry. Contents are NUL
 * terminated (the terminator is not counted in len). */
#ifndef SB_EMBED_H
#define SB_EMBED_H

#include <stddef.h>

typedef struct {
    const char *name; /* file name without directory, e.g. "room_join.lua" */
    const char *data;
    size_t len;
    const char *sha1; /* 40 hex digits of the contents */
} sb_embed_t;

extern const sb_embed_t sb_lua_files[];

/* The entry named name in table, or NULL. */
const sb_embed_t *sb_embed_find(const sb_embed_t *table, const char *name);

#endif
