//! A TCP fault proxy for tests (no Docker or toxiproxy here): forwards connections to an upstream
//! (RabbitMQ) and can cut every open connection at once or refuse new ones, touching only the
//! connections of the test that owns it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct State {
    refusing: AtomicBool,
    accepted: AtomicU64,
    open: Mutex<Vec<AbortHandle>>,
}

/// A running proxy; dropping it stops it and cuts its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        let (task_state, task_stop) = (Arc::clone(&state), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = task_stop.cancelled() => return,
                };
                let Ok((mut client, _)) = accepted else { continue };
                if task_state.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                task_state.accepted.fetch_add(1, Ordering::SeqCst);
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut open = task_state.open.lock().unwrap_or_else(|p| p.into_inner());
                open.retain(|handle| !handle.is_finished());
                open.push(forward.abort_handle());
            }
        });
        Ok(Self { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An AMQP URL that goes through the proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f?heartbeat=2", self.addr)
    }

    /// Closes every connection open through the proxy, as a network cut would.
    pub fn cut_all(&self) {
        for handle in self.state.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            handle.abort();
        }
    }

    /// While refusing, new connections are closed as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn connections(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut_all();
    }
}
