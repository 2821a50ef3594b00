//! `Prepared` statements against the real server: prepared once per connection, values bound
//! where the text says, errors before the server for a bad text.

use diesel::sql_types::{Array, BigInt, Integer, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use jetstream_bridge_pg::prepared;

use crate::Db;

#[derive(QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = Text)]
    word: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

const STATEMENT: &str = "SELECT w AS word, $2 * $1 + $2 AS n \
                         FROM unnest($3::text[]) AS w /* prepared-marker */ ORDER BY w";

async fn named_statements(conn: &mut diesel_async::AsyncPgConnection) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements \
         WHERE statement LIKE '%prepared' || '-marker%'",
    )
    .get_result::<N>(conn)
    .await
    .unwrap()
    .n
}

#[tokio::test]
async fn a_prepared_statement_is_prepared_once_per_connection_and_binds_by_number() {
    let db = Db::new().await;
    let mut conn = db.conn().await;
    for k in 1..=3_i64 {
        let rows: Vec<Row> = prepared(STATEMENT)
            .bind::<BigInt, _>(k)
            .bind::<BigInt, _>(10_i64)
            .bind::<Array<Text>, _>(vec!["b", "a"])
            .load(&mut conn)
            .await
            .unwrap();
        let n = 10 * k + 10;
        assert_eq!(
            rows,
            [
                Row {
                    word: "a".into(),
                    n
                },
                Row {
                    word: "b".into(),
                    n
                }
            ]
        );
        // One named statement on the server, reused for every execution after the first.
        assert_eq!(named_statements(&mut conn).await, 1, "execution {k}");
    }
    // `sql_query` with the same text prepares an unnamed statement each time: nothing cached.
    let mut other = db.conn().await;
    diesel::sql_query(STATEMENT)
        .bind::<BigInt, _>(1_i64)
        .bind::<BigInt, _>(1_i64)
        .bind::<Array<Text>, _>(vec!["x"])
        .execute(&mut other)
        .await
        .unwrap();
    assert_eq!(named_statements(&mut other).await, 0);
    drop((conn, other));
    db.drop_db().await;
}

#[tokio::test]
async fn a_bad_placeholder_fails_before_the_server_and_the_connection_stays_usable() {
    let db = Db::new().await;
    let mut conn = db.conn().await;
    let err = prepared("SELECT $2::int AS n /* prepared-marker */")
        .bind::<Integer, _>(1)
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(
        matches!(err, diesel::result::Error::QueryBuilderError(_)),
        "{err:?}"
    );
    assert_eq!(named_statements(&mut conn).await, 0);
    drop(conn);
    db.drop_db().await;
}
