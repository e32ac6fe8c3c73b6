/* The node's own WebSocket layer (--websocket native, the default; docs/design.md "The node's own
 * WebSocket layer"). lws still listens, applies the connection caps, and serves TLS and every plain
 * HTTP request; an accepted plain connection is offered here first (sb_listen_t.take). This file
 * peeks at its request head: a WebSocket upgrade is answered and served here, on a raw fd with
 * one uv_poll_t, reading everything the socket has into one node-wide buffer and writing each
 * batch of frames with one send(); any other request goes back to lws unread (sb_listen_adopt:
 * lws reads it from the socket itself). Why: lws 4.1.6 holds about 1,800 B per connection and
 * spends about 15 us per relayed message more than a relay on raw epoll (make bench section 8, the
 * floor).
 *
 * What it knows: HTTP heads, RFC 6455 framing, masking, fragments, control frames, the close
 * handshake, timeouts. What a message means is server.c's and route.c's; the send queue is
 * session.c's, which calls sb_conn_send with whole frames. Like lws, it calls up only through
 * the events server.c gives it (sb_conn_events_t): the data path flows one way. */
#include "node.h"
#include "listen.h"
#include "log.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef enum {
    CONN_HEAD,   /* reading the request head */
    CONN_WS,     /* a WebSocket */
    CONN_LINGER, /* an HTTP refusal is out: reading and dropping until EOF or the deadline */
    CONN_DEAD,
} conn_state_t;

struct sb_conn {
    uv_poll_t poll;
    sb_node_t *node;
    sb_session_t *sess; /* CONN_WS: its session (the conn's reference is the session's own) */
    int fd;
    uint8_t state;
    uint8_t events;      /* what the poll watches */
    uint8_t want_write;  /* sb_conn_want_writable: WRITEABLE is due once nothing is held */
    uint8_t end_written; /* close the connection once what is held is written */
    uint8_t close_got;   /* the client's close frame arrived */
    uint8_t in_frame;    /* a frame header is parsed: its payload follows */
    uint8_t msg_op;      /* opcode of the message whose fragments are arriving (0: none) */
    uint8_t hdrlen;      /* bytes of an incomplete frame header kept in hdr */
    uint8_t ctllen;      /* bytes of a control frame's payload kept in ctl */
    uint8_t peek_wait;   /* CONN_HEAD: the head is not all there; looked at again next tick */
    uint8_t *pong;       /* a pong waiting for held bytes to go: [0] its length, then payload */
    uint8_t hdr[14];
    sb_wire_frame_t fr;
    uint64_t left, at; /* payload bytes of the frame still to come, and already read */
    char *head;        /* CONN_HEAD: what the socket holds, peeked (SB_WIRE_HEAD_MAX bytes) */
    size_t headlen;
    uint8_t *ctl;                      /* a control frame's payload, when it arrives in pieces */
    uint8_t *out;                      /* bytes the kernel did not take yet (whole frames' rest) */
    size_t outlen, outoff;             /* ... out[outoff, outlen) are still to go */
    int64_t deadline_ms;               /* 0: none; else the connection is dropped then */
    struct sb_conn *dl_prev, *dl_next; /* the node's list of connections with a deadline */
};

/* A request head must be complete within this (lws: timeout_secs in sb_listen). */
#define HEAD_TIMEOUT_MS 10000
/* How long a refused HTTP request's connection is read and dropped before it is closed. */
#define LINGER_MS 1000
/* The node-wide receive buffer, and how many reads of it one readiness gets. */
#define READ_BUF 65536
#define READS_PER_EVENT 4

static void conn_destroy(sb_conn_t *c);
static void watch(sb_conn_t *c, int events);
static int send_control(sb_conn_t *c, unsigned opcode, const uint8_t *payload, size_t len);

/* ---- deadlines ----------------------------------------------------------------------------- */

static void dl_unlink(sb_conn_t *c)
{
    sb_node_t *n = c->node;
    if (!c->deadline_ms)
        return;
    if (c->dl_prev)
        c->dl_prev->dl_next = c->dl_next;
    else
        n->conn_dl_head = c->dl_next;
    if (c->dl_next)
        c->dl_next->dl_prev = c->dl_prev;
    c->dl_prev = c->dl_next = NULL;
    c->deadline_ms = 0;
}

