/*
 * session: one client connection and its own upstream connection.
 *
 * It logs the client in (AUTH, HELLO ... AUTH) against respguard's users, opens the upstream only
 * after a successful login, parses every request, refuses what the guard forbids, forwards the
 * rest byte-exact, and returns replies in order through one queue in which respguard's own
 * replies (refusals, AUTH answers) take their place among the upstream's.
 */
#ifndef RESPGUARD_SESSION_H
#define RESPGUARD_SESSION_H

#include <stdbool.h>
#include <uv.h>

struct worker;
struct listener;
struct session;
struct tlsconn_ctx;

/* Accept a pending connection on server into a new session. 0 or a negative uv error (then the
 * pending connection has been accepted and closed, or left for libuv on ENOMEM). */
int session_accept(struct worker *w, const struct listener *l, uv_stream_t *server)
    __attribute__((warn_unused_result));

/* The end of a loop turn (the worker's uv_prepare_t): read again the commands of sessions whose
 * wait for the pool ended (true: more such sessions are left for the next turn), then send every
 * client's replies of the turn. */
bool session_turn_input(struct worker *w);
void session_turn_flush(struct worker *w);

/* Once a second: sessions idle for a second or more give back their buffers. */
void session_trim_idle(struct worker *w, uint64_t now_ms);

/* Graceful shutdown: stop reading new commands; close once every pending reply is delivered. */
void session_drain(struct session *s);

/* Close now (idempotent). reason goes to the debug log. */
void session_close(struct session *s, const char *reason);

#endif
