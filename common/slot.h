/* Redis Cluster hash slots: CRC16 (XMODEM, as the Redis Cluster specification) and the key ->
 * slot function with the hash-tag rule. Pure: no I/O, no allocation. */
#ifndef SB_SLOT_H
#define SB_SLOT_H

#include <stddef.h>
#include <stdint.h>

#define SB_SLOTS 16384

/* CRC16-CCITT as XMODEM (polynomial 0x1021, initial 0, no reflection, no final xor). */
uint16_t sb_crc16(const char *buf, size_t len);

/* The slot (0..16383) of key[0..len). When the key contains a '{' followed later by a '}' with
 * at least one byte between them, only the bytes between the first '{' and the first '}' after
 * it are hashed (the "hash tag"); otherwise the whole key is. So "{}x" and "x{" hash whole. */
unsigned sb_slot(const char *key, size_t len);

#endif
