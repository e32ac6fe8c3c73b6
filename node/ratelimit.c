/* Token bucket and abuse window for one socket. Owns only the arithmetic: the session decides
 * what a message costs and what to do with the result. */
#include "ratelimit.h"

#include <string.h>

/* Tolerance for refill arithmetic: 20 ms at 50/s must give exactly one token, not 0.999... */
#define EPSILON 1e-9

static int64_t second_of(int64_t ms)
{
    return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
}

static uint32_t *slot_of(sb_bucket_t *b, int64_t sec)
{
    return &b->rejected[((sec % SB_RATE_WINDOW_SLOTS) + SB_RATE_WINDOW_SLOTS) %
                        SB_RATE_WINDOW_SLOTS];
}

void sb_bucket_init(sb_bucket_t *b, double burst, int64_t now_ms)
{
    memset(b, 0, sizeof *b);
    b->tokens = burst;
    b->last_ms = now_ms;
    b->newest_sec = second_of(now_ms);
}

static void refill(sb_bucket_t *b, double rate, double burst, int64_t now_ms)
{
    if (now_ms <= b->last_ms)
        return; /* a clock step backwards must not mint tokens, nor freeze refills later */
    double add = (double)(now_ms - b->last_ms) * rate / 1000.0;
    b->tokens += add;
    if (b->tokens > burst)
        b->tokens = burst;
    b->last_ms = now_ms;
}

/* Moves the window so that its newest slot is sec's, clearing the slots it leaves behind. */
static void advance_window(sb_bucket_t *b, int64_t sec)
{
    if (sec <= b->newest_sec)
        return;
    int64_t gap = sec - b->newest_sec;
    if (gap >= SB_RATE_WINDOW_SLOTS) {
        memset(b->rejected, 0, sizeof b->rejected);
    } else {
        for (int64_t s = b->newest_sec + 1; s <= sec; s++)
            *slot_of(b, s) = 0;
    }
    b->newest_sec = sec;
}

static uint32_t window_sum(const sb_bucket_t *b)
{
    uint64_t sum = 0;
    for (int i = 0; i < SB_RATE_WINDOW_SLOTS; i++)
        sum += b->rejected[i];
    return sum > UINT32_MAX ? UINT32_MAX : (uint32_t)sum;
}

sb_rate_result_t sb_bucket_take(sb_bucket_t *b, double rate, double burst, double cost,
                                int64_t now_ms)
{
    if (b->abusive)
        return SB_RATE_ABUSE;
    refill(b, rate, burst, now_ms);
    double need = cost < burst ? cost : burst;
    if (b->tokens + EPSILON >= need) {
        b->tokens -= cost;
        if (b->tokens < -burst)
            b->tokens = -burst;
        return SB_RATE_OK;
    }
    int64_t sec = second_of(now_ms);
    advance_window(b, sec);
    if (sec < b->newest_sec)
        sec = b->newest_sec; /* clock went back: count it in the newest slot */
    uint32_t *slot = slot_of(b, sec);
    if (*slot < UINT32_MAX)
        (*slot)++;
    double limit = burst > SB_RATE_ABUSE_MIN ? burst : SB_RATE_ABUSE_MIN;
    if ((double)window_sum(b) > limit) {
        b->abusive = 1;
        return SB_RATE_ABUSE;
    }
    return SB_RATE_LIMITED;
}

void sb_bucket_charge(sb_bucket_t *b, double rate, double burst, double cost, int64_t now_ms)
{
    refill(b, rate, burst, now_ms);
    b->tokens -= cost;
    if (b->tokens < -burst)
        b->tokens = -burst;
}

uint32_t sb_bucket_rejected(const sb_bucket_t *b, int64_t now_ms)
{
    int64_t sec = second_of(now_ms);
    if (sec < b->newest_sec)
        sec = b->newest_sec;
    if (sec - b->newest_sec >= SB_RATE_WINDOW_SLOTS)
        return 0;
    uint64_t sum = 0;
    /* Only the slots still inside the window ending at sec count. */
    for (int64_t s = sec - SB_RATE_WINDOW_SLOTS + 1; s <= b->newest_sec; s++)
        sum +=
            b->rejected[((s % SB_RATE_WINDOW_SLOTS) + SB_RATE_WINDOW_SLOTS) % SB_RATE_WINDOW_SLOTS];
    return sum > UINT32_MAX ? UINT32_MAX : (uint32_t)sum;
}
