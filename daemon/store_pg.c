/* The PostgreSQL backend of the store (the only file that sees libpq-fe.h), for several ctxhookd
 * instances sharing one database. Same semantics as the SQLite backend (store.h), adapted to
 * concurrent writers on other hosts:
 * - a pool of connections, each opened on first use, every statement prepared once per
 *   connection; a connection that breaks is dropped and opened again; while the database is
 *   unreachable calls fail at once (-EIO) and one reconnect is tried per second, so the API
 *   answers 503 quickly and recovers by itself;
 * - every write is one READ COMMITTED transaction that first takes a transaction-scoped advisory
 *   lock on what it reads and rewrites (a session; an outbox queue), so an If-Match check and the
 *   write after it see no concurrent writer, on this instance or another; a transaction that
 *   still meets a conflict (deadlock, a unique or foreign key race with a namespace being
 *   deleted) is run again from the start;
 * - reads of several statements share one REPEATABLE READ snapshot (an ETag that fits the data);
 * - the outbox claim takes due queue heads with FOR UPDATE SKIP LOCKED and leases them by time,
 *   so two instances never claim the same delivery and one that dies gives its claims back when
 *   the lease ends; the head mark of each (hook, conversation) queue is kept under that queue's
 *   advisory lock, so the per-conversation order holds across instances;
 * - the schema is versioned in table ctxhookd_schema and migrated under an advisory lock, so
 *   instances starting together migrate once.
 * Values are compact JSON text; bytes that may be anything (dead letters, dedup keys, webhook
 * bodies) are bytea. Text columns use the "C" collation so listings sort bytewise, as SQLite's. */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctxhookd/cleanup.h"
#include "ctxhookd/clock.h"
#include "ctxhookd/store.h"
#include "store_backend.h"

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* Sessions examined per sweep transaction. */
#define SWEEP_BATCH 500
/* Dedup keys forgotten per transaction. */
#define DEDUP_BATCH 5000
/* Runs of a write transaction that met a conflict with a concurrent one, before -EIO. */
#define TX_TRIES 8
/* While the database is unreachable, one connection attempt per this many ms. */
#define RECONNECT_EVERY_MS 1000
/* The most parameters one statement takes. */
#define PARAMS_MAX 8
/* The advisory lock key under which instances migrate the schema ("ctxhookd" in ASCII). */
#define MIGRATION_LOCK "7239381448011522916"

/* Migration i brings the schema from version i to i + 1. Append only; never edit a shipped
 * step. The first is the SQLite schema of issues 2 and 3 in one step. */
static const char *const migrations[] = {
    "CREATE TABLE namespaces ("
    "  account text COLLATE \"C\" NOT NULL,"
    "  name text COLLATE \"C\" NOT NULL,"
    "  created_at bigint NOT NULL,"
    "  ttl_s bigint,"
    "  PRIMARY KEY (account, name));"
    "CREATE TABLE sessions ("
    "  account text COLLATE \"C\" NOT NULL,"
    "  ns text COLLATE \"C\" NOT NULL,"
    "  sid text COLLATE \"C\" NOT NULL,"
    "  created_at bigint NOT NULL,"
    "  updated_at bigint NOT NULL,"
    "  ttl_s bigint," /* NULL: inherit the namespace's */
    "  etag bigint NOT NULL,"
    "  PRIMARY KEY (account, ns, sid),"
    "  FOREIGN KEY (account, ns) REFERENCES namespaces (account, name) ON DELETE CASCADE);"
    "CREATE TABLE properties ("
    "  account text COLLATE \"C\" NOT NULL,"
    "  ns text COLLATE \"C\" NOT NULL,"
    "  sid text COLLATE \"C\" NOT NULL,"
    "  name text COLLATE \"C\" NOT NULL,"
    "  value text NOT NULL," /* compact JSON */
    "  updated_at bigint NOT NULL,"
    "  etag bigint NOT NULL,"
    "  PRIMARY KEY (account, ns, sid, name),"
    "  FOREIGN KEY (account, ns, sid) REFERENCES sessions (account, ns, sid)"
    "    ON DELETE CASCADE);"
    "CREATE TABLE api_keys ("
    "  account text COLLATE \"C\" NOT NULL PRIMARY KEY,"
    "  key_hash bytea NOT NULL,"
    "  created_at bigint NOT NULL);"
    /* Identity ids are never reused: a late done() from a claimer whose lease ended must never
     * hit a newer row. The partial index holds the claimable candidates only, keyed by when
     * each becomes claimable, as the SQLite schema does. */
    "CREATE TABLE outbox ("
    "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  hook text COLLATE \"C\" NOT NULL,"
    "  account text COLLATE \"C\" NOT NULL,"
    "  conversation text COLLATE \"C\" NOT NULL,"
    "  webhook_id text NOT NULL,"
    "  body bytea NOT NULL,"
    "  clear_namespaces text,"
    "  attempts bigint NOT NULL,"
    "  created_ms bigint NOT NULL,"
    "  next_attempt_ms bigint NOT NULL,"
    "  lease_until_ms bigint NOT NULL," /* 0: not in flight */
    "  head boolean NOT NULL,"
    "  last_error bytea);"
    "CREATE INDEX outbox_queue ON outbox (hook, conversation, id);"
    "CREATE INDEX outbox_ready ON outbox (GREATEST(next_attempt_ms, lease_until_ms), id)"
    "  WHERE head;"
    "CREATE TABLE dead_letters ("
    "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  kind text NOT NULL CHECK (kind IN ('event', 'delivery')),"
    "  source bytea NOT NULL,"
    "  reason bytea NOT NULL,"
    "  received_ms bigint NOT NULL,"
    "  raw bytea NOT NULL,"
    "  hook text,"
    "  account text,"
    "  conversation text,"
    "  webhook_id text,"
    "  clear_namespaces text,"
    "  attempts bigint,"
    "  created_ms bigint,"
    "  last_error bytea);"
    "CREATE TABLE dedup ("
    "  key bytea NOT NULL PRIMARY KEY,"
    "  at_ms bigint NOT NULL);"
    "CREATE INDEX dedup_at ON dedup (at_ms);",
};

#define SCHEMA_VERSION ((int)ELEMENTSOF(migrations))

#define EFFECTIVE_TTL "COALESCE(s.ttl_s, n.ttl_s, 0)"
#define SESSION_JOIN  "sessions s JOIN namespaces n ON n.account = s.account AND n.name = s.ns"
#define SESSION_PK    "s.account = $1 AND s.ns = $2 AND s.sid = $3"
#define PROP_PK       "account = $1 AND ns = $2 AND sid = $3 AND name = $4"
/* When an outbox head becomes claimable; written as in the index outbox_ready. */
#define READY "GREATEST(next_attempt_ms, lease_until_ms)"
#define SWEEP_TTL                                                                                  \
        "(SELECT " EFFECTIVE_TTL " FROM " SESSION_JOIN " WHERE " SESSION_PK " AND " EFFECTIVE_TTL  \
        " > 0)"
#define SWEEP_EXPIRED                                                                              \
        " AND ($1 - s.updated_at >= " EFFECTIVE_TTL " * 1000 OR EXISTS (SELECT 1"                  \
        " FROM properties p WHERE p.account = s.account AND p.ns = s.ns AND p.sid = s.sid"         \
        " AND $1 - p.updated_at >= " EFFECTIVE_TTL " * 1000))"                                     \
        " ORDER BY s.account, s.ns, s.sid LIMIT $2"

