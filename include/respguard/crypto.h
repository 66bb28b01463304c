/*
 * crypto: the few primitives outside TLS that respguard needs (SHA-256 of secrets, a random
 * secret, constant-time comparison). A thin wrapper over OpenSSL's libcrypto so that the pure
 * modules (acl) do not include OpenSSL headers themselves.
 */
#ifndef RESPGUARD_CRYPTO_H
#define RESPGUARD_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CRYPTO_SHA256_LEN 32

void crypto_sha256(const void *data, size_t len, uint8_t out[CRYPTO_SHA256_LEN]);
/* 0 on success, -EIO when the random generator fails. */
/* HMAC-SHA-256 of data under key. */
void crypto_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                        uint8_t out[CRYPTO_SHA256_LEN]);
int crypto_random(void *out, size_t len) __attribute__((warn_unused_result));
/* Compare in time that depends on len only. */
bool crypto_equal(const void *a, const void *b, size_t len);
/* Overwrite a secret so it does not linger in freed memory. */
void crypto_wipe(void *p, size_t len);

#endif
