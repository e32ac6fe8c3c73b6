/* The walk over the node index P:nodes: SSCAN in batches of bounded COUNT, a GET of each of
 * the batch's leases (pipelined; one GET each because leases are in different slots on a Redis
 * Cluster), and an awaited reap (reap.c) of every node whose lease is gone. Produces the
 * list of live nodes with their leases for mesh-status, metrics and the pass. Does not reap
 * sockets itself or look at rooms. */
#include "admin.h"
#include "keys.h"
#include "log.h"
#include "scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sb_admin_t *a;
    sb_scan_t index; /* P:nodes */
    sb_nodes_t *out;
    sb_map_t seen; /* SSCAN may return an id twice */
    char **batch;  /* ids of the current batch (owned) */
    int nbatch;
    char **lapsed; /* borrowed from batch */
    int nlapsed, ilapsed;
    struct lease_get *gets; /* one per id of the batch */
    int gets_pending;
    const char *gets_error; /* a literal (error texts die with their request) */
    sb_nodes_cb cb;
    void *data;
} walk_t;

void sb_nodes_free(sb_nodes_t *nodes)
{
    if (!nodes)
        return;
    for (int i = 0; i < nodes->n; i++) {
        free(nodes->v[i].id);
        json_decref(nodes->v[i].lease);
    }
    free(nodes->v);
    free(nodes);
}

typedef struct lease_get {
    walk_t *w;
    int present;   /* the lease exists (or could not be read: unknown) */
    int unknown;   /* could not be read */
    json_t *lease; /* parsed (new reference), NULL when not JSON */
} lease_get_t;

static void clear_batch(walk_t *w)
{
    for (int i = 0; w->gets && i < w->nbatch; i++)
        json_decref(w->gets[i].lease);
    free(w->gets);
    w->gets = NULL;
    w->gets_pending = 0;
    w->gets_error = NULL;
    for (int i = 0; i < w->nbatch; i++)
        free(w->batch[i]);
    free(w->batch);
    free(w->lapsed);
    w->batch = w->lapsed = NULL;
    w->nbatch = w->nlapsed = w->ilapsed = 0;
}

static void finish(walk_t *w, const char *error)
{
    clear_batch(w);
    sb_map_free(&w->seen);
    w->cb(w->a, w->out, error, w->data); /* out handed over */
    free(w);
}

static int add_live(sb_nodes_t *o, const char *id, json_t *lease)
{
    if (o->n == o->cap) {
        int cap = o->cap ? o->cap * 2 : 16;
        sb_node_info_t *v = realloc(o->v, sizeof *v * (size_t)cap);
        if (!v)
            return -1;
        o->v = v;
        o->cap = cap;
    }
    char *copy = strdup(id);
    if (!copy)
        return -1;
    o->v[o->n].id = copy;
    o->v[o->n].lease = lease; /* stolen */
    o->n++;
    return 0;
}

static int scan_next(walk_t *w);

static void after_batch(walk_t *w)
{
    clear_batch(w);
    if (sb_scan_done(&w->index)) {
        finish(w, NULL);
        return;
    }
    if (scan_next(w) == 0)
        return;
    w->out->index_unread = sb_cluster_is_cluster(w->a->db);
    finish(w, w->out->index_unread ? NULL : "unavailable");
}

static void reap_next(walk_t *w);

static void on_reaped(sb_admin_t *a, const sb_reap_result_t *r, const char *error, void *data)
{
    (void)a;
    walk_t *w = data;
    w->out->reaped.sockets += r->sockets;
    w->out->reaped.links += r->links;
    w->out->reaped.forgotten += r->forgotten;
    if (error) {
        finish(w, error);
        return;
    }
    reap_next(w);
}

/* One dead node at a time: each reap is itself a sequence of bounded batches. */
static void reap_next(walk_t *w)
{
    if (w->ilapsed >= w->nlapsed) {
        after_batch(w);
        return;
    }
    const char *id = w->lapsed[w->ilapsed++];
    if (sb_reap_node(w->a, id, on_reaped, w) != 0)
        finish(w, "unavailable");
}

/* Every GET of the batch answered: the live nodes are kept, the lapsed ones reaped. */
static void leases_done(walk_t *w)
{
    if (w->gets_error) {
        finish(w, w->gets_error);
        return;
    }
    w->lapsed = calloc((size_t)w->nbatch, sizeof(char *));
    if (!w->lapsed) {
        finish(w, "out of memory");
        return;
    }
    for (int i = 0; i < w->nbatch; i++) {
        lease_get_t *g = &w->gets[i];
        if (g->present) {
            w->out->unknown += g->unknown;
            if (add_live(w->out, w->batch[i], g->lease) != 0) {
                finish(w, "out of memory");
                return;
            }
            g->lease = NULL; /* stolen */
        } else {
            w->lapsed[w->nlapsed++] = w->batch[i];
        }
    }
    reap_next(w);
}

