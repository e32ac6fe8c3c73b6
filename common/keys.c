/* Key and channel names, and the validators of what goes into them. Pure. */
#include "keys.h"

#include <stdio.h>
#include <string.h>

static int fit(int n, size_t len)
{
    return n < 0 || (size_t)n >= len ? -1 : n;
}

int sb_key_room_n(char *buf, size_t len, const char *prefix, const char *room, size_t room_len,
                  const char *suffix)
{
    if (room_len > SB_ROOM_MAX)
        return -1;
    return fit(snprintf(buf, len, "%s:{%.*s}:%s", prefix, (int)room_len, room, suffix), len);
}

int sb_key_room(char *buf, size_t len, const char *prefix, const char *room, const char *suffix)
{
    return sb_key_room_n(buf, len, prefix, room, strlen(room), suffix);
}

int sb_key_global(char *buf, size_t len, const char *prefix, const char *suffix)
{
    return fit(snprintf(buf, len, "%s:%s", prefix, suffix), len);
}

int sb_key_node_lease(char *buf, size_t len, const char *prefix, const char *node)
{
    return fit(snprintf(buf, len, "%s:node:%s", prefix, node), len);
}

int sb_key_node_sockets(char *buf, size_t len, const char *prefix, const char *node)
{
    return fit(snprintf(buf, len, "%s:node:%s:sockets", prefix, node), len);
}

int sb_channel_node(char *buf, size_t len, const char *prefix, const char *node)
{
    return fit(snprintf(buf, len, "%s:node:%s", prefix, node), len);
}

static int charset_ok(const char *s, size_t len, size_t min, size_t max, const char *extra)
{
    if (!s || len < min || len > max)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr(extra, c))))
            return 0;
    }
    return 1;
}

int sb_valid_room_n(const char *s, size_t len)
{
    return charset_ok(s, len, 1, SB_ROOM_MAX, "._-");
}

int sb_valid_room(const char *s)
{
    return s && sb_valid_room_n(s, strlen(s));
}

int sb_valid_sid(const char *s)
{
    return s && charset_ok(s, strlen(s), 22, SB_SID_MAX, "_-");
}