static void on_deadline_tick(uv_timer_t *t)
{
    sb_node_t *n = t->data;
    int64_t now = sb_mono_ms();
    sb_conn_t *c = n->conn_dl_head;
    while (c) {
        sb_conn_t *next = c->dl_next;
        if (c->deadline_ms <= now) {
            conn_destroy(c);
        } else if (c->peek_wait) {
            c->peek_wait = 0;
            watch(c, UV_READABLE); /* look at the head again */
        }
        c = next;
    }
    if (!n->conn_dl_head)
        uv_timer_stop(t);
}

/* Drops c in ms milliseconds (0: at the next tick), replacing an earlier deadline; ms < 0 takes
 * the deadline away. */
static void set_deadline(sb_conn_t *c, int64_t ms)
{
    sb_node_t *n = c->node;
    dl_unlink(c);
    if (ms < 0 || c->state == CONN_DEAD)
        return;
    c->deadline_ms = sb_mono_ms() + ms;
    if (c->deadline_ms == 0)
        c->deadline_ms = 1;
    c->dl_prev = NULL;
    c->dl_next = n->conn_dl_head;
    if (n->conn_dl_head)
        n->conn_dl_head->dl_prev = c;
    n->conn_dl_head = c;
    /* Why a 100 ms tick and not a timer per connection: deadlines are few (heads being read,
     * closes under way) and need no precision; a uv_timer_t per socket is 152 B of every idle
     * socket. */
    if (!uv_is_active((uv_handle_t *)&n->conn_timer))
        uv_timer_start(&n->conn_timer, on_deadline_tick, 100, 100);
}

void sb_conn_timeout(sb_conn_t *c, int secs)
{
    /* As lws_set_timeout: 0 takes the deadline away, a negative one is "now". */
    set_deadline(c, secs == 0 ? -1 : secs < 0 ? 0 : (int64_t)secs * 1000);
}

/* ---- polling and writing ------------------------------------------------------------------- */

static void on_poll(uv_poll_t *h, int status, int events);

static void watch(sb_conn_t *c, int events)
{
    if (c->state == CONN_DEAD || c->events == events)
        return;
    c->events = (uint8_t)events;
    if (events)
        uv_poll_start(&c->poll, events, on_poll);
    else
        uv_poll_stop(&c->poll);
}

int sb_conn_busy(const sb_conn_t *c)
{
    return c->outlen > c->outoff;
}

int sb_conn_fd(const sb_conn_t *c)
{
    return c->fd;
}

/* Keeps bytes the kernel did not take, after what is already kept; POLLOUT brings them. */
static int keep_out(sb_conn_t *c, const uint8_t *p, size_t len)
{
    if (c->outoff > 0 && c->outoff == c->outlen) {
        free(c->out);
        c->out = NULL;
        c->outlen = c->outoff = 0;
    }
    uint8_t *o = realloc(c->out, c->outlen + len);
    if (!o)
        return -1;
    memcpy(o + c->outlen, p, len);
    c->out = o;
    c->outlen += len;
    watch(c, c->events | UV_WRITABLE);
    return 0;
}

int sb_conn_send(sb_conn_t *c, const uint8_t *p, size_t len)
{
    if (c->state == CONN_DEAD)
        return -1;
    if (sb_conn_busy(c))
        return keep_out(c, p, len); /* after what waits: frames stay whole and in order */
    ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        w = 0;
    }
    if ((size_t)w == len)
        return 0;
    return keep_out(c, p + w, len - (size_t)w);
}

/* POLLOUT: what was kept goes on; once all is out, the session writes again (lws's WRITEABLE
 * after it passed on its buflist). -1 when the connection is to go. */
static int write_kept(sb_conn_t *c)
{
    while (sb_conn_busy(c)) {
        ssize_t w =
            send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->outoff += (size_t)w;
    }
    free(c->out);
    c->out = NULL;
    c->outlen = c->outoff = 0;
    if (c->pong && c->sess && c->sess->close_sent) {
        free(c->pong); /* our close frame went out meanwhile: nothing goes after it */
        c->pong = NULL;
    }
    if (c->pong) {
        /* The pong of the last ping that came while bytes were held (RFC 6455 5.5.3: only
         * the most recent ping needs one). */
        uint8_t *pong = c->pong;
        c->pong = NULL;
        int rc = send_control(c, 10, pong + 1, pong[0]);
        free(pong);
        if (rc != 0)
            return -1;
        if (sb_conn_busy(c))
            return 0;
    }
    watch(c, c->events & ~UV_WRITABLE);
    if (c->state == CONN_LINGER)
        shutdown(c->fd, SHUT_WR); /* the refusal is out */
    if (c->end_written)
        return -1;
    if (c->sess) {
        c->want_write = 0;
        return c->node->conn_ev->writable(c->sess);
    }
    return 0;
}

