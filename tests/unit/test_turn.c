/* Unit tests for node/turn.c: the username format, a known-answer credential, the rounding of
 * the ttl, and the shape of ice_servers with and without TURN configured. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "turn.h"

#define SECRET "turn-shared-secret"
#define SID "AbCdEfGhIjKlMnOpQrStUv"
#define NOW 1700000000
/* Computed independently when this test was written:
 *   printf '%s' '1700086400:AbCdEfGhIjKlMnOpQrStUv' \
 *     | openssl dgst -sha1 -hmac 'turn-shared-secret' -binary | base64 */
#define EXPECTED_CRED "SV9cLogMxs6+ZkwOLytKYtnC3qo="

static const unsigned char *secret(void)
{
    return (const unsigned char *)SECRET;
}

static void test_known_answer(void **state)
{
    (void)state;
    char user[SB_TURN_USERNAME_MAX + 1], cred[SB_TURN_CREDENTIAL_LEN + 1];
    assert_int_equal(sb_turn_credential(secret(), strlen(SECRET), SID, NOW, 86400000, user,
                                        sizeof user, cred, sizeof cred),
                     0);
    assert_string_equal(user, "1700086400:" SID);
    assert_string_equal(cred, EXPECTED_CRED);
}

static void test_ttl_rounded_down(void **state)
{
    (void)state;
    char user[SB_TURN_USERNAME_MAX + 1], cred[SB_TURN_CREDENTIAL_LEN + 1];
    assert_int_equal(sb_turn_credential(secret(), strlen(SECRET), SID, NOW, 86400999, user,
                                        sizeof user, cred, sizeof cred),
                     0);
    assert_string_equal(user, "1700086400:" SID);
    assert_string_equal(cred, EXPECTED_CRED);
    assert_int_equal(sb_turn_credential(secret(), strlen(SECRET), SID, NOW, 1999, user, sizeof user,
                                        cred, sizeof cred),
                     0);
    assert_string_equal(user, "1700000001:" SID);
}

static void test_other_secret_other_credential(void **state)
{
    (void)state;
    char user[SB_TURN_USERNAME_MAX + 1], cred[SB_TURN_CREDENTIAL_LEN + 1];
    const unsigned char other[] = "turn-shared-secreT";
    assert_int_equal(sb_turn_credential(other, strlen((const char *)other), SID, NOW, 86400000,
                                        user, sizeof user, cred, sizeof cred),
                     0);
    assert_string_not_equal(cred, EXPECTED_CRED);
    assert_int_equal(strlen(cred), SB_TURN_CREDENTIAL_LEN);
}

static void test_buffers_too_small(void **state)
{
    (void)state;
    char user[16], cred[SB_TURN_CREDENTIAL_LEN + 1], small[SB_TURN_CREDENTIAL_LEN];
    assert_int_equal(sb_turn_credential(secret(), strlen(SECRET), SID, NOW, 86400000, user,
                                        sizeof user, cred, sizeof cred),
                     -1);
    char big_user[SB_TURN_USERNAME_MAX + 1];
    assert_int_equal(sb_turn_credential(secret(), strlen(SECRET), SID, NOW, 86400000, big_user,
                                        sizeof big_user, small, sizeof small),
                     -1);
    assert_int_equal(sb_turn_credential(NULL, 0, SID, NOW, 86400000, big_user, sizeof big_user,
                                        cred, sizeof cred),
                     -1);
}

static void test_ice_servers_shape(void **state)
{
    (void)state;
    char u0[] = "turn:turn.example.org:3478?transport=udp";
    char u1[] = "turns:turn.example.org:5349?transport=tcp";
    char *urls[] = {u0, u1};
    json_t *v = sb_turn_ice_servers(secret(), strlen(SECRET), urls, 2, SID, NOW, 86400000);
    assert_non_null(v);
    assert_true(json_is_array(v));
    assert_int_equal(json_array_size(v), 1);
    json_t *s = json_array_get(v, 0);
    assert_true(json_is_object(s));
    assert_int_equal(json_object_size(s), 3);
    json_t *u = json_object_get(s, "urls");
    assert_true(json_is_array(u));
    assert_int_equal(json_array_size(u), 2);
    assert_string_equal(json_string_value(json_array_get(u, 0)), urls[0]);
    assert_string_equal(json_string_value(json_array_get(u, 1)), urls[1]);
    assert_string_equal(json_string_value(json_object_get(s, "username")), "1700086400:" SID);
    assert_string_equal(json_string_value(json_object_get(s, "credential")), EXPECTED_CRED);
    json_decref(v);
}

static void test_ice_servers_empty_without_turn(void **state)
{
    (void)state;
    char u0[] = "turn:turn.example.org:3478";
    char *urls[] = {u0};
    json_t *cases[] = {
        sb_turn_ice_servers(NULL, 0, urls, 1, SID, NOW, 86400000),
        sb_turn_ice_servers(secret(), 0, urls, 1, SID, NOW, 86400000),
        sb_turn_ice_servers(secret(), strlen(SECRET), NULL, 0, SID, NOW, 86400000),
        sb_turn_ice_servers(secret(), strlen(SECRET), urls, 0, SID, NOW, 86400000),
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_non_null(cases[i]);
        assert_true(json_is_array(cases[i]));
        assert_int_equal(json_array_size(cases[i]), 0);
        json_decref(cases[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_ttl_rounded_down),
        cmocka_unit_test(test_other_secret_other_credential),
        cmocka_unit_test(test_buffers_too_small),
        cmocka_unit_test(test_ice_servers_shape),
        cmocka_unit_test(test_ice_servers_empty_without_turn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
