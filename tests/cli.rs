//! The `omniroute` client commands over the real binary: exit codes a script
//! can act on, and failing fast when no daemon answers.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// Runs the real binary with `args` on a blocking thread, without the
/// caller's `OMNIROUTE_*` settings (only what `args` say counts).
async fn omniroute(args: Vec<String>) -> Output {
    omniroute_in(args, None, Vec::new()).await
}

/// As [`omniroute`], in the directory `cwd` (else the test's), with the
/// settings `env` added.
async fn omniroute_in(
    args: Vec<String>,
    cwd: Option<std::path::PathBuf>,
    env: Vec<(&'static str, String)>,
) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_omniroute"));
        command.args(&args);
        for name in [
            "OMNIROUTE_ADDR",
            "OMNIROUTE_TOKEN",
            "OMNIROUTE_CA",
            "OMNIROUTE_DATA_DIR",
        ] {
            command.env_remove(name);
        }
        command.envs(env);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command.output().expect("the omniroute binary runs")
    })
    .await
    .unwrap()
}

/// A daemon in process with channels c and web and `units` of SKU-1 at WH-N.
async fn server_with(
    dir: &TempDir,
    units: u32,
) -> (omniroute::engine::Engine, omniroute::server::RunningServer) {
    let text = format!(
        "{}{}{}",
        channel("c", &["nearest"]),
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "WH-N", units)])
    );
    quic_server(&text, dir).await
}

