/* Unit tests for node/auth.c: tokens are minted with libjwt (and, for the header tricks libjwt
 * will not produce, signed by hand with OpenSSL) for the good case and every refusal the
 * protocol lists (docs/protocol.md); then the secret file loader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"

#define KEY "0123456789abcdef0123456789abcdef-the-test-key"
#define OTHER_KEY "0123456789abcdef0123456789abcdef-another-key"
#define NOW 1700000000LL
#define ROOM "lobby"

static const unsigned char *key(void)
{
    return (const unsigned char *)KEY;
}

/* A token for alg signed with k (NULL for none) carrying the claims in the JSON object
 * claims; malloc'd. */
static char *mint(jwt_alg_t alg, const char *k, const char *claims)
{
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    if (claims)
        assert_int_equal(jwt_add_grants_json(j, claims), 0);
    assert_int_equal(jwt_set_alg(j, alg, (const unsigned char *)k, k ? (int)strlen(k) : 0), 0);
    char *t = jwt_encode_str(j);
    jwt_free(j);
    assert_non_null(t);
    return t;
}

/* claims as a JSON object text, formatted. */
static char *claims(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *claims(const char *fmt, ...)
{
    static char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

static void b64url(const unsigned char *in, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    int w = 0;
    for (int r = 0; r < len; r++) {
        if (out[r] == '=')
            break;
        out[w++] = out[r] == '+' ? '-' : out[r] == '/' ? '_' : out[r];
    }
    out[w] = '\0';
}

/* A token with exactly this header and payload text, HMAC-SHA256-signed with k: for headers
 * libjwt would never write (alg confusion) and for payloads it would normalize. */
static char *forge(const char *header, const char *payload, const char *k)
{
    static char buf[4096];
    char h[1024], p[2048], s[128];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen;
    b64url((const unsigned char *)header, strlen(header), h);
    b64url((const unsigned char *)payload, strlen(payload), p);
    snprintf(buf, sizeof buf, "%s.%s", h, p);
    HMAC(EVP_sha256(), k, (int)strlen(k), (const unsigned char *)buf, strlen(buf), mac, &maclen);
    b64url(mac, maclen, s);
    strcat(buf, ".");
    strcat(buf, s);
    return buf;
}

/* Verifies token for ROOM at NOW; returns the result and checks the out-parameters agree. */
static int verify(const char *token, char **sub)
{
    char why[128] = "";
    char *dummy = (char *)"untouched";
    char **out = sub ? sub : &dummy;
    int rc = sb_auth_verify(key(), strlen(KEY), token, ROOM, NOW, out, why, sizeof why);
    if (rc != 0) {
        assert_int_equal(rc, -1);
        assert_null(*out);
        assert_true(why[0] != '\0');
    } else if (!sub) {
        free(dummy);
    }
    return rc;
}

static int verify_hs256(const char *claims_json)
{
    char *t = mint(JWT_ALG_HS256, KEY, claims_json);
    int rc = verify(t, NULL);
    free(t);
    return rc;
}

static void test_good_token(void **state)
{
    (void)state;
    char *t = mint(JWT_ALG_HS256, KEY,
                   claims("{\"exp\":%lld,\"room\":\"" ROOM "\",\"sub\":\"alice\"}", NOW + 60));
    char *sub = NULL;
    assert_int_equal(verify(t, &sub), 0);
    assert_non_null(sub);
    assert_string_equal(sub, "alice");
    free(sub);
    free(t);
}

static void test_good_token_minimal(void **state)
{
    (void)state;
    /* No room, no sub, no nbf: only exp is required. */
    char *t = mint(JWT_ALG_HS256, KEY, claims("{\"exp\":%lld}", NOW + 60));
    char *sub = (char *)"stale";
    assert_int_equal(verify(t, &sub), 0);
    assert_null(sub);
    free(t);
    /* sub_out may be NULL. */
    char why[64];
    t = mint(JWT_ALG_HS256, KEY, claims("{\"exp\":%lld,\"sub\":\"bob\"}", NOW + 60));
    assert_int_equal(sb_auth_verify(key(), strlen(KEY), t, ROOM, NOW, NULL, why, sizeof why), 0);
    free(t);
}

static void test_exp_leeway(void **state)
{
    (void)state;
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld}", NOW - 30)), 0);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld}", NOW - 31)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld}", NOW - 86400)), -1);
    /* NumericDate may be fractional. */
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld.5}", NOW - 30)), 0);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld.5}", NOW - 31)), -1);
    /* Far future, even at the integer limit, is fine (no overflow). */
    assert_int_equal(verify_hs256("{\"exp\":9223372036854775807}"), 0);
}

