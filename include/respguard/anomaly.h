/*
 * anomaly: the anomaly detector core. It learns, per user and per ACL category, how many
 * commands a second that user normally sends, and reports when that changes: a sustained rate
 * spike, a category the user never used before, a burst of refusals or failed logins, a surge
 * of new connections. The session layer feeds it facts (record_*) and drives its clock (tick);
 * events come out of anomaly_tick through a callback, one at onset and one at recovery, never
 * one per command or per second, so a storm cannot flood the log.
 *
 * Pure: no I/O, no clock reads, no globals, no logging. Time is the caller's now_ms (any
 * monotonic millisecond clock; it must not go backwards by more than the open second, which is
 * tolerated and counted into that second). All memory is allocated by anomaly_new; the record
 * and tick paths allocate nothing, so their cost is fixed whatever the traffic. Not thread-safe:
 * one detector per worker loop (the session layer sums nothing across detectors; each worker
 * sees its own clients, and a later multi-worker design can share one detector under a lock or
 * give each worker its own, with thresholds per worker).
 *
 * Events
 *   rate_spike         (user, category) the commands per second of one category exceed
 *                      max(min_rate, mean * factor, mean + k * stddev) for sustain_s
 *                      consecutive seconds after the user's warm-up. Recovery: the rate stays at
 *                      or below recovery_ratio * threshold for recovery_s consecutive seconds.
 *   new_behaviour      (user, category) after the user's warm-up, a command of a tracked
 *                      category the user never issued before. Once per user and category, for
 *                      the life of the detector; onset only (there is nothing to recover from).
 *   denial_burst       (user) or (source) refusals in the last minute reach the threshold.
 *   auth_failure_burst (source) failed logins in the last minute reach the threshold.
 *   connection_surge   (user) or (source) new connections in the last minute reach
 *                      max(connection_surge_min, baseline * connection_surge_factor), where the
 *                      baseline is the exponentially weighted mean of connections per minute.
 *   Minute counts recover when they fall to half the threshold or below (hysteresis: a client
 *   hovering at the threshold gives one episode, not a line every few seconds). The minute is
 *   the last 50 to 60 seconds (six 10-second buckets). Per-source connection counts have no
 *   warm-up (a new source's baseline starts at 0, so the minimum decides).
 *
 * Baselines. Each (user, category) series has an exponentially weighted mean and variance of
 * its per-second rate with half-life half_life_s; until a series has 1/alpha seconds of history
 * (866 s at the default) it uses the plain average instead, so the first seconds after start-up
 * do not dominate the baseline. A user's series start learning at the user's first activity and
 * then learn every second, idle seconds included (a user who is idle for hours has a baseline
 * near 0, and its return is judged against min_rate: raise min_rate for users with a daily
 * batch job). Seconds that are above the threshold are not learned (a short burst leaves no
 * trace), and while a spike is active the variance is frozen and the mean learns only with
 * active_half_life_s: a long burst does not teach the baseline that bursts are normal, so it
 * recovers cleanly when it ends, while a permanent change of workload (a tripled rate that
 * stays) is accepted as the new normal after some hours instead of staying open forever.
 *
 * Sources are IP addresses (the port is ignored; IPv4-mapped IPv6 counts as IPv4; AF_UNIX peers
 * are one source "unix"). They live in a fixed set-associative table (source_table_size
 * entries, 8 ways a set, a seeded hash): a new source replaces the least recently seen source
 * of its set that has no open event, so a storm of distinct addresses costs no memory and never
 * loses an open event's recovery; when all 8 are open, the new source is not tracked (counted in
 * anomaly_stats.sources_dropped).
 *
 * What the caller should record: every command that resolved to a known command, allowed or
 * refused (a read-only client trying DEL is the behaviour change, even when the ACL refuses it);
 * every refusal (record_denial as well); every failed login; every new connection once, with
 * its source and, when known, its user (at login; a connection that never logs in, with user -1).
 */
#ifndef RESPGUARD_ANOMALY_H
#define RESPGUARD_ANOMALY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

enum anomaly_type {
    ANOMALY_RATE_SPIKE,         /* per user and category */
    ANOMALY_NEW_BEHAVIOUR,      /* per user and category, onset only */
    ANOMALY_DENIAL_BURST,       /* per user or per source */
    ANOMALY_AUTH_FAILURE_BURST, /* per source */
    ANOMALY_CONNECTION_SURGE,   /* per user or per source */
};
#define ANOMALY_TYPE_COUNT 5

enum anomaly_phase {
    ANOMALY_ONSET,    /* the condition started */
    ANOMALY_RECOVERY, /* the condition that started at the matching onset is over */
};

