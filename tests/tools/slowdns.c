/* LD_PRELOAD shim for the integration tests: a DNS that does not answer, or answers slowly, for
 * two kinds of names only. getaddrinfo() of a name ending in ".stall.invalid" sleeps
 * SB_SLOWDNS_MS milliseconds (default 8000; or until the file SB_SLOWDNS_RELEASE exists) and then
 * fails with EAI_AGAIN, as a lookup forwarded to a resolver that never answers does. Of a name
 * ending in ".slowok.invalid" it sleeps SB_SLOWDNS_OK_MS (default 700) and then fails with
 * EAI_AGAIN while the file SB_SLOWDNS_OK_FILE does not exist, and answers 127.0.0.1 once it
 * does (a DNS that comes back, slowly). Each such call appends a line ("stall", "fail" or "ok")
 * to the file SB_SLOWDNS_LOG when it is set. Every other name goes to libc's getaddrinfo.
 * (.invalid never resolves anywhere: RFC 6761.) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

static int ends_with(const char *node, const char *suffix)
{
    size_t n = node ? strlen(node) : 0, k = strlen(suffix);
    return n > k && strcmp(node + n - k, suffix) == 0;
}

static void log_line(const char *line)
{
    const char *log = getenv("SB_SLOWDNS_LOG");
    if (!log)
        return;
    int fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, line, strlen(line));
        (void)w;
        close(fd);
    }
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    getaddrinfo_fn real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (ends_with(node, ".slowok.invalid")) {
        const char *ms = getenv("SB_SLOWDNS_OK_MS"), *ok = getenv("SB_SLOWDNS_OK_FILE");
        long d = ms ? atol(ms) : 700;
        struct timespec ts = {d / 1000, (d % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        if (!(ok && access(ok, F_OK) == 0) || !real) {
            log_line("fail\n");
            return EAI_AGAIN;
        }
        log_line("ok\n");
        return real("127.0.0.1", service, hints, res);
    }
    if (ends_with(node, ".stall.invalid")) {
        log_line("stall\n");
        const char *ms = getenv("SB_SLOWDNS_MS"), *release = getenv("SB_SLOWDNS_RELEASE");
        long left = ms ? atol(ms) : 8000;
        /* In 10 ms steps, so that the test can end every stall by creating the file
         * SB_SLOWDNS_RELEASE (libuv joins its pool threads when the process exits). */
        while (left > 0 && !(release && access(release, F_OK) == 0)) {
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
            left -= 10;
        }
        return EAI_AGAIN;
    }
    return real ? real(node, service, hints, res) : EAI_FAIL;
}
