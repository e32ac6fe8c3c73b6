/* Hash slots (see slot.h). A table-driven CRC16: 512 bytes of constants computed once at start
 * would need a lock or an init call, so the table is built lazily by the bitwise form instead
 * of being written out by hand; it costs one loop of 256 x 8 steps on first use. */
#include "slot.h"

#include <string.h>

static uint16_t table[256];
static int table_ready;

static void build_table(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint16_t crc = (uint16_t)(i << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
        table[i] = crc;
    }
    /* Why no lock: both binaries are single-threaded, and a racing second build would write
     * the same values. */
    table_ready = 1;
}

uint16_t sb_crc16(const char *buf, size_t len)
{
    if (!table_ready)
        build_table();
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ table[((crc >> 8) ^ (unsigned char)buf[i]) & 0xff]);
    return crc;
}

unsigned sb_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        /* "{}" (nothing between) does not count as a tag: the whole key is hashed. */
        if (close && close > open + 1)
            return sb_crc16(open + 1, (size_t)(close - open - 1)) & (SB_SLOTS - 1);
    }
    return sb_crc16(key, len) & (SB_SLOTS - 1);
}
