/* The admin's Redis: commands routed by their key (one server or a Redis Cluster alike), and the
 * reading of buckets (lua/README.md): on each primary, bucket_read over the tags of the slots
 * that primary serves, in chunks. A slot no primary serves, or whose primary did not answer, is
 * counted missing, so figures are reported partial rather than silently low. */
#include "admin.h"
#include "keys.h"
#include "log.h"
#include "scripts.h"
#include "slot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* bucket_read runs each chunk as one script: this many tags keep it under a millisecond
 * (measured on loopback: 128 tags 0.6 ms, 512 tags 2.0 ms idle and 5-11 ms on a loaded 2-core
 * box, over the 5 ms a Redis call may take; test_admin_reconcile test_09 on a cluster). */
#define CHUNK 128

int sb_admin_cmd(sb_admin_t *a, sb_redis_cb cb, void *data, int argc, const char **argv,
                 const size_t *lens)
{
    if (argc < 2)
        return SB_EINVAL;
    return sb_cluster_command(a->db, argv[1], lens ? lens[1] : strlen(argv[1]), cb, data, argc,
                              argv, lens);
}

int sb_admin_script(sb_admin_t *a, const char *name, int nkeys, int nargs, const char **args,
                    const size_t *lens, sb_redis_cb cb, void *data)
{
    return sb_cluster_script(a->db, sb_script(name), nkeys, nargs, args, lens, cb, data);
}

const char *sb_admin_tag(const sb_admin_t *a, const char *room, size_t len)
{
    return sb_tag_of_room(a->cluster, room, len);
}

/* ---- reading buckets ------------------------------------------------------------------------ */

typedef struct {
    sb_admin_t *a;
    sb_buckets_t b;
    int pending;
    sb_buckets_cb cb;
    void *data;
    char suffix[SB_KEY_MAX]; /* the caller's may be gone when a chunk is asked again */
} read_t;

typedef struct {
    read_t *rd;
    int ntags;          /* slots of this chunk (for the missing count when it fails) */
    int first;          /* the lowest of them */
    sb_redis_t *redis;  /* the primary it was sent to */
    const char *tags[]; /* sb_tag_of_slot's strings (static) */
} chunk_t;

static void send_chunk(read_t *rd, sb_redis_t *redis, const char *suffix, const char **tags, int n,
                       int first);

static void settle(read_t *rd)
{
    if (--rd->pending > 0)
        return;
    rd->cb(rd->a, &rd->b, NULL, rd->data);
    free(rd->b.tags);
    free(rd);
}

static void missing(sb_buckets_t *b, int count, int first)
{
    if (b->missing_slots == 0 || first < b->first_missing)
        b->first_missing = first;
    b->missing_slots += count;
}

static void on_chunk(redisReply *reply, const char *error, void *data)
{
    chunk_t *ch = data;
    read_t *rd = ch->rd;
    sb_buckets_t *b = &rd->b;
    if (reply && reply->type == REDIS_REPLY_ERROR && ch->ntags > 1) {
        /* The primary answered but refused the chunk: one of its slots moved or stopped being
         * served since our map was read (MOVED, CLUSTERDOWN). Ask again tag by tag, so only
         * the slots it refuses are counted missing, not the whole chunk (128 slots reported
         * missing for one uncovered slot, test_cluster_system test_05). */
        for (int i = 0; i < ch->ntags; i++)
            send_chunk(rd, ch->redis, rd->suffix, &ch->tags[i], 1,
                       (int)sb_slot(ch->tags[i], strlen(ch->tags[i])));
    } else if (error || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 5) {
        sb_warn_limited("bucket_read failed for %d slots: %s", ch->ntags,
                        error ? error : (reply && reply->str ? reply->str : "bad reply"));
        /* On a single Redis that one bucket is the whole keyspace: every slot is missing (a
         * 503, as with the server down), not "1 slot missing" beside figures of 0. */
        if (rd->a->cluster)
            missing(b, ch->ntags, ch->first);
        else
            missing(b, SB_SLOTS, 0);
        /* The usual cause on a cluster: a slot of the chunk moved (a reshard) and the map is
         * stale; bucket_read's "non local key" is no MOVED, so nothing else says so. */
        sb_cluster_refresh(rd->a->db);
    } else {
        b->rooms += sb_reply_int(reply, 0, 0);
        b->members += sb_reply_int(reply, 1, 0);
        b->links += sb_reply_int(reply, 2, 0);
        b->linked += sb_reply_int(reply, 3, 0);
        b->away += sb_reply_int(reply, 4, 0);
        /* Then the PeerJS share (pj_members, pj_links, pj_away): integers, where the tags that
         * follow are strings, so a reply without them still reads right. */
        int64_t *pj[] = {&b->pj_members, &b->pj_links, &b->pj_away};
        size_t i = 5;
        for (size_t k = 0; k < 3 && i < reply->elements; k++, i++) {
            if (reply->element[i]->type != REDIS_REPLY_INTEGER)
                break;
            *pj[k] += reply->element[i]->integer;
        }
        for (; i < reply->elements; i++) {
            size_t len;
            const char *t = sb_reply_str(reply, i, &len);
            if (!t || len >= SB_TAG_MAX)
                continue;
            char(*v)[SB_TAG_MAX] = realloc(b->tags, sizeof *v * (size_t)(b->n + 1));
            if (!v) {
                missing(b, 1, 0);
                continue;
            }
            b->tags = v;
            memcpy(b->tags[b->n++], t, len + 1);
        }
    }
    free(ch);
    settle(rd);
}

