//! The real services the suite and the benchmarks run against, with a name of their own per test:
//! a PostgreSQL schema ([`TestDatabase`]) and a Redis key prefix ([`delete_redis_keys`]). The test
//! command makes sure the services run (deploy/ensure-*.sh).

use deadpool_redis::redis;

/// PostgreSQL for tests unless `TEST_DATABASE_URL` says otherwise (deploy/test.sh creates it).
pub const DEFAULT_DATABASE_URL: &str = "postgres://tg_dispatch:tg_dispatch@127.0.0.1:5432/tg_dispatch";
/// Redis for tests unless `REDIS_URL` says otherwise.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A free port on 127.0.0.1, for a process of the test's own that must listen on a known port:
/// bound, read and released, so that the process binds it just after.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

/// The database tests use.
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string())
}

/// A schema of one test's own: the URL that puts it first on the search path, so the product's
/// migrations and queries land there. [`TestDatabase::drop_schema`] removes it.
pub struct TestDatabase {
    pub schema: String,
    base: String,
}

impl TestDatabase {
    /// Creates schema `name` (letters, digits and `_`).
    pub async fn create(name: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "a plain schema name");
        let base = database_url();
        let client = connect(&base).await?;
        client.batch_execute(&format!("CREATE SCHEMA \"{name}\"")).await?;
        Ok(Self { schema: name.to_string(), base })
    }

    /// `DATABASE_URL` for the product: the base URL with this schema as its search path.
    pub fn url(&self) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-csearch_path%3D{}", self.base, self.schema)
    }

    /// A client on this schema, for a test's own queries.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url()).await
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        let client = connect(&self.base).await?;
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema)).await?;
        Ok(())
    }
}

impl Drop for TestDatabase {
    /// Drops the schema even when the test failed. Drop cannot await, so this runs on a thread of
    /// its own with a small runtime of its own — test teardown only, never inside the product.
    fn drop(&mut self) {
        if self.schema.is_empty() {
            return;
        }
        let database = TestDatabase { schema: std::mem::take(&mut self.schema), base: self.base.clone() };
        let cleanup = std::thread::spawn(move || {
            let mut database = database;
            #[allow(clippy::disallowed_methods)]
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                #[allow(clippy::disallowed_methods)]
                let _ = runtime.block_on(database.drop_schema());
            }
            // Dropped with no name: no second cleanup.
            database.schema.clear();
        });
        let _ = cleanup.join();
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Deletes every key under `prefix:` (a test's keys), whatever their kind.
pub async fn delete_redis_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else { return };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else { return };
    let mut cursor: u64 = 0;
    loop {
        let scanned: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await;
        let Ok((next, keys)) = scanned else { return };
        if !keys.is_empty() {
            let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
