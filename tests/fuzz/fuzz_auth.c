/* Fuzzes the JWT verifier (node/auth.c). The first byte picks a mode:
 * - even: the rest is the token itself, as a client would send it (a forged signature never
 *   verifies, so this explores the framing, base64url and header checks);
 * - odd: the next 8 bytes are the verifier's clock, the rest "header\npayload"; the target
 *   signs them with the secret, so the claims checks are explored too.
 * In both modes an accepted token's payload must have a numeric exp inside the leeway and
 * the right room, sub must come back as it is in the payload, and a refusal must leave no
 * output and say why. */
#include "auth.h"
#include "fuzz.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

static const unsigned char secret[] = "fuzzing-secret-of-at-least-32-bytes!";
#define ROOM "room-1"

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        out[o++] = a[v & 63];
    }
    if (n - i == 1) {
        out[o++] = a[in[i] >> 2];
        out[o++] = a[(in[i] & 3) << 4];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 8 | in[i + 1];
        out[o++] = a[v >> 10];
        out[o++] = a[(v >> 4) & 63];
        out[o++] = a[(v & 15) << 2];
    }
    out[o] = '\0';
    return o;
}

/* header and payload (raw bytes) signed with the secret into a new token. */
static char *sign(const uint8_t *h, size_t hl, const uint8_t *p, size_t pl)
{
    char *t = malloc((hl + pl) * 2 + 128);
    size_t n = b64url(h, hl, t);
    t[n++] = '.';
    n += b64url(p, pl, t + n);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    FUZZ_CHECK(
        HMAC(EVP_sha256(), secret, (int)(sizeof secret - 1), (unsigned char *)t, n, mac, &maclen));
    t[n++] = '.';
    b64url(mac, maclen, t + n);
    return t;
}

/* The decoded middle part of token (malloc'd, *n bytes), via OpenSSL's standard base64. */
static unsigned char *payload_of(const char *token, size_t *n)
{
    const char *a = strchr(token, '.'), *b = a ? strchr(a + 1, '.') : NULL;
    if (!b)
        return NULL;
    size_t len = (size_t)(b - a - 1), padded = (len + 3) / 4 * 4;
    unsigned char *in = malloc(padded + 1), *out = malloc(padded + 1);
    for (size_t i = 0; i < padded; i++) {
        char c = i < len ? a[1 + i] : '=';
        in[i] = (unsigned char)(c == '-' ? '+' : c == '_' ? '/' : c);
    }
    in[padded] = '\0';
    int got = EVP_DecodeBlock(out, in, (int)padded);
    free(in);
    if (got < 0) {
        free(out);
        return NULL;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes; drop them. */
    *n = (size_t)got - (padded - len);
    return out;
}

/* What an accepted token must satisfy, checked independently from its payload text. */
static void check_accepted(const uint8_t *p, size_t pl, int64_t now, const char *sub)
{
    json_t *c = json_loadb((const char *)p, pl, 0, NULL);
    FUZZ_CHECK(json_is_object(c));
    json_t *exp = json_object_get(c, "exp");
    FUZZ_CHECK(json_is_number(exp));
    FUZZ_CHECK(json_number_value(exp) >= (double)now - SB_AUTH_LEEWAY_S - 1);
    json_t *room = json_object_get(c, "room");
    FUZZ_CHECK(!room || (json_is_string(room) && strcmp(json_string_value(room), ROOM) == 0));
    json_t *s = json_object_get(c, "sub");
    FUZZ_CHECK(!s == !sub);
    FUZZ_CHECK(!s || strcmp(json_string_value(s), sub) == 0);
    json_decref(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4 * SB_AUTH_TOKEN_MAX)
        return 0;
    char *token;
    int64_t now = 1700000000;
    const uint8_t *payload = NULL;
    size_t pl = 0;
    if (data[0] % 2 == 0) {
        token = malloc(size);
        memcpy(token, data + 1, size - 1);
        token[size - 1] = '\0';
    } else {
        if (size < 9)
            return 0;
        memcpy(&now, data + 1, sizeof now);
        const uint8_t *h = data + 9, *end = data + size;
        const uint8_t *nl = memchr(h, '\n', (size_t)(end - h));
        if (!nl)
            return 0;
        payload = nl + 1;
        pl = (size_t)(end - payload);
        token = sign(h, (size_t)(nl - h), payload, pl);
    }
    char *sub = (char *)"unset";
    char why[128] = "";
    int rc = sb_auth_verify(secret, sizeof secret - 1, token, ROOM, now, &sub, why, sizeof why);
    if (rc == 0) {
        if (payload) {
            check_accepted(payload, pl, now, sub);
        } else {
            /* A raw token that verified (a seed signed with the secret): decode its payload. */
            size_t n;
            unsigned char *raw = payload_of(token, &n);
            FUZZ_CHECK(raw != NULL);
            check_accepted(raw, n, now, sub);
            free(raw);
        }
        free(sub);
    } else {
        FUZZ_CHECK(rc == -1);
        FUZZ_CHECK(sub == NULL);
        FUZZ_CHECK(why[0] != '\0');
    }
    free(token);
    return 0;
}
