//! The MDM port: accepts connections and answers one framed request after another on
//! each, many connections at once.

use super::service::Mdm;
use crate::cluster::api::{MdmRequest, MdmResponse};
use crate::cluster::frame::{self, FrameError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info_span, warn, Instrument};

/// Gateways hold a watch connection each; scli and SDS come and go.
const MAX_CONNECTIONS: usize = 1024;

pub async fn serve(listener: TcpListener, mdm: Arc<Mdm>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match listener.accept().await {
            Ok((sock, peer)) => {
                let span = info_span!("mdm_connection", %peer);
                tokio::spawn(connection(sock, peer, mdm.clone(), permit).instrument(span));
            }
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                warn!(error = %e, "cannot accept a connection on the MDM port");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(
    mut sock: TcpStream,
    peer: SocketAddr,
    mdm: Arc<Mdm>,
    _permit: OwnedSemaphorePermit,
) {
    sock.set_nodelay(true).ok();
    loop {
        let resp: MdmResponse = match frame::read::<_, MdmRequest>(&mut sock).await {
            Ok(Some(req)) => mdm.handle(req, peer).await,
            Ok(None) => return,
            // The frame was whole, so the stream is still in step: say why and go on.
            Err(FrameError::Decode(e)) => Err(format!(
                "the MDM does not understand this request ({e}); use an scli of the same version"
            )),
            Err(e) => {
                debug!(error = %e, "connection dropped");
                return;
            }
        };
        if let Err(e) = frame::write(&mut sock, &resp).await {
            debug!(error = %e, "cannot answer; connection dropped");
            return;
        }
    }
}