#define STATEMENTS(X)                                                                              \
        X(PING, "SELECT 1")                                                                        \
        X(VERSION, "SELECT version FROM ctxhookd_schema")                                          \
        X(LOCK, "SELECT pg_advisory_xact_lock($1::bigint)")                                        \
        X(LOCK_MANY, "SELECT pg_advisory_xact_lock(k) FROM"                                        \
                     " (SELECT DISTINCT k FROM unnest($1::bigint[]) AS k ORDER BY k) AS keys")     \
        X(KEY_SET, "INSERT INTO api_keys (account, key_hash, created_at) VALUES ($1, $2, $3)"      \
                   " ON CONFLICT (account) DO UPDATE SET key_hash = excluded.key_hash,"            \
                   " created_at = excluded.created_at")                                            \
        X(KEY_GET, "SELECT key_hash FROM api_keys WHERE account = $1")                             \
        X(NS_ENSURE,                                                                               \
          "INSERT INTO namespaces (account, name, created_at, ttl_s) VALUES ($1, $2, $3, NULL)"    \
          " ON CONFLICT (account, name) DO NOTHING")                                               \
        X(NS_SET_TTL,                                                                              \
          "INSERT INTO namespaces (account, name, created_at, ttl_s) VALUES ($1, $2, $3, $4)"      \
          " ON CONFLICT (account, name) DO UPDATE SET ttl_s = excluded.ttl_s")                     \
        X(NS_LIST, "SELECT name, created_at, ttl_s FROM namespaces WHERE account = $1"             \
                   " ORDER BY name")                                                               \
        X(NS_DEL, "DELETE FROM namespaces WHERE account = $1 AND name = $2")                       \
        X(SESS_GET, "SELECT s.etag, s.updated_at, " EFFECTIVE_TTL " FROM " SESSION_JOIN            \
                    " WHERE " SESSION_PK)                                                          \
        X(SESS_INSERT,                                                                             \
          "INSERT INTO sessions (account, ns, sid, created_at, updated_at, ttl_s, etag)"           \
          " VALUES ($1, $2, $3, $4, $4, $5, $6)")                                                  \
        X(SESS_TOUCH, "UPDATE sessions SET updated_at = GREATEST(updated_at, $4), etag = $5"       \
                      " WHERE account = $1 AND ns = $2 AND sid = $3")                              \
        X(SESS_SET_TTL,                                                                            \
          "UPDATE sessions SET updated_at = GREATEST(updated_at, $4),"                             \
          " ttl_s = COALESCE($5, ttl_s) WHERE account = $1 AND ns = $2 AND sid = $3")              \
        X(SESS_DEL, "DELETE FROM sessions WHERE account = $1 AND ns = $2 AND sid = $3")            \
        X(SESS_PAGE_DEFAULT,                                                                       \
          "SELECT s.sid, s.created_at, " EFFECTIVE_TTL " FROM " SESSION_JOIN                       \
          " WHERE s.account = $1 AND s.ns = $2 AND s.sid = '" STORE_DEFAULT_SESSION "'"            \
          " AND (" EFFECTIVE_TTL " <= 0 OR $3 - s.updated_at < " EFFECTIVE_TTL " * 1000)")         \
        X(SESS_PAGE,                                                                               \
          "SELECT s.sid, s.created_at, " EFFECTIVE_TTL " FROM " SESSION_JOIN                       \
          " WHERE s.account = $1 AND s.ns = $2 AND s.sid <> '" STORE_DEFAULT_SESSION "'"           \
          " AND (" EFFECTIVE_TTL " <= 0 OR $3 - s.updated_at < " EFFECTIVE_TTL " * 1000)"          \
          " ORDER BY s.sid LIMIT $4 OFFSET $5")                                                    \
        X(PROP_GET, "SELECT p.value, p.etag, p.updated_at, " EFFECTIVE_TTL                         \
                    " FROM properties p JOIN sessions s"                                           \
                    " ON s.account = p.account AND s.ns = p.ns AND s.sid = p.sid"                  \
                    " JOIN namespaces n ON n.account = p.account AND n.name = p.ns"                \
                    " WHERE p.account = $1 AND p.ns = $2 AND p.sid = $3 AND p.name = $4")          \
        X(PROP_ROW, "SELECT value, etag, updated_at FROM properties WHERE " PROP_PK)               \
        X(PROP_UPSERT, "INSERT INTO properties (account, ns, sid, name, value, updated_at, etag)"  \
                       " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account, ns, sid, name)" \
                       " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at,"  \
                       " etag = excluded.etag")                                                    \
        X(PROP_DEL, "DELETE FROM properties WHERE " PROP_PK)                                       \
        X(PROPS_ALL,                                                                               \
          "SELECT name, value FROM properties"                                                     \
          " WHERE account = $1 AND ns = $2 AND sid = $3"                                           \
          " AND ($4::bigint <= 0 OR $5 - updated_at < $4::bigint * 1000) ORDER BY name")           \
        X(PROPS_DEL, "DELETE FROM properties WHERE account = $1 AND ns = $2 AND sid = $3")         \
        X(SWEEP_SCAN_FIRST, "SELECT s.account, s.ns, s.sid FROM " SESSION_JOIN                     \
                            " WHERE " EFFECTIVE_TTL " > 0" SWEEP_EXPIRED)                          \
        X(SWEEP_SCAN_NEXT, "SELECT s.account, s.ns, s.sid FROM " SESSION_JOIN                      \
                           " WHERE (s.account, s.ns, s.sid) > ($3, $4, $5)"                        \
                           " AND " EFFECTIVE_TTL " > 0" SWEEP_EXPIRED)                             \
        X(SWEEP_DEL_PROPS, "DELETE FROM properties WHERE account = $1 AND ns = $2 AND sid = $3"    \
                           " AND $4 - updated_at >= " SWEEP_TTL " * 1000")                         \
        X(SWEEP_DEL_SESSION, "DELETE FROM sessions WHERE account = $1 AND ns = $2 AND sid = $3"    \
                             " AND $4 - updated_at >= " SWEEP_TTL " * 1000")                       \
        X(DEDUP_ADD,                                                                               \
          "INSERT INTO dedup (key, at_ms) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")           \
        X(DEDUP_EXPIRE, "DELETE FROM dedup WHERE key IN"                                           \
                        " (SELECT key FROM dedup WHERE at_ms < $1 LIMIT $2)")                      \
        X(OB_INSERT,                                                                               \
          "INSERT INTO outbox (hook, account, conversation, webhook_id, body, clear_namespaces,"   \
          " attempts, created_ms, next_attempt_ms, lease_until_ms, head)"                          \
          " VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, 0,"                                         \
          " NOT EXISTS (SELECT 1 FROM outbox WHERE hook = $1 AND conversation = $3))")             \
        X(OB_CLAIM,                                                                                \
          "WITH c AS (SELECT id, " READY " AS ready FROM outbox WHERE head AND " READY " <= $1"    \
          " ORDER BY " READY ", id LIMIT $2 FOR UPDATE SKIP LOCKED)"                               \
          " UPDATE outbox o SET lease_until_ms = $3 FROM c WHERE o.id = c.id"                      \
          " RETURNING o.id, o.hook, o.account, o.conversation, o.webhook_id, o.body,"              \
          " o.attempts, o.created_ms, c.ready")                                                    \
        X(OB_DEL, "DELETE FROM outbox WHERE id = $1"                                               \
                  " RETURNING hook, conversation, account, clear_namespaces, head")                \
        X(OB_PROMOTE, "UPDATE outbox SET head = true WHERE id = (SELECT id FROM outbox"            \
                      " WHERE hook = $1 AND conversation = $2 ORDER BY id LIMIT 1) AND NOT head")  \
        X(OB_RETRY, "UPDATE outbox SET attempts = $2, next_attempt_ms = $3, lease_until_ms = 0,"   \
                    " last_error = $4 WHERE id = $1")                                              \
        X(OB_TO_DEAD,                                                                              \
          "INSERT INTO dead_letters (kind, source, reason, received_ms, raw, hook, account,"       \
          " conversation, webhook_id, clear_namespaces, attempts, created_ms, last_error)"         \
          " SELECT 'delivery', convert_to('delivery:' || hook || '/' || webhook_id, 'UTF8'),"      \
          " $2, $3, body, hook, account, conversation, webhook_id, clear_namespaces, attempts,"    \
          " created_ms, last_error FROM outbox WHERE id = $1")                                     \
        X(OB_DEPTH, "SELECT count(*) FROM outbox")                                                 \
        X(OB_NEXT_DUE, "SELECT " READY " FROM outbox WHERE head ORDER BY " READY ", id LIMIT 1")   \
        X(DL_INSERT, "INSERT INTO dead_letters (kind, source, reason, received_ms, raw)"           \
                     " VALUES ('event', $1, $2, $3, $4)")                                          \
        X(DL_LIST, "SELECT id, source, reason, received_ms, raw FROM dead_letters WHERE id > $1"   \
                   " ORDER BY id LIMIT $2")                                                        \
        X(DL_COUNT, "SELECT count(*) FROM dead_letters")                                           \
        X(DL_ROW, "SELECT kind, source, raw, hook, account, conversation, webhook_id,"             \
                  " clear_namespaces FROM dead_letters WHERE id = $1 FOR UPDATE")                  \
        X(DL_DEL, "DELETE FROM dead_letters WHERE id = $1")

#define STMT_ENUM(id, sql) ST_##id,
enum stmt_id { STATEMENTS(STMT_ENUM) ST__MAX };
#undef STMT_ENUM

#define STMT_SQL(id, sql) [ST_##id] = sql,
static const char *const stmt_sql[ST__MAX] = {STATEMENTS(STMT_SQL)};
#undef STMT_SQL

/* Internal codes besides store.h's: -EAGAIN, the transaction met a concurrent one and may be run
 * again; -ENOTCONN, the connection broke. Neither leaves this file. */

struct pg_store;

struct conn {
        struct pg_store *owner;
        PGconn *pg; /* NULL: not connected */
        bool prepared[ST__MAX];
        unsigned round_trips; /* statements that reached the server in this attempt */
        struct conn *next_free;
};

struct pg_store {
        char *url;
        char what[1100]; /* "postgresql <redacted url>", for messages */
        int lock_timeout_ms;

        pthread_mutex_t pool_mu;
        pthread_cond_t pool_cv;
        struct conn *free_list;
        unsigned n_free;

        /* Whether the database is reachable, as last seen. */
        pthread_mutex_t state_mu;
        bool down;
        bool connecting;
        int64_t next_try_ms; /* monotonic; while down, no attempt before this */
        char why[512];

        unsigned n_conns;
        struct conn conns[];
};

/* Writes a reason for messages: formatted, then folded onto one line (libpq's span several,
 * with tabs), so that /readyz, STATUS= and the log can show it as it is. Every reason this
 * file hands out (store_health, store_open, store_probe, store_url_check) is made here. */
static void __attribute__((format(printf, 3, 4))) say(char *why, size_t size, const char *fmt, ...)
{
        size_t n = 0;
        va_list ap;

        if (!why || size == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(why, size, fmt, ap);
        va_end(ap);
        for (const char *p = why; *p; p++) {
                bool blank = *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r';

                if (!blank || (n > 0 && why[n - 1] != ' '))
                        why[n++] = blank ? ' ' : *p;
        }
        while (n > 0 && why[n - 1] == ' ')
                n--;
        why[n] = '\0';
}

/* ---- Connection strings ---- */

int store_url_check(const char *url, char *why, size_t why_size)
{
        char *msg = NULL;
        PQconninfoOption *o = PQconninfoParse(url, &msg);

        if (!o) {
                say(why, why_size, "%s", msg ? msg : "out of memory");
                PQfreemem(msg);
                return -EINVAL;
        }
        PQconninfoFree(o);
        return 0;
}

/* Appends url[from..to) to out (capacity size, *len used so far). */
static void put(char *out, size_t size, size_t *len, const char *p, size_t n)
{
        if (*len + n >= size)
                n = size - 1 - *len;
        memcpy(out + *len, p, n);
        *len += n;
        out[*len] = '\0';
}

/* Masks the value of every key=value pair named password (key=value form: the value may be
 * quoted; URI query: up to & or the end). */
static void redact_pairs(const char *url, bool uri, char *out, size_t size, size_t *len)
{
        const char *p = url;

        while (*p) {
                const char *key = p;
                bool is_password;

                /* Skip to the start of a key: the string start, after a blank, & or ?. */
                if (p != url &&
                    !(uri ? (p[-1] == '&' || p[-1] == '?') : (p[-1] == ' ' || p[-1] == '\t'))) {
                        put(out, size, len, p, 1);
                        p++;
                        continue;
                }
                is_password = strncmp(key, "password", 8) == 0 &&
                              (key[8] == '=' || (!uri && (key[8] == ' ' || key[8] == '\t')));
                if (!is_password) {
                        put(out, size, len, p, 1);
                        p++;
                        continue;
                }
                p = key + 8;
                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p != '=') {
                        put(out, size, len, key, (size_t)(p - key));
                        continue;
                }
                p++;
                put(out, size, len, "password=********", 17);
                if (uri) {
                        p += strcspn(p, "&");
                } else {
                        while (*p == ' ' || *p == '\t')
                                p++;
                        if (*p == '\'') {
                                for (p++; *p && *p != '\''; p++)
                                        if (*p == '\\' && p[1])
                                                p++;
                                if (*p)
                                        p++;
                        } else {
                                p += strcspn(p, " \t");
                        }
                }
        }
}

void store_url_redact(const char *url, char *out, size_t size)
{
        size_t len = 0;
        const char *rest = url;

        if (size == 0)
                return;
        out[0] = '\0';
        if (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0) {
                const char *auth = strstr(url, "://") + 3;
                size_t auth_len = strcspn(auth, "/?");
                const char *at = NULL, *colon;

                for (const char *q = auth; q < auth + auth_len; q++)
                        if (*q == '@')
                                at = q;
                colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
                if (colon) {
                        put(out, size, &len, url, (size_t)(colon + 1 - url));
                        put(out, size, &len, "********", 8);
                        rest = at;
                }
                put(out, size, &len, rest, strcspn(rest, "?"));
                rest += strcspn(rest, "?");
                redact_pairs(rest, true, out, size, &len);
                return;
        }
        redact_pairs(url, false, out, size, &len);
}

/* ---- Values ---- */

/* A fresh 64-bit ETag: random, so a recreated thing never gets back a tag a client holds. */
static int new_tag(int64_t *ret)
{
        uint64_t tag;

        if (RAND_bytes((unsigned char *)&tag, sizeof(tag)) != 1)
                return -EIO;
        *ret = (int64_t)tag;
        return 0;
}

static void tag_out(int64_t tag, char ret_etag[STORE_ETAG_MAX])
{
        if (ret_etag)
                store_etag_format((uint64_t)tag, ret_etag);
}

static bool tag_matches(const char *if_match, int64_t tag)
{
        char etag[STORE_ETAG_MAX];

        store_etag_format((uint64_t)tag, etag);
        return store_etag_matches(if_match, etag);
}

/* The advisory lock key of a session ('s') or an outbox queue ('o'): 64-bit FNV-1a of the
 * names. Two things that share a key merely wait for each other. */
static int64_t lock_key(char domain, const char *a, const char *b, const char *c)
{
        const char *parts[] = {a, b, c};
        uint64_t h = 14695981039346656037ULL;

        h = (h ^ (unsigned char)domain) * 1099511628211ULL;
        for (size_t i = 0; i < ELEMENTSOF(parts); i++) {
                for (const unsigned char *p = (const unsigned char *)parts[i]; *p; p++)
                        h = (h ^ *p) * 1099511628211ULL;
                h *= 1099511628211ULL; /* the separator */
        }
        return (int64_t)h;
}

static int64_t col_i64(const PGresult *res, int row, int col)
{
        return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* A malloc'ed, NUL-terminated copy of a column (bytea columns decoded from the hex output
 * format, which every connection sets); *ret NULL for SQL NULL. */
