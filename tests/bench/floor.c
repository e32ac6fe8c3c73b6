/* floor: the least a WebSocket relay can do, the reference for what the kernel and the load
 * client cost on their own (make bench section 8). One process, one epoll loop, no library but
 * libc and libcrypto's SHA-1 for the handshake. It speaks the part of the PeerJS wire protocol
 * that tests/bench/js/load.mjs uses: a client connects with ?id=ID, gets {"type":"OPEN"}, and a
 * text message with "dst":"X" goes to the socket of id X with "src":ID put in front; anything
 * else (HEARTBEAT) is dropped. No JSON is parsed or validated, no fragmented message is taken
 * (closed 1003), no ping is sent, no limit is kept: it is a measuring stick, not a server.
 *
 * Why this shape, so that it is a floor: a read takes everything the socket has into one stack
 * buffer and every complete frame in it is relayed from there; a frame is written with one
 * send() at once (EPOLLOUT only while a remainder waits), which is the fewest system calls a
 * relay can make per message; an idle socket holds its record and its id only (buffers exist
 * while a partial frame or an unsent remainder does).
 *
 * Across processes (--redis): two floors share one redis-server, as two nodes do. A message
 * whose "dst" is not on this floor is PUBLISHed, already relayed ("src" in front), to the other
 * floor's channel as DST '\n' TEXT; the other floor, subscribed to its own channel, finds DST in
 * the pub/sub message and writes the text as a frame. The publishing connection runs CLIENT
 * REPLY OFF (no reply to read: the fewest wake-ups any server with a Redis hop can have, which
 * a server that wants to know a message was received cannot do), and the PUBLISHes of one
 * epoll batch go out in one send().
 *
 * usage: sb-floor --listen HOST:PORT [--redis HOST:PORT --me CHANNEL --peer CHANNEL] */
#include <openssl/sha.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FRAME 65536
#define MAX_HEAD 8192
#define ID_MAX 64

typedef struct conn {
    int fd;
    int open;          /* handshake done */
    int want_out;      /* EPOLLOUT armed */
    struct conn *next; /* in its id's bucket */
    unsigned char *in; /* an incomplete head or frame, kept between reads */
    size_t inlen;
    unsigned char *out; /* what send() did not take */
    size_t outlen;
    char id[ID_MAX + 1];
} conn_t;

static int ep;
static conn_t **table;
/* --redis: the PUBLISH connection (its unsent bytes) and the SUBSCRIBE one. */
static int pub_fd = -1, sub_fd = -1, pub_want_out;
static unsigned char *pub_out, *sub_in;
static size_t pub_len, pub_cap, sub_len;
static const char *peer_channel;
static conn_t pub_tag, sub_tag; /* their epoll data.ptr */
static size_t nbuckets = 1u << 16;
static unsigned char rbuf[MAX_FRAME + MAX_HEAD + 64];

static size_t hash(const char *s)
{
    size_t h = 5381;
    while (*s)
        h = h * 33 + (unsigned char)*s++;
    return h & (nbuckets - 1);
}

static conn_t *find(const char *id)
{
    for (conn_t *c = table[hash(id)]; c; c = c->next)
        if (strcmp(c->id, id) == 0)
            return c;
    return NULL;
}

static void unindex(conn_t *c)
{
    if (!c->id[0])
        return;
    for (conn_t **p = &table[hash(c->id)]; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            return;
        }
}

