//! `omniroute reload`: asks one running daemon to reload its routing
//! policies and tokens over its admin port (`POST /policy/reload` with an
//! admin token). A SIGHUP sent with `pidof omniroute` reaches every process
//! of that name on the host, the client commands that follow orders
//! included (they exit 129); this touches the daemon it names only.

use std::time::Duration;

use crate::cli::CliError;

/// How long the daemon has to answer: a reload reads and checks the config
/// file and journals what it applies, well under this.
const RELOAD_TIMEOUT_MS: u64 = 30_000;

#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    /// The daemon's admin port, `HOST:PORT` (its `admin on http://...`
    /// line at start; `admin.listen` in its config).
    #[arg(
        long = "admin",
        default_value = "127.0.0.1:9090",
        env = "OMNIROUTE_ADMIN"
    )]
    pub admin: String,
    /// An admin token of the daemon's config.
    #[arg(long, env = "OMNIROUTE_TOKEN")]
    pub token: Option<String>,
}

/// Reloads and prints the daemon's answer (what it applied, what needs a
/// restart); a refusal is an error with the daemon's reason.
pub fn run(args: &ReloadArgs) -> Result<(), CliError> {
    let Some(token) = args.token.as_deref() else {
        return Err(CliError::Usage(
            "no token: pass --token (or set OMNIROUTE_TOKEN) with an admin token of the daemon's config".into(),
        ));
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(RELOAD_TIMEOUT_MS)))
        .build()
        .into();
    let url = format!("http://{}/policy/reload", args.admin);
    let mut response = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_empty()
        .map_err(|e| {
            CliError::Daemon(format!(
                "no answer from an admin port at {} ({e}): is the daemon running with its admin port there? (--admin HOST:PORT)",
                args.admin
            ))
        })?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if status == 200 {
        println!("{body}");
        return Ok(());
    }
    Err(CliError::Daemon(format!(
        "the daemon at {} refused the reload ({status}): {body}",
        args.admin
    )))
}
