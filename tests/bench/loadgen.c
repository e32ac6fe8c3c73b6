/* loadgen: many WebSocket clients on one libuv loop (the libwebsockets client on a foreign
 * loop), driving Switchboard nodes or the bare echo server, and printing one JSON object per
 * line on stdout. Scenarios: connect (connect + join, optionally link, hold idle), relay (pairs
 * signalling each other flat out or at a rate; latency from a timestamp inside the signal
 * data), churn (join / link / leave cycles), reset (TCP reset of one end of each pair; time
 * until the other end hears peer-left) and kill9 (time until the survivors of a killed node
 * hear peer-left). Does not start servers or judge figures: tests/bench/bench.py does. */
#include <libwebsockets.h>
#include <jansson.h>
#include <uv.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define MAX_URLS 8
#define MAX_SRCS 32
#define MAX_CTL 8
#define ID_MAX 72

typedef enum { SC_CONNECT, SC_RELAY, SC_CHURN, SC_RESET, SC_KILL9 } scenario_t;

typedef enum {
    CS_NEW,
    CS_CONNECTING,
    CS_UPGRADED, /* WebSocket up, welcome not yet seen */
    CS_OPEN,     /* welcome seen (or echo server: upgraded), not in a room */
    CS_JOINING,
    CS_JOINED,
    CS_LEAVING,
    CS_CLOSED,
    CS_FAILED
} cstate_t;

typedef enum { OP_NONE, OP_JOIN, OP_LINK, OP_LEAVE, OP__COUNT } op_t;
static const char *const op_names[OP__COUNT] = {"none", "join", "link", "leave"};

typedef struct {
    int64_t *v;
    size_t n, cap;
} lat_t;

typedef struct lg lg_t;
typedef struct rawc rawc_t;

typedef struct conn {
    lg_t *lg;
    int idx;
    struct lws *wsi;
    rawc_t *raw; /* reset scenario: the end that is reset is a raw TCP client */
    int url, src;
    cstate_t st;
    char id[ID_MAX];
    struct conn *peer; /* pair partner (echo: itself) */
    int knows_peer;    /* our node told us of the partner (joined peers or peer-joined) */
    int setup_done;
    int64_t t_begin; /* connect started (ns) */
    int64_t t_op;    /* operation in flight since */
    op_t op;
    int link_sent, link_acked;
    uint64_t sent, recv; /* relay: signals sent by this end, received by this end */
    int wr_pending;
    int blocked; /* relay: waiting for the window to open */
    char *ctl[MAX_CTL];
    size_t ctl_len[MAX_CTL];
    int nctl;
    char *rx;
    size_t rxlen, rxcap;
    int64_t t_reset; /* reset: when this end was reset */
    int64_t t_left;  /* when peer-left for the partner arrived (0: not yet) */
    int left_expired;
} conn_t;

struct rawc {
    uv_tcp_t tcp;
    uv_connect_t creq;
    conn_t *c;
    char *in;
    size_t inlen, incap;
    char *msg;
    size_t msglen, msgcap;
    int upgraded;
    int closing;
};

typedef struct {
    char host[64];
    int port;
    char path[128];
} url_t;

struct lg {
    /* options */
    scenario_t scenario;
    url_t urls[MAX_URLS];
    int nurls;
    char srcs[MAX_SRCS][40];
    int nsrcs;
    int nconns;
    int room_size;
    char room_prefix[48];
    int concurrency;
    int join;         /* connect: join a room after welcome */
    int link;         /* connect: link each pair after join */
    int link_on_usr1; /* connect: wait for SIGUSR1 before linking (state measured between) */
    int ping_first;   /* connect: one ping (echo: one message) before counting a socket */
    int echo;         /* the server is the echo server: no welcome, no rooms, messages come back */
    int cross;        /* pairs across the first two URLs */
    double hold_s, seconds, warmup_s, timeout_s;
    double rate; /* relay: total msgs/s (0 = flat out); reset: resets per second */
    int window;
    int payload;
    /* state */
    uv_loop_t *loop;
    struct lws_context *ctx;
    conn_t *conns;
    char *pad;
    int started, done, failed;
    int64_t t_setup0, t_setup1;
    lat_t lat_setup;
    int phase; /* 0 setup, 1 pairing, 2 running, 3 finishing */
    int stopping;
    uv_timer_t tick, phase_timer;
    uv_signal_t sigint, sigterm, sigusr1;
    int link_go;
    int64_t t_phase;
    int unexpected_closes;
    uint64_t errors;
    json_t *error_codes;
    /* link */
    int links_sent, links_acked, links_up;
    int64_t t_link0;
    /* relay */
    int64_t t_go, t_win0, t_win1;
    uint64_t win_msgs;
    lat_t lat;
    int active_pairs;
    /* churn */
    lat_t lat_op[OP__COUNT];
    uint64_t ops[OP__COUNT];
    uint64_t op_errors;
    /* reset / kill9 */
    int next_reset, resets_done;
    int64_t t_kill;
    int peer_left_seen, peer_left_expected;
    char rawbuf[65536];
};

/* ---- small helpers ------------------------------------------------------------------------ */

static int64_t now_ns(void)
{
    return (int64_t)uv_hrtime();
}

static void lat_add(lat_t *l, int64_t v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4096;
        int64_t *nv = realloc(l->v, cap * sizeof *nv);
        if (!nv)
            return;
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts l in place; the p-quantile (nearest rank) in microseconds, -1 when empty. */
static double lat_pct_us(lat_t *l, double p)
{
    if (!l->n)
        return -1;
    size_t k = (size_t)(p * (double)l->n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > l->n)
        k = l->n;
    return (double)l->v[k - 1] / 1000.0;
}

static void lat_sort(lat_t *l)
{
    if (l->n)
        qsort(l->v, l->n, sizeof *l->v, cmp64);
}

/* Adds "prefix_p50_us" etc. for l (sorted here) to o. */
static void lat_json(json_t *o, const char *prefix, lat_t *l)
{
    char k[64];
    lat_sort(l);
    static const struct {
        const char *name;
        double p;
    } q[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p999", 0.999}, {"max", 1.0}};
    snprintf(k, sizeof k, "%s_samples", prefix);
    json_object_set_new(o, k, json_integer((json_int_t)l->n));
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        snprintf(k, sizeof k, "%s_%s_us", prefix, q[i].name);
        json_object_set_new(o, k, l->n ? json_real(lat_pct_us(l, q[i].p)) : json_null());
    }
}

static void emit(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(s);
    }
    json_decref(o);
}

