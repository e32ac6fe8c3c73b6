/* The option table machinery: defaults < environment < flags, one-line errors naming the
 * option, --help generated from the same table. Knows nothing about any binary's options. */
#include "config.h"
#include "redis_url.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIELD(cfg, opt, type) ((type *)((char *)(cfg) + (opt)->offset))

static int is_list(const sb_option_t *o)
{
    return o->type == SB_OPT_ORIGINS || o->type == SB_OPT_URLS;
}

void sb_config_env_name(const char *env_prefix, const char *name, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "%s", env_prefix);
    for (const char *p = name; *p && n + 1 < len; p++, n++)
        buf[n] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    if (n < len)
        buf[n] = '\0';
}

int sb_config_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("._:-", *s))
            return 0;
    return 1;
}

int sb_config_split_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon;
    const char *h = s;
    size_t hl;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        hl = (size_t)(colon - s);
        if (memchr(s, ':', hl))
            return -1; /* a bare IPv6 address needs brackets */
    }
    if (hl == 0 || hl >= hostlen)
        return -1;
    /* Digits only: strtol alone would also take " 80" and "+80". */
    long p = 0;
    const char *d = colon + 1;
    if (!*d)
        return -1;
    for (; *d; d++) {
        if (!isdigit((unsigned char)*d) || (p = p * 10 + (*d - '0')) > 65535)
            return -1;
    }
    if (p < 1)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

static int valid_origin(const char *s)
{
    const char *rest;
    if (strncmp(s, "http://", 7) == 0)
        rest = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        rest = s + 8;
    else
        return 0;
    if (!*rest)
        return 0;
    for (const char *p = rest; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr(".-:[]", *p))
            return 0; /* no path, query, user info or trailing slash */
    return 1;
}

/* text as quoted in an error line: at most SHOWN_MAX bytes, control characters as '?', so the
 * error stays one line whatever the user passed, and a long value cannot push the reason off
 * the end of the caller's buffer. */
#define SHOWN_MAX 100
static const char *shown_n(const char *text, size_t textlen, char *buf, size_t len)
{
    size_t n = 0;
    for (; n < textlen && text[n] && n < SHOWN_MAX && n + 4 < len; n++)
        buf[n] = (unsigned char)text[n] < 0x20 || text[n] == 0x7f ? '?' : text[n];
    if (n < textlen && text[n]) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

static const char *shown(const char *text, char *buf, size_t len)
{
    return shown_n(text, SIZE_MAX, buf, len);
}

/* Checks text against o's type; on success stores it (replacing or, for lists, appending). */
static int set_value(const sb_option_t *o, void *cfg, const char *text, char *why, size_t wl)
{
    char sb[SHOWN_MAX + 4];
    switch (o->type) {
    case SB_OPT_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (errno || *end || end == text || isspace((unsigned char)*text)) {
            snprintf(why, wl, "'%s' is not an integer", shown(text, sb, sizeof sb));
            return -1;
        }
        if (v < o->min || v > o->max) {
            snprintf(why, wl, "%lld is out of range [%lld, %lld]", v, (long long)o->min,
                     (long long)o->max);
            return -1;
        }
        *FIELD(cfg, o, int64_t) = v;
        return 0;
    }
    case SB_OPT_NAME:
        if (!sb_config_valid_name(text)) {
            snprintf(why, wl, "'%s' must be 1 to 64 characters of [A-Za-z0-9._:-]",
                     shown(text, sb, sizeof sb));
            return -1;
        }
        break;
    case SB_OPT_HOSTPORT: {
        char host[256];
        int port;
        if (sb_config_split_hostport(text, host, sizeof host, &port) != 0) {
            snprintf(why, wl, "'%s' is not HOST:PORT", shown(text, sb, sizeof sb));
            return -1;
        }
        break;
    }
    case SB_OPT_REDIS_URL: {
        sb_redis_url_t u;
        char e[128];
        if (sb_redis_url_parse(text, &u, e, sizeof e) != 0) {
            snprintf(why, wl, "'%s': %s", shown(text, sb, sizeof sb), e);
            return -1;
        }
        sb_redis_url_free(&u);
        break;
    }
    case SB_OPT_LEVEL:
        if (sb_log_parse_level(text) < 0) {
            snprintf(why, wl, "'%s' is not one of error, warn, info, debug",
                     shown(text, sb, sizeof sb));
            return -1;
        }
        break;
    case SB_OPT_FILE: {
        /* access() alone accepts a directory, which then fails only when read at start-up. */
        struct stat st;
        if (!*text || access(text, R_OK) != 0 || stat(text, &st) != 0) {
            const char *reason = *text ? strerror(errno) : "empty";
            snprintf(why, wl, "cannot read '%s': %s", shown(text, sb, sizeof sb), reason);
            return -1;
        }
        if (S_ISDIR(st.st_mode)) {
            snprintf(why, wl, "cannot read '%s': is a directory", shown(text, sb, sizeof sb));
            return -1;
        }
        break;
    }
    case SB_OPT_ORIGINS:
    case SB_OPT_URLS: {
        if (o->type == SB_OPT_ORIGINS && !valid_origin(text)) {
            snprintf(why, wl, "'%s' is not scheme://host[:port]", shown(text, sb, sizeof sb));
            return -1;
        }
        if (o->type == SB_OPT_URLS && !strchr(text, ':')) {
            snprintf(why, wl, "'%s' is not a URL", shown(text, sb, sizeof sb));
            return -1;
        }
        sb_strlist_t *l = FIELD(cfg, o, sb_strlist_t);
        char **v = realloc(l->v, sizeof(char *) * (size_t)(l->n + 1));
        if (!v) {
            snprintf(why, wl, "out of memory");
            return -1;
        }
        l->v = v;
        l->v[l->n++] = strdup(text);
        return 0;
    }
    case SB_OPT_STRING:
        break;
    }
    if (!*text) {
        snprintf(why, wl, "must not be empty");
        return -1;
    }
    char **field = FIELD(cfg, o, char *);
    free(*field);
    *field = strdup(text);
    return 0;
}

