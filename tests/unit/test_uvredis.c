/* Unit tests for common/uvredis.c's lazy replies, against a fake Redis on loopback (this test
 * accepts the connection itself and answers by hand). What they pin down: while only lazy
 * replies are awaited the loop does not watch the socket for reads (its epoll set reports
 * nothing although a reply is there), the reply is read at the loop's next wake-up for anything
 * else, or by the bound when nothing else comes; a pending eager command, or lazy replies off,
 * watch reads at once; and a connection quiet for the bound notices a close at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/async.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "uvredis.h"

enum { LAZY_MS = 200 }; /* long, so that the timing checks hold on a loaded machine */

typedef struct {
    uv_loop_t loop;
    uv_async_t poke; /* a wake-up of the loop for something else */
    int lsn, srv;    /* the fake server's listening and accepted sockets */
    redisAsyncContext *ac;
    int connected, disconnected, replies;
} fix_t;

static void on_poke(uv_async_t *h)
{
    (void)h;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    fix_t *f = ac->data;
    assert_int_equal(status, REDIS_OK);
    f->connected = 1;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    fix_t *f = ac->data;
    f->disconnected = 1;
    f->ac = NULL;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *data)
{
    (void)ac;
    (void)data;
    fix_t *f = ac->data;
    if (reply)
        f->replies++;
}

