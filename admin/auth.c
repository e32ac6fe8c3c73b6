/* The bearer token check. The token is kept only as an HMAC-SHA256 under a random key drawn at
 * start; a request's token is put through the same HMAC and the two 32-byte digests are
 * compared with CRYPTO_memcmp. Equal-length buffers and a compare without early exit: neither
 * the position of the first differing byte nor the token's length shows in the timing.
 * No I/O; does not know about HTTP beyond the header's text. */
#include "admin.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#define DIGEST_LEN 32

static int digest(const sb_admin_t *a, const char *text, size_t len, unsigned char *out)
{
    unsigned int outlen = 0;
    if (!HMAC(EVP_sha256(), a->token_key, sizeof a->token_key, (const unsigned char *)text, len,
              out, &outlen) ||
        outlen != DIGEST_LEN)
        return -1;
    return 0;
}

int sb_admin_auth_init(sb_admin_t *a, const char *token, size_t len)
{
    if (getrandom(a->token_key, sizeof a->token_key, 0) != (ssize_t)sizeof a->token_key)
        return -1;
    a->token_digest = malloc(DIGEST_LEN);
    if (!a->token_digest || digest(a, token, len, a->token_digest) != 0)
        return -1;
    return 0;
}

void sb_admin_auth_free(sb_admin_t *a)
{
    if (a->token_digest)
        OPENSSL_cleanse(a->token_digest, DIGEST_LEN);
    free(a->token_digest);
    a->token_digest = NULL;
    OPENSSL_cleanse(a->token_key, sizeof a->token_key);
}

int sb_admin_auth_check(const sb_admin_t *a, const char *header)
{
    if (!header || !a->token_digest)
        return 0;
    /* RFC 7235: the scheme is case-insensitive, then one or more spaces, then the token. */
    if (strncasecmp(header, "Bearer", 6) != 0 || header[6] != ' ')
        return 0;
    const char *t = header + 6;
    while (*t == ' ')
        t++;
    size_t len = strlen(t);
    while (len > 0 && (t[len - 1] == ' ' || t[len - 1] == '\t'))
        len--;
    if (len == 0)
        return 0;
    unsigned char given[DIGEST_LEN];
    if (digest(a, t, len, given) != 0)
        return 0;
    int equal = CRYPTO_memcmp(given, a->token_digest, DIGEST_LEN) == 0;
    OPENSSL_cleanse(given, sizeof given);
    return equal;
}

int sb_admin_auth_query_has_token(const char *query)
{
    static const char *const names[] = {"token",  "access_token", "auth",   "authorization",
                                        "bearer", "api_key",      "apikey", "key"};
    if (!query)
        return 0;
    const char *p = query;
    while (*p) {
        const char *end = strchr(p, '&');
        size_t plen = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t nlen = eq ? (size_t)(eq - p) : plen;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i]) == nlen && strncasecmp(p, names[i], nlen) == 0)
                return 1;
        p += plen;
        if (*p == '&')
            p++;
    }
    return 0;
}
