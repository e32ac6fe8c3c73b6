/* LD_PRELOAD shim for the integration tests: a DNS that does not answer, for one name only.
 * getaddrinfo() of a name ending in ".stall.invalid" sleeps SB_SLOWDNS_MS milliseconds (default
 * 8000; or until the file SB_SLOWDNS_RELEASE exists) and then fails with EAI_AGAIN, as a lookup
 * forwarded to a resolver that never answers does; each such call appends one line to the file
 * SB_SLOWDNS_LOG when it is set. Every other name goes to libc's getaddrinfo. (.invalid never
 * resolves anywhere: RFC 6761.) */
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

static int stalls(const char *node)
{
    static const char suffix[] = ".stall.invalid";
    size_t n = node ? strlen(node) : 0, k = sizeof suffix - 1;
    return n > k && strcmp(node + n - k, suffix) == 0;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    if (stalls(node)) {
        const char *log = getenv("SB_SLOWDNS_LOG");
        if (log) {
            int fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644);
            if (fd >= 0) {
                ssize_t w = write(fd, "stall\n", 6);
                (void)w;
                close(fd);
            }
        }
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
    getaddrinfo_fn real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    return real ? real(node, service, hints, res) : EAI_FAIL;
}
