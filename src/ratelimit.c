/*
 * ratelimit: a user's command token bucket, and the login lockout table per source and user name
 * (the contract is in ratelimit.h).
 *
 * What it must not do: read a clock, allocate after lockout_new, keep global state, grow with
 * the number of distinct sources, or let anything but time end a lockout (not a flood of other
 * addresses or names, not more failures, not a success).
 *
 * Lockout entries count failures in a window anchored at the first failure: the failure that
 * finds no count, or a window of window_ms or more ago, starts a new window at 1. Reaching
 * max_failures locks the entry until now + duration_ms and clears the count, so that after the
 * lockout the source has max_failures attempts again. A source is what source.h makes of a
 * peer address, as for the anomaly detector (the same client is the same source to both), with
 * IPv6 addresses cut to their /64.
 */
#include "respguard/ratelimit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/source.h"

#define WAYS 8 /* entries per set of the lockout table */
#define MIN_TABLE WAYS
#define MAX_TABLE 65536

/* ---------------------------------------------------------------------------------------- */
/* token bucket                                                                             */
/* ---------------------------------------------------------------------------------------- */

static void refill(struct token_bucket *b, double rate, double burst, uint64_t now_ms)
{
    if (!b->started) {
        b->started = true;
        b->tokens = burst;
        b->last_ms = now_ms;
    } else if (now_ms > b->last_ms) {
        /* A clock that went backwards refills nothing and leaves last_ms alone: once it passes
         * last_ms again, refilling resumes from there and no millisecond is paid for twice. */
        b->tokens += (double)(now_ms - b->last_ms) * rate / 1000.0;
        b->last_ms = now_ms;
    }
    /* Also when no time passed: a burst lowered since the last take applies at once. */
    if (b->tokens > burst)
        b->tokens = burst;
}

bool token_bucket_take(struct token_bucket *b, double rate, double burst, uint64_t now_ms)
{
    refill(b, rate, burst, now_ms);
    if (b->tokens < 1.0)
        return false;
    b->tokens -= 1.0;
    return true;
}

void token_bucket_charge(struct token_bucket *b, double rate, double burst, uint64_t now_ms)
{
    refill(b, rate, burst, now_ms);
    /* Debt, bounded: a flood of commands that may not be refused costs the commands after it,
     * for at most 2 * burst / rate seconds. */
    if (b->tokens - 1.0 >= -burst)
        b->tokens -= 1.0;
}

/* ---------------------------------------------------------------------------------------- */
/* lockout table                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* What a lockout entry counts for: a source (IPv6 by /64) and a user name (hashed: a collision
 * only makes two names share a count). */
struct lock_key {
    struct source_key source;
    uint64_t user_hash;
};

struct entry {
    struct lock_key key;
    bool in_use;
    uint32_t failures;        /* in the current window; always below max_failures */
    uint64_t window_start_ms; /* the first failure of the current window */
    uint64_t locked_until_ms; /* locked while now < this; 0: never locked */
    uint64_t last_seen_ms;    /* last failure: the least recent unlocked entry of a set is replaced */
};

struct lockout {
    struct lockout_config cfg;
    struct entry *entries; /* nsets * WAYS */
    size_t nsets;
    struct lockout_stats stats;
};

int lockout_new(const struct lockout_config *cfg, struct lockout **out)
{
    *out = NULL;
    if (cfg == NULL || cfg->max_failures < 1 || cfg->window_ms < 1 || cfg->duration_ms < 1 ||
        cfg->table_size < MIN_TABLE || cfg->table_size > MAX_TABLE)
        return -EINVAL;
    struct lockout *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    l->cfg = *cfg;
    size_t table = WAYS;
    while (table < cfg->table_size)
        table *= 2;
    l->nsets = table / WAYS;
    l->entries = calloc(table, sizeof *l->entries);
    if (l->entries == NULL) {
        free(l);
        return -ENOMEM;
    }
    *out = l;
    return 0;
}

void lockout_free(struct lockout *l)
{
    if (l == NULL)
        return;
    free(l->entries);
    free(l);
}

void lockout_get_stats(const struct lockout *l, struct lockout_stats *out)
{
    *out = l->stats;
}

static bool entry_locked(const struct entry *e, uint64_t now_ms)
{
    return now_ms < e->locked_until_ms;
}

/* FNV-1a over the name, seeded, then a 64-bit finaliser (splitmix64's). */
static uint64_t name_hash(const char *p, size_t len, uint64_t seed)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 31);
}