static void run_until(fix_t *f, int *flag, int ms)
{
    int64_t until = sb_mono_ms() + ms;
    while (!*flag && sb_mono_ms() < until)
        uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* Events the loop's epoll set has ready now, without taking them (level-triggered): what the
 * loop's next poll would wake up for. */
static int ready_in_loop(fix_t *f)
{
    struct epoll_event ev[8];
    return epoll_wait(uv_backend_fd(&f->loop), ev, 8, 20);
}

static int setup(void **state)
{
    static fix_t f;
    memset(&f, 0, sizeof f);
    assert_int_equal(uv_loop_init(&f.loop), 0);
    uv_async_init(&f.loop, &f.poke, on_poke);
    f.lsn = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(f.lsn, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(f.lsn, 1), 0);
    assert_int_equal(getsockname(f.lsn, (struct sockaddr *)&a, &al), 0);
    f.ac = redisAsyncConnect("127.0.0.1", ntohs(a.sin_port));
    assert_non_null(f.ac);
    assert_int_equal(f.ac->err, 0);
    f.ac->data = &f;
    assert_int_equal(sb_uvredis_attach(f.ac, &f.loop), 0);
    redisAsyncSetConnectCallback(f.ac, on_connect);
    redisAsyncSetDisconnectCallback(f.ac, on_disconnect);
    f.srv = accept(f.lsn, NULL, NULL); /* the kernel finished the handshake already */
    assert_true(f.srv >= 0);
    run_until(&f, &f.connected, 2000);
    assert_true(f.connected);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fix_t *f = *state;
    if (f->ac)
        redisAsyncFree(f->ac);
    uv_close((uv_handle_t *)&f->poke, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    close(f->srv);
    close(f->lsn);
    return 0;
}

/* Sends PING, lets the loop write it, has the server read it. */
static void ping_sent(fix_t *f)
{
    assert_int_equal(redisAsyncCommand(f->ac, on_reply, NULL, "PING"), REDIS_OK);
    char buf[64];
    size_t got = 0;
    int64_t until = sb_mono_ms() + 2000;
    while (got < 14 && sb_mono_ms() < until) { /* "*1\r\n$4\r\nPING\r\n" */
        uv_run(&f->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(f->srv, buf + got, sizeof buf - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
    }
    assert_int_equal(got, 14);
}

/* The same, and the server answers +PONG. */
static void ping_answered(fix_t *f)
{
    ping_sent(f);
    assert_int_equal(send(f->srv, "+PONG\r\n", 7, 0), 7);
}

static void test_lazy_reply_read_at_next_wakeup(void **state)
{
    fix_t *f = *state;
    assert_int_equal(sb_uvredis_lazy(f->ac, LAZY_MS), 0);
    ping_answered(f);
    /* The reply is in the socket, and the loop would not wake up for it. */
    assert_int_equal(ready_in_loop(f), 0);
    assert_int_equal(f->replies, 0);
    /* A wake-up for something else reads it, long before the bound. */
    int64_t t0 = sb_mono_ms();
    uv_async_send(&f->poke);
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->replies, 1);
    assert_true(sb_mono_ms() - t0 < LAZY_MS / 2);
}

static void test_lazy_reply_read_by_the_bound(void **state)
{
    fix_t *f = *state;
    assert_int_equal(sb_uvredis_lazy(f->ac, LAZY_MS), 0);
    int64_t t0 = sb_mono_ms();
    ping_answered(f);
    /* Nothing else wakes the loop: the bound does, not the reply. */
    while (f->replies == 0 && sb_mono_ms() - t0 < 2000)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->replies, 1);
    assert_true(sb_mono_ms() - t0 >= LAZY_MS - 5);
}

static void test_reply_missing_at_the_bound_wakes_the_loop(void **state)
{
    fix_t *f = *state;
    assert_int_equal(sb_uvredis_lazy(f->ac, LAZY_MS), 0);
    ping_sent(f);
    /* No answer by the bound (Redis runs behind): reads are watched again from then on, so the
     * late reply wakes the loop instead of the bound polling for it every LAZY_MS. */
    int64_t t0 = sb_mono_ms();
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(sb_mono_ms() - t0 >= LAZY_MS - 5);
    assert_int_equal(f->replies, 0);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* libuv registers the fd again at its next poll */
    assert_int_equal(send(f->srv, "+PONG\r\n", 7, 0), 7);
    assert_int_equal(ready_in_loop(f), 1);
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->replies, 1);
    /* Caught up: the next command defers reads again. */
    ping_answered(f);
    assert_int_equal(ready_in_loop(f), 0);
}

static void test_eager_command_is_read_at_once(void **state)
{
    fix_t *f = *state;
    assert_int_equal(sb_uvredis_lazy(f->ac, LAZY_MS), 0);
    sb_uvredis_eager(f->ac, 1);
    ping_answered(f);
    assert_int_equal(ready_in_loop(f), 1);
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->replies, 1);
    /* Deferred reads, then an eager command: reads are watched again at once. */
    sb_uvredis_eager(f->ac, 0);
    ping_answered(f);
    assert_int_equal(ready_in_loop(f), 0);
    sb_uvredis_eager(f->ac, 1);
    /* (libuv registers the fd again at its next poll: that poll returns for the reply.) */
    int64_t t0 = sb_mono_ms();
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->replies, 2);
    assert_true(sb_mono_ms() - t0 < LAZY_MS / 2);
}

static void test_without_lazy_replies_reads_are_watched(void **state)
{
    fix_t *f = *state;
    ping_answered(f);
    assert_int_equal(ready_in_loop(f), 1);
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->replies, 1);
}

static void test_quiet_connection_notices_a_close(void **state)
{
    fix_t *f = *state;
    assert_int_equal(sb_uvredis_lazy(f->ac, LAZY_MS), 0);
    ping_answered(f);
    int64_t t0 = sb_mono_ms();
    while (f->replies == 0 && sb_mono_ms() - t0 < 2000)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->replies, 1);
    /* Nothing written for the bound: reads are watched again. */
    t0 = sb_mono_ms();
    while (sb_mono_ms() - t0 < 3 * LAZY_MS)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    close(f->srv);
    f->srv = -1;
    assert_int_equal(ready_in_loop(f), 1);
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(f->disconnected);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lazy_reply_read_at_next_wakeup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lazy_reply_read_by_the_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_missing_at_the_bound_wakes_the_loop, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_eager_command_is_read_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_without_lazy_replies_reads_are_watched, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_quiet_connection_notices_a_close, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