static void drop(conn_t *c)
{
    unindex(c);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static void arm(conn_t *c, int out)
{
    if (c->want_out == out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

/* Sends what is waiting, then a..b: one send() when nothing waits. -1: the socket is dead. */
static int put(conn_t *c, const void *a, size_t alen, const void *b, size_t blen)
{
    if (!c->outlen) {
        struct iovec iov[2] = {{(void *)a, alen}, {(void *)b, blen}};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = blen ? 2 : 1};
        ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        size_t sent = n < 0 ? 0 : (size_t)n;
        if (sent == alen + blen)
            return 0;
        /* keep the rest */
        size_t skip_a = sent < alen ? sent : alen, skip_b = sent - skip_a;
        a = (const char *)a + skip_a;
        alen -= skip_a;
        b = (const char *)b + skip_b;
        blen -= skip_b;
    }
    unsigned char *o = realloc(c->out, c->outlen + alen + blen);
    if (!o)
        return -1;
    memcpy(o + c->outlen, a, alen);
    memcpy(o + c->outlen + alen, b, blen);
    c->out = o;
    c->outlen += alen + blen;
    arm(c, 1);
    return 0;
}

static void flush_out(conn_t *c)
{
    ssize_t n = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        drop(c);
        return;
    }
    if (n > 0) {
        memmove(c->out, c->out + n, c->outlen - (size_t)n);
        c->outlen -= (size_t)n;
    }
    if (!c->outlen) {
        free(c->out);
        c->out = NULL;
        arm(c, 0);
    }
}

/* A server frame's header (never masked) for len payload bytes; its length. */
static size_t frame_head(unsigned char *h, int opcode, size_t len)
{
    h[0] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        h[1] = (unsigned char)len;
        return 2;
    }
    if (len < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        return 4;
    }
    h[1] = 127; /* a relayed frame near MAX_FRAME with "src" in front */
    for (int i = 0; i < 8; i++)
        h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static int send_text(conn_t *c, const char *pre, size_t plen, const unsigned char *body,
                     size_t blen)
{
    unsigned char h[10 + 80];
    size_t hl = frame_head(h, 1, plen + blen);
    memcpy(h + hl, pre, plen); /* plen <= 80: {"src":"ID", */
    return put(c, h, hl + plen, body, blen);
}

/* ---- --redis: the hop ------------------------------------------------------------------------ */

static int pub_append(const void *p, size_t n)
{
    if (pub_len + n > pub_cap) {
        size_t cap = pub_cap ? pub_cap : 65536;
        while (cap < pub_len + n)
            cap *= 2;
        unsigned char *b = realloc(pub_out, cap);
        if (!b)
            return -1;
        pub_out = b;
        pub_cap = cap;
    }
    memcpy(pub_out + pub_len, p, n);
    pub_len += n;
    return 0;
}

/* PUBLISH peer_channel DST\nPRE BODY, appended to what goes out at the end of the batch. */
static int publish(const char *dst, const char *pre, size_t plen, const unsigned char *body,
                   size_t blen)
{
    char head[160];
    size_t dl = strlen(dst);
    int n = snprintf(head, sizeof head, "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n$%zu\r\n%s\n",
                     strlen(peer_channel), peer_channel, dl + 1 + plen + blen, dst);
    if (n < 0 || (size_t)n >= sizeof head) /* channel and id are bounded at start and by ID_MAX */
        return -1;
    if (pub_append(head, (size_t)n) || pub_append(pre, plen) || pub_append(body, blen) ||
        pub_append("\r\n", 2))
        return -1;
    return 0;
}

/* Sends what the batch published (one send() when the socket takes it all). */
static void pub_flush(void)
{
    if (!pub_len)
        return;
    ssize_t n = send(pub_fd, pub_out, pub_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        perror("sb-floor: redis");
        exit(1);
    }
    if (n > 0) {
        memmove(pub_out, pub_out + n, pub_len - (size_t)n);
        pub_len -= (size_t)n;
    }
    int want = pub_len > 0;
    if (want != pub_want_out) {
        struct epoll_event ev = {.events = want ? EPOLLOUT : 0, .data.ptr = &pub_tag};
        epoll_ctl(ep, EPOLL_CTL_MOD, pub_fd, &ev);
        pub_want_out = want;
    }
}

/* A RESP element at p[0..len): a bulk string (its bytes in *v, *vl) or an integer (*v NULL);
 * returns its length, 0 when incomplete, -1 when not one of those. */
static long resp_elem(const unsigned char *p, size_t len, const unsigned char **v, size_t *vl)
{
    const unsigned char *e = memmem(p, len, "\r\n", 2);
    if (!e)
        return 0;
    size_t hl = (size_t)(e - p) + 2;
    *v = NULL;
    if (p[0] == ':')
        return (long)hl;
    if (p[0] != '$' || p[1] == '-')
        return -1; /* (a nil bulk: pub/sub sends none) */
    size_t n = strtoul((const char *)p + 1, NULL, 10);
    if (len < hl + n + 2)
        return 0;
    *v = p + hl;
    *vl = n;
    return (long)(hl + n + 2);
}

/* Pub/sub messages in sub_in: each "message" written to its DST's socket as a text frame. */
static void sub_messages(void)
{
    size_t at = 0;
    while (at < sub_len) {
        const unsigned char *p = sub_in + at;
        size_t len = sub_len - at;
        const unsigned char *e = memmem(p, len, "\r\n", 2);
        if (!e)
            break;
        if (p[0] != '*') {
            fprintf(stderr, "sb-floor: unexpected reply from redis\n");
            exit(1);
        }
        long k = strtol((const char *)p + 1, NULL, 10);
        size_t used = (size_t)(e - p) + 2;
        const unsigned char *v[3] = {0};
        size_t vl[3] = {0};
        int whole = 1;
        for (long i = 0; i < k; i++) {
            const unsigned char *x;
            size_t xl = 0;
            long m = resp_elem(p + used, len - used, &x, &xl);
            if (m < 0) {
                fprintf(stderr, "sb-floor: unexpected reply from redis\n");
                exit(1);
            }
            if (m == 0) {
                whole = 0;
                break;
            }
            if (i < 3) {
                v[i] = x;
                vl[i] = xl;
            }
            used += (size_t)m;
        }
        if (!whole)
            break;
        at += used;
        if (k != 3 || !v[0] || vl[0] != 7 || memcmp(v[0], "message", 7) != 0 || !v[2])
            continue; /* the subscribe confirmation */
        const unsigned char *nl = memchr(v[2], '\n', vl[2]);
        if (!nl || nl - v[2] > ID_MAX)
            continue;
        char dst[ID_MAX + 1];
        memcpy(dst, v[2], (size_t)(nl - v[2]));
        dst[nl - v[2]] = '\0';
        conn_t *to = find(dst);
        if (to && to->open && send_text(to, "", 0, nl + 1, vl[2] - (size_t)(nl + 1 - v[2])) != 0)
            shutdown(to->fd, SHUT_RDWR);
    }
    memmove(sub_in, sub_in + at, sub_len - at);
    sub_len -= at;
}

static void sub_readable(void)
{
    if (sub_len == MAX_FRAME * 4) {
        fprintf(stderr, "sb-floor: pub/sub message too long\n");
        exit(1);
    }
    /* One read per event, as for the sockets: what it leaves, the next epoll_wait reports. */
    ssize_t n = recv(sub_fd, sub_in + sub_len, MAX_FRAME * 4 - sub_len, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        fprintf(stderr, "sb-floor: redis closed the subscription\n");
        exit(1);
    }
    sub_len += (size_t)n;
    sub_messages();
}

static int redis_connect(const struct sockaddr_in *sa, const char *cmd)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0 || connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
        perror("sb-floor: --redis");
        exit(1);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (send(fd, cmd, strlen(cmd), MSG_NOSIGNAL) != (ssize_t)strlen(cmd)) {
        perror("sb-floor: --redis");
        exit(1);
    }
    return fd;
}