static int col_dup(const PGresult *res, int row, int col, bool bytea, char **ret, size_t *ret_len)
{
        const char *v = PQgetvalue(res, row, col);
        size_t len = (size_t)PQgetlength(res, row, col), n;
        char *copy;

        if (PQgetisnull(res, row, col)) {
                *ret = NULL;
                if (ret_len)
                        *ret_len = 0;
                return 0;
        }
        if (!bytea) {
                copy = malloc(len + 1);
                if (!copy)
                        return -ENOMEM;
                memcpy(copy, v, len + 1);
                *ret = copy;
                if (ret_len)
                        *ret_len = len;
                return 0;
        }
        if (len < 2 || v[0] != '\\' || v[1] != 'x' || len % 2 != 0)
                return -EIO;
        n = (len - 2) / 2;
        copy = malloc(n + 1);
        if (!copy)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                int hi = OPENSSL_hexchar2int((unsigned char)v[2 + 2 * i]);
                int lo = OPENSSL_hexchar2int((unsigned char)v[3 + 2 * i]);

                if (hi < 0 || lo < 0) {
                        free(copy);
                        return -EIO;
                }
                copy[i] = (char)(hi << 4 | lo);
        }
        copy[n] = '\0';
        *ret = copy;
        if (ret_len)
                *ret_len = n;
        return 0;
}

static void copy_col(const PGresult *res, int row, int col, char *out, size_t size)
{
        snprintf(out, size, "%s", PQgetvalue(res, row, col));
}

static void resultp(PGresult **res)
{
        PQclear(*res);
}
#define _cleanup_result_ _cleanup_(resultp)

static int decode_value(const char *text, size_t len, json_t **ret)
{
        json_t *v = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);

        if (!v)
                return -EIO; /* only what this file wrote is stored: corrupted */
        *ret = v;
        return 0;
}

/* ---- Reachability ---- */

static void note_down(struct pg_store *ps, const char *why)
{
        pthread_mutex_lock(&ps->state_mu);
        ps->down = true;
        ps->next_try_ms = clock_mono_ms() + RECONNECT_EVERY_MS;
        say(ps->why, sizeof(ps->why), "%s", why && *why ? why : "connection lost");
        pthread_mutex_unlock(&ps->state_mu);
}

static void note_up(struct pg_store *ps)
{
        pthread_mutex_lock(&ps->state_mu);
        ps->down = false;
        ps->why[0] = '\0';
        pthread_mutex_unlock(&ps->state_mu);
}

static void why_copy(struct pg_store *ps, char *why, size_t why_size)
{
        if (!why || why_size == 0)
                return;
        pthread_mutex_lock(&ps->state_mu);
        say(why, why_size, "%s", ps->why[0] ? ps->why : "unknown failure");
        pthread_mutex_unlock(&ps->state_mu);
}

/* ---- Connections ---- */

static void conn_drop(struct conn *c)
{
        PQfinish(c->pg);
        c->pg = NULL;
        memset(c->prepared, 0, sizeof(c->prepared));
}

static void notice_ignore(void *arg, const char *message)
{
        (void)arg;
        (void)message;
}

/* Opens a connection to url: libpq's keepalives and time-outs first, so a server that vanishes
 * without closing the connection is noticed in seconds, then the user's URL, whose own settings
 * win. *ret_pg is set even on failure (for PQerrorMessage); the caller finishes it. */
static PGconn *pg_connect(const char *url, int lock_timeout_ms, char *why, size_t why_size)
{
        static const char *const keys[] = {
            "connect_timeout",  "keepalives",
            "keepalives_idle",  "keepalives_interval",
            "keepalives_count", "tcp_user_timeout",
            "application_name", "client_encoding",
            "dbname",           NULL,
        };
        const char *values[ELEMENTSOF(keys)] = {
            "5", "1", "10", "5", "3", "20000", "ctxhookd", "UTF8", url, NULL,
        };
        char setup[256];
        const char *enc;
        PGresult *res;
        PGconn *pg;

        pg = PQconnectdbParams(keys, values, 1);
        if (!pg) {
                say(why, why_size, "out of memory");
                return NULL;
        }
        /* Notices ("relation … already exists, skipping") are not for the daemon's output. */
        PQsetNoticeProcessor(pg, notice_ignore, NULL);
        if (PQstatus(pg) != CONNECTION_OK) {
                say(why, why_size, "%s", PQerrorMessage(pg));
                PQfinish(pg);
                return NULL;
        }
        enc = PQparameterStatus(pg, "server_encoding");
        if (!enc || (strcmp(enc, "UTF8") != 0 && strcmp(enc, "SQL_ASCII") != 0)) {
                say(why, why_size,
                    "the database's encoding is %s; ctxhookd needs UTF8 "
                    "(CREATE DATABASE … ENCODING 'UTF8')",
                    enc ? enc : "unknown");
                PQfinish(pg);
                return NULL;
        }
        /* lock_timeout is the busy time-out: how long a writer waits for another's lock. 0
         * would mean "forever" to PostgreSQL, so the shortest wait stands in for SQLite's 0.
         * statement_timeout bounds anything else that hangs (the watchdog would kill us). */
        snprintf(setup, sizeof(setup),
                 "SET lock_timeout = %d; SET statement_timeout = 60000;"
                 " SET bytea_output = 'hex'; SET idle_in_transaction_session_timeout = 60000",
                 lock_timeout_ms > 0 ? lock_timeout_ms : 1);
        res = PQexec(pg, setup);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                say(why, why_size, "setting up the session: %s", PQerrorMessage(pg));
                PQclear(res);
                PQfinish(pg);
                return NULL;
        }
        PQclear(res);
        return pg;
}

/* Makes sure c is connected. While the database is known to be down and no attempt is due, or
 * another thread is attempting, fails at once: callers get their 503 without waiting. */
static int conn_ready(struct conn *c)
{
        struct pg_store *ps = c->owner;
        char why[512];
        PGconn *pg;

        if (c->pg)
                return 0;
        pthread_mutex_lock(&ps->state_mu);
        if (ps->down && (ps->connecting || clock_mono_ms() < ps->next_try_ms)) {
                pthread_mutex_unlock(&ps->state_mu);
                return -EIO;
        }
        ps->connecting = ps->down;
        pthread_mutex_unlock(&ps->state_mu);

        pg = pg_connect(ps->url, ps->lock_timeout_ms, why, sizeof(why));

        pthread_mutex_lock(&ps->state_mu);
        ps->connecting = false;
        pthread_mutex_unlock(&ps->state_mu);
        if (!pg) {
                note_down(ps, why);
                return -EIO;
        }
        note_up(ps);
        c->pg = pg;
        return 0;
}

static struct conn *conn_get(struct pg_store *ps)
{
        struct conn *c;

        pthread_mutex_lock(&ps->pool_mu);
        while (!ps->free_list)
                pthread_cond_wait(&ps->pool_cv, &ps->pool_mu);
        c = ps->free_list;
        ps->free_list = c->next_free;
        ps->n_free--;
        pthread_mutex_unlock(&ps->pool_mu);
        return c;
}

static void conn_put(struct conn *c)
{
        struct pg_store *ps = c->owner;

        pthread_mutex_lock(&ps->pool_mu);
        c->next_free = ps->free_list;
        ps->free_list = c;
        ps->n_free++;
        pthread_cond_broadcast(&ps->pool_cv);
        pthread_mutex_unlock(&ps->pool_mu);
}

static void conn_putp(struct conn **c)
{
        if (*c)
                conn_put(*c);
}
#define _cleanup_conn_ _cleanup_(conn_putp)

/* ---- Statements ---- */

/* Rows a statement changed. */
static int64_t changes(const PGresult *res)
{
        return strtoll(PQcmdTuples((PGresult *)res), NULL, 10);
}

/* Maps a failed result (or its absence) to a code, dropping a broken connection. */
static int failure(struct conn *c, const PGresult *res)
{
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

        if (PQstatus(c->pg) == CONNECTION_BAD || (state && strncmp(state, "57P0", 4) == 0) ||
            (state && strncmp(state, "08", 2) == 0)) {
                note_down(c->owner, PQerrorMessage(c->pg));
                conn_drop(c);
                return -ENOTCONN;
        }
        if (!res)
                return -ENOMEM;
        if (!state)
                return -EIO;
        /* serialization_failure, deadlock_detected; a unique or foreign key violation can only
         * come from a race with another transaction (a namespace deleted meanwhile). */
        if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
            strcmp(state, "23505") == 0 || strcmp(state, "23503") == 0)
                return -EAGAIN;
        if (strncmp(state, "22", 2) == 0 || strcmp(state, "54000") == 0)
                return -EINVAL; /* data exception, program limit: what we were given */
        return -EIO;
}

static int simple(struct conn *c, const char *sql)
{
        _cleanup_result_ PGresult *res = PQexec(c->pg, sql);

        if (PQresultStatus(res) != PGRES_COMMAND_OK)
                return failure(c, res);
        c->round_trips++;
        return 0;
}

/* A statement's parameters, typed by a string: 't' NUL-terminated text, 'T' text and a size_t
 * length, 'b' bytes and a size_t length (bytea), 'i' int64_t, 'n' NULL, 'I' an array of int64_t
 * and its size_t length (bigint[]). Texts and bytes are sent in binary format, so they need no
 * terminator and no escaping; they must outlive the call. */
struct params {
        int n;
        const char *values[PARAMS_MAX];
        int lengths[PARAMS_MAX], formats[PARAMS_MAX];
        char numbers[PARAMS_MAX][24];
        char *array; /* the text of an 'I' parameter */
};

static void params_clear(struct params *p)
{
        free(p->array);
        p->array = NULL;
}

static int params_build(struct params *p, const char *types, va_list ap)
{
        for (p->n = 0; types[p->n] && p->n < PARAMS_MAX; p->n++) {
                int n = p->n;
                const char *v;
                size_t len;

                p->formats[n] = 1;
                p->lengths[n] = 0;
                switch (types[n]) {
                case 't':
                        p->values[n] = va_arg(ap, const char *);
                        p->lengths[n] = (int)strlen(p->values[n]);
                        break;
                case 'T':
                case 'b':
                        v = va_arg(ap, const char *);
                        len = va_arg(ap, size_t);
                        p->values[n] = v ? v : "";
                        p->lengths[n] = (int)len;
                        break;
                case 'i':
                        snprintf(p->numbers[n], sizeof(p->numbers[n]), "%" PRId64,
                                 va_arg(ap, int64_t));
                        p->values[n] = p->numbers[n];
                        p->formats[n] = 0;
                        break;
                case 'I': {
                        const int64_t *keys = va_arg(ap, const int64_t *);
                        size_t count = va_arg(ap, size_t), used = 1;

                        free(p->array);
                        p->array = malloc(count * 21 + 3);
                        if (!p->array)
                                return -ENOMEM;
                        p->array[0] = '{';
                        for (size_t i = 0; i < count; i++)
                                used += (size_t)sprintf(p->array + used, "%s%" PRId64, i ? "," : "",
                                                        keys[i]);
                        p->array[used++] = '}';
                        p->array[used] = '\0';
                        p->values[n] = p->array;
                        p->formats[n] = 0;
                        break;
                }
                default: /* 'n' */
                        p->values[n] = NULL;
                        p->formats[n] = 0;
                }
        }
        return 0;
}

static void stmt_name(enum stmt_id id, char name[16])
{
        snprintf(name, 16, "s%d", (int)id);
}

/* Prepares statement id on c's connection unless it was. */
static int prepare(struct conn *c, enum stmt_id id)
{
        char name[16];
        PGresult *res;
        int rc = 0;

        if (!c->pg)
                return -ENOTCONN;
        if (c->prepared[id])
                return 0;
        stmt_name(id, name);
        res = PQprepare(c->pg, name, stmt_sql[id], 0, NULL);
        if (PQresultStatus(res) == PGRES_COMMAND_OK)
                c->prepared[id] = true;
        else
                rc = failure(c, res);
        PQclear(res);
        return rc;
}

