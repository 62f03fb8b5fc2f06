/* The SQLite backend of the store (the only file that sees sqlite3.h). One database file in WAL
 * mode, a pool of connections so HTTP worker threads read in parallel, every statement prepared
 * once per connection and reused. Writes are serialised inside the process by a mutex (so
 * in-process writers never spin in SQLite's sleeping busy handler) and across processes (the
 * `apikey create` CLI) by BEGIN IMMEDIATE with the configured busy timeout; every write is one
 * transaction that is rolled back on any failure. TTL liveness is judged at read time from the
 * effective TTL COALESCE(session, namespace, 0), so a changed namespace TTL applies at once;
 * sweeping only reclaims space. The outbox is one FIFO per (hook, conversation) whose head alone
 * is claimable, leased by time; dead letters and dedup keys live beside it, so queueing a
 * message and recording it as seen are one transaction. The schema is versioned with PRAGMA
 * user_version and an ordered list of migrations. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctxhookd/cleanup.h"
#include "ctxhookd/store.h"
#include "store_backend.h"

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* Values up to this size are dumped into the connection's reusable buffer; larger ones into a
 * temporary one, so one huge PUT does not pin memory in every pooled connection. */
#define DUMP_BUF_KEEP (64 * 1024)
/* Sessions examined per sweep transaction. */
#define SWEEP_BATCH 500
/* Dedup keys forgotten per transaction, so expiring a day of Kafka offsets does not hold the
 * write lock for long. */
#define DEDUP_BATCH 5000

/* Migration i brings the schema from version i to i + 1. Append only; never edit a shipped
 * step. ETags are random 64-bit values, so a recreated session or property never gets back an
 * old tag that a client may still hold. */
