//! The TLS listener: accepts TCP connections, runs the handshakes in their
//! own tasks (a slow client blocks no other), counts and reports failures.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::Stream;
use tracing::warn;

use super::state::Shared;
use crate::events::Event;

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// The accepted TLS connections of `listener`, until `stop` turns true.
pub(super) fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> impl Stream<Item = std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsConn>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = async { let _ = stop.wait_for(|v| *v).await; } => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let why = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "TLS handshake timed out".to_string(),
                };
                warn!(peer = %peer, "refused a connection: TLS handshake failed: {why}");
                shared.lock().stats.tls_refused += 1;
                shared.events.emit(Event::TlsRefused {
                    peer: peer.to_string(),
                    reason: why,
                });
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