/* Runs statement id with parameters typed by `types` (struct params). *ret (may be NULL) gets
 * the result on success. */
static int q(struct conn *c, enum stmt_id id, PGresult **ret, const char *types, ...)
{
        struct params p = {0};
        ExecStatusType status;
        char name[16];
        PGresult *res;
        va_list ap;
        int rc;

        rc = prepare(c, id);
        if (rc < 0)
                return rc;
        va_start(ap, types);
        rc = params_build(&p, types, ap);
        va_end(ap);
        if (rc < 0) {
                params_clear(&p);
                return rc;
        }
        stmt_name(id, name);
        res = PQexecPrepared(c->pg, name, p.n, p.values, p.lengths, p.formats, 0);
        params_clear(&p);
        status = PQresultStatus(res);
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
                rc = failure(c, res);
                PQclear(res);
                return rc;
        }
        c->round_trips++;
        if (ret)
                *ret = res;
        else
                PQclear(res);
        return 0;
}

/* ---- Pipelines: many statements in one round trip ----
 *
 * pipe_send queues statements (prepared beforehand with prepare(), which a pipeline cannot
 * do); pipe_end sends them, reads one outcome per statement in order and leaves pipeline mode.
 * The server runs them one after the other in the open transaction, each seeing the ones
 * before, so a pipeline means what the same statements sent one by one mean; after the first
 * failure the rest are skipped. */

static int pipe_begin(struct conn *c)
{
        if (!c->pg)
                return -ENOTCONN;
        if (PQenterPipelineMode(c->pg) == 1)
                return 0;
        conn_drop(c); /* not idle: something was left unread */
        return -EIO;
}

static int pipe_send(struct conn *c, enum stmt_id id, const char *types, ...)
{
        struct params p = {0};
        char name[16];
        va_list ap;
        int rc;

        va_start(ap, types);
        rc = params_build(&p, types, ap);
        va_end(ap);
        stmt_name(id, name);
        if (rc >= 0 &&
            PQsendQueryPrepared(c->pg, name, p.n, p.values, p.lengths, p.formats, 0) != 1)
                rc = -EIO;
        params_clear(&p);
        return rc;
}

/* Collects the outcomes of the n statements sent: ret_changes[i] (may be NULL) gets the rows
 * statement i changed. Returns the first failure. */
static int pipe_end(struct conn *c, size_t n, int64_t *ret_changes)
{
        int rc = 0;

        if (PQpipelineSync(c->pg) != 1)
                return failure(c, NULL);
        for (size_t i = 0; i < n; i++) {
                PGresult *res = PQgetResult(c->pg);
                ExecStatusType status = PQresultStatus(res);

                if (!res) {
                        rc = failure(c, NULL); /* the connection broke */
                        return rc < 0 ? rc : -EIO;
                }
                if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
                        if (ret_changes)
                                ret_changes[i] = changes(res);
                } else if (status != PGRES_PIPELINE_ABORTED && rc == 0) {
                        rc = failure(c, res);
                        if (rc == -ENOTCONN) {
                                PQclear(res);
                                return rc;
                        }
                }
                PQclear(res);
                res = PQgetResult(c->pg); /* the NULL that ends statement i */
                PQclear(res);
        }
        for (;;) {
                PGresult *res = PQgetResult(c->pg);
                ExecStatusType status = PQresultStatus(res);

                PQclear(res);
                if (!res || status == PGRES_PIPELINE_SYNC)
                        break;
        }
        if (PQexitPipelineMode(c->pg) != 1) {
                /* Results left unread: a connection in this state is of no further use. */
                conn_drop(c);
                return rc < 0 ? rc : -EIO;
        }
        c->round_trips++;
        return rc;
}

/* A statement that returns no rows and whose result is not needed. */
#define RUN(c, id, ...) q(c, id, NULL, __VA_ARGS__)

/* ---- Transactions ---- */

enum tx_mode {
        TX_NONE,  /* one statement in its own implicit transaction */
        TX_READ,  /* several reads on one snapshot */
        TX_WRITE, /* a write transaction */
};

static int tx_begin(struct conn *c, enum tx_mode mode)
{
        int rc;

        c->round_trips = 0;
        rc = conn_ready(c);
        if (rc < 0 || mode == TX_NONE)
                return rc;
        return simple(c, mode == TX_READ ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
                                         : "BEGIN");
}

/* Commits when rc ≥ 0, else rolls back; returns the outcome. */
static int tx_end(struct conn *c, enum tx_mode mode, int rc)
{
        if (mode == TX_NONE || !c->pg)
                return rc;
        if (rc >= 0) {
                int r = simple(c, "COMMIT");
                if (r < 0)
                        rc = r;
        }
        if (rc < 0 && c->pg)
                (void)simple(c, "ROLLBACK");
        return rc;
}

/* Whether to run the transaction again after outcome *rc of attempt `tries` (0-based): after a
 * conflict with a concurrent transaction, and once after a connection that broke before
 * anything reached the server (a pooled connection the server closed while it was idle: the
 * next attempt opens a fresh one). Otherwise maps the internal codes to -EIO. */
static bool again(struct conn *c, int *rc, int tries)
{
        if (*rc == -EAGAIN && tries + 1 < TX_TRIES)
                return true;
        if (*rc == -ENOTCONN && c->round_trips == 0 && tries == 0) {
                pthread_mutex_lock(&c->owner->state_mu);
                c->owner->next_try_ms = 0; /* one immediate attempt */
                pthread_mutex_unlock(&c->owner->state_mu);
                return true;
        }
        if (*rc == -EAGAIN || *rc == -ENOTCONN)
                *rc = -EIO;
        return false;
}

/* Runs `body` (an expression giving 0 or a negative code) as one transaction of `mode` on c,
 * as often as again() says; rc gets the outcome. */
#define IN_TX(c, mode, rc, body)                                                                   \
        for (int tries_ = 0;; tries_++) {                                                          \
                rc = tx_begin(c, mode);                                                            \
                if (rc >= 0)                                                                       \
                        rc = tx_end(c, mode, (body));                                              \
                if (!again(c, &rc, tries_))                                                        \
                        break;                                                                     \
        }

/* ---- Shared steps ---- */

static int lock(struct conn *c, int64_t key)
{
        return RUN(c, ST_LOCK, "i", key);
}

static int session_lock(struct conn *c, const char *account, const char *ns, const char *sid)
{
        return lock(c, lock_key('s', account, ns, sid));
}

static int ns_ensure(struct conn *c, const char *account, const char *ns, int64_t now_ms)
{
        return RUN(c, ST_NS_ENSURE, "tti", account, ns, now_ms);
}

struct session_row {
        bool exists; /* and is live */
        int64_t etag;
        int64_t ttl_s; /* effective */
};

/* Looks the session up. An expired one counts as missing; with purge (inside a write
 * transaction holding the session's lock) it is also deleted, so a write starts it afresh. */
static int session_load(struct conn *c, const char *account, const char *ns, const char *sid,
                        int64_t now_ms, bool purge, struct session_row *ret)
{
        _cleanup_result_ PGresult *res = NULL;
        struct session_row row = {0};
        int rc;

        rc = q(c, ST_SESS_GET, &res, "ttt", account, ns, sid);
        if (rc < 0)
                return rc;
        if (PQntuples(res) > 0) {
                row.etag = col_i64(res, 0, 0);
                row.ttl_s = col_i64(res, 0, 2);
                row.exists = store_is_live(col_i64(res, 0, 1), row.ttl_s, now_ms);
                if (!row.exists && purge) {
                        rc = RUN(c, ST_SESS_DEL, "ttt", account, ns, sid);
                        if (rc < 0)
                                return rc;
                }
        }
        *ret = row;
        return 0;
}

/* Records a write to the session: creates it or moves its updated_at and ETag on. */
static int session_written(struct conn *c, const char *account, const char *ns, const char *sid,
                           const struct session_row *row, int64_t tag, int64_t now_ms)
{
        if (row->exists)
                return RUN(c, ST_SESS_TOUCH, "tttii", account, ns, sid, now_ms, tag);
        return RUN(c, ST_SESS_INSERT, "tttini", account, ns, sid, now_ms, tag);
}

struct prop_row {
        bool exists; /* and is live */
        int64_t etag;
};

static int prop_load(struct conn *c, const char *account, const char *ns, const char *sid,
                     const char *name, const struct session_row *sess, int64_t now_ms,
                     struct prop_row *ret)
{
        _cleanup_result_ PGresult *res = NULL;
        struct prop_row row = {0};
        int rc;

        if (sess->exists) {
                rc = q(c, ST_PROP_ROW, &res, "tttt", account, ns, sid, name);
                if (rc < 0)
                        return rc;
                if (PQntuples(res) > 0) {
                        row.etag = col_i64(res, 0, 1);
                        row.exists = store_is_live(col_i64(res, 0, 2), sess->ttl_s, now_ms);
                }
        }
        *ret = row;
        return 0;
}

static int prop_upsert(struct conn *c, const char *account, const char *ns, const char *sid,
                       const char *name, size_t name_len, const json_t *value, int64_t tag,
                       int64_t now_ms)
{
        _cleanup_free_ char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);

        if (!text)
                return -EINVAL; /* not encodable, or out of memory */
        return RUN(c, ST_PROP_UPSERT, "tttTtii", account, ns, sid, name, name_len, text, now_ms,
                   tag);
}

/* ---- Open, migrate, close ---- */

/* Reads the schema version; 0 when the version table does not exist yet. */
static int read_version(PGconn *pg, int *ret, char *why, size_t why_size)
{
        _cleanup_result_ PGresult *res = PQexec(pg, "SELECT version FROM ctxhookd_schema");
        const char *state;

        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
                *ret = PQntuples(res) > 0 ? atoi(PQgetvalue(res, 0, 0)) : 0;
                return 0;
        }
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, "42P01") == 0) { /* undefined_table */
                *ret = 0;
                return 0;
        }
        say(why, why_size, "%s", PQerrorMessage(pg));
        return -EIO;
}

static int exec_or_say(PGconn *pg, const char *sql, const char *what, char *why, size_t why_size)
{
        _cleanup_result_ PGresult *res = PQexec(pg, sql);
        ExecStatusType status = PQresultStatus(res);

        if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK)
                return 0;
        say(why, why_size, "%s: %s", what, PQerrorMessage(pg));
        return -EIO;
}

/* Brings the schema to SCHEMA_VERSION in one transaction under an advisory lock: an instance
 * starting at the same time waits, then finds the work done. */
static int migrate(PGconn *pg, char *why, size_t why_size)
{
        char sql[128];
        int rc, version = 0;

        rc = exec_or_say(pg, "BEGIN", "starting the migration", why, why_size);
        if (rc < 0)
                return rc;
        /* The busy time-out is for requests; a start waits for another instance's migration
         * (or a migration takes) as long as it must, within reason. */
        rc = exec_or_say(pg, "SET LOCAL lock_timeout = '300s'; SET LOCAL statement_timeout = 0",
                         "setting the migration's time-outs", why, why_size);
        if (rc >= 0)
                rc = exec_or_say(pg, "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK ")",
                                 "waiting for another instance's migration", why, why_size);
        if (rc >= 0)
                rc = exec_or_say(
                    pg, "CREATE TABLE IF NOT EXISTS ctxhookd_schema (version integer NOT NULL)",
                    "creating the schema version table", why, why_size);
        if (rc >= 0)
                rc = read_version(pg, &version, why, why_size);
        if (rc >= 0 && version > SCHEMA_VERSION) {
                say(why, why_size,
                    "the schema is at version %d, newer than this ctxhookd knows (%d)", version,
                    SCHEMA_VERSION);
                rc = -EPROTO;
        }
        if (rc >= 0 && version == 0) {
                /* A fresh schema, or the table just created: one row. */
                rc = exec_or_say(pg,
                                 "INSERT INTO ctxhookd_schema (version) SELECT 0 WHERE NOT EXISTS"
                                 " (SELECT 1 FROM ctxhookd_schema)",
                                 "recording the schema version", why, why_size);
        }
        for (int v = version; rc >= 0 && v < SCHEMA_VERSION; v++) {
                char what[64];

                snprintf(what, sizeof(what), "migrating the schema to version %d", v + 1);
                rc = exec_or_say(pg, migrations[v], what, why, why_size);
                snprintf(sql, sizeof(sql), "UPDATE ctxhookd_schema SET version = %d", v + 1);
                if (rc >= 0)
                        rc = exec_or_say(pg, sql, what, why, why_size);
        }
        if (rc >= 0)
                return exec_or_say(pg, "COMMIT", "committing the migration", why, why_size);
        PQclear(PQexec(pg, "ROLLBACK"));
        return rc;
}