static void __attribute__((format(printf, 1, 2))) warnx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static json_t *base_json(lg_t *lg, const char *event)
{
    static const char *const names[] = {"connect", "relay", "churn", "reset", "kill9"};
    return json_pack("{s:s,s:s,s:s,s:i}", "scenario", names[lg->scenario], "event", event,
                     "room_prefix", lg->room_prefix, "conns", lg->nconns);
}

static void count_error(lg_t *lg, const char *code)
{
    lg->errors++;
    json_t *v = json_object_get(lg->error_codes, code);
    json_object_set_new(lg->error_codes, code, json_integer(v ? json_integer_value(v) + 1 : 1));
}

/* ---- sending ------------------------------------------------------------------------------ */

static void raw_send(rawc_t *r, int opcode, const char *data, size_t len);

static void want_write(conn_t *c)
{
    if (c->wsi && !c->wr_pending) {
        c->wr_pending = 1;
        lws_callback_on_writable(c->wsi);
    }
}

/* Queues a control message (copied); raw ends send at once. */
static void send_ctl(conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_ctl(conn_t *c, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof text)
        return;
    if (c->raw) {
        raw_send(c->raw, 1, text, (size_t)n);
        return;
    }
    if (!c->wsi || c->nctl == MAX_CTL)
        return;
    char *buf = malloc(LWS_PRE + (size_t)n);
    if (!buf)
        return;
    memcpy(buf + LWS_PRE, text, (size_t)n);
    c->ctl[c->nctl] = buf;
    c->ctl_len[c->nctl] = (size_t)n;
    c->nctl++;
    want_write(c);
}

static void room_name(lg_t *lg, conn_t *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s-%d", lg->room_prefix, c->idx / lg->room_size);
}

static void send_join(conn_t *c)
{
    char room[96];
    room_name(c->lg, c, room, sizeof room);
    c->st = CS_JOINING;
    c->op = OP_JOIN;
    c->t_op = now_ns();
    send_ctl(c, "{\"type\":\"join\",\"room\":\"%s\"}", room);
}

static void send_link(conn_t *c)
{
    c->op = OP_LINK;
    c->t_op = now_ns();
    c->link_sent = 1;
    send_ctl(c, "{\"type\":\"link\",\"peer\":\"%s\",\"state\":\"up\"}", c->peer->id);
}

static void send_leave(conn_t *c)
{
    c->st = CS_LEAVING;
    c->op = OP_LEAVE;
    c->t_op = now_ns();
    c->knows_peer = 0;
    send_ctl(c, "{\"type\":\"leave\"}");
}

static int relay_sending(lg_t *lg)
{
    return lg->scenario == SC_RELAY && lg->phase == 2;
}

/* The relay window: signals of c not yet received by its partner. */
static int can_send(conn_t *c)
{
    lg_t *lg = c->lg;
    if (!relay_sending(lg) || c->setup_done != 1 || c->peer->setup_done != 1)
        return 0;
    if (c->sent - c->peer->recv >= (uint64_t)lg->window)
        return 0;
    if (lg->rate > 0) {
        /* Each end has its own phase so that sends spread evenly instead of all ends
         * sending in the same millisecond. */
        double per_conn = lg->rate / (2.0 * lg->active_pairs);
        double due =
            (double)(now_ns() - lg->t_go) / 1e9 * per_conn + (double)c->idx / (double)lg->nconns;
        if ((double)c->sent >= due)
            return 0;
    }
    return 1;
}

static int on_writable(conn_t *c)
{
    lg_t *lg = c->lg;
    c->wr_pending = 0;
    if (c->nctl) {
        char *buf = c->ctl[0];
        size_t len = c->ctl_len[0];
        memmove(c->ctl, c->ctl + 1, sizeof c->ctl[0] * (size_t)(c->nctl - 1));
        memmove(c->ctl_len, c->ctl_len + 1, sizeof c->ctl_len[0] * (size_t)(c->nctl - 1));
        c->nctl--;
        int rc = lws_write(c->wsi, (unsigned char *)buf + LWS_PRE, len, LWS_WRITE_TEXT);
        free(buf);
        if (rc < 0)
            return -1;
        if (c->nctl || can_send(c))
            want_write(c);
        return 0;
    }
    if (!can_send(c)) {
        if (relay_sending(lg) && c->setup_done == 1 &&
            c->sent - c->peer->recv >= (uint64_t)lg->window)
            c->blocked = 1;
        return 0;
    }
    unsigned char buf[LWS_PRE + 256 + 65536];
    char *p = (char *)buf + LWS_PRE;
    size_t cap = sizeof buf - LWS_PRE;
    int n = snprintf(p, cap,
                     "{\"type\":\"signal\",\"to\":\"%s\",\"data\":{\"ts\":%" PRId64
                     ",\"n\":%" PRIu64 ",\"pad\":\"%s\"}}",
                     lg->echo ? "echo" : c->peer->id, now_ns(), c->sent, lg->pad);
    if (n < 0 || (size_t)n >= cap)
        return -1;
    if (lws_write(c->wsi, (unsigned char *)p, (size_t)n, LWS_WRITE_TEXT) < 0)
        return -1;
    c->sent++;
    if (can_send(c))
        want_write(c);
    else if (c->sent - c->peer->recv >= (uint64_t)lg->window)
        c->blocked = 1; /* the partner's next receipt asks for WRITEABLE again */
    return 0;
}

/* ---- receiving ---------------------------------------------------------------------------- */

static void setup_progress(lg_t *lg, conn_t *c, int ok);
static int pair_ready(conn_t *c);
static void pair_check(conn_t *c);
static void churn_step(conn_t *c);
static void kill9_left(conn_t *c);

static void on_signal(conn_t *c, const char *buf, size_t len)
{
    lg_t *lg = c->lg;
    int64_t now = now_ns();
    c->recv++;
    const char *ts = memmem(buf, len, "\"ts\":", 5);
    if (ts && lg->phase == 2) {
        int64_t t = strtoll(ts + 5, NULL, 10);
        if (t >= lg->t_win0 && now <= lg->t_win1) {
            lat_add(&lg->lat, now - t);
            lg->win_msgs++;
        }
    }
    conn_t *sender = c->peer;
    if (sender->blocked && can_send(sender)) {
        sender->blocked = 0;
        want_write(sender);
    }
}

static void on_op_done(conn_t *c, op_t op)
{
    lg_t *lg = c->lg;
    if (c->op != op)
        return;
    int64_t now = now_ns();
    if (lg->scenario == SC_CHURN && lg->phase == 2 && c->t_op >= lg->t_win0 && now <= lg->t_win1) {
        lat_add(&lg->lat_op[op], now - c->t_op);
        lg->ops[op]++;
    }
    c->op = OP_NONE;
}

