/* The delivery thread. One libcurl multi handle drives up to [delivery] max_in_flight webhook
 * calls at once; its connection cache gives keep-alive across calls to the same host. The loop
 * claims due deliveries from the outbox (the store keeps each hook's conversations in order, so
 * this file never reorders anything), starts them, records each finished attempt (done, retry
 * with back-off, or dead letter) and sleeps in curl_multi_poll() until a transfer needs
 * attention, a retry it scheduled falls due, deliver_wake() or deliver_stop() pokes it, or the
 * 1 s tick comes round (gauges, progress for the watchdog, deliveries freed by other means such
 * as an expired lease). The store is the only state shared with other threads; a store failure
 * is never fatal: claims pause for a second and are tried again, and whatever was not recorded
 * is claimed again when its lease runs out (at-least-once). When store_health() says the
 * database is gone, that is an outage, logged once when it starts and once when it ends (with
 * how many outcomes could not be recorded meanwhile); a passing failure (a lock held too long)
 * is logged at most every STORE_WARN_MS. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "ctxhookd/clock.h"
#include "ctxhookd/cleanup.h"
#include "ctxhookd/deliver.h"
#include "ctxhookd/log.h"
#include "ctxhookd/sign.h"

#define TICK_MS          1000
#define STORE_PAUSE_MS   1000  /* after a store failure, before claiming again */
#define STORE_WARN_MS    30000 /* while the store keeps failing, warn this often */
#define WHY_MAX          256
#define LEASE_MARGIN_MS  10000 /* beyond the longest hook timeout: time to record the outcome */
#define RESPONSE_KEEP    1024  /* bytes of a response body kept for the error message */
#define REASON_BODY      200   /* bytes of it quoted in a dead letter's reason */
#define RETRY_TIMERS_MAX 4096  /* retries timed precisely; beyond, the tick finds them */
#define ERROR_TEXT_MAX   512

struct hook_state {
        const struct config_hook *hook;
        struct sign_key key; /* parsed once at start */
};

/* One slot of the in-flight table. The easy handle is kept and reset between deliveries so its
 * buffers are reused; connections live in the multi handle's cache either way. */
struct transfer {
        CURL *easy;
        struct curl_slist *headers;
        bool busy;
        /* What the outcome needs of the hook, copied at the start: a reload may change or
         * remove the hook while the call is out. */
        char hook[STORE_HOOK_MAX + 1];
        char *url;
        int64_t timeout_ms;
        int64_t max_attempts;
        int64_t id;
        int64_t attempts; /* made before this one */
        char webhook_id[STORE_WEBHOOK_ID_MAX + 1];
        char *conversation;
        char *body; /* our own copy: curl reads it while the transfer runs */
        size_t body_len, body_cap;
        int64_t started_mono_ms;
        char response[RESPONSE_KEEP];
        size_t response_len;
        char curl_error[CURL_ERROR_SIZE];
};

struct deliver {
        const struct config *cfg;
        struct store *store;
        struct metrics *metrics;
        struct hook_state *hooks;
        size_t n_hooks;
        int64_t lease_ms;

        CURLM *multi;
        struct transfer *slots;
        size_t n_slots;
        size_t *free_slots; /* a stack of indices of idle slots */
        size_t n_free;

        /* A min-heap of the times (wall clock, ms) of the retries this thread scheduled, so a
         * retry goes out when due rather than at the next tick. */
        int64_t *timers;
        size_t n_timers;

        bool store_failing;
        int64_t store_warned_mono_ms;
        bool store_down;             /* an outage: store_health() failed too */
        int64_t unrecorded;          /* outcomes not recorded during the outage */
        pthread_mutex_t outage_lock; /* the outage as other threads see it (STATUS=) */
        bool outage;
        char outage_why[WHY_MAX];

        pthread_t thread;
        atomic_bool wake_pending;
        atomic_bool stopping;
        _Atomic int64_t stop_deadline_mono_ms;
        _Atomic int64_t last_progress_ms;

        /* deliver_reconfigure hands the thread its next hooks here and waits until the thread
         * has taken them (at the top of its loop, between calls). */
        pthread_mutex_t reconf_lock;
        pthread_cond_t reconf_taken;
        bool reconf_pending;
        const struct config *next_cfg;
        struct hook_state *next_hooks;
        size_t next_n_hooks;
        int64_t next_lease_ms;
};

