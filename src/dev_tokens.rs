//! The embedded default config's tokens are published with the source:
//! anyone can say `Hello` with them. A daemon that still has one serves only
//! on loopback; on any other address it refuses to start and says how to
//! set real tokens.

use std::net::SocketAddr;

use crate::config::{Config, ValidConfig};

/// A daemon listening beyond loopback with a development token.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to start: the {listener} listens on {addr}, which is not a loopback address, \
     and the token table has the embedded default config's development tokens (for roles {roles}), \
     which anyone can read in the source. Set tokens of your own in a config file \
     ([[server.tokens]] with token = \"a long random secret\" and role = \"admin\", \
     \"channel:NAME\" or \"node:ID\"; docs/OPERATIONS.md, \"Tokens\") and start with \
     --config FILE, or listen on 127.0.0.1 for development"
)]
pub struct DevTokensExposed {
    /// The listener and its flag or key, e.g. "QUIC listener (--listen, server.listen)".
    pub listener: &'static str,
    pub addr: SocketAddr,
    /// The roles of the development tokens in force, comma-separated.
    pub roles: String,
}

/// The daemon's listeners, as a check of its tokens needs them: each with
/// the flag and key that set it.
#[derive(Clone, Debug)]
pub struct Listeners(Vec<(&'static str, SocketAddr)>);

impl Listeners {
    pub fn of(config: &ValidConfig) -> Listeners {
        let all = [
            (
                "QUIC listener (--listen, server.listen)",
                Some(config.server.listen),
            ),
            ("HTTP gateway (--http, http.listen)", config.http),
            ("admin port (--admin, admin.listen)", config.admin),
        ];
        Listeners(
            all.into_iter()
                .filter_map(|(name, addr)| Some((name, addr?)))
                .collect(),
        )
    }
}

/// Refuses a config whose QUIC, HTTP or admin address is not loopback while
/// its token table holds a token of the embedded default config.
pub fn refuse_exposed(config: &ValidConfig) -> Result<(), DevTokensExposed> {
    refuse_tokens(&config.server.tokens.table(), &Listeners::of(config))
}

/// Refuses `table` if it holds a token of the embedded default config
/// while one of `listeners` is not loopback: at start, and for the table a
/// policy reload would put in force.
pub fn refuse_tokens(
    table: &[(String, crate::server::Role)],
    listeners: &Listeners,
) -> Result<(), DevTokensExposed> {
    let development: Vec<String> = Config::default_config()
        .server
        .tokens
        .into_iter()
        .map(|t| t.token)
        .collect();
    let roles: Vec<String> = table
        .iter()
        .filter(|(token, _)| development.contains(token))
        .map(|(_, role)| role.name())
        .collect();
    if roles.is_empty() {
        return Ok(());
    }
    match listeners
        .0
        .iter()
        .find(|(_, addr)| !addr.ip().is_loopback())
    {
        Some(&(listener, addr)) => Err(DevTokensExposed {
            listener,
            addr,
            roles: roles.join(", "),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_tokens_serve_on_loopback_only() {
        // Proves the embedded config starts as it is, and is refused once any
        // one of its three listeners is not loopback, naming that listener.
        let loopback = Config::default_config().validate().unwrap();
        refuse_exposed(&loopback).expect("loopback with development tokens is fine");
        let any: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let mut quic = loopback.clone();
        quic.server.listen = any;
        let mut http = loopback.clone();
        http.http = Some(any);
        let mut admin = loopback.clone();
        admin.admin = Some("[::]:9090".parse().unwrap());
        for (config, flag) in [(quic, "--listen"), (http, "--http"), (admin, "--admin")] {
            let refused = refuse_exposed(&config).expect_err("refused").to_string();
            assert!(refused.contains(flag), "{refused}");
            assert!(refused.contains("[[server.tokens]]"), "{refused}");
        }
    }

    #[test]
    fn own_tokens_serve_on_any_address() {
        // Proves a token table without the embedded tokens is not refused
        // on a public address.
        let mut config = Config::default_config();
        for (i, token) in config.server.tokens.iter_mut().enumerate() {
            token.token = format!("a-real-secret-{i}");
        }
        let mut valid = config.validate().unwrap();
        valid.server.listen = "0.0.0.0:4433".parse().unwrap();
        valid.http = Some("0.0.0.0:8080".parse().unwrap());
        refuse_exposed(&valid).expect("own tokens");
    }

    #[test]
    fn a_reloaded_table_with_the_embedded_tokens_is_refused_beyond_loopback() {
        // Proves the check a reload makes: the embedded tokens are refused for a daemon whose
        // listeners (kept from its start) include a public address, and taken on loopback.
        let loopback = Config::default_config().validate().unwrap();
        let development = loopback.server.tokens.table();
        refuse_tokens(&development, &Listeners::of(&loopback)).expect("loopback");
        let mut public = loopback.clone();
        public.server.listen = "0.0.0.0:4433".parse().unwrap();
        let refused = refuse_tokens(&development, &Listeners::of(&public))
            .expect_err("refused")
            .to_string();
        assert!(refused.contains("--listen"), "{refused}");
    }
}
