//! Write transactions sent as few messages as possible.
//!
//! sqlx runs each SQLite connection on a worker thread of its own: every statement
//! is a message to that thread and a wake-up of both threads, which on a busy
//! two-core machine costs more than most statements themselves. A [`Script`] is a
//! list of statements that do not need each other's results; on SQLite it goes as
//! one multi-statement query (one message), on PostgreSQL statement by statement.
//! A [`ScriptTx`] sends its `BEGIN` with its first script and its `COMMIT` with its
//! last, so a write that needs no reads is one message in all.

use sqlx::{
    Any, AnyConnection, Arguments, AssertSqlSafe, Encode, Type,
    any::{AnyArguments, AnyRow},
    error::BoxDynError,
    pool::PoolConnection,
};

use super::{Backend, Db, placeholders};

/// Statements executed together, in order (see the module docs). Placeholders must
/// come from [`Script::placeholders`] (or [`placeholders`] counted from 1 in a
/// script made by [`Script::new`]): on SQLite they are anonymous and bind in order
/// across the script.
pub struct Script {
    backend: Backend,
    parts: Vec<(String, AnyArguments)>,
    error: Option<BoxDynError>,
    /// PostgreSQL: one statement, each pushed statement a data-modifying `WITH`
    /// query (see [`Script::one_statement`]).
    combined: bool,
    /// `WITH` queries so far (their default names).
    ctes: usize,
    /// The query after the `WITH` queries (default `SELECT 1`).
    primary: Option<String>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field(
                "parts",
                &self.parts.iter().map(|(sql, _)| sql).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The parameters of one statement of a [`Script`].
pub struct Binds<'a> {
    args: &'a mut AnyArguments,
    error: &'a mut Option<BoxDynError>,
}

impl std::fmt::Debug for Binds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binds").finish_non_exhaustive()
    }
}

impl Binds<'_> {
    /// Binds the next parameter.
    pub fn bind<'q, T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e);
        }
        self
    }
}

