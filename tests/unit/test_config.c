/* Unit tests for common/config.c, driven by a small table with one option of every type:
 * precedence (defaults < environment < flags), both flag spellings, list replacement, every
 * kind of refusal with the option named, and the --help text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

typedef struct {
    int64_t count;
    char *label, *id, *listen, *redis, *level, *file;
    sb_strlist_t origins, urls;
} test_cfg_t;

#define OFF(f) offsetof(test_cfg_t, f)

static const sb_option_t table[] = {
    {"count", SB_OPT_INT, "10", 1, 100, OFF(count), "how many"},
    {"label", SB_OPT_STRING, "hello", 0, 0, OFF(label), "a label"},
    {"id", SB_OPT_NAME, "node-1", 0, 0, OFF(id), "an id"},
    {"listen", SB_OPT_HOSTPORT, "0.0.0.0:8080", 0, 0, OFF(listen), "where to listen"},
    {"redis", SB_OPT_REDIS_URL, "redis://127.0.0.1:6379", 0, 0, OFF(redis), "redis URL"},
    {"log-level", SB_OPT_LEVEL, "info", 0, 0, OFF(level), "log level"},
    {"secret-file", SB_OPT_FILE, NULL, 0, 0, OFF(file), "a secret"},
    {"allowed-origin", SB_OPT_ORIGINS, NULL, 0, 0, OFF(origins), "origin, repeatable"},
    {"turn-url", SB_OPT_URLS, NULL, 0, 0, OFF(urls), "TURN URL, repeatable"},
    {0},
};

#define PREFIX "T_"

static char *const no_env[] = {NULL};

static char err[512];

/* Parses argv (NULL-terminated, argv[0] included) with envp into a fresh *cfg. */
static int parse(test_cfg_t *cfg, char *const *envp, char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    memset(cfg, 0, sizeof *cfg);
    err[0] = '\0';
    return sb_config_parse(table, PREFIX, argc, argv, envp, cfg, err, sizeof err);
}

/* Expects the arguments (after argv[0]) to be refused with an error mentioning every one of
 * the NULL-terminated parts. */
static void expect_error(char *const *envp, char **argv, ...)
{
    test_cfg_t cfg;
    int rc = parse(&cfg, envp, argv);
    sb_config_free(table, &cfg);
    if (rc != SB_CONFIG_ERROR)
        fail_msg("expected an error for %s %s, got %d", argv[1] ? argv[1] : "",
                 argv[1] && argv[2] ? argv[2] : "", rc);
    assert_null(strchr(err, '\n')); /* one line */
    va_list ap;
    va_start(ap, argv);
    for (const char *part; (part = va_arg(ap, const char *));)
        if (!strstr(err, part))
            fail_msg("error '%s' does not mention '%s'", err, part);
    va_end(ap);
}

/* A NULL-terminated vector of the arguments; argv-style vectors hold char *, and string
 * literals are const here (-Wwrite-strings), hence the copies of the pointers. */
static char **vec(char **buf, size_t cap, const char *first, va_list ap)
{
    size_t n = 0;
    for (const char *s = first; s && n + 1 < cap; s = va_arg(ap, const char *))
        buf[n++] = (char *)s;
    buf[n] = NULL;
    return buf;
}

static char **make_argv(const char *first, ...)
{
    static char *buf[32];
    buf[0] = (char *)"prog";
    va_list ap;
    va_start(ap, first);
    vec(buf + 1, 31, first, ap);
    va_end(ap);
    return buf;
}

static char *const *make_env(const char *first, ...)
{
    static char *buf[32];
    va_list ap;
    va_start(ap, first);
    vec(buf, 32, first, ap);
    va_end(ap);
    return buf;
}

#define ARGV(...) make_argv(__VA_ARGS__, (const char *)NULL)
#define ENV(...) make_env(__VA_ARGS__, (const char *)NULL)
#define NO_ARGS make_argv((const char *)NULL)

