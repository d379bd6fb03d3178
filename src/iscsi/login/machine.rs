//! The login state machine (RFC 7143 sections 6.3 and 7): stages, transitions,
//! continuation, identity checks and failure handling. Key semantics live in
//! [`super::keys`] and [`super::chap`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::iscsi::pdu::{LoginRequest, LoginResponse};
use crate::iscsi::text::{encode_keys, parse_keys};

use super::chap::{AuthError, Authenticator};
use super::keys::{kind, Kind, Negotiation};
use super::params::{Limits, SessionParams};
use super::{status, LoginError, Lookup, SessionType, TargetDirectory};

/// Stage numbers of the CSG/NSG fields.
pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// Most key text we buffer across continued (C=1) Login Requests. The RFC requires at
/// least 8192; anything near this limit is an initiator bug or an attack.
pub const MAX_LOGIN_TEXT: usize = 65_536;

/// Longest iSCSI name (RFC 7143 section 4.2.7.1).
pub const MAX_NAME_LEN: usize = 223;

/// What the connection layer does after sending [`LoginStep::response`].
#[derive(Debug)]
pub enum StepOutcome {
    /// Wait for the next Login Request.
    Continue,
    /// The response carries T=1, NSG=3: after sending it the connection is in full
    /// feature phase with these parameters (digests apply from the next PDU on).
    Complete(SessionParams),
    /// The response carries a failure status: send it, then close the connection.
    Failed,
}

/// The answer to one Login Request.
#[derive(Debug)]
pub struct LoginStep {
    pub response: LoginResponse,
    pub outcome: StepOutcome,
}

/// Where the login is: which CSG the next request must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing agreed yet: the initiator may start in security or operational stage.
    Initial,
    Security,
    Operational,
    Done,
    Failed(u16),
}

/// Fields that must not change during one login (RFC 7143 11.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
}

/// Who logs in to what, from the first Login Request.
#[derive(Debug, Clone)]
struct Identity {
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
    target_name: Option<String>,
}

/// One connection's login: feed every Login Request to [`LoginMachine::step`].
pub struct LoginMachine {
    dir: Arc<dyn TargetDirectory>,
    limits: Limits,
    phase: Phase,
    ids: Option<Ids>,
    /// Key text of continued (C=1) requests, and the CSG they were sent in.
    pending: Vec<u8>,
    pending_csg: Option<u8>,
    /// Every key received so far with its value, to detect renegotiation.
    seen: HashMap<String, String>,
    identity: Option<Identity>,
    auth: Option<Authenticator>,
    neg: Option<Negotiation>,
    declared_mrdsl: bool,
}

/// A successful step before it is turned into a response.
struct Reply {
    transit: bool,
    nsg: u8,
    keys: Vec<(String, String)>,
    outcome: StepOutcome,
}

impl LoginMachine {
    pub fn new(dir: Arc<dyn TargetDirectory>, limits: Limits) -> Self {
        LoginMachine {
            dir,
            limits,
            phase: Phase::Initial,
            ids: None,
            pending: Vec::new(),
            pending_csg: None,
            seen: HashMap::new(),
            identity: None,
            auth: None,
            neg: None,
            declared_mrdsl: false,
        }
    }

    /// Processes one Login Request PDU. The response has isid, itt, version_max=0, version_active=0, status, T/C/CSG/NSG and key data filled in.
    pub fn step(&mut self, req: &LoginRequest) -> LoginStep {
        let result = match self.phase {
            Phase::Failed(s) => Err(LoginError::AlreadyFailed(s)),
            Phase::Done => Err(LoginError::Protocol(
                "a Login Request arrived after the login completed".into(),
            )),
            _ => self.process(req),
        };
        match result {
            Ok(reply) => {
                let mut response = base_response(req);
                response.transit = reply.transit;
                response.nsg = reply.nsg;
                response.data = encode_keys(&reply.keys);
                if let StepOutcome::Complete(p) = &reply.outcome {
                    tracing::info!(
                        initiator = %p.initiator_name,
                        target = p.target_name.as_deref().unwrap_or("(discovery)"),
                        "iSCSI login complete"
                    );
                }
                LoginStep {
                    response,
                    outcome: reply.outcome,
                }
            }
            Err(err) => {
                let code = err.status();
                if !matches!(err, LoginError::AlreadyFailed(_)) {
                    tracing::warn!(
                        status = format_args!("{code:#06x}"),
                        initiator = self
                            .identity
                            .as_ref()
                            .map(|i| i.initiator_name.as_str())
                            .unwrap_or("?"),
                        "iSCSI login failed: {err}"
                    );
                }
                self.phase = Phase::Failed(code);
                let mut response = base_response(req);
                response.status_class = (code >> 8) as u8;
                response.status_detail = (code & 0xff) as u8;
                LoginStep {
                    response,
                    outcome: StepOutcome::Failed,
                }
            }
        }
    }

