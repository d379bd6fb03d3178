//! Listening sockets and the shared state every connection needs.

use super::connection;
use super::login::Limits;
use super::session::SessionTable;
use super::target::TargetSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{error, warn};

/// Keepalive and login timers.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Idle time before we ping the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// How long the initiator has to answer that ping before the connection is dropped.
    pub nop_timeout: Duration,
    /// How long a login may take in all.
    pub login_timeout: Duration,
}

/// What every connection of this gateway shares.
#[derive(Debug)]
pub struct ServerCtx {
    pub targets: Arc<TargetSet>,
    pub limits: Limits,
    pub sessions: Arc<SessionTable>,
    pub timing: Timing,
    /// Commands an initiator may have outstanding (the CmdSN window).
    pub queue_depth: u32,
}

/// Bound listeners, ready to serve.
pub struct Server {
    ctx: Arc<ServerCtx>,
    listeners: Vec<TcpListener>,
    max_connections: usize,
}

/// Binds every portal; fails naming the address that could not be bound.
pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for a in addrs {
        listeners.push(
            TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?,
        );
    }
    Ok(listeners)
}

impl Server {
    pub fn new(ctx: Arc<ServerCtx>, listeners: Vec<TcpListener>, max_connections: usize) -> Self {
        Self {
            ctx,
            listeners,
            max_connections,
        }
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accepts connections until the process ends.
    pub async fn run(self) {
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let mut accepts = Vec::new();
        for l in self.listeners {
            let ctx = self.ctx.clone();
            let limit = limit.clone();
            accepts.push(tokio::spawn(async move {
                loop {
                    let permit = match limit.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    };
                    match l.accept().await {
                        Ok((stream, _)) => {
                            let ctx = ctx.clone();
                            tokio::spawn(async move {
                                connection::serve(stream, ctx).await;
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        for a in accepts {
            if let Err(e) = a.await {
                error!("listener task failed: {e}");
            }
        }
    }
}