static void test_defaults(void **state)
{
    (void)state;
    test_cfg_t c;
    assert_int_equal(parse(&c, no_env, NO_ARGS), SB_CONFIG_OK);
    assert_int_equal(c.count, 10);
    assert_string_equal(c.label, "hello");
    assert_string_equal(c.id, "node-1");
    assert_string_equal(c.listen, "0.0.0.0:8080");
    assert_string_equal(c.redis, "redis://127.0.0.1:6379");
    assert_string_equal(c.level, "info");
    assert_null(c.file);
    assert_int_equal(c.origins.n, 0);
    assert_int_equal(c.urls.n, 0);
    sb_config_free(table, &c);
    assert_null(c.label);
    /* A NULL environment is no environment. */
    assert_int_equal(parse(&c, NULL, NO_ARGS), SB_CONFIG_OK);
    assert_int_equal(c.count, 10);
    sb_config_free(table, &c);
}

static void test_env_over_defaults(void **state)
{
    (void)state;
    test_cfg_t c;
    char *const *env = ENV("T_COUNT=20", "T_LABEL=from env", "T_LOG_LEVEL=debug", "OTHER=1",
                           "T_COUNTX=5", "T_ID", "T_LISTEN=[::1]:9000");
    assert_int_equal(parse(&c, env, NO_ARGS), SB_CONFIG_OK);
    assert_int_equal(c.count, 20);
    assert_string_equal(c.label, "from env");
    assert_string_equal(c.level, "debug");
    assert_string_equal(c.id, "node-1"); /* "T_ID" without '=' is not a value */
    assert_string_equal(c.listen, "[::1]:9000");
    sb_config_free(table, &c);
}

static void test_flags_over_env(void **state)
{
    (void)state;
    test_cfg_t c;
    char *const *env = ENV("T_COUNT=20", "T_LABEL=from env");
    assert_int_equal(parse(&c, env, ARGV("--count", "30", "--label=from flag")), SB_CONFIG_OK);
    assert_int_equal(c.count, 30);
    assert_string_equal(c.label, "from flag");
    sb_config_free(table, &c);
    /* A bad environment value is an error even when a flag would replace it. */
    expect_error(ENV("T_COUNT=x"), ARGV("--count", "5"), "T_COUNT", "--count", NULL);
}

static void test_flag_spellings(void **state)
{
    (void)state;
    test_cfg_t c;
    assert_int_equal(parse(&c, no_env,
                           ARGV("--count=7", "--id", "n.2:x-y_z", "--listen=127.0.0.1:1", "--redis",
                                "unix:///tmp/r.sock", "--label=a=b", "--count", "8")),
                     SB_CONFIG_OK);
    assert_int_equal(c.count, 8); /* last one wins */
    assert_string_equal(c.id, "n.2:x-y_z");
    assert_string_equal(c.listen, "127.0.0.1:1");
    assert_string_equal(c.redis, "unix:///tmp/r.sock");
    assert_string_equal(c.label, "a=b"); /* only the first '=' splits */
    sb_config_free(table, &c);
    /* A value may start with dashes when it is separate. */
    assert_int_equal(parse(&c, no_env, ARGV("--label", "--not-a-flag")), SB_CONFIG_OK);
    assert_string_equal(c.label, "--not-a-flag");
    sb_config_free(table, &c);
}

static void test_int_bounds(void **state)
{
    (void)state;
    test_cfg_t c;
    assert_int_equal(parse(&c, no_env, ARGV("--count", "1")), SB_CONFIG_OK);
    assert_int_equal(c.count, 1);
    sb_config_free(table, &c);
    assert_int_equal(parse(&c, no_env, ARGV("--count", "100")), SB_CONFIG_OK);
    assert_int_equal(c.count, 100);
    sb_config_free(table, &c);
    expect_error(no_env, ARGV("--count", "0"), "--count", "out of range", NULL);
    expect_error(no_env, ARGV("--count=101"), "--count", "out of range", NULL);
    expect_error(no_env, ARGV("--count=-5"), "--count", "out of range", NULL);
    expect_error(ENV("T_COUNT=1000"), ARGV("--label", "x"), "T_COUNT", "--count", "out of range",
                 NULL);
}

