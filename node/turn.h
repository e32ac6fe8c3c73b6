/* TURN REST credentials (contract section 3, --turn-secret-file / --turn-url / --turn-ttl-ms):
 * the time-limited username and password that coturn's use-auth-secret mode checks. Pure: the
 * caller passes the time and the secret; nothing here reads files or clocks. */
#ifndef SB_TURN_H
#define SB_TURN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Longest username sb_turn_credential writes: a 20-digit expiry, ':', a socket id. */
#define SB_TURN_USERNAME_MAX 96
/* base64 of a 20-byte HMAC-SHA1 is 28 characters. */
#define SB_TURN_CREDENTIAL_LEN 28

/* Writes the username "<now_s + ttl_ms / 1000>:<sid>" (ttl rounded down to whole seconds) and
 * its credential base64(HMAC-SHA1(secret, username)) into the caller's buffers (user at least
 * SB_TURN_USERNAME_MAX + 1 bytes, cred at least SB_TURN_CREDENTIAL_LEN + 1). Returns 0, or -1
 * when sid does not fit or the HMAC fails. */
int sb_turn_credential(const unsigned char *secret, size_t secret_len, const char *sid,
                       int64_t now_s, int64_t ttl_ms, char *user, size_t userlen, char *cred,
                       size_t credlen);

/* The "ice_servers" value for socket sid: a new JSON array
 * [{"urls":[urls...],"username":U,"credential":C}], or a new empty array when secret is NULL or
 * empty or there are no urls. Borrows every argument. Returns NULL only when out of memory or
 * when the credential cannot be computed. */
json_t *sb_turn_ice_servers(const unsigned char *secret, size_t len, char **urls, int nurls,
                            const char *sid, int64_t now_s, int64_t ttl_ms);

#endif
