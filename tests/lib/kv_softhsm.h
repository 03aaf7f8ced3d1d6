/*
 * kv_softhsm.h: a throwaway SoftHSM token in a test's temporary directory,
 * for every HSM test of the project (unit and integration).
 *
 * kv_softhsm_setup writes <dir>/softhsm2.conf (token dir <dir>/tokens, file
 * object store), points SOFTHSM2_CONF at it (for this process and children),
 * initializes a token with softhsm2-util and writes the user PIN to
 * <dir>/pin (0600).  The PINs are fixed, public test values: never use this
 * fixture for a real token.
 *
 * SoftHSM reads SOFTHSM2_CONF in C_Initialize, and the module stays
 * initialized while any hsm handle of the process is open: switch to another
 * fixture directory only when every handle is closed.
 */
#ifndef KV_SOFTHSM_H
#define KV_SOFTHSM_H

#include "kv_result.h"

#define KV_SOFTHSM_USER_PIN "hsmvault-test-user-pin"
#define KV_SOFTHSM_SO_PIN "hsmvault-test-so-pin"
#define KV_SOFTHSM_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

typedef struct {
    char dir[256];
    char module_path[256]; /* $HSMVAULT_SOFTHSM_MODULE, else the Debian path */
    char label[33];
    char conf_path[320];
    char token_dir[320];
    char pin_file[320]; /* holds KV_SOFTHSM_USER_PIN */
} kv_softhsm;

/* Config only: writes the conf, creates the token dir and sets SOFTHSM2_CONF;
 * no token is initialized and no PIN file written (label left empty). */
KV_RESULT kv_softhsm_configure(const char *dir, kv_softhsm *out);
/* Config, an initialized token labelled label, and the PIN file. */
KV_RESULT kv_softhsm_setup(const char *dir, const char *label, kv_softhsm *out);
/* Writes pin (a test value) to path with mode 0600, replacing any file. */
KV_RESULT kv_softhsm_write_pin(const char *path, const char *pin);

#endif