static void test_exp_missing_or_mistyped(void **state)
{
    (void)state;
    assert_int_equal(verify_hs256(claims("{\"sub\":\"alice\",\"room\":\"" ROOM "\"}")), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":\"%lld\"}", NOW + 60)), -1);
    assert_int_equal(verify_hs256("{\"exp\":null}"), -1);
    assert_int_equal(verify_hs256("{\"exp\":true}"), -1);
}

static void test_exp_nbf_out_of_range(void **state)
{
    (void)state;
    /* A real far past any date is no date: 1e300 would never expire (issue 17). */
    assert_int_equal(verify_hs256("{\"exp\":1e300}"), -1);
    assert_int_equal(verify_hs256("{\"exp\":9.3e18}"), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"nbf\":-1e300}", NOW + 60)), -1);
    /* Reals within range still count, as before. */
    assert_int_equal(verify_hs256("{\"exp\":9.2e18}"), 0);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld.0}", NOW + 60)), 0);
}

static void test_nbf(void **state)
{
    (void)state;
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"nbf\":%lld}", NOW + 60, NOW + 30)), 0);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"nbf\":%lld}", NOW + 60, NOW + 31)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"nbf\":%lld}", NOW + 60, NOW - 600)), 0);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"nbf\":\"0\"}", NOW + 60)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"nbf\":9223372036854775807}", NOW + 60)),
                     -1);
}

static void test_room_claim(void **state)
{
    (void)state;
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"room\":\"other\"}", NOW + 60)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"room\":\"Lobby\"}", NOW + 60)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"room\":\"lobby2\"}", NOW + 60)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"room\":5}", NOW + 60)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"room\":[\"lobby\"]}", NOW + 60)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"room\":null}", NOW + 60)), -1);
}

static void test_sub_not_string(void **state)
{
    (void)state;
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"sub\":42}", NOW + 60)), -1);
    assert_int_equal(verify_hs256(claims("{\"exp\":%lld,\"sub\":{\"a\":1}}", NOW + 60)), -1);
}

static void test_other_key(void **state)
{
    (void)state;
    char *t = mint(JWT_ALG_HS256, OTHER_KEY, claims("{\"exp\":%lld}", NOW + 60));
    assert_int_equal(verify(t, NULL), -1);
    free(t);
}

static void test_tampered_payload(void **state)
{
    (void)state;
    /* Take a valid token for room "other" and graft its signature onto a payload for ROOM. */
    char *good = mint(JWT_ALG_HS256, KEY, claims("{\"exp\":%lld,\"room\":\"other\"}", NOW + 60));
    char *sig = strrchr(good, '.');
    char *forged = forge("{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                         claims("{\"exp\":%lld,\"room\":\"" ROOM "\"}", NOW + 60), KEY);
    strcpy(strrchr(forged, '.'), sig);
    assert_int_equal(verify(forged, NULL), -1);
    /* A flipped signature character. */
    char *last = good + strlen(good) - 2;
    *last = *last == 'A' ? 'B' : 'A';
    assert_int_equal(verify(good, NULL), -1);
    free(good);
}

