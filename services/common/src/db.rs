//! The Postgres pool and per-schema migrations.
//!
//! All services share one database; each owns one schema and keeps its own
//! `_sqlx_migrations` table inside it, so a service's migrations never depend
//! on another's.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::DbArgs;

/// The connection settings every pool uses.
///
/// Generic plans: every statement here is prepared once per connection and
/// its plan does not depend on the values, but Postgres would plan the
/// array-parameter statements afresh on each call (the generic plan's
/// estimates look worse than a custom one): in the send-money benchmark at
/// 100 transfers/s, Postgres used 0.39 cores with generic plans, 0.57 without.
///
/// `application_name` is `payflow-<component>` unless the URL sets one, so
/// `pg_stat_activity` shows which component holds a session or a lock.
fn connect_options(args: &DbArgs, component: &str) -> anyhow::Result<PgConnectOptions> {
    let mut opts: PgConnectOptions = args.database_url.parse()?;
    if opts.get_application_name().is_none() {
        opts = opts.application_name(&format!("payflow-{component}"));
    }
    Ok(opts.options([("plan_cache_mode", "force_generic_plan")]))
}

/// A pooled connection idle for longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Pool settings. sqlx pings every connection it hands out by default: one more
/// round trip to Postgres per statement, which at 1,000 transfers/s was about
/// 7% of the services' CPU samples. Only connections that sat idle (where a restart or
/// a dropped link goes unnoticed) are pinged; a busy one that broke fails its
/// statement and is replaced.
fn pool_options(args: &DbArgs) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A pool for `component` (wallet, worker, ...), connected now. A failure
/// names the server (host, port, database; never the user or password): sqlx's
/// own "pool timed out while waiting for an open connection" does not.
pub async fn connect(args: &DbArgs, component: &str) -> anyhow::Result<PgPool> {
    let opts = connect_options(args, component)?;
    let server = describe(&opts);
    pool_options(args).connect_with(opts).await.with_context(|| format!("cannot connect to {server}"))
}

/// `Postgres at host:port, database name`, for error messages.
fn describe(opts: &PgConnectOptions) -> String {
    let host = opts.get_host();
    let host = if host.contains(':') && !host.starts_with('/') { format!("[{host}]") } else { host.to_string() };
    match opts.get_database() {
        Some(db) => format!("Postgres at {host}:{}, database {db}", opts.get_port()),
        None => format!("Postgres at {host}:{}", opts.get_port()),
    }
}

/// Opens a transaction on `pool`, safe to cancel. sqlx's own `Pool::begin`
/// is not (sqlx 0.8.6 and 0.9.0, transact-rs/sqlx#4393): dropped while its
/// `BEGIN` is on the wire, it returns the connection to the pool inside a
/// transaction nobody will end; the next borrower's statements then run in it,
/// their writes reported done but not committed. Here the begin runs on a task
/// of its own that always finishes it, and a transaction nobody took is
/// dropped there, which rolls it back properly.
pub async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    begin_with(pool, None).await
}

/// [`begin`] with a custom `BEGIN` statement (tests make it slow).
async fn begin_with(
    pool: &PgPool,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let pool = pool.clone();
    #[allow(clippy::disallowed_methods)] // the sanctioned calls: see `begin`
    let task = tokio::spawn(async move {
        match statement {
            None => pool.begin().await,
            Some(s) => pool.begin_with(s).await,
        }
    });
    task.await.map_err(|e| sqlx::Error::Protocol(format!("begin task ended: {e}")))?
}