static void clear_list(sb_strlist_t *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Sets a list option from an environment value: comma separated, blanks trimmed. */
static int set_list_env(const sb_option_t *o, void *cfg, const char *text, char *why, size_t wl)
{
    char *copy = strdup(text), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save))
        if ((rc = set_value(o, cfg, tok, why, wl)) != 0)
            break;
    free(copy);
    return rc;
}

int sb_config_parse(const sb_option_t *table, const char *env_prefix, int argc, char **argv,
                    char *const *envp, void *cfg, char *err, size_t errlen)
{
    char why[512];
    /* Defaults. */
    for (const sb_option_t *o = table; o->name; o++) {
        if (o->def && set_value(o, cfg, o->def, why, sizeof why) != 0) {
            snprintf(err, errlen, "--%s: bad default: %s", o->name, why);
            return SB_CONFIG_ERROR;
        }
    }
    /* Environment. */
    for (const sb_option_t *o = table; o->name && envp; o++) {
        char var[128];
        sb_config_env_name(env_prefix, o->name, var, sizeof var);
        size_t vl = strlen(var);
        for (char *const *e = envp; *e; e++) {
            if (strncmp(*e, var, vl) != 0 || (*e)[vl] != '=')
                continue;
            const char *val = *e + vl + 1;
            int rc;
            if (is_list(o)) {
                clear_list(FIELD(cfg, o, sb_strlist_t));
                rc = set_list_env(o, cfg, val, why, sizeof why);
            } else {
                rc = set_value(o, cfg, val, why, sizeof why);
            }
            if (rc != 0) {
                snprintf(err, errlen, "%s (--%s): %s", var, o->name, why);
                return SB_CONFIG_ERROR;
            }
        }
    }
    /* Flags. A list given on the command line replaces the environment's. */
    unsigned char flag_seen[128] = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return SB_CONFIG_HELP;
        if (strcmp(a, "--version") == 0)
            return SB_CONFIG_VERSION;
        if (strncmp(a, "--", 2) != 0) {
            char sb[SHOWN_MAX + 4];
            snprintf(err, errlen, "%s: unexpected argument (options are --name value)",
                     shown(a, sb, sizeof sb));
            return SB_CONFIG_ERROR;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const sb_option_t *o = table;
        int idx = 0;
        for (; o->name; o++, idx++)
            if (strlen(o->name) == nl && strncmp(o->name, name, nl) == 0)
                break;
        if (!o->name) {
            char sb[SHOWN_MAX + 4];
            snprintf(err, errlen, "--%s: unknown option (see --help)",
                     shown_n(name, nl, sb, sizeof sb));
            return SB_CONFIG_ERROR;
        }
        const char *val;
        if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            snprintf(err, errlen, "--%s: missing value", o->name);
            return SB_CONFIG_ERROR;
        }
        if (is_list(o) && idx < 128 && !flag_seen[idx]) {
            clear_list(FIELD(cfg, o, sb_strlist_t));
            flag_seen[idx] = 1;
        }
        if (set_value(o, cfg, val, why, sizeof why) != 0) {
            snprintf(err, errlen, "--%s: %s", o->name, why);
            return SB_CONFIG_ERROR;
        }
    }
    return SB_CONFIG_OK;
}

void sb_config_free(const sb_option_t *table, void *cfg)
{
    for (const sb_option_t *o = table; o->name; o++) {
        if (o->type == SB_OPT_INT)
            continue;
        if (is_list(o)) {
            clear_list(FIELD(cfg, o, sb_strlist_t));
        } else {
            char **f = FIELD(cfg, o, char *);
            free(*f);
            *f = NULL;
        }
    }
}

void sb_config_help(const sb_option_t *table, const char *env_prefix, const char *usage, char *buf,
                    size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "%s\n\nOptions (flag, environment variable):\n", usage);
    for (const sb_option_t *o = table; o->name && n < len; o++) {
        char var[128];
        sb_config_env_name(env_prefix, o->name, var, sizeof var);
        n += (size_t)snprintf(buf + n, len - n, "  --%-24s %s\n      %s%s%s%s\n", o->name, var,
                              o->help, o->def ? " (default: " : "", o->def ? o->def : "",
                              o->def ? ")" : "");
    }
    if (n < len)
        snprintf(buf + n, len - n, "  --help, --version\n");
}
