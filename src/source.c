/*
 * source: peer addresses as source keys, their text and their seeded hash (the contract is in
 * source.h). Moved out of anomaly.c so that the lockout table counts the same sources.
 */
#include "respguard/source.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

_Static_assert(sizeof(struct source_key) == 17, "source_key must have no padding: it is compared bytewise");
_Static_assert(SOURCE_TEXT_MAX >= INET6_ADDRSTRLEN, "SOURCE_TEXT_MAX must hold any address text");

bool source_key_from(const struct sockaddr *sa, struct source_key *out)
{
    memset(out, 0, sizeof *out);
    if (sa == NULL)
        return false;
    switch (sa->sa_family) {
    case AF_INET: {
        struct sockaddr_in in;
        memcpy(&in, sa, sizeof in); /* the caller's storage need not be aligned for it */
        out->family = SOURCE_IPV4;
        memcpy(out->addr, &in.sin_addr, 4);
        return true;
    }
    case AF_INET6: {
        struct sockaddr_in6 in6;
        memcpy(&in6, sa, sizeof in6);
        /* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: one client, one source. */
        if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
            out->family = SOURCE_IPV4;
            memcpy(out->addr, &in6.sin6_addr.s6_addr[12], 4);
        } else {
            out->family = SOURCE_IPV6;
            memcpy(out->addr, in6.sin6_addr.s6_addr, 16);
        }
        return true;
    }
    case AF_UNIX:
        out->family = SOURCE_UNIX;
        return true;
    default:
        return false;
    }
}

bool source_key_equal(const struct source_key *a, const struct source_key *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

void source_key_text(const struct source_key *k, char *out, size_t len)
{
    if (len == 0)
        return;
    /* Through a buffer that always fits: inet_ntop leaves a too-short out undefined. */
    char text[SOURCE_TEXT_MAX] = "unix";
    if (k->family == SOURCE_IPV4)
        inet_ntop(AF_INET, k->addr, text, sizeof text);
    else if (k->family == SOURCE_IPV6)
        inet_ntop(AF_INET6, k->addr, text, sizeof text);
    snprintf(out, len, "%s", text);
}

/* The finaliser of MurmurHash3: every input bit affects every output bit. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

uint64_t source_key_hash(const struct source_key *k, uint64_t seed)
{
    uint64_t a, b;
    memcpy(&a, k->addr, 8);
    memcpy(&b, k->addr + 8, 8);
    uint64_t h = mix64(seed ^ k->family);
    h = mix64(h ^ a);
    return mix64(h ^ b);
}

void source_format_addr(const struct sockaddr *sa, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    }
    if (sa->sa_family == AF_INET6)
        snprintf(buf, cap, "[%s]:%d", ip, port);
    else
        snprintf(buf, cap, "%s:%d", ip, port);
}
