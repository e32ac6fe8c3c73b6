/* Sessions: one per WebSocket, whichever layer serves it (conn.c, or lws with --websocket lws
 * or over TLS), refcounted so that Redis replies arriving after the connection closed find a
 * live struct marked closed. Owns the send queue, the rate bucket, liveness
 * (pings, silence) and closing. Knows nothing of rooms or messages' meaning (route.c). */
#include "node.h"
#include "log.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* lws 4.1 keeps the close opcode of lws_write() private (value 4, "handled by
 * lws_close_reason()"); see sb_session_writable for why we need it. */
#define SB_LWS_WRITE_CLOSE ((enum lws_write_protocol)4)

/* ---- the connection under a session: libwebsockets', or our own layer's (conn.c) ---------- */

static int live(const sb_session_t *s)
{
    return s->wsi || s->conn;
}

/* Bytes of an earlier write are held (lws's buflist, or conn.c's). */
static int tx_busy(sb_session_t *s)
{
    return s->conn ? sb_conn_busy(s->conn) : s->wsi ? lws_partial_buffered(s->wsi) : 0;
}

static void tx_want(sb_session_t *s)
{
    if (s->conn)
        sb_conn_want_writable(s->conn);
    else if (s->wsi)
        lws_callback_on_writable(s->wsi);
}

/* One frame of opcode around len bytes at p (which has LWS_PRE bytes of headroom). */
static int tx_frame(sb_session_t *s, unsigned char *p, size_t len, enum lws_write_protocol op)
{
    if (!s->conn)
        return lws_write(s->wsi, p, len, op);
    unsigned char hdr[10];
    unsigned opcode = op == LWS_WRITE_TEXT ? 1 : op == LWS_WRITE_PING ? 9 : 8;
    size_t hl = sb_wire_frame_header(hdr, opcode, len);
    memcpy(p - hl, hdr, hl);
    return sb_conn_send(s->conn, p - hl, hl + len);
}

/* Bytes of whole frames, framed by us. */
static int tx_raw(sb_session_t *s, unsigned char *p, size_t len)
{
    return s->conn ? sb_conn_send(s->conn, p, len) : lws_write(s->wsi, p, len, LWS_WRITE_RAW);
}

void sb_session_timeout(sb_session_t *s, int secs)
{
    if (s->conn)
        sb_conn_timeout(s->conn, secs);
    else if (s->wsi)
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, secs);
}