static void pg_close(void *impl)
{
        struct pg_store *ps = impl;

        if (!ps)
                return;
        pthread_mutex_lock(&ps->pool_mu);
        while (ps->n_free < ps->n_conns)
                pthread_cond_wait(&ps->pool_cv, &ps->pool_mu);
        pthread_mutex_unlock(&ps->pool_mu);
        for (unsigned i = 0; i < ps->n_conns; i++)
                conn_drop(&ps->conns[i]);
        pthread_mutex_destroy(&ps->pool_mu);
        pthread_cond_destroy(&ps->pool_cv);
        pthread_mutex_destroy(&ps->state_mu);
        free(ps->url);
        free(ps);
}

static int pg_open(const struct store_options *opts, void **ret_impl, struct ch_error *err)
{
        struct pg_store *ps;
        char why[512];
        int rc;

        ps = calloc(1, sizeof(*ps) + opts->pool_size * sizeof(struct conn));
        if (!ps || !(ps->url = strdup(opts->url))) {
                free(ps);
                ch_error_set(err, "store: out of memory");
                return -ENOMEM;
        }
        store_describe(opts, ps->what, sizeof(ps->what));
        ps->lock_timeout_ms = opts->busy_timeout_ms;
        pthread_mutex_init(&ps->pool_mu, NULL);
        pthread_cond_init(&ps->pool_cv, NULL);
        pthread_mutex_init(&ps->state_mu, NULL);
        ps->n_conns = opts->pool_size;
        for (unsigned i = ps->n_conns; i-- > 0;) {
                struct conn *c = &ps->conns[i];

                c->owner = ps;
                c->next_free = ps->free_list;
                ps->free_list = c;
                ps->n_free++;
        }
        /* The first connection is opened now and migrates; the others when first needed. */
        ps->conns[0].pg = pg_connect(ps->url, ps->lock_timeout_ms, why, sizeof(why));
        if (!ps->conns[0].pg) {
                ch_error_set(err, "cannot connect to store %s: %s", ps->what, why);
                pg_close(ps);
                return -EIO;
        }
        rc = migrate(ps->conns[0].pg, why, sizeof(why));
        if (rc < 0) {
                ch_error_set(err, "store %s: %s", ps->what, why);
                pg_close(ps);
                return rc;
        }
        *ret_impl = ps;
        return 0;
}

static int pg_probe(const struct store_options *opts, int *ret_version, struct ch_error *err)
{
        char what[1100], why[512];
        PGconn *pg;
        int rc, version = 0;

        store_describe(opts, what, sizeof(what));
        pg = pg_connect(opts->url, opts->busy_timeout_ms, why, sizeof(why));
        if (!pg) {
                ch_error_set(err, "cannot connect to store %s: %s", what, why);
                return -EIO;
        }
        rc = read_version(pg, &version, why, sizeof(why));
        PQfinish(pg);
        if (rc < 0) {
                ch_error_set(err, "store %s: cannot read the schema version: %s", what, why);
                return rc;
        }
        if (version > SCHEMA_VERSION) {
                ch_error_set(err,
                             "store %s: schema version %d is newer than this ctxhookd knows (%d)",
                             what, version, SCHEMA_VERSION);
                return -EPROTO;
        }
        *ret_version = version;
        return 0;
}

/* Takes a pooled connection for one operation (returned by _cleanup_conn_). */
#define CONN(impl) _cleanup_conn_ struct conn *c = conn_get(impl)

static int pg_ping(void *impl, char *why, size_t why_size)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_NONE, rc, RUN(c, ST_PING, ""));
        if (rc < 0)
                why_copy(impl, why, why_size);
        return rc;
}

static int pg_schema_version(void *impl, int *ret_version)
{
        CONN(impl);
        _cleanup_result_ PGresult *res = NULL;
        int rc;

        IN_TX(c, TX_NONE, rc, (PQclear(res), res = NULL, q(c, ST_VERSION, &res, "")));
        if (rc < 0)
                return rc;
        if (PQntuples(res) < 1)
                return -EIO;
        *ret_version = (int)col_i64(res, 0, 0);
        return 0;
}

/* ---- API keys ---- */

static int pg_key_set(void *impl, const char *account, const unsigned char hash[STORE_KEY_HASH_LEN],
                      int64_t now_ms)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc,
              RUN(c, ST_KEY_SET, "tbi", account, (const char *)hash, (size_t)STORE_KEY_HASH_LEN,
                  now_ms));
        return rc;
}

static int pg_key_get(void *impl, const char *account, unsigned char ret_hash[STORE_KEY_HASH_LEN])
{
        CONN(impl);
        _cleanup_result_ PGresult *res = NULL;
        _cleanup_free_ char *hash = NULL;
        size_t len = 0;
        int rc;

        IN_TX(c, TX_NONE, rc, (PQclear(res), res = NULL, q(c, ST_KEY_GET, &res, "t", account)));
        if (rc < 0)
                return rc;
        if (PQntuples(res) < 1)
                return -ENOENT;
        rc = col_dup(res, 0, 0, true, &hash, &len);
        if (rc < 0)
                return rc;
        if (!hash || len != STORE_KEY_HASH_LEN)
                return -EIO;
        memcpy(ret_hash, hash, STORE_KEY_HASH_LEN);
        return 0;
}

/* ---- Namespaces ---- */

static int ns_create_tx(struct conn *c, const char *account, const char *ns, int64_t ttl_s,
                        int64_t now_ms)
{
        if (ttl_s < 0)
                return ns_ensure(c, account, ns, now_ms);
        return RUN(c, ST_NS_SET_TTL, "ttii", account, ns, now_ms, ttl_s);
}

static int pg_ns_create(void *impl, const char *account, const char *ns, int64_t ttl_s,
                        int64_t now_ms)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc, ns_create_tx(c, account, ns, ttl_s, now_ms));
        return rc;
}

static int pg_ns_list(void *impl, const char *account, json_t **ret_array)
{
        CONN(impl);
        _cleanup_result_ PGresult *res = NULL;
        json_t *a;
        int rc;

        IN_TX(c, TX_NONE, rc, (PQclear(res), res = NULL, q(c, ST_NS_LIST, &res, "t", account)));
        if (rc < 0)
                return rc;
        a = json_array();
        if (!a)
                return -ENOMEM;
        for (int i = 0; i < PQntuples(res); i++) {
                /* A NULL TTL reads as 0: none. */
                json_t *o = store_ns_item(PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
                                          col_i64(res, i, 1), col_i64(res, i, 2));

                if (!o || json_array_append_new(a, o) < 0) {
                        json_decref(a);
                        return -ENOMEM;
                }
        }
        *ret_array = a;
        return 0;
}

static int pg_ns_delete(void *impl, const char *account, const char *ns)
{
        CONN(impl);
        int rc;

        /* Sessions and properties go with it (ON DELETE CASCADE). */
        IN_TX(c, TX_WRITE, rc, RUN(c, ST_NS_DEL, "tt", account, ns));
        return rc;
}

/* ---- Properties ---- */

/* Adds the live properties of a session (all, or those named in include) to obj. */
static int props_collect(struct conn *c, const char *account, const char *ns, const char *sid,
                         const struct session_row *sess, const char *const *include, int64_t now_ms,
                         json_t *obj)
{
        json_t *v;
        int rc;

        if (!sess->exists)
                return 0;
        if (include) {
                for (const char *const *name = include; *name; name++) {
                        _cleanup_result_ PGresult *res = NULL;

                        rc = q(c, ST_PROP_ROW, &res, "tttt", account, ns, sid, *name);
                        if (rc < 0)
                                return rc;
                        if (PQntuples(res) < 1 ||
                            !store_is_live(col_i64(res, 0, 2), sess->ttl_s, now_ms))
                                continue;
                        rc =
                            decode_value(PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0), &v);
                        if (rc < 0)
                                return rc;
                        if (json_object_set_new(obj, *name, v) < 0)
                                return -EIO;
                }
                return 0;
        }
        _cleanup_result_ PGresult *res = NULL;

        rc = q(c, ST_PROPS_ALL, &res, "tttii", account, ns, sid, sess->ttl_s, now_ms);
        if (rc < 0)
                return rc;
        for (int i = 0; i < PQntuples(res); i++) {
                rc = decode_value(PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1), &v);
                if (rc < 0)
                        return rc;
                if (json_object_setn_new(obj, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
                                         v) < 0)
                        return -EIO;
        }
        return 0;
}

static int props_get_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                        const char *const *include, int64_t now_ms, struct session_row *sess,
                        json_t **obj)
{
        int rc;

        json_decref(*obj);
        *obj = json_object();
        if (!*obj)
                return -ENOMEM;
        rc = session_load(c, account, ns, sid, now_ms, false, sess);
        if (rc < 0)
                return rc;
        return props_collect(c, account, ns, sid, sess, include, now_ms, *obj);
}

static int pg_props_get(void *impl, const char *account, const char *ns, const char *sid,
                        const char *const *include, int64_t now_ms, json_t **ret_object,
                        char ret_etag[STORE_ETAG_MAX])
{
        CONN(impl);
        struct session_row sess = {0};
        json_t *obj = NULL;
        int rc;

        IN_TX(c, TX_READ, rc, props_get_tx(c, account, ns, sid, include, now_ms, &sess, &obj));
        if (rc < 0) {
                json_decref(obj);
                return rc;
        }
        if (ret_etag) {
                if (sess.exists)
                        tag_out(sess.etag, ret_etag);
                else
                        ret_etag[0] = '\0';
        }
        *ret_object = obj;
        return 0;
}

/* The hot path (GET of one property): one statement, no transaction. */
static int pg_prop_get(void *impl, const char *account, const char *ns, const char *sid,
                       const char *name, int64_t now_ms, char **ret_json, size_t *ret_len,
                       char ret_etag[STORE_ETAG_MAX], int64_t *ret_expires_ms)
{
        CONN(impl);
        _cleanup_result_ PGresult *res = NULL;
        int64_t updated_ms, ttl_s;
        size_t len;
        char *copy;
        int rc;

        IN_TX(c, TX_NONE, rc,
              (PQclear(res), res = NULL, q(c, ST_PROP_GET, &res, "tttt", account, ns, sid, name)));
        if (rc < 0)
                return rc;
        if (PQntuples(res) < 1)
                return -ENOENT;
        updated_ms = col_i64(res, 0, 2);
        ttl_s = col_i64(res, 0, 3);
        if (!store_is_live(updated_ms, ttl_s, now_ms))
                return -ENOENT;
        len = (size_t)PQgetlength(res, 0, 0);
        copy = malloc(len + 1);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, PQgetvalue(res, 0, 0), len + 1);
        tag_out(col_i64(res, 0, 1), ret_etag);
        *ret_json = copy;
        if (ret_len)
                *ret_len = len;
        *ret_expires_ms = ttl_s > 0 ? updated_ms + ttl_s * 1000 : 0;
        return 0;
}

