/*
 * source: a peer address reduced to what identifies a client source, for the per-source tables
 * (anomaly's minute counts, ratelimit's login lockout). Both start from this one definition of
 * "one source"; the lockout then widens IPv6 sources to their /64 (a guesser can rotate through
 * a /64 cheaply; the detector reports per address, which says more in a log line).
 *
 * One source is one IP address: the port is ignored (every connection of a client has its own
 * port); an IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a dual-stack listener sees an IPv4
 * client) is its IPv4 address; every AF_UNIX peer is the one source "unix" (local peers have no
 * address worth telling apart). Other families are not sources.
 *
 * The key is small, fixed-size and has no padding, so it can be stored in a table entry, copied
 * by assignment and compared bytewise. The hash is seeded: the caller passes random bytes, so
 * that nobody can choose addresses that fall into the same set of a table.
 *
 * Pure: no I/O, no allocation, no globals.
 */
#ifndef RESPGUARD_SOURCE_H
#define RESPGUARD_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* Values of source_key.family. */
#define SOURCE_UNIX 1
#define SOURCE_IPV4 4
#define SOURCE_IPV6 6

/* Room for the longest source_key_text, NUL included (INET6_ADDRSTRLEN). */
#define SOURCE_TEXT_MAX 46

/* family: SOURCE_*; addr: the address in network order (4 bytes for IPv4, 16 for IPv6), the
 * rest zero. No padding: equal sources have equal bytes. */
struct source_key {
    uint8_t family;
    uint8_t addr[16];
};

/* The source of a peer address. sa must be NULL or point to a whole address of its family
 * (a sockaddr_storage is always enough); it is read during the call only, and need not be
 * aligned. True and *out set for AF_INET, AF_INET6 and AF_UNIX; false (and *out zeroed) for
 * NULL or another family. */
bool source_key_from(const struct sockaddr *sa, struct source_key *out);

/* Are a and b the same source? */
bool source_key_equal(const struct source_key *a, const struct source_key *b);

/* The text of a source for logs and events: "192.0.2.7", "2001:db8::1" or "unix" (the IPv4 text
 * for a mapped address). out is always NUL-terminated when len > 0; SOURCE_TEXT_MAX bytes always
 * suffice, a shorter buffer gets a truncated text. */
void source_key_text(const struct source_key *k, char *out, size_t len);

/* "ip:port" ("[ip]:port" for IPv6) of sa (not NULL) into buf; "?:0" when it is neither. */
void source_format_addr(const struct sockaddr *sa, char *buf, size_t cap);

/* A 64-bit hash of k under seed; keys that are equal hash equal for the same seed. */
uint64_t source_key_hash(const struct source_key *k, uint64_t seed);

#endif
