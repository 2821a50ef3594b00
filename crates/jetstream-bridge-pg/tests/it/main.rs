//! Integration tests against the machine's PostgreSQL: each test gets a fresh database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod migrate;
mod plumbing;
mod prepared;

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// A fresh empty database, dropped on [`Db::drop_db`] (tests that fail leave it behind for
/// inspection; the names are unique).
pub(crate) struct Db {
    admin: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

fn admin_url() -> String {
    std::env::var("JB_TEST_PG_ADMIN_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

impl Db {
    pub(crate) async fn new() -> Self {
        let admin = admin_url();
        let name = format!("jb_pg_{:016x}", rand::random::<u64>());
        let mut conn = AsyncPgConnection::establish(&admin).await.unwrap();
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, query) = admin
            .split_once('?')
            .map_or((admin.as_str(), ""), |(b, q)| (b, q));
        let base = &base[..base.rfind('/').unwrap()];
        let url = if query.is_empty() {
            format!("{base}/{name}")
        } else {
            format!("{base}/{name}?{query}")
        };
        Self { admin, name, url }
    }

    pub(crate) async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url).await.unwrap()
    }

    pub(crate) async fn drop_db(self) {
        let mut conn = AsyncPgConnection::establish(&self.admin).await.unwrap();
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

pub(crate) async fn has_table(conn: &mut AsyncPgConnection, table: &str) -> bool {
    diesel::sql_query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = $1")
        .bind::<Text, _>(table)
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
        == 1
}

pub(crate) async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}