    fn process(&mut self, req: &LoginRequest) -> Result<Reply, LoginError> {
        if req.version_min > 0 {
            return Err(LoginError::UnsupportedVersion {
                min: req.version_min,
                max: req.version_max,
            });
        }
        self.check_ids(req)?;
        self.check_stage(req)?;

        // Continuation: buffer until the last PDU of the key text, answer with an empty
        // response in the same stage (RFC 7143 6.3).
        if self.pending.len() + req.data.len() > MAX_LOGIN_TEXT {
            return Err(LoginError::TextTooLong(MAX_LOGIN_TEXT));
        }
        self.pending.extend_from_slice(&req.data);
        if req.cont {
            self.pending_csg = Some(req.csg);
            return Ok(Reply {
                transit: false,
                nsg: 0,
                keys: Vec::new(),
                outcome: StepOutcome::Continue,
            });
        }
        self.pending_csg = None;
        let text = std::mem::take(&mut self.pending);
        let pairs = parse_keys(&text)?;
        self.check_duplicates(&pairs)?;

        let mut declarations = Vec::new();
        if self.identity.is_none() {
            declarations = self.establish_identity(&pairs)?;
        } else {
            self.update_identity(&pairs)?;
        }
        let (Some(auth), Some(neg), Some(identity)) =
            (&mut self.auth, &mut self.neg, &self.identity)
        else {
            return Err(LoginError::Protocol("internal: login state missing".into()));
        };

        let mut security = Vec::new();
        let mut operational = Vec::new();
        for pair in pairs {
            match kind(&pair.0) {
                Kind::Security => security.push(pair),
                Kind::Operational => operational.push(pair),
                Kind::Identity => {}
            }
        }

        let mut keys = Vec::new();
        let mut transit = false;
        if req.csg == STAGE_SECURITY {
            keys.extend(auth.answer(&security)?);
            if req.transit {
                if auth.complete() {
                    transit = true;
                } else if security.is_empty() {
                    // T=1 without any authentication exchange in progress: an attempt
                    // to leave the security stage without authenticating.
                    return Err(AuthError::SkippedAuthentication.into());
                }
                // Otherwise the exchange is still going on: answer with T=0.
            }
        } else {
            if !security.is_empty() {
                return Err(LoginError::Protocol(
                    "security keys (AuthMethod/CHAP_*) sent in the operational stage".into(),
                ));
            }
            if self.phase == Phase::Initial && auth.required() {
                return Err(AuthError::SkippedAuthentication.into());
            }
            transit = req.transit;
        }
        // Operational keys are answered in whichever stage they arrive; being lenient
        // here costs nothing and some initiators send them early.
        keys.extend(neg.answer(&operational)?);
        keys.extend(declarations);

        let entering_ffp = transit && req.nsg == STAGE_FULL_FEATURE;
        if !self.declared_mrdsl
            && (req.csg == STAGE_OPERATIONAL || entering_ffp || neg.initiator_declared_mrdsl())
        {
            keys.extend(neg.declarations());
            self.declared_mrdsl = true;
        }

        let outcome = if entering_ffp {
            let params = neg.params(
                identity.initiator_name.clone(),
                identity.initiator_alias.clone(),
                identity.target_name.clone(),
            );
            self.phase = Phase::Done;
            StepOutcome::Complete(params)
        } else {
            self.phase = match (transit, req.csg) {
                (true, _) => Phase::Operational,
                (false, STAGE_SECURITY) => Phase::Security,
                (false, _) => Phase::Operational,
            };
            StepOutcome::Continue
        };
        Ok(Reply {
            transit,
            nsg: if transit { req.nsg } else { 0 },
            keys,
            outcome,
        })
    }

    /// ISID, TSIH and CID must stay the same during a login. The ITT may differ per
    /// request (the RFC only asks it to be unique), so it is simply echoed.
    fn check_ids(&mut self, req: &LoginRequest) -> Result<(), LoginError> {
        let ids = Ids {
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
        };
        match self.ids {
            None => {
                if req.tsih != 0 {
                    // Adding a connection to an existing session: we only run single
                    // connection sessions, so there is nothing to join.
                    return Err(LoginError::SessionDoesNotExist(req.tsih));
                }
                self.ids = Some(ids);
                Ok(())
            }
            Some(prev) if prev == ids => Ok(()),
            Some(_) => Err(LoginError::Protocol(
                "ISID, TSIH or CID changed between Login Requests".into(),
            )),
        }
    }

    fn check_stage(&self, req: &LoginRequest) -> Result<(), LoginError> {
        if req.csg != STAGE_SECURITY && req.csg != STAGE_OPERATIONAL {
            return Err(LoginError::Protocol(format!(
                "Login Request with invalid current stage {}",
                req.csg
            )));
        }
        if req.transit && req.cont {
            return Err(LoginError::Protocol(
                "Login Request with both T and C set".into(),
            ));
        }
        if req.transit
            && !(req.nsg > req.csg
                && (req.nsg == STAGE_OPERATIONAL || req.nsg == STAGE_FULL_FEATURE))
        {
            return Err(LoginError::Protocol(format!(
                "Login Request asks to go from stage {} to invalid stage {}",
                req.csg, req.nsg
            )));
        }
        if let Some(csg) = self.pending_csg {
            if csg != req.csg {
                return Err(LoginError::Protocol(
                    "stage changed in the middle of a continued key text".into(),
                ));
            }
        }
        let expected = match self.phase {
            Phase::Initial => return Ok(()),
            Phase::Security => STAGE_SECURITY,
            _ => STAGE_OPERATIONAL,
        };
        if req.csg != expected {
            return Err(LoginError::Protocol(format!(
                "Login Request in stage {} while the login is in stage {}",
                req.csg, expected
            )));
        }
        Ok(())
    }

