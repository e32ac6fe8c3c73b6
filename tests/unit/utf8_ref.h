/* A reference UTF-8 check for the tests of node/wire.c (tests/unit/test_wire.c and
 * tests/fuzz/fuzz_wire.c): plain and slow, written apart from sb_wire_utf8_ok. */
#ifndef SB_UTF8_REF_H
#define SB_UTF8_REF_H

#include <stddef.h>
#include <stdint.h>

/* RFC 3629 section 4, byte by byte: after a lead byte, how many continuation bytes are still
 * due and the range the next one must fall in (narrower than 80..BF right after E0, ED, F0
 * and F4: no overlongs, no surrogates, nothing past U+10FFFF). */
static int utf8_ref(const uint8_t *p, size_t len)
{
    int need = 0;
    uint8_t lo = 0x80, hi = 0xbf;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (need > 0) {
            if (c < lo || c > hi)
                return 0;
            need--;
            lo = 0x80;
            hi = 0xbf;
            continue;
        }
        if (c <= 0x7f)
            continue;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c == 0xe0) {
            need = 2;
            lo = 0xa0;
        } else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) {
            need = 2;
        } else if (c == 0xed) {
            need = 2;
            hi = 0x9f;
        } else if (c == 0xf0) {
            need = 3;
            lo = 0x90;
        } else if (c >= 0xf1 && c <= 0xf3) {
            need = 3;
        } else if (c == 0xf4) {
            need = 3;
            hi = 0x8f;
        } else {
            return 0; /* 80..C1, F5..FF */
        }
    }
    return need == 0;
}

#endif
