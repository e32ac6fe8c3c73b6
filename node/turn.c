/* TURN REST credentials in coturn's use-auth-secret format (the "TURN REST API" draft):
 * username = expiry timestamp ':' user id, password = base64(HMAC-SHA1(secret, username)).
 * Owns only the computation; loading the secret and choosing the ttl belong to the node. */
#include "turn.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

int sb_turn_credential(const unsigned char *secret, size_t secret_len, const char *sid,
                       int64_t now_s, int64_t ttl_ms, char *user, size_t userlen, char *cred,
                       size_t credlen)
{
    if (!secret || secret_len == 0 || secret_len > INT_MAX || !sid ||
        credlen < SB_TURN_CREDENTIAL_LEN + 1)
        return -1;
    int64_t expiry;
    if (__builtin_add_overflow(now_s, ttl_ms / 1000, &expiry))
        return -1;
    int n = snprintf(user, userlen, "%" PRId64 ":%s", expiry, sid);
    if (n < 0 || (size_t)n >= userlen)
        return -1;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha1(), secret, (int)secret_len, (const unsigned char *)user, (size_t)n, mac,
              &maclen) ||
        maclen != 20)
        return -1;
    /* EVP_EncodeBlock writes 28 characters and a NUL for 20 bytes, no line breaks. */
    EVP_EncodeBlock((unsigned char *)cred, mac, (int)maclen);
    return 0;
}

json_t *sb_turn_ice_servers(const unsigned char *secret, size_t len, char **urls, int nurls,
                            const char *sid, int64_t now_s, int64_t ttl_ms)
{
    json_t *servers = json_array();
    if (!servers || !secret || len == 0 || !urls || nurls <= 0)
        return servers;
    char user[SB_TURN_USERNAME_MAX + 1], cred[SB_TURN_CREDENTIAL_LEN + 1];
    if (sb_turn_credential(secret, len, sid, now_s, ttl_ms, user, sizeof user, cred, sizeof cred) !=
        0) {
        json_decref(servers);
        return NULL;
    }
    /* The _new calls steal their value even when they fail: each object is owned by exactly
     * one reference at every step, so one decref of the outermost frees everything. */
    json_t *server = json_object();
    if (!server || json_array_append_new(servers, server) != 0) {
        json_decref(servers);
        return NULL;
    }
    json_t *list = json_array();
    if (json_object_set_new(server, "urls", list) != 0 ||
        json_object_set_new(server, "username", json_string(user)) != 0 ||
        json_object_set_new(server, "credential", json_string(cred)) != 0) {
        json_decref(servers);
        return NULL;
    }
    for (int i = 0; i < nurls; i++) {
        if (json_array_append_new(list, json_string(urls[i])) != 0) {
            json_decref(servers);
            return NULL;
        }
    }
    return servers;
}
