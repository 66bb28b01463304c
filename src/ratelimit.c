/*
 * ratelimit: a user's command token bucket, and the login lockout tables, per source and per
 * (source, user name) (the contract is in ratelimit.h).
 *
 * What it must not do: read a clock, allocate after lockout_new, keep global state, grow with
 * the number of distinct sources, or let anything but time end a lockout (not a flood of other
 * addresses or names, not more failures, not a success).
 *
 * Lockout entries count failures in a window anchored at the first failure: the failure that
 * finds no count, or a window of window_ms or more ago, starts a new window at 1. Reaching the
 * table's threshold (max_failures for a name, source_max_failures for a source) locks the entry
 * until now + duration_ms and clears the count, so that after the lockout it has its attempts
 * again. A source is what source.h makes of a
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

/* ---------------------------------------------------------------------------------------- */
/* lockout table                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* What a lockout entry counts for: a source (IPv6 by /64), and in the names table one user name
 * (hashed: a collision only makes two names share a count; 0 in the sources table). */
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

/* A fixed set-associative table of entries. */
struct table {
    struct entry *entries; /* nsets * WAYS */
    size_t nsets;
    struct lockout_stats stats;
};

/* Two tables of the same size: failures per source, and per (source, name). Separate, so that a
 * flood of one kind of entry cannot push the other kind out. */
struct lockout {
    struct lockout_config cfg;
    struct table sources;
    struct table names;
};

int lockout_new(const struct lockout_config *cfg, struct lockout **out)
{
    *out = NULL;
    if (cfg == NULL || cfg->max_failures < 1 || cfg->source_max_failures < cfg->max_failures || cfg->window_ms < 1 ||
        cfg->duration_ms < 1 ||
        cfg->table_size < MIN_TABLE || cfg->table_size > MAX_TABLE)
        return -EINVAL;
    struct lockout *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    l->cfg = *cfg;
    size_t size = WAYS;
    while (size < cfg->table_size)
        size *= 2;
    l->sources.nsets = l->names.nsets = size / WAYS;
    l->sources.entries = calloc(size, sizeof *l->sources.entries);
    l->names.entries = calloc(size, sizeof *l->names.entries);
    if (l->sources.entries == NULL || l->names.entries == NULL) {
        lockout_free(l);
        return -ENOMEM;
    }
    *out = l;
    return 0;
}

void lockout_free(struct lockout *l)
{
    if (l == NULL)
        return;
    free(l->sources.entries);
    free(l->names.entries);
    free(l);
}

void lockout_get_stats(const struct lockout *l, struct lockout_stats *out)
{
    out->tracked = l->sources.stats.tracked + l->names.stats.tracked;
    out->evicted = l->sources.stats.evicted + l->names.stats.evicted;
    out->dropped = l->sources.stats.dropped + l->names.stats.dropped;
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

/* The keys of src in the sources table and, for user, in the names table. False: src is not a
 * source. */
static bool make_keys(const struct lockout *l, const struct sockaddr *src, const char *user, size_t user_len,
                      struct lock_key *source_key, struct lock_key *name_key)
{
    memset(source_key, 0, sizeof *source_key);
    if (!source_key_from(src, &source_key->source))
        return false;
    if (source_key->source.family == SOURCE_IPV6)
        memset(source_key->source.addr + 8, 0, 8); /* the /64 */
    *name_key = *source_key;
    name_key->user_hash = name_hash(user, user_len, l->cfg.hash_seed);
    return true;
}

static bool key_equal(const struct lock_key *a, const struct lock_key *b)
{
    return a->user_hash == b->user_hash && source_key_equal(&a->source, &b->source);
}

static struct entry *set_of(const struct lockout *l, struct table *t, const struct lock_key *k)
{
    uint64_t h = source_key_hash(&k->source, l->cfg.hash_seed) ^ k->user_hash;
    return &t->entries[(h & (t->nsets - 1)) * WAYS];
}

/* The entry of a tracked key, or NULL. */
static struct entry *entry_find(const struct lockout *l, struct table *t, const struct lock_key *k)
{
    struct entry *set = set_of(l, t, k);
    for (int w = 0; w < WAYS; w++) {
        if (set[w].in_use && key_equal(&set[w].key, k))
            return &set[w];
    }
    return NULL;
}

/* The entry of a key, created if needed. NULL: its set is all locked out. */
static struct entry *entry_get(const struct lockout *l, struct table *t, const struct lock_key *k, uint64_t now_ms)
{
    struct entry *set = set_of(l, t, k);
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
            t->stats.dropped++;
            return NULL;
        }
        t->stats.evicted++;
    } else {
        t->stats.tracked++;
    }
    *victim = (struct entry){.key = *k, .in_use = true, .last_seen_ms = now_ms};
    return victim;
}

