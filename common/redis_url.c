/* Redis URL parser. Accepts only what hiredis can connect to (TCP host:port, unix path, a list
 * of TCP seeds for a cluster); no TLS (hiredis 0.14 has none), so rediss:// is refused with a
 * reason. */
#include "redis_url.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string; NULL on a bad escape or an embedded NUL. */
static char *decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            *o++ = (char)(hi * 16 + lo);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

void sb_redis_url_free(sb_redis_url_t *u)
{
    free(u->host);
    free(u->path);
    free(u->user);
    free(u->pass);
    for (int i = 0; i < u->nseeds; i++)
        free(u->seeds[i].host);
    free(u->seeds);
    memset(u, 0, sizeof *u);
}

/* Parses host[:port] or [v6]:port in p[0..end) into a new *host and *port (6379 when absent).
 * Returns 0, or -1 with a reason in err. */
static int parse_hostport(const char *p, const char *end, char **host, int *port, char *err,
                          size_t errlen)
{
    const char *hs = p, *he, *portp;
    if (p < end && *p == '[') {
        const char *close = memchr(p, ']', (size_t)(end - p));
        if (!close)
            return snprintf(err, errlen, "unterminated [IPv6] host"), -1;
        hs = p + 1;
        he = close;
        if (close + 1 < end && close[1] != ':')
            return snprintf(err, errlen, "expected :port after [IPv6]"), -1;
        portp = close + 1 < end ? close + 2 : NULL;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        he = colon ? colon : end;
        portp = colon ? colon + 1 : NULL;
    }
    if (he == hs)
        return snprintf(err, errlen, "missing host"), -1;
    for (const char *q = hs; q < he; q++)
        if (!isalnum((unsigned char)*q) && !strchr(".-_:", *q))
            return snprintf(err, errlen, "bad character in host"), -1;
    *port = 6379;
    if (portp) {
        if (portp == end)
            return snprintf(err, errlen, "empty port"), -1;
        long n = 0;
        for (const char *q = portp; q < end; q++) {
            if (!isdigit((unsigned char)*q) || (n = n * 10 + (*q - '0')) > 65535)
                return snprintf(err, errlen, "port must be 1 to 65535"), -1;
        }
        if (n < 1)
            return snprintf(err, errlen, "port must be 1 to 65535"), -1;
        *port = (int)n;
    }
    *host = strndup(hs, (size_t)(he - hs));
    if (!*host)
        return snprintf(err, errlen, "out of memory"), -1;
    return 0;
}

/* The seed list of a redis-cluster:// URL: p[0..end) is host:port[,host:port...]. */
static int parse_seeds(sb_redis_url_t *u, const char *p, const char *end, char *err, size_t errlen)
{
    while (1) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        struct sb_redis_seed *v = realloc(u->seeds, sizeof *v * (size_t)(u->nseeds + 1));
        if (!v)
            return snprintf(err, errlen, "out of memory"), -1;
        u->seeds = v;
        char why[96];
        if (parse_hostport(p, e, &v[u->nseeds].host, &v[u->nseeds].port, why, sizeof why) != 0)
            return snprintf(err, errlen, "seed %d: %s", u->nseeds + 1, why), -1;
        u->nseeds++;
        if (!comma)
            break;
        p = comma + 1;
    }
    u->host = strdup(u->seeds[0].host);
    u->port = u->seeds[0].port;
    return u->host ? 0 : (snprintf(err, errlen, "out of memory"), -1);
}

static int fail(sb_redis_url_t *u, char *err, size_t errlen, const char *why)
{
    /* why may be err itself (a helper's reason): copy through a buffer. */
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s", why);
    snprintf(err, errlen, "%s", tmp);
    sb_redis_url_free(u);
    return -1;
}

int sb_redis_url_parse(const char *url, sb_redis_url_t *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    if (strncmp(url, "unix://", 7) == 0) {
        const char *p = url + 7;
        if (*p != '/' || p[1] == '\0')
            return fail(u, err, errlen, "unix:// needs an absolute socket path");
        if (strlen(p) >= 108)
            return fail(u, err, errlen, "unix socket path too long");
        u->path = strdup(p);
        return 0;
    }
    if (strncmp(url, "rediss://", 9) == 0)
        return fail(u, err, errlen, "TLS (rediss://) is not supported");
    int cluster = strncmp(url, "redis-cluster://", 16) == 0;
    if (strncmp(url, "redis://", 8) != 0 && !cluster)
        return fail(u, err, errlen,
                    "expected redis://host:port[/db], unix:///path or "
                    "redis-cluster://host:port[,host:port...]");
    const char *p = url + (cluster ? 16 : 8);
    const char *slash = strchr(p, '/');
    const char *end = slash ? slash : p + strlen(p);
    /* User info ends at the last '@' before the path (a password may contain '@' escaped). */
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p && !(u->user = decode(p, (size_t)(colon - p))))
                return fail(u, err, errlen, "bad percent-escape in user");
            if (!(u->pass = decode(colon + 1, (size_t)(at - colon - 1))))
                return fail(u, err, errlen, "bad percent-escape in password");
        } else {
            /* redis://secret@host: a password alone, as redis-cli reads it. */
            if (!(u->pass = decode(p, (size_t)(at - p))))
                return fail(u, err, errlen, "bad percent-escape in password");
        }
        p = at + 1;
    }
    if (cluster) {
        /* Why no /db: Redis Cluster serves database 0 only (SELECT n fails). */
        if (slash && slash[1] && strcmp(slash, "/0") != 0)
            return fail(u, err, errlen, "a Redis Cluster has only database 0");
        u->cluster = 1;
        if (parse_seeds(u, p, end, err, errlen) != 0)
            return fail(u, err, errlen, err);
        return 0;
    }
    if (parse_hostport(p, end, &u->host, &u->port, err, errlen) != 0)
        return fail(u, err, errlen, err);
    if (slash && slash[1]) {
        long db = 0;
        for (const char *q = slash + 1; *q; q++) {
            if (!isdigit((unsigned char)*q) || (db = db * 10 + (*q - '0')) > 1000000)
                return fail(u, err, errlen, "database must be a number");
        }
        u->db = (int)db;
    }
    return 0;
}