static void handle_text(conn_t *c, const char *buf, size_t len)
{
    lg_t *lg = c->lg;
    if (len > 17 && memcmp(buf, "{\"type\":\"signal\",", 17) == 0) {
        on_signal(c, buf, len);
        return;
    }
    if (lg->echo) {
        if (lg->ping_first && lg->phase == 0 && len >= 14 &&
            memcmp(buf, "{\"type\":\"ping\"", 14) == 0)
            setup_progress(lg, c, 1);
        else
            count_error(lg, "unexpected-echo");
        return;
    }
    json_t *m = json_loadb(buf, len, 0, NULL);
    const char *type = m ? json_string_value(json_object_get(m, "type")) : NULL;
    if (!type) {
        count_error(lg, "bad-json-from-server");
        json_decref(m);
        return;
    }
    if (strcmp(type, "welcome") == 0) {
        const char *id = json_string_value(json_object_get(m, "id"));
        snprintf(c->id, sizeof c->id, "%s", id ? id : "");
        c->st = CS_OPEN;
        if (lg->join && lg->phase == 0)
            send_join(c);
        else if (lg->ping_first && lg->phase == 0)
            send_ctl(c, "{\"type\":\"ping\"}");
        else
            setup_progress(lg, c, 1);
    } else if (strcmp(type, "joined") == 0) {
        c->st = CS_JOINED;
        json_t *peers = json_object_get(m, "peers"), *p;
        size_t i;
        json_array_foreach(peers, i, p)
        {
            const char *pid = json_string_value(json_object_get(p, "id"));
            if (pid && c->peer != c && strcmp(pid, c->peer->id) == 0)
                c->knows_peer = 1;
        }
        on_op_done(c, OP_JOIN);
        if (lg->phase == 0)
            setup_progress(lg, c, 1);
        pair_check(c);
        pair_check(c->peer);
    } else if (strcmp(type, "peer-joined") == 0) {
        const char *pid = json_string_value(json_object_get(m, "id"));
        if (pid && c->peer != c && strcmp(pid, c->peer->id) == 0) {
            c->knows_peer = 1;
            pair_check(c);
        }
    } else if (strcmp(type, "pong") == 0) {
        if (lg->ping_first && lg->phase == 0)
            setup_progress(lg, c, 1);
    } else if (strcmp(type, "link-ack") == 0) {
        c->link_acked = 1;
        on_op_done(c, OP_LINK);
        if (lg->scenario == SC_CONNECT) {
            lg->links_acked++;
            pair_check(c);
        } else {
            churn_step(c);
        }
    } else if (strcmp(type, "link-state") == 0) {
        const char *state = json_string_value(json_object_get(m, "state"));
        if (state && strcmp(state, "up") == 0)
            lg->links_up++;
    } else if (strcmp(type, "left") == 0) {
        c->st = CS_OPEN;
        on_op_done(c, OP_LEAVE);
        churn_step(c);
    } else if (strcmp(type, "peer-left") == 0) {
        const char *pid = json_string_value(json_object_get(m, "id"));
        const char *reason = json_string_value(json_object_get(m, "reason"));
        if (pid && c->peer != c && strcmp(pid, c->peer->id) == 0) {
            c->knows_peer = 0;
            if (!c->t_left && (lg->scenario == SC_RESET || lg->scenario == SC_KILL9)) {
                c->t_left = now_ns();
                c->left_expired = reason && strcmp(reason, "expired") == 0;
                kill9_left(c);
            }
        }
    } else if (strcmp(type, "error") == 0) {
        const char *code = json_string_value(json_object_get(m, "code"));
        count_error(lg, code ? code : "?");
        if (lg->errors <= 5)
            warnx("conn %d: error %.*s", c->idx, (int)len, buf);
        op_t op = c->op;
        if (op != OP_NONE) {
            lg->op_errors++;
            c->op = OP_NONE;
        }
        if (c->st == CS_JOINING) {
            c->st = CS_OPEN;
            if (lg->phase == 0)
                setup_progress(lg, c, 0);
        } else if (c->st == CS_LEAVING) {
            c->st = code && strcmp(code, "not-joined") == 0 ? CS_OPEN : CS_JOINED;
        }
        if (op == OP_LINK)
            c->link_acked = 1; /* counted as an error; the cycle goes on */
        churn_step(c);
    }
    json_decref(m);
}

/* Reassembles a message from lws pieces; hands complete ones to handle_text. */
static int on_receive(conn_t *c, struct lws *wsi, const char *in, size_t len)
{
    int final = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;
    if (final && c->rxlen == 0) {
        handle_text(c, in, len);
        return 0;
    }
    if (c->rxlen + len > c->rxcap) {
        size_t cap = c->rxcap ? c->rxcap : 4096;
        while (cap < c->rxlen + len)
            cap *= 2;
        char *rx = realloc(c->rx, cap);
        if (!rx)
            return -1;
        c->rx = rx;
        c->rxcap = cap;
    }
    memcpy(c->rx + c->rxlen, in, len);
    c->rxlen += len;
    if (final) {
        size_t total = c->rxlen;
        c->rxlen = 0;
        handle_text(c, c->rx, total);
    }
    return 0;
}

/* ---- the raw client (only for the end that is reset) -------------------------------------- */

typedef struct {
    uv_write_t req;
    char data[];
} wreq_t;

