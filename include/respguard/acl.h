/*
 * acl: a user's Redis ACL rules (the syntax of ACL SETUSER), compiled once at config load.
 *
 * This version knows the login part of the rules (on, off, >pass, <pass, #hash, !hash, nopass,
 * resetpass, reset) and which commands a user names explicitly (+cmd, +cmd|sub, -cmd, ...), which
 * is what the guard needs: commands of guard.never_by_category are granted only when named. The
 * other rules (keys, channels, categories) are kept as written for the full ACL engine.
 *
 * Pure: no I/O, no globals. Passwords are stored only as SHA-256 hashes, as Redis does, and are
 * compared in constant time.
 */
#ifndef RESPGUARD_ACL_H
#define RESPGUARD_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "respguard/crypto.h"

struct acl_named {
    char *name;   /* lower case: "flushdb" or "client|kill" */
    bool allowed; /* last mention wins: +name -> true, -name -> false */
};

struct acl_user {
    char *name;
    bool enabled;      /* on / off */
    bool nopass;       /* any password is accepted */
    uint8_t (*hashes)[CRYPTO_SHA256_LEN];
    size_t hash_count;
    struct acl_named *named;
    size_t named_count;
    char *rules;       /* the non-login rules, space separated, for the full ACL engine */
};

/* Compile rules for user name. On any error *out must still be released with acl_user_deinit.
 * On a rule error returns -EINVAL and writes Redis's wording
 * ("Error in ACL SETUSER modifier '<token>': <reason>", with passwords shown as '>***') into err
 * and the byte offset of the bad token in the rules string into *err_offset. */
int acl_user_compile(const char *name, const char *rules, struct acl_user *out, char *err,
                     size_t errlen, size_t *err_offset) __attribute__((warn_unused_result));
void acl_user_deinit(struct acl_user *u);

/* Would AUTH name password succeed for this user? Enabled, and nopass or one hash matches;
 * every stored hash is compared so the time does not tell which matched. */
bool acl_user_check_password(const struct acl_user *u, const char *password, size_t len);

/* Does the user name this command explicitly? cmd and sub lower case; sub may be NULL. A
 * mention of "cmd|sub" beats one of "cmd". */
bool acl_user_names_command(const struct acl_user *u, const char *cmd, const char *sub);

/* "#<64 hex>" for a secret, into out (at least 66 bytes). */
void acl_hash_password(const char *secret, size_t len, char out[66]);

#endif