/* Sends bucket_read for tags[0..n) to redis. Counts the chunk's slots missing when it cannot. */
static void send_chunk(read_t *rd, sb_redis_t *redis, const char *suffix, const char **tags, int n,
                       int first)
{
    chunk_t *ch = malloc(sizeof *ch + sizeof(char *) * (size_t)n);
    const char **args = malloc(sizeof(char *) * (size_t)(n + 2));
    if (!ch || !args) {
        free(ch);
        free(args);
        missing(&rd->b, n, first);
        return;
    }
    ch->rd = rd;
    ch->ntags = n;
    ch->first = first;
    ch->redis = redis;
    memcpy(ch->tags, tags, sizeof(char *) * (size_t)n);
    args[0] = rd->a->cfg.prefix;
    args[1] = suffix;
    memcpy(args + 2, tags, sizeof(char *) * (size_t)n);
    rd->pending++;
    if (sb_script_call(redis, sb_script("bucket_read"), 0, n + 2, args, NULL, on_chunk, ch) != 0) {
        rd->pending--;
        free(ch);
        missing(&rd->b, n, first);
    }
    free(args);
}

int sb_buckets_read(sb_admin_t *a, const char *suffix, sb_buckets_cb cb, void *data)
{
    read_t *rd = calloc(1, sizeof *rd);
    if (!rd)
        return SB_ENOMEM;
    *rd = (read_t){.a = a, .cb = cb, .data = data, .pending = 1};
    if (snprintf(rd->suffix, sizeof rd->suffix, "%s", suffix) >= (int)sizeof rd->suffix) {
        free(rd);
        return SB_EINVAL;
    }
    suffix = rd->suffix;
    int np = sb_cluster_nprimaries(a->db);
    if (!a->cluster) {
        sb_cluster_node_t node;
        const char *tag = SB_TAG_SINGLE;
        if (np == 1 && sb_cluster_primary(a->db, 0, &node) == 0 && node.up)
            send_chunk(rd, node.redis, suffix, &tag, 1, 0);
        else
            missing(&rd->b, SB_SLOTS, 0);
    } else {
        /* Slots grouped by owner, each group in chunks; a slot nobody serves is missing. */
        const char **tags = malloc(sizeof(char *) * CHUNK);
        int *owner = malloc(sizeof(int) * SB_SLOTS);
        if (!tags || !owner || !sb_tag_of_slot(0)) {
            free(tags);
            free(owner);
            free(rd);
            return SB_ENOMEM;
        }
        for (unsigned s = 0; s < SB_SLOTS; s++) {
            owner[s] = sb_cluster_slot_owner(a->db, s);
            if (owner[s] < 0)
                missing(&rd->b, 1, (int)s);
        }
        for (int i = 0; i < np; i++) {
            sb_cluster_node_t node;
            if (sb_cluster_primary(a->db, i, &node) != 0)
                continue;
            int n = 0, first = -1;
            for (unsigned s = 0; s < SB_SLOTS; s++) {
                if (owner[s] != i)
                    continue;
                if (!node.up) {
                    missing(&rd->b, 1, (int)s);
                    continue;
                }
                if (first < 0)
                    first = (int)s;
                tags[n++] = sb_tag_of_slot(s);
                if (n == CHUNK) {
                    send_chunk(rd, node.redis, suffix, tags, n, first);
                    n = 0;
                    first = -1;
                }
            }
            if (n)
                send_chunk(rd, node.redis, suffix, tags, n, first);
        }
        free(tags);
        free(owner);
    }
    if (rd->pending == 1) {
        /* Nothing could be sent: no primary is reachable (the callback contract: an error,
         * and no call back). */
        free(rd->b.tags);
        free(rd);
        return SB_EUNAVAIL;
    }
    settle(rd); /* the +1 held while sending; the last chunk's reply calls back */
    return 0;
}

int sb_buckets_keep(const sb_buckets_t *b, char (**tags)[SB_TAG_MAX], int *n)
{
    *tags = NULL;
    *n = 0;
    if (!b->n)
        return 0;
    *tags = malloc(sizeof **tags * (size_t)b->n);
    if (!*tags)
        return -1;
    memcpy(*tags, b->tags, sizeof **tags * (size_t)b->n);
    *n = b->n;
    return 0;
}
