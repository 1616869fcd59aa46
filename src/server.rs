//! Configuration, startup, signals and shutdown of `threadhost serve`, and the `/metrics` text.
//!
//! Startup: create the data directory, open the store, start the [`ThreadHost`], then serve
//! stdio or WebSocket. Shutdown (SIGINT, SIGTERM, or the end of stdin): stop accepting, let the
//! calls in flight finish, unload every thread with [`ThreadHost::shutdown`] (each teardown
//! bounded by the shutdown timeout; connections get a close with the reason), then return.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use threadhost_actors::{
    HostConfig, ScriptedAgentFactory, ShutdownBehavior, ThreadHost, ThreadStore,
};

use crate::rpc::ServerInfo;

/// Where clients connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One connection on stdin/stdout.
    Stdio,
    /// WebSocket connections on this address (port 0 picks a free port).
    WebSocket(SocketAddr),
}

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// stdio or WebSocket.
    pub transport: Transport,
    /// Where the store lives; created if missing. Reported as `codexHome`.
    pub data_dir: PathBuf,
    /// Idle time before an unsubscribed, inactive thread unloads.
    pub unload_delay: Duration,
    /// Bound on each thread's shutdown, and on draining connections at exit.
    pub shutdown_timeout: Duration,
    /// Bearer token WebSocket clients must send (ignored for stdio).
    pub token: Option<String>,
}

/// Why `serve` could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The data directory could not be created or resolved.
    #[error("cannot use the data directory {}: {source}; pass --data-dir with a writable directory", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store in {}: {message}", path.display())]
    Store {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another address with --listen")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The HTTP server stopped on its own.
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// The per-user default data directory: `$XDG_DATA_HOME/threadhost`, else
/// `~/.local/share/threadhost` (`~/Library/Application Support/threadhost` on macOS,
/// `%LOCALAPPDATA%\threadhost` on Windows). `None` when no home directory is known.
pub fn default_data_dir() -> Option<PathBuf> {
    let env_dir = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base = if cfg!(windows) {
        env_dir("LOCALAPPDATA")?
    } else if cfg!(target_os = "macos") {
        env_dir("HOME")?.join("Library").join("Application Support")
    } else {
        env_dir("XDG_DATA_HOME")
            .or_else(|| env_dir("HOME").map(|h| h.join(".local").join("share")))?
    };
    Some(base.join("threadhost"))
}

/// Parses a duration written like `250ms`, `1s`, `30m`, `1h` or `1h30m` (units `ms`, `s`,
/// `m`, `h`, `d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. 250ms, 10s, 30m or 1h".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number at {rest:?}; write e.g. 250ms, 10s, 30m or 1h"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit after {n}; write e.g. {n}s or {n}ms"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?}; use ms, s, m, h or d"
                ))
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    Ok(total)
}

/// Renders the host's metrics in the Prometheus text format.
pub fn metrics_text(host: &ThreadHost) -> String {
    let m = host.metrics();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, i128)]| {
        let _ = writeln!(
            out,
            "# HELP threadhost_{name} {help}\n# TYPE threadhost_{name} {kind}"
        );
        for (labels, v) in samples {
            let _ = writeln!(out, "threadhost_{name}{labels} {v}");
        }
    };
    let c = |x: u64| i128::from(x);
    let g = |x: i64| i128::from(x);
    metric(
        "threads_loaded",
        "gauge",
        "Loaded threads (live thread actors).",
        &[("", g(m.threads.get()))],
    );
    metric(
        "connections",
        "gauge",
        "Open client connections.",
        &[("", g(m.connections.get()))],
    );
    let initialized = i128::try_from(host.connection_count()).unwrap_or(i128::MAX);
    metric(
        "connections_initialized",
        "gauge",
        "Connections that completed initialize (receive broadcasts).",
        &[("", initialized)],
    );
    metric(
        "idle_timers",
        "gauge",
        "Armed idle-unload timers.",
        &[("", g(m.timers.get()))],
    );
    metric(
        "agent_tasks",
        "gauge",
        "Running agent turn tasks.",
        &[("", g(m.agent_tasks.get()))],
    );
    metric(
        "pending_server_requests",
        "gauge",
        "Server requests (approvals, user input) waiting for an answer.",
        &[("", g(m.pending_requests.get()))],
    );
    metric(
        "teardowns_in_flight",
        "gauge",
        "Thread teardowns in flight.",
        &[("", g(m.teardowns_in_flight.get()))],
    );
    metric(
        "unloads_total",
        "counter",
        "Thread unloads by outcome.",
        &[
            ("{outcome=\"complete\"}", c(m.unloads_complete.get())),
            (
                "{outcome=\"submit_failed\"}",
                c(m.unloads_submit_failed.get()),
            ),
            ("{outcome=\"timed_out\"}", c(m.unloads_timed_out.get())),
        ],
    );
    metric(
        "thread_restarts_total",
        "counter",
        "Thread restarts after a panic.",
        &[("", c(m.restarts.get()))],
    );
    metric(
        "messages_delivered_total",
        "counter",
        "Messages put on connection queues.",
        &[("", c(m.delivered.get()))],
    );
    metric(
        "messages_dropped_total",
        "counter",
        "Messages dropped because a connection's queue was full.",
        &[("", c(m.dropped.get()))],
    );
    metric(
        "slow_disconnects_total",
        "counter",
        "Connections cut off for not reading.",
        &[("", c(m.slow_disconnects.get()))],
    );
    metric(
        "ignored_answers_total",
        "counter",
        "Answers to server requests that were not pending (late, duplicate or foreign).",
        &[("", c(m.ignored_answers.get()))],
    );
    metric(
        "store_errors_total",
        "counter",
        "Store writes that failed.",
        &[("", c(m.store_errors.get()))],
    );
    out
}

