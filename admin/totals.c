/* The cluster-wide totals P:admin:totals: what every admin's passes and reaps removed and
 * repaired, summed in Redis so every admin reports the same figures. The names of the kinds of
 * invariant violations live here too (they are totals fields and metric labels). Does not
 * decide what is counted (reap.c, reconcile.c). */
#include "admin.h"
#include "keys.h"
#include "log.h"

#include <stdio.h>
#include <string.h>

const char *const sb_violation_names[SB_VIOL__COUNT] = {"counter", "half-link", "degree"};
const char *const sb_violation_totals[SB_VIOL__COUNT] = {
    "violations_counter", "violations_half_link", "violations_degree"};

static const char *const fields[] = {"stale_sockets_removed", "stale_links_removed",
                                     "reconcile_runs", "violations_repaired", "check_errors"};

void sb_totals_add(sb_admin_t *a, const char *field, int64_t delta)
{
    if (delta == 0)
        return;
    char key[SB_KEY_MAX], d[32];
    if (sb_key_global(key, sizeof key, a->cfg.prefix, "admin:totals") < 0)
        return; /* cannot happen: the prefix is at most 64 characters */
    snprintf(d, sizeof d, "%lld", (long long)delta);
    const char *argv[] = {"HINCRBY", key, field, d};
    if (sb_admin_cmd(a, NULL, NULL, 4, argv, NULL) != 0 && !a->stopping)
        sb_warn("totals: could not add %lld to %s (Redis unavailable)", (long long)delta, field);
}

json_t *sb_totals_from_reply(const redisReply *reply)
{
    json_t *t = json_object();
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        json_object_set_new(t, fields[i], json_integer(0));
    json_t *kinds = json_object();
    for (int k = 0; k < SB_VIOL__COUNT; k++)
        json_object_set_new(kinds, sb_violation_names[k], json_integer(0));
    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            const char *f = sb_reply_str(reply, i, NULL);
            long long v = sb_reply_int(reply, i + 1, 0);
            if (!f)
                continue;
            for (size_t j = 0; j < sizeof fields / sizeof fields[0]; j++)
                if (strcmp(f, fields[j]) == 0)
                    json_object_set_new(t, fields[j], json_integer(v));
            for (int k = 0; k < SB_VIOL__COUNT; k++)
                if (strcmp(f, sb_violation_totals[k]) == 0)
                    json_object_set_new(kinds, sb_violation_names[k], json_integer(v));
        }
    }
    json_object_set_new(t, "violations_by_kind", kinds);
    return t;
}
