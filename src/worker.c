/*
 * worker: lookups over the shared configuration, the end of rate-limit episodes, the pools and
 * the work at the end of each loop turn. Holds no state of its own beyond struct worker.
 *
 * The loop turn: everything sessions and pools write during a turn (replies to clients, commands
 * to the upstream) is queued, and sent in one write per connection just before the loop waits
 * for I/O again (a uv_prepare_t, Redis's beforeSleep). So the commands of many clients that
 * arrive in one turn leave on a shared upstream connection in one write, and a pipeline's
 * replies leave in one write to its client.
 */
#include "respguard/worker.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "respguard/acl.h"
#include "respguard/anomaly.h"
#include "respguard/config.h"
#include "respguard/crypto.h"
#include "respguard/invariant.h"
#include "respguard/listener.h"
#include "respguard/log.h"
#include "respguard/metrics.h"
#include "respguard/session.h"
#include "respguard/snapshot.h"

size_t worker_user_slot(const struct worker *w, const struct snapshot *snap, const struct acl_user *u)
{
    (void)w;
    return snap->user_slot[snapshot_user_index(snap, u)];
}

const struct config_user *worker_user_config(const struct snapshot *snap, const struct acl_user *u)
{
    return &snap->cfg->users[snapshot_user_index(snap, u)];
}

const char *worker_verify_name(const struct worker *w)
{
    const char *sni = w->snap->cfg->upstream.server_name;
    return sni ? sni : w->upstream_host;
}

bool worker_pool_current(const struct worker *w, const struct pool *p)
{
    for (size_t i = 0; i < w->snap->login_count; i++)
        if (w->pools[w->login_pool[i]] == p)
            return true;
    return false;
}

struct pool *worker_user_pool(const struct worker *w, const struct acl_user *u)
{
    size_t i = snapshot_user_index(w->snap, u);
    RG_INVARIANT(i < w->snap->user_count); /* a user of the current snapshot */
    return w->pools[w->login_pool[w->snap->user_login[i]]];
}