    /// RFC 7143 6.2: no key may be negotiated or declared twice. Initiators such as
    /// libiscsi repeat InitiatorName/TargetName/SessionType when they move from the
    /// security to the operational stage, so identical repeats of those are tolerated.
    fn check_duplicates(&mut self, pairs: &[(String, String)]) -> Result<(), LoginError> {
        for (k, v) in pairs {
            if let Some(prev) = self.seen.get(k) {
                if !(kind(k) == Kind::Identity && prev == v) {
                    return Err(LoginError::DuplicateKey(k.clone()));
                }
            } else {
                self.seen.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }

    /// Handles the first complete key text: who is logging in, to what, and whether
    /// they may. Returns the keys the target declares in its first response.
    fn establish_identity(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>, LoginError> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let initiator_name =
            get("InitiatorName").ok_or(LoginError::MissingParameter("InitiatorName"))?;
        check_name("InitiatorName", initiator_name)?;
        let session_type = match get("SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(other) => return Err(LoginError::BadSessionType(truncated(other))),
        };
        let initiator_alias = get("InitiatorAlias").map(str::to_string);
        let mut declarations = Vec::new();
        let (target_name, secrets) = match session_type {
            SessionType::Discovery => (None, self.dir.discovery_chap()),
            SessionType::Normal => {
                let target = get("TargetName").ok_or(LoginError::MissingParameter("TargetName"))?;
                check_name("TargetName", target)?;
                let chap = match self.dir.lookup(target, initiator_name) {
                    Lookup::Found { chap } => chap,
                    Lookup::NotFound => {
                        return Err(LoginError::TargetNotFound {
                            target: target.to_string(),
                        })
                    }
                    Lookup::NotAuthorized => {
                        return Err(LoginError::NotAuthorized {
                            initiator: initiator_name.to_string(),
                            target: target.to_string(),
                        })
                    }
                };
                // RFC 7143 13.9: the target returns its portal group tag in the
                // response to the first request carrying TargetName.
                declarations.push((
                    "TargetPortalGroupTag".to_string(),
                    self.dir.portal_group_tag().to_string(),
                ));
                if let Some(alias) = self.dir.target_alias(target) {
                    declarations.push(("TargetAlias".to_string(), alias));
                }
                (Some(target.to_string()), chap)
            }
        };
        self.auth = Some(Authenticator::new(secrets));
        self.neg = Some(Negotiation::new(self.limits.clone(), session_type));
        self.identity = Some(Identity {
            session_type,
            initiator_name: initiator_name.to_string(),
            initiator_alias,
            target_name,
        });
        Ok(declarations)
    }

    /// Identity keys in later requests: repeats were vetted by `check_duplicates`; an
    /// alias may come late; a late SessionType must agree with the one assumed.
    fn update_identity(&mut self, pairs: &[(String, String)]) -> Result<(), LoginError> {
        let Some(identity) = &mut self.identity else {
            return Ok(());
        };
        for (k, v) in pairs {
            match k.as_str() {
                "InitiatorAlias" if identity.initiator_alias.is_none() => {
                    identity.initiator_alias = Some(v.clone())
                }
                "SessionType" => {
                    let same = matches!(
                        (v.as_str(), identity.session_type),
                        ("Normal", SessionType::Normal) | ("Discovery", SessionType::Discovery)
                    );
                    if !same {
                        return Err(LoginError::Protocol(
                            "SessionType may only be sent in the first Login Request".into(),
                        ));
                    }
                }
                "InitiatorName" if v != &identity.initiator_name => {
                    return Err(LoginError::Protocol(
                        "InitiatorName changed during login".into(),
                    ))
                }
                "TargetName"
                    if identity.session_type == SessionType::Normal
                        && identity.target_name.as_deref() != Some(v.as_str()) =>
                {
                    return Err(LoginError::Protocol(
                        "TargetName changed during login".into(),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Response fields common to every answer: identifiers echoed, version 0, success.
fn base_response(req: &LoginRequest) -> LoginResponse {
    LoginResponse {
        transit: false,
        cont: false,
        csg: req.csg,
        nsg: 0,
        version_max: 0,
        version_active: 0,
        isid: req.isid,
        tsih: 0,
        itt: req.itt,
        status_class: (status::SUCCESS >> 8) as u8,
        status_detail: 0,
        ..Default::default()
    }
}

fn check_name(key: &str, v: &str) -> Result<(), LoginError> {
    if v.is_empty() || v.len() > MAX_NAME_LEN {
        return Err(LoginError::Protocol(format!(
            "{key} must be 1 to {MAX_NAME_LEN} bytes long"
        )));
    }
    Ok(())
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::super::chap::{chap_response, decode_binary, encode_hex};
    use super::super::testutil::*;
    use super::super::{discovery::text_request, ChapSecrets};
    use super::*;

    fn machine() -> LoginMachine {
        LoginMachine::new(Arc::new(TestDir::new()), Limits::default())
    }

    fn status_of(step: &LoginStep) -> u16 {
        (step.response.status_class as u16) << 8 | step.response.status_detail as u16
    }

    /// Asserts a failure with `code`, and that the machine stays failed.
    fn assert_fails(m: &mut LoginMachine, step: LoginStep, code: u16) {
        assert_eq!(status_of(&step), code, "{:?}", step.response);
        assert!(matches!(step.outcome, StepOutcome::Failed));
        assert!(!step.response.transit);
        assert!(step.response.data.is_empty());
        let again = m.step(&req(1, 3, true, &[("InitiatorName", INITIATOR)]));
        assert_eq!(status_of(&again), code);
        assert!(matches!(again.outcome, StepOutcome::Failed));
    }

    fn first_keys(target: &str) -> Vec<(&'static str, &str)> {
        vec![
            ("InitiatorName", INITIATOR),
            ("TargetName", target),
            ("SessionType", "Normal"),
        ]
    }

    fn complete(step: LoginStep) -> SessionParams {
        assert_eq!(status_of(&step), 0);
        assert!(step.response.transit);
        assert_eq!(step.response.nsg, STAGE_FULL_FEATURE);
        match step.outcome {
            StepOutcome::Complete(p) => p,
            other => panic!("login did not complete: {other:?}"),
        }
    }

    #[test]
    fn normal_login_in_one_pdu() {
        let mut m = machine();
        let mut k = first_keys(DISK1);
        k.extend([
            ("InitiatorAlias", "host1"),
            ("HeaderDigest", "None,CRC32C"),
            ("DataDigest", "CRC32C,None"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("MaxConnections", "1"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("X-com.example.Foo", "1"),
        ]);
        let step = m.step(&req(1, 3, true, &k));
        let r = &step.response;
        assert_eq!((r.csg, r.isid, r.itt), (1, ISID, ITT));
        assert_eq!((r.version_max, r.version_active, r.cont), (0, 0, false));
        let keys = keys_of(&r.data);
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "HeaderDigest",
                "DataDigest",
                "InitialR2T",
                "ImmediateData",
                "MaxBurstLength",
                "FirstBurstLength",
                "DefaultTime2Wait",
                "DefaultTime2Retain",
                "MaxOutstandingR2T",
                "ErrorRecoveryLevel",
                "IFMarker",
                "OFMarker",
                "MaxConnections",
                "DataPDUInOrder",
                "DataSequenceInOrder",
                "X-com.example.Foo",
                "TargetPortalGroupTag",
                "TargetAlias",
                "MaxRecvDataSegmentLength",
            ]
        );
        assert_eq!(get(&keys, "X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(get(&keys, "TargetPortalGroupTag"), Some("1"));
        assert_eq!(get(&keys, "TargetAlias"), Some("disk one"));
        assert_eq!(get(&keys, "MaxRecvDataSegmentLength"), Some("262144"));
        let p = complete(step);
        assert_eq!(
            p,
            SessionParams {
                session_type: SessionType::Normal,
                initiator_name: INITIATOR.into(),
                initiator_alias: Some("host1".into()),
                target_name: Some(DISK1.into()),
                header_digest: false,
                data_digest: true,
                initiator_max_recv_data_segment_length: 65536,
                target_max_recv_data_segment_length: 262_144,
                max_burst_length: 1_048_576,
                first_burst_length: 262_144,
                initial_r2t: false,
                immediate_data: true,
                max_outstanding_r2t: 1,
                data_pdu_in_order: true,
                data_sequence_in_order: true,
                default_time2wait: 2,
                default_time2retain: 0,
                error_recovery_level: 0,
                max_connections: 1,
            }
        );
    }

    #[test]
    fn defaults_when_initiator_sends_nothing() {
        let mut m = machine();
        let p = complete(m.step(&req(1, 3, true, &first_keys(DISK1))));
        assert_eq!(p.initiator_max_recv_data_segment_length, 8192);
        assert_eq!(p.max_burst_length, 262_144);
        assert_eq!(p.first_burst_length, 65_536);
        assert!(p.initial_r2t && p.immediate_data);
        assert!(!p.header_digest && !p.data_digest);
    }

    #[test]
    fn auth_none_then_operational() {
        // libiscsi with a CHAP user configured, against a target without CHAP.
        let mut m = machine();
        let mut k = first_keys(DISK1);
        k.push(("AuthMethod", "CHAP,None"));
        let step = m.step(&req(0, 1, true, &k));
        assert_eq!(status_of(&step), 0);
        assert!(step.response.transit);
        assert_eq!((step.response.csg, step.response.nsg), (0, 1));
        let keys = keys_of(&step.response.data);
        assert_eq!(get(&keys, "AuthMethod"), Some("None"));
        assert_eq!(get(&keys, "TargetPortalGroupTag"), Some("1"));
        assert_eq!(get(&keys, "MaxRecvDataSegmentLength"), None);
        assert!(matches!(step.outcome, StepOutcome::Continue));
        // libiscsi repeats its identity keys in the operational stage.
        let mut k = first_keys(DISK1);
        k.push(("MaxRecvDataSegmentLength", "262144"));
        let step = m.step(&req(1, 3, true, &k));
        let keys = keys_of(&step.response.data);
        assert_eq!(get(&keys, "TargetPortalGroupTag"), None);
        assert_eq!(get(&keys, "MaxRecvDataSegmentLength"), Some("262144"));
        assert_eq!(step.response.csg, 1);
        complete(step);
    }

    #[test]
    fn security_stage_without_transit_then_operational() {
        let mut m = machine();
        let mut k = first_keys(DISK1);
        k.push(("AuthMethod", "None"));
        let step = m.step(&req(0, 1, false, &k));
        assert!(!step.response.transit);
        assert_eq!(
            get(&keys_of(&step.response.data), "AuthMethod"),
            Some("None")
        );
        // T=0 kept us in the security stage; an empty T=1 request leaves it.
        let step = m.step(&req(0, 1, true, &[]));
        assert!(step.response.transit);
        complete(m.step(&req(1, 3, true, &[])));
    }

    #[test]
    fn skip_operational_stage() {
        let mut m = machine();
        let mut k = first_keys(DISK1);
        k.push(("AuthMethod", "None"));
        let step = m.step(&req(0, 3, true, &k));
        assert_eq!(step.response.csg, 0);
        let keys = keys_of(&step.response.data);
        assert_eq!(get(&keys, "MaxRecvDataSegmentLength"), Some("262144"));
        complete(step);
    }

    #[test]
    fn discovery_login_and_send_targets() {
        let dir = Arc::new(TestDir::new());
        let mut m = LoginMachine::new(dir.clone(), Limits::default());
        let step = m.step(&req(
            0,
            1,
            true,
            &[
                ("InitiatorName", INITIATOR),
                ("SessionType", "Discovery"),
                ("TargetName", DISK1), // ignored in discovery
                ("AuthMethod", "None"),
            ],
        ));
        assert!(step.response.transit);
        let keys = keys_of(&step.response.data);
        assert_eq!(keys, vec![("AuthMethod".to_string(), "None".to_string())]);
        let step = m.step(&req(
            1,
            3,
            true,
            &[
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", "32768"),
                ("MaxBurstLength", "262144"),
                ("InitialR2T", "Yes"),
                ("DefaultTime2Wait", "2"),
                ("ErrorRecoveryLevel", "0"),
                ("MaxConnections", "1"),
            ],
        ));
        let keys = keys_of(&step.response.data);
        assert_eq!(get(&keys, "MaxBurstLength"), Some("Irrelevant"));
        assert_eq!(get(&keys, "InitialR2T"), Some("Irrelevant"));
        assert_eq!(get(&keys, "MaxConnections"), Some("Irrelevant"));
        assert_eq!(get(&keys, "HeaderDigest"), Some("None"));
        assert_eq!(get(&keys, "TargetPortalGroupTag"), None);
        let p = complete(step);
        assert_eq!(p.session_type, SessionType::Discovery);
        assert_eq!(p.target_name, None);
        assert_eq!(p.initiator_max_recv_data_segment_length, 32768);
        let out = text_request(dir.as_ref(), &p, b"SendTargets=All\0").unwrap();
        let keys = keys_of(&out);
        assert_eq!(get(&keys, "TargetName"), Some(DISK1));
        assert_eq!(keys.iter().filter(|(k, _)| k == "TargetName").count(), 3);
    }

    #[test]
    fn discovery_chap_required() {
        let mut dir = TestDir::new();
        dir.discovery_chap = Some(one_way_secrets());
        let mut m = LoginMachine::new(Arc::new(dir), Limits::default());
        let step = m.step(&req(
            1,
            3,
            true,
            &[("InitiatorName", INITIATOR), ("SessionType", "Discovery")],
        ));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    /// Drives the first two CHAP legs; returns the machine, id and challenge.
    fn chap_start(target: &str) -> (LoginMachine, u8, Vec<u8>) {
        let mut m = machine();
        let mut k = first_keys(target);
        k.push(("AuthMethod", "CHAP,None"));
        let step = m.step(&req(0, 1, true, &k));
        assert_eq!(status_of(&step), 0);
        // CHAP not done yet: the target must not transit.
        assert!(!step.response.transit);
        assert_eq!(
            get(&keys_of(&step.response.data), "AuthMethod"),
            Some("CHAP")
        );
        let step = m.step(&req(0, 1, false, &[("CHAP_A", "7,5")]));
        assert!(!step.response.transit);
        let keys = keys_of(&step.response.data);
        assert_eq!(get(&keys, "CHAP_A"), Some("5"));
        let id: u8 = get(&keys, "CHAP_I").unwrap().parse().unwrap();
        let c = get(&keys, "CHAP_C").unwrap();
        assert!(c.starts_with("0x"));
        let challenge = decode_binary(c).unwrap();
        assert!(challenge.len() >= 16);
        (m, id, challenge)
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::from("0b");
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn chap_one_way_success() {
        let (mut m, id, challenge) = chap_start(CHAP1_TARGET);
        let s = one_way_secrets();
        let r = encode_hex(&chap_response(id, s.secret.as_bytes(), &challenge));
        let step = m.step(&req(0, 1, true, &[("CHAP_N", "carol"), ("CHAP_R", &r)]));
        assert_eq!(status_of(&step), 0);
        assert!(step.response.transit);
        assert_eq!(step.response.nsg, 1);
        assert!(get(&keys_of(&step.response.data), "CHAP_N").is_none());
        complete(m.step(&req(1, 3, true, &[("MaxRecvDataSegmentLength", "8192")])));
    }

    #[test]
    fn chap_base64_response_accepted() {
        let (mut m, id, challenge) = chap_start(CHAP1_TARGET);
        let r = base64(&chap_response(id, b"carol-secret-12", &challenge));
        let step = m.step(&req(0, 3, true, &[("CHAP_N", "carol"), ("CHAP_R", &r)]));
        complete(step);
    }

    #[test]
    fn chap_wrong_secret() {
        let (mut m, id, challenge) = chap_start(CHAP1_TARGET);
        let r = encode_hex(&chap_response(id, b"not-the-secret", &challenge));
        let step = m.step(&req(0, 1, true, &[("CHAP_N", "carol"), ("CHAP_R", &r)]));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn chap_wrong_user() {
        let (mut m, id, challenge) = chap_start(CHAP1_TARGET);
        let r = encode_hex(&chap_response(id, b"carol-secret-12", &challenge));
        let step = m.step(&req(0, 1, true, &[("CHAP_N", "mallory"), ("CHAP_R", &r)]));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn chap_bad_encoding() {
        let (mut m, _, _) = chap_start(CHAP1_TARGET);
        let step = m.step(&req(0, 1, true, &[("CHAP_N", "carol"), ("CHAP_R", "abc")]));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn mutual_chap_success() {
        let (mut m, id, challenge) = chap_start(CHAP_TARGET);
        let s: ChapSecrets = mutual_secrets();
        let r = encode_hex(&chap_response(id, s.secret.as_bytes(), &challenge));
        let my_challenge = [0x5au8; 32];
        let c = encode_hex(&my_challenge);
        let step = m.step(&req(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "9"),
                ("CHAP_C", &c),
            ],
        ));
        assert_eq!(status_of(&step), 0);
        assert!(step.response.transit);
        let keys = keys_of(&step.response.data);
        assert_eq!(get(&keys, "CHAP_N"), Some("target-bob"));
        let expected = chap_response(9, b"bob-secret-3456", &my_challenge);
        assert_eq!(
            decode_binary(get(&keys, "CHAP_R").unwrap()).unwrap(),
            expected.to_vec()
        );
        complete(m.step(&req(1, 3, true, &[])));
    }

    #[test]
    fn mutual_chap_not_configured() {
        let (mut m, id, challenge) = chap_start(CHAP1_TARGET);
        let r = encode_hex(&chap_response(id, b"carol-secret-12", &challenge));
        let step = m.step(&req(
            0,
            1,
            true,
            &[
                ("CHAP_N", "carol"),
                ("CHAP_R", &r),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x0102030405"),
            ],
        ));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn mutual_chap_reflection_rejected() {
        let (mut m, id, challenge) = chap_start(CHAP_TARGET);
        let r = encode_hex(&chap_response(id, b"alice-secret-12", &challenge));
        let c = encode_hex(&challenge);
        let step = m.step(&req(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "3"),
                ("CHAP_C", &c),
            ],
        ));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn mutual_chap_half_request() {
        let (mut m, id, challenge) = chap_start(CHAP_TARGET);
        let r = encode_hex(&chap_response(id, b"alice-secret-12", &challenge));
        let step = m.step(&req(
            0,
            1,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &r), ("CHAP_I", "3")],
        ));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn chap_required_but_none_offered() {
        let mut m = machine();
        let mut k = first_keys(CHAP1_TARGET);
        k.push(("AuthMethod", "None"));
        let step = m.step(&req(0, 1, true, &k));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn chap_required_but_security_stage_skipped() {
        let mut m = machine();
        let step = m.step(&req(1, 3, true, &first_keys(CHAP1_TARGET)));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
        let mut m = machine();
        let step = m.step(&req(0, 1, true, &first_keys(CHAP1_TARGET)));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn chap_unsupported_algorithm() {
        let mut m = machine();
        let mut k = first_keys(CHAP1_TARGET);
        k.push(("AuthMethod", "CHAP"));
        m.step(&req(0, 1, true, &k));
        let step = m.step(&req(0, 1, false, &[("CHAP_A", "6,7")]));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn chap_empty_algorithm_list() {
        let mut m = machine();
        let mut k = first_keys(CHAP1_TARGET);
        k.push(("AuthMethod", "CHAP,None"));
        m.step(&req(0, 1, true, &k));
        let step = m.step(&req(0, 1, false, &[("CHAP_A", "")]));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn chap_stalled_exchange_fails() {
        // No CHAP_A after AuthMethod=CHAP: fail instead of looping.
        let mut m = machine();
        let mut k = first_keys(CHAP1_TARGET);
        k.push(("AuthMethod", "CHAP,None"));
        m.step(&req(0, 1, true, &k));
        let step = m.step(&req(0, 1, true, &[]));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
        // No CHAP_N/CHAP_R after the challenge.
        let (mut m, _, _) = chap_start(CHAP1_TARGET);
        let step = m.step(&req(0, 1, true, &[]));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn chap_hex_looking_user_name_is_literal() {
        let dir = TestDir::with_chap_user("0x6a6f65", "joe-secret-1234");
        let mut m = LoginMachine::new(Arc::new(dir), Limits::default());
        let mut k = first_keys(CHAP1_TARGET);
        k.push(("AuthMethod", "CHAP,None"));
        m.step(&req(0, 1, true, &k));
        let step = m.step(&req(0, 1, false, &[("CHAP_A", "5,6,7,8")]));
        let keys = keys_of(&step.response.data);
        let id: u8 = get(&keys, "CHAP_I").unwrap().parse().unwrap();
        let challenge = decode_binary(get(&keys, "CHAP_C").unwrap()).unwrap();
        let r = encode_hex(&chap_response(id, b"joe-secret-1234", &challenge));
        let step = m.step(&req(0, 3, true, &[("CHAP_N", "0x6a6f65"), ("CHAP_R", &r)]));
        complete(step);
    }

    #[test]
    fn offered_chap_only_without_secrets() {
        let mut m = machine();
        let mut k = first_keys(DISK1);
        k.push(("AuthMethod", "CHAP"));
        let step = m.step(&req(0, 1, true, &k));
        assert_fails(&mut m, step, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn missing_initiator_name() {
        let mut m = machine();
        let step = m.step(&req(1, 3, true, &[("TargetName", DISK1)]));
        assert_fails(&mut m, step, status::MISSING_PARAMETER);
    }

    #[test]
    fn missing_target_name() {
        let mut m = machine();
        let step = m.step(&req(1, 3, true, &[("InitiatorName", INITIATOR)]));
        assert_fails(&mut m, step, status::MISSING_PARAMETER);
    }

    #[test]
    fn unknown_target() {
        let mut m = machine();
        let step = m.step(&req(1, 3, true, &first_keys("iqn.2024-01.test:nope")));
        assert_fails(&mut m, step, status::NOT_FOUND);
    }

    #[test]
    fn not_authorized() {
        let mut m = machine();
        let step = m.step(&req(
            1,
            3,
            true,
            &[("InitiatorName", EVIL), ("TargetName", DISK1)],
        ));
        assert_fails(&mut m, step, status::AUTHORIZATION_FAILURE);
    }

    #[test]
    fn unsupported_version() {
        let mut m = machine();
        let mut r = req(1, 3, true, &first_keys(DISK1));
        r.version_min = 1;
        r.version_max = 2;
        let step = m.step(&r);
        assert_fails(&mut m, step, status::UNSUPPORTED_VERSION);
    }

    #[test]
    fn bad_session_type() {
        let mut m = machine();
        let step = m.step(&req(
            1,
            3,
            true,
            &[("InitiatorName", INITIATOR), ("SessionType", "Bogus")],
        ));
        assert_fails(&mut m, step, status::SESSION_TYPE_NOT_SUPPORTED);
    }

    #[test]
    fn nonzero_tsih() {
        let mut m = machine();
        let mut r = req(1, 3, true, &first_keys(DISK1));
        r.tsih = 5;
        let step = m.step(&r);
        assert_fails(&mut m, step, status::SESSION_DOES_NOT_EXIST);
    }

    #[test]
    fn text_too_long() {
        let mut m = machine();
        let chunk = vec![b'a'; 16 * 1024];
        for _ in 0..4 {
            let step = m.step(&raw_req(1, 3, false, true, &chunk));
            assert_eq!(status_of(&step), 0);
        }
        let step = m.step(&raw_req(1, 3, false, true, &chunk));
        assert_fails(&mut m, step, status::OUT_OF_RESOURCES);
    }

    #[test]
    fn initiator_errors() {
        type Case = (&'static str, Box<dyn Fn(&mut LoginMachine) -> LoginStep>);
        let cases: Vec<Case> = vec![
            (
                "malformed text",
                Box::new(|m| m.step(&raw_req(1, 3, true, false, b"InitiatorName\0"))),
            ),
            (
                "T and C",
                Box::new(|m| {
                    let mut r = req(1, 3, true, &first_keys(DISK1));
                    r.cont = true;
                    m.step(&r)
                }),
            ),
            (
                "CSG 3",
                Box::new(|m| m.step(&req(3, 3, true, &first_keys(DISK1)))),
            ),
            (
                "NSG 2",
                Box::new(|m| m.step(&req(1, 2, true, &first_keys(DISK1)))),
            ),
            (
                "backwards",
                Box::new(|m| m.step(&req(1, 1, true, &first_keys(DISK1)))),
            ),
            (
                "duplicate in one PDU",
                Box::new(|m| {
                    let mut k = first_keys(DISK1);
                    k.push(("MaxBurstLength", "512"));
                    k.push(("MaxBurstLength", "1024"));
                    m.step(&req(1, 3, true, &k))
                }),
            ),
            (
                "duplicate across PDUs",
                Box::new(|m| {
                    let mut k = first_keys(DISK1);
                    k.push(("ErrorRecoveryLevel", "0"));
                    m.step(&req(1, 3, false, &k));
                    m.step(&req(1, 3, true, &[("ErrorRecoveryLevel", "0")]))
                }),
            ),
            (
                "target name changed",
                Box::new(|m| {
                    m.step(&req(1, 3, false, &first_keys(DISK1)));
                    m.step(&req(1, 3, true, &[("TargetName", CHAP_TARGET)]))
                }),
            ),
            (
                "ISID changed",
                Box::new(|m| {
                    m.step(&req(1, 3, false, &first_keys(DISK1)));
                    let mut r = req(1, 3, true, &[]);
                    r.isid[5] = 9;
                    m.step(&r)
                }),
            ),
            (
                "stage went back",
                Box::new(|m| {
                    m.step(&req(1, 3, false, &first_keys(DISK1)));
                    m.step(&req(0, 1, true, &[]))
                }),
            ),
            (
                "security key in operational stage",
                Box::new(|m| {
                    let mut k = first_keys(DISK1);
                    k.push(("AuthMethod", "None"));
                    m.step(&req(1, 3, true, &k))
                }),
            ),
            (
                "initiator sent TargetPortalGroupTag",
                Box::new(|m| {
                    let mut k = first_keys(DISK1);
                    k.push(("TargetPortalGroupTag", "1"));
                    m.step(&req(1, 3, true, &k))
                }),
            ),
            (
                "bad MaxRecvDataSegmentLength",
                Box::new(|m| {
                    let mut k = first_keys(DISK1);
                    k.push(("MaxRecvDataSegmentLength", "100"));
                    m.step(&req(1, 3, true, &k))
                }),
            ),
            (
                "request after completion",
                Box::new(|m| {
                    m.step(&req(1, 3, true, &first_keys(DISK1)));
                    m.step(&req(1, 3, true, &[]))
                }),
            ),
        ];
        for (name, case) in cases {
            let mut m = machine();
            let step = case(&mut m);
            assert_eq!(status_of(&step), status::INITIATOR_ERROR, "{name}");
            assert!(matches!(step.outcome, StepOutcome::Failed), "{name}");
        }
    }

    #[test]
    fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let texts: [&[u8]; 6] = [
            b"InitiatorName=iqn.x\0TargetName=iqn.2024-01.test:chap\0AuthMethod=CHAP\0",
            b"InitiatorName=iqn.x\0SessionType=Discovery\0",
            b"CHAP_A=5\0",
            b"CHAP_N=alice\0CHAP_R=0bAAAA\0CHAP_I=300\0CHAP_C=0x\0",
            b"MaxBurstLength=0x\0FirstBurstLength=99999999999999999999\0",
            b"\xff=\0",
        ];
        for _ in 0..2000 {
            let mut m = machine();
            for _ in 0..rng.gen_range(1..6) {
                let data: Vec<u8> = if rng.gen_bool(0.5) {
                    texts[rng.gen_range(0..texts.len())].to_vec()
                } else {
                    (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect()
                };
                let mut r = raw_req(
                    rng.gen_range(0..4),
                    rng.gen_range(0..4),
                    rng.gen(),
                    rng.gen_bool(0.2),
                    &data,
                );
                r.version_min = rng.gen_range(0..2);
                let _ = m.step(&r);
            }
        }
    }

    #[test]
    fn itt_may_change() {
        let mut m = machine();
        m.step(&req(1, 3, false, &first_keys(DISK1)));
        let mut r = req(1, 3, true, &[]);
        r.itt = 77;
        let step = m.step(&r);
        assert_eq!(step.response.itt, 77);
        complete(step);
    }

    #[test]
    fn multi_pdu_continuation() {
        let mut m = machine();
        let text = b"InitiatorName=iqn.2024-01.test:initiator\0TargetName=iqn.2024-01.test:disk1\0MaxBurstLength=65536\0";
        let (a, rest) = text.split_at(20);
        let (b, c) = rest.split_at(30);
        for part in [a, b] {
            let step = m.step(&raw_req(1, 3, false, true, part));
            assert_eq!(status_of(&step), 0);
            assert!(!step.response.transit && !step.response.cont);
            assert_eq!(step.response.csg, 1);
            assert!(step.response.data.is_empty());
            assert!(matches!(step.outcome, StepOutcome::Continue));
        }
        let step = m.step(&raw_req(1, 3, true, false, c));
        let keys = keys_of(&step.response.data);
        assert_eq!(get(&keys, "MaxBurstLength"), Some("65536"));
        assert_eq!(get(&keys, "TargetPortalGroupTag"), Some("1"));
        let p = complete(step);
        assert_eq!(p.max_burst_length, 65536);
        assert_eq!(p.target_name.as_deref(), Some(DISK1));
    }

    #[test]
    fn continuation_must_stay_in_stage() {
        let mut m = machine();
        m.step(&raw_req(0, 1, false, true, b"InitiatorName=iqn.x\0"));
        let step = m.step(&raw_req(1, 3, true, false, b"TargetName=iqn.y\0"));
        assert_eq!(status_of(&step), status::INITIATOR_ERROR);
    }

    #[test]
    fn operational_stage_without_transit() {
        let mut m = machine();
        let step = m.step(&req(1, 3, false, &first_keys(DISK1)));
        assert!(!step.response.transit);
        assert_eq!(step.response.nsg, 0);
        // Declared once, in the first operational-stage response.
        let keys = keys_of(&step.response.data);
        assert_eq!(get(&keys, "MaxRecvDataSegmentLength"), Some("262144"));
        let step = m.step(&req(1, 3, true, &[("MaxBurstLength", "4096")]));
        let keys = keys_of(&step.response.data);
        assert_eq!(
            keys,
            vec![("MaxBurstLength".to_string(), "4096".to_string())]
        );
        assert_eq!(complete(step).max_burst_length, 4096);
    }
}
