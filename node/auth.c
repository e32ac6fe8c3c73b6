/* HS256 JWT verification for joins, and secret files. libjwt 1.10 checks the signature and
 * nothing else (no alg policy, no claims), so the alg is checked here before libjwt sees the
 * token, and the claims are read here from the payload the signature covers. */
#include "auth.h"

#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET_FILE_MAX 65536

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes unpadded base64url s[0..n) into a new buffer (*outlen bytes, plus a NUL so it can be
 * printed); NULL when s is not base64url. */
static unsigned char *b64url_decode(const char *s, size_t n, size_t *outlen)
{
    if (n % 4 == 1)
        return NULL;
    unsigned char *out = malloc(n / 4 * 3 + 3), *o = out;
    if (!out)
        return NULL;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    *o = '\0';
    *outlen = (size_t)(o - out);
    return out;
}

/* Parses the base64url JSON object in s[0..n); a new reference, or NULL. */
static json_t *decode_part(const char *s, size_t n)
{
    size_t len;
    unsigned char *raw = b64url_decode(s, n, &len);
    if (!raw)
        return NULL;
    json_t *v = json_loadb((const char *)raw, len, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (v && !json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* Compares the numeric claim v with t + delta: -1 below, 0 equal, 1 above. Exact for integer
 * claims (no overflow whatever the token holds). */
static int cmp_claim(json_t *v, int64_t t, int64_t delta)
{
    if (json_is_integer(v)) {
        int64_t bound;
        if (__builtin_add_overflow(t, delta, &bound))
            bound = delta > 0 ? INT64_MAX : INT64_MIN;
        json_int_t c = json_integer_value(v);
        return c < bound ? -1 : c > bound;
    }
    double c = json_real_value(v), bound = (double)t + (double)delta;
    return c < bound ? -1 : c > bound;
}

/* 1 when the numeric claim v is within the range of a NumericDate we compare exactly: any
 * integer (jansson holds it in 64 bits), or a real within +-2^63. A real like 1e300 is a
 * number, but no date: without this a token with exp 1e300 never expired. */
static int claim_in_range(json_t *v)
{
    if (json_is_integer(v))
        return 1;
    double d = json_real_value(v);
    return d > -9223372036854775808.0 && d < 9223372036854775808.0;
}

static int refuse(char *why, size_t whylen, const char *reason)
{
    snprintf(why, whylen, "%s", reason);
    return -1;
}

/* The claims checks on the verified payload; 0 or -1 with why. */
static int check_claims(json_t *claims, const char *room, int64_t now_s, char **sub_out, char *why,
                        size_t whylen)
{
    json_t *exp = json_object_get(claims, "exp");
    json_t *nbf = json_object_get(claims, "nbf");
    json_t *claim_room = json_object_get(claims, "room");
    json_t *sub = json_object_get(claims, "sub");
    if (!exp)
        return refuse(why, whylen, "token has no exp");
    if (!json_is_number(exp))
        return refuse(why, whylen, "exp is not a number");
    if (!claim_in_range(exp))
        return refuse(why, whylen, "exp is out of range");
    if (cmp_claim(exp, now_s, -SB_AUTH_LEEWAY_S) < 0)
        return refuse(why, whylen, "token expired");
    if (nbf && !json_is_number(nbf))
        return refuse(why, whylen, "nbf is not a number");
    if (nbf && !claim_in_range(nbf))
        return refuse(why, whylen, "nbf is out of range");
    if (nbf && cmp_claim(nbf, now_s, SB_AUTH_LEEWAY_S) > 0)
        return refuse(why, whylen, "token not valid yet (nbf)");
    if (claim_room && !json_is_string(claim_room))
        return refuse(why, whylen, "room claim is not a string");
    if (claim_room && (!room || strcmp(json_string_value(claim_room), room) != 0))
        return refuse(why, whylen, "token is for another room");
    if (sub && !json_is_string(sub))
        return refuse(why, whylen, "sub is not a string");
    if (sub && sub_out && !(*sub_out = strdup(json_string_value(sub))))
        return refuse(why, whylen, "out of memory");
    return 0;
}

int sb_auth_verify(const unsigned char *secret, size_t secret_len, const char *token,
                   const char *room, int64_t now_s, char **sub_out, char *why, size_t whylen)
{
    if (sub_out)
        *sub_out = NULL;
    if (!secret || secret_len == 0 || secret_len > INT_MAX)
        return refuse(why, whylen, "no usable secret");
    if (!token || !*token)
        return refuse(why, whylen, "no token");
    if (strnlen(token, SB_AUTH_TOKEN_MAX + 1) > SB_AUTH_TOKEN_MAX)
        return refuse(why, whylen, "token too long");

    /* header.payload.signature, three non-empty parts. */
    const char *dot1 = strchr(token, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot1 || !dot2 || strchr(dot2 + 1, '.') || dot1 == token || dot2 == dot1 + 1 ||
        dot2[1] == '\0')
        return refuse(why, whylen, "not a signed compact JWT");

    /* The alg policy comes first: libjwt would otherwise verify whatever alg the token names
     * (HS512 with our secret, or "none" with no signature at all). */
    json_t *header = decode_part(token, (size_t)(dot1 - token));
    if (!header)
        return refuse(why, whylen, "header is not base64url JSON object");
    json_t *alg = json_object_get(header, "alg");
    int alg_ok = json_is_string(alg) && strcmp(json_string_value(alg), "HS256") == 0;
    json_decref(header);
    if (!alg_ok)
        return refuse(why, whylen, "alg is not HS256");

    jwt_t *jwt = NULL;
    if (jwt_decode(&jwt, token, secret, (int)secret_len) != 0 || !jwt) {
        if (jwt)
            jwt_free(jwt);
        return refuse(why, whylen, "bad signature or malformed token");
    }
    int verified_hs256 = jwt_get_alg(jwt) == JWT_ALG_HS256;
    jwt_free(jwt);
    if (!verified_hs256)
        return refuse(why, whylen, "alg is not HS256");

    /* The payload bytes are covered by the signature just checked; parse them ourselves so
     * that duplicate claims are refused and numeric types are seen as they are. */
    json_t *claims = decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (!claims)
        return refuse(why, whylen, "payload is not a JSON object");
    int rc = check_claims(claims, room, now_s, sub_out, why, whylen);
    json_decref(claims);
    return rc;
}

int sb_auth_read_secret(const char *path, size_t min_len, unsigned char **out, size_t *len,
                        char *why, size_t wl)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, wl, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    unsigned char *buf = malloc(SECRET_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        snprintf(why, wl, "out of memory reading '%s'", path);
        return -1;
    }
    size_t n = fread(buf, 1, SECRET_FILE_MAX + 1, f);
    int read_error = ferror(f) ? errno : 0;
    fclose(f);
    const char *problem = NULL;
    if (read_error)
        problem = strerror(read_error);
    else if (n > SECRET_FILE_MAX)
        problem = "file is over 64 KiB";
    if (!problem) {
        if (n > 0 && buf[n - 1] == '\n') {
            n--;
            if (n > 0 && buf[n - 1] == '\r')
                n--;
        }
        if (n < min_len) {
            snprintf(why, wl, "'%s': the secret has %zu bytes, at least %zu are needed", path, n,
                     min_len);
            free(buf);
            return -1;
        }
    }
    if (problem) {
        snprintf(why, wl, "cannot read '%s': %s", path, problem);
        free(buf);
        return -1;
    }
    /* Shrink to fit; a failed shrink keeps the larger buffer, which is still correct. */
    unsigned char *fit = realloc(buf, n ? n : 1);
    *out = fit ? fit : buf;
    *len = n;
    return 0;
}

int sb_auth_load_secret(const char *path, unsigned char **out, size_t *len, char *why, size_t wl)
{
    return sb_auth_read_secret(path, SB_AUTH_SECRET_MIN, out, len, why, wl);
}
