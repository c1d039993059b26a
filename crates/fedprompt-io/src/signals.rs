//! The stop signals of a terminal, systemd, docker and Flower's scripts: Ctrl-C and (on unix)
//! SIGTERM, which `serve`, `join` and `flower-node` all treat alike.

/// Ctrl-C and (on unix) SIGTERM. On unix both handlers are installed by [`StopSignals::install`]
/// itself, so a signal that arrives before the first wait is not lost.
pub struct StopSignals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers (from then on these signals no longer kill the process). Needs a
    /// Tokio runtime.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handler = |kind: SignalKind, name: &str| {
                signal(kind)
                    .inspect_err(|e| tracing::warn!("cannot catch {name}: {e}"))
                    .ok()
            };
            Self {
                int: handler(SignalKind::interrupt(), "Ctrl-C"),
                term: handler(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal: its name (`Ctrl-C` or `SIGTERM`) and the exit status of a process it
    /// kills (128 + its number). Never resolves when no handler could be installed.
    pub async fn next(&mut self) -> (&'static str, i32) {
        #[cfg(unix)]
        {
            let int = &mut self.int;
            let term = &mut self.term;
            tokio::select! {
                Some(()) = async { int.as_mut()?.recv().await } => ("Ctrl-C", 130),
                Some(()) = async { term.as_mut()?.recv().await } => ("SIGTERM", 143),
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            ("Ctrl-C", 130)
        }
    }
}