impl Script {
    /// An empty script for `backend`.
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            parts: Vec::new(),
            error: None,
            combined: false,
            ctes: 0,
            primary: None,
        }
    }

    /// A script of data-modifying statements (INSERT, UPDATE, DELETE) that runs
    /// as a single statement on PostgreSQL too: each becomes a `WITH` query of
    /// `WITH .. SELECT 1`, so one round trip to the server instead of one per
    /// statement. They all see the snapshot the statement started with, so none
    /// may depend on another's effect except through a named query's `RETURNING`
    /// ([`Self::push_named`]). Keep the parameters under PostgreSQL's 65,535.
    pub fn one_statement(backend: Backend) -> Self {
        Self {
            combined: backend == Backend::Postgres,
            ..Self::new(backend)
        }
    }

    /// The query that follows the `WITH` queries of a [`Self::one_statement`]
    /// script on PostgreSQL, instead of `SELECT 1`: a `SELECT` query among them
    /// runs only if this reads it.
    pub fn primary(&mut self, sql: &str) -> &mut Self {
        self.primary = Some(sql.to_string());
        self
    }

    /// Whether it runs as one statement on PostgreSQL ([`Self::one_statement`]).
    pub fn is_one_statement(&self) -> bool {
        self.combined
    }

    /// `n` placeholders for the next parameters of the statement being built.
    pub fn placeholders(&self, n: usize) -> String {
        let offset = match self.parts.last() {
            Some((_, args)) if self.combined => args.len(),
            _ => 0,
        };
        placeholders(self.backend, offset + 1, n)
    }

    /// Appends `sql`, its parameters bound by `bind`.
    pub fn push(&mut self, sql: &str, bind: impl FnOnce(&mut Binds<'_>)) -> &mut Self {
        let name = format!("w{}", self.ctes);
        self.push_named(&name, sql, bind)
    }

    /// Like [`Self::push`]; in a [`Self::one_statement`] script on PostgreSQL the
    /// statement is the `WITH` query `name`, which later statements can read its
    /// `RETURNING` rows from.
    pub fn push_named(
        &mut self,
        name: &str,
        sql: &str,
        bind: impl FnOnce(&mut Binds<'_>),
    ) -> &mut Self {
        let (piece, separator) = if self.combined {
            self.ctes += 1;
            (format!("{name} AS ({sql})"), ",\n")
        } else {
            (sql.to_string(), ";\n")
        };
        let joined = self.combined || self.backend == Backend::Sqlite;
        let args = match self.parts.last_mut() {
            Some((text, args)) if joined => {
                text.push_str(separator);
                text.push_str(&piece);
                args
            }
            _ => {
                let text = if self.combined {
                    format!("WITH {piece}")
                } else {
                    piece
                };
                self.parts.push((text, AnyArguments::default()));
                &mut self.parts.last_mut().expect("just pushed").1
            }
        };
        bind(&mut Binds {
            args,
            error: &mut self.error,
        });
        self
    }

    /// Appends multi-row `INSERT`s of `rows`, `per_statement` rows each:
    /// `{head} VALUES (...), (...) {tail}`, `columns` parameters per row bound by
    /// `bind`. No statement when `rows` is empty.
    pub fn insert_rows<T>(
        &mut self,
        (head, tail): (&str, &str),
        columns: usize,
        per_statement: usize,
        rows: &[T],
        bind: impl Fn(&mut Binds<'_>, &T),
    ) -> &mut Self {
        for chunk in rows.chunks(per_statement.max(1)) {
            let all = self.placeholders(chunk.len() * columns);
            let all: Vec<&str> = all.split(", ").collect();
            let values = all
                .chunks(columns.max(1))
                .map(|row| format!("({})", row.join(", ")))
                .collect::<Vec<_>>()
                .join(", ");
            self.push(&format!("{head} VALUES {values} {tail}"), |b| {
                for row in chunk {
                    bind(b, row);
                }
            });
        }
        self
    }

    /// Puts `sql` (no parameters) first.
    fn prepend(&mut self, sql: &str) {
        let joined = self.backend == Backend::Sqlite;
        match self.parts.first_mut() {
            Some((text, _)) if joined => text.insert_str(0, &format!("{sql};\n")),
            _ => self
                .parts
                .insert(0, (sql.to_string(), AnyArguments::default())),
        }
    }

    /// Executes every statement.
    pub async fn execute(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        self.fetch_all(conn).await.map(drop)
    }

    /// Executes every statement; returns the rows they all return.
    pub async fn fetch_all(mut self, conn: &mut AnyConnection) -> Result<Vec<AnyRow>, sqlx::Error> {
        if let Some(e) = self.error.take() {
            return Err(sqlx::Error::Encode(e));
        }
        let mut rows = Vec::new();
        for (mut sql, args) in self.parts {
            if self.combined {
                sql.push('\n');
                sql.push_str(self.primary.as_deref().unwrap_or("SELECT 1"));
            }
            rows.extend(
                sqlx::query_with(AssertSqlSafe(sql), args)
                    .fetch_all(&mut *conn)
                    .await?,
            );
        }
        Ok(rows)
    }
}

/// A write transaction driven by [`Script`]s, from [`Db::begin_script`]. Nothing
/// is sent before its first script: on SQLite, `BEGIN IMMEDIATE` goes with that
/// script and `COMMIT` with the last one (it holds this process's write turn); on
/// PostgreSQL, a transaction whose only script is one statement
/// ([`Script::one_statement`]) is that statement alone, atomic by itself. Dropped
/// without [`Self::commit`] or [`Self::rollback`] (an error, a cancelled task),
/// its connection is closed rather than returned to the pool inside a
/// transaction.
#[derive(Debug)]
pub struct ScriptTx {
    conn: PoolConnection<Any>,
    backend: Backend,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// `BEGIN` was sent.
    begun: bool,
    /// Ended by commit or rollback.
    done: bool,
}

impl Db {
    /// Starts a write transaction for [`Script`]s (see [`ScriptTx`]).
    pub async fn begin_script(&self) -> Result<ScriptTx, sqlx::Error> {
        let turn = self.write_turn().await;
        Ok(ScriptTx {
            conn: self.write_pool().acquire().await?,
            backend: self.backend,
            _turn: turn,
            begun: false,
            done: false,
        })
    }
}

impl ScriptTx {
    /// Runs `script` in the transaction; returns its rows.
    pub async fn fetch_all(&mut self, mut script: Script) -> Result<Vec<AnyRow>, sqlx::Error> {
        if !self.begun {
            self.begun = true;
            match self.backend {
                Backend::Sqlite => script.prepend("BEGIN IMMEDIATE"),
                Backend::Postgres => {
                    sqlx::query("BEGIN").execute(&mut *self.conn).await?;
                }
            }
        }
        script.fetch_all(&mut self.conn).await
    }

    /// The connection, inside the transaction, for statements that need the results
    /// of earlier ones.
    pub async fn conn(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        if !self.begun {
            self.fetch_all(Script::new(self.backend)).await?;
        }
        Ok(&mut self.conn)
    }

    /// Runs `script` and commits; on SQLite in one message (with `BEGIN` when no
    /// script went before). On error the transaction is rolled back.
    pub async fn commit(mut self, mut script: Script) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres && !self.begun && script.parts.len() <= 1 {
            self.done = true;
            return script.execute(&mut self.conn).await;
        }
        let written = match self.backend {
            Backend::Sqlite => {
                script.push("COMMIT", |_| ());
                self.fetch_all(script).await.map(drop)
            }
            Backend::Postgres => match self.fetch_all(script).await {
                Ok(_) => sqlx::query("COMMIT")
                    .execute(&mut *self.conn)
                    .await
                    .map(drop),
                Err(e) => Err(e),
            },
        };
        match written {
            Ok(()) => {
                self.done = true;
                Ok(())
            }
            Err(e) => {
                let _ = self.rollback().await;
                Err(e)
            }
        }
    }

    /// Rolls back.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if self.begun && !self.done {
            // Fails harmlessly when SQLite already rolled back (or BEGIN failed);
            // any other failure leaves `done` unset, so the connection is closed
            // on drop.
            match sqlx::query("ROLLBACK").execute(&mut *self.conn).await {
                Ok(_) => self.done = true,
                Err(e) if no_transaction(&e) => self.done = true,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// SQLite's answer to a `ROLLBACK` outside a transaction.
fn no_transaction(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.message().contains("no transaction is active"))
}

impl Drop for ScriptTx {
    fn drop(&mut self) {
        if self.begun && !self.done {
            self.conn.close_on_drop();
        }
    }
}
