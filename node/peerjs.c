/* PeerJS wire protocol, the pure part (peerjs.h). */
#include "peerjs.h"
#include "proto.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>

static int alnum(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

int sb_pj_valid_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > SB_PJ_ID_MAX || !alnum(s[0]) || !alnum(s[n - 1]))
        return 0;
    for (size_t i = 1; i < n; i++) {
        if (alnum(s[i]))
            continue;
        /* A separator: one, between alphanumerics. */
        if ((s[i] != '_' && s[i] != '-') || !alnum(s[i - 1]))
            return 0;
    }
    return 1;
}

int sb_pj_valid_key(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > SB_PJ_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!alnum(s[i]) && !strchr("._-", s[i]))
            return 0;
    return 1;
}

int sb_pj_is_room(const char *room)
{
    size_t p = sizeof SB_PJ_ROOM_PREFIX - 1;
    return room && strncmp(room, SB_PJ_ROOM_PREFIX, p) == 0 && sb_pj_valid_key(room + p);
}

int sb_pj_room(char *out, size_t cap, const char *key)
{
    if (!sb_pj_valid_key(key) || strlen(key) + sizeof SB_PJ_ROOM_PREFIX > cap)
        return -1;
    strcpy(out, SB_PJ_ROOM_PREFIX);
    strcat(out, key);
    return (int)strlen(out);
}

static const struct {
    const char *name;
    sb_pj_type_t type;
} types[] = {
    {"HEARTBEAT", SB_PJ_HEARTBEAT}, {"OFFER", SB_PJ_OFFER}, {"ANSWER", SB_PJ_ANSWER},
    {"CANDIDATE", SB_PJ_CANDIDATE}, {"LEAVE", SB_PJ_LEAVE}, {"EXPIRE", SB_PJ_EXPIRE},
};

static sb_pj_type_t type_of(const char *name, const char **static_name)
{
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(name, types[i].name) == 0) {
            if (static_name)
                *static_name = types[i].name;
            return types[i].type;
        }
    return SB_PJ_OTHER;
}

static void conn_of(json_t *payload, char *conn)
{
    json_t *c = json_is_object(payload) ? json_object_get(payload, "connectionId") : NULL;
    const char *v = json_string_value(c);
    conn[0] = '\0';
    if (v && strlen(v) <= SB_PJ_CONNID_MAX && !strchr(v, '"') && !strchr(v, '\\'))
        strcpy(conn, v);
}

int sb_pj_decode(const char *buf, size_t len, sb_pj_msg_t *m)
{
    memset(m, 0, sizeof *m);
    json_error_t e;
    json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &e);
    const char *t = json_string_value(json_object_get(o, "type"));
    if (!json_is_object(o) || !t) {
        json_decref(o);
        return -1;
    }
    m->type = type_of(t, &m->tname);
    json_t *dst = json_object_get(o, "dst");
    if (dst && !json_is_null(dst)) {
        const char *d = json_string_value(dst);
        if (d && sb_pj_valid_id(d))
            strcpy(m->dst, d);
        else
            m->bad_dst = 1;
    }
    json_t *payload = json_object_get(o, "payload");
    if (payload && m->type != SB_PJ_OTHER && m->type != SB_PJ_HEARTBEAT) {
        const char *v;
        size_t vl;
        /* The client's own bytes (the native signal path's technique); re-encoded only when
         * the key was spelled with escapes. */
        if (sb_json_member_span(buf, len, "payload", &v, &vl)) {
            m->payload = malloc(vl + 1);
            if (m->payload) {
                memcpy(m->payload, v, vl);
                m->payload[vl] = '\0';
                m->plen = vl;
            }
        } else {
            m->payload = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
            m->plen = m->payload ? strlen(m->payload) : 0;
        }
        if (!m->payload) {
            json_decref(o);
            return -1;
        }
        conn_of(payload, m->conn);
    }
    json_decref(o);
    return 0;
}

void sb_pj_msg_free(sb_pj_msg_t *m)
{
    free(m->payload);
    m->payload = NULL;
}

