/*
 * rest: the Upstash-compatible REST listeners (rest: in the configuration).
 *
 * Each listener is a libmicrohttpd daemon driven by the worker's libuv loop: MHD runs in
 * external-select mode with its own epoll descriptor, which a uv_poll watches, and a uv_timer
 * follows MHD_get_timeout. Everything therefore happens on the worker's thread, like a RESP
 * session: a request is authenticated (the token is one of a user's passwords), decoded
 * (restcodec.c), judged command by command with the same verdict, guard, scoped forms, rate
 * limit, anomaly detector, audit line and metrics as RESP (policy.c), and the commands allowed
 * go upstream on a shared connection of the user's pool (one write per request; a /multi-exec
 * as MULTI ... EXEC in one piece). While the replies are due the HTTP connection is suspended;
 * when the last one is in, the JSON (or RESP2) answer is queued and the connection resumed.
 *
 * What this file must not do: send a command upstream that was not judged, answer a request
 * with another request's replies, log a token, or let a slow client hold a connection past
 * request_timeout.
 */
#ifndef RESPGUARD_REST_H
#define RESPGUARD_REST_H

#include <stdbool.h>
#include <stddef.h>

struct worker;
struct rest_server;
struct snapshot;

/* Start every rest listener of the worker's snapshot (w->snap->cfg->rest). 0, or -1 with the
 * reason in err (then rest_free what was started). *out: an array of count servers (NULL when
 * there are none). */
int rest_start(struct worker *w, struct rest_server **out, size_t *count, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Can the HTTP library serve snap's REST certificates and keys? (snapshot_build checked them
 * with OpenSSL; libmicrohttpd loads them with GnuTLS, which takes less.) 0, or -1 with the
 * reason in err. For `check`, the start and every reload, before anything is applied. */
int rest_check_tls(const struct snapshot *snap, char *err, size_t errlen) __attribute__((warn_unused_result));
/* Reload: each listener takes the settings of next's entry with its bind (allow_from, cors,
 * max_request_bytes, request_timeout); one whose bind is gone keeps its own until a restart. */
void rest_reload(struct rest_server *servers, size_t count, struct snapshot *next);
/* Shutdown: accept nothing more; requests in progress finish (new requests on open keep-alive
 * connections get 503), then the daemons stop and their handles close. */
void rest_drain(struct rest_server *servers, size_t count);
/* Shutdown deadline: answer whatever still waits with 503 and stop now. */
void rest_close(struct rest_server *servers, size_t count);
/* After the loop ended. */
void rest_free(struct rest_server *servers, size_t count);

#endif
