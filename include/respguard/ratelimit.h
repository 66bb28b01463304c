/*
 * ratelimit: the optional enforcement cores. Both are off unless configured.
 *
 *  - token_bucket: a user's command rate limit. The bucket holds up to `burst` tokens and
 *    refills at `rate` tokens a second; every command takes one; a command finding it empty is
 *    refused (the session answers "-ERR rate limit exceeded for user '<name>'"). A bucket starts
 *    full, so a client may send `burst` commands at once after a quiet period.
 *
 *  - lockout: failed logins per source address, counted twice: per user name, and for the
 *    whole source. When `max_failures` failures for one name, or `source_max_failures` for all
 *    names together, fall within `window_ms` of the first of them, that name (or the whole
 *    source) is locked out for `duration_ms`: its logins are refused without looking at the
 *    password. Keying by name keeps one client stuck with a stale password from locking every
 *    other user of its host out (in a sidecar, all clients are 127.0.0.1); the source's own count
 *    keeps made-up names from giving one address unlimited guesses or filling the table (names
 *    known and unknown are treated alike, so a lockout does not tell which names exist). A
 *    successful login does not forget failures: otherwise one valid credential would let its
 *    holder interleave logins and guess another user's password without end. Sources are IP
 *    addresses as source.h defines them (port ignored, IPv4-mapped IPv6 is IPv4, every AF_UNIX
 *    peer is one source), except that IPv6 addresses count by /64 here: a host or LAN usually
 *    has a whole /64 to pick addresses from. The two counts live in two fixed set-associative
 *    tables of table_size entries each (8 ways a set, seeded hash): a new entry replaces the
 *    least recently seen one of its set that is not locked out; when all 8 are locked, the
 *    newcomer is not tracked (lockout_stats.dropped), so a flood costs no memory and cannot lift
 *    a lockout in force.
 *
 * Pure: no I/O, no clock reads (now_ms is the caller's monotonic milliseconds), no globals.
 * Allocation only in lockout_new. Not thread-safe: one table per worker (or one under a lock;
 * the calls are per login, not per command).
 */
#ifndef RESPGUARD_RATELIMIT_H
#define RESPGUARD_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

struct token_bucket {
    double tokens;
    uint64_t last_ms;
    bool started; /* false: full at the first take */
};

/* Take one token at now_ms: true if there was one (the command may run). rate > 0 tokens per
 * second, burst >= 1. A clock that goes backwards refills nothing. */
bool token_bucket_take(struct token_bucket *b, double rate, double burst, uint64_t now_ms);

struct lockout_config {
    uint32_t max_failures; /* failures for one name that lock that name out, >= 1 */
    uint32_t source_max_failures; /* failures for all names that lock the source out, >= max_failures */
    uint64_t window_ms;    /* ... when they fall within this time of the first, >= 1 */
    uint64_t duration_ms;  /* how long the lockout lasts, >= 1 */
    uint32_t table_size;   /* entries of each table, 8 .. 65536, rounded up to a power of two */
    uint64_t hash_seed;    /* random bytes from the caller */
};

struct lockout;

/* 0 and *out, -EINVAL (a field out of range), -ENOMEM. */
int lockout_new(const struct lockout_config *cfg, struct lockout **out) __attribute__((warn_unused_result));
void lockout_free(struct lockout *l); /* NULL is fine */

/* Is user (user_len bytes) locked out from src at now_ms? When it is, *retry_ms (if not NULL) is
 * the time left. NULL or an address of another family: never locked. */
bool lockout_locked(struct lockout *l, const struct sockaddr *src, const char *user, size_t user_len, uint64_t now_ms,
                    uint64_t *retry_ms);
/* A failed login as user from src. True when this failure started a lockout. */
bool lockout_record_failure(struct lockout *l, const struct sockaddr *src, const char *user, size_t user_len,
                            uint64_t now_ms);

struct lockout_stats { /* both tables together */
    uint64_t tracked; /* entries in use */
    uint64_t evicted; /* sources replaced by newer ones */
    uint64_t dropped; /* failures from a source that could not be tracked */
};
void lockout_get_stats(const struct lockout *l, struct lockout_stats *out);

#endif