/* The two connections; returns once the subscription is confirmed. */
static void redis_setup(const struct sockaddr_in *sa, const char *me)
{
    pub_fd = redis_connect(sa, "*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "*2\r\n$9\r\nSUBSCRIBE\r\n$%zu\r\n%s\r\n", strlen(me), me);
    sub_fd = redis_connect(sa, cmd);
    sub_in = malloc(MAX_FRAME * 4);
    /* The confirmation, exactly: ["subscribe", me, 1]. */
    char want[256], ok[256];
    int wl = snprintf(want, sizeof want, "*3\r\n$9\r\nsubscribe\r\n$%zu\r\n%s\r\n:1\r\n",
                      strlen(me), me);
    size_t got = 0;
    while (got < (size_t)wl) {
        ssize_t n = recv(sub_fd, ok + got, (size_t)wl - got, 0);
        if (n <= 0) {
            fprintf(stderr, "sb-floor: SUBSCRIBE %s: no confirmation\n", me);
            exit(1);
        }
        got += (size_t)n;
    }
    if (memcmp(ok, want, (size_t)wl) != 0) {
        fprintf(stderr, "sb-floor: SUBSCRIBE %s: unexpected answer\n", me);
        exit(1);
    }
    struct epoll_event pev = {.events = 0, .data.ptr = &pub_tag};
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &sub_tag};
    if (!sub_in || fcntl(pub_fd, F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(sub_fd, F_SETFL, O_NONBLOCK) != 0 || epoll_ctl(ep, EPOLL_CTL_ADD, pub_fd, &pev) ||
        epoll_ctl(ep, EPOLL_CTL_ADD, sub_fd, &sev)) {
        perror("sb-floor: --redis");
        exit(1);
    }
}

/* A text message of c: to its "dst" with "src" put in front of its first member. */
static int relay(conn_t *c, const unsigned char *p, size_t len)
{
    static const char key[] = "\"dst\":\"";
    const unsigned char *d = memmem(p, len, key, sizeof key - 1);
    if (!d || len < 2 || p[0] != '{')
        return 0; /* HEARTBEAT and the like */
    d += sizeof key - 1;
    const unsigned char *e = memchr(d, '"', len - (size_t)(d - p));
    if (!e || e - d > ID_MAX)
        return 0;
    char dst[ID_MAX + 1];
    memcpy(dst, d, (size_t)(e - d));
    dst[e - d] = '\0';
    conn_t *to = find(dst);
    char pre[80];
    int n = snprintf(pre, sizeof pre, "{\"src\":\"%s\",", c->id);
    if (!to && pub_fd >= 0)
        return publish(dst, pre, (size_t)n, p + 1, len - 1);
    if (!to || !to->open)
        return 0;
    /* A failed send shuts the recipient down rather than freeing it: this batch of events
     * may still name it. Its own next event (a hang-up) frees it. */
    if (send_text(to, pre, (size_t)n, p + 1, len - 1) != 0)
        shutdown(to->fd, SHUT_RDWR);
    return 0;
}

static void b64(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = '\0';
}

/* The HTTP upgrade in p[0..len) (ends with the blank line): answers 101 and OPEN; -1 to drop. */
static int handshake(conn_t *c, char *p, size_t len)
{
    p[len] = '\0';
    char *q = strstr(p, "id="), *k = NULL;
    if (!q || strncmp(p, "GET ", 4) != 0)
        return -1;
    size_t il = strcspn(q + 3, "& \r\n");
    if (!il || il > ID_MAX)
        return -1;
    memcpy(c->id, q + 3, il);
    c->id[il] = '\0';
    for (char *line = strstr(p, "\r\n"); line; line = strstr(line + 2, "\r\n"))
        if (strncasecmp(line + 2, "Sec-WebSocket-Key:", 18) == 0) {
            k = line + 20;
            break;
        }
    if (!k || find(c->id))
        return -1;
    while (*k == ' ')
        k++;
    size_t kl = strcspn(k, "\r\n");
    char src[128];
    if (kl > 60)
        return -1;
    snprintf(src, sizeof src, "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", (int)kl, k);
    unsigned char sha[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)src, strlen(src), sha);
    char acc[32], resp[256];
    b64(sha, sizeof sha, acc);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    size_t h = hash(c->id);
    c->next = table[h];
    table[h] = c;
    c->open = 1;
    static const char open_msg[] = "{\"type\":\"OPEN\"}";
    unsigned char f[2 + sizeof open_msg];
    size_t fl = frame_head(f, 1, sizeof open_msg - 1);
    memcpy(f + fl, open_msg, sizeof open_msg - 1);
    return put(c, resp, (size_t)n, f, fl + sizeof open_msg - 1);
}

