/* Sessions: one per WebSocket, refcounted so that Redis replies arriving after lws closed the
 * socket find a live struct marked closed. Owns the send queue, the rate bucket, liveness
 * (pings, silence) and closing. Knows nothing of rooms or messages' meaning (route.c). */
#include "node.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

/* lws 4.1 keeps the close opcode of lws_write() private (value 4, "handled by
 * lws_close_reason()"); see sb_session_writable for why we need it. */
#define SB_LWS_WRITE_CLOSE ((enum lws_write_protocol)4)

sb_session_t *sb_session_new(sb_node_t *n, struct lws *wsi)
{
    sb_session_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (sb_proto_new_sid(s->id, sizeof s->id) != 0) {
        free(s);
        return NULL;
    }
    s->refs = 1;
    s->wsi = wsi;
    s->node = n;
    s->connected_ms = sb_mono_ms();
    s->last_rx_ms = s->connected_ms;
    sb_bucket_init(&s->bucket, (double)n->cfg.burst, s->connected_ms);
    if (sb_map_put(&n->sess_by_id, s->id, s) != 0) {
        free(s);
        return NULL;
    }
    s->next = n->sessions;
    if (n->sessions)
        n->sessions->prev = s;
    n->sessions = s;
    n->nsessions++;
    return s;
}

void sb_session_ref(sb_session_t *s)
{
    s->refs++;
}

static void free_queue(sb_session_t *s)
{
    sb_outmsg_t *m = s->qhead;
    while (m) {
        sb_outmsg_t *next = m->next;
        free(m);
        m = next;
    }
    s->node->send_queue_bytes -= s->qbytes;
    s->qhead = s->qtail = NULL;
    s->qbytes = 0;
}

void sb_session_unref(sb_session_t *s)
{
    sb_assert(s->refs > 0);
    if (--s->refs > 0)
        return;
    sb_assert(s->closed);
    sb_assert(s->seat == NULL);
    free_queue(s);
    free(s->rx);
    free(s);
}

void sb_session_send(sb_session_t *s, const char *text, size_t len)
{
    sb_part_t part = {text, len};
    sb_session_sendv(s, &part, 1);
}

void sb_session_sendv(sb_session_t *s, const sb_part_t *parts, int nparts)
{
    if (s->closed || s->close_code)
        return;
    size_t len = 0;
    for (int i = 0; i < nparts; i++)
        len += parts[i].n;
    sb_node_t *n = s->node;
    if (s->qbytes + len > (size_t)n->cfg.max_send_queue_bytes) {
        /* Why kill at once: a client that does not read will not read a close frame either,
         * and its queue must not grow the node's memory. */
        sb_warn_limited("session %s: send queue over %lld bytes: closing 4003", s->id,
                        (long long)n->cfg.max_send_queue_bytes);
        sb_session_close(s, 4003, "send queue full");
        free_queue(s);
        if (s->wsi)
            lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    sb_outmsg_t *m = malloc(sizeof *m + LWS_PRE + len);
    if (!m) {
        /* A frame we cannot queue is a message the client would never know it missed: end the
         * connection instead, with 1011 (the close frame needs no allocation). */
        sb_error("session %s: out of memory queueing %zu bytes: closing 1011", s->id, len);
        sb_session_close(s, 1011, "server out of memory");
        return;
    }
    m->next = NULL;
    m->len = len;
    unsigned char *at = m->buf + LWS_PRE;
    for (int i = 0; i < nparts; i++) {
        memcpy(at, parts[i].p, parts[i].n);
        at += parts[i].n;
    }
    if (s->qtail)
        s->qtail->next = m;
    else
        s->qhead = m;
    s->qtail = m;
    s->qbytes += len;
    n->send_queue_bytes += len;
    n->metrics.sent++;
    if (s->wsi)
        lws_callback_on_writable(s->wsi);
}

void sb_session_send_json(sb_session_t *s, json_t *msg)
{
    size_t len;
    char *text = sb_proto_encode(msg, &len);
    if (!text)
        return;
    sb_session_send(s, text, len);
    free(text);
}

void sb_session_send_error(sb_session_t *s, const char *code, const char *message, json_t *rid)
{
    size_t len;
    sb_metrics_error(s->node, code);
    char *text = sb_proto_error(code, message, rid, &len);
    if (!text)
        return;
    sb_session_send(s, text, len);
    free(text);
}

void sb_session_close(sb_session_t *s, int code, const char *reason)
{
    if (s->closed || s->close_code)
        return;
    s->close_code = code;
    snprintf(s->close_reason, sizeof s->close_reason, "%s", reason);
    sb_metrics_close(s->node, code);
    sb_debug("session %s: closing %d (%s)", s->id, code, reason);
    if (s->wsi) {
        lws_callback_on_writable(s->wsi);
        /* A client that never lets us write still goes away within a few seconds. */
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, 3);
    }
}