sb_session_t *sb_session_new(sb_node_t *n, struct lws *wsi)
{
    sb_session_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->id = s->sid_buf;
    if (sb_proto_new_sid(s->sid_buf, sizeof s->sid_buf) != 0) {
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
    if (n->nsessions++ == 0)
        sb_node_sweep_soon(n); /* an idle node sweeps every 500 ms: back to every 50 */
    return s;
}

void sb_session_ref(sb_session_t *s)
{
    s->refs++;
}

/* ---- queue accounting: the per-socket limit and the node-wide budget ----------------------
 * Every byte a socket has waiting (its queued frames, and the rest of a write the layer holds
 * after a partial write: conn.c's held bytes, or lws's buflist) is counted in s->qbytes and
 * n->send_queue_bytes. A socket with bytes waiting is on the node's backlog list, in the order its
 * queue last became non-empty, so the stall check looks only at the list's head and the budget's
 * shedding only at backlogged sockets. */

/* How long a shed socket is given to read up to our close frame before it is dropped. */
#define SHED_CLOSE_S 2

static void backlog_unlink(sb_session_t *s)
{
    sb_node_t *n = s->node;
    if (s->bl_prev)
        s->bl_prev->bl_next = s->bl_next;
    else
        n->backlog_head = s->bl_next;
    if (s->bl_next)
        s->bl_next->bl_prev = s->bl_prev;
    else
        n->backlog_tail = s->bl_prev;
    s->bl_prev = s->bl_next = NULL;
}

static void queue_charge(sb_session_t *s, size_t len)
{
    sb_node_t *n = s->node;
    if (len == 0)
        return;
    if (s->qbytes == 0) {
        s->qsince_ms = sb_mono_ms();
        s->bl_prev = n->backlog_tail;
        if (n->backlog_tail)
            n->backlog_tail->bl_next = s;
        else
            n->backlog_head = s;
        n->backlog_tail = s;
    }
    s->qbytes += len;
    n->send_queue_bytes += len;
}

static void queue_release(sb_session_t *s, size_t len)
{
    if (len == 0)
        return;
    sb_assert(s->qbytes >= len && s->node->send_queue_bytes >= len);
    s->qbytes -= len;
    s->node->send_queue_bytes -= len;
    if (s->qbytes == 0)
        backlog_unlink(s);
}

/* Frees every queued frame and stops counting what the layer holds (it frees that with the
 * connection). */
static void free_queue(sb_session_t *s)
{
    sb_outmsg_t *m = s->qhead;
    while (m) {
        sb_outmsg_t *next = m->next;
        free(m);
        m = next;
    }
    s->qhead = s->qtail = NULL;
    s->held = 0;
    queue_release(s, s->qbytes);
}

/* Closes s with 4003 and drops what it has queued: the close frame goes out at its next
 * WRITEABLE, once the kernel and lws have passed on what they already hold (a reader that
 * reads again gets the frames up to there, then the close). A socket that does not read
 * within SHED_CLOSE_S is dropped without it. Its held frame stays in lws until then, bounded
 * by one frame, and is no longer counted (it cannot grow). */
static void shed(sb_session_t *s, sb_shed_t why, const char *reason)
{
    sb_node_t *n = s->node;
    static const char *const what[] = {"over --max-send-queue-bytes",
                                       "largest over the node's "
                                       "--queue-budget-bytes",
                                       "not drained for --queue-stall-ms"};
    n->metrics.sheds[why]++;
    sb_warn_limited("session %s: send queue of %zu bytes %s: closing 4003", s->id, s->qbytes,
                    what[why]);
    sb_session_close(s, 4003, reason);
    free_queue(s);
    if (live(s)) {
        sb_session_timeout(s, SHED_CLOSE_S);
        /* lws on a foreign libuv loop re-arms its timer for an earlier timeout only when it
         * next services something (main.c's drain says the same). */
        lws_cancel_service(n->lws);
    }
}

/* Past --queue-budget-bytes: sheds the largest queues until what stays is within it. Sockets
 * already closing are shed too when they still have frames queued (they keep their code). */
static void enforce_budget(sb_node_t *n)
{
    size_t budget = (size_t)n->cfg.queue_budget_bytes;
    if (n->send_queue_bytes <= budget)
        return;
    size_t over = n->send_queue_bytes - budget;
    while (over > 0) {
        sb_session_t *big = NULL;
        for (sb_session_t *x = n->backlog_head; x; x = x->bl_next)
            if ((!x->close_code || x->qhead) && (!big || x->qbytes > big->qbytes))
                big = x;
        if (!big)
            return;
        size_t freed = big->qbytes;
        if (big->close_code) {
            free_queue(big);
        } else {
            shed(big, SB_SHED_BUDGET, "node send budget exceeded");
        }
        over = freed >= over ? 0 : over - freed;
    }
}

/* Sheds sockets whose queue has not been empty for --queue-stall-ms; the backlog is in
 * qsince order, so only its head can be due. Returns how many. */
static int check_stalled(sb_node_t *n, int64_t now_ms)
{
    /* Why shift after a gap: when the node itself stalled (SIGSTOP, a VM pause, swap) no queue
     * could drain meanwhile, so that time is not the readers' (the sweep runs every second at
     * least; a longer gap is the node's). Shifting every socket alike keeps the list ordered. */
    int64_t gap = now_ms - n->stall_check_ms;
    if (n->stall_check_ms && gap > 2000)
        for (sb_session_t *x = n->backlog_head; x; x = x->bl_next)
            x->qsince_ms += gap;
    n->stall_check_ms = now_ms;
    int shed_n = 0;
    sb_session_t *x = n->backlog_head;
    while (x && now_ms - x->qsince_ms >= n->cfg.queue_stall_ms) {
        sb_session_t *next = x->bl_next;
        if (!x->close_code) {
            shed(x, SB_SHED_STALL, "send queue stalled");
            shed_n++;
        }
        x = next;
    }
    return shed_n;
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
    free(s->origin);
    free(s->close_reason);
    if (s->id != s->sid_buf)
        free(s->id);
    free(s);
}

int sb_session_set_id(sb_session_t *s, const char *id)
{
    size_t len = strnlen(id, SB_SID_MAX);
    char *to = s->sid_buf;
    if (len >= sizeof s->sid_buf && !(to = malloc(len + 1)))
        return -1;
    /* id may be s->id itself (a rename to the id it has). */
    memmove(to, id, len);
    to[len] = '\0';
    if (s->id != s->sid_buf && s->id != to)
        free(s->id);
    s->id = to;
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------
 * Why not a WRITEABLE callback per frame: with lws on libuv every lws_callback_on_writable arms
 * POLLOUT through uv_poll_start, and disarming it after the write costs the same (libuv 1.44
 * re-registers the fd: epoll_ctl DEL then ADD each time), which was a third of a loaded node's
 * CPU. Instead a queued frame lists its session for the flush, a uv_prepare that runs before the
 * loop next polls: everything queued for a socket in that iteration (a read that brought several
 * frames, a pub/sub read that brought several signals) goes out in one system call, with no
 * poll round trip. WRITEABLE is used only when the socket is full (the layer holds the unsent
 * rest, conn.c in its held bytes, lws in its buflist_out, and calls it once that is out), and
 * for pings and our close frame. conn.c has no poll round trip to save, and takes the same path
 * (its sb_conn_send writes at once). */

static void flush_unlist(sb_session_t *s)
{
    if (!s->flush_listed)
        return;
    if (s->flush_prev)
        s->flush_prev->flush_next = s->flush_next;
    else
        s->node->flush_head = s->flush_next;
    if (s->flush_next)
        s->flush_next->flush_prev = s->flush_prev;
    s->flush_prev = s->flush_next = NULL;
    s->flush_listed = 0;
}

static void on_flush(uv_prepare_t *h);

void sb_session_want_flush(sb_session_t *s)
{
    sb_node_t *n = s->node;
    if (s->flush_listed || !live(s) || uv_is_closing((uv_handle_t *)&n->flush))
        return;
    s->flush_listed = 1;
    s->flush_prev = NULL;
    s->flush_next = n->flush_head;
    if (n->flush_head)
        n->flush_head->flush_prev = s;
    n->flush_head = s;
    uv_prepare_start(&n->flush, on_flush);
}

/* Takes the first frame off the queue; its bytes stay counted until frame_written. */
static sb_outmsg_t *pop_frame(sb_session_t *s)
{
    sb_outmsg_t *m = s->qhead;
    s->qhead = m->next;
    if (!s->qhead)
        s->qtail = NULL;
    return m;
}

/* Once the layer holds nothing, what it held is gone (WRITEABLE may not have come in between:
 * the flush writes without it). */
static void held_flushed(sb_session_t *s)
{
    size_t held = s->held;
    s->held = 0;
    queue_release(s, held);
}

/* len bytes of frames went to the layer: still counted while it holds part of them. */
static void frame_written(sb_session_t *s, size_t len)
{
    if (tx_busy(s))
        s->held = len;
    else
        queue_release(s, len);
}

/* Writes queued frames until the queue is empty or the socket is full (the layer then keeps
 * the unsent rest of the last write and calls WRITEABLE itself once it is out). With conn.c the
 * same holds by construction (sb_conn_send keeps whole frames' rest in order, and nothing else
 * writes to the socket but its own pong and close frames, after what it holds). For lws: several
 * frames go in one write, framed by us into the node's batch buffer (LWS_WRITE_RAW: lws sends bytes
 * as they are, and its partial-write buffering works on bytes); a frame alone, or one too big to
 * batch, goes from its own buffer. Why this is safe outside WRITEABLE in lws 4.1.6: lws_write only
 * sends (lws_issue_raw), and while lws holds unsent bytes (lws_partial_buffered) we do not write at
 * all, so our frames never interleave with each other or with lws's own control frames (its
 * pongs and close go out after its buffered bytes, always whole). Returns -1 on a write error. */
static int write_queue(sb_session_t *s)
{
    unsigned char *batch = s->node->batch + LWS_PRE;
    if (!tx_busy(s))
        held_flushed(s);
    while (s->qhead && !tx_busy(s)) {
        sb_outmsg_t *m = s->qhead;
        int rc;
        size_t payload = 0;
        if (!m->next || m->len + 10 > SB_WRITE_BATCH) {
            pop_frame(s);
            payload = m->len;
            rc = tx_frame(s, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
            free(m);
        } else {
            size_t used = 0;
            while ((m = s->qhead) && used + 10 + m->len <= SB_WRITE_BATCH) {
                pop_frame(s);
                used += sb_wire_frame_header(batch + used, 1, m->len);
                memcpy(batch + used, m->buf + LWS_PRE, m->len);
                used += m->len;
                payload += m->len;
                free(m);
            }
            rc = tx_raw(s, batch, used);
        }
        frame_written(s, payload);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static void on_flush(uv_prepare_t *h)
{
    sb_node_t *n = h->data;
    uv_prepare_stop(h);
    sb_session_t *s;
    while ((s = n->flush_head) != NULL) {
        flush_unlist(s);
        if (s->conn && !s->idle_killed && sb_conn_writable_due(s->conn)) {
            /* Our own layer's WRITEABLE (lws calls it itself). */
            if (sb_session_writable(s) < 0) {
                free_queue(s);
                sb_conn_timeout(s->conn, LWS_TO_KILL_ASYNC);
            }
            continue;
        }
        /* A closing session writes at WRITEABLE (its queue, then the close frame). */
        if (!live(s) || s->close_code || s->idle_killed || !s->qhead)
            continue;
        if (tx_busy(s)) {
            tx_want(s);
            continue;
        }
        if (write_queue(s) < 0) {
            /* The connection is gone (the socket is unusable): it is closed, and the close
             * callback cleans up. */
            free_queue(s);
            sb_session_timeout(s, LWS_TO_KILL_ASYNC);
        }
    }
}

void sb_session_flush_start(sb_node_t *n)
{
    uv_prepare_init(n->loop, &n->flush);
    n->flush.data = n;
}

void sb_session_flush_stop(sb_node_t *n)
{
    /* Sessions still listed stay listed until they detach (nothing is written any more). */
    uv_close((uv_handle_t *)&n->flush, NULL);
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
        shed(s, SB_SHED_SOCKET, "send queue full");
        return;
    }
    sb_outmsg_t *m = malloc(sizeof *m + LWS_PRE + len);
    if (!m) {
        /* A frame we cannot queue is a message the client would never know it missed: end the
         * connection instead, with 1011 (the close frame needs no allocation). */
        sb_log_limited(SB_LOG_ERROR, "session %s: out of memory queueing %zu bytes: closing 1011",
                       s->id, len);
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
    queue_charge(s, len);
    n->metrics.sent++;
    sb_session_want_flush(s);
    enforce_budget(n);
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

void sb_session_send_reply(sb_session_t *s, const char *type, json_t *rid)
{
    char text[256];
    size_t len = sb_proto_reply_text(text, sizeof text, type, rid);
    if (len)
        sb_session_send(s, text, len);
    else
        sb_session_send_json(s, sb_proto_reply(type, rid));
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
    s->close_reason = strndup(reason, SB_CLOSE_REASON_MAX); /* NULL: the frame has only the code */
    sb_metrics_close(s->node, code);
    sb_debug_limited("session %s: closing %d (%s)", s->id, code, reason);
    if (live(s)) {
        tx_want(s);
        /* A client that never lets us write still goes away within a few seconds. */
        sb_session_timeout(s, 3);
    }
}

int sb_session_check_idle(sb_node_t *n, int64_t now_ms)
{
    int killed = check_stalled(n, now_ms);
    /* How long a ping may go unanswered: the silence allowed past the idle interval. */
    int64_t answer_ms = n->cfg.ping_timeout_ms - n->cfg.ping_interval_ms;
    for (sb_session_t *s = n->sessions; s; s = s->next) {
        if (s->closed || !live(s) || s->close_code || s->idle_killed)
            continue;
        if (s->rxlen > 0 && now_ms - s->rx_since_ms >= n->cfg.ping_timeout_ms) {
            /* A message (or one frame) left unfinished this long holds up to max_message_bytes
             * of this socket's memory while its client answers pings: a client that sends a
             * message sends it whole, so this is a hold, not a slow link. */
            sb_info_limited("session %s: a message unfinished for %lld ms: closing 1008", s->id,
                            (long long)(now_ms - s->rx_since_ms));
            free(s->rx);
            s->rx = NULL;
            s->rxlen = s->rxcap = 0;
            sb_session_close(s, 1008, "message not finished in time");
            killed++;
            continue;
        }
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
            sb_session_timeout(s, LWS_TO_KILL_ASYNC);
            killed++;
        } else if (idle >= n->cfg.ping_interval_ms && !pinged) {
            s->ping_sent_ms = now_ms;
            s->ping_due = 1;
            tx_want(s);
        }
    }
    return killed;
}

int sb_session_writable(sb_session_t *s)
{
    /* WRITEABLE comes only once lws has passed on all it held: what it held is gone. */
    held_flushed(s);
    if (s->ping_due && !s->close_code) {
        /* The ping first, then the queue (write_queue checks lws_partial_buffered). Not empty: lws
         * 4.1.6 drops an empty pong without LWS_CALLBACK_RECEIVE_PONG, so the client's answer
         * must echo something for us to see it. */
        unsigned char frame[LWS_PRE + 2];
        memcpy(frame + LWS_PRE, "sb", 2);
        s->ping_due = 0;
        if (tx_frame(s, frame + LWS_PRE, 2, LWS_WRITE_PING) < 0)
            return -1;
    }
    if (s->qhead) {
        /* Everything queued, in batches, until the socket is full; lws asks for WRITEABLE
         * again itself when it holds an unsent rest. */
        if (write_queue(s) < 0)
            return -1;
        if (s->close_code && !tx_busy(s))
            tx_want(s); /* the close frame, next */
        return 0;
    }
    if (s->close_code && !s->close_sent) {
        /* Why write the close frame ourselves: with the libuv event lib, lws 4.1.6 kills the
         * connection before sending the frame that lws_close_reason() prepared when a callback
         * returns -1 from WRITEABLE (its "uv repeat test" close path), so clients would see 1006.
         * The connection is dropped at the next WRITEABLE, once the frame is out. */
        unsigned char frame[LWS_PRE + 2 + SB_CLOSE_REASON_MAX];
        size_t rl = s->close_reason ? strlen(s->close_reason) : 0;
        frame[LWS_PRE] = (unsigned char)(s->close_code >> 8);
        frame[LWS_PRE + 1] = (unsigned char)(s->close_code & 0xff);
        if (rl)
            memcpy(frame + LWS_PRE + 2, s->close_reason, rl);
        s->close_sent = 1;
        if (tx_frame(s, frame + LWS_PRE, 2 + rl, SB_LWS_WRITE_CLOSE) < 0)
            return -1;
        tx_want(s);
        return 0;
    }
    if (s->close_code) {
        /* Our close frame is out. Keep reading (and dropping) for up to a second so the
         * client's close reply ends the connection: killing it at once while the client is
         * still sending makes the kernel answer with a reset, and the client never sees our
         * close code. A client that stopped reading is still gone within that second. */
        sb_session_timeout(s, 1);
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
    s->conn = NULL;
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
    flush_unlist(s);
    /* A resumed socket may hold the id now (its stale copy was replaced): leave it alone. */
    if (sb_map_get(&n->sess_by_id, s->id) == s)
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