/* curl_global_init() is not thread-safe and must run once per process before any other curl
 * call; deliver_start() is the first user of curl, so it does it here, once, whoever calls. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void)
{
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static uint64_t random_u64(void)
{
        uint64_t v;

        arc4random_buf(&v, sizeof(v));
        return v;
}

int64_t deliver_backoff_ms(int64_t attempt, int64_t retry_base_ms, int64_t retry_max_ms,
                           int64_t retry_after_ms)
{
        int64_t bound;

        if (retry_max_ms < 0)
                retry_max_ms = 0;
        if (retry_after_ms >= 0)
                return retry_after_ms < retry_max_ms ? retry_after_ms : retry_max_ms;
        if (retry_base_ms <= 0)
                return 0;
        if (attempt < 1)
                attempt = 1;
        /* Double until the cap is reached; stopping there also keeps the shift from overflowing. */
        bound = retry_base_ms;
        for (int64_t i = 1; i < attempt && bound < retry_max_ms; i++)
                bound = bound > INT64_MAX / 2 ? INT64_MAX : bound * 2;
        if (bound > retry_max_ms)
                bound = retry_max_ms;
        /* Full jitter: uniform in [0, bound]. The modulo bias is < bound / 2^64, negligible. */
        return (int64_t)(random_u64() % ((uint64_t)bound + 1));
}

int64_t deliver_parse_retry_after(const char *value, int64_t now_ms)
{
        char buf[128];
        size_t len;
        time_t t;
        int64_t ms;

        if (!value)
                return -1;
        value += strspn(value, " \t");
        len = strlen(value);
        while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t'))
                len--;
        if (len == 0 || len >= sizeof(buf))
                return -1;
        memcpy(buf, value, len);
        buf[len] = '\0';

        /* delta-seconds is 1*DIGIT; every HTTP-date form starts with a day name, so anything
         * else starting with a digit or a sign (e.g. "-1", "1.5") is garbage. */
        if ((buf[0] >= '0' && buf[0] <= '9') || buf[0] == '-' || buf[0] == '+') {
                int64_t s = 0;

                for (size_t i = 0; i < len; i++) {
                        if (buf[i] < '0' || buf[i] > '9')
                                return -1;
                        if (s < INT64_MAX / 10000)
                                s = s * 10 + (buf[i] - '0');
                }
                /* Saturate long before overflow; the caller caps it at retry_max_ms anyway. */
                return s < INT64_MAX / 10000 ? s * 1000 : INT64_MAX / 10;
        }

        t = curl_getdate(buf, NULL);
        if (t == (time_t)-1)
                return -1;
        ms = (int64_t)t * 1000 - now_ms;
        return ms > 0 ? ms : 0;
}

static void timers_push(struct deliver *d, int64_t due)
{
        size_t i;

        if (d->n_timers >= RETRY_TIMERS_MAX)
                return;
        i = d->n_timers++;
        while (i > 0 && d->timers[(i - 1) / 2] > due) {
                d->timers[i] = d->timers[(i - 1) / 2];
                i = (i - 1) / 2;
        }
        d->timers[i] = due;
}

/* Drops every timer at or before now; returns whether there was any. */
static bool timers_expire(struct deliver *d, int64_t now)
{
        bool any = false;

        while (d->n_timers > 0 && d->timers[0] <= now) {
                int64_t last = d->timers[--d->n_timers];
                size_t i = 0;

                any = true;
                for (;;) {
                        size_t c = 2 * i + 1;

                        if (c >= d->n_timers)
                                break;
                        if (c + 1 < d->n_timers && d->timers[c + 1] < d->timers[c])
                                c++;
                        if (d->timers[c] >= last)
                                break;
                        d->timers[i] = d->timers[c];
                        i = c;
                }
                if (d->n_timers > 0)
                        d->timers[i] = last;
        }
        return any;
}

static void outage_publish(struct deliver *d, bool outage, const char *why)
{
        pthread_mutex_lock(&d->outage_lock);
        d->outage = outage;
        snprintf(d->outage_why, sizeof(d->outage_why), "%s", why);
        pthread_mutex_unlock(&d->outage_lock);
}

/* A store call failed with r: claims pause for STORE_PAUSE_MS. The first failure asks
 * store_health() whether the database is gone: then the outage is logged once, until it ends;
 * otherwise the failure is logged at most every STORE_WARN_MS while it lasts. outcome: the
 * failure lost a delivery's outcome (it is sent again after its lease). */
static void store_failed(struct deliver *d, int64_t *claim_after_mono, const char *what, int r,
                         bool outcome)
{
        int64_t now = clock_mono_ms();
        char why[WHY_MAX] = "";

        if (outcome)
                d->unrecorded++;
        *claim_after_mono = now + STORE_PAUSE_MS;
        if (d->store_down)
                return;
        if (r == -EIO && store_health(d->store, why, sizeof(why)) < 0) {
                d->store_down = true;
                d->store_failing = true;
                outage_publish(d, true, why[0] ? why : "no reason given");
                log_warning(
                    "delivery: store unavailable (%s): deliveries paused, tried again every "
                    "%d ms; a call that finishes meanwhile is sent again once its lease "
                    "runs out",
                    why[0] ? why : "no reason given", STORE_PAUSE_MS);
                return;
        }
        if (!d->store_failing || now - d->store_warned_mono_ms >= STORE_WARN_MS) {
                log_warning("delivery: %s failed: %s; trying again in %d ms", what, strerror(-r),
                            STORE_PAUSE_MS);
                d->store_warned_mono_ms = now;
        }
        d->store_failing = true;
}

