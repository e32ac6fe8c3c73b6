/* Parsing of Redis URLs: redis://[user:pass@]host:port[/db], unix:///path, and the Redis
 * Cluster seed list redis-cluster://[user:pass@]host:port[,host:port...]. Pure. */
#ifndef SB_REDIS_URL_H
#define SB_REDIS_URL_H

#include <stddef.h>

typedef struct {
    char *host; /* NULL for unix sockets; IPv6 without brackets */
    int port;
    char *path; /* unix socket path, or NULL */
    char *user; /* NULL when absent (AUTH pass only) */
    char *pass; /* NULL when absent (no AUTH) */
    int db;     /* SELECT db when > 0 */
    /* redis-cluster:// only (cluster is 1): the seed nodes, in the URL's order; host and port
     * above are the first seed's. A cluster has only database 0, so db is always 0. */
    int cluster;
    int nseeds;
    struct sb_redis_seed {
        char *host; /* IPv6 without brackets */
        int port;
    } * seeds;
} sb_redis_url_t;

/* Parses url into out (strings malloc'd, owned by out; release with sb_redis_url_free, which is
 * also safe after a failure). Returns 0, or -1 with a reason in err. Percent-escapes in user
 * and password are decoded. */
int sb_redis_url_parse(const char *url, sb_redis_url_t *out, char *err, size_t errlen);
void sb_redis_url_free(sb_redis_url_t *u);

#endif
