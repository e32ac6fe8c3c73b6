/* Key and channel names, and the validators of what goes into them. Pure. */
#include "keys.h"
#include "slot.h"

#include <stdio.h>
#include <stdlib.h>
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

int sb_key_node_sockets(char *buf, size_t len, const char *prefix, const char *tag,
                        const char *node)
{
    return fit(snprintf(buf, len, "%s:{%s}:node:%s:sockets", prefix, tag, node), len);
}

int sb_channel_node(char *buf, size_t len, const char *prefix, const char *tag, const char *node)
{
    return fit(snprintf(buf, len, "%s:{%s}:node:%s", prefix, tag, node), len);
}

int sb_key_node_backlog(char *buf, size_t len, const char *prefix, const char *tag,
                        const char *node)
{
    return fit(snprintf(buf, len, "%s:{%s}:node:%s:backlog", prefix, tag, node), len);
}

/* Why a table built by search and not a formula: CRC16 cannot be inverted into a short
 * readable tag directly; trying "#0", "#1", ... fills all 16384 slots after about 180,000
 * tries (the last one found is "#167975"; a few ms, once per process), and every process (and
 * tests/keyspace.py) finds the same tags. Static: the table is immutable once built, and both
 * binaries are single-threaded. */
static char (*slot_tags)[SB_TAG_MAX];

static int build_tags(void)
{
    char(*t)[SB_TAG_MAX] = calloc(SB_SLOTS, sizeof *t);
    if (!t)
        return -1;
    unsigned left = SB_SLOTS;
    for (unsigned n = 0; left && n < 1000000; n++) {
        char tag[SB_TAG_MAX];
        int len = snprintf(tag, sizeof tag, "#%u", n);
        unsigned s = sb_crc16(tag, (size_t)len) & (SB_SLOTS - 1);
        if (!t[s][0]) {
            memcpy(t[s], tag, (size_t)len + 1);
            left--;
        }
    }
    if (left) {
        free(t);
        return -1;
    }
    slot_tags = t;
    return 0;
}

const char *sb_tag_of_slot(unsigned slot)
{
    if (!slot_tags && build_tags() != 0)
        return NULL;
    return slot_tags[slot & (SB_SLOTS - 1)];
}

const char *sb_tag_of_room(int cluster, const char *room, size_t len)
{
    if (!cluster)
        return SB_TAG_SINGLE;
    if (len > SB_ROOM_MAX)
        return NULL;
    /* The room's keys are P:{R}:..., so their slot is R's CRC16 (R is never empty). */
    return sb_tag_of_slot(sb_crc16(room, len) & (SB_SLOTS - 1));
}

/* Which charsets a byte belongs to: ids [A-Za-z0-9_-], rooms the same and '.'. A table: the
 * id of every relayed signal is checked, and the comparison chain was most of that cost. */
enum { CS_SID = 1, CS_ROOM = 2 };
static const unsigned char charset[256] = {
    ['0' ... '9'] = CS_SID | CS_ROOM, ['A' ... 'Z'] = CS_SID | CS_ROOM,
    ['a' ... 'z'] = CS_SID | CS_ROOM, ['_'] = CS_SID | CS_ROOM,
    ['-'] = CS_SID | CS_ROOM,         ['.'] = CS_ROOM,
};

static int charset_ok(const char *s, size_t len, size_t min, size_t max, unsigned char set)
{
    if (!s || len < min || len > max)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!(charset[(unsigned char)s[i]] & set))
            return 0;
    return 1;
}

int sb_valid_room_n(const char *s, size_t len)
{
    return charset_ok(s, len, 1, SB_ROOM_MAX, CS_ROOM);
}

int sb_valid_stored_room_n(const char *s, size_t len)
{
    size_t p = sizeof SB_PJ_ROOM_PREFIX - 1;
    if (s && len > p && memcmp(s, SB_PJ_ROOM_PREFIX, p) == 0)
        return charset_ok(s + p, len - p, 1, SB_PJ_KEY_MAX, CS_ROOM);
    return sb_valid_room_n(s, len);
}

int sb_valid_room(const char *s)
{
    return s && sb_valid_room_n(s, strlen(s));
}

int sb_valid_sid(const char *s)
{
    return s && charset_ok(s, strlen(s), 22, SB_SID_MAX, CS_SID);
}