/* Complete frames in p[0..len): handled; returns the bytes used, or -1 to drop c. */
static long frames(conn_t *c, unsigned char *p, size_t len)
{
    size_t at = 0;
    while (len - at >= 2) {
        unsigned char *f = p + at;
        size_t avail = len - at, hl = 2, plen = f[1] & 0x7f;
        if (!(f[1] & 0x80))
            return -1; /* clients mask */
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = (size_t)f[2] << 8 | f[3];
            hl = 4;
        } else if (plen == 127) {
            return -1; /* over MAX_FRAME */
        }
        if (avail < hl + 4 + plen)
            break;
        unsigned char *m = f + hl, *d = m + 4;
        for (size_t i = 0; i < plen; i++)
            d[i] ^= m[i & 3];
        int op = f[0] & 0x0f;
        if (!(f[0] & 0x80) || op == 0) {
            unsigned char cl[4] = {0x88, 2, 1003 >> 8, 1003 & 0xff};
            put(c, cl, 4, NULL, 0);
            return -1;
        }
        if (op == 1 && relay(c, d, plen) != 0)
            return -1;
        if (op == 8)
            return -1;
        if (op == 9) {
            unsigned char h[10];
            if (put(c, h, frame_head(h, 10, plen), d, plen) != 0)
                return -1;
        }
        at += hl + 4 + plen;
    }
    return (long)at;
}

