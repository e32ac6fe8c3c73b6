/* The script registry: the Lua files of lua/, embedded at build time, called with EVALSHA.
 * On NOSCRIPT (Redis restarted, failed over, or SCRIPT FLUSH) the script is loaded with
 * SCRIPT LOAD and the call retried once. */
#ifndef SB_SCRIPTS_H
#define SB_SCRIPTS_H

#include "embed.h"
#include "redis.h"

/* The embedded script named name ("room_join"); aborts when missing (a build error). */
const sb_embed_t *sb_script(const char *name);

/* Runs script; args holds nargs strings: the nkeys keys first, then the ARGV (all copied). Returns
 * 0 and calls cb exactly once, or SB_EUNAVAIL without calling it. lens may be NULL (strlen). */
int sb_script_call(sb_redis_t *r, const sb_embed_t *script, int nkeys, int nargs, const char **args,
                   const size_t *lens, sb_redis_cb cb, void *data);

/* Sends SCRIPT LOAD for every embedded script (fire and forget); call from on_up. */
void sb_scripts_load_all(sb_redis_t *r);

#endif
