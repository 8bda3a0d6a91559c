/*
 * thaw_reseed.node: a Node-API addon with one function, reseed(), that makes
 * OpenSSL's random generators draw fresh entropy from the kernel.
 *
 * Why: OpenSSL 3's DRBGs (behind crypto.randomBytes, randomUUID, key
 * generation, TLS) reseed when the process id changes (a fork), but an
 * instance restored from a snapshot has the pid, and the DRBG state, of the
 * instance the snapshot was taken from. Every restored instance would draw
 * the same "random" bytes. reseed() reseeds the primary, public and private
 * DRBGs with prediction resistance (fresh entropy from getrandom(2)) and
 * mixes in 48 more bytes from the kernel as additional input.
 *
 * Node exports its OpenSSL and Node-API symbols to addons, so this file
 * declares the few it uses instead of needing headers; they are resolved
 * against the node binary when the addon is loaded. Built by
 * crates/thaw-runtime/build.rs.
 */
#include <stddef.h>
#include <stdbool.h>
#include <sys/random.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);

extern napi_status napi_create_function(napi_env env, const char *name, size_t length,
                                        napi_callback cb, void *data, napi_value *result);
extern napi_status napi_set_named_property(napi_env env, napi_value object, const char *name,
                                           napi_value value);
extern napi_status napi_get_boolean(napi_env env, bool value, napi_value *result);

typedef struct evp_rand_ctx_st EVP_RAND_CTX;
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;
extern EVP_RAND_CTX *RAND_get0_primary(OSSL_LIB_CTX *ctx);
extern EVP_RAND_CTX *RAND_get0_public(OSSL_LIB_CTX *ctx);
extern EVP_RAND_CTX *RAND_get0_private(OSSL_LIB_CTX *ctx);
extern int EVP_RAND_reseed(EVP_RAND_CTX *ctx, int prediction_resistance,
                           const unsigned char *ent, size_t ent_len,
                           const unsigned char *adin, size_t adin_len);

static bool reseed_one(EVP_RAND_CTX *drbg) {
    unsigned char adin[48];
    size_t got = 0;
    while (got < sizeof adin) {
        ssize_t n = getrandom(adin + got, sizeof adin - got, 0);
        if (n <= 0) return false;
        got += (size_t)n;
    }
    return drbg != NULL && EVP_RAND_reseed(drbg, 1, NULL, 0, adin, sizeof adin) == 1;
}

static napi_value reseed(napi_env env, napi_callback_info info) {
    (void)info;
    /* The primary first: the public and private DRBGs reseed from it. */
    bool ok = reseed_one(RAND_get0_primary(NULL));
    ok = reseed_one(RAND_get0_public(NULL)) && ok;
    ok = reseed_one(RAND_get0_private(NULL)) && ok;
    napi_value result = NULL;
    napi_get_boolean(env, ok, &result);
    return result;
}

__attribute__((visibility("default")))
napi_value napi_register_module_v1(napi_env env, napi_value exports) {
    napi_value fn = NULL;
    if (napi_create_function(env, "reseed", 6, reseed, NULL, &fn) == 0) {
        napi_set_named_property(env, exports, "reseed", fn);
    }
    return exports;
}

__attribute__((visibility("default")))
int node_api_module_get_api_version_v1(void) { return 8; }