/* Names for logs and metric labels: "rate_spike", ..., and "onset"/"recovery". */
const char *anomaly_type_name(enum anomaly_type type);
const char *anomaly_phase_name(enum anomaly_phase phase);

/* One event. Handed to the callback by pointer; valid only during the call (copy what you keep). */
struct anomaly_event {
    enum anomaly_type type;
    enum anomaly_phase phase;
    int user;            /* user index, or -1 for a per-source event */
    char source[48];     /* textual IP address for per-source events, "" otherwise */
    const char *category; /* rate_spike, new_behaviour: ACL category name ("write"), static
                             storage; NULL for the other types */
    /* rate_spike: commands per second (onset: mean over the sustained run; recovery: the last
     * second). Minute counts: events in the last minute. new_behaviour: 0. */
    double observed;
    double baseline;  /* the learned mean in the same unit; 0 where the threshold is fixed
                         (denial and auth-failure bursts) and for new_behaviour */
    double threshold; /* the threshold in force at the time of the event, same unit */
    double peak;      /* recovery: highest observed value of the episode; onset: observed */
    uint64_t duration_s; /* recovery: seconds from onset to recovery; onset: 0 */
    uint64_t at_ms;   /* when the event was decided: the end of the last closed second (rate
                         events) or the tick's now_ms (the others) */
};

/* Receives events from anomaly_tick. It must not call anomaly_tick or anomaly_free on the same
 * detector; record_* calls are allowed (they only count). */
typedef void (*anomaly_event_cb)(const struct anomaly_event *ev, void *ctx);

/* Settings that can differ per user. */
struct anomaly_user_config {
    bool disabled;       /* nothing is learned or reported for this user */
    double min_rate;     /* rate_spike: commands per second of one category below which
                            nothing is a spike, whatever the baseline */
    double factor;       /* rate_spike: the rate must exceed mean * factor ... */
    double k;            /* ... and mean + k * stddev */
    uint32_t sustain_s;  /* rate_spike: for this many consecutive seconds (>= 1) */
    uint32_t denial_burst;          /* refusals per minute for this user; 0: not reported */
    uint32_t connection_surge_min;  /* new connections per minute; 0: not reported */
    double connection_surge_factor; /* and this many times the baseline (>= 1) */
};

struct anomaly_config {
    uint32_t half_life_s;        /* baselines forget half their weight in this time */
    uint32_t active_half_life_s; /* half-life of the mean while a spike is active */
    uint32_t warmup_s;           /* per user, from its first activity: no rate_spike,
                                    new_behaviour or user connection_surge before */
    uint32_t recovery_s;         /* rate_spike: consecutive calm seconds to recover */
    double recovery_ratio;       /* rate_spike: calm = rate <= ratio * threshold, (0, 1] */
    uint32_t categories;         /* cmdtab category bits tracked (rate_spike, new_behaviour) */
    struct anomaly_user_config user; /* every user's settings, unless overridden */
    /* NULL, or user_count entries: entry i replaces `user` for user i (each entry is complete:
     * fill it from `user`, then change fields). Copied by anomaly_new. */
    const struct anomaly_user_config *overrides;
    uint32_t denial_burst_source;          /* refusals per minute per source; 0: off */
    uint32_t auth_failure_burst;           /* failed logins per minute per source; 0: off */
    uint32_t connection_surge_min_source;  /* new connections per minute per source; 0: off */
    double connection_surge_factor_source; /* and this many times its baseline (>= 1) */
    uint32_t source_table_size; /* sources tracked at once, 8 .. 65536; rounded up to a power of
                                   two */
    uint64_t hash_seed;         /* seed of the source hash; the caller passes random bytes so
                                   that nobody can choose addresses that share a set */
};