static const char *const migrations[] = {
    /* 1: Context API data and API keys. */
    "CREATE TABLE namespaces ("
    "  account TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  ttl_s INTEGER,"
    "  PRIMARY KEY (account, name)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE sessions ("
    "  account TEXT NOT NULL,"
    "  ns TEXT NOT NULL,"
    "  sid TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  ttl_s INTEGER," /* NULL: inherit the namespace's */
    "  etag INTEGER NOT NULL,"
    "  PRIMARY KEY (account, ns, sid),"
    "  FOREIGN KEY (account, ns) REFERENCES namespaces (account, name) ON DELETE CASCADE"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE properties ("
    "  account TEXT NOT NULL,"
    "  ns TEXT NOT NULL,"
    "  sid TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  value TEXT NOT NULL," /* compact JSON */
    "  updated_at INTEGER NOT NULL,"
    "  etag INTEGER NOT NULL,"
    "  PRIMARY KEY (account, ns, sid, name),"
    "  FOREIGN KEY (account, ns, sid) REFERENCES sessions (account, ns, sid)"
    "    ON DELETE CASCADE"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE api_keys ("
    "  account TEXT NOT NULL PRIMARY KEY,"
    "  key_hash BLOB NOT NULL,"
    "  created_at INTEGER NOT NULL"
    ") STRICT, WITHOUT ROWID;",

    /* 2: the outbox, dead letters and dedup keys (issue 3). AUTOINCREMENT so that an id is
     * never reused: a late done() or retry() from a claimer whose lease expired, or an admin
     * acting on a listed dead letter, must never hit a newer row that got the same id. `head`
     * marks the oldest row of each (hook, conversation), the only one claimable; keeping it as
     * a column lets the partial index outbox_ready hold just the claimable candidates, so a
     * claim reads only what it returns however many rows wait behind a failing or leased head.
     * The index is on the time a head becomes claimable: its next attempt or, while it is
     * leased, the end of the lease. Row counts come from two counters (see `removed`), so
     * depth and the dead letter gauge cost two lookups instead of a scan of every row. */
    "CREATE TABLE outbox ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  hook TEXT NOT NULL,"
    "  account TEXT NOT NULL,"
    "  conversation TEXT NOT NULL,"
    "  webhook_id TEXT NOT NULL,"
    "  body BLOB NOT NULL,"
    "  clear_namespaces TEXT," /* JSON array of namespace names, or NULL */
    "  attempts INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  next_attempt_ms INTEGER NOT NULL,"
    "  lease_until_ms INTEGER NOT NULL," /* 0: not in flight */
    "  head INTEGER NOT NULL,"
    "  last_error TEXT"
    ") STRICT;"
    "CREATE INDEX outbox_queue ON outbox (hook, conversation, id);"
    "CREATE INDEX outbox_ready ON outbox (MAX(next_attempt_ms, lease_until_ms)) WHERE head = 1;"
    "CREATE TABLE dead_letters ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  kind TEXT NOT NULL CHECK (kind IN ('event', 'delivery')),"
    "  source TEXT NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  received_ms INTEGER NOT NULL,"
    "  raw BLOB NOT NULL,"
    /* Deliveries only: what it takes to queue them again. */
    "  hook TEXT,"
    "  account TEXT,"
    "  conversation TEXT,"
    "  webhook_id TEXT,"
    "  clear_namespaces TEXT,"
    "  attempts INTEGER,"
    "  created_ms INTEGER,"
    "  last_error TEXT"
    ") STRICT;"
    "CREATE TABLE dedup ("
    "  key TEXT NOT NULL PRIMARY KEY,"
    "  at_ms INTEGER NOT NULL"
    ") STRICT, WITHOUT ROWID;"
    "CREATE INDEX dedup_at ON dedup (at_ms);"
    /* Rows ever removed from each AUTOINCREMENT table. Rows ever inserted is the table's
     * sqlite_sequence entry, so the difference is the row count, and an insert (the ingest
     * path) writes no page beyond those it must. */
    "CREATE TABLE removed ("
    "  tbl TEXT NOT NULL PRIMARY KEY,"
    "  n INTEGER NOT NULL"
    ") STRICT, WITHOUT ROWID;"
    "INSERT INTO removed (tbl, n) VALUES ('outbox', 0), ('dead_letters', 0);"
    "CREATE TRIGGER outbox_removed AFTER DELETE ON outbox BEGIN"
    "  UPDATE removed SET n = n + 1 WHERE tbl = 'outbox'; END;"
    "CREATE TRIGGER dead_letters_removed AFTER DELETE ON dead_letters BEGIN"
    "  UPDATE removed SET n = n + 1 WHERE tbl = 'dead_letters'; END;",
};

#define SCHEMA_VERSION ((int)ELEMENTSOF(migrations))

/* The effective TTL of session s in namespace n, and the liveness test of store_is_live(). */
#define EFFECTIVE_TTL "COALESCE(s.ttl_s, n.ttl_s, 0)"
#define SESSION_JOIN  "sessions s JOIN namespaces n ON n.account = s.account AND n.name = s.ns"
#define SESSION_PK    "s.account = ?1 AND s.ns = ?2 AND s.sid = ?3"
#define PROP_PK       "account = ?1 AND ns = ?2 AND sid = ?3 AND name = ?4"
/* When an outbox head becomes claimable: its next attempt, or the end of its lease. Written
 * exactly as in the index outbox_ready, so the planner uses it. */
#define READY "MAX(next_attempt_ms, lease_until_ms)"
/* The number of rows of an AUTOINCREMENT table: rows ever inserted minus rows ever removed. */
#define ROW_COUNT(tbl)                                                                             \
        "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '" tbl "'), 0)"                    \
        " - (SELECT n FROM removed WHERE tbl = '" tbl "')"
/* The session's TTL for the sweeper, NULL when it has none (so comparisons with it are false). */
#define SWEEP_TTL                                                                                  \
        "(SELECT " EFFECTIVE_TTL " FROM " SESSION_JOIN " WHERE " SESSION_PK " AND " EFFECTIVE_TTL  \
        " > 0)"

#define STATEMENTS(X)                                                                              \
        X(BEGIN_READ, "BEGIN")                                                                     \
        X(BEGIN_WRITE, "BEGIN IMMEDIATE")                                                          \
        X(COMMIT, "COMMIT")                                                                        \
        X(ROLLBACK, "ROLLBACK")                                                                    \
        X(USER_VERSION, "PRAGMA user_version")                                                     \
        X(KEY_SET, "INSERT INTO api_keys (account, key_hash, created_at) VALUES (?1, ?2, ?3)"      \
                   " ON CONFLICT (account) DO UPDATE SET key_hash = excluded.key_hash,"            \
                   " created_at = excluded.created_at")                                            \
        X(KEY_GET, "SELECT key_hash FROM api_keys WHERE account = ?1")                             \
        X(NS_ENSURE,                                                                               \
          "INSERT INTO namespaces (account, name, created_at, ttl_s) VALUES (?1, ?2, ?3, NULL)"    \
          " ON CONFLICT (account, name) DO NOTHING")                                               \
        X(NS_SET_TTL,                                                                              \
          "INSERT INTO namespaces (account, name, created_at, ttl_s) VALUES (?1, ?2, ?3, ?4)"      \
          " ON CONFLICT (account, name) DO UPDATE SET ttl_s = excluded.ttl_s")                     \
        X(NS_LIST, "SELECT name, created_at, ttl_s FROM namespaces WHERE account = ?1"             \
                   " ORDER BY name")                                                               \
        X(NS_DEL_PROPS, "DELETE FROM properties WHERE account = ?1 AND ns = ?2")                   \
        X(NS_DEL_SESSIONS, "DELETE FROM sessions WHERE account = ?1 AND ns = ?2")                  \
        X(NS_DEL, "DELETE FROM namespaces WHERE account = ?1 AND name = ?2")                       \
        X(SESS_GET, "SELECT s.etag, s.updated_at, " EFFECTIVE_TTL " FROM " SESSION_JOIN            \
                    " WHERE " SESSION_PK)                                                          \
        X(SESS_INSERT,                                                                             \
          "INSERT INTO sessions (account, ns, sid, created_at, updated_at, ttl_s, etag)"           \
          " VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)")                                                  \
        X(SESS_TOUCH, "UPDATE sessions SET updated_at = MAX(updated_at, ?4), etag = ?5"            \
                      " WHERE account = ?1 AND ns = ?2 AND sid = ?3")                              \
        X(SESS_SET_TTL,                                                                            \
          "UPDATE sessions SET updated_at = MAX(updated_at, ?4), ttl_s = COALESCE(?5, ttl_s)"      \
          " WHERE account = ?1 AND ns = ?2 AND sid = ?3")                                          \
        X(SESS_DEL, "DELETE FROM sessions WHERE account = ?1 AND ns = ?2 AND sid = ?3")            \
        X(SESS_PAGE_DEFAULT,                                                                       \
          "SELECT s.sid, s.created_at, " EFFECTIVE_TTL " FROM " SESSION_JOIN                       \
          " WHERE s.account = ?1 AND s.ns = ?2 AND s.sid = '" STORE_DEFAULT_SESSION "'"            \
          " AND (" EFFECTIVE_TTL " <= 0 OR ?3 - s.updated_at < " EFFECTIVE_TTL " * 1000)")         \
        X(SESS_PAGE,                                                                               \
          "SELECT s.sid, s.created_at, " EFFECTIVE_TTL " FROM " SESSION_JOIN                       \
          " WHERE s.account = ?1 AND s.ns = ?2 AND s.sid <> '" STORE_DEFAULT_SESSION "'"           \
          " AND (" EFFECTIVE_TTL " <= 0 OR ?3 - s.updated_at < " EFFECTIVE_TTL " * 1000)"          \
          " ORDER BY s.sid LIMIT ?4 OFFSET ?5")                                                    \
        X(PROP_GET, "SELECT p.value, p.etag, p.updated_at, " EFFECTIVE_TTL                         \
                    " FROM properties p JOIN sessions s"                                           \
                    " ON s.account = p.account AND s.ns = p.ns AND s.sid = p.sid"                  \
                    " JOIN namespaces n ON n.account = p.account AND n.name = p.ns"                \
                    " WHERE p.account = ?1 AND p.ns = ?2 AND p.sid = ?3 AND p.name = ?4")          \
        X(PROP_ROW, "SELECT value, etag, updated_at FROM properties WHERE " PROP_PK)               \
        X(PROP_UPSERT, "INSERT INTO properties (account, ns, sid, name, value, updated_at, etag)"  \
                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (account, ns, sid, name)" \
                       " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at,"  \
                       " etag = excluded.etag")                                                    \
        X(PROP_DEL, "DELETE FROM properties WHERE " PROP_PK)                                       \
        X(PROPS_ALL, "SELECT name, value FROM properties"                                          \
                     " WHERE account = ?1 AND ns = ?2 AND sid = ?3"                                \
                     " AND (?4 <= 0 OR ?5 - updated_at < ?4 * 1000) ORDER BY name")                \
        X(PROPS_DEL, "DELETE FROM properties WHERE account = ?1 AND ns = ?2 AND sid = ?3")         \
        X(SWEEP_SCAN_FIRST,                                                                        \
          "SELECT s.account, s.ns, s.sid FROM " SESSION_JOIN " WHERE " EFFECTIVE_TTL " > 0"        \
          " AND (?1 - s.updated_at >= " EFFECTIVE_TTL " * 1000 OR EXISTS (SELECT 1"                \
          " FROM properties p WHERE p.account = s.account AND p.ns = s.ns AND p.sid = s.sid"       \
          " AND ?1 - p.updated_at >= " EFFECTIVE_TTL " * 1000))"                                   \
          " ORDER BY s.account, s.ns, s.sid LIMIT ?2")                                             \
        X(SWEEP_SCAN_NEXT,                                                                         \
          "SELECT s.account, s.ns, s.sid FROM " SESSION_JOIN                                       \
          " WHERE (s.account, s.ns, s.sid) > (?3, ?4, ?5) AND " EFFECTIVE_TTL " > 0"               \
          " AND (?1 - s.updated_at >= " EFFECTIVE_TTL " * 1000 OR EXISTS (SELECT 1"                \
          " FROM properties p WHERE p.account = s.account AND p.ns = s.ns AND p.sid = s.sid"       \
          " AND ?1 - p.updated_at >= " EFFECTIVE_TTL " * 1000))"                                   \
          " ORDER BY s.account, s.ns, s.sid LIMIT ?2")                                             \
        X(SWEEP_DEL_PROPS, "DELETE FROM properties WHERE account = ?1 AND ns = ?2 AND sid = ?3"    \
                           " AND ?4 - updated_at >= " SWEEP_TTL " * 1000")                         \
        X(SWEEP_DEL_SESSION, "DELETE FROM sessions WHERE account = ?1 AND ns = ?2 AND sid = ?3"    \
                             " AND ?4 - updated_at >= " SWEEP_TTL " * 1000")                       \
        X(DEDUP_ADD,                                                                               \
          "INSERT INTO dedup (key, at_ms) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING")           \
        X(DEDUP_EXPIRE, "DELETE FROM dedup WHERE key IN"                                           \
                        " (SELECT key FROM dedup WHERE at_ms < ?1 LIMIT ?2)")                      \
        X(OB_INSERT,                                                                               \
          "INSERT INTO outbox (hook, account, conversation, webhook_id, body, clear_namespaces,"   \
          " attempts, created_ms, next_attempt_ms, lease_until_ms, head)"                          \
          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7, 0,"                                         \
          " NOT EXISTS (SELECT 1 FROM outbox WHERE hook = ?1 AND conversation = ?3))")             \
        X(OB_CLAIM, "SELECT id, hook, account, conversation, webhook_id, body, attempts,"          \
                    " created_ms FROM outbox WHERE head = 1 AND " READY " <= ?1"                   \
                    " ORDER BY " READY ", id LIMIT ?2")                                            \
        X(OB_LEASE, "UPDATE outbox SET lease_until_ms = ?2 WHERE id = ?1")                         \
        X(OB_ROW, "SELECT hook, conversation, account, clear_namespaces, head FROM outbox"         \
                  " WHERE id = ?1")                                                                \
        X(OB_DEL, "DELETE FROM outbox WHERE id = ?1")                                              \
        X(OB_PROMOTE, "UPDATE outbox SET head = 1 WHERE id = (SELECT id FROM outbox"               \
                      " WHERE hook = ?1 AND conversation = ?2 ORDER BY id LIMIT 1)")               \
        X(OB_RETRY, "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, lease_until_ms = 0,"   \
                    " last_error = ?4 WHERE id = ?1")                                              \
        X(OB_TO_DEAD,                                                                              \
          "INSERT INTO dead_letters (kind, source, reason, received_ms, raw, hook, account,"       \
          " conversation, webhook_id, clear_namespaces, attempts, created_ms, last_error)"         \
          " SELECT 'delivery', 'delivery:' || hook || '/' || webhook_id, ?2, ?3, body, hook,"      \
          " account, conversation, webhook_id, clear_namespaces, attempts, created_ms,"            \
          " last_error FROM outbox WHERE id = ?1")                                                 \
        X(OB_DEPTH, "SELECT " ROW_COUNT("outbox"))                                                 \
        X(OB_NEXT_DUE, "SELECT " READY " FROM outbox WHERE head = 1 ORDER BY " READY ", id"        \
                       " LIMIT 1")                                                                 \
        X(DL_INSERT, "INSERT INTO dead_letters (kind, source, reason, received_ms, raw)"           \
                     " VALUES ('event', ?1, ?2, ?3, ?4)")                                          \
        X(DL_LIST, "SELECT id, source, reason, received_ms, raw FROM dead_letters WHERE id > ?1"   \
                   " ORDER BY id LIMIT ?2")                                                        \
        X(DL_COUNT, "SELECT " ROW_COUNT("dead_letters"))                                           \
        X(DL_ROW, "SELECT kind, source, raw, hook, account, conversation, webhook_id,"             \
                  " clear_namespaces FROM dead_letters WHERE id = ?1")                             \
        X(DL_DEL, "DELETE FROM dead_letters WHERE id = ?1")

#define STMT_ENUM(id, sql) ST_##id,
enum stmt_id { STATEMENTS(STMT_ENUM) ST__MAX };
#undef STMT_ENUM

#define STMT_SQL(id, sql) [ST_##id] = sql,
static const char *const stmt_sql[ST__MAX] = {STATEMENTS(STMT_SQL)};
#undef STMT_SQL

struct sqlite_store;

struct conn {
        struct sqlite_store *owner;
        sqlite3 *db;
        sqlite3_stmt *st[ST__MAX];
        char *buf; /* scratch for JSON dumps, at most DUMP_BUF_KEEP bytes */
        size_t buf_size;
        struct conn *next_free;
};

struct sqlite_store {
        pthread_mutex_t pool_mu;
        pthread_cond_t pool_cv;
        struct conn *free_list;
        unsigned n_free;
        pthread_mutex_t write_mu;
        /* Change counters shared with every process that opens this database (the daemon,
         * `ctxhookd apikey create`): two 64-bit words in the file "<db>-gen", mapped. */
        uint64_t *gen;
        unsigned n_conns;
        struct conn conns[];
};

/* The session a write or read is about, as found at the start of the transaction. */
struct session_row {
        bool exists; /* and is live */
        int64_t etag;
        int64_t ttl_s; /* effective */
};

static int sql_errno(int rc)
{
        switch (rc & 0xff) {
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_TOOBIG:
                return -EINVAL;
        default:
                return -EIO;
        }
}

/* 1 for a row, 0 when done, or a negative errno code. */
static int step(sqlite3_stmt *st)
{
        int rc = sqlite3_step(st);

        if (rc == SQLITE_ROW)
                return 1;
        if (rc == SQLITE_DONE)
                return 0;
        return sql_errno(rc);
}

/* Steps a statement that returns no rows and resets it. */
static int run(sqlite3_stmt *st)
{
        int rc = step(st);

        sqlite3_reset(st);
        return rc < 0 ? rc : 0;
}

static void stmt_resetp(sqlite3_stmt **st)
{
        if (*st)
                sqlite3_reset(*st);
}
#define _cleanup_reset_ _cleanup_(stmt_resetp)

/* Binds parameters 1, 2, … by a type string: 't' NUL-terminated text, 'T' text + size_t length,
 * 'i' int64_t, 'n' NULL, 'b' blob + size_t length. Texts and blobs are bound without copying:
 * they must outlive the statement's next reset. */
static int bind(sqlite3_stmt *st, const char *types, ...)
{
        va_list ap;
        int rc = SQLITE_OK;

        va_start(ap, types);
        for (int i = 1; types[i - 1] && rc == SQLITE_OK; i++) {
                const char *p;
                size_t len;

                switch (types[i - 1]) {
                case 't':
                        rc = sqlite3_bind_text(st, i, va_arg(ap, const char *), -1, SQLITE_STATIC);
                        break;
                case 'T':
                        p = va_arg(ap, const char *);
                        len = va_arg(ap, size_t);
                        rc = sqlite3_bind_text64(st, i, p, len, SQLITE_STATIC, SQLITE_UTF8);
                        break;
                case 'i':
                        rc = sqlite3_bind_int64(st, i, va_arg(ap, int64_t));
                        break;
                case 'n':
                        rc = sqlite3_bind_null(st, i);
                        break;
                case 'b':
                        p = va_arg(ap, const void *);
                        len = va_arg(ap, size_t);
                        rc = sqlite3_bind_blob64(st, i, p, len, SQLITE_STATIC);
                        break;
                default:
                        rc = SQLITE_MISUSE;
                }
        }
        va_end(ap);
        return rc == SQLITE_OK ? 0 : sql_errno(rc);
}

/* A fresh 64-bit ETag value. Random rather than counted, so a deleted and recreated thing never
 * gets back a tag a client still holds; SQLite reseeds its generator in a forked child. */
static uint64_t new_tag(void)
{
        uint64_t tag;

        sqlite3_randomness(sizeof(tag), &tag);
        return tag;
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

/* ---- Connection pool ---- */

static struct conn *conn_get(struct sqlite_store *ss)
{
        struct conn *c;

        pthread_mutex_lock(&ss->pool_mu);
        while (!ss->free_list)
                pthread_cond_wait(&ss->pool_cv, &ss->pool_mu);
        c = ss->free_list;
        ss->free_list = c->next_free;
        ss->n_free--;
        pthread_mutex_unlock(&ss->pool_mu);
        return c;
}

static void conn_put(struct conn *c)
{
        struct sqlite_store *ss = c->owner;

        pthread_mutex_lock(&ss->pool_mu);
        c->next_free = ss->free_list;
        ss->free_list = c;
        ss->n_free++;
        /* Broadcast: store_close may be waiting for the pool to fill, besides callers. */
        pthread_cond_broadcast(&ss->pool_cv);
        pthread_mutex_unlock(&ss->pool_mu);
}

static void conn_putp(struct conn **c)
{
        if (*c)
                conn_put(*c);
}
#define _cleanup_conn_ _cleanup_(conn_putp)

/* ---- Transactions ---- */

static void rollback(struct conn *c)
{
        /* SQLite rolls back by itself after some errors (IOERR, FULL, NOMEM, BUSY in COMMIT). */
        if (!sqlite3_get_autocommit(c->db))
                (void)run(c->st[ST_ROLLBACK]);
}

/* Starts a write transaction, holding the process-wide write lock until write_end(). */
static int write_begin(struct conn *c)
{
        int rc;

        pthread_mutex_lock(&c->owner->write_mu);
        rc = run(c->st[ST_BEGIN_WRITE]);
        if (rc < 0) {
                rollback(c);
                pthread_mutex_unlock(&c->owner->write_mu);
        }
        return rc;
}

/* Commits when rc ≥ 0, else (or when the commit fails) rolls back; returns the outcome. */
static int write_end(struct conn *c, int rc)
{
        if (rc >= 0) {
                int r = run(c->st[ST_COMMIT]);
                if (r < 0)
                        rc = r;
        }
        if (rc < 0)
                rollback(c);
        pthread_mutex_unlock(&c->owner->write_mu);
        return rc;
}

/* Read transactions give multi-statement reads one snapshot (an ETag that fits the data). */
static int read_begin(struct conn *c)
{
        return run(c->st[ST_BEGIN_READ]);
}

static int read_end(struct conn *c, int rc)
{
        int r = run(c->st[ST_COMMIT]);

        if (r < 0)
                rollback(c);
        return rc < 0 ? rc : r;
}

/* ---- Shared steps ---- */

/* Dumps value as compact JSON; *ret_text points into the connection's buffer or, for a large
 * value, into *ret_owned, which the caller frees. */
static int dump_value(struct conn *c, const json_t *value, const char **ret_text, size_t *ret_len,
                      char **ret_owned)
{
        const size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
        size_t n;
        char *big;

        n = json_dumpb(value, c->buf, c->buf_size, flags);
        if (n == 0)
                return -EINVAL; /* not encodable (a reference cycle) */
        if (n <= c->buf_size) {
                *ret_text = c->buf;
                *ret_len = n;
                *ret_owned = NULL;
                return 0;
        }
        if (n <= DUMP_BUF_KEEP) {
                size_t size = 1024;
                char *grown;

                while (size < n)
                        size *= 2;
                grown = realloc(c->buf, size);
                if (!grown)
                        return -ENOMEM;
                c->buf = grown;
                c->buf_size = size;
                big = NULL;
        } else {
                big = malloc(n);
                if (!big)
                        return -ENOMEM;
        }
        if (json_dumpb(value, big ? big : c->buf, n, flags) != n) {
                free(big);
                return -EINVAL;
        }
        *ret_text = big ? big : c->buf;
        *ret_len = n;
        *ret_owned = big;
        return 0;
}

static int decode_value(const char *text, size_t len, json_t **ret)
{
        json_t *v = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);

        if (!v)
                return -EIO; /* only what this file wrote is stored: corrupted */
        *ret = v;
        return 0;
}

static int ns_ensure(struct conn *c, const char *account, const char *ns, int64_t now_ms)
{
        sqlite3_stmt *st = c->st[ST_NS_ENSURE];
        int rc = bind(st, "tti", account, ns, now_ms);

        return rc < 0 ? rc : run(st);
}

static int props_delete_all(struct conn *c, const char *account, const char *ns, const char *sid)
{
        sqlite3_stmt *st = c->st[ST_PROPS_DEL];
        int rc = bind(st, "ttt", account, ns, sid);

        return rc < 0 ? rc : run(st);
}

static int session_delete_row(struct conn *c, const char *account, const char *ns, const char *sid)
{
        sqlite3_stmt *st = c->st[ST_SESS_DEL];
        int rc;

        rc = props_delete_all(c, account, ns, sid);
        if (rc < 0)
                return rc;
        rc = bind(st, "ttt", account, ns, sid);
        return rc < 0 ? rc : run(st);
}

/* Looks the session up. An expired one counts as missing; with purge (inside a write
 * transaction) it is also deleted, so a write starts it afresh with a new creation time. */
static int session_load(struct conn *c, const char *account, const char *ns, const char *sid,
                        int64_t now_ms, bool purge, struct session_row *ret)
{
        sqlite3_stmt *st = c->st[ST_SESS_GET];
        struct session_row row = {0};
        int64_t updated;
        int rc;

        rc = bind(st, "ttt", account, ns, sid);
        if (rc < 0)
                return rc;
        rc = step(st);
        if (rc <= 0) {
                sqlite3_reset(st);
                if (rc < 0)
                        return rc;
                *ret = row;
                return 0;
        }
        row.etag = sqlite3_column_int64(st, 0);
        updated = sqlite3_column_int64(st, 1);
        row.ttl_s = sqlite3_column_int64(st, 2);
        sqlite3_reset(st);
        row.exists = store_is_live(updated, row.ttl_s, now_ms);
        if (!row.exists && purge) {
                rc = session_delete_row(c, account, ns, sid);
                if (rc < 0)
                        return rc;
        }
        *ret = row;
        return 0;
}

/* Records a write to the session: creates it or moves its updated_at and ETag on. */
static int session_written(struct conn *c, const char *account, const char *ns, const char *sid,
                           const struct session_row *row, int64_t tag, int64_t now_ms)
{
        sqlite3_stmt *st;
        int rc;

        if (row->exists) {
                st = c->st[ST_SESS_TOUCH];
                rc = bind(st, "tttii", account, ns, sid, now_ms, tag);
        } else {
                st = c->st[ST_SESS_INSERT];
                rc = bind(st, "tttini", account, ns, sid, now_ms, tag);
        }
        return rc < 0 ? rc : run(st);
}

struct prop_row {
        bool exists; /* and is live */
        int64_t etag;
};

static int prop_load(struct conn *c, const char *account, const char *ns, const char *sid,
                     const char *name, const struct session_row *sess, int64_t now_ms,
                     struct prop_row *ret)
{
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_PROP_ROW];
        struct prop_row row = {0};
        int rc;

        if (sess->exists) {
                rc = bind(st, "tttt", account, ns, sid, name);
                if (rc < 0)
                        return rc;
                rc = step(st);
                if (rc < 0)
                        return rc;
                if (rc > 0) {
                        row.etag = sqlite3_column_int64(st, 1);
                        row.exists =
                            store_is_live(sqlite3_column_int64(st, 2), sess->ttl_s, now_ms);
                }
        }
        *ret = row;
        return 0;
}

static int prop_upsert(struct conn *c, const char *account, const char *ns, const char *sid,
                       const char *name, size_t name_len, const json_t *value, int64_t tag,
                       int64_t now_ms)
{
        sqlite3_stmt *st = c->st[ST_PROP_UPSERT];
        _cleanup_free_ char *owned = NULL;
        const char *text;
        size_t len;
        int rc;

        rc = dump_value(c, value, &text, &len, &owned);
        if (rc < 0)
                return rc;
        rc = bind(st, "tttTTii", account, ns, sid, name, name_len, text, len, now_ms, tag);
        if (rc < 0) {
                sqlite3_reset(st);
                return rc;
        }
        return run(st);
}

/* ---- Open, migrate, close ---- */

static int exec_sql(sqlite3 *db, const char *sql, const char *path, const char *what,
                    struct ch_error *err)
{
        char *msg = NULL;
        int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

        if (rc != SQLITE_OK) {
                ch_error_set(err, "store %s: %s failed: %s", path, what,
                             msg ? msg : sqlite3_errstr(rc));
                sqlite3_free(msg);
                return sql_errno(rc);
        }
        return 0;
}

static int pragma_int(sqlite3 *db, const char *sql, int *ret)
{
        sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sql_errno(rc);
        rc = step(st);
        if (rc > 0)
                *ret = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
        return rc > 0 ? 0 : rc < 0 ? rc : -EIO;
}

/* Applies the missing migrations in one IMMEDIATE transaction, so two processes opening a new
 * file at once serialise here and the second finds the work done. */
static int migrate(sqlite3 *db, const char *path, struct ch_error *err)
{
        char sql[64];
        int version = 0, rc;

        rc = exec_sql(db, "BEGIN IMMEDIATE", path, "locking the database", err);
        if (rc < 0)
                return rc;
        rc = pragma_int(db, "PRAGMA user_version", &version);
        if (rc < 0) {
                ch_error_set(err, "store %s: cannot read the schema version: %s", path,
                             sqlite3_errmsg(db));
                goto fail;
        }
        if (version > SCHEMA_VERSION) {
                ch_error_set(err,
                             "store %s has schema version %d, newer than this ctxhookd "
                             "understands (%d); refusing to open it (upgrade ctxhookd)",
                             path, version, SCHEMA_VERSION);
                rc = -EPROTONOSUPPORT;
                goto fail;
        }
        for (int v = version; v < SCHEMA_VERSION; v++) {
                char what[64];

                snprintf(what, sizeof(what), "migration to schema version %d", v + 1);
                rc = exec_sql(db, migrations[v], path, what, err);
                if (rc < 0)
                        goto fail;
        }
        if (version < SCHEMA_VERSION) {
                snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", SCHEMA_VERSION);
                rc = exec_sql(db, sql, path, "setting the schema version", err);
                if (rc < 0)
                        goto fail;
        }
        return exec_sql(db, "COMMIT", path, "committing the migration", err);
fail:
        if (!sqlite3_get_autocommit(db))
                sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
}

static void conn_close(struct conn *c)
{
        for (size_t i = 0; i < ST__MAX; i++)
                sqlite3_finalize(c->st[i]);
        sqlite3_close(c->db);
        free(c->buf);
        *c = (struct conn){0};
}

static int conn_open(struct sqlite_store *ss, struct conn *c, const struct store_options *opts,
                     bool first, struct ch_error *err)
{
        const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
        sqlite3_stmt *st = NULL;
        const char *mode;
        int rc;

        c->owner = ss;
        rc = sqlite3_open_v2(opts->path, &c->db, flags, NULL);
        if (rc != SQLITE_OK) {
                ch_error_set(err, "cannot open store %s: %s", opts->path,
                             c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
                return sql_errno(rc);
        }
        /* SQLite silently falls back to read-only for a file it may not write. */
        if (sqlite3_db_readonly(c->db, "main") != 0) {
                ch_error_set(err, "cannot open store %s: the file is not writable", opts->path);
                return -EACCES;
        }
        sqlite3_busy_timeout(c->db, opts->busy_timeout_ms);
        rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
        if (!mode || strcmp(mode, "wal") != 0) {
                ch_error_set(err, "cannot open store %s: cannot switch to WAL mode: %s", opts->path,
                             mode ? mode : sqlite3_errmsg(c->db));
                sqlite3_finalize(st);
                return -EIO;
        }
        sqlite3_finalize(st);
        /* Reads through a memory map instead of pread(): each pooled connection has its own
         * page cache, which every commit by another connection invalidates, so without the
         * map a busy writer makes every connection re-read pages with system calls. */
        rc = exec_sql(c->db,
                      "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; "
                      "PRAGMA mmap_size = 67108864;",
                      opts->path, "setting pragmas", err);
        if (rc < 0)
                return rc;
        if (first) {
                rc = migrate(c->db, opts->path, err);
                if (rc < 0)
                        return rc;
        }
        for (size_t i = 0; i < ST__MAX; i++) {
                rc = sqlite3_prepare_v3(c->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                        &c->st[i], NULL);
                if (rc != SQLITE_OK) {
                        ch_error_set(err, "store %s: cannot prepare statement %zu: %s", opts->path,
                                     i, sqlite3_errmsg(c->db));
                        return sql_errno(rc);
                }
        }
        return 0;
}

#define GEN_FILE_SIZE (2 * sizeof(uint64_t))

/* Maps "<path>-gen", creating it (zeroed) when missing. Processes that open the same database
 * map the same file, so a bump by one is seen by all at the cost of one memory read. */
static int gen_map(const char *path, uint64_t **ret, struct ch_error *err)
{
        char gen_path[4096];
        struct stat st;
        void *p;
        int fd, rc = 0;

        if (snprintf(gen_path, sizeof(gen_path), "%s-gen", path) >= (int)sizeof(gen_path)) {
                ch_error_set(err, "store %s: path too long", path);
                return -ENAMETOOLONG;
        }
        fd = open(gen_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
                rc = -errno;
                ch_error_set(err, "store %s: cannot open %s: %s", path, gen_path, strerror(-rc));
                return rc;
        }
        if (fstat(fd, &st) < 0 ||
            (st.st_size < (off_t)GEN_FILE_SIZE && ftruncate(fd, (off_t)GEN_FILE_SIZE) < 0)) {
                rc = -errno;
                ch_error_set(err, "store %s: cannot size %s: %s", path, gen_path, strerror(-rc));
                close(fd);
                return rc;
        }
        p = mmap(NULL, GEN_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        rc = p == MAP_FAILED ? -errno : 0;
        close(fd);
        if (rc < 0) {
                ch_error_set(err, "store %s: cannot map %s: %s", path, gen_path, strerror(-rc));
                return rc;
        }
        *ret = p;
        return 0;
}

static uint64_t sqlite_gen_load(void *impl, enum store_gen which)
{
        struct sqlite_store *ss = impl;

        return __atomic_load_n(&ss->gen[which], __ATOMIC_SEQ_CST);
}

static void sqlite_gen_bump(void *impl, enum store_gen which)
{
        struct sqlite_store *ss = impl;

        __atomic_add_fetch(&ss->gen[which], 1, __ATOMIC_SEQ_CST);
}

static void sqlite_close(void *impl)
{
        struct sqlite_store *ss = impl;

        if (!ss)
                return;
        /* Wait for the calls in progress to hand their connections back. */
        pthread_mutex_lock(&ss->pool_mu);
        while (ss->n_free < ss->n_conns)
                pthread_cond_wait(&ss->pool_cv, &ss->pool_mu);
        pthread_mutex_unlock(&ss->pool_mu);
        for (unsigned i = 0; i < ss->n_conns; i++)
                conn_close(&ss->conns[i]);
        if (ss->gen)
                munmap(ss->gen, GEN_FILE_SIZE);
        pthread_mutex_destroy(&ss->pool_mu);
        pthread_cond_destroy(&ss->pool_cv);
        pthread_mutex_destroy(&ss->write_mu);
        free(ss);
}

static int sqlite_open(const struct store_options *opts, void **ret_impl, struct ch_error *err)
{
        struct sqlite_store *ss;
        int rc = 0;

        if (!sqlite3_threadsafe()) {
                ch_error_set(err, "store %s: this SQLite library is not thread-safe", opts->path);
                return -ENOTSUP;
        }
        ss = calloc(1, sizeof(*ss) + opts->pool_size * sizeof(struct conn));
        if (!ss) {
                ch_error_set(err, "store %s: out of memory", opts->path);
                return -ENOMEM;
        }
        pthread_mutex_init(&ss->pool_mu, NULL);
        pthread_cond_init(&ss->pool_cv, NULL);
        pthread_mutex_init(&ss->write_mu, NULL);
        for (unsigned i = 0; i < opts->pool_size; i++) {
                struct conn *c = &ss->conns[i];

                rc = conn_open(ss, c, opts, i == 0, err);
                ss->n_conns++;
                if (rc < 0)
                        break;
                c->next_free = ss->free_list;
                ss->free_list = c;
                ss->n_free++;
        }
        if (rc >= 0)
                rc = gen_map(opts->path, &ss->gen, err);
        if (rc < 0) {
                /* The failed connection is not in the free list; count it in for close. */
                ss->n_free = ss->n_conns;
                sqlite_close(ss);
                return rc;
        }
        *ret_impl = ss;
        return 0;
}

static int sqlite_probe(const struct store_options *opts, int *ret_version, struct ch_error *err)
{
        sqlite3 *db = NULL;
        int rc, version = 0;

        if (access(opts->path, F_OK) < 0 && errno == ENOENT) {
                *ret_version = 0; /* store_open will create it */
                return 0;
        }
        rc = sqlite3_open_v2(opts->path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK ? 0 : -EIO;
        if (rc == 0)
                rc = pragma_int(db, "PRAGMA user_version", &version);
        if (rc < 0) {
                ch_error_set(err, "cannot read store %s: %s", opts->path,
                             db ? sqlite3_errmsg(db) : "out of memory");
                sqlite3_close(db);
                return -EIO;
        }
        sqlite3_close(db);
        if (version > SCHEMA_VERSION) {
                ch_error_set(err,
                             "store %s: schema version %d is newer than this ctxhookd knows (%d)",
                             opts->path, version, SCHEMA_VERSION);
                return -EPROTO;
        }
        *ret_version = version;
        return 0;
}

static int sqlite_ping(void *impl, char *why, size_t why_size)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_USER_VERSION];

        if (step(st) > 0)
                return 0;
        if (why)
                snprintf(why, why_size, "%s", sqlite3_errmsg(c->db));
        return -EIO;
}

static int sqlite_schema_version(void *impl, int *ret_version)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_USER_VERSION];
        int rc = step(st);

        if (rc <= 0)
                return rc < 0 ? rc : -EIO;
        *ret_version = sqlite3_column_int(st, 0);
        return 0;
}

