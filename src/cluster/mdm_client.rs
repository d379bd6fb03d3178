//! One request to the MDM and its answer, as every client of the MDM port (scli,
//! gateways, `up`, SDS) needs it: transport failures and refusals kept apart, because
//! after a refusal nothing changed, while after a timeout it may have.

use super::api::{MdmReply, MdmRequest, MdmResponse};
use super::frame::{self, FrameError};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MdmCallError {
    #[error("cannot talk to the MDM at {mdm}: {source}")]
    Transport { mdm: String, source: FrameError },
    #[error("the MDM at {mdm} refused: {message}")]
    Refused { mdm: String, message: String },
}

pub async fn ask(mdm: &str, req: &MdmRequest, timeout: Duration) -> Result<MdmReply, MdmCallError> {
    let resp: MdmResponse =
        frame::call(mdm, req, timeout)
            .await
            .map_err(|source| MdmCallError::Transport {
                mdm: mdm.to_string(),
                source,
            })?;
    resp.map_err(|message| MdmCallError::Refused {
        mdm: mdm.to_string(),
        message,
    })
}

/// The local IP the kernel routes to `mdm` from: what an SDS or gateway listening on a
/// wildcard address tells the MDM (a connected UDP socket sends nothing).
pub async fn local_ip_towards(mdm: &str) -> Option<IpAddr> {
    let target = tokio::net::lookup_host(mdm).await.ok()?.next()?;
    let any = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(any).await.ok()?;
    sock.connect(target).await.ok()?;
    Some(sock.local_addr().ok()?.ip())
}