/* The start of every write to one session: its namespace exists, its lock is held, and it is
 * loaded (an expired one deleted). */
static int session_write_begin(struct conn *c, const char *account, const char *ns, const char *sid,
                               int64_t now_ms, bool create, struct session_row *sess)
{
        int rc;

        if (create) {
                rc = ns_ensure(c, account, ns, now_ms);
                if (rc < 0)
                        return rc;
        }
        rc = session_lock(c, account, ns, sid);
        if (rc < 0)
                return rc;
        return session_load(c, account, ns, sid, now_ms, true, sess);
}

static int props_merge_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                          const json_t *props, const char *if_match, int64_t now_ms,
                          int64_t *ret_tag)
{
        struct session_row sess;
        const char *key;
        size_t key_len;
        json_t *value;
        int64_t tag;
        int rc;

        rc = session_write_begin(c, account, ns, sid, now_ms, true, &sess);
        if (rc < 0)
                return rc;
        if (if_match && (!sess.exists || !tag_matches(if_match, sess.etag)))
                return -ECANCELED;
        rc = new_tag(&tag);
        if (rc >= 0)
                rc = session_written(c, account, ns, sid, &sess, tag, now_ms);
        if (rc < 0)
                return rc;
        json_object_keylen_foreach((json_t *)props, key, key_len, value)
        {
                if (key_len > STORE_NAME_MAX || strlen(key) != key_len)
                        return -EINVAL;
                rc = prop_upsert(c, account, ns, sid, key, key_len, value, tag, now_ms);
                if (rc < 0)
                        return rc;
        }
        *ret_tag = tag;
        return 0;
}

static int pg_props_merge(void *impl, const char *account, const char *ns, const char *sid,
                          const json_t *props, const char *if_match, int64_t now_ms,
                          char ret_etag[STORE_ETAG_MAX])
{
        CONN(impl);
        int64_t tag = 0;
        int rc;

        if (!json_is_object(props))
                return -EINVAL;
        IN_TX(c, TX_WRITE, rc, props_merge_tx(c, account, ns, sid, props, if_match, now_ms, &tag));
        if (rc < 0)
                return rc;
        tag_out(tag, ret_etag);
        return 0;
}

static int prop_put_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                       const char *name, const json_t *value, const char *if_match, int64_t now_ms,
                       int64_t *ret_tag)
{
        struct session_row sess;
        struct prop_row prop;
        int64_t tag;
        int rc;

        rc = session_write_begin(c, account, ns, sid, now_ms, true, &sess);
        if (rc < 0)
                return rc;
        if (if_match) {
                rc = prop_load(c, account, ns, sid, name, &sess, now_ms, &prop);
                if (rc < 0)
                        return rc;
                if (!prop.exists || !tag_matches(if_match, prop.etag))
                        return -ECANCELED;
        }
        rc = new_tag(&tag);
        if (rc >= 0)
                rc = session_written(c, account, ns, sid, &sess, tag, now_ms);
        if (rc >= 0)
                rc = prop_upsert(c, account, ns, sid, name, strlen(name), value, tag, now_ms);
        if (rc < 0)
                return rc;
        *ret_tag = tag;
        return 0;
}

static int pg_prop_put(void *impl, const char *account, const char *ns, const char *sid,
                       const char *name, const json_t *value, const char *if_match, int64_t now_ms,
                       char ret_etag[STORE_ETAG_MAX])
{
        CONN(impl);
        int64_t tag = 0;
        int rc;

        IN_TX(c, TX_WRITE, rc,
              prop_put_tx(c, account, ns, sid, name, value, if_match, now_ms, &tag));
        if (rc < 0)
                return rc;
        tag_out(tag, ret_etag);
        return 0;
}

static int prop_delete_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                          const char *name, const char *if_match, int64_t now_ms)
{
        struct session_row sess;
        struct prop_row prop;
        int64_t tag;
        int rc;

        rc = session_write_begin(c, account, ns, sid, now_ms, false, &sess);
        if (rc < 0)
                return rc;
        rc = prop_load(c, account, ns, sid, name, &sess, now_ms, &prop);
        if (rc < 0)
                return rc;
        if (if_match && (!prop.exists || !tag_matches(if_match, prop.etag)))
                return -ECANCELED;
        if (!sess.exists)
                return 0;
        rc = RUN(c, ST_PROP_DEL, "tttt", account, ns, sid, name);
        if (rc < 0)
                return rc;
        /* Removing an already expired property changes nothing anyone could see. */
        if (!prop.exists)
                return 0;
        rc = new_tag(&tag);
        if (rc < 0)
                return rc;
        return session_written(c, account, ns, sid, &sess, tag, now_ms);
}

static int pg_prop_delete(void *impl, const char *account, const char *ns, const char *sid,
                          const char *name, const char *if_match, int64_t now_ms)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc, prop_delete_tx(c, account, ns, sid, name, if_match, now_ms));
        return rc;
}

static int props_clear_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                          const char *if_match, int64_t now_ms)
{
        struct session_row sess;
        int64_t tag;
        int rc;

        rc = session_write_begin(c, account, ns, sid, now_ms, false, &sess);
        if (rc < 0)
                return rc;
        if (if_match && (!sess.exists || !tag_matches(if_match, sess.etag)))
                return -ECANCELED;
        if (!sess.exists)
                return 0;
        rc = RUN(c, ST_PROPS_DEL, "ttt", account, ns, sid);
        if (rc >= 0)
                rc = new_tag(&tag);
        if (rc < 0)
                return rc;
        return session_written(c, account, ns, sid, &sess, tag, now_ms);
}

static int pg_props_clear(void *impl, const char *account, const char *ns, const char *sid,
                          const char *if_match, int64_t now_ms)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc, props_clear_tx(c, account, ns, sid, if_match, now_ms));
        return rc;
}

/* ---- Sessions ---- */

enum page_shape { PAGE_IDS, PAGE_PROPS, PAGE_LIST };

/* Appends session `row` of res to out, in the requested shape. */
static int page_item(struct conn *c, const PGresult *res, int row, const char *account,
                     const char *ns, int64_t now_ms, enum page_shape shape, json_t *out)
{
        const char *sid = PQgetvalue(res, row, 0);
        size_t sid_len = (size_t)PQgetlength(res, row, 0);
        json_t *item;
        int rc;

        if (shape == PAGE_IDS) {
                item = json_stringn(sid, sid_len);
        } else if (shape == PAGE_LIST) {
                item = store_session_item(sid, sid_len, col_i64(res, row, 1), col_i64(res, row, 2));
        } else {
                struct session_row sess = {.exists = true, .ttl_s = col_i64(res, row, 2)};
                json_t *props = json_object();

                item =
                    props ? json_pack("{s:s%, s:o}", "sessionId", sid, sid_len, "properties", props)
                          : NULL;
                if (item) {
                        rc = props_collect(c, account, ns, sid, &sess, NULL, now_ms, props);
                        if (rc < 0) {
                                json_decref(item);
                                return rc;
                        }
                }
        }
        if (!item || json_array_append_new(out, item) < 0)
                return -ENOMEM;
        return 0;
}

/* The live sessions of a namespace, "__default__" first, then by id. limit -1: no limit. */
static int sessions_page(struct conn *c, const char *account, const char *ns, int64_t offset,
                         int64_t limit, int64_t now_ms, enum page_shape shape, json_t **out)
{
        _cleanup_result_ PGresult *def = NULL, *res = NULL;
        int rc;

        json_decref(*out);
        *out = json_array();
        if (!*out)
                return -ENOMEM;
        rc = q(c, ST_SESS_PAGE_DEFAULT, &def, "tti", account, ns, now_ms);
        if (rc < 0)
                return rc;
        if (PQntuples(def) > 0) {
                if (offset > 0) {
                        offset--;
                } else {
                        rc = page_item(c, def, 0, account, ns, now_ms, shape, *out);
                        if (rc < 0)
                                return rc;
                        if (limit > 0)
                                limit--;
                }
        }
        if (limit == 0)
                return 0;
        if (limit < 0)
                rc = q(c, ST_SESS_PAGE, &res, "ttini", account, ns, now_ms, offset);
        else
                rc = q(c, ST_SESS_PAGE, &res, "ttiii", account, ns, now_ms, limit, offset);
        for (int i = 0; rc >= 0 && i < PQntuples(res); i++)
                rc = page_item(c, res, i, account, ns, now_ms, shape, *out);
        return rc;
}

static int sessions_read(void *impl, const char *account, const char *ns, int64_t offset,
                         int64_t limit, int64_t now_ms, enum page_shape shape, json_t **ret_array)
{
        CONN(impl);
        json_t *a = NULL;
        int rc;

        IN_TX(c, TX_READ, rc, sessions_page(c, account, ns, offset, limit, now_ms, shape, &a));
        if (rc < 0) {
                json_decref(a);
                return rc;
        }
        *ret_array = a;
        return 0;
}

static int pg_session_ids(void *impl, const char *account, const char *ns, int64_t offset,
                          int64_t limit, int64_t now_ms, json_t **ret_array)
{
        return sessions_read(impl, account, ns, offset, limit, now_ms, PAGE_IDS, ret_array);
}

static int pg_session_props(void *impl, const char *account, const char *ns, int64_t offset,
                            int64_t limit, int64_t now_ms, json_t **ret_array)
{
        return sessions_read(impl, account, ns, offset, limit, now_ms, PAGE_PROPS, ret_array);
}

static int pg_session_list(void *impl, const char *account, const char *ns, int64_t now_ms,
                           json_t **ret_array)
{
        return sessions_read(impl, account, ns, 0, -1, now_ms, PAGE_LIST, ret_array);
}

static int session_create_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                             int64_t ttl_s, int64_t now_ms)
{
        struct session_row sess;
        int64_t tag;
        int rc;

        rc = session_write_begin(c, account, ns, sid, now_ms, true, &sess);
        if (rc < 0)
                return rc;
        if (sess.exists) {
                if (ttl_s >= 0)
                        return RUN(c, ST_SESS_SET_TTL, "tttii", account, ns, sid, now_ms, ttl_s);
                return RUN(c, ST_SESS_SET_TTL, "tttin", account, ns, sid, now_ms);
        }
        rc = new_tag(&tag);
        if (rc < 0)
                return rc;
        if (ttl_s >= 0)
                return RUN(c, ST_SESS_INSERT, "tttiii", account, ns, sid, now_ms, ttl_s, tag);
        return RUN(c, ST_SESS_INSERT, "tttini", account, ns, sid, now_ms, tag);
}

static int pg_session_create(void *impl, const char *account, const char *ns, const char *sid,
                             int64_t ttl_s, int64_t now_ms)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc, session_create_tx(c, account, ns, sid, ttl_s, now_ms));
        return rc;
}

static int session_delete_tx(struct conn *c, const char *account, const char *ns, const char *sid)
{
        int rc = session_lock(c, account, ns, sid);

        return rc < 0 ? rc : RUN(c, ST_SESS_DEL, "ttt", account, ns, sid);
}

static int pg_session_delete(void *impl, const char *account, const char *ns, const char *sid)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc, session_delete_tx(c, account, ns, sid));
        return rc;
}

/* ---- Sweeping ---- */

struct sweep_key {
        char account[STORE_ACCOUNT_MAX + 1];
        char ns[STORE_NAMESPACE_MAX + 1];
        char sid[STORE_NAME_MAX + 1];
};

/* Collects up to SWEEP_BATCH sessions that have something expired, after *from (NULL: from the
 * start). */
static int sweep_scan(struct conn *c, const struct sweep_key *from, int64_t now_ms,
                      struct sweep_key *keys, size_t *ret_n)
{
        _cleanup_result_ PGresult *res = NULL;
        int rc;

