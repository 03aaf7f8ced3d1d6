/*
 * notify.h: email notifications of key changes (seed 001/000: every admin
 * contact of the tenant learns what changed, who did it, and when).
 *
 * vault_notify queues a message in the store's outbox inside the caller's
 * write transaction, so a committed change always has its message and a
 * rolled-back one never does.  The notifier thread delivers the outbox: over
 * SMTP through libcurl to a relay, or into a maildir (vaultd --dev), retrying
 * with backoff while the relay is down; a message leaves the outbox only once
 * delivered.  Nothing secret ever goes into a message.
 */
#ifndef NOTIFY_H
#define NOTIFY_H

#include <stdint.h>

#include "hsmvault/store/records.pb-c.h"
#include "kv_result.h"
#include "store.h"

/* Queues "change" (one sentence) by principal at time when for every admin
 * contact of tr, in transaction t. */
KV_RESULT vault_notify(store_txn *t, const Hsmvault__Store__TenantRecord *tr, const char *change,
                       const char *principal, int64_t when);

typedef struct {
    const char *smtp_url; /* "smtp://relay:25" or "smtps://..."; NULL: maildir or nothing */
    const char *from;     /* envelope and header sender */
    const char *maildir;  /* deliver into <maildir>/new instead of SMTP; NULL: SMTP */
} vault_notify_config;

typedef struct vault_notifier vault_notifier;
/* Starts the delivery thread (none when neither smtp_url nor maildir is set:
 * messages then wait in the outbox, and a warning says so). */
KV_RESULT vault_notifier_start(vault_store *store, const vault_notify_config *cfg,
                               vault_notifier **out);
/* Wakes the thread now (after a change, or when the clock moved). */
void vault_notifier_kick(vault_notifier *n);
void vault_notifier_stop(vault_notifier *n);

#endif