static void test_int_not_integer(void **state)
{
    (void)state;
    const char *bad[] = {"abc", "1.5", "", " 5", "5 ", "0x10", "1e2", "99999999999999999999",
                         "--5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(no_env, ARGV("--count", bad[i]), "--count", "not an integer", NULL);
}

static void test_string_empty(void **state)
{
    (void)state;
    expect_error(no_env, ARGV("--label="), "--label", "empty", NULL);
    expect_error(ENV("T_LABEL="), ARGV("--count", "2"), "T_LABEL", "--label", "empty", NULL);
}

static void test_bad_name(void **state)
{
    (void)state;
    char long_name[70];
    memset(long_name, 'a', 65);
    long_name[65] = '\0';
    const char *bad[] = {"a b", "", "n/1", "caf\xc3\xa9", "x@y", long_name};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(no_env, ARGV("--id", bad[i]), "--id", "[A-Za-z0-9._:-]", NULL);
    long_name[64] = '\0';
    test_cfg_t c;
    assert_int_equal(parse(&c, no_env, ARGV("--id", long_name)), SB_CONFIG_OK);
    sb_config_free(table, &c);
}

static void test_hostport(void **state)
{
    (void)state;
    const char *bad[] = {"nocolon", "h:0",    "h:65536", "::1:80", "[::1]80", ":80", "h:",
                         "h:8o",    "[::1]:", "[]:80",   "h: 80",  "h:+80",   "h:-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(no_env, ARGV("--listen", bad[i]), "--listen", "HOST:PORT", NULL);
    char host[64];
    int port = 0;
    assert_int_equal(sb_config_split_hostport("[2001:db8::1]:443", host, sizeof host, &port), 0);
    assert_string_equal(host, "2001:db8::1");
    assert_int_equal(port, 443);
    assert_int_equal(sb_config_split_hostport("example.org:65535", host, sizeof host, &port), 0);
    assert_string_equal(host, "example.org");
    assert_int_equal(port, 65535);
    /* A host that does not fit the buffer is refused, not truncated. */
    assert_int_equal(sb_config_split_hostport("abcdefgh:1", host, 8, &port), -1);
}

static void test_bad_redis_url(void **state)
{
    (void)state;
    expect_error(no_env, ARGV("--redis", "rediss://h:6379"), "--redis", "rediss://h:6379", "TLS",
                 NULL);
    expect_error(no_env, ARGV("--redis=redis://h:0"), "--redis", "port", NULL);
    expect_error(ENV("T_REDIS=localhost:6379"), ARGV("--count", "2"), "T_REDIS", "--redis", NULL);
    expect_error(no_env, ARGV("--redis", "redis-cluster://h:1,h:0"), "--redis", "seed 2", "port",
                 NULL);
    expect_error(no_env, ARGV("--redis", "redis-cluster://h:1/2"), "--redis", "database 0", NULL);
}

static void test_cluster_redis_url(void **state)
{
    (void)state;
    test_cfg_t c;
    assert_int_equal(
        parse(&c, no_env, ARGV("--redis", "redis-cluster://u:p@127.0.0.1:7000,[::1]:7001")),
        SB_CONFIG_OK);
    assert_string_equal(c.redis, "redis-cluster://u:p@127.0.0.1:7000,[::1]:7001");
    sb_config_free(table, &c);
}

static void test_level(void **state)
{
    (void)state;
    expect_error(no_env, ARGV("--log-level", "verbose"), "--log-level", "error, warn, info, debug",
                 NULL);
    expect_error(no_env, ARGV("--log-level", "INFO"), "--log-level", NULL);
}

static void test_file(void **state)
{
    (void)state;
    const char *dir = getenv("TMPDIR");
    char path[256];
    snprintf(path, sizeof path, "%s/test_config_XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    test_cfg_t c;
    assert_int_equal(parse(&c, no_env, ARGV("--secret-file", path)), SB_CONFIG_OK);
    assert_string_equal(c.file, path);
    sb_config_free(table, &c);
    unlink(path);
    expect_error(no_env, ARGV("--secret-file", path), "--secret-file", "cannot read", path, NULL);
    expect_error(no_env, ARGV("--secret-file", "/nonexistent/x"), "--secret-file", "/nonexistent/x",
                 NULL);
    expect_error(no_env, ARGV("--secret-file="), "--secret-file", NULL);
    /* A directory passes access(R_OK) but is no file to read a secret from. */
    expect_error(no_env, ARGV("--secret-file", "/"), "--secret-file", "directory", NULL);
}

static void test_lists(void **state)
{
    (void)state;
    test_cfg_t c;
    /* Environment: comma (and blank) separated. */
    char *const *env = ENV("T_ALLOWED_ORIGIN=http://a.example, https://b.example:8443",
                           "T_TURN_URL=turn:t.example:3478?transport=udp");
    assert_int_equal(parse(&c, env, NO_ARGS), SB_CONFIG_OK);
    assert_int_equal(c.origins.n, 2);
    assert_string_equal(c.origins.v[0], "http://a.example");
    assert_string_equal(c.origins.v[1], "https://b.example:8443");
    assert_int_equal(c.urls.n, 1);
    sb_config_free(table, &c);
    assert_null(c.origins.v);
    assert_int_equal(c.origins.n, 0);

    /* Flags replace the environment's list (not append to it), and repeat. */
    assert_int_equal(parse(&c, env,
                           ARGV("--allowed-origin", "https://x.example", "--count", "3",
                                "--allowed-origin=http://[::1]:8080")),
                     SB_CONFIG_OK);
    assert_int_equal(c.origins.n, 2);
    assert_string_equal(c.origins.v[0], "https://x.example");
    assert_string_equal(c.origins.v[1], "http://[::1]:8080");
    assert_int_equal(c.urls.n, 1); /* untouched by flags: the environment's stays */
    assert_string_equal(c.urls.v[0], "turn:t.example:3478?transport=udp");
    sb_config_free(table, &c);
}

static void test_bad_list_values(void **state)
{
    (void)state;
    const char *bad[] = {"a.example",
                         "ftp://a.example",
                         "https://",
                         "https://a.example/",
                         "https://a.example/path",
                         "https://u@a.example",
                         "*"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(no_env, ARGV("--allowed-origin", bad[i]), "--allowed-origin",
                     "scheme://host[:port]", NULL);
    expect_error(ENV("T_ALLOWED_ORIGIN=http://ok.example,bad"), ARGV("--count", "2"),
                 "T_ALLOWED_ORIGIN", "--allowed-origin", "'bad'", NULL);
    expect_error(no_env, ARGV("--turn-url", "no-scheme"), "--turn-url", "not a URL", NULL);
}

static void test_unknown_and_malformed(void **state)
{
    (void)state;
    expect_error(no_env, ARGV("--bogus", "1"), "--bogus", "unknown option", NULL);
    expect_error(no_env, ARGV("--bogus=1"), "--bogus", "unknown option", NULL);
    expect_error(no_env, ARGV("--coun", "1"), "--coun", "unknown option", NULL); /* no prefixes */
    expect_error(no_env, ARGV("--", "1"), "unknown option", NULL);
    expect_error(no_env, ARGV("positional"), "positional", "unexpected argument", NULL);
    expect_error(no_env, ARGV("-c", "1"), "-c", "unexpected argument", NULL);
}

static void test_error_stays_short_line(void **state)
{
    (void)state;
    /* A huge or multi-line value is quoted shortened, so the reason still fits the line. */
    static char huge[4096];
    memset(huge, '9', sizeof huge - 1);
    expect_error(no_env, ARGV("--listen", huge), "--listen", "...' is not HOST:PORT", NULL);
    expect_error(no_env, ARGV(huge), "...: unexpected argument", NULL);
    huge[0] = huge[1] = '-';
    expect_error(no_env, ARGV(huge), "...: unknown option", NULL);
    expect_error(no_env, ARGV("--count", "1\n2"), "--count", "'1?2' is not an integer", NULL);
    expect_error(ENV("T_LABEL=x", "T_COUNT=\t"), ARGV("--id", "a"), "T_COUNT", "'?'", NULL);
}

static void test_missing_value(void **state)
{
    (void)state;
    expect_error(no_env, ARGV("--count"), "--count", "missing value", NULL);
    expect_error(no_env, ARGV("--label", "x", "--allowed-origin"), "--allowed-origin",
                 "missing value", NULL);
}

static void test_help_and_version(void **state)
{
    (void)state;
    test_cfg_t c;
    assert_int_equal(parse(&c, no_env, ARGV("--count", "5", "--help")), SB_CONFIG_HELP);
    sb_config_free(table, &c);
    assert_int_equal(parse(&c, no_env, ARGV("-h")), SB_CONFIG_HELP);
    sb_config_free(table, &c);
    assert_int_equal(parse(&c, no_env, ARGV("--version")), SB_CONFIG_VERSION);
    sb_config_free(table, &c);

    static char help[8192];
    sb_config_help(table, PREFIX, "usage: prog [options]", help, sizeof help);
    assert_non_null(strstr(help, "usage: prog [options]"));
    for (const sb_option_t *o = table; o->name; o++) {
        char flag[80], env[80], def[160];
        snprintf(flag, sizeof flag, "--%s ", o->name);
        sb_config_env_name(PREFIX, o->name, env, sizeof env);
        if (!strstr(help, flag))
            fail_msg("--help does not list %s", flag);
        if (!strstr(help, env))
            fail_msg("--help does not name %s", env);
        if (!strstr(help, o->help))
            fail_msg("--help lacks the help of %s", o->name);
        if (o->def) {
            snprintf(def, sizeof def, "(default: %s)", o->def);
            if (!strstr(help, def))
                fail_msg("--help lacks %s for %s", def, o->name);
        }
    }
    /* Truncation is safe. */
    char tiny[40];
    sb_config_help(table, PREFIX, "usage: prog [options]", tiny, sizeof tiny);
    assert_true(strlen(tiny) < sizeof tiny);
}

static void test_env_name(void **state)
{
    (void)state;
    char buf[64];
    sb_config_env_name("SWITCHBOARD_", "presence-ttl-ms", buf, sizeof buf);
    assert_string_equal(buf, "SWITCHBOARD_PRESENCE_TTL_MS");
    sb_config_env_name("SWITCHBOARD_ADMIN_", "listen", buf, sizeof buf);
    assert_string_equal(buf, "SWITCHBOARD_ADMIN_LISTEN");
    sb_config_env_name("SWITCHBOARD_", "presence-ttl-ms", buf, 16);
    assert_string_equal(buf, "SWITCHBOARD_PRE");
}

static void test_valid_name(void **state)
{
    (void)state;
    assert_true(sb_config_valid_name("sb"));
    assert_true(sb_config_valid_name("host-1.example:8080"));
    assert_false(sb_config_valid_name(""));
    assert_false(sb_config_valid_name("a{b}"));
    assert_false(sb_config_valid_name("a*"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_env_over_defaults),
        cmocka_unit_test(test_flags_over_env),
        cmocka_unit_test(test_flag_spellings),
        cmocka_unit_test(test_int_bounds),
        cmocka_unit_test(test_int_not_integer),
        cmocka_unit_test(test_string_empty),
        cmocka_unit_test(test_bad_name),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_bad_redis_url),
        cmocka_unit_test(test_cluster_redis_url),
        cmocka_unit_test(test_level),
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_bad_list_values),
        cmocka_unit_test(test_unknown_and_malformed),
        cmocka_unit_test(test_error_stays_short_line),
        cmocka_unit_test(test_missing_value),
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_env_name),
        cmocka_unit_test(test_valid_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