/* The time e stays locked from now_ms; 0: not locked (or no entry). */
static uint64_t locked_for(const struct entry *e, uint64_t now_ms)
{
    return e != NULL && entry_locked(e, now_ms) ? e->locked_until_ms - now_ms : 0;
}

bool lockout_locked(struct lockout *l, const struct sockaddr *src, const char *user, size_t user_len, uint64_t now_ms,
                    uint64_t *retry_ms)
{
    /* A look-up only: asking does not make a source tracked or recently seen (only failures
     * are worth a place in the table). */
    struct lock_key sk, nk;
    uint64_t left = 0;
    if (make_keys(l, src, user, user_len, &sk, &nk)) {
        uint64_t a = locked_for(entry_find(l, &l->sources, &sk), now_ms);
        uint64_t b = locked_for(entry_find(l, &l->names, &nk), now_ms);
        left = a > b ? a : b;
    }
    if (retry_ms != NULL)
        *retry_ms = left;
    return left > 0;
}

/* Count one failure in e against threshold; true when it starts e's lockout. */
static bool count_failure(struct lockout *l, struct entry *e, uint32_t threshold, uint64_t now_ms)
{
    if (now_ms > e->last_seen_ms)
        e->last_seen_ms = now_ms;
    /* A clock slightly behind the window's start (callers on several threads) counts as in it. */
    uint64_t elapsed = now_ms > e->window_start_ms ? now_ms - e->window_start_ms : 0;
    if (e->failures == 0 || elapsed >= l->cfg.window_ms) {
        e->window_start_ms = now_ms;
        e->failures = 1;
    } else {
        e->failures++;
    }
    if (e->failures < threshold)
        return false;
    e->failures = 0;
    e->locked_until_ms = now_ms > UINT64_MAX - l->cfg.duration_ms ? UINT64_MAX : now_ms + l->cfg.duration_ms;
    return true;
}

bool lockout_record_failure(struct lockout *l, const struct sockaddr *src, const char *user, size_t user_len,
                            uint64_t now_ms)
{
    struct lock_key sk, nk;
    if (!make_keys(l, src, user, user_len, &sk, &nk))
        return false;
    /* A failure while locked out (the caller refused the login without checking the password,
     * or raced with the lockout) neither counts nor extends it: the lockout is a fixed penalty,
     * so the retry time the client was told holds, and a client retrying a wrong password in a
     * loop gets its attempts back after duration_ms instead of never. */
    if (locked_for(entry_find(l, &l->sources, &sk), now_ms) || locked_for(entry_find(l, &l->names, &nk), now_ms))
        return false;
    /* Both counts: the name's (max_failures) and the whole source's (source_max_failures), so
     * that made-up names cannot give one source unlimited guesses, nor fill the table. */
    struct entry *se = entry_get(l, &l->sources, &sk, now_ms);
    bool started = se != NULL && count_failure(l, se, l->cfg.source_max_failures, now_ms);
    struct entry *ne = entry_get(l, &l->names, &nk, now_ms);
    started |= ne != NULL && count_failure(l, ne, l->cfg.max_failures, now_ms);
    return started;
}