char *sb_pj_frame(const char *type, const char *src, const char *dst, const char *payload,
                  size_t plen, size_t *len)
{
    size_t n = strlen(type) + strlen(src) + strlen(dst) + (payload ? plen : 0) + 64;
    char *f = malloc(n);
    if (!f)
        return NULL;
    size_t k =
        (size_t)snprintf(f, n, "{\"type\":\"%s\",\"src\":\"%s\",\"dst\":\"%s\"", type, src, dst);
    if (payload) {
        memcpy(f + k, ",\"payload\":", 11);
        k += 11;
        memcpy(f + k, payload, plen);
        k += plen;
    }
    f[k++] = '}';
    f[k] = '\0';
    *len = k;
    return f;
}

void sb_pj_frame_info(const char *frame, size_t len, sb_pj_type_t *type, char *conn)
{
    *type = SB_PJ_OTHER;
    conn[0] = '\0';
    const char *v;
    size_t vl;
    char name[16];
    /* Our own frames: "type" is a plain string of a known name. */
    if (!sb_json_member_span(frame, len, "type", &v, &vl) || vl < 2 || vl - 2 >= sizeof name)
        return;
    memcpy(name, v + 1, vl - 2);
    name[vl - 2] = '\0';
    *type = type_of(name, NULL);
    if ((*type != SB_PJ_OFFER && *type != SB_PJ_ANSWER) ||
        !sb_json_member_span(frame, len, "payload", &v, &vl))
        return;
    json_t *payload = json_loadb(v, vl, 0, NULL);
    conn_of(payload, conn);
    json_decref(payload);
}

void sb_pj_conn_add(sb_pj_t *p, int dir, const char *peer, const char *conn)
{
    if (!conn[0] || sb_pj_conn_has(p, dir, peer, conn))
        return;
    sb_pj_conn_t *c = &p->conns[p->next];
    p->next = (p->next + 1) % SB_PJ_CONNS;
    if (p->nconns < SB_PJ_CONNS)
        p->nconns++;
    c->dir = dir;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    snprintf(c->conn, sizeof c->conn, "%s", conn);
}

int sb_pj_conn_has(const sb_pj_t *p, int dir, const char *peer, const char *conn)
{
    if (!conn[0])
        return 0;
    for (int i = 0; i < p->nconns; i++) {
        const sb_pj_conn_t *c = &p->conns[i];
        if (c->dir == dir && strcmp(c->peer, peer) == 0 && strcmp(c->conn, conn) == 0)
            return 1;
    }
    return 0;
}

void sb_pj_conn_forget(sb_pj_t *p, const char *peer)
{
    for (int i = 0; i < p->nconns; i++)
        if (strcmp(p->conns[i].peer, peer) == 0)
            p->conns[i].dir = 0; /* matches nothing any more */
}

void sb_pj_free(sb_pj_t *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->npending; i++)
        free(p->pending[i]);
    free(p);
}

int sb_pj_uuid(char *out)
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        return -1;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    size_t k = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[k++] = '-';
        out[k++] = hex[b[i] >> 4];
        out[k++] = hex[b[i] & 15];
    }
    out[k] = '\0';
    return 0;
}

int sb_pj_http_route(const char *base, const char *path)
{
    size_t n = strlen(base);
    if (strncmp(path, base, n) != 0)
        return SB_PJ_HTTP_NONE;
    const char *rest = path + n;
    if (!rest[0] || strcmp(rest, "/") == 0)
        return SB_PJ_HTTP_ROOT;
    if (strcmp(rest, "/peerjs") == 0)
        return SB_PJ_HTTP_WS;
    /* /KEY/id or /KEY/peers: any key, as peer (it does not check it there). */
    const char *slash = rest[0] == '/' ? strchr(rest + 1, '/') : NULL;
    if (!slash || slash == rest + 1)
        return SB_PJ_HTTP_NONE;
    if (strcmp(slash, "/id") == 0)
        return SB_PJ_HTTP_ID;
    if (strcmp(slash, "/peers") == 0)
        return SB_PJ_HTTP_PEERS;
    return SB_PJ_HTTP_NONE;
}
