/* Unit tests for common/redis_url.c: every accepted form with what it parses to, and every
 * refusal with a reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "redis_url.h"

/* Parses url, which must succeed. */
static sb_redis_url_t parse_ok(const char *url)
{
    sb_redis_url_t u;
    char err[128] = "";
    if (sb_redis_url_parse(url, &u, err, sizeof err) != 0)
        fail_msg("expected %s to parse, got: %s", url, err);
    return u;
}

/* Parses url, which must fail with a reason containing reason_part; u is left empty. */
static void parse_bad(const char *url, const char *reason_part)
{
    sb_redis_url_t u;
    char err[128] = "";
    if (sb_redis_url_parse(url, &u, err, sizeof err) == 0) {
        sb_redis_url_free(&u);
        fail_msg("expected %s to be refused", url);
    }
    if (!strstr(err, reason_part))
        fail_msg("%s: reason '%s' does not mention '%s'", url, err, reason_part);
    assert_null(u.host);
    assert_null(u.path);
    assert_null(u.user);
    assert_null(u.pass);
    sb_redis_url_free(&u); /* safe after a failure */
}

static void test_host_default_port(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("redis://localhost");
    assert_string_equal(u.host, "localhost");
    assert_int_equal(u.port, 6379);
    assert_null(u.path);
    assert_null(u.user);
    assert_null(u.pass);
    assert_int_equal(u.db, 0);
    sb_redis_url_free(&u);
    assert_null(u.host);
}

static void test_host_port(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("redis://127.0.0.1:6380");
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6380);
    sb_redis_url_free(&u);
    u = parse_ok("redis://redis-1.internal_net.example:1");
    assert_string_equal(u.host, "redis-1.internal_net.example");
    assert_int_equal(u.port, 1);
    sb_redis_url_free(&u);
    u = parse_ok("redis://h:65535");
    assert_int_equal(u.port, 65535);
    sb_redis_url_free(&u);
}

static void test_user_pass(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("redis://alice:s3cret@cache:6379");
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.pass, "s3cret");
    assert_string_equal(u.host, "cache");
    sb_redis_url_free(&u);
}

static void test_password_only(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("redis://:s3cret@cache");
    assert_null(u.user);
    assert_string_equal(u.pass, "s3cret");
    assert_string_equal(u.host, "cache");
    sb_redis_url_free(&u);
    /* redis-cli's reading of a bare user info: the password. */
    u = parse_ok("redis://s3cret@cache");
    assert_null(u.user);
    assert_string_equal(u.pass, "s3cret");
    sb_redis_url_free(&u);
}

static void test_db(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("redis://h:1234/15");
    assert_int_equal(u.port, 1234);
    assert_int_equal(u.db, 15);
    sb_redis_url_free(&u);
    u = parse_ok("redis://h/3");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 3);
    sb_redis_url_free(&u);
    u = parse_ok("redis://h:1/");
    assert_int_equal(u.db, 0);
    sb_redis_url_free(&u);
}

static void test_ipv6(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("redis://[::1]:6390/2");
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6390);
    assert_int_equal(u.db, 2);
    sb_redis_url_free(&u);
    u = parse_ok("redis://u:p@[fe80::1:2]");
    assert_string_equal(u.host, "fe80::1:2");
    assert_int_equal(u.port, 6379);
    assert_string_equal(u.user, "u");
    sb_redis_url_free(&u);
}

static void test_unix(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("unix:///run/redis/redis.sock");
    assert_string_equal(u.path, "/run/redis/redis.sock");
    assert_null(u.host);
    sb_redis_url_free(&u);
}

static void test_percent_escapes(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("redis://us%40er:p%3Aa%2Fs%25s%40@h:1");
    assert_string_equal(u.user, "us@er");
    assert_string_equal(u.pass, "p:a/s%s@");
    assert_string_equal(u.host, "h");
    sb_redis_url_free(&u);
    u = parse_ok("redis://:%c3%A9@h");
    assert_string_equal(u.pass, "\xc3\xa9");
    sb_redis_url_free(&u);
    /* An escape as the very last characters of the password. */
    u = parse_ok("redis://:ab%41@h");
    assert_string_equal(u.pass, "abA");
    sb_redis_url_free(&u);
}

static void test_bad_scheme(void **state)
{
    (void)state;
    parse_bad("rediss://h:6379", "TLS");
    parse_bad("h:6379", "expected redis://");
    parse_bad("localhost", "expected redis://");
    parse_bad("", "expected redis://");
    parse_bad("http://h:6379", "expected redis://");
    parse_bad("redis:/h", "expected redis://");
    parse_bad("REDIS://h", "expected redis://");
}

static void test_bad_host(void **state)
{
    (void)state;
    parse_bad("redis://", "missing host");
    parse_bad("redis://:6379", "missing host");
    parse_bad("redis://u:p@:6379", "missing host");
    parse_bad("redis:///0", "missing host");
    parse_bad("redis://[]:6379", "missing host");
    parse_bad("redis://[::1", "unterminated");
    parse_bad("redis://[::1]6379", ":port");
    parse_bad("redis://h st:1", "bad character");
    parse_bad("redis://h?x=1", "bad character");
}

