/* Options: one table per binary (name, type, default, bounds, help) drives parsing of the
 * environment and the command line, --help, and one-line errors. Pure: no I/O except reading
 * the environment array it is given and checking that file options are readable. */
#ifndef SB_CONFIG_H
#define SB_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    SB_OPT_INT,       /* int64_t, decimal, within [min, max] */
    SB_OPT_STRING,    /* char *, non-empty */
    SB_OPT_NAME,      /* char *, 1..64 of [A-Za-z0-9._:-] (ids, prefixes) */
    SB_OPT_HOSTPORT,  /* char *, HOST:PORT or [V6]:PORT, port 1..65535 */
    SB_OPT_REDIS_URL, /* char *, redis://[user:pass@]host:port[/db] or unix:///path */
    SB_OPT_LEVEL,     /* char *, error|warn|info|debug */
    SB_OPT_FILE,      /* char *, a readable file */
    SB_OPT_ORIGINS,   /* sb_strlist_t, repeatable, scheme://host[:port] */
    SB_OPT_URLS,      /* sb_strlist_t, repeatable, any non-empty string with a scheme (turn:...) */
} sb_opt_type_t;

typedef struct {
    char **v;
    int n;
} sb_strlist_t;

typedef struct {
    const char *name; /* long flag without dashes: "presence-ttl-ms" */
    sb_opt_type_t type;
    const char *def; /* default as text, NULL = unset */
    int64_t min, max;
    size_t offset; /* of the field in the binary's config struct */
    const char *help;
} sb_option_t;

enum { SB_CONFIG_OK = 0, SB_CONFIG_HELP = 1, SB_CONFIG_VERSION = 2, SB_CONFIG_ERROR = -1 };

/* Fills cfg from defaults, then envp ("NAME=value" strings, NULL-terminated; variables named
 * env_prefix + the option name upper-cased with '-' as '_'), then argv (--name value or
 * --name=value). Returns SB_CONFIG_OK, SB_CONFIG_HELP / SB_CONFIG_VERSION when asked, or
 * SB_CONFIG_ERROR with one line naming the option in err. Strings in cfg are malloc'd and
 * owned by cfg: release them with sb_config_free (also after an error). table ends with a
 * zero entry. */
int sb_config_parse(const sb_option_t *table, const char *env_prefix, int argc, char **argv,
                    char *const *envp, void *cfg, char *err, size_t errlen);

/* Frees every string and list that sb_config_parse stored in cfg. */
void sb_config_free(const sb_option_t *table, void *cfg);

/* Writes --help text for table to buf (truncated to len). */
void sb_config_help(const sb_option_t *table, const char *env_prefix, const char *usage, char *buf,
                    size_t len);

/* The environment variable of option name under env_prefix, into buf. */
void sb_config_env_name(const char *env_prefix, const char *name, char *buf, size_t len);

/* 1 when s is 1..64 characters of [A-Za-z0-9._:-]. */
int sb_config_valid_name(const char *s);

/* Splits "host:port" / "[v6]:port" into host (without brackets) and port; 0 or -1. */
int sb_config_split_hostport(const char *s, char *host, size_t hostlen, int *port);

#endif
