//! `live::Postgres`: a ready recipe for a PostgreSQL server.

use super::{Connect, Secret};
use crate::error::BoxError;
use postgres::{Client, Config, NoTls};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// How long `connect` waits for a server when the parameters set no
/// `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`is_valid`](Connect::is_valid) waits for the server to answer
/// an empty query.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A recipe for a PostgreSQL connection (feature `postgres`):
/// `Conn = postgres::Client`, without TLS.
///
/// The parameters are those of the `postgres` crate's `Config`: either
/// `key=value` pairs (`"host=localhost port=5432 user=app dbname=shop"`) or
/// a URL (`"postgresql://app@localhost/shop"`). Keep the password out of
/// them: give it as a [`Secret`], which never shows in `Debug` output, in
/// errors or in the child's command line or environment. A `connect_timeout`
/// of 10 s applies unless the parameters set one.
///
/// A connection is [valid](Connect::is_valid) while the server answers an
/// empty query within 5 s, so [`Live::with`](super::Live::with) reconnects
/// after the server ended the session (a restart, `pg_terminate_backend`,
/// an idle timeout) and runs its closure once more.
///
/// # Examples
///
/// ```no_run
/// use skprocess::live::{Live, Postgres, Secret};
///
/// # fn main() -> Result<(), skprocess::BoxError> {
/// let pw = Secret::new(std::env::var("APP_DB_PASSWORD")?);
/// let mut db = Live::new(Postgres::new("host=localhost user=app dbname=shop").password(pw));
/// let n: i64 = db.with(|c| c.query_one("SELECT count(*) FROM orders", &[]))?.get(0);
/// println!("{n} orders");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Postgres {
    params: String,
    password: Option<Secret<String>>,
}

impl Postgres {
    /// Connection parameters, `key=value` pairs or a URL.
    pub fn new(params: impl Into<String>) -> Postgres {
        Postgres {
            params: params.into(),
            password: None,
        }
    }

    /// The password to log in with.
    pub fn password(mut self, password: Secret<String>) -> Postgres {
        self.password = Some(password);
        self
    }

    fn config(&self) -> Result<Config, postgres::Error> {
        let mut config: Config = self.params.parse()?;
        if let Some(pw) = &self.password {
            config.password(pw.expose());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(config)
    }
}

impl Connect for Postgres {
    type Conn = Client;

    fn connect(&self) -> Result<Client, BoxError> {
        Ok(self.config()?.connect(NoTls)?)
    }

    fn is_valid(&self, conn: &mut Client) -> bool {
        !conn.is_closed() && conn.is_valid(PROBE_TIMEOUT).is_ok()
    }
}

/// Where it connects, never the password.
impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Postgres");
        match self.params.parse::<Config>() {
            Ok(c) => {
                let password = self.password.is_some() || c.get_password().is_some();
                d.field("hosts", &c.get_hosts())
                    .field("ports", &c.get_ports())
                    .field("user", &c.get_user())
                    .field("dbname", &c.get_dbname())
                    .field("password", &password.then_some(format_args!("***")))
            }
            Err(_) => d.field("params", &format_args!("(unparsable)")),
        }
        .finish()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn debug_never_shows_a_password() {
        let p = Postgres::new("host=db.example port=5433 user=app dbname=shop password=inline-pw")
            .password(Secret::new("given-pw".into()));
        let text = format!("{p:?}");
        assert!(
            !text.contains("inline-pw") && !text.contains("given-pw"),
            "{text}"
        );
        assert!(text.contains("db.example") && text.contains("shop") && text.contains("***"));
        let bad = format!("{:?}", Postgres::new("port=notanumber password=x9"));
        assert!(!bad.contains("x9"), "{bad}");
    }

    #[test]
    fn a_bad_parameter_string_is_an_error_not_a_panic() {
        let e = match Postgres::new("port=notanumber").connect() {
            Err(e) => e,
            Ok(_) => panic!("connected with a port that is not a number"),
        };
        assert!(e.to_string().contains("invalid"), "{e}");
    }
}
