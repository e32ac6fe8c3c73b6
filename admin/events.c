/* The activity log: the capped stream P:events. The admin appends node-up, node-down and
 * reconcile entries; the room scripts append p2p-cleanup entries inside the reap itself.
 * Entries are {type, data (JSON text)}; readers get {id, type, at, data}, at from the entry id.
 * Does not keep the totals (totals.c). */
#include "admin.h"
#include "keys.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void sb_iso8601(int64_t ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%03dZ", base, (int)(ms % 1000));
}

void sb_events_add(sb_admin_t *a, const char *type, json_t *data)
{
    char key[SB_KEY_MAX];
    char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;
    json_decref(data);
    if (!text || sb_key_global(key, sizeof key, a->cfg.prefix, "events") < 0) {
        free(text);
        sb_warn("activity log: could not add a %s event (out of memory)", type);
        return;
    }
    const char *argv[] = {"XADD", key,    "MAXLEN", "~",    a->events_max,
                          "*",    "type", type,     "data", text};
    if (sb_admin_cmd(a, NULL, NULL, 10, argv, NULL) != 0 && !a->stopping)
        sb_warn("activity log: could not add a %s event (Redis unavailable)", type);
    free(text);
}

/* One stream entry [id, [field, value, ...]] as {id, type, at, data}; NULL when malformed. */
static json_t *entry_json(const redisReply *e)
{
    if (!e || e->type != REDIS_REPLY_ARRAY || e->elements != 2)
        return NULL;
    const redisReply *id = e->element[0], *fv = e->element[1];
    if (id->type != REDIS_REPLY_STRING || fv->type != REDIS_REPLY_ARRAY)
        return NULL;
    const char *type = NULL;
    json_t *data = NULL;
    for (size_t i = 0; i + 1 < fv->elements; i += 2) {
        const redisReply *f = fv->element[i], *v = fv->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(f->str, "type") == 0) {
            type = v->str;
        } else if (strcmp(f->str, "data") == 0 && !data) {
            data = json_loadb(v->str, v->len, JSON_DECODE_ANY, NULL);
            if (!data) /* not JSON: keep it as text rather than drop the entry */
                data = json_stringn(v->str, v->len);
        }
    }
    char at[40];
    sb_iso8601(strtoll(id->str, NULL, 10), at, sizeof at);
    return json_pack("{s:s%,s:s,s:s,s:o}", "id", id->str, (size_t)id->len, "type",
                     type ? type : "unknown", "at", at, "data", data ? data : json_object());
}

json_t *sb_events_from_reply(const redisReply *reply)
{
    json_t *out = json_array();
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        return out;
    for (size_t i = 0; i < reply->elements; i++) {
        json_t *e = entry_json(reply->element[i]);
        if (e)
            json_array_append_new(out, e);
    }
    return out;
}