static void on_lease(redisReply *reply, const char *error, void *data)
{
    lease_get_t *g = data;
    walk_t *w = g->w;
    if (error && strncmp(error, "unavailable", 11) == 0 && sb_cluster_is_cluster(w->a->db)) {
        /* Its slot's shard is lost: the node may well be alive. Listed, never reaped. */
        g->present = 1;
        g->unknown = 1;
    } else if (error || !reply ||
               (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL)) {
        /* A literal, never error itself: it lives in the request, freed when this returns,
         * and the batch keeps its failure until its last GET answers (ASan caught the pass
         * logging it after a connection drop with two GETs in flight). */
        if (!w->gets_error) {
            if (error)
                sb_warn("node index: lease GET failed: %s", error);
            w->gets_error = error ? "unavailable" : "bad GET reply";
        }
    } else if (reply->type == REDIS_REPLY_STRING) {
        g->present = 1;
        g->lease = json_loadb(reply->str, reply->len, 0, NULL);
    }
    if (--w->gets_pending == 0)
        leases_done(w);
}

static void on_scan(const redisReply *items, const char *error, void *data)
{
    walk_t *w = data;
    sb_admin_t *a = w->a;
    if (error && strncmp(error, "unavailable", 11) == 0 && sb_cluster_is_cluster(a->db)) {
        /* P:nodes is on a shard that is lost: the nodes read so far, marked partial. */
        w->out->index_unread = 1;
        finish(w, NULL);
        return;
    }
    if (error) {
        finish(w, error);
        return;
    }
    w->batch = calloc(items->elements + 1, sizeof(char *));
    if (!w->batch) {
        finish(w, "out of memory");
        return;
    }
    for (size_t i = 0; i < items->elements; i++) {
        const redisReply *e = items->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        /* Node ids are what --id allows; anything else was not written by a node, and would
         * build wrong key names. */
        if (e->len != strlen(e->str) || !sb_config_valid_name(e->str)) {
            sb_warn("node index: ignoring an invalid node id");
            continue;
        }
        if (sb_map_get(&w->seen, e->str))
            continue;
        char *id = strdup(e->str);
        if (!id || sb_map_put(&w->seen, e->str, w) != 0) {
            free(id);
            finish(w, "out of memory");
            return;
        }
        w->batch[w->nbatch++] = id;
    }
    if (w->nbatch == 0) {
        after_batch(w);
        return;
    }
    /* The batch's leases, bounded by the SSCAN COUNT. */
    w->gets = calloc((size_t)w->nbatch, sizeof *w->gets);
    if (!w->gets) {
        finish(w, "out of memory");
        return;
    }
    w->gets_pending = 1; /* held while sending */
    for (int i = 0; i < w->nbatch; i++) {
        char key[SB_KEY_MAX];
        w->gets[i].w = w;
        if (sb_key_node_lease(key, sizeof key, a->cfg.prefix, w->batch[i]) < 0) {
            w->gets_error = "node id too long";
            break;
        }
        const char *argv[] = {"GET", key};
        w->gets_pending++;
        int rc = sb_admin_cmd(a, on_lease, &w->gets[i], 2, argv, NULL);
        if (rc == SB_EUNAVAIL && sb_cluster_is_cluster(a->db)) {
            /* No connected primary serves the lease's slot (a shard lost): unknown. */
            w->gets_pending--;
            w->gets[i].present = w->gets[i].unknown = 1;
        } else if (rc != 0) {
            w->gets_pending--;
            w->gets_error = "unavailable";
            break;
        }
    }
    /* The replies come later (the callback contract), so this never finishes the batch
     * unless nothing was sent. */
    if (--w->gets_pending == 0)
        leases_done(w);
}

static int scan_next(walk_t *w)
{
    return sb_scan_next(&w->index, on_scan, w);
}

int sb_nodes_walk(sb_admin_t *a, sb_nodes_cb cb, void *data)
{
    walk_t *w = calloc(1, sizeof *w);
    if (!w)
        return SB_ENOMEM;
    w->out = calloc(1, sizeof *w->out);
    if (!w->out) {
        free(w);
        return SB_ENOMEM;
    }
    w->a = a;
    w->cb = cb;
    w->data = data;
    char key[SB_KEY_MAX];
    sb_map_init(&w->seen);
    int rc = SB_EINVAL;
    if (sb_key_global(key, sizeof key, a->cfg.prefix, "nodes") >= 0 &&
        sb_scan_init(&w->index, a->db, key) == 0)
        rc = scan_next(w);
    if (rc != 0) {
        sb_map_free(&w->seen);
        free(w->out);
        free(w);
    }
    return rc;
}
