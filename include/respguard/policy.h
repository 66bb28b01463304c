/*
 * policy: the effects of judging one command, shared by every protocol respguard serves (RESP
 * sessions in session.c, REST requests in rest.c): the per-user command counts, the audit line
 * of a refusal, what the anomaly detector learns, and the user's rate limit.
 *
 * The verdict itself is acl.c's; the protocols decide where an answer goes (a RESP reply queue,
 * a JSON body). This file makes sure both count, log and limit a command the same way.
 */
#ifndef RESPGUARD_POLICY_H
#define RESPGUARD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "respguard/acl.h"
#include "respguard/metrics.h"
#include "respguard/resp.h"

struct worker;
struct snapshot;
struct cmdtab_cmd;

/* Who runs the command: a logged-in user on a client connection. */
struct policy_actor {
    struct worker *w;
    const struct snapshot *snap;   /* the snapshot user points into */
    const struct acl_user *user;
    const char *peer;              /* the client's address, for the log */
    const struct sockaddr *addr;   /* ... for the anomaly detector's per-source counts */
    uint64_t id;                   /* the session (RESP) or HTTP connection (REST), for the log */
    const char *protocol;          /* "resp" or "rest", in log lines */
};

/* The user's stable slot (metrics, rate bucket, anomaly baselines). */
size_t policy_slot(const struct policy_actor *a);

/* Count one command of the user under its category and verdict (cmd NULL: unknown). */
void policy_count(const struct policy_actor *a, const struct cmdtab_cmd *cmd, enum metrics_verdict v);
/* Count a refusal: the command as denied, and the reason counter. */
void policy_count_refusal(const struct policy_actor *a, const struct cmdtab_cmd *cmd, enum metrics_counter reason);

/* The effects of an ACL verdict (rc and v from acl_check_*): the anomaly detector learns the
 * command (and a denial), and unless the command may run it is counted (denied or error) and a
 * refusal gets its audit line. Returns 0 when it may run; otherwise writes the error line, with
 * '-' and CRLF, into line (cap >= ACL_ERROR_MAX + 3) and returns its length. */
size_t policy_verdict(const struct policy_actor *a, size_t argc, const struct resp_arg *argv, int rc,
                      const struct acl_verdict *v, char *line, size_t cap);

/* The user's command rate limit (a token bucket shared by all its connections in this worker,
 * whatever their protocol). False: a token was taken, the command may run. True: refused; it is
 * counted as rate limited, the detector sees the attempt, the first refusal of an episode is
 * logged, and line holds the error line (with '-' and CRLF; cap >= ACL_ERROR_MAX) of *len bytes. */
bool policy_rate_limited(const struct policy_actor *a, const struct cmdtab_cmd *cmd, char *line, size_t cap,
                         size_t *len);

/* The rate limit's error line for user u ("-ERR rate limit exceeded for user '<name>'" and
 * CRLF, cut to cap with its CRLF kept); its length. */
size_t policy_rate_limit_error(const struct acl_user *u, char *line, size_t cap);

#endif