static void test_alg_none(void **state)
{
    (void)state;
    /* What libjwt writes for alg none: no signature part at all. */
    char *t = mint(JWT_ALG_NONE, NULL, claims("{\"exp\":%lld}", NOW + 60));
    assert_int_equal(verify(t, NULL), -1);
    free(t);
    /* With a signature attached anyway (a valid HMAC of the text). */
    assert_int_equal(
        verify(forge("{\"alg\":\"none\"}", claims("{\"exp\":%lld}", NOW + 60), KEY), NULL), -1);
    assert_int_equal(
        verify(forge("{\"alg\":\"None\"}", claims("{\"exp\":%lld}", NOW + 60), KEY), NULL), -1);
}

static void test_other_hmac_algs(void **state)
{
    (void)state;
    char *t = mint(JWT_ALG_HS512, KEY, claims("{\"exp\":%lld}", NOW + 60));
    assert_int_equal(verify(t, NULL), -1);
    free(t);
    t = mint(JWT_ALG_HS384, KEY, claims("{\"exp\":%lld}", NOW + 60));
    assert_int_equal(verify(t, NULL), -1);
    free(t);
}

static void test_alg_confusion(void **state)
{
    (void)state;
    /* HMAC-SHA256 signatures under headers naming other algs, or none at all. */
    const char *headers[] = {"{\"alg\":\"RS256\"}",
                             "{\"alg\":\"ES256\"}",
                             "{\"alg\":\"hs256\"}",
                             "{\"alg\":\"HS256 \"}",
                             "{\"typ\":\"JWT\"}",
                             "{\"alg\":null}",
                             "{\"alg\":[\"HS256\"]}",
                             "{\"alg\":\"HS256\",\"alg\":\"none\"}",
                             "[\"HS256\"]"};
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++)
        assert_int_equal(verify(forge(headers[i], claims("{\"exp\":%lld}", NOW + 60), KEY), NULL),
                         -1);
    /* The same forge with a proper header passes: the cases above fail for their header. */
    assert_int_equal(
        verify(forge("{\"alg\":\"HS256\"}", claims("{\"exp\":%lld}", NOW + 60), KEY), NULL), 0);
}

static void test_payload_shapes(void **state)
{
    (void)state;
    const char *h = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    /* Duplicate claims are ambiguous: refused. */
    assert_int_equal(
        verify(forge(h, claims("{\"exp\":%lld,\"room\":\"other\",\"room\":\"" ROOM "\"}", NOW + 60),
                     KEY),
               NULL),
        -1);
    assert_int_equal(verify(forge(h, "[1,2,3]", KEY), NULL), -1);
    assert_int_equal(verify(forge(h, "not json", KEY), NULL), -1);
}

static void test_malformed_tokens(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         ".",
                         "..",
                         "a.b",
                         "a.b.c.d",
                         "!!!.???.###",
                         "eyJhbGciOiJIUzI1NiJ9..",
                         "eyJhbGciOiJIUzI1NiJ9.e30.",
                         ".e30.abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(verify(bad[i], NULL), -1);
    char why[64];
    assert_int_equal(sb_auth_verify(key(), strlen(KEY), NULL, ROOM, NOW, NULL, why, sizeof why),
                     -1);
    /* Over SB_AUTH_TOKEN_MAX, refused before any decoding. */
    char *huge = malloc(SB_AUTH_TOKEN_MAX + 2);
    memset(huge, 'a', SB_AUTH_TOKEN_MAX + 1);
    huge[SB_AUTH_TOKEN_MAX + 1] = '\0';
    huge[10] = huge[20] = '.';
    assert_int_equal(verify(huge, NULL), -1);
    free(huge);
}

static void test_no_secret(void **state)
{
    (void)state;
    char *t = mint(JWT_ALG_HS256, KEY, claims("{\"exp\":%lld}", NOW + 60));
    char why[64];
    assert_int_equal(sb_auth_verify(NULL, 0, t, ROOM, NOW, NULL, why, sizeof why), -1);
    assert_int_equal(sb_auth_verify(key(), 0, t, ROOM, NOW, NULL, why, sizeof why), -1);
    free(t);
}