/* ---- API keys ---- */

static int sqlite_key_set(void *impl, const char *account,
                          const unsigned char hash[STORE_KEY_HASH_LEN], int64_t now_ms)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        sqlite3_stmt *st = c->st[ST_KEY_SET];
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        rc = bind(st, "tbi", account, hash, (size_t)STORE_KEY_HASH_LEN, now_ms);
        if (rc >= 0)
                rc = run(st);
        return write_end(c, rc);
}

static int sqlite_key_get(void *impl, const char *account,
                          unsigned char ret_hash[STORE_KEY_HASH_LEN])
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_KEY_GET];
        int rc;

        rc = bind(st, "t", account);
        if (rc < 0)
                return rc;
        rc = step(st);
        if (rc <= 0)
                return rc < 0 ? rc : -ENOENT;
        if (sqlite3_column_bytes(st, 0) != STORE_KEY_HASH_LEN)
                return -EIO;
        memcpy(ret_hash, sqlite3_column_blob(st, 0), STORE_KEY_HASH_LEN);
        return 0;
}

/* ---- Namespaces ---- */

static int sqlite_ns_create(void *impl, const char *account, const char *ns, int64_t ttl_s,
                            int64_t now_ms)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        sqlite3_stmt *st = c->st[ST_NS_SET_TTL];
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        if (ttl_s < 0) {
                rc = ns_ensure(c, account, ns, now_ms);
        } else {
                rc = bind(st, "ttii", account, ns, now_ms, ttl_s);
                if (rc >= 0)
                        rc = run(st);
        }
        return write_end(c, rc);
}

