/* Session resume tokens: random, shown to the client once, stored in Redis only as a SHA-256
 * hash (lua/README.md, "Session resume"). */
#ifndef SB_RESUME_H
#define SB_RESUME_H

#define SB_RESUME_TOKEN_MAX 64 /* longest token a client may present (ours are 44) */
#define SB_RESUME_HASH_LEN 64  /* SHA-256 in lower-case hex */

/* A new token (256 bits from the OS random source, base64url, 44 characters) into token
 * (SB_RESUME_TOKEN_MAX + 1 bytes) and its hash into hash (SB_RESUME_HASH_LEN + 1 bytes; NULL:
 * no hash, for a token never bound to a session). 0, or -1 when the random source fails. */
int sb_resume_token(char *token, char *hash);
/* The hash of a presented token (any text). 0, or -1. */
int sb_resume_hash(const char *token, char *hash);

#endif
