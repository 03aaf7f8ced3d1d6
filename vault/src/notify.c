/* notify.c: the outbox and its delivery (see notify.h). */
#include "notify.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "kv_clock.h"
#include "kv_file.h"
#include "kv_log.h"
#include "kv_pb.h"

typedef Hsmvault__Store__OutboxRecord OutboxRecord;

#define NOTIFY_BACKOFF_MAX 300 /* seconds between attempts, at most */

kv_result vault_notify(store_txn *t, const Hsmvault__Store__TenantRecord *tr, const char *change,
                       const char *principal, int64_t when)
{
    if (tr->n_admin_contacts == 0) return KV_SUCCESS;
    uint8_t rnd[6];
    KV_ENSURE(getrandom(rnd, sizeof(rnd), 0) == (ssize_t)sizeof(rnd), KV_ERR_UNAVAILABLE,
              "no random bytes");
    char id[64], at[32], subject[256], body[2048];
    /* Key order is delivery order: time first. */
    snprintf(id, sizeof(id), "%013lld-%02x%02x%02x%02x%02x%02x", (long long)kv_clock_now_ms(),
             rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
    kv_clock_format(when, at, sizeof(at));
    snprintf(subject, sizeof(subject), "[hsmvault] tenant %s: key change", tr->name);
    snprintf(body, sizeof(body),
             "A change was made to the encryption keys of tenant %s (%s).\r\n"
             "\r\n"
             "What: %s\r\n"
             "Who:  %s\r\n"
             "When: %s\r\n"
             "\r\n"
             "If you did not expect this change, another tenant administrator can roll back an\r\n"
             "activation within 72 hours of it (vaultctl key roll-back).\r\n",
             tr->name, tr->id, change, principal, at);
    OutboxRecord m = HSMVAULT__STORE__OUTBOX_RECORD__INIT;
    m.id = id;
    m.tenant_id = tr->id;
    m.n_recipients = tr->n_admin_contacts;
    m.recipients = tr->admin_contacts;
    m.subject = subject;
    m.body = body;
    m.created_at = when;
    m.next_attempt_at = 0;
    return store_put(t, STORE_OUTBOX, id, &m.base);
}

struct vault_notifier {
    vault_store *store;
    char smtp_url[512];
    char from[256];
    char maildir[PATH_MAX];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, kicked;
};

/* The message as sent: headers, blank line, body (CRLF line ends). */
static int notify_render(const OutboxRecord *m, const char *from, char *out, size_t cap)
{
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    int n = snprintf(out, cap, "From: %s\r\nTo: ", from);
    for (size_t i = 0; i < m->n_recipients && n > 0 && (size_t)n < cap; i++)
        n += snprintf(out + n, cap - (size_t)n, "%s%s", i ? ", " : "", m->recipients[i]);
    if (n > 0 && (size_t)n < cap)
        n += snprintf(
            out + n, cap - (size_t)n,
            "\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@hsmvault>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n%s",
            m->subject, date, m->id, m->body);
    return n > 0 && (size_t)n < cap ? n : -1;
}

typedef struct {
    const char *data;
    size_t len, off;
} notify_upload;

static size_t notify_read(char *buf, size_t size, size_t nmemb, void *arg)
{
    notify_upload *u = arg;
    size_t n = size * nmemb;
    if (n > u->len - u->off) n = u->len - u->off;
    memcpy(buf, u->data + u->off, n);
    u->off += n;
    return n;
}

static kv_result notify_smtp(const struct vault_notifier *n, const OutboxRecord *m,
                             const char *text, size_t len)
{
    CURL *c = curl_easy_init();
    KV_ENSURE(c != NULL, KV_ERR_RESOURCE_EXHAUSTED, "cannot start an SMTP session");
    struct curl_slist *rcpt = NULL;
    for (size_t i = 0; i < m->n_recipients; i++)
        rcpt = curl_slist_append(rcpt, m->recipients[i]);
    char from[300];
    snprintf(from, sizeof(from), "<%s>", n->from);
    notify_upload u = {.data = text, .len = len};
    curl_easy_setopt(c, CURLOPT_URL, n->smtp_url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, notify_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &u);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(rcpt);
    curl_easy_cleanup(c);
    KV_ENSURE(rc == CURLE_OK, KV_ERR_UNAVAILABLE, "SMTP delivery to %s failed: %s", n->smtp_url,
              curl_easy_strerror(rc));
    return KV_SUCCESS;
}

static kv_result notify_maildir(const struct vault_notifier *n, const OutboxRecord *m,
                                const char *text, size_t len)
{
    char path[PATH_MAX + 128];
    KV_ENSURE(snprintf(path, sizeof(path), "%s/new/%s.hsmvault", n->maildir, m->id) <
                  (int)sizeof(path),
              KV_ERR_INVALID_ARGUMENT, "maildir path too long");
    return kv_file_write_atomic(path, text, len, 0600);
}

typedef struct {
    const char *id;
    bool delivered;
    const char *error;
    int64_t now;
} notify_result;

static kv_result notify_record(store_txn *t, void *arg)
{
    const notify_result *res = arg;
    if (res->delivered) return store_del(t, STORE_OUTBOX, res->id);
    ProtobufCMessage *msg = NULL;
    KV_GUARD(
        store_get(t, STORE_OUTBOX, res->id, &hsmvault__store__outbox_record__descriptor, &msg));
    OutboxRecord *m = (OutboxRecord *)msg;
    m->attempts++;
    int64_t wait = m->attempts < 9 ? (int64_t)1 << m->attempts : NOTIFY_BACKOFF_MAX;
    if (wait > NOTIFY_BACKOFF_MAX) wait = NOTIFY_BACKOFF_MAX;
    m->next_attempt_at = res->now + wait;
    char *own = m->last_error;
    m->last_error = (char *)(uintptr_t)res->error;
    kv_result r = store_put(t, STORE_OUTBOX, m->id, &m->base);
    m->last_error = own;
    kv_pb_free(msg);
    return r;
}

static bool notify_due(const ProtobufCMessage *msg, const void *arg)
{
    return ((const OutboxRecord *)msg)->next_attempt_at <= *(const int64_t *)arg;
}

/* One pass over the outbox: every due message is tried once. */
static void notify_pass(struct vault_notifier *n)
{
    int64_t now = kv_clock_now();
    store_txn *t;
    store_list due = {0};
    if (kv_failed(store_read_begin(n->store, &t))) return;
    kv_result r = store_collect(t, STORE_OUTBOX, "", &hsmvault__store__outbox_record__descriptor,
                                notify_due, &now, &due);
    store_read_end(t);
    if (kv_failed(r)) kv_log_error_record(KV_LOG_ERROR, "reading the notification outbox");
    for (size_t i = 0; i < due.n; i++) {
        const OutboxRecord *m = (const OutboxRecord *)due.items[i];
        char text[8192];
        int len = notify_render(m, n->from, text, sizeof(text));
        kv_result d = len < 0
                          ? kv_error_set(KV_ERR_INTERNAL, __FILE__, __LINE__, "message too long")
                      : n->maildir[0] ? notify_maildir(n, m, text, (size_t)len)
                                      : notify_smtp(n, m, text, (size_t)len);
        char err[256] = "";
        if (kv_failed(d)) snprintf(err, sizeof(err), "%s", kv_error_msg());
        notify_result res = {
            .id = m->id, .delivered = kv_ok(d), .error = err, .now = kv_clock_now()};
        if (kv_ok(d))
            KV_LOG_INFO("notification %s delivered to %zu admin contacts of tenant %s", m->id,
                        m->n_recipients, m->tenant_id);
        else
            KV_LOG_WARN("notification %s not delivered (attempt %u, kept for retry): %s", m->id,
                        m->attempts + 1, err);
        if (kv_failed(store_update(n->store, notify_record, &res)))
            kv_log_error_record(KV_LOG_ERROR, "updating the notification outbox");
    }
    store_list_free(&due);
}

static void *notify_main(void *arg)
{
    struct vault_notifier *n = arg;
    pthread_mutex_lock(&n->mu);
    while (!n->stop) {
        if (!n->kicked) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            pthread_cond_timedwait(&n->cv, &n->mu, &until);
        }
        n->kicked = false;
        if (n->stop) break;
        pthread_mutex_unlock(&n->mu);
        notify_pass(n);
        pthread_mutex_lock(&n->mu);
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

kv_result vault_notifier_start(vault_store *store, const vault_notify_config *cfg,
                               vault_notifier **out)
{
    *out = NULL;
    bool smtp = cfg->smtp_url != NULL && cfg->smtp_url[0] != '\0';
    bool maildir = cfg->maildir != NULL && cfg->maildir[0] != '\0';
    if (!smtp && !maildir) {
        KV_LOG_WARN("notifications: no SMTP relay configured (notify_smtp_url); messages wait in "
                    "the outbox");
        return KV_SUCCESS;
    }
    KV_ENSURE(!smtp || strncmp(cfg->smtp_url, "smtp://", 7) == 0 ||
                  strncmp(cfg->smtp_url, "smtps://", 8) == 0,
              KV_ERR_INVALID_ARGUMENT,
              "the SMTP relay must be an smtp:// or smtps:// URL, not '%s'", cfg->smtp_url);
    struct vault_notifier *n = calloc(1, sizeof(*n));
    KV_ENSURE(n != NULL, KV_ERR_RESOURCE_EXHAUSTED, "out of memory");
    n->store = store;
    snprintf(n->smtp_url, sizeof(n->smtp_url), "%s", smtp ? cfg->smtp_url : "");
    snprintf(n->from, sizeof(n->from), "%s",
             cfg->from && cfg->from[0] ? cfg->from : "hsmvault@localhost");
    if (maildir && !smtp) {
        snprintf(n->maildir, sizeof(n->maildir), "%s", cfg->maildir);
        const char *subs[] = {"tmp", "new", "cur"};
        for (size_t i = 0; i < 3; i++) {
            char d[PATH_MAX + 8];
            snprintf(d, sizeof(d), "%s/%s", n->maildir, subs[i]);
            kv_result r = kv_file_mkdirs(d, 0700);
            if (kv_failed(r)) {
                free(n);
                return r;
            }
        }
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    if (pthread_create(&n->thread, NULL, notify_main, n) != 0) {
        pthread_cond_destroy(&n->cv);
        pthread_mutex_destroy(&n->mu);
        curl_global_cleanup();
        free(n);
        KV_BAIL(KV_ERR_RESOURCE_EXHAUSTED, "cannot start the notification thread");
    }
    KV_LOG_INFO("notifications: delivering to %s", n->maildir[0] ? n->maildir : n->smtp_url);
    *out = n;
    return KV_SUCCESS;
}

void vault_notifier_kick(vault_notifier *n)
{
    if (n == NULL) return;
    pthread_mutex_lock(&n->mu);
    n->kicked = true;
    pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

void vault_notifier_stop(vault_notifier *n)
{
    if (n == NULL) return;
    pthread_mutex_lock(&n->mu);
    n->stop = true;
    pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
    pthread_join(n->thread, NULL);
    pthread_cond_destroy(&n->cv);
    pthread_mutex_destroy(&n->mu);
    curl_global_cleanup();
    free(n);
}