static int sqlite_ns_list(void *impl, const char *account, json_t **ret_array)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_NS_LIST];
        json_t *a;
        int rc;

        rc = bind(st, "t", account);
        if (rc < 0)
                return rc;
        a = json_array();
        if (!a)
                return -ENOMEM;
        for (;;) {
                json_t *o;

                rc = step(st);
                if (rc <= 0)
                        break;
                o = store_ns_item((const char *)sqlite3_column_text(st, 0),
                                  (size_t)sqlite3_column_bytes(st, 0), sqlite3_column_int64(st, 1),
                                  sqlite3_column_int64(st, 2));
                if (!o || json_array_append_new(a, o) < 0) {
                        rc = -ENOMEM;
                        break;
                }
        }
        if (rc < 0) {
                json_decref(a);
                return rc;
        }
        *ret_array = a;
        return 0;
}

static int ns_delete_rows(struct conn *c, const char *account, const char *ns)
{
        static const enum stmt_id order[] = {ST_NS_DEL_PROPS, ST_NS_DEL_SESSIONS, ST_NS_DEL};

        for (size_t i = 0; i < ELEMENTSOF(order); i++) {
                sqlite3_stmt *st = c->st[order[i]];
                int rc = bind(st, "tt", account, ns);
                if (rc >= 0)
                        rc = run(st);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

static int sqlite_ns_delete(void *impl, const char *account, const char *ns)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        return write_end(c, ns_delete_rows(c, account, ns));
}

/* ---- Properties ---- */

/* Adds the live properties of a session (all, or those named in include) to obj. */
static int props_collect(struct conn *c, const char *account, const char *ns, const char *sid,
                         const struct session_row *sess, const char *const *include, int64_t now_ms,
                         json_t *obj)
{
        sqlite3_stmt *st;
        json_t *v;
        int rc;

        if (!sess->exists)
                return 0;
        if (include) {
                st = c->st[ST_PROP_ROW];
                for (const char *const *name = include; *name; name++) {
                        rc = bind(st, "tttt", account, ns, sid, *name);
                        if (rc >= 0)
                                rc = step(st);
                        if (rc > 0 &&
                            store_is_live(sqlite3_column_int64(st, 2), sess->ttl_s, now_ms)) {
                                rc = decode_value((const char *)sqlite3_column_text(st, 0),
                                                  (size_t)sqlite3_column_bytes(st, 0), &v);
                                if (rc >= 0 && json_object_set_new(obj, *name, v) < 0)
                                        rc = -EIO;
                        }
                        sqlite3_reset(st);
                        if (rc < 0)
                                return rc;
                }
                return 0;
        }
        st = c->st[ST_PROPS_ALL];
        rc = bind(st, "tttii", account, ns, sid, sess->ttl_s, now_ms);
        while (rc >= 0) {
                rc = step(st);
                if (rc <= 0)
                        break;
                rc = decode_value((const char *)sqlite3_column_text(st, 1),
                                  (size_t)sqlite3_column_bytes(st, 1), &v);
                if (rc >= 0 && json_object_setn_new(obj, (const char *)sqlite3_column_text(st, 0),
                                                    (size_t)sqlite3_column_bytes(st, 0), v) < 0)
                        rc = -EIO;
        }
        sqlite3_reset(st);
        return rc;
}

static int sqlite_props_get(void *impl, const char *account, const char *ns, const char *sid,
                            const char *const *include, int64_t now_ms, json_t **ret_object,
                            char ret_etag[STORE_ETAG_MAX])
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        struct session_row sess;
        json_t *obj;
        int rc;

        obj = json_object();
        if (!obj)
                return -ENOMEM;
        rc = read_begin(c);
        if (rc < 0) {
                json_decref(obj);
                return rc;
        }
        rc = session_load(c, account, ns, sid, now_ms, false, &sess);
        if (rc >= 0)
                rc = props_collect(c, account, ns, sid, &sess, include, now_ms, obj);
        rc = read_end(c, rc);
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

/* The hot path (GET of one property): one prepared SELECT and one copy. */
static int sqlite_prop_get(void *impl, const char *account, const char *ns, const char *sid,
                           const char *name, int64_t now_ms, char **ret_json, size_t *ret_len,
                           char ret_etag[STORE_ETAG_MAX], int64_t *ret_expires_ms)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_PROP_GET];
        int64_t updated_ms, ttl_s;
        const void *text;
        size_t len;
        char *copy;
        int rc;

        rc = bind(st, "tttt", account, ns, sid, name);
        if (rc < 0)
                return rc;
        rc = step(st);
        if (rc <= 0)
                return rc < 0 ? rc : -ENOENT;
        updated_ms = sqlite3_column_int64(st, 2);
        ttl_s = sqlite3_column_int64(st, 3);
        if (!store_is_live(updated_ms, ttl_s, now_ms))
                return -ENOENT;
        text = sqlite3_column_text(st, 0);
        len = (size_t)sqlite3_column_bytes(st, 0);
        if (!text)
                return -ENOMEM;
        copy = malloc(len + 1);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, text, len + 1);
        tag_out(sqlite3_column_int64(st, 1), ret_etag);
        *ret_json = copy;
        if (ret_len)
                *ret_len = len;
        *ret_expires_ms = ttl_s > 0 ? updated_ms + ttl_s * 1000 : 0;
        return 0;
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

        rc = ns_ensure(c, account, ns, now_ms);
        if (rc < 0)
                return rc;
        rc = session_load(c, account, ns, sid, now_ms, true, &sess);
        if (rc < 0)
                return rc;
        if (if_match && (!sess.exists || !tag_matches(if_match, sess.etag)))
                return -ECANCELED;
        tag = (int64_t)new_tag();
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