static bool make_key(const struct lockout *l, const struct sockaddr *src, const char *user, size_t user_len,
                     struct lock_key *k)
{
    if (!source_key_from(src, &k->source))
        return false;
    if (k->source.family == SOURCE_IPV6)
        memset(k->source.addr + 8, 0, 8); /* the /64 */
    k->user_hash = name_hash(user, user_len, l->cfg.hash_seed);
    return true;
}

static bool key_equal(const struct lock_key *a, const struct lock_key *b)
{
    return a->user_hash == b->user_hash && source_key_equal(&a->source, &b->source);
}

static struct entry *set_of(struct lockout *l, const struct lock_key *k)
{
    uint64_t h = source_key_hash(&k->source, l->cfg.hash_seed) ^ k->user_hash;
    return &l->entries[(h & (l->nsets - 1)) * WAYS];
}

/* The entry of a tracked key, or NULL. */
static struct entry *entry_find(struct lockout *l, const struct lock_key *k)
{
    struct entry *set = set_of(l, k);
    for (int w = 0; w < WAYS; w++) {
        if (set[w].in_use && key_equal(&set[w].key, k))
            return &set[w];
    }
    return NULL;
}

/* The entry of a key, created if needed. NULL: its set is all locked out. */
static struct entry *entry_get(struct lockout *l, const struct lock_key *k, uint64_t now_ms)
{
    struct entry *set = set_of(l, k);
    struct entry *victim = NULL;
    for (int w = 0; w < WAYS; w++) {
        if (set[w].in_use && key_equal(&set[w].key, k))
            return &set[w];
        if (!set[w].in_use && victim == NULL)
            victim = &set[w];
    }
    if (victim == NULL) {
        /* Replace the least recently seen entry that is not locked out: replacing a locked one
         * would let a flood of addresses lift a lockout. When all are locked, the newcomer goes
         * untracked instead; its failures are then not counted, which is the lesser harm (the
         * seeded hash keeps anyone from aiming eight lockouts at one set on purpose). */
        for (int w = 0; w < WAYS; w++) {
            if (!entry_locked(&set[w], now_ms) && (victim == NULL || set[w].last_seen_ms < victim->last_seen_ms))
                victim = &set[w];
        }
        if (victim == NULL) {
            l->stats.dropped++;
            return NULL;
        }
        l->stats.evicted++;
    } else {
        l->stats.tracked++;
    }
    *victim = (struct entry){.key = *k, .in_use = true, .last_seen_ms = now_ms};
    return victim;
}

bool lockout_locked(struct lockout *l, const struct sockaddr *src, const char *user, size_t user_len, uint64_t now_ms,
                    uint64_t *retry_ms)
{
    /* A look-up only: asking does not make a source tracked or recently seen (only failures
     * are worth a place in the table). */
    struct lock_key k;
    const struct entry *e = make_key(l, src, user, user_len, &k) ? entry_find(l, &k) : NULL;
    bool locked = e != NULL && entry_locked(e, now_ms);
    if (retry_ms != NULL)
        *retry_ms = locked ? e->locked_until_ms - now_ms : 0;
    return locked;
}

bool lockout_record_failure(struct lockout *l, const struct sockaddr *src, const char *user, size_t user_len,
                            uint64_t now_ms)
{
    struct lock_key k;
    struct entry *e = make_key(l, src, user, user_len, &k) ? entry_get(l, &k, now_ms) : NULL;
    if (e == NULL)
        return false;
    if (now_ms > e->last_seen_ms)
        e->last_seen_ms = now_ms;
    /* A failure while locked out (the caller refused the login without checking the password,
     * or raced with the lockout) neither counts nor extends it: the lockout is a fixed penalty,
     * so the retry time the client was told holds, and a client retrying a wrong password in a
     * loop gets its max_failures attempts back after duration_ms instead of never. A guesser
     * still gets at most max_failures guesses per duration_ms. */
    if (entry_locked(e, now_ms))
        return false;
    /* A clock slightly behind the window's start (callers on several threads) counts as in it. */
    uint64_t elapsed = now_ms > e->window_start_ms ? now_ms - e->window_start_ms : 0;
    if (e->failures == 0 || elapsed >= l->cfg.window_ms) {
        e->window_start_ms = now_ms;
        e->failures = 1;
    } else {
        e->failures++;
    }
    if (e->failures < l->cfg.max_failures)
        return false;
    e->failures = 0;
    e->locked_until_ms = now_ms > UINT64_MAX - l->cfg.duration_ms ? UINT64_MAX : now_ms + l->cfg.duration_ms;
    return true;
}