/// Runs `migrator` inside `schema`. Safe to run concurrently from many
/// processes: a session advisory lock serialises schema creation and sqlx
/// takes its own lock for the migrations.
///
/// Applied migrations that `migrator` does not know are left alone (sqlx's
/// `ignore_missing`; by default it refuses them with `VersionMissing`): after
/// a rollback of `spec.version` the previous release's migration Job finds the
/// newer release's migrations applied, and the operator starts no Deployment
/// until that Job succeeds. Migrations are written so that the previous
/// release runs on them (additive; see wallet's 0003), so the older binary may
/// run on the newer schema. Migrations it does know are still checked against
/// their checksums, and a later roll forward finds the newer ones applied.
pub async fn migrate_schema(pool: &PgPool, schema: &str, migrator: &Migrator) -> anyhow::Result<()> {
    anyhow::ensure!(
        !schema.is_empty() && schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "invalid schema name {schema:?}"
    );
    let migrator = Migrator {
        migrations: migrator.migrations.clone(),
        ignore_missing: true,
        locking: migrator.locking,
        no_tx: migrator.no_tx,
    };
    let mut conn = pool.acquire().await?.detach();
    // Any fixed key works; it only has to be the same in every process.
    sqlx::query("SELECT pg_advisory_lock(7245337)").execute(&mut conn).await?;
    let result = async {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&mut conn).await?;
        sqlx::query(&format!("SET search_path TO {schema}")).execute(&mut conn).await?;
        migrator.run(&mut conn).await.with_context(|| format!("migrating schema {schema}"))?;
        anyhow::Ok(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(7245337)").execute(&mut conn).await;
    let _ = conn.close().await;
    result
}

/// Errors that say "try again later" rather than "this will never work": the
/// connection or the server went away, resources ran out, or a concurrent
/// transaction won (serialization failure, deadlock).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 53: insufficient resources;
            // 57P0x: server shutting down; 40001/40P01: serialization, deadlock.
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57P0") || c == "40001" || c == "40P01"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn one_connection_pool() -> PgPool {
        let url = std::env::var("PAYFLOW_TEST_DATABASE_URL")
            .expect("PAYFLOW_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh");
        PgPoolOptions::new().max_connections(1).connect(&url).await.expect("connect")
    }

    /// Whether the pool's (only) connection is inside a transaction block: in
    /// autocommit a simple query is its own transaction, so the two times agree.
    /// (The simple protocol: with prepared statements they may differ anyway.)
    async fn left_open(pool: &PgPool) -> bool {
        use sqlx::Row;
        let row = sqlx::raw_sql("SELECT transaction_timestamp() <> statement_timestamp()")
            .fetch_one(pool)
            .await
            .expect("probe");
        row.get(0)
    }

    /// A `BEGIN` whose answer takes 50 ms: a wide window to cancel it in.
    const SLOW_BEGIN: &str = "BEGIN; SELECT pg_sleep(0.05)";

    #[tokio::test]
    async fn a_cancelled_begin_leaves_no_transaction_behind() {
        let pool = one_connection_pool().await;
        for _ in 0..3 {
            let cancelled = tokio::time::timeout(Duration::from_millis(10), begin_with(&pool, Some(SLOW_BEGIN))).await;
            assert!(cancelled.is_err(), "the begin was meant to be cancelled while its BEGIN ran");
            assert!(!left_open(&pool).await, "a cancelled begin left a transaction open");
        }
        // And a begin that is not cancelled still works.
        let tx = begin(&pool).await.expect("begin");
        tx.commit().await.expect("commit");
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)]
    async fn sqlx_pool_begin_cancelled_leaves_a_transaction_open() {
        // The sqlx bug `begin` works around; when this fails, sqlx is fixed and
        // `begin` may go back to `Pool::begin`.
        let pool = one_connection_pool().await;
        let cancelled = tokio::time::timeout(Duration::from_millis(10), pool.begin_with(SLOW_BEGIN)).await;
        assert!(cancelled.is_err());
        assert!(left_open(&pool).await, "sqlx's Pool::begin no longer leaks a cancelled transaction");
        sqlx::raw_sql("ROLLBACK").execute(&pool).await.expect("rollback");
    }

    /// A schema no other test uses (names allow lower-case letters and `_` only).
    fn fresh_schema() -> String {
        let letters: String =
            uuid::Uuid::new_v4().simple().to_string().bytes().map(|b| (b'a' + b % 26) as char).take(16).collect();
        format!("test_migrate_{letters}")
    }

    fn step(version: i64, sql: &'static str) -> sqlx::migrate::Migration {
        sqlx::migrate::Migration::new(
            version,
            format!("step {version}").into(),
            sqlx::migrate::MigrationType::Simple,
            sql.into(),
            false,
        )
    }

    fn migrator_of(migrations: Vec<sqlx::migrate::Migration>) -> Migrator {
        Migrator { migrations: migrations.into(), ignore_missing: false, locking: true, no_tx: false }
    }

    #[tokio::test]
    async fn the_previous_release_migrates_a_schema_the_next_one_upgraded() {
        let pool = one_connection_pool().await;
        let schema = fresh_schema();
        let all = vec![
            step(1, "CREATE TABLE a (id int)"),
            step(2, "CREATE TABLE b (id int)"),
            step(3, "ALTER TABLE a ADD COLUMN note text"),
        ];
        let result = async {
            migrate_schema(&pool, &schema, &migrator_of(all.clone())).await.expect("the newer release migrates");
            // Rolled back: the previous release's migrator lacks the newest migration.
            let previous = migrator_of(all[..2].to_vec());
            migrate_schema(&pool, &schema, &previous).await.expect("the previous release migrates too");
            // sqlx on its own refuses (what the previous release's Job did before).
            let mut conn = pool.acquire().await.expect("acquire");
            sqlx::query(&format!("SET search_path TO {schema}")).execute(&mut *conn).await.expect("search_path");
            let plain = previous.run(&mut *conn).await;
            sqlx::query("RESET search_path").execute(&mut *conn).await.expect("reset");
            drop(conn);
            assert!(matches!(plain, Err(sqlx::migrate::MigrateError::VersionMissing(3))), "{plain:?}");
            // And rolling forward again finds everything applied.
            migrate_schema(&pool, &schema, &migrator_of(all.clone())).await.expect("roll forward");
            // A migration that was changed after it was applied is still refused.
            let mut changed = all.clone();
            changed[1] = step(2, "CREATE TABLE b (id bigint)");
            let refused = migrate_schema(&pool, &schema, &migrator_of(changed)).await;
            assert!(format!("{:#}", refused.expect_err("changed migration")).contains("has been modified"));
        }
        .await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.expect("drop schema");
        result
    }

    #[tokio::test]
    async fn a_failed_connect_names_the_server_but_not_the_password() {
        // A port nothing listens on: bind one, note it, let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let args = DbArgs {
            database_url: format!("postgres://someone:s3cr3t-pw@127.0.0.1:{port}/ledgerdb"),
            max_connections: 1,
        };
        let err = format!("{:#}", connect(&args, "test").await.expect_err("nothing listens there"));
        assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("ledgerdb"), "{err}");
        assert!(!err.contains("s3cr3t-pw") && !err.contains("someone"), "{err}");
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other("x"))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
