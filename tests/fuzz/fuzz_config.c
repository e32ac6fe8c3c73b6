/* Fuzzes the option parser (common/config.c) with a table holding one option of every type.
 * The input is split at newlines into tokens; "F_NAME=value" tokens form the environment,
 * the rest argv. Whatever parses must respect the table's types and bounds; every error must
 * be one line naming an option or an argument; nothing may leak either way. */
#include "config.h"
#include "fuzz.h"

#include <string.h>

typedef struct {
    int64_t count;
    char *label, *id, *listen, *redis, *level, *file;
    sb_strlist_t origins, urls;
} fuzz_cfg_t;

#define OFF(f) offsetof(fuzz_cfg_t, f)

static const sb_option_t table[] = {
    {"count", SB_OPT_INT, "10", -5, 100000, OFF(count), "an integer"},
    {"label", SB_OPT_STRING, "hello", 0, 0, OFF(label), "a string"},
    {"id", SB_OPT_NAME, "node-1", 0, 0, OFF(id), "a name"},
    {"listen", SB_OPT_HOSTPORT, "0.0.0.0:8080", 0, 0, OFF(listen), "host:port"},
    {"redis", SB_OPT_REDIS_URL, "redis://127.0.0.1:6379", 0, 0, OFF(redis), "redis URL"},
    {"log-level", SB_OPT_LEVEL, "info", 0, 0, OFF(level), "level"},
    {"file", SB_OPT_FILE, NULL, 0, 0, OFF(file), "a file"},
    {"allowed-origin", SB_OPT_ORIGINS, NULL, 0, 0, OFF(origins), "origins"},
    {"turn-url", SB_OPT_URLS, NULL, 0, 0, OFF(urls), "urls"},
    {0},
};

#define MAX_TOKENS 64

static void check_list(const sb_strlist_t *l)
{
    FUZZ_CHECK(l->n >= 0);
    FUZZ_CHECK(l->n == 0 || l->v != NULL);
    for (int i = 0; i < l->n; i++)
        FUZZ_CHECK(l->v[i] && l->v[i][0] && strchr(l->v[i], ':'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    char *argv[MAX_TOKENS + 2], *envp[MAX_TOKENS + 1];
    int argc = 0, envc = 0;
    argv[argc++] = (char *)"fuzz";
    char *save = NULL;
    for (char *tok = strtok_r(text, "\n", &save); tok && argc <= MAX_TOKENS && envc < MAX_TOKENS;
         tok = strtok_r(NULL, "\n", &save)) {
        if (strncmp(tok, "F_", 2) == 0 && strchr(tok, '='))
            envp[envc++] = tok;
        else
            argv[argc++] = tok;
    }
    argv[argc] = NULL;
    envp[envc] = NULL;

    fuzz_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    char err[256] = "";
    int rc = sb_config_parse(table, "F_", argc, argv, envp, &cfg, err, sizeof err);
    FUZZ_CHECK(rc == SB_CONFIG_OK || rc == SB_CONFIG_HELP || rc == SB_CONFIG_VERSION ||
               rc == SB_CONFIG_ERROR);
    if (rc == SB_CONFIG_OK) {
        FUZZ_CHECK(cfg.count >= -5 && cfg.count <= 100000);
        FUZZ_CHECK(cfg.label && cfg.label[0]);
        FUZZ_CHECK(cfg.id && sb_config_valid_name(cfg.id));
        char host[256];
        int port = 0;
        FUZZ_CHECK(cfg.listen &&
                   sb_config_split_hostport(cfg.listen, host, sizeof host, &port) == 0);
        FUZZ_CHECK(port >= 1 && port <= 65535 && host[0]);
        FUZZ_CHECK(cfg.redis && cfg.level);
        check_list(&cfg.origins);
        check_list(&cfg.urls);
    } else if (rc == SB_CONFIG_ERROR) {
        FUZZ_CHECK(err[0] != '\0');
        for (const char *c = err; *c; c++) /* one line, printable */
            FUZZ_CHECK((unsigned char)*c >= 0x20 && *c != 0x7f);
        /* Names the option (--x) or the offending argument, or an environment variable. */
        FUZZ_CHECK(strstr(err, "--") || strstr(err, "F_") || strstr(err, "unexpected argument"));
    }
    sb_config_free(table, &cfg);
    FUZZ_CHECK(cfg.label == NULL && cfg.origins.v == NULL && cfg.origins.n == 0);

    /* --help into a buffer whose size comes from the input: truncation must be safe. */
    char help[512];
    size_t hl = size % sizeof help + 1;
    sb_config_help(table, "F_", "usage: fuzz", help, hl);
    FUZZ_CHECK(strlen(help) < hl);
    free(text);
    return 0;
}
