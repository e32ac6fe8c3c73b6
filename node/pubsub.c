/* Pub/sub dispatch: what arrives on this node's channel. Room events (join, left, link, unlink)
 * and relayed signals go to route.c, the probe to presence.c. Every payload is text our own
 * scripts or nodes wrote (lua/README.md); its fields are located in the text (no tree is built)
 * and checked (ids and room names by their character sets) before use: a malformed message is
 * dropped, never half applied. */
#include "node.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The string member `key` of payload, without its quotes, into out (cap bytes with the NUL).
 * 1, or 0 when absent, not a string, too long, or escaped (none of our names needs escapes). */
static int str_member(const char *payload, size_t len, const char *key, char *out, size_t cap)
{
    const char *v;
    size_t vl;
    if (!sb_json_member_span(payload, len, key, &v, &vl) || vl < 2 || v[0] != '"' ||
        v[vl - 1] != '"' || vl - 2 >= cap || memchr(v + 1, '\\', vl - 2))
        return 0;
    memcpy(out, v + 1, vl - 2);
    out[vl - 2] = '\0';
    return 1;
}

/* The unsigned integer member `key`. 1, or 0 when absent or not a plain integer. */
static int uint_member(const char *payload, size_t len, const char *key, uint64_t *out)
{
    const char *v;
    size_t vl;
    char buf[24];
    if (!sb_json_member_span(payload, len, key, &v, &vl) || vl == 0 || vl >= sizeof buf)
        return 0;
    for (size_t i = 0; i < vl; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    memcpy(buf, v, vl);
    buf[vl] = '\0';
    errno = 0;
    unsigned long long q = strtoull(buf, NULL, 10);
    if (errno)
        return 0;
    *out = q;
    return 1;
}

static int sid_member(const char *payload, size_t len, const char *key, char *out)
{
    return str_member(payload, len, key, out, SB_SID_MAX + 1) && sb_valid_sid(out);
}

static void on_signal(sb_node_t *n, const char *room, const char *payload, size_t len)
{
    char from[SB_SID_MAX + 1], to[SB_SID_MAX + 1];
    const char *data;
    size_t dlen;
    /* Relayed as the sender wrote it: data's text is handed on, not re-encoded. */
    if (sid_member(payload, len, "from", from) && sid_member(payload, len, "to", to) &&
        sb_json_member_span(payload, len, "data", &data, &dlen))
        sb_route_signal_in(n, room, from, to, data, dlen);
}

static void on_member_event(sb_node_t *n, const char *room, int join, const char *payload,
                            size_t len)
{
    char id[SB_SID_MAX + 1], node[SB_NODE_ID_MAX + 1] = "", reason[16] = "";
    sb_view_event_t ev = {join, 0, id, NULL, NULL, NULL};
    if (!sid_member(payload, len, "id", id) || !uint_member(payload, len, "seq", &ev.seq))
        return;
    char *meta = NULL;
    if (join) {
        const char *v;
        size_t vl;
        if (!str_member(payload, len, "node", node, sizeof node))
            return;
        ev.node = node;
        if (sb_json_member_span(payload, len, "meta", &v, &vl) && vl >= 2 && v[0] == '{') {
            meta = malloc(vl + 1);
            if (!meta) {
                /* Dropping it leaves a gap the view notices: it reads the room. */
                sb_error("room %s: out of memory reading a join event", room);
                return;
            }
            memcpy(meta, v, vl);
            meta[vl] = '\0';
        }
        ev.meta_json = meta;
    } else {
        str_member(payload, len, "reason", reason, sizeof reason);
        ev.reason = reason;
    }
    sb_route_event(n, room, &ev);
    free(meta);
}

void sb_pubsub_on_message(sb_node_t *n, const char *payload, size_t len)
{
    char type[16], room[SB_ROOM_MAX + 1];
    if (!str_member(payload, len, "t", type, sizeof type))
        return;
    if (strcmp(type, "probe") == 0) {
        uint64_t nonce;
        if (uint_member(payload, len, "nonce", &nonce))
            sb_presence_on_probe(n, nonce);
        return;
    }
    if (!str_member(payload, len, "room", room, sizeof room) || !sb_valid_room(room))
        return;
    if (strcmp(type, "signal") == 0) {
        on_signal(n, room, payload, len);
    } else if (strcmp(type, "join") == 0 || strcmp(type, "left") == 0) {
        on_member_event(n, room, type[0] == 'j', payload, len);
    } else if (strcmp(type, "link") == 0 || strcmp(type, "unlink") == 0) {
        char a[SB_SID_MAX + 1], b[SB_SID_MAX + 1], state[8] = "";
        if (!sid_member(payload, len, "a", a) || !sid_member(payload, len, "b", b))
            return;
        if (type[0] == 'u')
            sb_route_unlink_event(n, room, a, b);
        else if (str_member(payload, len, "state", state, sizeof state) &&
                 (strcmp(state, "up") == 0 || strcmp(state, "down") == 0))
            sb_route_link_event(n, room, a, b, state[0] == 'u');
    }
}