        if (from)
                rc = q(c, ST_SWEEP_SCAN_NEXT, &res, "iittt", now_ms, (int64_t)SWEEP_BATCH,
                       from->account, from->ns, from->sid);
        else
                rc = q(c, ST_SWEEP_SCAN_FIRST, &res, "ii", now_ms, (int64_t)SWEEP_BATCH);
        if (rc < 0)
                return rc;
        *ret_n = 0;
        for (int i = 0; i < PQntuples(res) && i < SWEEP_BATCH; i++) {
                copy_col(res, i, 0, keys[i].account, sizeof(keys[i].account));
                copy_col(res, i, 1, keys[i].ns, sizeof(keys[i].ns));
                copy_col(res, i, 2, keys[i].sid, sizeof(keys[i].sid));
                (*ret_n)++;
        }
        return 0;
}

/* Deletes what is expired in the given sessions, each under its lock; the DELETEs re-check
 * expiry themselves, so a write that happened since the scan keeps its data. */
static int sweep_delete(struct conn *c, const struct sweep_key *keys, size_t n, int64_t now_ms,
                        int64_t *ret_deleted)
{
        static const enum stmt_id order[] = {ST_SWEEP_DEL_PROPS, ST_SWEEP_DEL_SESSION};
        int64_t count = 0;
        int rc;

        for (size_t i = 0; i < n; i++) {
                rc = session_lock(c, keys[i].account, keys[i].ns, keys[i].sid);
                if (rc < 0)
                        return rc;
                for (size_t j = 0; j < ELEMENTSOF(order); j++) {
                        _cleanup_result_ PGresult *res = NULL;

                        rc = q(c, order[j], &res, "ttti", keys[i].account, keys[i].ns, keys[i].sid,
                               now_ms);
                        if (rc < 0)
                                return rc;
                        count += changes(res);
                }
        }
        *ret_deleted = count;
        return 0;
}

static int pg_sweep(void *impl, int64_t now_ms, int64_t *ret_deleted)
{
        CONN(impl);
        _cleanup_free_ struct sweep_key *keys = NULL;
        int64_t deleted = 0;
        size_t n = 0;
        int rc;

        keys = malloc(SWEEP_BATCH * sizeof(*keys));
        if (!keys)
                return -ENOMEM;
        for (bool first = true;; first = false) {
                struct sweep_key from;
                int64_t batch = 0;

                if (!first)
                        from = keys[n - 1];
                IN_TX(c, TX_NONE, rc, sweep_scan(c, first ? NULL : &from, now_ms, keys, &n));
                if (rc < 0)
                        return rc;
                if (n == 0)
                        break;
                IN_TX(c, TX_WRITE, rc, sweep_delete(c, keys, n, now_ms, &batch));
                if (rc < 0)
                        return rc;
                deleted += batch;
                if (n < SWEEP_BATCH)
                        break;
        }
        if (ret_deleted)
                *ret_deleted = deleted;
        return 0;
}

/* ---- Outbox ----
 *
 * As in the SQLite backend, every (hook, conversation) is a FIFO queue by id whose oldest row
 * alone carries head and may be claimed. Whatever adds a row to a queue or hands its head mark
 * on holds the queue's advisory lock, so two instances never both see a queue as empty. */

static int64_t queue_key(const char *hook, const char *conversation)
{
        return lock_key('o', hook, conversation, "");
}

static int outbox_insert(struct conn *c, const char *hook, const char *account,
                         const char *conversation, const char *webhook_id, const char *body,
                         size_t body_len, const char *clear_namespaces, int64_t now_ms)
{
        if (clear_namespaces)
                return RUN(c, ST_OB_INSERT, "ttttbti", hook, account, conversation, webhook_id,
                           body, body_len, clear_namespaces, now_ms);
        return RUN(c, ST_OB_INSERT, "ttttbni", hook, account, conversation, webhook_id, body,
                   body_len, now_ms);
}

/* Takes the locks of every queue the batch adds to, in one round trip and in key order, so two
 * instances' batches never wait for each other in a cycle. */
static int lock_queues(struct conn *c, const struct store_message *msgs, size_t n)
{
        _cleanup_free_ int64_t *keys = NULL;
        size_t count = 0, cap = 0;

        for (size_t i = 0; i < n; i++)
                cap += msgs[i].n_items;
        if (cap == 0)
                return 0;
        keys = malloc(cap * sizeof(*keys));
        if (!keys)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < msgs[i].n_items; j++)
                        keys[count++] =
                            queue_key(msgs[i].items[j].hook, msgs[i].items[j].conversation);
        return RUN(c, ST_LOCK_MANY, "I", keys, count);
}

/* Queues the writes of the messages whose results[i] is 0 (new): their deliveries or dead
 * letter. Returns how many statements it queued in *ret_sent, even on failure. */
static int send_messages(struct conn *c, const struct store_message *msgs, size_t n, int64_t now_ms,
                         const int *results, size_t *ret_sent)
{
        int rc = 0;

        for (size_t i = 0; i < n && rc >= 0; i++) {
                const struct store_message *m = &msgs[i];

                if (results[i] != 0)
                        continue;
                if (m->dead_source) {
                        rc = pipe_send(c, ST_DL_INSERT, "bbib", m->dead_source,
                                       strlen(m->dead_source), m->dead_reason,
                                       strlen(m->dead_reason), now_ms, m->raw, m->raw_len);
                        *ret_sent += rc >= 0;
                        continue;
                }
                for (size_t j = 0; j < m->n_items && rc >= 0; j++) {
                        const struct store_enqueue *it = &m->items[j];

                        if (it->clear_namespaces)
                                rc = pipe_send(c, ST_OB_INSERT, "ttttbti", it->hook, it->account,
                                               it->conversation, it->webhook_id, it->body,
                                               it->body_len, it->clear_namespaces, now_ms);
                        else
                                rc = pipe_send(c, ST_OB_INSERT, "ttttbni", it->hook, it->account,
                                               it->conversation, it->webhook_id, it->body,
                                               it->body_len, now_ms);
                        *ret_sent += rc >= 0;
                }
        }
        return rc;
}

/* The batch in a handful of round trips rather than one per statement: the queue locks, then
 * every dedup key in one pipeline (a key recorded before, or earlier in the batch, changes no
 * row: that message's result is -EEXIST and nothing else of it is written), then the writes of
 * the new messages in a second one. */
static int enqueue_many_tx(struct conn *c, const struct store_message *msgs, size_t n,
                           int64_t now_ms, int *results)
{
        static const enum stmt_id used[] = {ST_DEDUP_ADD, ST_OB_INSERT, ST_DL_INSERT};
        _cleanup_free_ int64_t *added = NULL;
        size_t sent = 0;
        int rc, r;

        rc = lock_queues(c, msgs, n);
        for (size_t i = 0; i < ELEMENTSOF(used) && rc >= 0; i++)
                rc = prepare(c, used[i]);
        if (rc < 0)
                return rc;
        added = calloc(n, sizeof(*added));
        if (!added)
                return -ENOMEM;

        rc = pipe_begin(c);
        if (rc < 0)
                return rc;
        for (size_t i = 0; i < n && rc >= 0; i++) {
                if (!msgs[i].dedup_key)
                        continue;
                rc = pipe_send(c, ST_DEDUP_ADD, "bi", msgs[i].dedup_key, strlen(msgs[i].dedup_key),
                               now_ms);
                sent += rc >= 0;
        }
        r = pipe_end(c, sent, added);
        if (rc >= 0)
                rc = r;
        if (rc < 0)
                return rc;
        for (size_t i = 0, k = 0; i < n; i++)
                results[i] = msgs[i].dedup_key && added[k++] == 0 ? -EEXIST : 0;

        sent = 0;
        rc = pipe_begin(c);
        if (rc < 0)
                return rc;
        rc = send_messages(c, msgs, n, now_ms, results, &sent);
        r = pipe_end(c, sent, NULL);
        return rc < 0 ? rc : r;
}

static int pg_outbox_enqueue_many(void *impl, const struct store_message *msgs, size_t n,
                                  int64_t now_ms, int *results)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc, enqueue_many_tx(c, msgs, n, now_ms, results));
        return rc;
}

struct claimed {
        struct store_delivery d;
        int64_t ready;
};

static int claimed_cmp(const void *a, const void *b)
{
        const struct claimed *x = a, *y = b;

        if (x->ready != y->ready)
                return x->ready < y->ready ? -1 : 1;
        return x->d.id < y->d.id ? -1 : x->d.id > y->d.id;
}

/* Leases the due heads (skipping those another instance is claiming right now) and copies them
 * out oldest due first. */
static int claim_tx(struct conn *c, int64_t now_ms, int64_t lease_ms, size_t limit,
                    struct store_delivery **ret, size_t *ret_n)
{
        _cleanup_result_ PGresult *res = NULL;
        _cleanup_free_ struct claimed *rows = NULL;
        struct store_delivery *d;
        int n, rc;

        rc = q(c, ST_OB_CLAIM, &res, "iii", now_ms, limit > INT64_MAX ? INT64_MAX : (int64_t)limit,
               now_ms + lease_ms);
        if (rc < 0)
                return rc;
        n = PQntuples(res);
        if (n == 0)
                return 0;
        rows = calloc((size_t)n, sizeof(*rows));
        d = calloc((size_t)n, sizeof(*d));
        if (!rows || !d) {
                free(d);
                return -ENOMEM;
        }
        for (int i = 0; i < n; i++) {
                struct store_delivery *x = &rows[i].d;

                x->id = col_i64(res, i, 0);
                x->attempts = col_i64(res, i, 6);
                x->created_ms = col_i64(res, i, 7);
                rows[i].ready = col_i64(res, i, 8);
                rc = col_dup(res, i, 1, false, &x->hook, NULL);
                if (rc >= 0)
                        rc = col_dup(res, i, 2, false, &x->account, NULL);
                if (rc >= 0)
                        rc = col_dup(res, i, 3, false, &x->conversation, NULL);
                if (rc >= 0)
                        rc = col_dup(res, i, 4, false, &x->webhook_id, NULL);
                if (rc >= 0)
                        rc = col_dup(res, i, 5, true, &x->body, &x->body_len);
                if (rc >= 0 &&
                    (!x->hook || !x->account || !x->conversation || !x->webhook_id || !x->body))
                        rc = -EIO;
                if (rc < 0) {
                        for (int j = 0; j <= i; j++)
                                store_delivery_clear(&rows[j].d);
                        free(d);
                        return rc;
                }
        }
        qsort(rows, (size_t)n, sizeof(*rows), claimed_cmp);
        for (int i = 0; i < n; i++)
                d[i] = rows[i].d;
        *ret = d;
        *ret_n = (size_t)n;
        return 0;
}

static int pg_outbox_claim(void *impl, int64_t now_ms, int64_t lease_ms, size_t limit,
                           struct store_delivery **ret, size_t *ret_n)
{
        CONN(impl);
        struct store_delivery *d = NULL;
        size_t n = 0;
        int rc;

        /* One statement: its own transaction. A claim whose commit was lost is released by
         * the lease. */
        IN_TX(c, TX_NONE, rc,
              (store_deliveries_free(d, n), d = NULL, n = 0,
               claim_tx(c, now_ms, lease_ms, limit, &d, &n)));
        if (rc < 0) {
                store_deliveries_free(d, n);
                return rc;
        }
        *ret = d;
        *ret_n = n;
        return 0;
}

/* The part of an outbox row that outbox_remove() hands back. */
struct outbox_row {
        char hook[STORE_HOOK_MAX + 1];
        char conversation[STORE_NAME_MAX + 1];
        char account[STORE_ACCOUNT_MAX + 1];
        char *clear_namespaces; /* malloc'ed, or NULL */
};

/* Deletes outbox row id and, when it was its queue's head, passes the mark on under the
 * queue's lock. -ENOENT when it is gone. */