static void test_bad_port(void **state)
{
    (void)state;
    parse_bad("redis://h:0", "port");
    parse_bad("redis://h:65536", "port");
    parse_bad("redis://h:99999999999999999999", "port");
    parse_bad("redis://h:abc", "port");
    parse_bad("redis://h:-1", "port");
    parse_bad("redis://h:12ab", "port");
    parse_bad("redis://h:", "empty port");
    parse_bad("redis://[::1]:", "empty port");
    parse_bad("redis://h:1:2", "port");
}

static void test_bad_db(void **state)
{
    (void)state;
    parse_bad("redis://h:1/x", "database");
    parse_bad("redis://h:1/-1", "database");
    parse_bad("redis://h:1/1/2", "database");
    parse_bad("redis://h:1/99999999999", "database");
}

static void test_bad_escapes(void **state)
{
    (void)state;
    parse_bad("redis://u:p%zz@h", "percent-escape in password");
    parse_bad("redis://u:p%4@h", "percent-escape in password");
    parse_bad("redis://u:p%@h", "percent-escape in password");
    parse_bad("redis://u:p%00@h", "percent-escape in password"); /* NUL */
    parse_bad("redis://u%g1:p@h", "percent-escape in user");
    parse_bad("redis://p%2@h", "percent-escape in password");
}

static void test_bad_unix(void **state)
{
    (void)state;
    parse_bad("unix://run/redis.sock", "absolute");
    parse_bad("unix://", "absolute");
    parse_bad("unix:///", "absolute");
    char url[200] = "unix:///";
    memset(url + 8, 'a', 120);
    url[128] = '\0';
    parse_bad(url, "too long");
}

static void test_cluster_seeds(void **state)
{
    (void)state;
    sb_redis_url_t u = parse_ok("redis-cluster://127.0.0.1:7000,[::1]:7001,redis-3.internal");
    assert_int_equal(u.cluster, 1);
    assert_int_equal(u.nseeds, 3);
    assert_string_equal(u.seeds[0].host, "127.0.0.1");
    assert_int_equal(u.seeds[0].port, 7000);
    assert_string_equal(u.seeds[1].host, "::1");
    assert_int_equal(u.seeds[1].port, 7001);
    assert_string_equal(u.seeds[2].host, "redis-3.internal");
    assert_int_equal(u.seeds[2].port, 6379);
    /* host/port name the first seed, for logs and for code that wants one address. */
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 7000);
    assert_null(u.pass);
    assert_int_equal(u.db, 0);
    sb_redis_url_free(&u);
    assert_null(u.seeds);
    assert_int_equal(u.nseeds, 0);

    u = parse_ok("redis-cluster://sb%40app:p%2Cw@h1:1");
    assert_int_equal(u.nseeds, 1);
    assert_string_equal(u.user, "sb@app");
    assert_string_equal(u.pass, "p,w"); /* an escaped ',' in the password is no separator */
    assert_string_equal(u.seeds[0].host, "h1");
    sb_redis_url_free(&u);

    u = parse_ok("redis-cluster://secret@h1:1,h2:2/0");
    assert_null(u.user);
    assert_string_equal(u.pass, "secret");
    assert_int_equal(u.nseeds, 2);
    sb_redis_url_free(&u);

    /* Single-instance URLs are not clusters. */
    u = parse_ok("redis://h:1");
    assert_int_equal(u.cluster, 0);
    assert_int_equal(u.nseeds, 0);
    sb_redis_url_free(&u);
}

static void test_bad_cluster(void **state)
{
    (void)state;
    parse_bad("redis-cluster://", "seed 1: missing host");
    parse_bad("redis-cluster://h:1,", "seed 2: missing host");
    parse_bad("redis-cluster://h:1,,h:2", "seed 2: missing host");
    parse_bad("redis-cluster://h:1,h:0", "seed 2: port");
    parse_bad("redis-cluster://h:1,[::1:2", "seed 2: unterminated");
    parse_bad("redis-cluster://h:1,h!:2", "seed 2: bad character");
    parse_bad("redis-cluster://h:1/3", "only database 0");
    parse_bad("redis-clusters://h:1", "redis-cluster://");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_default_port),
        cmocka_unit_test(test_host_port),
        cmocka_unit_test(test_user_pass),
        cmocka_unit_test(test_password_only),
        cmocka_unit_test(test_db),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_unix),
        cmocka_unit_test(test_percent_escapes),
        cmocka_unit_test(test_bad_scheme),
        cmocka_unit_test(test_bad_host),
        cmocka_unit_test(test_bad_port),
        cmocka_unit_test(test_bad_db),
        cmocka_unit_test(test_bad_escapes),
        cmocka_unit_test(test_bad_unix),
        cmocka_unit_test(test_cluster_seeds),
        cmocka_unit_test(test_bad_cluster),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