int sb_session_check_idle(sb_node_t *n, int64_t now_ms)
{
    int killed = 0;
    /* How long a ping may go unanswered: the silence allowed past the idle interval. */
    int64_t answer_ms = n->cfg.ping_timeout_ms - n->cfg.ping_interval_ms;
    for (sb_session_t *s = n->sessions; s; s = s->next) {
        if (s->closed || !s->wsi || s->close_code || s->idle_killed)
            continue;
        int64_t idle = now_ms - s->last_rx_ms;
        int pinged = s->ping_sent_ms > s->last_rx_ms; /* our ping is out and unanswered */
        if (pinged && idle >= n->cfg.ping_timeout_ms && now_ms - s->ping_sent_ms >= answer_ms) {
            /* Silent past the timeout and through a ping (its network is gone, or it stopped
             * reading): no close frame would reach it. Hung up now; the close callback cleans
             * up as for a reset. Why only after a ping: when the node itself stalled (SIGSTOP,
             * a VM pause, swap) every socket looks silent, though none was asked. */
            sb_info_limited("session %s: silent for %lld ms and no answer to a ping: hanging up",
                            s->id, (long long)idle);
            s->idle_killed = 1;
            lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
            killed++;
        } else if (idle >= n->cfg.ping_interval_ms && !pinged) {
            s->ping_sent_ms = now_ms;
            s->ping_due = 1;
            lws_callback_on_writable(s->wsi);
        }
    }
    return killed;
}

int sb_session_writable(sb_session_t *s)
{
    if (s->ping_due && !s->close_code) {
        /* One write per WRITEABLE: the ping first, the queue at the next one. Not empty: lws
         * 4.1.6 drops an empty pong without LWS_CALLBACK_RECEIVE_PONG, so the client's answer
         * must echo something for us to see it. */
        unsigned char frame[LWS_PRE + 2];
        memcpy(frame + LWS_PRE, "sb", 2);
        s->ping_due = 0;
        if (lws_write(s->wsi, frame + LWS_PRE, 2, LWS_WRITE_PING) < 0)
            return -1;
        if (s->qhead)
            lws_callback_on_writable(s->wsi);
        return 0;
    }
    sb_outmsg_t *m = s->qhead;
    if (m) {
        s->qhead = m->next;
        if (!s->qhead)
            s->qtail = NULL;
        s->qbytes -= m->len;
        s->node->send_queue_bytes -= m->len;
        int rc = lws_write(s->wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
        free(m);
        if (rc < 0)
            return -1;
        if (s->qhead || s->close_code) {
            lws_callback_on_writable(s->wsi);
        }
        return 0;
    }
    if (s->close_code && !s->close_sent) {
        /* Why write the close frame ourselves: with the libuv event lib, lws 4.1.6 kills the
         * connection before sending the frame that lws_close_reason() prepared when a callback
         * returns -1 from WRITEABLE (its "uv repeat test" close path), so clients would see 1006.
         * The connection is dropped at the next WRITEABLE, once the frame is out. */
        unsigned char frame[LWS_PRE + 2 + sizeof s->close_reason];
        size_t rl = strlen(s->close_reason);
        frame[LWS_PRE] = (unsigned char)(s->close_code >> 8);
        frame[LWS_PRE + 1] = (unsigned char)(s->close_code & 0xff);
        memcpy(frame + LWS_PRE + 2, s->close_reason, rl);
        s->close_sent = 1;
        if (lws_write(s->wsi, frame + LWS_PRE, 2 + rl, SB_LWS_WRITE_CLOSE) < 0)
            return -1;
        lws_callback_on_writable(s->wsi);
        return 0;
    }
    if (s->close_code) {
        /* Our close frame is out. Keep reading (and dropping) for up to a second so the
         * client's close reply ends the connection: killing it at once while the client is
         * still sending makes the kernel answer with a reset, and the client never sees our
         * close code. A client that stopped reading is still gone within that second. */
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, 1);
        return 0;
    }
    return 0;
}

void sb_session_detach(sb_session_t *s)
{
    sb_node_t *n = s->node;
    if (s->closed)
        return;
    s->closed = 1;
    s->wsi = NULL;
    if (!s->close_code)
        sb_metrics_close(n, 1006);
    sb_assert(s->seat == NULL); /* sb_route_disconnect ran first */
    if (s->prev)
        s->prev->next = s->next;
    else
        n->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    n->nsessions--;
    sb_map_del(&n->sess_by_id, s->id);
    free_queue(s);
    sb_session_unref(s);
}

void sb_session_charge_accepted(sb_session_t *s)
{
    sb_node_t *n = s->node;
    sb_bucket_charge(&s->bucket, (double)n->cfg.rate, (double)n->cfg.burst, SB_JOIN_LEAVE_COST - 1,
                     sb_mono_ms());
}

int sb_session_admit(sb_session_t *s, json_t *rid)
{
    sb_node_t *n = s->node;
    sb_rate_result_t rr =
        sb_bucket_take(&s->bucket, (double)n->cfg.rate, (double)n->cfg.burst, 1, sb_mono_ms());
    if (rr == SB_RATE_OK)
        return 1;
    sb_session_send_error(s, "rate-limited", "too many messages; slow down", rid);
    if (rr == SB_RATE_ABUSE)
        sb_session_close(s, 4002, "rate limit abuse");
    return 0;
}