static void store_worked(struct deliver *d)
{
        if (d->store_down) {
                outage_publish(d, false, "");
                if (d->unrecorded > 0)
                        log_notice("delivery: store available again: deliveries resumed; %" PRId64
                                   " outcome(s) could not be recorded meanwhile: those "
                                   "deliveries are sent again once their lease runs out",
                                   d->unrecorded);
                else
                        log_notice("delivery: store available again: deliveries resumed");
        } else if (d->store_failing) {
                log_notice("delivery: the store works again");
        }
        d->store_failing = false;
        d->store_down = false;
        d->unrecorded = 0;
}

static void metrics_attempt(struct deliver *d, const char *hook, enum metrics_delivery_result r,
                            double seconds)
{
        if (d->metrics)
                metrics_delivery(d->metrics, hook, r, seconds);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
        struct transfer *t = userdata;
        size_t n = size * nmemb, room = sizeof(t->response) - t->response_len;

        /* Read everything (so the connection can be reused), keep only the start. */
        if (n < room)
                room = n;
        memcpy(t->response + t->response_len, data, room);
        t->response_len += room;
        return n;
}

static int headers_add(struct curl_slist **list, const char *line)
{
        struct curl_slist *l = curl_slist_append(*list, line);

        if (!l)
                return -ENOMEM;
        *list = l;
        return 0;
}

static int build_headers(const struct hook_state *h, const struct transfer *t, int64_t ts,
                         struct curl_slist **ret)
{
        struct curl_slist *list = NULL;
        char sig[SIGN_SIGNATURE_MAX];
        char line[STORE_WEBHOOK_ID_MAX + SIGN_SIGNATURE_MAX + 64];
        int r;

        r = sign_signature(&h->key, t->webhook_id, ts, t->body, t->body_len, sig);
        if (r < 0)
                return r;
        r = headers_add(&list, "Content-Type: application/json");
        if (r == 0) {
                snprintf(line, sizeof(line), "webhook-id: %s", t->webhook_id);
                r = headers_add(&list, line);
        }
        if (r == 0) {
                snprintf(line, sizeof(line), "webhook-timestamp: %" PRId64, ts);
                r = headers_add(&list, line);
        }
        if (r == 0) {
                snprintf(line, sizeof(line), "webhook-signature: %s", sig);
                r = headers_add(&list, line);
        }
        /* No "Expect: 100-continue" round trip before larger bodies. */
        if (r == 0)
                r = headers_add(&list, "Expect:");
        if (r == 0 && h->hook->bearer_token && h->hook->bearer_token[0]) {
                _cleanup_free_ char *auth = NULL;

                if (asprintf(&auth, "Authorization: Bearer %s", h->hook->bearer_token) < 0) {
                        auth = NULL;
                        r = -ENOMEM;
                } else {
                        r = headers_add(&list, auth);
                        explicit_bzero(auth, strlen(auth));
                }
        }
        if (r < 0) {
                curl_slist_free_all(list);
                return r;
        }
        *ret = list;
        return 0;
}

static int setup_easy(struct transfer *t)
{
        CURL *e = t->easy;
        CURLcode cc = CURLE_OK;

        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_URL, t->url);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->body);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->body_len);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_USERAGENT, "ctxhookd/" CTXHOOKD_VERSION);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)t->timeout_ms);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->curl_error);
        if (cc == CURLE_OK)
                cc = curl_easy_setopt(e, CURLOPT_PRIVATE, t);
        return cc == CURLE_OK ? 0 : (cc == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EINVAL);
}

