/* Unit tests for common/cluster.c without a Redis: what the client says and does before any
 * server answers (single and cluster mode), the "error and no callback" half of the callback
 * contract, and a clean close (no uv handle left). Routing against real servers is tested by
 * tests/integration/test_cluster_client.py. Only loopback port 1 is dialled (nothing listens). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "cluster.h"
#include "embed.h"
#include "log.h"

static int called;

static void on_reply(redisReply *reply, const char *error, void *data)
{
    (void)reply;
    (void)error;
    (void)data;
    called++;
}

static void run_for(uv_loop_t *loop, int ms)
{
    int64_t until = sb_mono_ms() + ms;
    while (sb_mono_ms() < until)
        uv_run(loop, UV_RUN_NOWAIT);
}

static sb_cluster_t *make(uv_loop_t *loop, const char *url)
{
    sb_cluster_opts_t o = {.loop = loop, .url = url, .name = "t", .timeout_ms = 200};
    return sb_cluster_new(&o);
}

static void nothing_is_sent_while_down(sb_cluster_t *c)
{
    const char *argv[2] = {"GET", "k"};
    assert_int_equal(sb_cluster_command(c, "k", 1, on_reply, NULL, 2, argv, NULL), SB_EUNAVAIL);
    const char *args[2] = {"k", "1"};
    assert_int_equal(sb_cluster_script(c, &sb_lua_files[0], 1, 2, args, NULL, on_reply, NULL),
                     SB_EUNAVAIL);
    assert_int_equal(sb_cluster_publish(c, "ch", "x", 1, on_reply, NULL), SB_EUNAVAIL);
    assert_int_equal(sb_cluster_publish_received(c, "ch", "x", 1, on_reply, NULL), SB_EUNAVAIL);
    /* No primary connected: not even partly up (readiness of node and admin). */
    assert_int_equal(sb_cluster_partly_up(c), 0);
    /* Bad arguments are refused before anything else. */
    assert_int_equal(sb_cluster_command(c, "k", 1, on_reply, NULL, 0, argv, NULL), SB_EINVAL);
    assert_int_equal(sb_cluster_script(c, &sb_lua_files[0], 3, 2, args, NULL, on_reply, NULL),
                     SB_EINVAL);
}

static void test_single_before_connect(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    sb_cluster_t *c = make(&loop, "redis://127.0.0.1:1");
    assert_non_null(c);
    assert_int_equal(sb_cluster_is_cluster(c), 0);
    /* One shard owning every slot from the start; not up until it connects. */
    assert_int_equal(sb_cluster_nprimaries(c), 1);
    assert_int_equal(sb_cluster_holes(c, NULL), 0);
    assert_int_equal(sb_cluster_slot_owner(c, 0), 0);
    assert_int_equal(sb_cluster_slot_owner(c, 16383), 0);
    assert_int_equal(sb_cluster_slot_owner(c, 16384), -1);
    sb_cluster_node_t n;
    assert_int_equal(sb_cluster_primary(c, 0, &n), 0);
    assert_string_equal(n.host, "127.0.0.1");
    assert_int_equal(n.port, 1);
    assert_int_equal(n.nslots, SB_SLOTS);
    assert_int_equal(sb_cluster_primary(c, 1, &n), SB_EINVAL);
    run_for(&loop, 100);
    assert_int_equal(sb_cluster_up(c), 0);
    assert_int_equal(sb_cluster_slot_up(c, 5), 0);
    nothing_is_sent_while_down(c);
    assert_int_equal(sb_cluster_subscribe(c, "ch"), 0);
    assert_int_equal(sb_cluster_subscribe(c, "ch"), SB_EINVAL);
    assert_int_equal(sb_cluster_unsubscribe(c, "ch"), 0);
    assert_int_equal(sb_cluster_unsubscribe(c, "ch"), SB_EINVAL);
    sb_cluster_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(called, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_cluster_with_dead_seeds(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    sb_cluster_t *c = make(&loop, "redis-cluster://127.0.0.1:1,[::1]:1");
    assert_non_null(c);
    assert_int_equal(sb_cluster_is_cluster(c), 1);
    run_for(&loop, 300);
    /* No map yet: every slot is a hole, no primary, nothing can be sent. */
    int first;
    assert_int_equal(sb_cluster_holes(c, &first), SB_SLOTS);
    assert_int_equal(first, 0);
    assert_int_equal(sb_cluster_nprimaries(c), 0);
    assert_int_equal(sb_cluster_slot_owner(c, 7), -1);
    assert_int_equal(sb_cluster_up(c), 0);
    nothing_is_sent_while_down(c);
    assert_int_equal(sb_cluster_subscribe(c, "ch"), 0);
    sb_cluster_refresh(c);
    run_for(&loop, 50);
    sb_cluster_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(called, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_bad_url(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    assert_null(make(&loop, "redis-cluster://h:1/2"));
    assert_null(make(&loop, "http://h"));
    /* The single-server client refuses a seed list rather than misroute. */
    sb_redis_opts_t ro = {.loop = &loop, .url = "redis-cluster://127.0.0.1:1", .timeout_ms = 100};
    assert_null(sb_redis_new(&ro));
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_before_connect),
        cmocka_unit_test(test_cluster_with_dead_seeds),
        cmocka_unit_test(test_bad_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
