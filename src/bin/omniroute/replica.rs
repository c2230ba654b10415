//! `omniroute serve` with `[cluster]` in the config: one replica of a
//! cluster, until SIGTERM or SIGINT (or a failure it cannot go on from);
//! and `omniroute cluster certs`, which makes the cluster's certificates.

use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;
use omniroute::config::{ClusterSettings, ValidConfig};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Make a cluster CA and a certificate and key for each replica
    /// (`ca.pem`, `replica-<id>.pem`, `replica-<id>.key`) in a new directory:
    /// every replica's `[cluster] certs_dir` needs the CA, its own pair.
    Certs {
        /// The directory to write (refused if it holds any of the files).
        #[arg(long)]
        dir: PathBuf,
        /// The replicas' ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u64>,
    },
}

pub fn run(command: ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Certs { dir, ids } => {
            omniroute::replica::certs::generate(&dir, &ids).map_err(|e| e.to_string())?;
            println!(
                "cluster certificates for replicas {ids:?} in {} (keep ca.key offline: it signs new replicas)",
                dir.display()
            );
            Ok(())
        }
    }
}

/// Runs replica `cluster.id` until a signal or a failure.
pub async fn serve(config: ValidConfig, cluster: ClusterSettings) -> Result<(), String> {
    let started = Instant::now();
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hangup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let replica = omniroute::cluster::start(&config, &cluster)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "omniroute {} replica {} of {:?} ready in {} ms",
        env!("CARGO_PKG_VERSION"),
        cluster.id,
        cluster.voters(),
        started.elapsed().as_millis()
    );
    println!(
        "listening on {} (QUIC, ALPN omniroute/1)",
        replica.server.addr
    );
    if let Some(http) = &replica.http {
        println!("http on http://{}", http.addr);
    }
    if let Some(admin) = &replica.admin {
        println!("admin on http://{} (/metrics /healthz /readyz)", admin.addr);
    }
    println!(
        "replication on {} (QUIC, ALPN omniroute-raft/1, mutual TLS)",
        cluster.listen
    );
    println!(
        "certificate {} (SHA-256 {})",
        replica.server.cert_path.display(),
        replica.server.fingerprint
    );
    let mut failed = replica.failed.clone();
    let failure = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = interrupt.recv() => break None,
            reason = failed.wait_for(Option::is_some) => break reason.ok().and_then(|r| r.clone()),
            // Not the default disposition (which would kill the replica).
            _ = hangup.recv() => println!(
                "policy reload refused: a replica does not reload its policies yet (restart the replicas one at a time with the new config)"
            ),
        }
    };
    println!("shutting down");
    replica.shutdown().await;
    match failure {
        Some(reason) => Err(format!("replica {} stopped: {reason}", cluster.id)),
        None => Ok(()),
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, String> {
    tokio::signal::unix::signal(kind).map_err(|e| format!("cannot handle a signal: {e}"))
}
