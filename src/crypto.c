/*
 * crypto: SHA-256, HMAC-SHA-256, random bytes and constant-time comparison over libcrypto.
 * Holds no state and never logs (what it handles is secret).
 */
#include "respguard/crypto.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

void crypto_sha256(const void *data, size_t len, uint8_t out[CRYPTO_SHA256_LEN])
{
    unsigned int n = CRYPTO_SHA256_LEN;
    /* EVP_Digest cannot fail for SHA-256 on valid input short of OOM; keep the output
     * defined anyway so a failure can never match a stored hash by accident. */
    if (!EVP_Digest(data, len, out, &n, EVP_sha256(), NULL))
        RAND_bytes(out, CRYPTO_SHA256_LEN);
}

void crypto_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                        uint8_t out[CRYPTO_SHA256_LEN])
{
    unsigned int n = CRYPTO_SHA256_LEN;
    if (!HMAC(EVP_sha256(), key, (int)key_len, data, len, out, &n))
        RAND_bytes(out, CRYPTO_SHA256_LEN); /* as above: never a predictable value */
}

int crypto_random(void *out, size_t len)
{
    return RAND_bytes(out, (int)len) == 1 ? 0 : -EIO;
}

bool crypto_equal(const void *a, const void *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len) == 0;
}

void crypto_wipe(void *p, size_t len)
{
    if (p)
        OPENSSL_cleanse(p, len);
}