static int sqlite_props_merge(void *impl, const char *account, const char *ns, const char *sid,
                              const json_t *props, const char *if_match, int64_t now_ms,
                              char ret_etag[STORE_ETAG_MAX])
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int64_t tag = 0;
        int rc;

        if (!json_is_object(props))
                return -EINVAL;
        rc = write_begin(c);
        if (rc < 0)
                return rc;
        rc = write_end(c, props_merge_tx(c, account, ns, sid, props, if_match, now_ms, &tag));
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

        rc = ns_ensure(c, account, ns, now_ms);
        if (rc < 0)
                return rc;
        rc = session_load(c, account, ns, sid, now_ms, true, &sess);
        if (rc < 0)
                return rc;
        if (if_match) {
                rc = prop_load(c, account, ns, sid, name, &sess, now_ms, &prop);
                if (rc < 0)
                        return rc;
                if (!prop.exists || !tag_matches(if_match, prop.etag))
                        return -ECANCELED;
        }
        tag = (int64_t)new_tag();
        rc = session_written(c, account, ns, sid, &sess, tag, now_ms);
        if (rc < 0)
                return rc;
        rc = prop_upsert(c, account, ns, sid, name, strlen(name), value, tag, now_ms);
        if (rc < 0)
                return rc;
        *ret_tag = tag;
        return 0;
}