/*
 * Defaults, and why:
 *  half_life_s 600: the default. Ten minutes follows a workday's slow changes (morning
 *    ramp, lunch dip) while a burst of a minute barely moves the baseline.
 *  active_half_life_s 21600 (6 h): a spike that lasts an hour lifts the mean by about 11% of the
 *    jump, so the end of the burst still recovers at once; a workload that tripled for good is
 *    accepted after roughly three to four hours (one onset, one recovery) instead of never.
 *  warmup_s 600: one half-life; the baseline has then seen ten minutes of the user's traffic.
 *    Longer makes every restart blind for longer (baselines are not persisted).
 *  sustain_s 10: a cache warm-up after a deploy or a cron job's few-second flurry passes; a
 *    runaway worker or a keyspace walk lasting ten seconds is reported within ten seconds.
 *  recovery_s 30, recovery_ratio 0.8: a burst with short pauses, or a rate hovering at the
 *    threshold, is one episode; recovery is reported half a minute after calm returns.
 *  min_rate 20/s: one interactive or light client stays below it, so quiet series (a user doing
 *    0.1 commands/s going to 5/s is a 50x "spike") do not raise noise; anything that costs money
 *    or moves data fast is above it.
 *  factor 3, k 4: the rate must at least triple AND leave the noise: for steady (Poisson-like)
 *    traffic the factor decides; for bursty series the 4 stddev term keeps normal peaks quiet.
 *  categories: keyspace, read, write, admin, pubsub, scripting, dangerous, blocking. These say
 *    what a client does; the data-type categories, fast/slow and connection would repeat each
 *    event several times (GET is read, string and fast) or flag harmless PINGs as new.
 *  denial_burst 30/min (user and source): a correctly configured client is never refused; a
 *    few refusals come from a deploy with a new command. One every two seconds for a minute is
 *    a misconfiguration or someone probing what they may do.
 *  auth_failure_burst 10/min: a person mistyping a password fails a few times; a guesser fails
 *    hundreds of times a minute.
 *  connection_surge_min 100/min, factor 10 (user and source): a connection pool restarting
 *    opens tens of connections at once; more than 100 in a minute and ten times the usual is a
 *    reconnect loop or a flood.
 *  source_table_size 1024: some 150 KB; more distinct active sources than that per worker means
 *    the per-source view is already an aggregate problem (and sources_dropped says so).
 */
void anomaly_config_defaults(struct anomaly_config *cfg);

/* Check a config (and its overrides, user_count entries) without creating a detector: 0, or
 * -EINVAL with a message naming the field in err (NUL-terminated when errlen > 0). */
int anomaly_config_check(const struct anomaly_config *cfg, size_t user_count, char *err, size_t errlen)
    __attribute__((warn_unused_result));

struct anomaly;

/* A detector for users 0 .. user_count-1 (the config's user order). The config is copied (with
 * its overrides); the caller may free it afterwards. 0 and *out set, -EINVAL (bad config or
 * user_count above 65536), -ENOMEM. Free with anomaly_free. */
int anomaly_new(const struct anomaly_config *cfg, size_t user_count, struct anomaly **out)
    __attribute__((warn_unused_result));
/* New settings for a running detector (a configuration reload), keeping what it has learnt:
 * user_count may grow (new users start unseen, as in anomaly_new); the settings and per-user
 * overrides are replaced. A user the new settings disable is forgotten (its open episodes are
 * dropped silently, as by anomaly_free; enabled again, it starts unseen). The tracked categories
 * and the source table size cannot change, nor can users go: -EINVAL (make a new detector), or
 * another code from anomaly_config_check; then nothing changed. */
int anomaly_reconfigure(struct anomaly *d, const struct anomaly_config *cfg, size_t user_count)
    __attribute__((warn_unused_result));
void anomaly_free(struct anomaly *d); /* NULL is fine; open episodes are dropped silently */

/* Facts. user: index, or -1 when there is none (out-of-range indexes are ignored as well).
 * src: the peer address (AF_INET, AF_INET6, AF_UNIX), or NULL when unknown; it is read during
 * the call only. None of these allocates or reports; events come from anomaly_tick. */
void anomaly_record_command(struct anomaly *d, int user, uint32_t categories, uint64_t now_ms);
void anomaly_record_denial(struct anomaly *d, int user, const struct sockaddr *src, uint64_t now_ms);
void anomaly_record_auth_failure(struct anomaly *d, const struct sockaddr *src, uint64_t now_ms);
void anomaly_record_connection(struct anomaly *d, int user, const struct sockaddr *src,
                               uint64_t now_ms);

/* Call about once a second. Closes every whole second before now_ms, updates the baselines and
 * calls cb for each event (cb may be NULL: state still advances). When ticks are late, the
 * counts of the missed seconds are spread evenly over them; a gap of any length costs the same. */
void anomaly_tick(struct anomaly *d, uint64_t now_ms, anomaly_event_cb cb, void *ctx);

struct anomaly_stats {
    uint64_t events;          /* events emitted */
    uint64_t sources_tracked; /* entries of the source table in use now */
    uint64_t sources_evicted; /* sources replaced by newer ones */
    uint64_t sources_dropped; /* facts about a source not tracked (its set was all open events) */
};
void anomaly_get_stats(const struct anomaly *d, struct anomaly_stats *out);

#endif
