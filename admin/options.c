/* The admin's option table (docs/configuration.md) and the token: read from --token-file
 * (SWITCHBOARD_ADMIN_TOKEN_FILE), else from SWITCHBOARD_ADMIN_TOKEN. Without a usable token the
 * admin does not start. Does not check the token of a request (auth.c). */
#include "admin.h"
#include "listen.h"
#include "log.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OFF(f) offsetof(sb_admin_config_t, f)
#define DAY (86400000LL)
#define ENV_PREFIX "SWITCHBOARD_ADMIN_"
#define TOKEN_ENV "SWITCHBOARD_ADMIN_TOKEN"
#define TOKEN_MIN 16
#define TOKEN_MAX 1024

static const sb_option_t admin_options[] = {
    {"listen", SB_OPT_HOSTPORT, "127.0.0.1:9090", 0, 0, OFF(listen),
     "address to listen on (the API and dashboard; keep it private)"},
    {"redis", SB_OPT_REDIS_URL, "redis://127.0.0.1:6379", 0, 0, OFF(redis),
     "redis://[user:pass@]host:port[/db] or unix:///path"},
    {"redis-timeout-ms", SB_OPT_INT, "1000", 10, 60000, OFF(redis_timeout_ms),
     "timeout of every Redis command and connect"},
    {"prefix", SB_OPT_NAME, "sb", 0, 0, OFF(prefix), "Redis key prefix (as the nodes')"},
    {"token-file", SB_OPT_FILE, NULL, 0, 0, OFF(token_file),
     "file holding the bearer token (else " TOKEN_ENV "); 16 to 1024 printable characters"},
    {"reconcile-interval-ms", SB_OPT_INT, "5000", 100, DAY, OFF(reconcile_interval_ms),
     "time between reconcile passes (and the reconcile lease's takeover bound)"},
    {"events-max", SB_OPT_INT, "1000", 10, 1000000, OFF(events_max),
     "length of the activity log stream P:events (XADD MAXLEN ~)"},
    {"max-connections", SB_OPT_INT, "0", 0, 100000000, OFF(max_connections),
     "open connections before new ones are refused at accept; 0 = the fd limit less 112 (a "
     "reserve)"},
    {"max-connections-per-ip", SB_OPT_INT, "0", 0, 100000000, OFF(max_connections_per_ip),
     "open connections from one source address; 0 = half of --max-connections"},
    {"log-level", SB_OPT_LEVEL, "info", 0, 0, OFF(log_level), "error, warn, info or debug"},
    {0},
};

/* One line naming the option, exit status 2 (docs/configuration.md). */
static int bad(const char *line)
{
    fprintf(stderr, "switchboard-admin: %s\n", line);
    return 2;
}

static const char *getenv_in(char *const *envp, const char *name)
{
    size_t nl = strlen(name);
    const char *found = NULL;
    for (char *const *e = envp; e && *e; e++)
        if (strncmp(*e, name, nl) == 0 && (*e)[nl] == '=')
            found = *e + nl + 1; /* the last one wins, as in the config table */
    return found;
}

/* Checks a token: printable ASCII without blanks (it travels in an HTTP header), bounded. */
static const char *token_problem(const char *t, size_t len)
{
    if (len == 0)
        return "the token is empty";
    if (len < TOKEN_MIN)
        return "the token is shorter than 16 characters";
    if (len > TOKEN_MAX)
        return "the token is longer than 1024 characters";
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
            return "the token must be printable ASCII without blanks";
    return NULL;
}

static int read_token_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "--token-file: cannot open the file");
        return -1;
    }
    char buf[TOKEN_MAX + 8];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (n == sizeof buf) {
        snprintf(err, errlen, "--token-file: the token is longer than 1024 characters");
        return -1;
    }
    /* One trailing newline (echo, editors) is not part of the token. */
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    const char *why = token_problem(buf, n);
    if (why) {
        snprintf(err, errlen, "--token-file: %s", why);
        return -1;
    }
    *out = malloc(n + 1);
    if (!*out) {
        snprintf(err, errlen, "--token-file: out of memory");
        return -1;
    }
    memcpy(*out, buf, n);
    (*out)[n] = '\0';
    *len = n;
    return 0;
}

int sb_admin_options(sb_admin_config_t *cfg, char **token, size_t *token_len, int argc, char **argv,
                     char *const *envp)
{
    char err[512];
    memset(cfg, 0, sizeof *cfg);
    *token = NULL;
    *token_len = 0;
    int rc = sb_config_parse(admin_options, ENV_PREFIX, argc, argv, envp, cfg, err, sizeof err);
    if (rc == SB_CONFIG_HELP) {
        static char help[8192];
        sb_config_help(admin_options, ENV_PREFIX,
                       "Usage: switchboard-admin [--option value]...\n"
                       "Reconciles Switchboard's state in Redis and serves cluster figures, "
                       "the activity log\nand a dashboard. Needs a bearer token: --token-file "
                       "or " TOKEN_ENV ".",
                       help, sizeof help);
        fputs(help, stdout);
        return 1;
    }
    if (rc == SB_CONFIG_VERSION) {
        printf("switchboard-admin %s\n", SB_VERSION);
        return 1;
    }
    if (rc != SB_CONFIG_OK)
        return bad(err);
    if (sb_listen_limits(&cfg->max_connections, &cfg->max_connections_per_ip, "max-connections",
                         "max-connections-per-ip", err, sizeof err) != 0)
        return bad(err);
    if (cfg->token_file) {
        if (read_token_file(cfg->token_file, token, token_len, err, sizeof err) != 0)
            return bad(err);
    } else {
        const char *t = getenv_in(envp, TOKEN_ENV);
        if (!t)
            return bad("--token-file: no token: set --token-file or " TOKEN_ENV);
        size_t n = strlen(t);
        const char *why = token_problem(t, n);
        if (why) {
            snprintf(err, sizeof err, "%s (--token-file): %s", TOKEN_ENV, why);
            return bad(err);
        }
        *token = strdup(t);
        *token_len = n;
    }
    sb_log_set_level((sb_log_level_t)sb_log_parse_level(cfg->log_level));
    return 0;
}

void sb_admin_options_free(sb_admin_config_t *cfg)
{
    sb_config_free(admin_options, cfg);
}
