//! `omniroute-loadtest`: the open-loop load generator. The QUIC generator
//! arrives with the load-test issue; until then this binary only says so, so
//! that the workspace layout (and `cargo run -p omniroute-loadtest`) is stable.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    eprintln!(
        "omniroute-loadtest {}: the QUIC load generator is not built yet; \
         use `cargo bench` for in-process engine throughput",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