fn submit(server: &omniroute::server::RunningServer, id: &str, qty: u32) -> Vec<String> {
    [
        "order",
        "submit",
        "--channel",
        "c",
        "--id",
        id,
        "--line",
        &format!("SKU-1:{qty}"),
        "--ship-to",
        "52.5,13.4",
        "--addr",
        &server.addr.to_string(),
        "--ca",
        &server.cert_path.display().to_string(),
        "--token",
        CHANNEL_C_TOKEN,
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_order_exits_0_and_a_rejected_one_exits_3() {
    // Proves a script can tell a routed order (0) from a rejected one (3, not the 1 of an
    // error), that the answer is printed either way, and that a node can ship and take back
    // (`node return`) units of an order from the command line.
    let dir = TempDir::new("cli-exit");
    let (engine, server) = server_with(&dir, 2).await;
    let routed = omniroute(submit(&server, "cli-1", 2)).await;
    let stdout = String::from_utf8_lossy(&routed.stdout);
    assert_eq!(routed.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("routed"), "{stdout}");
    // The node ships one unit and takes it back: `node return`.
    let (addr, ca) = (
        server.addr.to_string(),
        server.cert_path.display().to_string(),
    );
    let connect = ["--addr", &addr, "--ca", &ca, "--token", ADMIN_TOKEN];
    let order = [
        "--channel",
        "c",
        "--id",
        "cli-1",
        "--sku",
        "SKU-1",
        "--qty",
        "1",
    ];
    for step in [["order", "confirm"], ["node", "ship"], ["node", "return"]] {
        let mut args: Vec<String> = step.iter().map(|s| s.to_string()).collect();
        if step[0] == "node" {
            args.push("WH-N".into());
            args.extend(order.iter().map(|s| s.to_string()));
        } else {
            args.extend(order[..4].iter().map(|s| s.to_string()));
        }
        args.extend(connect.iter().map(|s| s.to_string()));
        let done = omniroute(args).await;
        let out = String::from_utf8_lossy(&done.stdout);
        let err = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(0), "{step:?}: {out}{err}");
    }
    let cell = engine.cell("SKU-1", "WH-N").await.unwrap();
    assert_eq!(cell.on_hand, 2, "one shipped, one returned");
    let rejected = omniroute(submit(&server, "cli-2", 5)).await;
    let stdout = String::from_utf8_lossy(&rejected.stdout);
    assert_eq!(rejected.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("rejected"), "{stdout}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_fails_in_seconds_and_a_missing_ca_is_named() {
    // Proves a command against an address where nothing listens ends within the connect
    // timeout with exit 1 and asks whether the daemon runs there, and that a CA file that
    // is not there, or no token at all, is a usage error (2) naming --ca or --token, before
    // anything is sent.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let args = [
        "order",
        "get",
        "--channel",
        "c",
        "--id",
        "x",
        "--insecure",
        "--addr",
        &addr,
        "--token",
        "t",
    ];
    let nobody = omniroute(args.map(String::from).to_vec()).await;
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
    assert_eq!(nobody.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is the daemon running at {addr}?")),
        "{stderr}"
    );

    let missing = "/nonexistent/omniroute-cert.pem";
    let args = [
        "order",
        "get",
        "--channel",
        "c",
        "--id",
        "x",
        "--ca",
        missing,
        "--addr",
        &addr,
    ];
    let no_ca = omniroute(args.map(String::from).to_vec()).await;
    let stderr = String::from_utf8_lossy(&no_ca.stderr);
    assert_eq!(no_ca.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(missing) && stderr.contains("--ca"),
        "{stderr}"
    );

    // No token: nothing is sent as admin by default.
    let args = [
        "order",
        "get",
        "--channel",
        "c",
        "--id",
        "x",
        "--insecure",
        "--addr",
        &addr,
    ];
    let no_token = omniroute(args.map(String::from).to_vec()).await;
    let stderr = String::from_utf8_lossy(&no_token.stderr);
    assert_eq!(no_token.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_may_follow_the_stock_entries() {
    // Proves `stock adjust SKU@NODE=+5 --token X` (options after the entries, and a minus
    // adjustment) is read as meant: the entries were taking every later word as an entry;
    // that `stock set --safety-stock` sets it, that a negative count is a usage error (2),
    // and that a daemon-only option given to a client command is a usage error (2) naming it.
    let dir = TempDir::new("cli-order");
    let (engine, server) = server_with(&dir, 10).await;
    let (addr, ca) = (
        server.addr.to_string(),
        server.cert_path.display().to_string(),
    );
    for entry in ["SKU-1@WH-N=+5", "SKU-1@WH-N=-2"] {
        let args = [
            "stock",
            "adjust",
            entry,
            "--token",
            ADMIN_TOKEN,
            "--addr",
            &addr,
            "--ca",
            &ca,
        ];
        let adjusted = omniroute(args.map(String::from).to_vec()).await;
        let stderr = String::from_utf8_lossy(&adjusted.stderr);
        assert_eq!(adjusted.status.code(), Some(0), "{entry}: {stderr}");
    }
    assert_eq!(engine.cell("SKU-1", "WH-N").await.unwrap().on_hand, 13);
    // A count with a safety stock: `stock set ... --safety-stock N`.
    let args = [
        "stock",
        "set",
        "SKU-1@WH-N=20",
        "--safety-stock",
        "4",
        "--token",
        ADMIN_TOKEN,
        "--addr",
        &addr,
        "--ca",
        &ca,
    ];
    let set = omniroute(args.map(String::from).to_vec()).await;
    assert_eq!(
        set.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let cell = engine.cell("SKU-1", "WH-N").await.unwrap();
    assert_eq!((cell.on_hand, cell.safety_stock), (20, 4));
    // A negative count is read wrongly, like any argument: exit 2 (as for --line).
    let args = [
        "stock",
        "set",
        "SKU-1@WH-N=-5",
        "--token",
        ADMIN_TOKEN,
        "--addr",
        &addr,
        "--ca",
        &ca,
    ];
    let negative = omniroute(args.map(String::from).to_vec()).await;
    let stderr = String::from_utf8_lossy(&negative.stderr);
    assert_eq!(negative.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SKU-1@WH-N"), "{stderr}");
    // A daemon option on a client command is a usage error, not ignored.
    for misplaced in [["--config", "elsewhere"], ["--listen", "127.0.0.1:1"]] {
        let mut args: Vec<String> = ["order", "get", "--channel", "c", "--id", "x"]
            .map(String::from)
            .to_vec();
        args.extend(misplaced.map(String::from));
        args.extend(["--token", ADMIN_TOKEN, "--addr", &addr, "--ca", &ca].map(String::from));
        let refused = omniroute(args).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{misplaced:?}: {stderr}");
        assert!(stderr.contains(misplaced[0]), "{stderr}");
    }
    server.shutdown().await;
}

/// Standard output of a running `omniroute order follow`, line by line.
type FollowLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Starts `omniroute order follow --channel c` with `connect`'s options
/// (and no `OMNIROUTE_*` settings), killed if the test drops it.
fn follow_channel_c(connect: &[&str]) -> (tokio::process::Child, FollowLines) {
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_omniroute"))
        .args(["order", "follow", "--channel", "c"])
        .args(connect)
        .env_remove("OMNIROUTE_ADDR")
        .env_remove("OMNIROUTE_TOKEN")
        .env_remove("OMNIROUTE_CA")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = tokio::io::BufReader::new(follow.stdout.take().unwrap());
    (follow, tokio::io::AsyncBufReadExt::lines(stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_follow_prints_each_change_and_ctrl_c_closes_it() {
    // Proves `order follow` prints a routed order's changes numbered by cursor, that
    // Ctrl-C ends it with exit 0 and closes its connection (the server's stop is then
    // immediate, not its drain timeout), and that `order list` pages through every order.
    let dir = TempDir::new("cli-follow");
    let (_engine, server) = server_with(&dir, 10).await;
    let (addr, ca) = (
        server.addr.to_string(),
        server.cert_path.display().to_string(),
    );
    let connect = ["--addr", &addr, "--ca", &ca, "--token", CHANNEL_C_TOKEN];
    let (mut follow, mut lines) = follow_channel_c(&connect);
    let first = lines.next_line().await.unwrap().unwrap();
    assert!(first.starts_with("following c; first cursor 1"), "{first}");
    for i in 0..3 {
        let done = omniroute(submit(&server, &format!("f-{i}"), 1)).await;
        assert_eq!(done.status.code(), Some(0));
    }
    let mut routed = Vec::new();
    while routed.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a status line within 20 s")
            .unwrap()
            .unwrap();
        if line.starts_with('#') {
            routed.push(line);
        }
    }
    for (i, line) in routed.iter().enumerate() {
        assert!(line.starts_with(&format!("#{} routed", i + 1)), "{line}");
        assert!(line.contains(&format!("(f-{i}) now held")), "{line}");
    }
    // SAFETY: kill only sends SIGINT to our own child process.
    assert_eq!(
        unsafe { libc::kill(follow.id().unwrap() as i32, libc::SIGINT) },
        0
    );
    let status = tokio::time::timeout(Duration::from_secs(10), follow.wait())
        .await
        .expect("follow ends on Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    let mut args: Vec<String> = ["order", "list", "--channel", "c", "--limit", "2", "--all"]
        .map(String::from)
        .to_vec();
    args.extend(connect.map(String::from));
    let listed = omniroute(args).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.status.code(), Some(0), "{stdout}");
    for i in 0..3 {
        assert_eq!(stdout.matches(&format!("/f-{i})")).count(), 1, "{stdout}");
    }
    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no connection was left open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_try_line_works_as_printed_and_addr_takes_a_host_name() {
    // Proves the command the daemon prints after "try:" routes an order when run as printed,
    // though the daemon listens on another port than the client's default (the hint names
    // it), and that `--addr` takes a host name (`localhost:PORT`).
    let dir = TempDir::new("cli-try");
    let mut daemon = common::daemon::Daemon::start(&dir.0, None, "off").await;
    let line = daemon.line_with("try: ").await;
    let words: Vec<String> = line.split_whitespace().skip(2).map(String::from).collect();
    assert!(words.contains(&"--addr".to_string()), "{line}");
    let done = omniroute(words.clone()).await;
    let out = String::from_utf8_lossy(&done.stdout);
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{line}\n{out}{err}");
    let at = words.iter().position(|w| w == "--addr").unwrap() + 1;
    let port = words[at].rsplit(':').next().unwrap().to_string();
    let mut by_name = words;
    by_name[at] = format!("localhost:{port}");
    let done = omniroute(by_name).await;
    let out = String::from_utf8_lossy(&done.stdout);
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "by name: {out}{err}");
    assert!(daemon.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_asks_the_named_daemon_over_its_admin_port() {
    // Proves `omniroute reload` reloads the daemon at `--admin` with an admin token (exit 0,
    // the daemon's answer printed), exits 1 naming the refusal for a channel token, and 1
    // naming the address when nothing answers there: no signal to any other process.
    let dir = TempDir::new("cli-reload");
    let config = dir.0.join("omniroute.toml");
    std::fs::write(&config, include_str!("../config/default.toml")).unwrap();
    let data = dir.0.join("data");
    let mut daemon = common::daemon::Daemon::start(&data, Some(&config), "127.0.0.1:0").await;
    let admin = daemon.admin().to_string();
    let reload = |token: &str, at: &str| {
        ["reload", "--admin", at, "--token", token]
            .map(String::from)
            .to_vec()
    };
    let done = omniroute(reload("dev-admin-token", &admin)).await;
    let out = String::from_utf8_lossy(&done.stdout);
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("\"lsn\""), "{out}");
    let refused = omniroute(reload("dev-web-token", &admin)).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("refused the reload"), "{err}");
    assert!(daemon.terminate().await.success());
    let nobody = omniroute(reload("dev-admin-token", &admin)).await;
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert_eq!(nobody.status.code(), Some(1), "{err}");
    assert!(err.contains(&admin), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_without_closing_does_not_hold_the_stop() {
    // Proves a follower whose process died without closing its connection (SIGKILL) does
    // not hold a graceful stop: what it was not sent stays in the channel's log, so the stop
    // ends its stream at once and every accepted request counts as answered, instead of the
    // stop waiting out its drain bound for a peer that is gone.
    let dir = TempDir::new("cli-dead-follower");
    let (_engine, server) = server_with(&dir, 10).await;
    let (addr, ca) = (
        server.addr.to_string(),
        server.cert_path.display().to_string(),
    );
    let connect = ["--addr", &addr, "--ca", &ca, "--token", CHANNEL_C_TOKEN];
    let (mut follow, mut lines) = follow_channel_c(&connect);
    let first = lines.next_line().await.unwrap().unwrap();
    assert!(first.starts_with("following c"), "{first}");
    follow.start_kill().unwrap();
    follow.wait().await.unwrap();
    // It died a while before the stop, as a follower lost to a crash does:
    // its last answers were acknowledged then. (One that dies within
    // MIN_ACK_WAIT of an answer, right before a stop, may still hold it up
    // to the drain bound: that answer could be in flight to a live peer.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A change the dead follower is sent and never acknowledges.
    let done = omniroute(submit(&server, "after-death", 1)).await;
    assert_eq!(done.status.code(), Some(0));
    let drained = server.shutdown().await;
    assert!(
        drained.complete,
        "the stop waited {} ms for a follower that is gone",
        drained.elapsed_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_refused_in_user_terms() {
    // Proves `--limit 0` is refused before anything is sent (exit 2 and a message naming it,
    // where nothing listens at --addr and no CA was given)
    // and that a refused quantity is explained with its bounds, not a constant's name.
    let dir = TempDir::new("cli-terms");
    let (_engine, server) = server_with(&dir, 10).await;
    let args = ["order", "list", "--channel", "c", "--limit", "0"];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args.extend(["--addr", "127.0.0.1:9", "--token", "t"].map(String::from));
    let listed = omniroute(args).await;
    let err = String::from_utf8_lossy(&listed.stderr);
    assert_eq!(listed.status.code(), Some(2), "{err}");
    assert!(err.contains("--limit"), "{err}");
    let zero = omniroute(submit(&server, "q-0", 0)).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&zero.stdout),
        String::from_utf8_lossy(&zero.stderr)
    );
    assert_ne!(zero.status.code(), Some(0), "{said}");
    assert!(said.contains("between 1 and 1000000"), "{said}");
    assert!(!said.contains("MAX_"), "{said}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_is_found_in_the_data_directory_named_by_flag_or_environment() {
    // Proves a client command with no --ca trusts the certificate in the data directory
    // named by --data-dir or OMNIROUTE_DATA_DIR, from any working directory, and that with
    // neither it names where it looked (the default data directory) and what to pass.
    let dir = TempDir::new("cli-ca-dir");
    let (_engine, server) = server_with(&dir, 3).await;
    let data_dir = server.cert_path.parent().unwrap().display().to_string();
    let elsewhere = TempDir::new("cli-ca-cwd");
    let addr = server.addr.to_string();
    let ask = |extra: &[&str]| {
        let mut args: Vec<String> = ["availability", "SKU-1", "--token", ADMIN_TOKEN, "--addr"]
            .map(String::from)
            .to_vec();
        args.push(addr.clone());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let by_flag = omniroute_in(
        ask(&["--data-dir", &data_dir]),
        Some(elsewhere.0.clone()),
        vec![],
    )
    .await;
    let err = String::from_utf8_lossy(&by_flag.stderr);
    assert_eq!(by_flag.status.code(), Some(0), "--data-dir: {err}");
    let by_env = omniroute_in(
        ask(&[]),
        Some(elsewhere.0.clone()),
        vec![("OMNIROUTE_DATA_DIR", data_dir.clone())],
    )
    .await;
    let err = String::from_utf8_lossy(&by_env.stderr);
    assert_eq!(by_env.status.code(), Some(0), "OMNIROUTE_DATA_DIR: {err}");
    let neither = omniroute_in(ask(&[]), Some(elsewhere.0.clone()), vec![]).await;
    let err = String::from_utf8_lossy(&neither.stderr);
    assert_eq!(neither.status.code(), Some(2), "{err}");
    assert!(
        err.contains("omniroute-data/cert.pem") && err.contains("--data-dir"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_sku_is_refused_unless_created() {
    // Proves `stock set` and `stock adjust` refuse a SKU the daemon does not know (exit 1,
    // naming it and --create) with nothing added, and add it with --create.
    let dir = TempDir::new("cli-unknown-sku");
    let (engine, server) = server_with(&dir, 3).await;
    let (addr, ca) = (
        server.addr.to_string(),
        server.cert_path.display().to_string(),
    );
    let stock = |words: &[&str]| {
        let mut args: Vec<String> = ["stock"].map(String::from).to_vec();
        args.extend(words.iter().map(|s| s.to_string()));
        args.extend(["--token", ADMIN_TOKEN, "--addr", &addr, "--ca", &ca].map(String::from));
        args
    };
    for words in [["set", "SKU-I@WH-N=5"], ["adjust", "SKU-I@WH-N=+5"]] {
        let refused = omniroute(stock(&words)).await;
        let err = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{words:?}: {err}");
        assert!(err.contains("SKU-I") && err.contains("--create"), "{err}");
        assert!(
            engine.cell("SKU-I", "WH-N").await.is_err(),
            "{words:?} added it"
        );
    }
    // A known SKU needs no --create.
    let known = omniroute(stock(&["set", "SKU-1@WH-N=4"])).await;
    assert_eq!(known.status.code(), Some(0));
    let created = omniroute(stock(&["set", "SKU-I@WH-N=5", "--create"])).await;
    let err = String::from_utf8_lossy(&created.stderr);
    assert_eq!(created.status.code(), Some(0), "{err}");
    assert_eq!(engine.cell("SKU-I", "WH-N").await.unwrap().on_hand, 5);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pickup_order_needs_no_ship_to() {
    // Proves `order submit --pickup STORE` without --ship-to routes at the store (the
    // customer collects it there), and that a shipped order still needs its ship-to.
    let dir = TempDir::new("cli-pickup");
    let text = format!(
        "{}{}{}",
        channel("c", &["nearest"]),
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "ST-1", 3)])
    );
    let (engine, server) = quic_server(&text, &dir).await;
    let (addr, ca) = (
        server.addr.to_string(),
        server.cert_path.display().to_string(),
    );
    let submit = |extra: &[&str]| {
        let mut args: Vec<String> = ["order", "submit", "--channel", "c", "--line", "SKU-1:2"]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--token", CHANNEL_C_TOKEN, "--addr", &addr, "--ca", &ca].map(String::from));
        args
    };
    let pickup = omniroute(submit(&["--id", "pick-1", "--pickup", "ST-1"])).await;
    let out = String::from_utf8_lossy(&pickup.stdout);
    let err = String::from_utf8_lossy(&pickup.stderr);
    assert_eq!(pickup.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("ST-1"), "{out}");
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 2);
    let ship = omniroute(submit(&["--id", "ship-1"])).await;
    let err = String::from_utf8_lossy(&ship.stderr);
    assert_eq!(ship.status.code(), Some(2), "{err}");
    assert!(err.contains("--ship-to"), "{err}");
    server.shutdown().await;
}

#[test]
fn every_command_has_its_row_in_the_exit_code_table() {
    // Proves docs/OPERATIONS.md's exit-code table has a row for every command `omniroute
    // --help` lists (and the load generator), so a script writer finds each code in one place.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_omniroute"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(commands.len() >= 10, "{help}");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md"))
        .unwrap();
    let table = doc
        .split("**Exit codes**")
        .nth(1)
        .expect("OPERATIONS.md has an exit-code table");
    let first_cells: Vec<&str> = table
        .lines()
        .skip_while(|line| !line.trim_start().starts_with('|'))
        .take_while(|line| line.trim_start().starts_with('|'))
        .filter_map(|line| line.trim_start().split('|').nth(1))
        .collect();
    for command in commands.iter().copied().chain(["omniroute-loadtest"]) {
        assert!(
            first_cells
                .iter()
                .any(|cell| cell.contains(&format!("`{command}`"))
                    || cell.contains(&format!("`{command} "))),
            "no row for {command} in {first_cells:?}"
        );
    }
}