static int sqlite_prop_put(void *impl, const char *account, const char *ns, const char *sid,
                           const char *name, const json_t *value, const char *if_match,
                           int64_t now_ms, char ret_etag[STORE_ETAG_MAX])
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int64_t tag = 0;
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        rc = write_end(c, prop_put_tx(c, account, ns, sid, name, value, if_match, now_ms, &tag));
        if (rc < 0)
                return rc;
        tag_out(tag, ret_etag);
        return 0;
}

static int prop_delete_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                          const char *name, const char *if_match, int64_t now_ms)
{
        sqlite3_stmt *st = c->st[ST_PROP_DEL];
        struct session_row sess;
        struct prop_row prop;
        int rc;

        rc = session_load(c, account, ns, sid, now_ms, true, &sess);
        if (rc < 0)
                return rc;
        rc = prop_load(c, account, ns, sid, name, &sess, now_ms, &prop);
        if (rc < 0)
                return rc;
        if (if_match && (!prop.exists || !tag_matches(if_match, prop.etag)))
                return -ECANCELED;
        if (!sess.exists)
                return 0;
        rc = bind(st, "tttt", account, ns, sid, name);
        if (rc >= 0)
                rc = run(st);
        if (rc < 0)
                return rc;
        /* Removing an already expired property changes nothing anyone could see. */
        if (!prop.exists)
                return 0;
        return session_written(c, account, ns, sid, &sess, (int64_t)new_tag(), now_ms);
}

static int sqlite_prop_delete(void *impl, const char *account, const char *ns, const char *sid,
                              const char *name, const char *if_match, int64_t now_ms)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        return write_end(c, prop_delete_tx(c, account, ns, sid, name, if_match, now_ms));
}

static int props_clear_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                          const char *if_match, int64_t now_ms)
{
        struct session_row sess;
        int rc;

        rc = session_load(c, account, ns, sid, now_ms, true, &sess);
        if (rc < 0)
                return rc;
        if (if_match && (!sess.exists || !tag_matches(if_match, sess.etag)))
                return -ECANCELED;
        if (!sess.exists)
                return 0;
        rc = props_delete_all(c, account, ns, sid);
        if (rc < 0)
                return rc;
        return session_written(c, account, ns, sid, &sess, (int64_t)new_tag(), now_ms);
}

static int sqlite_props_clear(void *impl, const char *account, const char *ns, const char *sid,
                              const char *if_match, int64_t now_ms)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        return write_end(c, props_clear_tx(c, account, ns, sid, if_match, now_ms));
}

/* ---- Sessions ---- */

enum page_shape { PAGE_IDS, PAGE_PROPS, PAGE_LIST };

/* Appends the session the statement is positioned on to out, in the requested shape. */
static int page_item(struct conn *c, sqlite3_stmt *st, const char *account, const char *ns,
                     int64_t now_ms, enum page_shape shape, json_t *out)
{
        const char *sid = (const char *)sqlite3_column_text(st, 0);
        size_t sid_len = (size_t)sqlite3_column_bytes(st, 0);
        json_t *item;
        int rc;

        if (!sid)
                return -ENOMEM;
        if (shape == PAGE_IDS) {
                item = json_stringn(sid, sid_len);
        } else if (shape == PAGE_LIST) {
                item = store_session_item(sid, sid_len, sqlite3_column_int64(st, 1),
                                          sqlite3_column_int64(st, 2));
        } else {
                struct session_row sess = {.exists = true, .ttl_s = sqlite3_column_int64(st, 2)};
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

/* The live sessions of a namespace, "__default__" first, then by id, as one of three shapes.
 * The default session is looked up on its own so the rest come straight from the primary key
 * in order, without sorting the whole namespace for every page. limit -1: no limit. */
static int sessions_page(struct conn *c, const char *account, const char *ns, int64_t offset,
                         int64_t limit, int64_t now_ms, enum page_shape shape, json_t *out)
{
        sqlite3_stmt *st = c->st[ST_SESS_PAGE_DEFAULT];
        int rc;

        rc = bind(st, "tti", account, ns, now_ms);
        if (rc >= 0)
                rc = step(st);
        if (rc > 0) {
                if (offset > 0) {
                        offset--;
                } else {
                        rc = page_item(c, st, account, ns, now_ms, shape, out);
                        if (limit > 0)
                                limit--;
                }
        }
        sqlite3_reset(st);
        if (rc < 0 || limit == 0)
                return rc < 0 ? rc : 0;

        st = c->st[ST_SESS_PAGE];
        rc = bind(st, "ttiii", account, ns, now_ms, limit, offset);
        while (rc >= 0) {
                rc = step(st);
                if (rc <= 0)
                        break;
                rc = page_item(c, st, account, ns, now_ms, shape, out);
        }
        sqlite3_reset(st);
        return rc;
}

static int sessions_read(void *impl, const char *account, const char *ns, int64_t offset,
                         int64_t limit, int64_t now_ms, enum page_shape shape, json_t **ret_array)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        json_t *a;
        int rc;

        a = json_array();
        if (!a)
                return -ENOMEM;
        rc = read_begin(c);
        if (rc >= 0)
                rc = read_end(c, sessions_page(c, account, ns, offset, limit, now_ms, shape, a));
        if (rc < 0) {
                json_decref(a);
                return rc;
        }
        *ret_array = a;
        return 0;
}

static int sqlite_session_ids(void *impl, const char *account, const char *ns, int64_t offset,
                              int64_t limit, int64_t now_ms, json_t **ret_array)
{
        return sessions_read(impl, account, ns, offset, limit, now_ms, PAGE_IDS, ret_array);
}

static int sqlite_session_props(void *impl, const char *account, const char *ns, int64_t offset,
                                int64_t limit, int64_t now_ms, json_t **ret_array)
{
        return sessions_read(impl, account, ns, offset, limit, now_ms, PAGE_PROPS, ret_array);
}

static int sqlite_session_list(void *impl, const char *account, const char *ns, int64_t now_ms,
                               json_t **ret_array)
{
        return sessions_read(impl, account, ns, 0, -1, now_ms, PAGE_LIST, ret_array);
}

static int session_create_tx(struct conn *c, const char *account, const char *ns, const char *sid,
                             int64_t ttl_s, int64_t now_ms)
{
        struct session_row sess;
        sqlite3_stmt *st;
        int rc;

        rc = ns_ensure(c, account, ns, now_ms);
        if (rc < 0)
                return rc;
        rc = session_load(c, account, ns, sid, now_ms, true, &sess);
        if (rc < 0)
                return rc;
        if (sess.exists) {
                st = c->st[ST_SESS_SET_TTL];
                rc = ttl_s >= 0 ? bind(st, "tttii", account, ns, sid, now_ms, ttl_s)
                                : bind(st, "tttin", account, ns, sid, now_ms);
        } else {
                st = c->st[ST_SESS_INSERT];
                rc = ttl_s >= 0
                         ? bind(st, "tttiii", account, ns, sid, now_ms, ttl_s, (int64_t)new_tag())
                         : bind(st, "tttini", account, ns, sid, now_ms, (int64_t)new_tag());
        }
        if (rc < 0) {
                sqlite3_reset(st);
                return rc;
        }
        return run(st);
}

static int sqlite_session_create(void *impl, const char *account, const char *ns, const char *sid,
                                 int64_t ttl_s, int64_t now_ms)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        return write_end(c, session_create_tx(c, account, ns, sid, ttl_s, now_ms));
}

static int sqlite_session_delete(void *impl, const char *account, const char *ns, const char *sid)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        return write_end(c, session_delete_row(c, account, ns, sid));
}

/* ---- Sweeping ---- */

struct sweep_key {
        char account[STORE_ACCOUNT_MAX + 1];
        char ns[STORE_NAMESPACE_MAX + 1];
        char sid[STORE_NAME_MAX + 1];
};

static void copy_column(sqlite3_stmt *st, int col, char *out, size_t size)
{
        const char *text = (const char *)sqlite3_column_text(st, col);

        snprintf(out, size, "%s", text ? text : "");
}

/* Collects up to SWEEP_BATCH sessions that have something expired, after *from (NULL: from the
 * start). A plain read: WAL readers do not block the writers meanwhile. */
static int sweep_scan(struct conn *c, const struct sweep_key *from, int64_t now_ms,
                      struct sweep_key *keys, size_t *ret_n)
{
        _cleanup_reset_ sqlite3_stmt *st = c->st[from ? ST_SWEEP_SCAN_NEXT : ST_SWEEP_SCAN_FIRST];
        size_t n = 0;
        int rc;

        if (from)
                rc = bind(st, "iittt", now_ms, (int64_t)SWEEP_BATCH, from->account, from->ns,
                          from->sid);
        else
                rc = bind(st, "ii", now_ms, (int64_t)SWEEP_BATCH);
        while (rc >= 0 && n < SWEEP_BATCH) {
                rc = step(st);
                if (rc <= 0)
                        break;
                copy_column(st, 0, keys[n].account, sizeof(keys[n].account));
                copy_column(st, 1, keys[n].ns, sizeof(keys[n].ns));
                copy_column(st, 2, keys[n].sid, sizeof(keys[n].sid));
                n++;
        }
        if (rc < 0)
                return rc;
        *ret_n = n;
        return 0;
}

/* Deletes what is expired in the given sessions. The DELETEs re-check expiry themselves, so a
 * write that happened since the scan keeps its data. */
