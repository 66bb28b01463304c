/*
 * glob: Redis's glob matching (stringmatchlen, case-sensitive) without recursion.
 *
 * Every token but '*' consumes exactly one byte of the string, and where a token ends in the
 * pattern never depends on the string, so the classic two-pointer algorithm with one star
 * backtrack point gives Redis's answers in O(plen * slen) at worst, with no stack growth. The
 * token rules below copy Redis 7.0's scanner, corner cases included (see glob.h).
 *
 * It must not allocate, recurse, read past a length or fold case.
 */
#include "respguard/glob.h"

#include <stdint.h>

bool glob_is_special(char c)
{
    return c == '*' || c == '?' || c == '[' || c == '\\';
}

/* Does the token at pat[i] (not a '*'; i < plen) match byte c? *next gets the offset after
 * the token. */
static bool token_match(const char *pat, size_t plen, size_t i, char c, size_t *next)
{
    switch (pat[i]) {
    case '?':
        *next = i + 1;
        return true;
    case '\\':
        if (plen - i >= 2) {
            *next = i + 2;
            return pat[i + 1] == c;
        }
        *next = i + 1;
        return pat[i] == c;
    case '[': {
        bool match = false;
        i++;
        bool negate = i < plen && pat[i] == '^';
        if (negate)
            i++;
        for (;;) {
            size_t rem = plen - i;
            if (rem >= 2 && pat[i] == '\\') {
                i++;
                if (pat[i] == c)
                    match = true;
            } else if (rem >= 1 && pat[i] == ']') {
                break;
            } else if (rem == 0) {
                /* Unclosed set: Redis steps back onto the last byte, which the common step
                 * below then passes, so the token ends with the pattern. */
                i--;
                break;
            } else if (rem >= 3 && pat[i + 1] == '-') {
                /* Redis compares chars, which are signed on the platforms it ships on. */
                int start = (signed char)pat[i], end = (signed char)pat[i + 2], v = (signed char)c;
                if (start > end) {
                    int t = start;
                    start = end;
                    end = t;
                }
                i += 2;
                if (v >= start && v <= end)
                    match = true;
            } else if (pat[i] == c) {
                match = true;
            }
            i++;
        }
        *next = i + 1;
        return negate ? !match : match;
    }
    default:
        *next = i + 1;
        return pat[i] == c;
    }
}

#define NO_STAR SIZE_MAX

/* The shared matcher. prefix_mode: succeed as soon as the string is consumed. */
static bool match(const char *pat, size_t plen, const char *s, size_t slen, bool prefix_mode)
{
    size_t pi = 0, si = 0, star_pi = NO_STAR, star_si = 0;
    while (si < slen) {
        if (pi < plen && pat[pi] == '*') {
            while (pi < plen && pat[pi] == '*')
                pi++;
            if (pi == plen)
                return true; /* a trailing star takes the rest */
            star_pi = pi;
            star_si = si;
            continue;
        }
        size_t next;
        if (pi < plen && token_match(pat, plen, pi, s[si], &next)) {
            pi = next;
            si++;
            continue;
        }
        if (star_pi != NO_STAR) {
            /* Let the last star take one more byte and retry what follows it. */
            si = ++star_si;
            pi = star_pi;
            continue;
        }
        return false;
    }
    if (prefix_mode)
        return true;
    while (pi < plen && pat[pi] == '*')
        pi++;
    return pi == plen;
}

bool glob_match(const char *pat, size_t plen, const char *s, size_t slen)
{
    /* Redis's loop runs only while both remain: an empty string matches only an empty
     * pattern, even "*". */
    if (slen == 0)
        return plen == 0;
    return match(pat, plen, s, slen, false);
}

bool glob_may_match_prefix(const char *pat, size_t plen, const char *prefix, size_t prefix_len)
{
    return match(pat, plen, prefix, prefix_len, true);
}
