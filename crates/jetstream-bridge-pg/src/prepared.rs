//! [`Prepared`]: a statement with fixed SQL text, prepared once per connection.
//!
//! `diesel::sql_query` marks every statement unsafe to cache, so each execution costs a
//! `Parse` round trip and a fresh plan on the server. The runtime's hot statements (inbox
//! claims, relay claims and marks) have fixed text; [`Prepared`] lets diesel-async cache them
//! as named prepared statements (keyed by the SQL text and the bind types), so after the first
//! execution on a connection each one is a single `Bind`/`Execute` round trip.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{Error, QueryResult};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// A statement with fixed SQL text and `$n` placeholders, each connection preparing it once.
///
/// Build it with [`prepared`] and [`bind`](Self::bind) (as `diesel::sql_query`), then run it
/// with diesel-async's `RunQueryDsl` (`execute`, `load`, `get_result`); rows load into
/// `QueryableByName` types.
///
/// The text may use a placeholder more than once and in any order, and must use every bound
/// value; it must not contain `$` anywhere else (no dollar quoting, no `$` in literals or
/// identifiers): a `$` not followed by the number of a bound value, a value the text never
/// uses, or more than [`MAX_BINDS`] values, fails the statement with
/// [`QueryBuilderError`](diesel::result::Error::QueryBuilderError) before it reaches the server.
///
/// ```
/// use diesel::sql_types::{BigInt, Text};
/// use jetstream_bridge_pg::prepared;
///
/// let statement = prepared("UPDATE jobs SET owner = $2 WHERE id = $1 AND owner IS DISTINCT FROM $2")
///     .bind::<BigInt, _>(7_i64)
///     .bind::<Text, _>("worker-1");
/// let sql = diesel::debug_query::<diesel::pg::Pg, _>(&statement).to_string();
/// assert!(sql.starts_with("UPDATE jobs SET owner = $1 WHERE id = $2 AND owner IS DISTINCT FROM $3"));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a statement does nothing until it is executed"]
pub struct Prepared<B = ()> {
    sql: &'static str,
    binds: B,
}

/// A statement with the fixed text `sql` (see [`Prepared`]).
pub fn prepared(sql: &'static str) -> Prepared<()> {
    Prepared { sql, binds: () }
}

impl<B: Binds> Prepared<B> {
    /// Binds the next placeholder (`$1` first) to `value` as SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Prepared<(B, Bound<ST, V>)>
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg>,
    {
        Prepared {
            sql: self.sql,
            binds: (
                self.binds,
                Bound {
                    value,
                    sql_type: PhantomData,
                },
            ),
        }
    }
}

/// One bound value of a [`Prepared`] statement.
#[derive(Debug, Clone)]
pub struct Bound<ST, V> {
    value: V,
    sql_type: PhantomData<fn() -> ST>,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<B, ST, V> Sealed for (B, super::Bound<ST, V>) {}
}

/// The values bound to a [`Prepared`] statement, `$1` first (sealed).
pub trait Binds: sealed::Sealed {
    /// How many values are bound.
    const LEN: usize;

    /// Pushes value `n` (1-based) where its placeholder stands.
    ///
    /// # Errors
    ///
    /// When no value `n` is bound.
    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for () {
    const LEN: usize = 0;

    fn push<'b>(&'b self, n: usize, _out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Err(Error::QueryBuilderError(
            format!("placeholder ${n} has no bound value").into(),
        ))
    }
}

impl<B, ST, V> Binds for (B, Bound<ST, V>)
where
    B: Binds,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    const LEN: usize = B::LEN + 1;

    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if n == Self::LEN {
            out.push_bind_param::<ST, V>(&self.1.value)
        } else {
            self.0.push(n, out)
        }
    }
}

/// Values a [`Prepared`] statement takes at most (more fails the statement with
/// `QueryBuilderError`; for a set of rows, bind arrays and `unnest` them).
pub const MAX_BINDS: usize = 128;

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    /// The text with every `$n` replaced by a bind parameter holding value `n`: diesel numbers
    /// parameters in order of appearance, so a placeholder used twice becomes two parameters
    /// with the same value, and the statement means what the text says.
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Which values the text used (bit n - 1 for `$n`): one never used is a mistake the
        // server would have caught (a parameter count mismatch) had the text been sent as
        // written. A bit set, not a vector: this runs several times per execution.
        if B::LEN > MAX_BINDS {
            return Err(Error::QueryBuilderError(
                format!(
                    "{} values bound; a prepared statement takes at most {MAX_BINDS}",
                    B::LEN
                )
                .into(),
            ));
        }
        let mut used: u128 = 0;
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let after = &rest[at + 1..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let n = after[..digits].parse::<usize>().unwrap_or(0);
            if n == 0 || n > B::LEN {
                return Err(Error::QueryBuilderError(
                    format!(
                        "`${}` in a prepared statement: expected $1..${} (no other `$`)",
                        &after[..digits],
                        B::LEN
                    )
                    .into(),
                ));
            }
            self.binds.push(n, &mut out)?;
            used |= 1 << (n - 1);
            rest = &after[digits..];
        }
        out.push_sql(rest);
        match (0..B::LEN).find(|i| used & (1 << i) == 0) {
            Some(i) => Err(Error::QueryBuilderError(
                format!("value {} is bound but the text has no ${}", i + 1, i + 1).into(),
            )),
            None => Ok(()),
        }
    }
}

impl<B> QueryId for Prepared<B> {
    // No static id: diesel then caches the prepared statement by its SQL text and bind types,
    // so every distinct text gets its own statement.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{Integer, Text};

    use super::*;

    fn sql<B: Binds>(statement: &Prepared<B>) -> String {
        diesel::debug_query::<Pg, _>(statement).to_string()
    }

    #[test]
    fn placeholders_in_any_order_and_repeated() {
        let s = prepared("SELECT $2, $1, $2")
            .bind::<Integer, _>(1)
            .bind::<Text, _>("two");
        assert_eq!(sql(&s), r#"SELECT $1, $2, $3 -- binds: ["two", 1, "two"]"#);
    }

    #[test]
    fn text_without_placeholders_is_kept() {
        assert_eq!(sql(&prepared("SELECT 1")), "SELECT 1 -- binds: []");
    }

    #[test]
    fn stray_or_unbound_placeholders_are_errors_not_panics() {
        for text in [
            "SELECT $2",
            "SELECT $0",
            "SELECT $",
            "SELECT $$x$$",
            "SELECT $a",
            // The bound value is never used.
            "SELECT 1",
        ] {
            let s = prepared(text).bind::<Integer, _>(1);
            let mut builder = diesel::pg::PgQueryBuilder::default();
            let result = s.to_sql(&mut builder, &Pg);
            assert!(
                matches!(result, Err(Error::QueryBuilderError(_))),
                "{text}: {result:?}"
            );
        }
    }

    #[test]
    fn cacheable_unlike_sql_query() {
        let s = prepared("SELECT $1").bind::<Integer, _>(1);
        assert!(s.is_safe_to_cache_prepared(&Pg).unwrap_or(false));
        let q = diesel::sql_query("SELECT $1").bind::<Integer, _>(1);
        assert!(!q.is_safe_to_cache_prepared(&Pg).unwrap_or(true));
    }
}
