/* Script calls with one NOSCRIPT retry. A call keeps a copy of its arguments until its reply
 * arrives, because the retry has to send them again. */
#include "scripts.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    sb_redis_t *r;
    const sb_embed_t *script;
    sb_redis_cb cb;
    void *data;
    int retried;
    int argc;
    const char **argv;
    size_t *lens;
    char *blob;
} call_t;

const sb_embed_t *sb_script(const char *name)
{
    char file[128];
    snprintf(file, sizeof file, "%s.lua", name);
    const sb_embed_t *e = sb_embed_find(sb_lua_files, file);
    if (!e)
        sb_assert_fail(file, __FILE__, __LINE__);
    return e;
}

static void call_free(call_t *c)
{
    free(c->argv);
    free(c->lens);
    free(c->blob);
    free(c);
}

static void on_call_reply(redisReply *reply, const char *error, void *data)
{
    call_t *c = data;
    if (!error && reply && reply->type == REDIS_REPLY_ERROR &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0 && !c->retried) {
        c->retried = 1;
        sb_info("redis: script %s not loaded (Redis restarted or flushed): loading",
                c->script->name);
        const char *load[3] = {"SCRIPT", "LOAD", c->script->data};
        size_t load_lens[3] = {6, 4, c->script->len};
        /* Why pipelined: the two commands go out back to back on the same connection, and
         * Redis runs them in order, so the retry never sees NOSCRIPT again. */
        if (sb_redis_argv(c->r, NULL, NULL, 3, load, load_lens) == 0 &&
            sb_redis_argv(c->r, on_call_reply, c, c->argc, c->argv, c->lens) == 0)
            return;
        c->cb(NULL, "unavailable", c->data);
        call_free(c);
        return;
    }
    c->cb(reply, error, c->data);
    call_free(c);
}

static void noop_cb(redisReply *reply, const char *error, void *data)
{
    (void)reply;
    (void)error;
    (void)data;
}

int sb_script_call(sb_redis_t *r, const sb_embed_t *script, int nkeys, int nargs, const char **args,
                   const size_t *lens, sb_redis_cb cb, void *data)
{
    if (!sb_redis_up(r))
        return SB_EUNAVAIL;
    call_t *c = calloc(1, sizeof *c);
    if (!c)
        return SB_ENOMEM;
    c->r = r;
    c->script = script;
    c->cb = cb ? cb : noop_cb;
    c->data = data;
    c->argc = nargs + 3;
    c->argv = calloc((size_t)c->argc, sizeof(char *));
    c->lens = calloc((size_t)c->argc, sizeof(size_t));
    size_t total = 0;
    for (int i = 0; i < nargs; i++)
        total += (lens ? lens[i] : strlen(args[i])) + 1;
    c->blob = malloc(total + 16);
    if (!c->argv || !c->lens || !c->blob) {
        call_free(c);
        return SB_ENOMEM;
    }
    char *p = c->blob;
    int n = snprintf(p, 16, "%d", nkeys);
    c->argv[0] = "EVALSHA";
    c->lens[0] = 7;
    c->argv[1] = script->sha1;
    c->lens[1] = 40;
    c->argv[2] = p;
    c->lens[2] = (size_t)n;
    p += n + 1;
    for (int i = 0; i < nargs; i++) {
        size_t l = lens ? lens[i] : strlen(args[i]);
        memcpy(p, args[i], l);
        p[l] = '\0';
        c->argv[3 + i] = p;
        c->lens[3 + i] = l;
        p += l + 1;
    }
    int rc = sb_redis_argv(r, on_call_reply, c, c->argc, c->argv, c->lens);
    if (rc != 0)
        call_free(c);
    return rc;
}

void sb_scripts_load_all(sb_redis_t *r)
{
    for (const sb_embed_t *e = sb_lua_files; e->name; e++) {
        const char *argv[3] = {"SCRIPT", "LOAD", e->data};
        size_t lens[3] = {6, 4, e->len};
        sb_redis_argv(r, NULL, NULL, 3, argv, lens);
    }
}
