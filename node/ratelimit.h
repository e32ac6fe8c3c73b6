/* Per-socket message rate limiting (contract section 1, --rate / --burst): a token bucket plus
 * an abuse detector for clients that keep sending while limited. Pure: the caller passes the
 * time (monotonic milliseconds) and the configured rate and burst; nothing here reads a clock,
 * allocates or logs. What to charge for which message is the caller's decision. */
#ifndef SB_RATELIMIT_H
#define SB_RATELIMIT_H

#include <stdint.h>

/* Rejections are counted in one-second slots; the abuse window is SB_RATE_WINDOW_SLOTS of
 * them. */
#define SB_RATE_WINDOW_SLOTS 10
/* The abuse threshold is max(burst, SB_RATE_ABUSE_MIN) rejections per window. */
#define SB_RATE_ABUSE_MIN 20

typedef enum {
    SB_RATE_OK = 0,  /* accepted; the cost was taken */
    SB_RATE_LIMITED, /* refused: reply "rate-limited"; nothing was taken */
    SB_RATE_ABUSE,   /* refused, and the client is abusive: close with 4002 */
} sb_rate_result_t;

typedef struct {
    double tokens;      /* may be negative after sb_bucket_charge (a debt) */
    int64_t last_ms;    /* when tokens was last refilled */
    int64_t newest_sec; /* the second (now_ms / 1000) of the newest rejection slot */
    uint32_t rejected[SB_RATE_WINDOW_SLOTS]; /* rejections per second, indexed sec % slots */
    int abusive;                             /* sticky once SB_RATE_ABUSE was returned */
} sb_bucket_t;

/* Starts b full (burst tokens) at now_ms, with no rejections. */
void sb_bucket_init(sb_bucket_t *b, double burst, int64_t now_ms);

/* Refills b at rate tokens per second (capped at burst) up to now_ms, then tries to take cost.
 *
 * - SB_RATE_OK when at least min(cost, burst) tokens are there: cost is taken. A cost above
 *   burst is thus admitted from a full bucket, leaving a debt, instead of never.
 * - Otherwise the message is rejected and counted in the slot of its second
 *   (floor(now_ms / 1000)). Persistent abuse is defined as: more than max(burst, 20) rejected
 *   messages in the current second and the 9 seconds before it (a rolling window of ten
 *   one-second slots, so it spans between 9 and 10 s of wall time). The rejection that
 *   crosses that line returns SB_RATE_ABUSE, and so does every later call (the caller closes
 *   the socket with 4002); any other rejection returns SB_RATE_LIMITED.
 *
 * Time that goes backwards (now_ms below the last call) counts as no time passing. */
sb_rate_result_t sb_bucket_take(sb_bucket_t *b, double rate, double burst, double cost,
                                int64_t now_ms);

/* Refills b like sb_bucket_take, then takes cost unconditionally: for charges decided after
 * the fact (an accepted join or leave costs more than the message that carried it). The
 * balance may go negative, down to -burst at most; later messages are limited until it has
 * refilled. Never counts as a rejection. */
void sb_bucket_charge(sb_bucket_t *b, double rate, double burst, double cost, int64_t now_ms);

/* Rejections in the current abuse window as of now_ms (for tests and metrics). */
uint32_t sb_bucket_rejected(const sb_bucket_t *b, int64_t now_ms);

#endif
