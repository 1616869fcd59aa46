//! The `threadhost` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use threadhost::server::{default_data_dir, parse_duration, serve, ServeConfig, Transport};

/// Host long-lived AI-agent conversations ("threads") and serve them with the JSON-RPC
/// protocol of OpenAI Codex's app-server.
#[derive(Debug, Parser)]
#[command(name = "threadhost", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve JSON-RPC over WebSocket (default) or stdio until SIGINT/SIGTERM.
    ///
    /// WebSocket: one message per text frame at ws://ADDR/, with GET /healthz and GET
    /// /metrics (Prometheus text) on the same port. stdio: one message per line; logs go to
    /// stderr; the end of stdin shuts the server down. Logging is set with RUST_LOG
    /// (default: info).
    Serve(ServeArgs),
    /// A narrated walk through the lifecycle: an embedded server in a temporary data
    /// directory, two clients, a streamed turn, an approval, an unsubscribe, the unload
    /// countdown, thread/closed and a cold resume from the store.
    Tour(TourArgs),
}

#[derive(Debug, clap::Args)]
struct TourArgs {
    /// The unload delay of the tour's server.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    unload_delay: Duration,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Serve one connection on stdin/stdout instead of WebSocket.
    #[arg(long, conflicts_with = "listen")]
    stdio: bool,

    /// Address to serve WebSocket on; port 0 picks a free port (printed on stderr as
    /// "listening on ws://ADDR/").
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4545")]
    listen: SocketAddr,

    /// Directory of the thread store, created if missing [default: $XDG_DATA_HOME/threadhost
    /// or ~/.local/share/threadhost].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// How long a thread must be idle and unsubscribed before it unloads (e.g. 250ms, 10s,
    /// 30m, 1h; 0s unloads at once).
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    unload_delay: Duration,

    /// Bound on each thread's shutdown, and on draining connections at exit.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// Require WebSocket clients to send "Authorization: Bearer TOKEN" (else HTTP 401).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "THREADHOST_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

/// Notifications are allocated on a thread's arbiter and freed on the connection's: the
/// pattern glibc's malloc serves worst (frees contend on the allocating arena's lock).
/// mimalloc frees to the owning page's thread-local list without a lock.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("threadhost: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Tour(t) => {
            actix_rt::System::new().block_on(threadhost::tour::tour(t.unload_delay))?;
            return Ok(());
        }
    };
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => default_data_dir()
            .context("no per-user data directory is known (HOME is not set); pass --data-dir")?,
    };
    if args.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        anyhow::bail!("the token is empty; pass a non-empty --token or unset THREADHOST_TOKEN");
    }
    let config = ServeConfig {
        transport: if args.stdio {
            Transport::Stdio
        } else {
            Transport::WebSocket(args.listen)
        },
        data_dir,
        unload_delay: args.unload_delay,
        shutdown_timeout: args.shutdown_timeout,
        token: args.token,
    };
    actix_rt::System::new().block_on(serve(config))?;
    Ok(())
}

/// Logs go to stderr only: in stdio mode stdout carries the protocol.
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