void worker_rate_limit_tick(struct worker *w, uint64_t now_ms)
{
    for (size_t i = 0; w->rates && i < w->slot_count; i++) {
        struct worker_user_rate *r = &w->rates[i];
        if (!r->limiting || now_ms - r->last_refused_ms < 1000)
            continue;
        log_event(LOG_INFO, "rate_limit", LOG_STR("phase", "end"), LOG_STR("user", w->slot_names[i]),
                  LOG_INT("refused", (long long)r->refused), LOG_END);
        r->limiting = false;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* What outlives snapshots: user slots, the anomaly detector, the login lockout              */
/* ---------------------------------------------------------------------------------------- */

static size_t find_slot(const struct worker *w, const char *name)
{
    for (size_t i = 0; i < w->slot_count; i++)
        if (strcmp(w->slot_names[i], name) == 0)
            return i;
    return SIZE_MAX;
}

/* Give every user of snap its slot, adding slots (and their metrics and rate buckets) for names
 * not seen before. -ENOMEM adds no slot (the rate array may have grown: harmless). */
static int assign_slots(struct worker *w, struct snapshot *snap)
{
    size_t fresh = 0;
    for (size_t i = 0; i < snap->user_count; i++)
        fresh += find_slot(w, snap->users[i].name) == SIZE_MAX;
    if (fresh) {
        size_t total = w->slot_count + fresh;
        char **names = realloc(w->slot_names, total * sizeof *names);
        if (!names)
            return -ENOMEM;
        w->slot_names = names;
        struct worker_user_rate *rates = realloc(w->rates, total * sizeof *rates);
        if (!rates)
            return -ENOMEM;
        memset(rates + w->slot_count, 0, fresh * sizeof *rates);
        w->rates = rates;
        size_t first = w->slot_count;
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < snap->user_count; i++) {
            if (find_slot(w, snap->users[i].name) != SIZE_MAX)
                continue;
            if (!(w->slot_names[w->slot_count] = strdup(snap->users[i].name)))
                rc = -ENOMEM;
            else
                w->slot_count++;
        }
        if (rc == 0)
            rc = metrics_add_users(w->metrics_all, w->slot_count - first, (const char *const *)w->slot_names + first);
        if (rc != 0) { /* the slots go again, so that a later reload adds them with their metrics */
            while (w->slot_count > first)
                free(w->slot_names[--w->slot_count]);
            return rc;
        }
    }
    for (size_t i = 0; i < snap->user_count; i++)
        snap->user_slot[i] = find_slot(w, snap->users[i].name);
    return 0;
}

/* The detector for snap's settings, per slot: the running one reconfigured when it can be (what
 * it learnt is kept), else a new one. Slots without a user in snap are disabled. */
static int update_anomaly(struct worker *w, const struct snapshot *snap)
{
    const struct config *cfg = snap->cfg;
    if (!cfg->anomaly_enabled) {
        anomaly_free(w->anomaly);
        w->anomaly = NULL;
        return 0;
    }
    struct anomaly_config ac = cfg->anomaly;
    struct anomaly_user_config *per_slot = calloc(w->slot_count ? w->slot_count : 1, sizeof *per_slot);
    if (!per_slot)
        return -ENOMEM;
    for (size_t i = 0; i < w->slot_count; i++) {
        per_slot[i] = ac.user;
        per_slot[i].disabled = true;
    }
    for (size_t i = 0; i < snap->user_count; i++)
        per_slot[snap->user_slot[i]] = cfg->users[i].anomaly;
    ac.overrides = per_slot;
    int rc = w->anomaly ? anomaly_reconfigure(w->anomaly, &ac, w->slot_count) : -EINVAL;
    if (rc == -EINVAL) {
        struct anomaly *d = NULL;
        rc = crypto_random(&ac.hash_seed, sizeof ac.hash_seed) != 0 ? -EIO : anomaly_new(&ac, w->slot_count, &d);
        if (rc == 0) {
            anomaly_free(w->anomaly);
            w->anomaly = d;
        }
    }
    free(per_slot);
    return rc;
}

static bool same_lockout(const struct config_login_lockout *a, const struct config_login_lockout *b)
{
    return a->enabled == b->enabled && a->failures == b->failures && a->window_ms == b->window_ms &&
           a->duration_ms == b->duration_ms;
}

/* The lockout table for lo; a change of settings starts a new, empty one. */
static int update_lockout(struct worker *w, const struct config_login_lockout *lo)
{
    if (!lo->enabled) {
        lockout_free(w->lockout);
        w->lockout = NULL;
        return 0;
    }
    /* The whole source may fail ten times as often as one name: a few apps with stale passwords
     * behind one address are not locked out together, a name sprayer is. */
    uint64_t source_max = (uint64_t)lo->failures * 10;
    struct lockout_config lc = {.max_failures = lo->failures,
                                .source_max_failures = source_max > UINT32_MAX ? UINT32_MAX : (uint32_t)source_max,
                                .window_ms = lo->window_ms,
                                .duration_ms = lo->duration_ms,
                                .table_size = 4096};
    struct lockout *l = NULL;
    if (crypto_random(&lc.hash_seed, sizeof lc.hash_seed) != 0 || lockout_new(&lc, &l) != 0)
        return -ENOMEM;
    lockout_free(w->lockout);
    w->lockout = l;
    return 0;
}

int worker_init(struct worker *w, uv_loop_t *loop, struct snapshot *snap, char *err, size_t errlen)
{
    const struct config *cfg = snap->cfg;
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->snap = snap;
    w->pool_mode = cfg->upstream.pool.mode;
    w->upstream_port = cfg->upstream.port;
    w->upstream_host = strdup(cfg->upstream.host);
    w->listener_count = cfg->listener_count;
    w->listeners = calloc(cfg->listener_count ? cfg->listener_count : 1, sizeof *w->listeners);
    if (!w->upstream_host || !w->listeners || metrics_new(0, NULL, 1, &w->metrics_all) != 0 ||
        assign_slots(w, snap) != 0 || update_lockout(w, &cfg->limits.login_lockout) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->metrics = metrics_shard(w->metrics_all, 0);
    if (update_anomaly(w, snap) != 0) {
        snprintf(err, errlen, "cannot start the anomaly detector");
        return -1;
    }
    return 0;
}

static void on_spin(uv_idle_t *h) { (void)h; } /* its being active is what counts */

static bool work_left(const struct worker *w)
{
    if (w->input_head || w->flush_head)
        return true;
    for (size_t i = 0; i < w->pool_count; i++)
        if (w->pools[i]->flush_head)
            return true;
    return false;
}

static void on_turn(uv_prepare_t *h)
{
    struct worker *w = h->data;
    /* A write that leaves at once may free a paused side (TRANSPORT_DRAINED), whose work is
     * then done here too; a few rounds at most, the rest next turn without waiting. */
    for (int round = 0; round < 4; round++) {
        session_turn_input(w);
        for (size_t i = 0; i < w->pool_count; i++)
            pool_flush(w->pools[i]);
        session_turn_flush(w);
        if (!work_left(w))
            break;
    }
    if (work_left(w))
        uv_idle_start(&w->spin, on_spin);
    else
        uv_idle_stop(&w->spin);
}

/* Room for n more pools: the array grown and the structures allocated (w->spare), so that
 * adding them cannot fail halfway through a reload. */
static int reserve_pools(struct worker *w, size_t n)
{
    struct pool **pools = realloc(w->pools, (w->pool_count + n + 1) * sizeof *pools);
    if (!pools)
        return -ENOMEM;
    w->pools = pools;
    while (w->spare_count < n) {
        struct pool *p = calloc(1, sizeof *p);
        struct pool **spare = p ? realloc(w->spare, (w->spare_count + 1) * sizeof *spare) : NULL;
        if (!spare) {
            free(p);
            return -ENOMEM;
        }
        w->spare = spare;
        w->spare[w->spare_count++] = p;
    }
    return 0;
}

/* A pool for login i of the current snapshot, appended to w->pools from the reserved ones. One
 * that cannot start is kept, retired: its users get no connection (the error is logged). */
static size_t add_pool(struct worker *w, size_t login)
{
    struct pool *p = w->spare[--w->spare_count];
    const char *name = snapshot_login_name(w->snap, login);
    int rc = pool_start(p, w, login, name);
    if (rc < 0) {
        log_event(LOG_ERROR, "pool_error", LOG_STR("credential", name), LOG_STR("reason", uv_strerror(rc)),
                  LOG_END);
        p->retired = true;
    }
    w->pools[w->pool_count] = p;
    return w->pool_count++;
}

int worker_start(struct worker *w)
{
    w->login_pool = calloc(w->snap->login_count, sizeof *w->login_pool);
    if (!w->login_pool || reserve_pools(w, w->snap->login_count) != 0)
        return -1;
    uv_prepare_init(w->loop, &w->turn);
    uv_idle_init(w->loop, &w->spin);
    w->turn.data = w->spin.data = w;
    w->turn_open = true;
    uv_prepare_start(&w->turn, on_turn);
    for (size_t i = 0; i < w->snap->login_count; i++) /* the URL's pool is pools[0], always */
        w->login_pool[i] = add_pool(w, i);
    for (size_t i = 0; i < w->pool_count; i++)
        if (w->pools[i]->retired)
            return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Reload                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* The pool of login i of next: the URL's is pools[0]; a named credential's is the live pool of
 * that name (never pools[0], whatever the name), or SIZE_MAX for a name not seen before. */
static size_t pool_of_login(const struct worker *w, const struct snapshot *next, size_t i)
{
    if (i == 0)
        return 0;
    const char *name = snapshot_login_name(next, i);
    for (size_t j = 1; j < w->pool_count; j++)
        if (!w->pools[j]->retired && strcmp(w->pools[j]->name, name) == 0)
            return j;
    return SIZE_MAX;
}

/* Does a connection made for login a of old speak and verify as login b of next would? The
 * verify name is the same when server_name is (the upstream host cannot change while running). */
static bool same_upstream(const struct snapshot *old, size_t a, const struct snapshot *next, size_t b)
{
    const char *sa = old->cfg->upstream.server_name, *sb = next->cfg->upstream.server_name;
    return snapshot_same_upstream_login(old, a, next, b) && (sa == sb || (sa && sb && strcmp(sa, sb) == 0));
}

int worker_install(struct worker *w, struct snapshot *next, struct worker_reload_result *out, char *err,
                   size_t errlen)
{
    memset(out, 0, sizeof *out);
    /* What can fail comes first, and changes nothing anyone sees: slots (and their counters) for
     * new names, the login map, room for the pools of new credentials. */
    size_t fresh = 0;
    for (size_t i = 0; i < next->login_count; i++)
        fresh += pool_of_login(w, next, i) == SIZE_MAX;
    size_t *login_pool = calloc(next->login_count, sizeof *login_pool);
    bool *kept = calloc(w->pool_count, sizeof *kept);
    if (!login_pool || !kept || reserve_pools(w, fresh) != 0 || assign_slots(w, next) != 0) {
        free(login_pool);
        free(kept);
        snapshot_unref(next);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct snapshot *old = w->snap;
    const struct config *cfg = next->cfg;
    if (update_anomaly(w, next) != 0)
        log_event(LOG_ERROR, "reload", LOG_STR("part", "anomaly"),
                  LOG_STR("reason", "cannot apply the anomaly settings; the previous ones stay"), LOG_END);
    if (!same_lockout(&old->cfg->limits.login_lockout, &cfg->limits.login_lockout) &&
        update_lockout(w, &cfg->limits.login_lockout) != 0)
        log_event(LOG_ERROR, "reload", LOG_STR("part", "login_lockout"),
                  LOG_STR("reason", "cannot apply the login_lockout settings; the previous ones stay"), LOG_END);

    /* Pools follow credential names: a kept name keeps its pool (drained if its login or the
     * upstream verification changed), a new name gets one, a removed one is retired. */
    w->snap = next;
    size_t known = w->pool_count;
    for (size_t i = 0; i < next->login_count; i++) {
        size_t j = pool_of_login(w, next, i);
        if (j == SIZE_MAX || j >= known) {
            login_pool[i] = j == SIZE_MAX ? add_pool(w, i) : j;
            continue;
        }
        login_pool[i] = j;
        kept[j] = true;
        struct pool *p = w->pools[j];
        bool same = same_upstream(old, p->login, next, i);
        p->login = i;
        if (!same) {
            pool_drain(p);
            out->pools_drained++;
        }
    }
    free(w->login_pool);
    w->login_pool = login_pool;

    /* Sessions move first (one waiting in a pool its user no longer maps to waits in the right
     * one), then removed credentials' pools are retired (failing what still waits there, and
     * marking their connections to close when free), and only then are the sessions that may
     * not go on closed: the connections they give back must not be reset with a login the
     * new snapshot no longer has. */
    worker_reload_sessions(w);
    for (size_t j = 0; j < known; j++)
        if (!kept[j] && !w->pools[j]->retired)
            pool_retire(w->pools[j]);
    free(kept);
    out->sessions_closed = worker_close_reloaded_sessions(w);
    for (size_t i = 0; i < w->listener_count; i++)
        listener_reload(&w->listeners[i], next);
    snapshot_unref(old);
    return 0;
}

void worker_stop_pools(struct worker *w)
{
    for (size_t i = 0; i < w->pool_count; i++)
        pool_stop(w->pools[i]);
}

void worker_close_turn(struct worker *w)
{
    if (!w->turn_open)
        return;
    w->turn_open = false;
    uv_close((uv_handle_t *)&w->turn, NULL);
    uv_close((uv_handle_t *)&w->spin, NULL);
}

void worker_free(struct worker *w)
{
    for (size_t i = 0; i < w->pool_count; i++) {
        pool_free(w->pools[i]);
        free(w->pools[i]);
    }
    free(w->pools);
    w->pools = NULL;
    w->pool_count = 0;
    while (w->spare_count)
        free(w->spare[--w->spare_count]);
    free(w->spare);
    free(w->login_pool);
    for (size_t i = 0; i < w->listener_count && w->listeners; i++)
        listener_free(&w->listeners[i]);
    free(w->listeners);
    for (size_t i = 0; i < w->slot_count; i++)
        free(w->slot_names[i]);
    free(w->slot_names);
    free(w->rates);
    anomaly_free(w->anomaly);
    lockout_free(w->lockout);
    metrics_free(w->metrics_all);
    free(w->upstream_host);
    snapshot_unref(w->snap);
    memset(w, 0, sizeof *w);
}
