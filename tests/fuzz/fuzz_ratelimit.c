/* Fuzzes the token bucket (node/ratelimit.c) against a plain model: the tokens follow the same
 * formula, and the abuse rule is re-derived from a list of every rejection's second, so a
 * slot-bookkeeping mistake shows up as a difference. Input: rate and burst, then 4-byte
 * operations (kind, time step, cost). */
#include "fuzz.h"
#include "ratelimit.h"

#include <string.h>

#define MAX_OPS 4096

typedef struct {
    double tokens;
    int64_t last_ms, newest_sec;
    int64_t rejected_sec[MAX_OPS];
    int nrejected;
    int abusive;
} model_t;

static int64_t sec_of(int64_t ms)
{
    return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
}

static void model_refill(model_t *m, double rate, double burst, int64_t now)
{
    if (now <= m->last_ms)
        return;
    m->tokens += (double)(now - m->last_ms) * rate / 1000.0;
    if (m->tokens > burst)
        m->tokens = burst;
    m->last_ms = now;
}

static sb_rate_result_t model_take(model_t *m, double rate, double burst, double cost, int64_t now)
{
    if (m->abusive)
        return SB_RATE_ABUSE;
    model_refill(m, rate, burst, now);
    if (m->tokens + 1e-9 >= (cost < burst ? cost : burst)) {
        m->tokens -= cost;
        if (m->tokens < -burst)
            m->tokens = -burst;
        return SB_RATE_OK;
    }
    int64_t sec = sec_of(now);
    if (sec > m->newest_sec)
        m->newest_sec = sec;
    m->rejected_sec[m->nrejected++] = m->newest_sec;
    int in_window = 0;
    for (int i = 0; i < m->nrejected; i++)
        in_window += m->rejected_sec[i] > m->newest_sec - SB_RATE_WINDOW_SLOTS;
    if (in_window > (burst > SB_RATE_ABUSE_MIN ? burst : SB_RATE_ABUSE_MIN)) {
        m->abusive = 1;
        return SB_RATE_ABUSE;
    }
    return SB_RATE_LIMITED;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    double rate = 1 + data[0] % 200, burst = 10 + data[1] % 120;
    int64_t now = 1000000 + (int64_t)data[2] * 1000 + data[3];
    sb_bucket_t b;
    sb_bucket_init(&b, burst, now);
    static model_t m;
    memset(&m, 0, sizeof m);
    m.tokens = burst;
    m.last_ms = now;
    m.newest_sec = sec_of(now);
    for (size_t i = 4; i + 4 <= size && m.nrejected < MAX_OPS; i += 4) {
        int kind = data[i] % 4;
        /* Mostly forward in small steps, sometimes far, sometimes backwards. */
        int16_t step;
        memcpy(&step, data + i + 1, sizeof step);
        now += data[i] & 0x80 ? (int64_t)step * 37 : step % 300;
        double cost = data[i + 3] % 4 == 0 ? 10 : 1 + data[i + 3] % 3;
        if (kind == 3) {
            sb_bucket_charge(&b, rate, burst, cost, now);
            model_refill(&m, rate, burst, now);
            m.tokens -= cost;
            if (m.tokens < -burst)
                m.tokens = -burst;
        } else {
            sb_rate_result_t got = sb_bucket_take(&b, rate, burst, cost, now);
            sb_rate_result_t want = model_take(&m, rate, burst, cost, now);
            if (got != want)
                fprintf(stderr, "op %zu: got %d want %d\n", i / 4, got, want);
            FUZZ_CHECK(got == want);
        }
        FUZZ_CHECK(b.tokens <= burst + 1e-6 && b.tokens >= -burst - 1e-6);
        if (!m.abusive) {
            uint32_t r = sb_bucket_rejected(&b, now);
            FUZZ_CHECK(r <= (burst > SB_RATE_ABUSE_MIN ? burst : SB_RATE_ABUSE_MIN));
        }
    }
    return 0;
}
