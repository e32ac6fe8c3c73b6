/* SSCAN walks: the cursor and the reply's shape. See scan.h. */
#include "scan.h"

#include <stdio.h>
#include <string.h>

int sb_scan_init(sb_scan_t *s, sb_cluster_t *db, const char *key)
{
    memset(s, 0, sizeof *s);
    s->db = db;
    strcpy(s->cursor, "0");
    int n = snprintf(s->key, sizeof s->key, "%s", key);
    return n < 0 || (size_t)n >= sizeof s->key ? -1 : 0;
}

int sb_scan_done(const sb_scan_t *s)
{
    return s->started && strcmp(s->cursor, "0") == 0;
}

static void on_sscan(redisReply *reply, const char *error, void *data)
{
    sb_scan_t *s = data;
    if (error || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[0]->len >= sizeof s->cursor ||
        reply->element[1]->type != REDIS_REPLY_ARRAY) {
        s->cb(NULL, error ? error : "bad SSCAN reply", s->data);
        return;
    }
    memcpy(s->cursor, reply->element[0]->str, reply->element[0]->len + 1);
    s->started = 1;
    s->cb(reply->element[1], NULL, s->data);
}

int sb_scan_next(sb_scan_t *s, sb_scan_cb cb, void *data)
{
    s->cb = cb;
    s->data = data;
    const char *argv[] = {"SSCAN", s->key, s->cursor, "COUNT", SB_SCAN_COUNT};
    return sb_cluster_command(s->db, s->key, strlen(s->key), on_sscan, s, 5, argv, NULL);
}
