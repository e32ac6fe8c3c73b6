/* Join authorization (contract section 3, --auth-secret-file): verifying HS256 JWTs and
 * loading shared secrets from files. Verification is pure (the caller passes the time); the
 * loader reads one file. Which messages need a token, and what a refusal does to the session,
 * is the session's business. */
#ifndef SB_AUTH_H
#define SB_AUTH_H

#include <stddef.h>
#include <stdint.h>

/* Seconds of clock skew allowed on exp and nbf. */
#define SB_AUTH_LEEWAY_S 30
/* Shortest accepted HS256 secret, in bytes (RFC 7518 section 3.2: at least the hash size). */
#define SB_AUTH_SECRET_MIN 32
/* Longest token considered at all; anything longer is refused before decoding. */
#define SB_AUTH_TOKEN_MAX 8192

/* Verifies token, a compact JWS, for a join of room at now_s (unix seconds). It is accepted
 * only when all of these hold:
 * - the header's "alg" is exactly "HS256" (so "none", HS384, HS512, RS*, ES* are refused) and
 *   the signature is HMAC-SHA256 of the token's first two parts under secret;
 * - the payload is an object with a numeric "exp" and now_s <= exp + SB_AUTH_LEEWAY_S;
 * - "nbf", when present, is numeric and nbf <= now_s + SB_AUTH_LEEWAY_S;
 * - exp and nbf, when reals, lie within +-2^63 (1e300 is refused; integers always do);
 * - "room", when present, is a string equal to room;
 * - "sub", when present, is a string.
 * Returns 0 and, when sub_out is not NULL, sets *sub_out to a malloc'd copy of "sub" (the
 * caller frees it) or NULL when the token has none. Returns -1 when refused, with a short
 * reason in why (for logs; not for the client, which only learns "unauthorized") and *sub_out
 * set to NULL. Never keeps any pointer to its arguments. */
int sb_auth_verify(const unsigned char *secret, size_t secret_len, const char *token,
                   const char *room, int64_t now_s, char **sub_out, char *why, size_t whylen);

/* Reads the secret in the file at path into a new buffer: the whole file, less one trailing
 * newline ("\n" or "\r\n") that editors add. Refuses a secret shorter than min_len bytes (and
 * files over 64 KiB). Returns 0 with *out (malloc'd, the caller frees it) and *len set, or -1
 * with a reason naming the file in why and *out NULL. Usable for any secret file (the TURN
 * secret, with min_len 1). */
int sb_auth_read_secret(const char *path, size_t min_len, unsigned char **out, size_t *len,
                        char *why, size_t wl);

/* sb_auth_read_secret for --auth-secret-file: at least SB_AUTH_SECRET_MIN bytes. */
int sb_auth_load_secret(const char *path, unsigned char **out, size_t *len, char *why, size_t wl);

#endif