/* Copies the claimed delivery into slot t and adds its transfer to the multi handle. */
static int transfer_start(struct deliver *d, struct transfer *t, const struct hook_state *h,
                          const struct store_delivery *dl)
{
        char *conv, *url;
        int r;

        if (dl->body_len + 1 > t->body_cap) {
                char *b = realloc(t->body, dl->body_len + 1);

                if (!b)
                        return -ENOMEM;
                t->body = b;
                t->body_cap = dl->body_len + 1;
        }
        conv = strdup(dl->conversation ? dl->conversation : "");
        url = strdup(h->hook->url);
        if (!conv || !url) {
                free(conv);
                free(url);
                return -ENOMEM;
        }
        free(t->conversation);
        t->conversation = conv;
        free(t->url);
        t->url = url;
        snprintf(t->hook, sizeof(t->hook), "%s", h->hook->name);
        t->timeout_ms = h->hook->timeout_ms;
        t->max_attempts = h->hook->max_attempts;
        if (dl->body_len > 0)
                memcpy(t->body, dl->body, dl->body_len);
        t->body[dl->body_len] = '\0';
        t->body_len = dl->body_len;
        snprintf(t->webhook_id, sizeof(t->webhook_id), "%s", dl->webhook_id);
        t->id = dl->id;
        t->attempts = dl->attempts;
        t->response_len = 0;
        t->curl_error[0] = '\0';

        if (!t->easy) {
                t->easy = curl_easy_init();
                if (!t->easy)
                        return -ENOMEM;
        } else {
                curl_easy_reset(t->easy);
        }
        curl_slist_free_all(t->headers);
        t->headers = NULL;
        r = build_headers(h, t, clock_wall_ms() / 1000, &t->headers);
        if (r < 0)
                return r;
        r = setup_easy(t);
        if (r < 0)
                return r;
        t->started_mono_ms = clock_mono_ms();
        if (curl_multi_add_handle(d->multi, t->easy) != CURLM_OK)
                return -ENOMEM;
        t->busy = true;
        return 0;
}

static void transfer_release(struct deliver *d, struct transfer *t)
{
        curl_multi_remove_handle(d->multi, t->easy);
        curl_slist_free_all(t->headers);
        t->headers = NULL;
        t->busy = false;
        d->free_slots[d->n_free++] = (size_t)(t - d->slots);
}

static const struct hook_state *hook_find(const struct deliver *d, const char *name)
{
        for (size_t i = 0; i < d->n_hooks; i++)
                if (strcmp(d->hooks[i].hook->name, name) == 0)
                        return &d->hooks[i];
        return NULL;
}

static bool in_flight(const struct deliver *d, int64_t id)
{
        for (size_t i = 0; i < d->n_slots; i++)
                if (d->slots[i].busy && d->slots[i].id == id)
                        return true;
        return false;
}

/* Claims as many due deliveries as there are idle slots and starts them. Returns 0 or the
 * store's error (claims then pause); a delivery that cannot be started is put back.
 * *ret_more tells whether the claim was full, so more may be claimable at once. */
static int claim_and_start(struct deliver *d, bool *ret_more)
{
        struct store_delivery *batch = NULL;
        size_t n = 0, limit = d->n_free;
        int64_t now = clock_wall_ms();
        int r;

        r = store_outbox_claim(d->store, now, d->lease_ms, limit, &batch, &n);
        if (r < 0)
                return r;
        *ret_more = n == limit;
        for (size_t i = 0; i < n; i++) {
                const struct store_delivery *dl = &batch[i];
                const struct hook_state *h = hook_find(d, dl->hook);
                struct transfer *t;

                if (!h) {
                        char reason[STORE_HOOK_MAX + 64];

                        snprintf(reason, sizeof(reason),
                                 "hook '%s' is not configured (any more: removed by a reload?)",
                                 dl->hook);
                        r = store_outbox_dead(d->store, dl->id, reason, now);
                        if (r < 0)
                                log_warning("delivery %" PRId64 ": recording its dead letter "
                                            "failed: %s",
                                            dl->id, strerror(-r));
                        else
                                log_info("delivery %" PRId64 " (conversation %s) is a dead "
                                         "letter: %s",
                                         dl->id, dl->conversation, reason);
                        continue;
                }
                /* Only if a lease ran out while we still had the call open (a store far slower
                 * than LEASE_MARGIN_MS): never send one delivery twice at once. */
                if (in_flight(d, dl->id) || d->n_free == 0)
                        continue;
                t = &d->slots[d->free_slots[--d->n_free]];
                r = transfer_start(d, t, h, dl);
                if (r < 0) {
                        int r2;

                        d->free_slots[d->n_free++] = (size_t)(t - d->slots);
                        log_warning("delivery %" PRId64 " of hook '%s': starting the call "
                                    "failed: %s",
                                    dl->id, dl->hook, strerror(-r));
                        /* Put it back for later without counting an attempt. */
                        r2 = store_outbox_retry(d->store, dl->id, dl->attempts,
                                                now + STORE_PAUSE_MS, "could not start the call");
                        if (r2 == 0)
                                timers_push(d, now + STORE_PAUSE_MS);
                        continue;
                }
                log_debug("delivery %" PRId64 " of hook '%s' (conversation %s): attempt %" PRId64,
                          dl->id, dl->hook, dl->conversation, dl->attempts + 1);
        }
        store_deliveries_free(batch, n);
        return 0;
}

/* A printable excerpt of the response body: control bytes become spaces, other non-ASCII
 * bytes '?', so a reason is one clean line whatever the server sent. */