static void on_raw_written(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void raw_send(rawc_t *r, int opcode, const char *data, size_t len)
{
    if (r->closing)
        return;
    wreq_t *w = malloc(sizeof *w + 14 + len);
    if (!w)
        return;
    unsigned char *f = (unsigned char *)w->data;
    size_t h = 0;
    f[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        f[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        f[h++] = 0x80 | 126;
        f[h++] = (unsigned char)(len >> 8);
        f[h++] = (unsigned char)len;
    } else {
        f[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            f[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    unsigned char mask[4];
    for (int i = 0; i < 4; i++)
        mask[i] = (unsigned char)random();
    memcpy(f + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        f[h + i] = (unsigned char)data[i] ^ mask[i & 3];
    uv_buf_t b = uv_buf_init((char *)f, (unsigned)(h + len));
    if (uv_write(&w->req, (uv_stream_t *)&r->tcp, &b, 1, on_raw_written) != 0)
        free(w);
}

static void on_raw_closed(uv_handle_t *h)
{
    rawc_t *r = h->data;
    free(r->in);
    free(r->msg);
    free(r);
}

static void raw_close(rawc_t *r, int reset)
{
    if (r->closing)
        return;
    r->closing = 1;
    conn_t *c = r->c;
    if (c) {
        c->raw = NULL;
        if (c->st != CS_FAILED)
            c->st = CS_CLOSED;
    }
    uv_read_stop((uv_stream_t *)&r->tcp);
    if (reset && uv_tcp_close_reset(&r->tcp, on_raw_closed) == 0)
        return;
    uv_close((uv_handle_t *)&r->tcp, on_raw_closed);
}

static void on_raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    rawc_t *r = h->data;
    lg_t *lg = r->c ? r->c->lg : NULL;
    static char spare[4096];
    if (lg)
        *buf = uv_buf_init(lg->rawbuf, sizeof lg->rawbuf);
    else
        *buf = uv_buf_init(spare, sizeof spare);
}

static void raw_frames(rawc_t *r)
{
    conn_t *c = r->c;
    size_t off = 0;
    while (c && r->inlen - off >= 2) {
        unsigned char *f = (unsigned char *)r->in + off;
        size_t avail = r->inlen - off, h = 2;
        uint64_t plen = f[1] & 0x7f;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = ((uint64_t)f[2] << 8) | f[3];
            h = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | f[2 + i];
            h = 10;
        }
        if (f[1] & 0x80)
            h += 4; /* servers do not mask; tolerated */
        if (avail < h + plen)
            break;
        int opcode = f[0] & 0x0f, fin = f[0] & 0x80;
        const char *payload = (const char *)f + h;
        if (opcode == 1 || opcode == 0) {
            if (r->msglen + plen > r->msgcap) {
                size_t cap = r->msgcap ? r->msgcap : 4096;
                while (cap < r->msglen + plen)
                    cap *= 2;
                char *m = realloc(r->msg, cap);
                if (!m)
                    return;
                r->msg = m;
                r->msgcap = cap;
            }
            memcpy(r->msg + r->msglen, payload, plen);
            r->msglen += plen;
            if (fin) {
                size_t total = r->msglen;
                r->msglen = 0;
                handle_text(c, r->msg, total);
            }
        } else if (opcode == 9) {
            raw_send(r, 0xA, payload, plen);
        } else if (opcode == 8) {
            off += h + plen;
            raw_close(r, 0);
            return;
        }
        off += h + plen;
        c = r->c;
    }
    memmove(r->in, r->in + off, r->inlen - off);
    r->inlen -= off;
}

static void on_raw_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    rawc_t *r = s->data;
    if (nread < 0) {
        if (r->c && r->c->st < CS_OPEN && r->c->lg->phase == 0)
            setup_progress(r->c->lg, r->c, 0);
        else if (r->c && !r->c->lg->stopping && !r->c->t_reset)
            r->c->lg->unexpected_closes++;
        raw_close(r, 0);
        return;
    }
    if (nread == 0)
        return;
    if (r->inlen + (size_t)nread > r->incap) {
        size_t cap = r->incap ? r->incap : 8192;
        while (cap < r->inlen + (size_t)nread)
            cap *= 2;
        char *in = realloc(r->in, cap);
        if (!in) {
            raw_close(r, 0);
            return;
        }
        r->in = in;
        r->incap = cap;
    }
    memcpy(r->in + r->inlen, buf->base, (size_t)nread);
    r->inlen += (size_t)nread;
    if (!r->upgraded) {
        char *end = memmem(r->in, r->inlen, "\r\n\r\n", 4);
        if (!end)
            return;
        if (r->inlen < 12 || memcmp(r->in, "HTTP/1.1 101", 12) != 0) {
            warnx("raw conn %d: upgrade refused", r->c->idx);
            setup_progress(r->c->lg, r->c, 0);
            raw_close(r, 0);
            return;
        }
        size_t hl = (size_t)(end + 4 - r->in);
        memmove(r->in, r->in + hl, r->inlen - hl);
        r->inlen -= hl;
        r->upgraded = 1;
        r->c->st = CS_UPGRADED;
    }
    raw_frames(r);
}

static void on_raw_connect(uv_connect_t *req, int status)
{
    rawc_t *r = req->data;
    conn_t *c = r->c;
    if (status < 0 || !c) {
        if (c) {
            warnx("raw conn %d: connect: %s", c->idx, uv_strerror(status));
            setup_progress(c->lg, c, 0);
        }
        raw_close(r, 0);
        return;
    }
    url_t *u = &c->lg->urls[c->url];
    char hs[512];
    int n = snprintf(hs, sizeof hs,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: switchboard.v1\r\n\r\n",
                     u->path, u->host, u->port);
    wreq_t *w = malloc(sizeof *w + (size_t)n);
    if (!w) {
        raw_close(r, 0);
        return;
    }
    memcpy(w->data, hs, (size_t)n);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&r->tcp, &b, 1, on_raw_written) != 0)
        free(w);
    uv_read_start((uv_stream_t *)&r->tcp, on_raw_alloc, on_raw_read);
}

static int raw_connect(conn_t *c)
{
    lg_t *lg = c->lg;
    rawc_t *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->c = c;
    c->raw = r;
    uv_tcp_init(lg->loop, &r->tcp);
    r->tcp.data = r;
    r->creq.data = r;
    struct sockaddr_in src, dst;
    int rc = 0;
    if (lg->nsrcs) {
        uv_ip4_addr(lg->srcs[c->src], 0, &src);
        rc = uv_tcp_bind(&r->tcp, (const struct sockaddr *)&src, 0);
    }
    if (rc == 0) {
        uv_ip4_addr(lg->urls[c->url].host, lg->urls[c->url].port, &dst);
        rc = uv_tcp_connect(&r->creq, &r->tcp, (const struct sockaddr *)&dst, on_raw_connect);
    }
    if (rc != 0) {
        warnx("raw conn %d: %s", c->idx, uv_strerror(rc));
        c->raw = NULL;
        r->c = NULL;
        r->closing = 1;
        uv_close((uv_handle_t *)&r->tcp, on_raw_closed);
        return -1;
    }
    return 0;
}

/* ---- the lws client ----------------------------------------------------------------------- */

static void on_closed(conn_t *c, int failed)
{
    lg_t *lg = c->lg;
    c->wsi = NULL;
    c->wr_pending = 0;
    for (int i = 0; i < c->nctl; i++)
        free(c->ctl[i]);
    c->nctl = 0;
    if (c->st == CS_CLOSED || c->st == CS_FAILED)
        return;
    int in_setup = !c->setup_done && lg->phase == 0;
    c->st = failed ? CS_FAILED : CS_CLOSED;
    if (in_setup) {
        setup_progress(lg, c, 0);
        return;
    }
    if (lg->stopping)
        return;
    if (lg->scenario == SC_KILL9) {
        if (!lg->t_kill)
            lg->t_kill = now_ns();
        return;
    }
    lg->unexpected_closes++;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    (void)user;
    conn_t *c = lws_get_opaque_user_data(wsi);
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (c) {
            if (c->lg->failed < 5)
                warnx("conn %d: connection error: %s", c->idx, in ? (const char *)in : "?");
            on_closed(c, 1);
        }
        break;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (!c)
            return -1;
        c->st = CS_UPGRADED;
        if (c->lg->echo) {
            c->st = CS_OPEN;
            if (c->lg->ping_first)
                send_ctl(c, "{\"type\":\"ping\"}");
            else
                setup_progress(c->lg, c, 1);
        }
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (!c)
            return -1;
        return on_receive(c, wsi, in, len);
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (!c || c->lg->stopping)
            return 0;
        return on_writable(c);
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (c)
            on_closed(c, 0);
        break;
    case LWS_CALLBACK_WSI_DESTROY:
        if (c && c->wsi == wsi)
            on_closed(c, 1);
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"switchboard.v1", callback, 0, 4096, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static int start_conn(lg_t *lg, conn_t *c)
{
    c->st = CS_CONNECTING;
    c->t_begin = now_ns();
    if (lg->scenario == SC_RESET && (c->idx & 1) == 0)
        return raw_connect(c);
    url_t *u = &lg->urls[c->url];
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = lg->ctx;
    ci.address = u->host;
    ci.port = u->port;
    ci.path = u->path;
    ci.host = u->host;
    ci.origin = u->host;
    ci.protocol = "switchboard.v1";
    ci.iface = lg->nsrcs ? lg->srcs[c->src] : NULL;
    ci.opaque_user_data = c;
    ci.pwsi = &c->wsi;
    if (!lws_client_connect_via_info(&ci)) {
        if (c->st == CS_CONNECTING)
            on_closed(c, 1);
        return -1;
    }
    return 0;
}

/* ---- phases ------------------------------------------------------------------------------- */

static void finish(lg_t *lg);
static void start_running(lg_t *lg);
static void pairing_deadline(uv_timer_t *t);

static void on_tick(uv_timer_t *t)
{
    lg_t *lg = t->data;
    if (lg->phase == 0) {
        while (lg->started < lg->nconns &&
               lg->started - (lg->done + lg->failed) < lg->concurrency) {
            conn_t *c = &lg->conns[lg->started++];
            start_conn(lg, c);
        }
    } else if (lg->phase == 2 && lg->scenario == SC_RELAY && lg->rate > 0) {
        for (int i = 0; i < lg->nconns; i++) {
            conn_t *c = &lg->conns[i];
            if (c->wsi && !c->wr_pending && can_send(c))
                want_write(c);
        }
    } else if (lg->phase == 2 && lg->scenario == SC_RESET) {
        int64_t now = now_ns();
        double due = (double)(now - lg->t_go) / 1e9 * (lg->rate > 0 ? lg->rate : 100);
        while (lg->next_reset < lg->nconns && lg->resets_done < due) {
            conn_t *a = &lg->conns[lg->next_reset];
            lg->next_reset += 2;
            if (a->raw && pair_ready(a)) {
                a->t_reset = now_ns();
                raw_close(a->raw, 1);
                lg->resets_done++;
                lg->peer_left_expected++;
            }
        }
        if (lg->next_reset >= lg->nconns && !lg->t_win1) {
            lg->t_win1 = now; /* last reset: wait for the stragglers */
        }
        if ((lg->t_win1 && lg->peer_left_seen >= lg->peer_left_expected) ||
            (lg->t_win1 && now - lg->t_win1 > (int64_t)(lg->timeout_s * 1e9)))
            finish(lg);
    } else if (lg->phase == 2 && lg->scenario == SC_KILL9) {
        int64_t now = now_ns();
        if (lg->t_kill && (lg->peer_left_seen >= lg->peer_left_expected ||
                           now - lg->t_kill > (int64_t)(lg->timeout_s * 1e9)))
            finish(lg);
    }
}

/* Called once per connection when its setup ends (ok or not): setup_done 1 or -1. */
static void setup_progress(lg_t *lg, conn_t *c, int ok)
{
    if (c->setup_done != 0 || lg->phase != 0)
        return;
    if (ok) {
        c->setup_done = 1;
        lg->done++;
        lat_add(&lg->lat_setup, now_ns() - c->t_begin);
    } else {
        c->setup_done = -1;
        c->st = CS_FAILED;
        lg->failed++;
    }
    if (lg->done + lg->failed < lg->nconns)
        return;
    lg->t_setup1 = now_ns();
    double secs = (double)(lg->t_setup1 - lg->t_setup0) / 1e9;
    json_t *o = base_json(lg, "setup");
    json_object_set_new(o, "ok", json_integer(lg->done));
    json_object_set_new(o, "failed", json_integer(lg->failed));
    json_object_set_new(o, "seconds", json_real(secs));
    json_object_set_new(o, "per_s", json_real(secs > 0 ? lg->done / secs : 0));
    json_object_set_new(o, "joined", json_boolean(lg->join));
    lat_json(o, "setup", &lg->lat_setup);
    emit(o);
    lg->phase = 1;
    lg->t_phase = now_ns();
    if (lg->scenario == SC_CONNECT && lg->link)
        lg->t_link0 = now_ns();
    /* Pairing: wait until both ends of each pair know each other (checked as messages come,
     * and here for pairs that already do), with a deadline. */
    lg->link_go = !lg->link_on_usr1;
    if (lg->link_go)
        uv_timer_start(&lg->phase_timer, pairing_deadline, (uint64_t)(lg->timeout_s * 1000), 0);
    if ((lg->scenario == SC_CONNECT && !lg->link) || lg->echo || lg->scenario == SC_CHURN) {
        start_running(lg);
        return;
    }
    for (int i = 0; i < lg->nconns && lg->phase == 1; i++)
        pair_check(&lg->conns[i]);
}

static int pair_ready(conn_t *c)
{
    conn_t *p = c->peer;
    if (c->setup_done != 1 || p->setup_done != 1)
        return 0;
    if (c->lg->echo)
        return 1;
    return c->st == CS_JOINED && p->st == CS_JOINED && c->knows_peer && p->knows_peer;
}

static int all_pairs_ready(lg_t *lg)
{
    for (int i = 0; i < lg->nconns; i += 2) {
        conn_t *c = &lg->conns[i];
        if (c->setup_done == 1 && c->peer->setup_done == 1 && !pair_ready(c))
            return 0;
    }
    return 1;
}

/* Something changed for c in setup/pairing or churn: move on when possible. */
static void pair_check(conn_t *c)
{
    lg_t *lg = c->lg;
    if (lg->phase == 1 && lg->scenario == SC_CONNECT && lg->link) {
        if (!lg->link_go)
            return;
        if (pair_ready(c) && !c->link_sent) {
            send_link(c);
            lg->links_sent++;
        }
        if (lg->links_acked > 0 && lg->links_acked == lg->links_sent && all_pairs_ready(lg)) {
            int all_sent = 1;
            for (int i = 0; i < lg->nconns && all_sent; i++)
                if (lg->conns[i].setup_done == 1 && lg->conns[i].peer->setup_done == 1 &&
                    !lg->conns[i].link_sent)
                    all_sent = 0;
            if (all_sent) {
                double secs = (double)(now_ns() - lg->t_link0) / 1e9;
                json_t *o = base_json(lg, "linked");
                json_object_set_new(o, "link_requests", json_integer(lg->links_sent));
                json_object_set_new(o, "links_up_events", json_integer(lg->links_up));
                json_object_set_new(o, "seconds", json_real(secs));
                emit(o);
                start_running(lg);
            }
        }
        return;
    }
    if (lg->phase == 1 && lg->scenario != SC_CONNECT && lg->scenario != SC_CHURN &&
        all_pairs_ready(lg))
        start_running(lg);
    if (lg->phase == 2 && lg->scenario == SC_CHURN)
        churn_step(c);
}

static void pairing_deadline(uv_timer_t *t)
{
    lg_t *lg = t->data;
    if (lg->phase != 1)
        return;
    int ready = 0;
    for (int i = 0; i < lg->nconns; i += 2)
        ready += pair_ready(&lg->conns[i]);
    warnx("pairing deadline: %d pairs ready of %d; going on with those", ready, lg->nconns / 2);
    start_running(lg);
}

static void on_phase_end(uv_timer_t *t);

static void start_running(lg_t *lg)
{
    if (lg->phase != 1)
        return;
    lg->phase = 2;
    uv_timer_stop(&lg->phase_timer);
    lg->t_go = now_ns();
    lg->active_pairs = 0;
    for (int i = 0; i < lg->nconns; i += 2)
        if (pair_ready(&lg->conns[i]) || lg->scenario == SC_CHURN)
            lg->active_pairs++;
    if (lg->active_pairs == 0)
        lg->active_pairs = 1;
    json_t *o = base_json(lg, "ready");
    json_object_set_new(o, "pairs", json_integer(lg->active_pairs));
    emit(o);
    switch (lg->scenario) {
    case SC_CONNECT:
        uv_timer_stop(&lg->tick); /* nothing to pace while holding */
        if (lg->hold_s > 0)
            uv_timer_start(&lg->phase_timer, on_phase_end, (uint64_t)(lg->hold_s * 1000), 0);
        break;
    case SC_RELAY:
    case SC_CHURN:
        lg->t_win0 = lg->t_go + (int64_t)(lg->warmup_s * 1e9);
        lg->t_win1 = lg->t_win0 + (int64_t)(lg->seconds * 1e9);
        uv_timer_start(&lg->phase_timer, on_phase_end,
                       (uint64_t)((lg->warmup_s + lg->seconds) * 1000), 0);
        for (int i = 0; i < lg->nconns; i++) {
            conn_t *c = &lg->conns[i];
            if (lg->scenario == SC_RELAY) {
                if (pair_ready(c))
                    want_write(c);
            } else if (c->setup_done == 1 && c->peer->setup_done == 1 && (i & 1) == 0) {
                send_join(c);
                send_join(c->peer);
            }
        }
        break;
    case SC_RESET:
        lg->t_win1 = 0;
        break;
    case SC_KILL9:
        for (int i = 1; i < lg->nconns; i += 2)
            if (pair_ready(&lg->conns[i]))
                lg->peer_left_expected++;
        break;
    }
}

/* Churn: one pair moves join -> link -> leave -> join ... when both ends finished a step. */
static void churn_step(conn_t *c)
{
    lg_t *lg = c->lg;
    if (lg->scenario != SC_CHURN || lg->phase != 2)
        return;
    conn_t *a = c->idx & 1 ? c->peer : c, *b = a->peer;
    if (a->op != OP_NONE || b->op != OP_NONE || !a->wsi || !b->wsi)
        return;
    if (a->st == CS_JOINED && b->st == CS_JOINED) {
        if (!a->link_acked || !b->link_acked) {
            if (a->knows_peer && b->knows_peer && !a->link_sent && !b->link_sent) {
                send_link(a);
                send_link(b);
            }
            return;
        }
        a->link_sent = a->link_acked = b->link_sent = b->link_acked = 0;
        send_leave(a);
        send_leave(b);
    } else if (a->st == CS_OPEN && b->st == CS_OPEN) {
        if (now_ns() < lg->t_win1) {
            send_join(a);
            send_join(b);
        }
    } else if (a->st == CS_OPEN || b->st == CS_OPEN) {
        /* Only after an error: the end that is out of the room joins again. */
        if (now_ns() < lg->t_win1)
            send_join(a->st == CS_OPEN ? a : b);
    }
}

static void kill9_left(conn_t *c)
{
    lg_t *lg = c->lg;
    if (lg->phase != 2)
        return;
    int64_t t0 = 0;
    if (lg->scenario == SC_RESET)
        t0 = c->peer->t_reset;
    else if (lg->scenario == SC_KILL9)
        t0 = lg->t_kill;
    if (!t0)
        return;
    lat_add(&lg->lat, c->t_left - t0);
    lg->peer_left_seen++;
}

static void on_phase_end(uv_timer_t *t)
{
    finish(t->data);
}

/* ---- the end ------------------------------------------------------------------------------ */

static void stop_all(lg_t *lg)
{
    if (lg->stopping)
        return;
    lg->stopping = 1;
    uv_timer_stop(&lg->tick);
    uv_timer_stop(&lg->phase_timer);
    uv_close((uv_handle_t *)&lg->tick, NULL);
    uv_close((uv_handle_t *)&lg->phase_timer, NULL);
    uv_close((uv_handle_t *)&lg->sigint, NULL);
    uv_close((uv_handle_t *)&lg->sigterm, NULL);
    uv_close((uv_handle_t *)&lg->sigusr1, NULL);
    for (int i = 0; i < lg->nconns; i++)
        if (lg->conns[i].raw)
            raw_close(lg->conns[i].raw, 0);
    if (lg->ctx) {
        lws_context_destroy(lg->ctx);
        lg->ctx = NULL;
    }
}

static void finish(lg_t *lg)
{
    if (lg->phase == 3 || lg->stopping)
        return;
    int phase = lg->phase;
    lg->phase = 3;
    json_t *o = base_json(lg, "result");
    json_object_set_new(o, "reached_phase", json_integer(phase));
    json_object_set_new(o, "errors", json_integer((json_int_t)lg->errors));
    json_object_set_new(o, "error_codes", json_incref(lg->error_codes));
    json_object_set_new(o, "unexpected_closes", json_integer(lg->unexpected_closes));
    json_object_set_new(o, "pairs", json_integer(lg->active_pairs));
    switch (lg->scenario) {
    case SC_CONNECT: {
        int open = 0;
        for (int i = 0; i < lg->nconns; i++)
            open += lg->conns[i].wsi != NULL;
        json_object_set_new(o, "open_at_end", json_integer(open));
        break;
    }
    case SC_RELAY: {
        uint64_t sent = 0, recv = 0;
        for (int i = 0; i < lg->nconns; i++) {
            sent += lg->conns[i].sent;
            recv += lg->conns[i].recv;
        }
        json_object_set_new(o, "mode", json_string(lg->rate > 0 ? "rate" : "flat"));
        json_object_set_new(o, "rate_target", json_real(lg->rate));
        json_object_set_new(o, "window", json_integer(lg->window));
        json_object_set_new(o, "payload", json_integer(lg->payload));
        json_object_set_new(o, "seconds", json_real(lg->seconds));
        json_object_set_new(o, "msgs", json_integer((json_int_t)lg->win_msgs));
        json_object_set_new(o, "msgs_per_s", json_real((double)lg->win_msgs / lg->seconds));
        json_object_set_new(o, "sent_total", json_integer((json_int_t)sent));
        json_object_set_new(o, "received_total", json_integer((json_int_t)recv));
        lat_json(o, "lat", &lg->lat);
        break;
    }
    case SC_CHURN: {
        uint64_t total = 0;
        for (int k = OP_JOIN; k < OP__COUNT; k++) {
            char key[32];
            total += lg->ops[k];
            snprintf(key, sizeof key, "%s_per_s", op_names[k]);
            json_object_set_new(o, key, json_real((double)lg->ops[k] / lg->seconds));
            lat_json(o, op_names[k], &lg->lat_op[k]);
        }
        json_object_set_new(o, "seconds", json_real(lg->seconds));
        json_object_set_new(o, "ops", json_integer((json_int_t)total));
        json_object_set_new(o, "ops_per_s", json_real((double)total / lg->seconds));
        json_object_set_new(o, "op_errors", json_integer((json_int_t)lg->op_errors));
        break;
    }
    case SC_RESET:
    case SC_KILL9: {
        int expired = 0;
        for (int i = 1; i < lg->nconns; i += 2)
            expired += lg->conns[i].t_left && lg->conns[i].left_expired;
        json_object_set_new(o, "expected", json_integer(lg->peer_left_expected));
        json_object_set_new(o, "notified", json_integer(lg->peer_left_seen));
        json_object_set_new(o, "reason_expired", json_integer(expired));
        json_object_set_new(o, "missing",
                            json_integer(lg->peer_left_expected - lg->peer_left_seen));
        lat_json(o, "lat", &lg->lat);
        break;
    }
    }
    emit(o);
    stop_all(lg);
}

/* SIGUSR1: the link phase may start (the caller measured the joined state meanwhile). */
static void on_usr1(uv_signal_t *h, int signum)
{
    (void)signum;
    lg_t *lg = h->data;
    if (lg->link_go || lg->phase != 1)
        return;
    lg->link_go = 1;
    lg->t_link0 = now_ns();
    uv_timer_start(&lg->phase_timer, pairing_deadline, (uint64_t)(lg->timeout_s * 1000), 0);
    for (int i = 0; i < lg->nconns && lg->phase == 1; i++)
        pair_check(&lg->conns[i]);
}

static void on_signal_stop(uv_signal_t *h, int signum)
{
    (void)signum;
    lg_t *lg = h->data;
    if (lg->phase < 3)
        finish(lg);
    else
        stop_all(lg);
}

/* ---- options ------------------------------------------------------------------------------ */

static int parse_url(const char *s, url_t *u)
{
    const char *p = s;
    if (strncmp(p, "ws://", 5) == 0)
        p += 5;
    const char *colon = strchr(p, ':'), *slash = strchr(p, '/');
    if (!colon || (slash && slash < colon) || (size_t)(colon - p) >= sizeof u->host)
        return -1;
    memcpy(u->host, p, (size_t)(colon - p));
    u->host[colon - p] = '\0';
    u->port = atoi(colon + 1);
    snprintf(u->path, sizeof u->path, "%s", slash ? slash : "/ws");
    return u->port > 0 && u->port < 65536 ? 0 : -1;
}

static void usage(void)
{
    fputs("Usage: loadgen --scenario connect|relay|churn|reset|kill9 --url ws://H:P/ws "
          "[--url ...]\n"
          "  --src 127.0.0.2,127.0.0.3   source addresses (round robin over connections)\n"
          "  --conns N                   connections (even; pairs are 2i, 2i+1)\n"
          "  --room-size K               members per room (even, default 2)\n"
          "  --room-prefix S             room names S-<n> (unique per process)\n"
          "  --concurrency N             connects + joins in flight (default 200)\n"
          "  --no-join                   connect: do not join (echo server)\n"
          "  --link                      connect: link each pair after joining\n"
          "  --link-on-usr1              connect: link only after SIGUSR1\n"
          "  --ping-first                connect without join: one ping (echo: one message)\n"
          "  --echo                      the server is the bare echo server\n"
          "  --cross                     pair ends on the first two URLs (across nodes)\n"
          "  --hold S                    connect: hold idle S seconds (0: until SIGTERM)\n"
          "  --seconds S --warmup S      relay/churn: measured window and warm-up\n"
          "  --rate R                    relay: msgs/s in total (0: flat out); reset: per s\n"
          "  --window W                  relay: signals in flight per direction (default 8)\n"
          "  --payload B                 relay: padding bytes in each signal (default 100)\n"
          "  --timeout S                 pairing / notification deadline (default 30)\n",
          stderr);
}

int main(int argc, char **argv)
{
    static lg_t lgs;
    lg_t *lg = &lgs;
    lg->scenario = SC_CONNECT;
    lg->room_size = 2;
    lg->concurrency = 200;
    lg->join = 1;
    lg->window = 8;
    lg->payload = 100;
    lg->seconds = 10;
    lg->warmup_s = 2;
    lg->timeout_s = 30;
    snprintf(lg->room_prefix, sizeof lg->room_prefix, "lg%d", (int)getpid());
    static const struct option opts[] = {{"scenario", required_argument, 0, 's'},
                                         {"url", required_argument, 0, 'u'},
                                         {"src", required_argument, 0, 'S'},
                                         {"conns", required_argument, 0, 'n'},
                                         {"room-size", required_argument, 0, 'k'},
                                         {"room-prefix", required_argument, 0, 'p'},
                                         {"concurrency", required_argument, 0, 'c'},
                                         {"no-join", no_argument, 0, 'J'},
                                         {"link", no_argument, 0, 'L'},
                                         {"echo", no_argument, 0, 'E'},
                                         {"cross", no_argument, 0, 'X'},
                                         {"hold", required_argument, 0, 'H'},
                                         {"seconds", required_argument, 0, 't'},
                                         {"warmup", required_argument, 0, 'w'},
                                         {"rate", required_argument, 0, 'r'},
                                         {"window", required_argument, 0, 'W'},
                                         {"payload", required_argument, 0, 'P'},
                                         {"timeout", required_argument, 0, 'T'},
                                         {"link-on-usr1", no_argument, 0, 'U'},
                                         {"ping-first", no_argument, 0, 'G'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 's':
            if (strcmp(optarg, "connect") == 0)
                lg->scenario = SC_CONNECT;
            else if (strcmp(optarg, "relay") == 0)
                lg->scenario = SC_RELAY;
            else if (strcmp(optarg, "churn") == 0)
                lg->scenario = SC_CHURN;
            else if (strcmp(optarg, "reset") == 0)
                lg->scenario = SC_RESET;
            else if (strcmp(optarg, "kill9") == 0)
                lg->scenario = SC_KILL9;
            else {
                warnx("--scenario: unknown '%s'", optarg);
                return 2;
            }
            break;
        case 'u':
            if (lg->nurls == MAX_URLS || parse_url(optarg, &lg->urls[lg->nurls]) != 0) {
                warnx("--url: bad or too many: '%s'", optarg);
                return 2;
            }
            lg->nurls++;
            break;
        case 'S': {
            char *copy = strdup(optarg), *save = NULL;
            for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (lg->nsrcs == MAX_SRCS || strncmp(t, "127.", 4) != 0) {
                    warnx("--src: loopback addresses only, at most %d", MAX_SRCS);
                    return 2;
                }
                snprintf(lg->srcs[lg->nsrcs++], sizeof lg->srcs[0], "%s", t);
            }
            free(copy);
            break;
        }
        case 'n':
            lg->nconns = atoi(optarg);
            break;
        case 'k':
            lg->room_size = atoi(optarg);
            break;
        case 'p':
            snprintf(lg->room_prefix, sizeof lg->room_prefix, "%s", optarg);
            break;
        case 'c':
            lg->concurrency = atoi(optarg);
            break;
        case 'J':
            lg->join = 0;
            break;
        case 'L':
            lg->link = 1;
            break;
        case 'E':
            lg->echo = 1;
            lg->join = 0;
            break;
        case 'X':
            lg->cross = 1;
            break;
        case 'H':
            lg->hold_s = atof(optarg);
            break;
        case 't':
            lg->seconds = atof(optarg);
            break;
        case 'w':
            lg->warmup_s = atof(optarg);
            break;
        case 'r':
            lg->rate = atof(optarg);
            break;
        case 'W':
            lg->window = atoi(optarg);
            break;
        case 'P':
            lg->payload = atoi(optarg);
            break;
        case 'T':
            lg->timeout_s = atof(optarg);
            break;
        case 'U':
            lg->link = 1;
            lg->link_on_usr1 = 1;
            break;
        case 'G':
            lg->ping_first = 1;
            break;
        default:
            usage();
            return o == 'h' ? 0 : 2;
        }
    }
    if (lg->nurls == 0 || lg->nconns < 2 || lg->nconns % 2 || lg->room_size < 2 ||
        lg->room_size % 2 || lg->concurrency < 1 || lg->window < 1 || lg->payload < 0 ||
        lg->payload > 65000 || lg->seconds <= 0 || (lg->cross && lg->nurls < 2) ||
        (lg->scenario == SC_KILL9 && lg->nurls < 2)) {
        usage();
        return 2;
    }
    if (lg->scenario == SC_CHURN)
        lg->join = 0; /* churn joins in its cycle */
    if (lg->scenario != SC_CONNECT && lg->scenario != SC_RELAY && lg->echo) {
        warnx("--echo: only connect and relay make sense against the echo server");
        return 2;
    }
    if (lg->scenario == SC_KILL9)
        lg->cross = 1;

    /* One process may hold at most the hard limit of open files: use all of it. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    srandom((unsigned)getpid());
    lg->pad = malloc((size_t)lg->payload + 1);
    memset(lg->pad, 'x', (size_t)lg->payload);
    lg->pad[lg->payload] = '\0';
    lg->error_codes = json_object();
    lg->conns = calloc((size_t)lg->nconns, sizeof *lg->conns);
    if (!lg->conns || !lg->pad)
        return 1;
    for (int i = 0; i < lg->nconns; i++) {
        conn_t *c = &lg->conns[i];
        c->lg = lg;
        c->idx = i;
        c->peer = lg->echo ? c : &lg->conns[i ^ 1];
        if (lg->cross)
            c->url = (i & 1) % lg->nurls;
        else
            c->url = (i / lg->room_size) % lg->nurls;
        c->src = lg->nsrcs ? i % lg->nsrcs : 0;
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    lg->loop = &loop;
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    void *foreign[] = {&loop};
    info.foreign_loops = foreign;
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DISABLE_IPV6;
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.user = lg;
    info.timeout_secs = 30;
    info.connect_timeout_secs = 30;
    lg->ctx = lws_create_context(&info);
    if (!lg->ctx) {
        warnx("cannot create the lws context");
        return 1;
    }
    uv_timer_init(&loop, &lg->tick);
    uv_timer_init(&loop, &lg->phase_timer);
    lg->tick.data = lg->phase_timer.data = lg;
    uv_signal_init(&loop, &lg->sigint);
    uv_signal_init(&loop, &lg->sigterm);
    lg->sigint.data = lg->sigterm.data = lg;
    uv_signal_start(&lg->sigint, on_signal_stop, SIGINT);
    uv_signal_start(&lg->sigterm, on_signal_stop, SIGTERM);
    uv_signal_init(&loop, &lg->sigusr1);
    lg->sigusr1.data = lg;
    uv_signal_start(&lg->sigusr1, on_usr1, SIGUSR1);
    lg->t_setup0 = now_ns();
    uv_timer_start(&lg->tick, on_tick, 0, 1);

    uv_run(&loop, UV_RUN_DEFAULT);
    uv_run(&loop, UV_RUN_DEFAULT);
    int lc = uv_loop_close(&loop);
    for (int i = 0; i < lg->nconns; i++)
        free(lg->conns[i].rx);
    free(lg->conns);
    free(lg->pad);
    free(lg->lat.v);
    free(lg->lat_setup.v);
    for (int k = 0; k < OP__COUNT; k++)
        free(lg->lat_op[k].v);
    json_decref(lg->error_codes);
    return lc == 0 ? 0 : 1;
}