void sb_conn_want_writable(sb_conn_t *c)
{
    if (c->state != CONN_WS)
        return;
    c->want_write = 1;
    if (!sb_conn_busy(c) && c->sess)
        c->node->conn_ev->want_flush(c->sess); /* written before the loop next polls */
}

int sb_conn_writable_due(sb_conn_t *c)
{
    if (!c->want_write || sb_conn_busy(c) || c->state != CONN_WS)
        return 0;
    c->want_write = 0;
    return 1;
}

/* A frame of ours that is not in the session's queue (a pong, a close echo): header and
 * payload in one piece. */
static int send_control(sb_conn_t *c, unsigned opcode, const uint8_t *payload, size_t len)
{
    uint8_t frame[2 + 125];
    if (len > 125)
        len = 125;
    size_t hl = sb_wire_frame_header(frame, opcode, len);
    if (len)
        memcpy(frame + hl, payload, len);
    return sb_conn_send(c, frame, hl + len);
}

/* Closes the connection once what is held is written (at once when nothing is). */
static void end_after_write(sb_conn_t *c)
{
    if (!sb_conn_busy(c)) {
        conn_destroy(c);
        return;
    }
    c->end_written = 1;
    set_deadline(c, 1000); /* a reader that stopped reading does not hold it */
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

static const char *status_text(unsigned status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* An HTTP refusal, then the connection is read and dropped until the client closes it (or
 * LINGER_MS): closing at once with the client's bytes unread would reset it, and the client
 * might never read the answer. */
static void refuse(sb_conn_t *c, unsigned status, const char *extra)
{
    char resp[256];
    int len = snprintf(resp, sizeof resp,
                       "HTTP/1.1 %u %s\r\ncontent-length: 0\r\nconnection: close\r\n%s\r\n", status,
                       status_text(status), extra ? extra : "");
    (void)sb_conn_send(c, (const uint8_t *)resp, (size_t)len);
    free(c->head);
    c->head = NULL;
    c->state = CONN_LINGER;
    if (!sb_conn_busy(c))
        shutdown(c->fd, SHUT_WR); /* else once the answer is out (write_kept) */
    set_deadline(c, LINGER_MS);
}

/* The head is complete (len bytes, peeked: still in the socket): a WebSocket upgrade is
 * answered here, anything else goes to lws, which reads the request itself. */
static void on_head(sb_conn_t *c, size_t len)
{
    sb_node_t *n = c->node;
    sb_wire_head_t *h = malloc(sizeof *h);
    if (!h) {
        conn_destroy(c);
        return;
    }
    int prc = sb_wire_head_parse(c->head, len, h);
    const sb_wire_header_t *up = prc == 0 ? sb_wire_header(h, "upgrade", NULL) : NULL;
    if (prc == 0 && !up) {
        /* Plain HTTP: lws serves it (and anything after it on this connection), reading it
         * from the socket as if it had accepted it. Why peeked and not handed over as bytes
         * read (lws_adopt_socket_vhost_readbuf): lws 4.1.6 spun forever in that path on a
         * request whose body bytes came with its head (test_09_http_edge test_03). */
        free(h);
        int fd = c->fd;
        c->fd = -1; /* now lws's: neither released nor closed here */
        conn_destroy(c);
        (void)sb_listen_adopt(n->lws, SB_VHOST_NAME, SB_PROTOCOL_NAME, fd);
        return;
    }
    /* Ours from here: the head is taken off the socket (all of it is there: it was peeked). */
    if (recv(c->fd, c->head, len, MSG_DONTWAIT) != (ssize_t)len) {
        free(h);
        conn_destroy(c);
        return;
    }
    if (prc != 0) {
        free(h);
        refuse(c, prc == -2 ? 431 : 400, NULL);
        return;
    }
    sb_req_t req = {.head = h};
    int rc = n->conn_ev->check_upgrade(n, &req);
    if (rc != 0) {
        free(h);
        if (rc < 0)
            conn_destroy(c);
        else if (rc == SB_REFUSE_VERSION)
            refuse(c, 400, "sec-websocket-version: 13\r\n");
        else
            refuse(c, (unsigned)rc, NULL);
        return;
    }
    const sb_wire_header_t *key = sb_wire_header(h, "sec-websocket-key", NULL);
    const sb_wire_header_t *proto = sb_wire_header(h, "sec-websocket-protocol", NULL);
    char accept[29], resp[256];
    if (sb_wire_accept_key(key->value, key->vlen, accept) != 0) {
        free(h);
        conn_destroy(c);
        return;
    }
    int offered = proto && sb_wire_list_has(proto->value, proto->vlen, SB_PROTOCOL_NAME);
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: "
                      "Upgrade\r\nsec-websocket-accept: %s\r\n%s\r\n",
                      accept, offered ? "sec-websocket-protocol: " SB_PROTOCOL_NAME "\r\n" : "");
    if (sb_conn_send(c, (const uint8_t *)resp, (size_t)rl) != 0) {
        free(h);
        conn_destroy(c);
        return;
    }
    c->state = CONN_WS;
    set_deadline(c, -1);
    /* h points into c->head: both are kept until the session has read what it needs. */
    c->sess = n->conn_ev->established(n, &req, c);
    free(h);
    free(c->head);
    c->head = NULL;
    if (!c->sess) {
        conn_destroy(c);
        return;
    }
    if (c->want_write) /* a close the claim made before c->sess was known (a PeerJS refusal) */
        n->conn_ev->want_flush(c->sess);
    /* Frames a client sent right behind its head are still in the socket: POLLIN reads them. */
}

/* Peeks at what the socket holds until it holds a whole head. Why peek: a plain HTTP request
 * goes to lws untouched (see on_head). A head that is not all there yet is looked at again at
 * the next deadline tick (100 ms) instead of at every POLLIN, which would spin while its bytes
 * sit unread; browsers send a head in one piece. */
static void read_head(sb_conn_t *c)
{
    if (!c->head && !(c->head = malloc(SB_WIRE_HEAD_MAX))) {
        conn_destroy(c);
        return;
    }
    ssize_t r = recv(c->fd, c->head, SB_WIRE_HEAD_MAX, MSG_DONTWAIT | MSG_PEEK);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (r <= 0) {
        conn_destroy(c);
        return;
    }
    c->headlen = (size_t)r;
    size_t end = sb_wire_head_end(c->head, c->headlen);
    if (end) {
        on_head(c, end);
    } else if (c->headlen == SB_WIRE_HEAD_MAX) {
        if (recv(c->fd, c->head, SB_WIRE_HEAD_MAX, MSG_DONTWAIT) < 0) {
            conn_destroy(c);
            return;
        }
        refuse(c, 431, NULL);
    } else {
        c->peek_wait = 1;
        watch(c, 0);
    }
}

/* ---- frames -------------------------------------------------------------------------------- */

/* Closes with code, as a protocol failure (RFC 6455 7.1.7): our close frame, then the
 * connection, without waiting for the client's. */
static void fail(sb_conn_t *c, int code)
{
    uint8_t payload[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    sb_node_t *n = c->node;
    if (c->sess && !c->sess->close_code) {
        c->sess->close_code = code; /* the session's close is this one (metrics, no second) */
        sb_metrics_close(n, code);
    }
    if (!c->sess || !c->sess->close_sent) /* nothing goes after a close frame */
        (void)send_control(c, 8, payload, 2);
    if (c->sess)
        c->sess->close_sent = 1;
    end_after_write(c);
}

/* A close code a client may send (RFC 6455 7.4.1, 7.4.2; 1012-1014 registered since). */
static int close_code_ok(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

static void on_control(sb_conn_t *c, const uint8_t *p, size_t len)
{
    sb_session_t *s = c->sess;
    switch (c->fr.opcode) {
    case 9: /* ping: the pong echoes it */
        if (s && s->close_sent)
            break; /* RFC 6455 5.5.1: nothing goes after our close frame */
        if (sb_conn_busy(c)) {
            /* Not behind held bytes: a client that pings and never reads would grow them
             * without bound. One pong waits, for the latest ping. */
            if (!c->pong && !(c->pong = malloc(1 + 125))) {
                conn_destroy(c);
                return;
            }
            c->pong[0] = (uint8_t)len; /* the slot is reused: one allocation per wait */
            memcpy(c->pong + 1, p, len);
        } else if (send_control(c, 10, p, len) != 0) {
            conn_destroy(c);
        }
        break;
    case 10: /* pong */
        break;
    case 8: /* close */
        c->close_got = 1;
        if (len == 1) {
            /* RFC 6455 5.5.1: a code is 2 bytes. */
            fail(c, 1002);
            return;
        }
        s->peer_close = len >= 2 ? (p[0] << 8 | p[1]) : 1005;
        if (len >= 2 && (!close_code_ok(s->peer_close) || !sb_wire_utf8_ok(p + 2, len - 2))) {
            /* RFC 6455 7.4: a code no endpoint may send; 8.1: the reason is UTF-8. */
            fail(c, close_code_ok(s->peer_close) ? 1007 : 1002);
            return;
        }
        if (s->close_sent) {
            end_after_write(c); /* the answer to ours (which may still be held: let it go) */
            return;
        }
        /* Echo its code (RFC 6455 5.5.1), after what is already held, then go. */
        (void)send_control(c, 8, p, len >= 2 ? 2 : 0);
        s->close_sent = 1;
        end_after_write(c);
        break;
    }
}

/* Checks a frame header just parsed; -1 after failing the connection. */
static int check_frame(sb_conn_t *c)
{
    const sb_wire_frame_t *f = &c->fr;
    int control = f->opcode >= 8;
    if (f->rsv || !f->masked || (f->opcode > 2 && f->opcode < 8) || f->opcode > 10 ||
        (control && (!f->fin || f->len > 125)) || (f->opcode == 0 && !c->msg_op) ||
        ((f->opcode == 1 || f->opcode == 2) && c->msg_op)) {
        fail(c, 1002);
        return -1;
    }
    if (!control && f->opcode)
        c->msg_op = f->opcode;
    return 0;
}

/* Unmasks and hands on what p holds: frames, and pieces of frames (a data frame's payload is
 * handed on as it arrives, as lws did; the header of an incomplete frame is kept). */
static void process_frames(sb_conn_t *c, uint8_t *p, size_t n)
{
    /* Nothing is read as frames after a close frame either way, or a failure. */
    while (c->state == CONN_WS && !c->end_written && !c->close_got &&
           (n > 0 || (c->in_frame && c->left == 0))) {
        if (!c->in_frame) {
            size_t had = c->hdrlen, take = n < sizeof c->hdr - had ? n : sizeof c->hdr - had;
            int hl;
            if (had == 0) {
                hl = sb_wire_frame_parse(p, n, &c->fr);
            } else {
                memcpy(c->hdr + had, p, take);
                hl = sb_wire_frame_parse(c->hdr, had + take, &c->fr);
            }
            if (hl < 0) {
                fail(c, 1002);
                return;
            }
            if (hl == 0) {
                if (had == 0)
                    memcpy(c->hdr, p, n);
                c->hdrlen = (uint8_t)(had + (had ? take : n));
                return;
            }
            p += (size_t)hl - had;
            n -= (size_t)hl - had;
            c->hdrlen = 0;
            if (check_frame(c) != 0)
                return;
            c->in_frame = 1;
            c->left = c->fr.len;
            c->at = 0;
            c->ctllen = 0;
        }
        size_t take = c->left < n ? (size_t)c->left : n;
        sb_wire_unmask(p, take, c->fr.mask, c->at);
        c->at += take;
        c->left -= take;
        if (c->fr.opcode >= 8) {
            if (c->left == 0 && c->ctllen == 0) {
                c->in_frame = 0;
                on_control(c, p, take); /* whole in this read: from where it lies */
            } else {
                if (!c->ctl && !(c->ctl = malloc(125))) {
                    conn_destroy(c);
                    return;
                }
                memcpy(c->ctl + c->ctllen, p, take);
                c->ctllen = (uint8_t)(c->ctllen + take);
                if (c->left == 0) {
                    c->in_frame = 0;
                    on_control(c, c->ctl, c->ctllen);
                    free(c->ctl);
                    c->ctl = NULL;
                }
            }
        } else {
            int final = c->fr.fin && c->left == 0;
            int binary = c->msg_op == 2;
            if (c->left == 0) {
                c->in_frame = 0;
                if (c->fr.fin)
                    c->msg_op = 0;
            }
            if (!c->close_got && c->node->conn_ev->receive(c->sess, (const char *)p, take, final,
                                                           (size_t)c->left, binary, 1) != 0) {
                conn_destroy(c);
                return;
            }
        }
        p += take;
        n -= take;
    }
}

static void read_frames(sb_conn_t *c)
{
    sb_node_t *n = c->node;
    for (int i = 0; i < READS_PER_EVENT && c->state == CONN_WS && !c->end_written; i++) {
        ssize_t r = recv(c->fd, n->rdbuf, READ_BUF, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (r <= 0) {
            conn_destroy(c);
            return;
        }
        c->sess->last_rx_ms = sb_mono_ms(); /* once per read, not per frame */
        process_frames(c, n->rdbuf, (size_t)r);
        if (r < READ_BUF)
            return; /* the socket had no more */
    }
}

static void drop_input(sb_conn_t *c)
{
    sb_node_t *n = c->node;
    ssize_t r = recv(c->fd, n->rdbuf, READ_BUF, MSG_DONTWAIT);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        conn_destroy(c);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sb_conn_t *c = h->data;
    if (status < 0) {
        conn_destroy(c);
        return;
    }
    if ((events & UV_WRITABLE) && write_kept(c) != 0) {
        conn_destroy(c);
        return;
    }
    if (!(events & (UV_READABLE | UV_DISCONNECT)) || c->state == CONN_DEAD)
        return;
    if (c->state == CONN_HEAD)
        read_head(c);
    else if (c->state == CONN_WS && !c->end_written)
        read_frames(c);
    else
        drop_input(c);
}

/* ---- the connection ------------------------------------------------------------------------ */

static void conn_free(uv_handle_t *h)
{
    free(h->data);
}

static void conn_destroy(sb_conn_t *c)
{
    if (c->state == CONN_DEAD)
        return;
    sb_node_t *n = c->node;
    dl_unlink(c);
    c->state = CONN_DEAD;
    if (c->sess) {
        sb_session_t *s = c->sess;
        c->sess = NULL;
        n->conn_ev->closed(s);
    }
    uv_poll_stop(&c->poll);
    if (c->fd >= 0) {
        sb_listen_release(n->lws, SB_VHOST_NAME, SB_PROTOCOL_NAME, c->fd);
        close(c->fd);
    }
    free(c->head);
    free(c->out);
    free(c->ctl);
    free(c->pong);
    c->head = NULL;
    c->out = NULL;
    c->ctl = NULL;
    c->pong = NULL;
    uv_close((uv_handle_t *)&c->poll, conn_free);
}

int sb_conn_take(void *user, int fd)
{
    sb_node_t *n = user;
    if (n->stopping)
        return 1;
    sb_conn_t *c = calloc(1, sizeof *c);
    int one = 1, fl = fcntl(fd, F_GETFL);
    if (!c || fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 ||
        uv_poll_init(n->loop, &c->poll, fd) != 0) {
        free(c);
        return 1;
    }
    /* Signals are small and latency is the point: no Nagle delay (lws sets the same). */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->poll.data = c;
    c->node = n;
    c->fd = fd;
    c->state = CONN_HEAD;
    watch(c, UV_READABLE);
    set_deadline(c, HEAD_TIMEOUT_MS);
    return 0;
}

int sb_conn_start(sb_node_t *n, const sb_conn_events_t *ev)
{
    n->conn_ev = ev;
    n->rdbuf = malloc(READ_BUF);
    if (!n->rdbuf || uv_timer_init(n->loop, &n->conn_timer) != 0)
        return -1;
    n->conn_timer.data = n;
    return 0;
}

void sb_conn_stop(sb_node_t *n)
{
    if (!n->rdbuf)
        return;
    for (sb_session_t *s = n->sessions, *next; s; s = next) {
        next = s->next;
        if (s->conn)
            conn_destroy(s->conn);
    }
    while (n->conn_dl_head)
        conn_destroy(n->conn_dl_head);
    uv_close((uv_handle_t *)&n->conn_timer, NULL);
    free(n->rdbuf);
    n->rdbuf = NULL;
}
