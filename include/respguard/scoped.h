/*
 * scoped: respguard's scoped forms of server-wide commands, for users who must not see the
 * server's state (tenants): what they get instead of Redis's own answer.
 *
 * INFO: respguard asks the upstream for SCOPED_INFO_COMMAND (the only sections anything is kept
 * from) and passes on only the sections and fields that say nothing about other clients or their
 * data: the server's version and mode, whether it is loading, its memory policy and limit, and
 * whether it runs as a cluster. Never Clients, Stats, Replication, CPU, Modules, Commandstats,
 * Errorstats, Latencystats or Keyspace, nor a field of a kept section that is not listed in
 * scoped.c (used_memory, run_id, tcp_port, executable...).
 *
 * Pure: bytes in, bytes out; no I/O, no globals but constant tables.
 */
#ifndef RESPGUARD_SCOPED_H
#define RESPGUARD_SCOPED_H

#include <stddef.h>

#include "respguard/buf.h"
#include "respguard/resp.h"

/* What respguard sends upstream in place of a scoped INFO (the canonical RESP encoding of
 * "INFO server memory persistence cluster"). */
extern const char scoped_info_command[];
extern const size_t scoped_info_command_len;

/* The kept sections an INFO with these arguments asks for (argv[0] is INFO): a bit mask for
 * scoped_info_filter. No argument, "default", "all" and "everything" ask for every kept
 * section; other names select by name (any case); unknown names select nothing, as in Redis. */
unsigned scoped_info_sections(size_t argc, const struct resp_arg *argv);

/* The upstream's reply to scoped_info_command (one complete RESP frame: a bulk string, or in
 * RESP3 a verbatim string), filtered to the kept fields of the sections asked for, as a complete
 * frame of the same type in out (appended). An error reply passes unchanged; anything else that
 * is not an INFO text becomes an error. 0, or -ENOMEM. */
int scoped_info_filter(const char *reply, size_t len, unsigned sections, struct buf *out)
    __attribute__((warn_unused_result));

#endif