static int sweep_delete(struct conn *c, const struct sweep_key *keys, size_t n, int64_t now_ms,
                        int64_t *deleted)
{
        static const enum stmt_id order[] = {ST_SWEEP_DEL_PROPS, ST_SWEEP_DEL_SESSION};
        int64_t count = 0;

        for (size_t i = 0; i < n; i++) {
                for (size_t j = 0; j < ELEMENTSOF(order); j++) {
                        sqlite3_stmt *st = c->st[order[j]];
                        int rc = bind(st, "ttti", keys[i].account, keys[i].ns, keys[i].sid, now_ms);
                        if (rc >= 0)
                                rc = run(st);
                        if (rc < 0)
                                return rc;
                        count += sqlite3_changes(c->db);
                }
        }
        *deleted += count;
        return 0;
}

static int sqlite_sweep(void *impl, int64_t now_ms, int64_t *ret_deleted)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
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
                rc = sweep_scan(c, first ? NULL : &from, now_ms, keys, &n);
                if (rc < 0)
                        return rc;
                if (n == 0)
                        break;
                rc = write_begin(c);
                if (rc < 0)
                        return rc;
                rc = write_end(c, sweep_delete(c, keys, n, now_ms, &batch));
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
 * Every (hook, conversation) is a FIFO queue by id; its oldest row carries head = 1 and is the
 * only one a claim may return. Whatever removes a row (done, dead) hands the head mark on to
 * the next oldest, and whatever adds one (enqueue, redrive) marks it head when its queue was
 * empty, all inside the same transaction, so each non-empty queue has exactly one head. */

/* The copy of an outbox row that outbox_remove() works from after deleting it. */
struct outbox_row {
        char hook[STORE_HOOK_MAX + 1];
        char conversation[STORE_NAME_MAX + 1];
        char account[STORE_ACCOUNT_MAX + 1];
        char *clear_namespaces; /* malloc'ed, or NULL */
        bool head;
};

/* A malloc'ed, NUL-terminated copy of a text or blob column (binary-safe; length in *ret_len,
 * which may be NULL); *ret is NULL for an SQL NULL. */
static int column_dup(sqlite3_stmt *st, int col, char **ret, size_t *ret_len)
{
        const void *p;
        size_t len;
        char *copy;

        if (sqlite3_column_type(st, col) == SQLITE_NULL) {
                *ret = NULL;
                if (ret_len)
                        *ret_len = 0;
                return 0;
        }
        p = sqlite3_column_blob(st, col);
        len = (size_t)sqlite3_column_bytes(st, col);
        if (!p && len > 0)
                return -ENOMEM;
        copy = malloc(len + 1);
        if (!copy)
                return -ENOMEM;
        if (len > 0)
                memcpy(copy, p, len);
        copy[len] = '\0';
        *ret = copy;
        if (ret_len)
                *ret_len = len;
        return 0;
}

static int outbox_insert(struct conn *c, const char *hook, const char *account,
                         const char *conversation, const char *webhook_id, const char *body,
                         size_t body_len, const char *clear_namespaces, int64_t now_ms)
{
        sqlite3_stmt *st = c->st[ST_OB_INSERT];
        int rc;

        /* An empty body is a zero-length blob, not NULL: bind a non-NULL pointer. */
        rc = bind(st, "ttttbti", hook, account, conversation, webhook_id, body ? body : "",
                  body_len, clear_namespaces, now_ms);
        if (rc < 0) {
                sqlite3_reset(st);
                return rc;
        }
        return run(st);
}

/* Records dedup_key; -EEXIST when it was recorded before (this transaction included). */
static int dedup_add(struct conn *c, const char *dedup_key, int64_t now_ms)
{
        sqlite3_stmt *st = c->st[ST_DEDUP_ADD];
        int rc;

        rc = bind(st, "ti", dedup_key, now_ms);
        if (rc >= 0)
                rc = run(st);
        if (rc < 0)
                return rc;
        return sqlite3_changes(c->db) == 0 ? -EEXIST : 0;
}

static int dead_insert(struct conn *c, const char *source, const char *reason, const char *raw,
                       size_t raw_len, int64_t now_ms)
{
        sqlite3_stmt *st = c->st[ST_DL_INSERT];
        int rc;

        rc = bind(st, "ttib", source, reason, now_ms, raw ? raw : "", raw_len);
        if (rc < 0) {
                sqlite3_reset(st);
                return rc;
        }
        return run(st);
}

/* One message of a batch: -EEXIST (nothing written) is its result, not a failure. */
static int message_tx(struct conn *c, const struct store_message *m, int64_t now_ms)
{
        int rc;

        if (m->dedup_key) {
                rc = dedup_add(c, m->dedup_key, now_ms);
                if (rc < 0)
                        return rc;
        }
        if (m->dead_source)
                return dead_insert(c, m->dead_source, m->dead_reason, m->raw, m->raw_len, now_ms);
        for (size_t i = 0; i < m->n_items; i++) {
                const struct store_enqueue *it = &m->items[i];

                rc = outbox_insert(c, it->hook, it->account, it->conversation, it->webhook_id,
                                   it->body, it->body_len, it->clear_namespaces, now_ms);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

static int enqueue_many_tx(struct conn *c, const struct store_message *msgs, size_t n,
                           int64_t now_ms, int *results)
{
        for (size_t i = 0; i < n; i++) {
                int rc = message_tx(c, &msgs[i], now_ms);

                /* The dedup key is the first thing a message writes, so an -EEXIST leaves
                 * nothing of it behind and the batch goes on. */
                if (rc < 0 && rc != -EEXIST)
                        return rc;
                results[i] = rc;
        }
        return 0;
}

static int sqlite_outbox_enqueue_many(void *impl, const struct store_message *msgs, size_t n,
                                      int64_t now_ms, int *results)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        return write_end(c, enqueue_many_tx(c, msgs, n, now_ms, results));
}

/* Copies the claim statement's current row into *d. */
static int delivery_load(sqlite3_stmt *st, struct store_delivery *d)
{
        int rc;

        *d = (struct store_delivery){
            .id = sqlite3_column_int64(st, 0),
            .attempts = sqlite3_column_int64(st, 6),
            .created_ms = sqlite3_column_int64(st, 7),
        };
        rc = column_dup(st, 1, &d->hook, NULL);
        if (rc >= 0)
                rc = column_dup(st, 2, &d->account, NULL);
        if (rc >= 0)
                rc = column_dup(st, 3, &d->conversation, NULL);
        if (rc >= 0)
                rc = column_dup(st, 4, &d->webhook_id, NULL);
        if (rc >= 0)
                rc = column_dup(st, 5, &d->body, &d->body_len);
        if (rc >= 0 && (!d->hook || !d->account || !d->conversation || !d->webhook_id || !d->body))
                rc = -EIO; /* NOT NULL columns: corrupted */
        if (rc < 0)
                store_delivery_clear(d);
        return rc;
}

/* Selects the due heads, then leases them. The rows are collected before any is updated:
 * a lease moves the row within the index the SELECT walks. */
static int claim_tx(struct conn *c, int64_t now_ms, int64_t lease_ms, size_t limit,
                    struct store_delivery **d, size_t *n)
{
        sqlite3_stmt *st = c->st[ST_OB_CLAIM];
        size_t cap = 0;
        int rc;

        rc = bind(st, "ii", now_ms, limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
        while (rc >= 0 && *n < limit) {
                rc = step(st);
                if (rc <= 0)
                        break;
                if (*n == cap) {
                        size_t grown_cap = cap ? cap * 2 : (limit < 16 ? limit : 16);
                        struct store_delivery *grown = realloc(*d, grown_cap * sizeof(**d));

                        if (!grown) {
                                rc = -ENOMEM;
                                break;
                        }
                        *d = grown;
                        cap = grown_cap;
                }
                rc = delivery_load(st, &(*d)[*n]);
                if (rc >= 0)
                        (*n)++;
        }
        sqlite3_reset(st);
        if (rc < 0)
                return rc;
        st = c->st[ST_OB_LEASE];
        for (size_t i = 0; i < *n; i++) {
                rc = bind(st, "ii", (*d)[i].id, now_ms + lease_ms);
                if (rc >= 0)
                        rc = run(st);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

static int sqlite_outbox_claim(void *impl, int64_t now_ms, int64_t lease_ms, size_t limit,
                               struct store_delivery **ret, size_t *ret_n)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        struct store_delivery *d = NULL;
        size_t n = 0;
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        rc = write_end(c, claim_tx(c, now_ms, lease_ms, limit, &d, &n));
        if (rc < 0) {
                for (size_t i = 0; i < n; i++)
                        store_delivery_clear(&d[i]);
                free(d);
                return rc;
        }
        *ret = d;
        *ret_n = n;
        return 0;
}

/* Deletes outbox row id and passes its head mark on. *ret (may be NULL) gets what the caller
 * needs of the row; its clear_namespaces is the caller's to free. -ENOENT when it is gone. */
static int outbox_remove(struct conn *c, int64_t id, struct outbox_row *ret)
{
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_OB_ROW];
        struct outbox_row row = {0};
        char *clear = NULL;
        int rc;

        rc = bind(st, "i", id);
        if (rc < 0)
                return rc;
        rc = step(st);
        if (rc <= 0)
                return rc < 0 ? rc : -ENOENT;
        copy_column(st, 0, row.hook, sizeof(row.hook));
        copy_column(st, 1, row.conversation, sizeof(row.conversation));
        copy_column(st, 2, row.account, sizeof(row.account));
        row.head = sqlite3_column_int64(st, 4) != 0;
        if (ret) {
                rc = column_dup(st, 3, &clear, NULL);
                if (rc < 0)
                        return rc;
        }
        sqlite3_reset(st);

        st = c->st[ST_OB_DEL];
        rc = bind(st, "i", id);
        if (rc >= 0)
                rc = run(st);
        if (rc >= 0 && row.head) {
                st = c->st[ST_OB_PROMOTE];
                rc = bind(st, "tt", row.hook, row.conversation);
                if (rc >= 0)
                        rc = run(st);
        }
        if (rc < 0) {
                free(clear);
                return rc;
        }
        if (ret) {
                row.clear_namespaces = clear;
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
 * clear_namespaces, as store_props_clear() does (the session and its TTL stay, its ETag
 * changes). */
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

static int sqlite_outbox_done(void *impl, int64_t id, int64_t now_ms, bool *ret_cleared)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        return write_end(c, done_tx(c, id, now_ms, ret_cleared));
}

static int sqlite_outbox_retry(void *impl, int64_t id, int64_t attempts, int64_t next_attempt_ms,
                               const char *last_error)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        sqlite3_stmt *st = c->st[ST_OB_RETRY];
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        rc = bind(st, "iiit", id, attempts, next_attempt_ms, last_error);
        if (rc >= 0)
                rc = run(st);
        else
                sqlite3_reset(st);
        if (rc >= 0 && sqlite3_changes(c->db) == 0)
                rc = -ENOENT;
        return write_end(c, rc);
}

static int dead_tx(struct conn *c, int64_t id, const char *reason, int64_t now_ms)
{
        sqlite3_stmt *st = c->st[ST_OB_TO_DEAD];
        int rc;

        rc = bind(st, "iti", id, reason, now_ms);
        if (rc >= 0)
                rc = run(st);
        else
                sqlite3_reset(st);
        if (rc < 0)
                return rc;
        if (sqlite3_changes(c->db) == 0)
                return -ENOENT;
        return outbox_remove(c, id, NULL);
}

static int sqlite_outbox_dead(void *impl, int64_t id, const char *reason, int64_t now_ms)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        return write_end(c, dead_tx(c, id, reason, now_ms));
}

/* Runs a one-row, one-integer statement. -ENOENT when it returns no row or NULL. */
static int query_int(void *impl, enum stmt_id id, int64_t *ret)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        _cleanup_reset_ sqlite3_stmt *st = c->st[id];
        int rc = step(st);

        if (rc <= 0)
                return rc < 0 ? rc : -ENOENT;
        if (sqlite3_column_type(st, 0) == SQLITE_NULL)
                return -ENOENT;
        *ret = sqlite3_column_int64(st, 0);
        return 0;
}

