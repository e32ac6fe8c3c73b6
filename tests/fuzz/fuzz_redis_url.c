/* Fuzzes the Redis URL parser (common/redis_url.c): any string either parses into something
 * hiredis can connect to, or is refused with a reason and nothing allocated. */
#include "fuzz.h"
#include "redis_url.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = malloc(size + 1);
    memcpy(url, data, size);
    url[size] = '\0';
    sb_redis_url_t u;
    char err[128] = "";
    if (sb_redis_url_parse(url, &u, err, sizeof err) == 0) {
        FUZZ_CHECK((u.host == NULL) != (u.path == NULL));
        if (u.host) {
            FUZZ_CHECK(u.host[0] != '\0');
            FUZZ_CHECK(u.port >= 1 && u.port <= 65535);
            FUZZ_CHECK(u.db >= 0);
            FUZZ_CHECK(!strchr(u.host, '/') && !strchr(u.host, '@'));
        } else {
            FUZZ_CHECK(u.path[0] == '/' && strlen(u.path) < 108);
        }
        FUZZ_CHECK(!u.pass || strlen(u.pass) <= size);
        FUZZ_CHECK(!u.user || u.pass); /* a user always comes with a password */
        sb_redis_url_free(&u);
    } else {
        FUZZ_CHECK(err[0] != '\0');
        FUZZ_CHECK(!u.host && !u.path && !u.user && !u.pass);
    }
    free(url);
    return 0;
}