/// Opens the SQLite store in `data_dir`.
fn open_store(data_dir: &Path) -> Result<Arc<dyn ThreadStore>, ServeError> {
    match crate::store::SqliteStore::open(data_dir) {
        Ok(store) => Ok(Arc::new(store)),
        Err(e) => Err(ServeError::Store {
            path: data_dir.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// Waits for SIGINT or SIGTERM. Installed before serving, so a signal that comes early is not
/// lost.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C: shutting down");
        }
    }
}

/// Runs the server until a signal (or, for stdio, the end of stdin), then shuts down
/// gracefully. Must run inside an actix `System`.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let data_err = |source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(data_err)?;
    let data_dir = std::fs::canonicalize(&config.data_dir).map_err(data_err)?;
    let store = open_store(&data_dir)?;
    let mut signals = Signals::install().map_err(ServeError::Signals)?;

    let host_config = HostConfig {
        unload_delay: config.unload_delay,
        shutdown_timeout: config.shutdown_timeout,
        ..HostConfig::default()
    };
    let agents = Arc::new(ScriptedAgentFactory::new(ShutdownBehavior::Complete));
    let host = ThreadHost::start(host_config, agents, store);
    let transport = match config.transport {
        Transport::Stdio => "stdio".to_owned(),
        Transport::WebSocket(addr) => format!("ws://{addr}/"),
    };
    let info = Arc::new(ServerInfo::new(&data_dir).serving(transport, config.token.is_some()));
    tracing::info!(data_dir = %data_dir.display(), "threadhost {} starting", env!("CARGO_PKG_VERSION"));

    match config.transport {
        Transport::Stdio => {
            eprintln!("threadhost: serving JSON-RPC on stdio");
            crate::stdio::serve(&host, info, config.shutdown_timeout, signals.recv()).await;
            shutdown_host(&host, config.shutdown_timeout).await;
            Ok(())
        }
        Transport::WebSocket(addr) => serve_ws(&host, info, addr, &config, &mut signals).await,
    }
}

async fn serve_ws(
    host: &ThreadHost,
    info: Arc<ServerInfo>,
    addr: SocketAddr,
    config: &ServeConfig,
    signals: &mut Signals,
) -> Result<(), ServeError> {
    let ready = Arc::new(AtomicBool::new(false));
    let state = actix_web::web::Data::new(crate::ws::AppState {
        host: host.clone(),
        info,
        token: config.token.clone(),
        ready: Arc::clone(&ready),
    });
    let drain_secs = config.shutdown_timeout.as_secs().max(1);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .configure(crate::ws::configure)
    })
    .disable_signals()
    // Notifications are small frames written as they happen: with Nagle's algorithm on, a
    // frame written while an earlier one is unacknowledged waits for the client's delayed ACK
    // (40 ms on Linux). The end-to-end bench saw 10% of notifications arrive ~40 ms late.
    .tcp_nodelay(true)
    .shutdown_timeout(drain_secs)
    .bind(addr)
    .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = server.addrs();
    let server = server.run();
    let handle = server.handle();
    let mut running = actix_rt::spawn(server);
    ready.store(true, Ordering::Release);
    for a in &bound {
        // The one line on stderr that scripts (and the tests) read to find the port.
        eprintln!("threadhost: listening on ws://{a}/");
    }
    if config.token.is_none() && bound.iter().any(|a| !a.ip().is_loopback()) {
        tracing::warn!("listening beyond loopback without --token: anyone who can reach the port can drive the agents");
    }

    let result = tokio::select! {
        () = signals.recv() => Ok(()),
        r = &mut running => Err(ServeError::Http(match r {
            Ok(Ok(())) => std::io::Error::other("stopped unexpectedly"),
            Ok(Err(e)) => e,
            Err(e) => std::io::Error::other(e.to_string()),
        })),
    };
    ready.store(false, Ordering::Release);
    handle.pause().await;
    shutdown_host(host, config.shutdown_timeout).await;
    // Connections were sent their close frames; give them the rest of the bound to go.
    let stop = handle.stop(true);
    if tokio::time::timeout(config.shutdown_timeout + Duration::from_secs(1), stop)
        .await
        .is_err()
    {
        tracing::warn!("connections did not close in time; stopping anyway");
        handle.stop(false).await;
    }
    result
}

/// Unloads every thread (bounded), then disconnects every connection.
async fn shutdown_host(host: &ThreadHost, timeout: Duration) {
    let started = std::time::Instant::now();
    // The host bounds each teardown itself; this outer bound only guards against a bug.
    let bound = timeout + host.config().resume_wait_margin;
    match tokio::time::timeout(bound, host.shutdown()).await {
        Ok(closed) => tracing::info!(closed, elapsed = ?started.elapsed(), "all threads unloaded"),
        Err(_) => tracing::warn!(?bound, "threads did not unload in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_units_of_the_cli() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        let e = parse_duration("30").expect_err("no unit");
        assert!(e.contains("missing unit") && e.contains("30s"), "{e}");
        let e = parse_duration("5 minutes").expect_err("unknown unit");
        assert!(e.contains("unknown unit"), "{e}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ms")
            .expect_err("no number")
            .contains("expected a number"));
        assert!(parse_duration("99999999999999999999h")
            .expect_err("overflow")
            .contains("too large"));
    }
}