/* Writes len bytes of data to a new temporary file; returns its path (static). */
static const char *temp_file(const void *data, size_t len)
{
    static char path[256];
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/test_auth_XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
    return path;
}

static int load(const char *text, size_t *len, unsigned char **out)
{
    const char *path = temp_file(text, strlen(text));
    char why[256] = "";
    int rc = sb_auth_load_secret(path, out, len, why, sizeof why);
    if (rc != 0) {
        assert_null(*out);
        assert_non_null(strstr(why, path));
    }
    unlink(path);
    return rc;
}

static void test_load_secret(void **state)
{
    (void)state;
    const char *k32 = "0123456789abcdef0123456789abcdef";
    unsigned char *out;
    size_t len;
    char text[128];

    assert_int_equal(load(k32, &len, &out), 0);
    assert_int_equal(len, 32);
    assert_memory_equal(out, k32, 32);
    free(out);

    snprintf(text, sizeof text, "%s\n", k32);
    assert_int_equal(load(text, &len, &out), 0);
    assert_int_equal(len, 32);
    assert_memory_equal(out, k32, 32);
    free(out);

    snprintf(text, sizeof text, "%s\r\n", k32);
    assert_int_equal(load(text, &len, &out), 0);
    assert_int_equal(len, 32);
    free(out);

    /* Only one newline is stripped. */
    snprintf(text, sizeof text, "%s\n\n", k32);
    assert_int_equal(load(text, &len, &out), 0);
    assert_int_equal(len, 33);
    assert_int_equal(out[32], '\n');
    free(out);
}

static void test_load_secret_refusals(void **state)
{
    (void)state;
    unsigned char *out = (unsigned char *)"stale";
    size_t len;
    char why[256];
    /* 31 bytes, with or without the newline that does not count. */
    assert_int_equal(load("0123456789abcdef0123456789abcde", &len, &out), -1);
    assert_int_equal(load("0123456789abcdef0123456789abcde\n", &len, &out), -1);
    assert_int_equal(load("", &len, &out), -1);
    assert_int_equal(sb_auth_load_secret("/nonexistent/secret", &out, &len, why, sizeof why), -1);
    assert_null(out);
    assert_non_null(strstr(why, "/nonexistent/secret"));
    /* A directory opens but does not read. */
    assert_int_equal(sb_auth_load_secret("/", &out, &len, why, sizeof why), -1);
    assert_null(out);
    /* Over 64 KiB. */
    char *big = malloc(70000);
    memset(big, 'k', 69999);
    big[69999] = '\0';
    assert_int_equal(load(big, &len, &out), -1);
    free(big);
}

static void test_read_secret_min_len(void **state)
{
    (void)state;
    const char *path = temp_file("x\n", 2);
    unsigned char *out;
    size_t len;
    char why[256];
    assert_int_equal(sb_auth_read_secret(path, 1, &out, &len, why, sizeof why), 0);
    assert_int_equal(len, 1);
    assert_int_equal(out[0], 'x');
    free(out);
    assert_int_equal(sb_auth_read_secret(path, 2, &out, &len, why, sizeof why), -1);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_token),
        cmocka_unit_test(test_good_token_minimal),
        cmocka_unit_test(test_exp_leeway),
        cmocka_unit_test(test_exp_missing_or_mistyped),
        cmocka_unit_test(test_exp_nbf_out_of_range),
        cmocka_unit_test(test_nbf),
        cmocka_unit_test(test_room_claim),
        cmocka_unit_test(test_sub_not_string),
        cmocka_unit_test(test_other_key),
        cmocka_unit_test(test_tampered_payload),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_other_hmac_algs),
        cmocka_unit_test(test_alg_confusion),
        cmocka_unit_test(test_payload_shapes),
        cmocka_unit_test(test_malformed_tokens),
        cmocka_unit_test(test_no_secret),
        cmocka_unit_test(test_load_secret),
        cmocka_unit_test(test_load_secret_refusals),
        cmocka_unit_test(test_read_secret_min_len),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
