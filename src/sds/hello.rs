//! Telling the MDM, after a restart, where this SDS listens (`SdsHello`), retried
//! until the MDM acknowledges: the MDM may be down or restarting too.

use crate::cluster::api::{fmt_id, MdmReply, MdmRequest};
use crate::cluster::{frame, mdm_client};
use std::net::SocketAddr;
use std::time::Duration;
use tracing::{debug, info, warn};

const RETRY_EVERY: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Failures logged at WARN: the first, then one in this many (about a minute apart).
const WARN_EVERY: u32 = 20;

pub async fn announce(mdm: String, system_id: u64, sds_id: u64, listen: SocketAddr) {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let addr = advertised(listen, &mdm).await;
        let req = MdmRequest::SdsHeartbeat {
            sds_id,
            system_id,
            addr,
        };
        let problem = match mdm_client::ask(&mdm, &req, CALL_TIMEOUT).await {
            Ok(MdmReply::Lease { .. }) => {
                info!(%mdm, %addr, sds = %fmt_id(sds_id), "announced to the MDM");
                return;
            }
            Ok(other) => format!("unexpected reply {other:?}"),
            Err(e) => e.to_string(),
        };
        if attempt == 1 || attempt.is_multiple_of(WARN_EVERY) {
            warn!(%mdm, attempt, error = %problem, "cannot announce this SDS to the MDM; retrying");
        } else {
            debug!(%mdm, attempt, error = %problem, "announce failed");
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// The address the MDM should use for this SDS. A wildcard listener is announced with
/// the local IP of the route to the MDM (a connected UDP socket sends nothing but
/// picks that IP).
async fn advertised(listen: SocketAddr, mdm: &str) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    match mdm_client::local_ip_towards(mdm).await {
        Some(ip) => SocketAddr::new(ip, listen.port()),
        None => frame::reachable(listen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wildcard_listener_is_announced_on_the_route_to_the_mdm() {
        let specific: SocketAddr = "10.1.2.3:7072".parse().unwrap();
        assert_eq!(advertised(specific, "127.0.0.1:6611").await, specific);
        let any: SocketAddr = "0.0.0.0:7072".parse().unwrap();
        let a = advertised(any, "127.0.0.1:6611").await;
        assert_eq!(a, "127.0.0.1:7072".parse().unwrap());
    }
}