static void response_excerpt(const struct transfer *t, char *out, size_t size)
{
        size_t n = t->response_len < REASON_BODY ? t->response_len : REASON_BODY;

        if (n > size - 1)
                n = size - 1;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)t->response[i];

                out[i] = c < 0x20 || c == 0x7f ? ' ' : c > 0x7e ? '?' : (char)c;
        }
        while (n > 0 && out[n - 1] == ' ')
                n--;
        out[n] = '\0';
}

static int64_t response_retry_after(const struct transfer *t, int64_t now)
{
        struct curl_header *h = NULL;

        if (curl_easy_header(t->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
                return -1;
        return deliver_parse_retry_after(h->value, now);
}

enum verdict {
        VERDICT_DONE,
        VERDICT_RETRY,
        VERDICT_DEAD,
};

/* Records the outcome of the finished transfer t. Returns 0 or the store's error. */
static int transfer_finish(struct deliver *d, struct transfer *t, CURLcode cc)
{
        int64_t now = clock_wall_ms(), attempts = t->attempts + 1, retry_after = -1;
        double seconds = (double)(clock_mono_ms() - t->started_mono_ms) / 1000.0;
        char summary[ERROR_TEXT_MAX], excerpt[REASON_BODY + 1];
        char detail[ERROR_TEXT_MAX + REASON_BODY + 8];
        char reason[ERROR_TEXT_MAX + REASON_BODY + 80];
        enum verdict v;
        long status = 0;
        int r;

        excerpt[0] = '\0';
        if (cc != CURLE_OK) {
                v = VERDICT_RETRY;
                if (cc == CURLE_OPERATION_TIMEDOUT)
                        snprintf(summary, sizeof(summary),
                                 "no answer from %s within %" PRId64 " ms", t->url, t->timeout_ms);
                else
                        snprintf(summary, sizeof(summary), "%s (%s)",
                                 t->curl_error[0] ? t->curl_error : curl_easy_strerror(cc), t->url);
        } else {
                curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
                if (status >= 200 && status < 300)
                        v = VERDICT_DONE;
                else if (status == 408 || status == 429 || (status >= 500 && status < 600))
                        v = VERDICT_RETRY;
                else
                        v = VERDICT_DEAD;
                if (status >= 300 && status < 400)
                        snprintf(summary, sizeof(summary),
                                 "HTTP %ld from %s (redirects are not followed)", status, t->url);
                else
                        snprintf(summary, sizeof(summary), "HTTP %ld from %s", status, t->url);
                if (v == VERDICT_RETRY)
                        retry_after = response_retry_after(t, now);
                response_excerpt(t, excerpt, sizeof(excerpt));
        }
        /* The summary is what is logged; the excerpt of the answer goes only into the store. */
        snprintf(detail, sizeof(detail), "%s%s%s", summary, excerpt[0] ? ": " : "", excerpt);

        if (v == VERDICT_RETRY && attempts >= t->max_attempts) {
                v = VERDICT_DEAD;
                snprintf(reason, sizeof(reason),
                         "gave up after %" PRId64 " attempts; last error: %s", attempts, detail);
                snprintf(summary + strlen(summary), sizeof(summary) - strlen(summary),
                         " (attempt %" PRId64 " of %" PRId64 ")", attempts, t->max_attempts);
        } else {
                snprintf(reason, sizeof(reason), "%s", detail);
        }

        switch (v) {
        case VERDICT_DONE:
                r = store_outbox_done(d->store, t->id, now);
                if (r < 0)
                        return r;
                metrics_attempt(d, t->hook, METRICS_DELIVERY_DELIVERED, seconds);
                log_debug("delivery %" PRId64 " of hook '%s' (conversation %s): HTTP %ld in "
                          "%.3f s, delivered",
                          t->id, t->hook, t->conversation, status, seconds);
                break;
        case VERDICT_RETRY: {
                int64_t wait = deliver_backoff_ms(attempts, d->cfg->delivery.retry_base_ms,
                                                  d->cfg->delivery.retry_max_ms, retry_after);

                r = store_outbox_retry(d->store, t->id, attempts, now + wait, reason);
                if (r < 0)
                        return r;
                timers_push(d, now + wait);
                metrics_attempt(d, t->hook, METRICS_DELIVERY_RETRY, seconds);
                log_debug("delivery %" PRId64 " of hook '%s' (conversation %s): attempt %" PRId64
                          " failed after %.3f s: %s; next in %" PRId64 " ms",
                          t->id, t->hook, t->conversation, attempts, seconds, summary, wait);
                break;
        }
        case VERDICT_DEAD:
                r = store_outbox_dead(d->store, t->id, reason, now);
                if (r < 0)
                        return r;
                metrics_attempt(d, t->hook, METRICS_DELIVERY_DEAD, seconds);
                log_info("delivery %" PRId64 " of hook '%s' (conversation %s) is a dead letter: "
                         "%s",
                         t->id, t->hook, t->conversation, summary);
                break;
        }
        return 0;
}

/* Records every finished transfer. Returns how many finished. */
static size_t collect_finished(struct deliver *d, int64_t *claim_after_mono)
{
        size_t finished = 0;
        CURLMsg *msg;
        int left;

        for (;;) {
                struct transfer *t = NULL;
                int r;

                msg = curl_multi_info_read(d->multi, &left);
                if (!msg)
                        break;
                if (msg->msg != CURLMSG_DONE)
                        continue;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
                r = transfer_finish(d, t, msg->data.result);
                if (r < 0)
                        store_failed(d, claim_after_mono, "recording a delivery's outcome", r,
                                     true);
                else
                        store_worked(d);
                transfer_release(d, t);
                finished++;
        }
        return finished;
}

static void update_gauges(struct deliver *d, int64_t *claim_after_mono)
{
        int64_t depth = 0, dead = 0;
        int r;

        r = store_outbox_depth(d->store, &depth);
        if (r == 0)
                r = store_dead_count(d->store, &dead);
        if (r < 0) {
                store_failed(d, claim_after_mono, "reading the outbox depth", r, false);
                return;
        }
        if (d->metrics) {
                metrics_gauge_set(d->metrics, METRICS_OUTBOX_DEPTH, depth);
                metrics_gauge_set(d->metrics, METRICS_DEAD_LETTERS, dead);
        }
}

/* At the end of the grace period: drops the calls still open and hands their deliveries back
 * to the outbox, due now and without counting an attempt, so the next start sends them at once
 * (if this fails, their leases run out instead). */
static void abandon_in_flight(struct deliver *d)
{
        int64_t now = clock_wall_ms();

        for (size_t i = 0; i < d->n_slots; i++) {
                struct transfer *t = &d->slots[i];
                int r;

                if (!t->busy)
                        continue;
                r = store_outbox_retry(d->store, t->id, t->attempts, now,
                                       "interrupted by shutdown");
                log_notice("delivery %" PRId64 " of hook '%s': call abandoned at shutdown; it "
                           "will be sent again%s",
                           t->id, t->hook, r < 0 ? " once its lease expires" : "");
                transfer_release(d, t);
        }
}

static void hooks_free(struct hook_state *h, size_t n)
{
        if (h)
                explicit_bzero(h, n * sizeof(h[0]));
        free(h);
}

/* The hooks' states for cfg (signing keys parsed once) and the lease their longest time-out
 * needs; registers their names with the metrics. */
static int hooks_build(const struct config *cfg, struct metrics *metrics, struct hook_state **ret,
                       size_t *ret_n, int64_t *ret_lease_ms, struct ch_error *err)
{
        const char *names[CONFIG_HOOKS_MAX];
        struct hook_state *h = NULL;
        int64_t max_timeout = 0;
        int r;

        if (cfg->n_hooks > CONFIG_HOOKS_MAX) {
                ch_error_set(err, "more than %d hooks", CONFIG_HOOKS_MAX);
                return -E2BIG;
        }
        if (cfg->n_hooks > 0) {
                h = calloc(cfg->n_hooks, sizeof(h[0]));
                if (!h) {
                        ch_error_set(err, "out of memory");
                        return -ENOMEM;
                }
        }
        for (size_t i = 0; i < cfg->n_hooks; i++) {
                struct ch_error e = {{0}};

                h[i].hook = &cfg->hooks[i];
                names[i] = cfg->hooks[i].name;
                r = sign_key_parse(cfg->hooks[i].secret, &h[i].key, &e);
                if (r < 0) {
                        ch_error_set(err, "hook '%s': %s", cfg->hooks[i].name, e.msg);
                        hooks_free(h, cfg->n_hooks);
                        return r;
                }
                if (cfg->hooks[i].timeout_ms > max_timeout)
                        max_timeout = cfg->hooks[i].timeout_ms;
        }
        r = metrics ? metrics_set_hooks(metrics, names, cfg->n_hooks) : 0;
        if (r < 0) {
                ch_error_set(err,
                             r == -E2BIG ? "more than %d hook names since the start: their "
                                           "delivery counters need a restart"
                                         : "out of memory registering the hooks' metrics (%d)",
                             METRICS_HOOKS_MAX);
                hooks_free(h, cfg->n_hooks);
                return r;
        }
        *ret = h;
        *ret_n = cfg->n_hooks;
        *ret_lease_ms = max_timeout + LEASE_MARGIN_MS;
        return 0;
}

/* On the delivery thread, between calls: takes the hooks deliver_reconfigure prepared. Calls
 * in flight keep what they copied of their hook (transfer_start). */
static void take_reconfiguration(struct deliver *d)
{
        struct hook_state *old;
        size_t n_old;

        pthread_mutex_lock(&d->reconf_lock);
        if (!d->reconf_pending) {
                pthread_mutex_unlock(&d->reconf_lock);
                return;
        }
        old = d->hooks;
        n_old = d->n_hooks;
        d->hooks = d->next_hooks;
        d->n_hooks = d->next_n_hooks;
        d->cfg = d->next_cfg;
        /* Claims from now on are of the new hooks; calls in flight hold leases of the old. */
        d->lease_ms = d->next_lease_ms;
        d->next_hooks = NULL;
        d->next_n_hooks = 0;
        d->next_cfg = NULL;
        d->reconf_pending = false;
        pthread_cond_broadcast(&d->reconf_taken);
        pthread_mutex_unlock(&d->reconf_lock);
        hooks_free(old, n_old);
        curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, (long)(d->n_slots + d->n_hooks));
}

static int64_t min64(int64_t a, int64_t b)
{
        return a < b ? a : b;
}

static void *deliver_main(void *arg)
{
        struct deliver *d = arg;
        int64_t next_tick = clock_mono_ms(), claim_after = 0, store_due = INT64_MAX;
        bool want_claim = true;

        for (;;) {
                int64_t now = clock_mono_ms(), wall = clock_wall_ms(), timeout;
                bool stopping = atomic_load(&d->stopping);
                int running = 0, r;

                atomic_store(&d->last_progress_ms, now);
                take_reconfiguration(d);
                if (now >= next_tick) {
                        update_gauges(d, &claim_after);
                        next_tick = now + TICK_MS;
                        want_claim = true;
                }
                if (atomic_exchange(&d->wake_pending, false))
                        want_claim = true;
                if (timers_expire(d, wall) || wall >= store_due)
                        want_claim = true;

                if (want_claim && !stopping && d->n_free > 0 && now >= claim_after) {
                        bool more = false;

                        want_claim = false;
                        store_due = INT64_MAX;
                        r = claim_and_start(d, &more);
                        if (r < 0) {
                                store_failed(d, &claim_after, "claiming deliveries", r, false);
                                want_claim = true; /* once the pause is over */
                        } else {
                                store_worked(d);
                        }
                        /* A full claim: claim again as soon as slots are idle. Otherwise nothing
                         * more is claimable now; ask when the next delivery falls due. A time
                         * already past belongs to one held back behind its conversation's
                         * earlier delivery, or leased elsewhere: a finished transfer or the
                         * tick picks it up. */
                        if (r == 0 && more)
                                want_claim = true;
                        else if (r == 0) {
                                int64_t due;

                                r = store_outbox_next_due(d->store, &due);
                                if (r == 0 && due > wall)
                                        store_due = due;
                                else if (r < 0 && r != -ENOENT)
                                        store_failed(d, &claim_after, "reading the outbox", r,
                                                     false);
                        }
                }

                if (curl_multi_perform(d->multi, &running) != CURLM_OK)
                        log_warning("delivery: curl_multi_perform failed");
                if (collect_finished(d, &claim_after) > 0)
                        want_claim = true;

                now = clock_mono_ms();
                if (stopping &&
                    (d->n_free == d->n_slots || now >= atomic_load(&d->stop_deadline_mono_ms)))
                        break;

                timeout = next_tick - now;
                if (stopping)
                        timeout = min64(timeout, atomic_load(&d->stop_deadline_mono_ms) - now);
                else if (d->n_free > 0) {
                        int64_t wall_now = clock_wall_ms();

                        if (want_claim)
                                timeout = min64(timeout, claim_after - now);
                        if (d->n_timers > 0)
                                timeout = min64(timeout, d->timers[0] - wall_now);
                        /* Not before claims may start again after a store failure: a due
                         * time already past would otherwise spin the loop until then. */
                        if (store_due != INT64_MAX)
                                timeout = min64(timeout, store_due - wall_now > claim_after - now
                                                             ? store_due - wall_now
                                                             : claim_after - now);
                }
                if (timeout < 0)
                        timeout = 0;
                if (curl_multi_poll(d->multi, NULL, 0, (int)timeout, NULL) != CURLM_OK)
                        log_warning("delivery: curl_multi_poll failed");
        }
        abandon_in_flight(d);
        return NULL;
}

static struct deliver *deliver_free(struct deliver *d)
{
        if (!d)
                return NULL;
        for (size_t i = 0; i < d->n_slots; i++) {
                struct transfer *t = &d->slots[i];

                if (t->easy && d->multi && t->busy)
                        curl_multi_remove_handle(d->multi, t->easy);
                if (t->easy)
                        curl_easy_cleanup(t->easy);
                curl_slist_free_all(t->headers);
                free(t->conversation);
                free(t->url);
                free(t->body);
        }
        if (d->multi)
                curl_multi_cleanup(d->multi);
        hooks_free(d->hooks, d->n_hooks);
        hooks_free(d->next_hooks, d->next_n_hooks);
        pthread_cond_destroy(&d->reconf_taken);
        pthread_mutex_destroy(&d->reconf_lock);
        pthread_mutex_destroy(&d->outage_lock);
        free(d->slots);
        free(d->free_slots);
        free(d->timers);
        free(d);
        return NULL;
}

int deliver_start(const struct config *cfg, struct store *store, struct metrics *metrics,
                  struct deliver **ret, struct ch_error *err)
{
        struct deliver *d;
        size_t slots;
        int r;

        pthread_once(&curl_once, curl_init_once);
        if (curl_init_result != CURLE_OK) {
                ch_error_set(err, "initialising libcurl failed: %s",
                             curl_easy_strerror(curl_init_result));
                return -EIO;
        }

        d = calloc(1, sizeof(*d));
        if (!d)
                goto oom;
        d->cfg = cfg;
        d->store = store;
        d->metrics = metrics;
        pthread_mutex_init(&d->reconf_lock, NULL);
        pthread_mutex_init(&d->outage_lock, NULL);
        pthread_cond_init(&d->reconf_taken, NULL);
        r = hooks_build(cfg, metrics, &d->hooks, &d->n_hooks, &d->lease_ms, err);
        if (r < 0) {
                deliver_free(d);
                return r;
        }

        slots = cfg->delivery.max_in_flight > 0 ? (size_t)cfg->delivery.max_in_flight : 1;
        d->n_slots = slots;
        d->slots = calloc(slots, sizeof(d->slots[0]));
        d->free_slots = calloc(slots, sizeof(d->free_slots[0]));
        d->timers = calloc(RETRY_TIMERS_MAX, sizeof(d->timers[0]));
        if (!d->slots || !d->free_slots || !d->timers)
                goto oom;
        /* Pop slot 0 first: the easy handles most recently used are reused first. */
        for (size_t i = 0; i < slots; i++)
                d->free_slots[i] = slots - 1 - i;
        d->n_free = slots;

        d->multi = curl_multi_init();
        if (!d->multi)
                goto oom;
        /* Keep an idle connection per slot and hook, not curl's default of 4 per easy handle
         * currently added (which drops to nothing when the outbox runs dry). */
        curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, (long)(slots + cfg->n_hooks));

        atomic_store(&d->last_progress_ms, clock_mono_ms());
        r = pthread_create(&d->thread, NULL, deliver_main, d);
        if (r != 0) {
                ch_error_set(err, "starting the delivery thread failed: %s", strerror(r));
                deliver_free(d);
                return -r;
        }
        *ret = d;
        return 0;

oom:
        ch_error_set(err, "out of memory starting the delivery thread");
        deliver_free(d);
        return -ENOMEM;
}