static int sqlite_outbox_depth(void *impl, int64_t *ret)
{
        int rc = query_int(impl, ST_OB_DEPTH, ret);

        return rc == -ENOENT ? -EIO : rc; /* the migration created the counter */
}

static int sqlite_outbox_next_due(void *impl, int64_t *ret_ms)
{
        return query_int(impl, ST_OB_NEXT_DUE, ret_ms);
}

/* ---- Dead letters ---- */

static int sqlite_dead_list(void *impl, int64_t after_id, int64_t limit, json_t **ret_array)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_DL_LIST];
        json_t *a;
        int rc;

        rc = bind(st, "ii", after_id, limit);
        if (rc < 0)
                return rc;
        a = json_array();
        if (!a)
                return -ENOMEM;
        for (;;) {
                json_t *o;

                rc = step(st);
                if (rc <= 0)
                        break;
                o = store_dead_item(sqlite3_column_int64(st, 0), sqlite3_column_blob(st, 1),
                                    (size_t)sqlite3_column_bytes(st, 1), sqlite3_column_blob(st, 2),
                                    (size_t)sqlite3_column_bytes(st, 2),
                                    sqlite3_column_int64(st, 3), sqlite3_column_blob(st, 4),
                                    (size_t)sqlite3_column_bytes(st, 4));
                if (!o || json_array_append_new(a, o) < 0) {
                        rc = -ENOMEM;
                        break;
                }
        }
        if (rc < 0) {
                json_decref(a);
                return rc;
        }
        *ret_array = a;
        return 0;
}

static int sqlite_dead_count(void *impl, int64_t *ret)
{
        int rc = query_int(impl, ST_DL_COUNT, ret);

        return rc == -ENOENT ? -EIO : rc;
}

static int dead_load(struct conn *c, int64_t id, struct store_dead_row *r)
{
        _cleanup_reset_ sqlite3_stmt *st = c->st[ST_DL_ROW];
        const char *kind;
        int rc;

        rc = bind(st, "i", id);
        if (rc < 0)
                return rc;
        rc = step(st);
        if (rc <= 0)
                return rc < 0 ? rc : -ENOENT;
        kind = (const char *)sqlite3_column_text(st, 0);
        r->delivery = kind && strcmp(kind, "delivery") == 0;
        rc = column_dup(st, 1, &r->source, NULL);
        if (rc >= 0)
                rc = column_dup(st, 2, &r->raw, &r->raw_len);
        if (rc >= 0 && r->delivery) {
                rc = column_dup(st, 3, &r->hook, NULL);
                if (rc >= 0)
                        rc = column_dup(st, 4, &r->account, NULL);
                if (rc >= 0)
                        rc = column_dup(st, 5, &r->conversation, NULL);
                if (rc >= 0)
                        rc = column_dup(st, 6, &r->webhook_id, NULL);
                if (rc >= 0)
                        rc = column_dup(st, 7, &r->clear_namespaces, NULL);
                if (rc >= 0 && (!r->hook || !r->account || !r->conversation || !r->webhook_id))
                        rc = -EIO;
        }
        return rc;
}

/* Returns 1 for a delivery queued again (its dead letter deleted), 0 for an event left in *r
 * for the caller; an event's dead letter stays until the caller has processed it again and
 * deletes it (store.h). */
static int redrive_tx(struct conn *c, int64_t id, int64_t now_ms, struct store_dead_row *r)
{
        sqlite3_stmt *st = c->st[ST_DL_DEL];
        int rc;

        rc = dead_load(c, id, r);
        if (rc < 0 || !r->delivery)
                return rc;
        rc = outbox_insert(c, r->hook, r->account, r->conversation, r->webhook_id, r->raw,
                           r->raw_len, r->clear_namespaces, now_ms);
        if (rc < 0)
                return rc;
        rc = bind(st, "i", id);
        if (rc >= 0)
                rc = run(st);
        return rc < 0 ? rc : 1;
}

static int sqlite_dead_redrive(void *impl, int64_t id, int64_t now_ms, char **ret_raw,
                               size_t *ret_raw_len, char **ret_source)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        struct store_dead_row r = {0};
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        rc = write_end(c, redrive_tx(c, id, now_ms, &r));
        if (rc == 0) {
                *ret_raw = TAKE_PTR(r.raw);
                *ret_raw_len = r.raw_len;
                *ret_source = TAKE_PTR(r.source);
        }
        store_dead_row_clear(&r);
        return rc;
}

static int sqlite_dead_delete(void *impl, int64_t id)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        sqlite3_stmt *st = c->st[ST_DL_DEL];
        int rc;

        rc = write_begin(c);
        if (rc < 0)
                return rc;
        rc = bind(st, "i", id);
        if (rc >= 0)
                rc = run(st);
        if (rc >= 0 && sqlite3_changes(c->db) == 0)
                rc = -ENOENT;
        return write_end(c, rc);
}

static int sqlite_dedup_expire(void *impl, int64_t before_ms, int64_t *ret_deleted)
{
        _cleanup_conn_ struct conn *c = conn_get(impl);
        sqlite3_stmt *st = c->st[ST_DEDUP_EXPIRE];
        int64_t deleted = 0;
        int batch, rc;

        do {
                rc = write_begin(c);
                if (rc < 0)
                        return rc;
                rc = bind(st, "ii", before_ms, (int64_t)DEDUP_BATCH);
                if (rc >= 0)
                        rc = run(st);
                batch = rc >= 0 ? sqlite3_changes(c->db) : 0;
                rc = write_end(c, rc);
                if (rc < 0)
                        return rc;
                deleted += batch;
        } while (batch == DEDUP_BATCH);
        if (ret_deleted)
                *ret_deleted = deleted;
        return 0;
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .probe = sqlite_probe,
    .schema_latest = SCHEMA_VERSION,
    .ping = sqlite_ping,
    .schema_version = sqlite_schema_version,
    .key_set = sqlite_key_set,
    .key_get = sqlite_key_get,
    .ns_create = sqlite_ns_create,
    .ns_list = sqlite_ns_list,
    .ns_delete = sqlite_ns_delete,
    .props_get = sqlite_props_get,
    .prop_get = sqlite_prop_get,
    .props_merge = sqlite_props_merge,
    .prop_put = sqlite_prop_put,
    .prop_delete = sqlite_prop_delete,
    .props_clear = sqlite_props_clear,
    .session_ids = sqlite_session_ids,
    .session_props = sqlite_session_props,
    .session_create = sqlite_session_create,
    .session_list = sqlite_session_list,
    .session_delete = sqlite_session_delete,
    .sweep = sqlite_sweep,
    .outbox_enqueue_many = sqlite_outbox_enqueue_many,
    .outbox_claim = sqlite_outbox_claim,
    .outbox_done = sqlite_outbox_done,
    .outbox_retry = sqlite_outbox_retry,
    .outbox_dead = sqlite_outbox_dead,
    .outbox_depth = sqlite_outbox_depth,
    .outbox_next_due = sqlite_outbox_next_due,
    .dead_list = sqlite_dead_list,
    .dead_count = sqlite_dead_count,
    .dead_redrive = sqlite_dead_redrive,
    .dead_delete = sqlite_dead_delete,
    .dedup_expire = sqlite_dedup_expire,
    .gen_load = sqlite_gen_load,
    .gen_bump = sqlite_gen_bump,
};
