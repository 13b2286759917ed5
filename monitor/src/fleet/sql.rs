//! One SQL connection, SQLite or PostgreSQL, behind the few calls the fleet store makes:
//! execute, query into plain cells, and a transaction by statement. Statements are written
//! once with `$1`-style parameters in the subset both databases accept.

use std::path::Path;

/// A parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Int(i64),
    Text(String),
    Null,
}

/// A result cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Int(i64),
    Text(String),
    Null,
}

impl Cell {
    pub fn int(&self) -> i64 {
        match self {
            Cell::Int(i) => *i,
            Cell::Text(t) => t.parse().unwrap_or(0),
            Cell::Null => 0,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Cell::Int(i) => i.to_string(),
            Cell::Text(t) => t.clone(),
            Cell::Null => String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    Other(String),
}

pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

impl Conn {
    pub fn sqlite(path: &Path) -> Result<Conn, SqlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| SqlError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let c = rusqlite::Connection::open(path)?;
        c.busy_timeout(std::time::Duration::from_secs(5))?;
        c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        Ok(Conn::Sqlite(c))
    }

    /// `url`: a libpq-style URL or key=value string. `sslmode=require` speaks TLS and checks
    /// the server's certificate and name against `ca_file` (PEM), else the system's roots
    /// (stricter than libpq's `require`); `prefer` (the default) does the same when the server
    /// offers TLS and `ca_file` is given, else plaintext; `disable` never.
    pub fn postgres(url: &str, ca_file: Option<&Path>) -> Result<Conn, SqlError> {
        let mut cfg: postgres::Config = url.parse()?;
        cfg.connect_timeout(std::time::Duration::from_secs(10));
        cfg.application_name("tlsmon-aggregate");
        let client = match cfg.get_ssl_mode() {
            postgres::config::SslMode::Disable => cfg.connect(postgres::NoTls)?,
            // `prefer` (the URL's default) without a CA file: plaintext, as before TLS was
            // supported; a server's self-signed certificate (Debian's snakeoil) must not
            // stop an aggregator that never asked for TLS.
            postgres::config::SslMode::Prefer if ca_file.is_none() => {
                cfg.connect(postgres::NoTls)?
            }
            _ => cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                pg_tls_config(ca_file)?,
            ))?,
        };
        Ok(Conn::Postgres(Box::new(client)))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }

    /// Statements without parameters, separated by `;`.
    pub fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(sql)?,
            Conn::Postgres(c) => c.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Rows changed.
    pub fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(&sqlite_dialect(sql))?;
                Ok(st.execute(rusqlite::params_from_iter(params.iter().map(sqlite_val)))? as u64)
            }
            Conn::Postgres(c) => {
                let st = c.prepare(sql)?;
                let boxed = pg_params(params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|b| b.as_ref()).collect();
                Ok(c.execute(&st, &refs)?)
            }
        }
    }

    pub fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Cell>>, SqlError> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(&sqlite_dialect(sql))?;
                let n = st.column_count();
                let rows = st.query_map(
                    rusqlite::params_from_iter(params.iter().map(sqlite_val)),
                    |r| {
                        (0..n)
                            .map(|i| {
                                Ok(match r.get_ref(i)? {
                                    rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
                                    rusqlite::types::ValueRef::Real(v) => Cell::Int(v as i64),
                                    rusqlite::types::ValueRef::Text(t) => {
                                        Cell::Text(String::from_utf8_lossy(t).into_owned())
                                    }
                                    rusqlite::types::ValueRef::Blob(_)
                                    | rusqlite::types::ValueRef::Null => Cell::Null,
                                })
                            })
                            .collect::<rusqlite::Result<Vec<Cell>>>()
                    },
                )?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            }
            Conn::Postgres(c) => {
                let boxed = pg_params(params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|b| b.as_ref()).collect();
                let rows = c.query(sql, &refs)?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// Runs `f` in one transaction: committed when it returns Ok, rolled back otherwise.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.batch("BEGIN")?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// `$1` -> `?1` (SQLite's numbered parameters; `$` would be a name there).
fn sqlite_dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_val(v: &Val) -> rusqlite::types::Value {
    match v {
        Val::Int(i) => rusqlite::types::Value::Integer(*i),
        Val::Text(t) => rusqlite::types::Value::Text(t.clone()),
        Val::Null => rusqlite::types::Value::Null,
    }
}

/// Where the system's CA certificates are (Debian's ca-certificates).
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A TLS client that trusts the CA certificates of `ca_file` (PEM), else the system's.
fn pg_tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, SqlError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let path = ca_file.unwrap_or(Path::new(SYSTEM_CA));
    let what = if ca_file.is_some() {
        "aggregate.store_ca_file"
    } else {
        "the system CA certificates"
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| SqlError::Other(format!("{what} {}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| SqlError::Other(format!("{what} {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| SqlError::Other(format!("{what} {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(SqlError::Other(format!(
            "{what} {}: no certificate in it",
            path.display()
        )));
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    .map_err(|e| SqlError::Other(format!("TLS for PostgreSQL: {e}")))
}

fn pg_params(params: &[Val]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn postgres::types::ToSql + Sync> {
            match v {
                Val::Int(i) => Box::new(*i),
                Val::Text(t) => Box::new(t.clone()),
                Val::Null => Box::new(Option::<String>::None),
            }
        })
        .collect()
}

fn pg_row(r: &postgres::Row) -> Result<Vec<Cell>, SqlError> {
    use postgres::types::Type;
    (0..r.len())
        .map(|i| {
            let ty = r.columns()[i].type_().clone();
            Ok(if ty == Type::INT8 {
                r.try_get::<_, Option<i64>>(i)?
                    .map_or(Cell::Null, Cell::Int)
            } else if ty == Type::INT4 {
                r.try_get::<_, Option<i32>>(i)?
                    .map_or(Cell::Null, |v| Cell::Int(v.into()))
            } else if ty == Type::TEXT || ty == Type::VARCHAR {
                r.try_get::<_, Option<String>>(i)?
                    .map_or(Cell::Null, Cell::Text)
            } else {
                return Err(SqlError::Other(format!(
                    "column {} has type {ty}, expected bigint or text",
                    r.columns()[i].name()
                )));
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_are_rewritten_for_sqlite_only_where_they_are_parameters() {
        assert_eq!(
            sqlite_dialect("SELECT $1, '$x', $12 FROM t WHERE a = $2"),
            "SELECT ?1, '$x', ?12 FROM t WHERE a = ?2"
        );
    }

    #[test]
    fn sqlite_round_trip_and_rollback() {
        let dir = std::env::temp_dir().join(format!("tlsmon-sql-{}", std::process::id()));
        let mut c = Conn::sqlite(&dir.join("t.db")).expect("open");
        c.batch("CREATE TABLE t (a BIGINT, b TEXT)")
            .expect("create");
        c.exec(
            "INSERT INTO t VALUES ($1, $2)",
            &[Val::Int(1), Val::Text("x".into())],
        )
        .expect("insert");
        let r: Result<(), SqlError> = c.transaction(|c| {
            c.exec("INSERT INTO t VALUES ($1, $2)", &[Val::Int(2), Val::Null])?;
            Err(SqlError::Other("no".into()))
        });
        assert!(r.is_err());
        let rows = c
            .query("SELECT a, b FROM t ORDER BY a", &[])
            .expect("query");
        assert_eq!(rows, vec![vec![Cell::Int(1), Cell::Text("x".into())]]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_named() {
        let dir = std::env::temp_dir().join(format!("tlsmon-sql-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = pg_tls_config(Some(&dir.join("missing.pem"))).unwrap_err();
        assert!(
            missing.to_string().contains("aggregate.store_ca_file"),
            "{missing}"
        );
        std::fs::write(dir.join("empty.pem"), "not a certificate\n").expect("write");
        let empty = pg_tls_config(Some(&dir.join("empty.pem"))).unwrap_err();
        assert!(empty.to_string().contains("no certificate"), "{empty}");
        // With the URL's sslmode=disable no TLS is tried, whatever the CA file.
        let r = Conn::postgres(
            "postgres://u@127.0.0.1:1/db?sslmode=disable&connect_timeout=1",
            Some(&dir.join("missing.pem")),
        );
        assert!(
            !matches!(&r, Err(SqlError::Other(m)) if m.contains("store_ca_file")),
            "the CA file was read with sslmode=disable"
        );
        let r = Conn::postgres(
            "postgres://u@127.0.0.1:1/db?sslmode=require",
            Some(&dir.join("missing.pem")),
        );
        assert!(
            matches!(&r, Err(SqlError::Other(m)) if m.contains("store_ca_file")),
            "sslmode=require went on without its CA file"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