void deliver_wake(struct deliver *d)
{
        if (!d)
                return;
        atomic_store(&d->wake_pending, true);
        curl_multi_wakeup(d->multi);
}

bool deliver_store_unavailable(struct deliver *d, char *why, size_t why_size)
{
        bool outage;

        pthread_mutex_lock(&d->outage_lock);
        outage = d->outage;
        if (outage && why && why_size > 0)
                snprintf(why, why_size, "%s", d->outage_why);
        pthread_mutex_unlock(&d->outage_lock);
        return outage;
}

int64_t deliver_last_progress_ms(const struct deliver *d)
{
        return atomic_load(&((struct deliver *)d)->last_progress_ms);
}

int deliver_reconfigure(struct deliver *d, const struct config *cfg, struct ch_error *err)
{
        struct hook_state *h = NULL;
        int64_t lease_ms = 0;
        size_t n = 0;
        int r;

        r = hooks_build(cfg, d->metrics, &h, &n, &lease_ms, err);
        if (r < 0)
                return r;
        pthread_mutex_lock(&d->reconf_lock);
        d->next_hooks = h;
        d->next_n_hooks = n;
        d->next_cfg = cfg;
        d->next_lease_ms = lease_ms;
        d->reconf_pending = true;
        curl_multi_wakeup(d->multi);
        while (d->reconf_pending)
                pthread_cond_wait(&d->reconf_taken, &d->reconf_lock);
        pthread_mutex_unlock(&d->reconf_lock);
        return 0;
}

struct deliver *deliver_stop(struct deliver *d, int64_t grace_ms)
{
        if (!d)
                return NULL;
        atomic_store(&d->stop_deadline_mono_ms, clock_mono_ms() + (grace_ms > 0 ? grace_ms : 0));
        atomic_store(&d->stopping, true);
        curl_multi_wakeup(d->multi);
        pthread_join(d->thread, NULL);
        return deliver_free(d);
}
