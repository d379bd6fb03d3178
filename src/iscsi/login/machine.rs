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