static int outbox_remove(struct conn *c, int64_t id, struct outbox_row *ret)
{
        _cleanup_result_ PGresult *res = NULL;
        struct outbox_row row = {0};
        int rc;

        rc = q(c, ST_OB_DEL, &res, "i", id);
        if (rc < 0)
                return rc;
        if (PQntuples(res) < 1)
                return -ENOENT;
        copy_col(res, 0, 0, row.hook, sizeof(row.hook));
        copy_col(res, 0, 1, row.conversation, sizeof(row.conversation));
        copy_col(res, 0, 2, row.account, sizeof(row.account));
        if (strcmp(PQgetvalue(res, 0, 4), "t") == 0) {
                rc = lock(c, queue_key(row.hook, row.conversation));
                if (rc >= 0)
                        rc = RUN(c, ST_OB_PROMOTE, "tt", row.hook, row.conversation);
                if (rc < 0)
                        return rc;
        }
        if (ret) {
                rc = col_dup(res, 0, 3, false, &row.clear_namespaces, NULL);
                if (rc < 0)
                        return rc;
                *ret = row;
        }
        return 0;
}

struct clearing {
        struct conn *c;
        const struct outbox_row *row;
        int64_t now_ms;
};

static int clear_one(const char *ns, void *ctx)
{
        struct clearing *cl = ctx;

        return props_clear_tx(cl->c, cl->row->account, ns, cl->row->conversation, NULL, cl->now_ms);
}

/* Deletes the properties of the delivery's conversation in each namespace of its
 * clear_namespaces, as store_props_clear() does. */
static int clear_sessions(struct conn *c, const struct outbox_row *row, int64_t now_ms)
{
        struct clearing cl = {.c = c, .row = row, .now_ms = now_ms};

        return store_each_namespace(row->clear_namespaces, clear_one, &cl);
}

static int done_tx(struct conn *c, int64_t id, int64_t now_ms, bool *ret_cleared)
{
        struct outbox_row row;
        int rc;

        rc = outbox_remove(c, id, &row);
        if (rc < 0)
                return rc;
        if (row.clear_namespaces) {
                *ret_cleared = true;
                rc = clear_sessions(c, &row, now_ms);
        }
        free(row.clear_namespaces);
        return rc;
}

static int pg_outbox_done(void *impl, int64_t id, int64_t now_ms, bool *ret_cleared)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc, done_tx(c, id, now_ms, ret_cleared));
        return rc;
}

static int retry_tx(struct conn *c, int64_t id, int64_t attempts, int64_t next_attempt_ms,
                    const char *last_error)
{
        _cleanup_result_ PGresult *res = NULL;
        int rc;

        if (last_error)
                rc = q(c, ST_OB_RETRY, &res, "iiib", id, attempts, next_attempt_ms, last_error,
                       strlen(last_error));
        else
                rc = q(c, ST_OB_RETRY, &res, "iiin", id, attempts, next_attempt_ms);
        if (rc < 0)
                return rc;
        return changes(res) == 0 ? -ENOENT : 0;
}

static int pg_outbox_retry(void *impl, int64_t id, int64_t attempts, int64_t next_attempt_ms,
                           const char *last_error)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_NONE, rc, retry_tx(c, id, attempts, next_attempt_ms, last_error));
        return rc;
}

static int dead_tx(struct conn *c, int64_t id, const char *reason, int64_t now_ms)
{
        _cleanup_result_ PGresult *res = NULL;
        int rc;

        rc = q(c, ST_OB_TO_DEAD, &res, "ibi", id, reason, strlen(reason), now_ms);
        if (rc < 0)
                return rc;
        if (changes(res) == 0)
                return -ENOENT;
        return outbox_remove(c, id, NULL);
}

static int pg_outbox_dead(void *impl, int64_t id, const char *reason, int64_t now_ms)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_WRITE, rc, dead_tx(c, id, reason, now_ms));
        return rc;
}

/* Runs a one-row, one-integer statement. -ENOENT when it returns no row or NULL. */
static int query_int(void *impl, enum stmt_id id, int64_t *ret)
{
        CONN(impl);
        _cleanup_result_ PGresult *res = NULL;
        int rc;

        IN_TX(c, TX_NONE, rc, (PQclear(res), res = NULL, q(c, id, &res, "")));
        if (rc < 0)
                return rc;
        if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0))
                return -ENOENT;
        *ret = col_i64(res, 0, 0);
        return 0;
}

static int pg_outbox_depth(void *impl, int64_t *ret)
{
        int rc = query_int(impl, ST_OB_DEPTH, ret);

        return rc == -ENOENT ? -EIO : rc;
}

static int pg_outbox_next_due(void *impl, int64_t *ret_ms)
{
        return query_int(impl, ST_OB_NEXT_DUE, ret_ms);
}

/* ---- Dead letters ---- */

static json_t *dead_item(const PGresult *res, int row)
{
        _cleanup_free_ char *source = NULL, *reason = NULL, *raw = NULL;
        size_t source_len = 0, reason_len = 0, raw_len = 0;

        if (col_dup(res, row, 1, true, &source, &source_len) < 0 ||
            col_dup(res, row, 2, true, &reason, &reason_len) < 0 ||
            col_dup(res, row, 4, true, &raw, &raw_len) < 0)
                return NULL;
        return store_dead_item(col_i64(res, row, 0), source, source_len, reason, reason_len,
                               col_i64(res, row, 3), raw, raw_len);
}

static int pg_dead_list(void *impl, int64_t after_id, int64_t limit, json_t **ret_array)
{
        CONN(impl);
        _cleanup_result_ PGresult *res = NULL;
        json_t *a;
        int rc;

        IN_TX(c, TX_NONE, rc,
              (PQclear(res), res = NULL, q(c, ST_DL_LIST, &res, "ii", after_id, limit)));
        if (rc < 0)
                return rc;
        a = json_array();
        if (!a)
                return -ENOMEM;
        for (int i = 0; i < PQntuples(res); i++) {
                json_t *o = dead_item(res, i);

                if (!o || json_array_append_new(a, o) < 0) {
                        json_decref(a);
                        return -ENOMEM;
                }
        }
        *ret_array = a;
        return 0;
}

static int pg_dead_count(void *impl, int64_t *ret)
{
        int rc = query_int(impl, ST_DL_COUNT, ret);

        return rc == -ENOENT ? -EIO : rc;
}

static int dead_load(struct conn *c, int64_t id, struct store_dead_row *r)
{
        _cleanup_result_ PGresult *res = NULL;
        int rc;

        store_dead_row_clear(r);
        rc = q(c, ST_DL_ROW, &res, "i", id);
        if (rc < 0)
                return rc;
        if (PQntuples(res) < 1)
                return -ENOENT;
        r->delivery = strcmp(PQgetvalue(res, 0, 0), "delivery") == 0;
        rc = col_dup(res, 0, 1, true, &r->source, NULL);
        if (rc >= 0)
                rc = col_dup(res, 0, 2, true, &r->raw, &r->raw_len);
        if (rc >= 0 && r->delivery) {
                rc = col_dup(res, 0, 3, false, &r->hook, NULL);
                if (rc >= 0)
                        rc = col_dup(res, 0, 4, false, &r->account, NULL);
                if (rc >= 0)
                        rc = col_dup(res, 0, 5, false, &r->conversation, NULL);
                if (rc >= 0)
                        rc = col_dup(res, 0, 6, false, &r->webhook_id, NULL);
                if (rc >= 0)
                        rc = col_dup(res, 0, 7, false, &r->clear_namespaces, NULL);
                if (rc >= 0 && (!r->hook || !r->account || !r->conversation || !r->webhook_id))
                        rc = -EIO;
        }
        if (rc >= 0 && (!r->source || !r->raw))
                rc = -EIO;
        return rc;
}

/* Returns 1 for a delivery queued again (its dead letter deleted), 0 for an event left in *r. */
static int redrive_tx(struct conn *c, int64_t id, int64_t now_ms, struct store_dead_row *r)
{
        int rc;

        rc = dead_load(c, id, r);
        if (rc < 0 || !r->delivery)
                return rc;
        rc = lock(c, queue_key(r->hook, r->conversation));
        if (rc >= 0)
                rc = outbox_insert(c, r->hook, r->account, r->conversation, r->webhook_id, r->raw,
                                   r->raw_len, r->clear_namespaces, now_ms);
        if (rc >= 0)
                rc = RUN(c, ST_DL_DEL, "i", id);
        return rc < 0 ? rc : 1;
}

static int pg_dead_redrive(void *impl, int64_t id, int64_t now_ms, char **ret_raw,
                           size_t *ret_raw_len, char **ret_source)
{
        CONN(impl);
        struct store_dead_row r = {0};
        int rc;

        IN_TX(c, TX_WRITE, rc, redrive_tx(c, id, now_ms, &r));
        if (rc == 0) {
                *ret_raw = TAKE_PTR(r.raw);
                *ret_raw_len = r.raw_len;
                *ret_source = TAKE_PTR(r.source);
        }
        store_dead_row_clear(&r);
        return rc;
}

static int dead_delete_tx(struct conn *c, int64_t id)
{
        _cleanup_result_ PGresult *res = NULL;
        int rc = q(c, ST_DL_DEL, &res, "i", id);

        if (rc < 0)
                return rc;
        return changes(res) == 0 ? -ENOENT : 0;
}

static int pg_dead_delete(void *impl, int64_t id)
{
        CONN(impl);
        int rc;

        IN_TX(c, TX_NONE, rc, dead_delete_tx(c, id));
        return rc;
}

static int dedup_expire_tx(struct conn *c, int64_t before_ms, int64_t *ret_batch)
{
        _cleanup_result_ PGresult *res = NULL;
        int rc = q(c, ST_DEDUP_EXPIRE, &res, "ii", before_ms, (int64_t)DEDUP_BATCH);

        if (rc < 0)
                return rc;
        *ret_batch = changes(res);
        return 0;
}

static int pg_dedup_expire(void *impl, int64_t before_ms, int64_t *ret_deleted)
{
        CONN(impl);
        int64_t deleted = 0, batch;
        int rc;

        do {
                batch = 0;
                IN_TX(c, TX_NONE, rc, dedup_expire_tx(c, before_ms, &batch));
                if (rc < 0)
                        return rc;
                deleted += batch;
        } while (batch == DEDUP_BATCH);
        if (ret_deleted)
                *ret_deleted = deleted;
        return 0;
}

const struct store_ops store_pg_ops = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .probe = pg_probe,
    .schema_latest = SCHEMA_VERSION,
    .ping = pg_ping,
    .schema_version = pg_schema_version,
    .key_set = pg_key_set,
    .key_get = pg_key_get,
    .ns_create = pg_ns_create,
    .ns_list = pg_ns_list,
    .ns_delete = pg_ns_delete,
    .props_get = pg_props_get,
    .prop_get = pg_prop_get,
    .props_merge = pg_props_merge,
    .prop_put = pg_prop_put,
    .prop_delete = pg_prop_delete,
    .props_clear = pg_props_clear,
    .session_ids = pg_session_ids,
    .session_props = pg_session_props,
    .session_create = pg_session_create,
    .session_list = pg_session_list,
    .session_delete = pg_session_delete,
    .sweep = pg_sweep,
    .outbox_enqueue_many = pg_outbox_enqueue_many,
    .outbox_claim = pg_outbox_claim,
    .outbox_done = pg_outbox_done,
    .outbox_retry = pg_outbox_retry,
    .outbox_dead = pg_outbox_dead,
    .outbox_depth = pg_outbox_depth,
    .outbox_next_due = pg_outbox_next_due,
    .dead_list = pg_dead_list,
    .dead_count = pg_dead_count,
    .dead_redrive = pg_dead_redrive,
    .dead_delete = pg_dead_delete,
    .dedup_expire = pg_dedup_expire,
    /* No change counters: other instances write the same data, so nothing may be cached. */
    .gen_load = NULL,
    .gen_bump = NULL,
};