static void on_readable(conn_t *c)
{
    /* What was kept, then everything the socket has, in one buffer. */
    size_t have = c->inlen;
    if (have)
        memcpy(rbuf, c->in, have);
    ssize_t n = recv(c->fd, rbuf + have, sizeof rbuf - 1 - have, 0);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        drop(c);
        return;
    }
    have += (size_t)n;
    long used;
    if (!c->open) {
        unsigned char *e = memmem(rbuf, have, "\r\n\r\n", 4);
        if (!e) {
            used = have > MAX_HEAD ? -1 : 0;
        } else {
            size_t hl = (size_t)(e - rbuf) + 4;
            char head[MAX_HEAD + 1];
            if (hl > MAX_HEAD) {
                used = -1;
            } else {
                memcpy(head, rbuf, hl);
                used = handshake(c, head, hl) != 0 ? -1 : (long)hl;
            }
            if (used > 0) {
                long more = frames(c, rbuf + used, have - (size_t)used);
                used = more < 0 ? -1 : used + more;
            }
        }
    } else {
        used = frames(c, rbuf, have);
    }
    if (used < 0) {
        drop(c);
        return;
    }
    size_t rest = have - (size_t)used;
    if (rest > MAX_FRAME + 14) {
        drop(c);
        return;
    }
    if (!rest) {
        free(c->in);
        c->in = NULL;
    } else {
        unsigned char *k = realloc(c->in, rest);
        if (!k) {
            drop(c);
            return;
        }
        memcpy(k, rbuf + used, rest);
        c->in = k;
    }
    c->inlen = rest;
}

/* IPV4:PORT into *sa; -1 when it is not one. */
static int addr(const char *s, struct sockaddr_in *sa)
{
    const char *colon = strrchr(s, ':');
    char host[64];
    if (!colon || colon - s >= (long)sizeof host || !colon[1])
        return -1;
    snprintf(host, sizeof host, "%.*s", (int)(colon - s), s);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *listen_at = NULL, *redis_at = NULL, *me = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0)
            listen_at = argv[i + 1];
        else if (strcmp(argv[i], "--redis") == 0)
            redis_at = argv[i + 1];
        else if (strcmp(argv[i], "--me") == 0)
            me = argv[i + 1];
        else if (strcmp(argv[i], "--peer") == 0)
            peer_channel = argv[i + 1];
    }
    struct sockaddr_in sa, rsa;
    if (argc % 2 != 1 || !listen_at || addr(listen_at, &sa) != 0 ||
        (redis_at && (addr(redis_at, &rsa) != 0 || !me || !peer_channel)) ||
        (!redis_at && (me || peer_channel))) {
        fprintf(stderr, "usage: sb-floor --listen IPV4:PORT "
                        "[--redis IPV4:PORT --me CHANNEL --peer CHANNEL]\n");
        return 2;
    }
    if (redis_at && (strlen(me) > 64 || strlen(peer_channel) > 64)) {
        fprintf(stderr, "sb-floor: --me and --peer: 64 characters at most\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    table = calloc(nbuckets, sizeof *table);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (!table || bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 4096) != 0) {
        perror("sb-floor: listen");
        return 1;
    }
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    if (redis_at)
        redis_setup(&rsa, me);
    printf("{\"event\":\"listening\"}\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    if (!nc || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
                        free(nc);
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                }
                continue;
            }
            if (c == &sub_tag) {
                sub_readable();
                continue;
            }
            if (c == &pub_tag) {
                if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                    fprintf(stderr, "sb-floor: redis closed the publishing connection\n");
                    exit(1);
                }
                pub_flush();
                continue;
            }
            /* A socket is freed only in its own event (relay() shuts a recipient down), so
             * no entry of this batch names a freed one. */
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN)) {
                drop(c);
                continue;
            }
            if (evs[i].events & EPOLLOUT)
                flush_out(c);
            else if (evs[i].events & EPOLLIN)
                on_readable(c);
        }
        if (pub_fd >= 0)
            pub_flush(); /* what this batch published, in one send() */
    }
}
