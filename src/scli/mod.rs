//! `scli`, the admin CLI: ScaleIO's command syntax, sent to the MDM as one
//! [`AdminRequest`], the answer printed the way ScaleIO prints it.
//!
//! Reading the command line ([`args`], [`request`]), the installer CSV ([`csv`]) and
//! printing answers ([`render`]) are pure; only [`run`] reads files and talks to the
//! MDM, so everything an admin can get wrong is caught before anything is sent.
//!
//! Exit status: 0 done; 1 bad arguments or CSV file (nothing was sent); 2 the MDM
//! refused the command (it changed nothing); 3 the MDM could not be reached or gave an
//! answer scli does not understand (the command may or may not have been applied).

pub mod args;
pub mod csv;
pub mod render;
pub mod request;
pub mod value;

use crate::cluster::api::{AddSds, AdminReply, AdminRequest, MdmReply, MdmRequest};
use crate::cluster::frame::FrameError;
use crate::cluster::mdm_client::{self, MdmCallError};
use args::{ArgsError, Command};
use csv::CsvError;
use request::{Job, RequestError};
use std::path::PathBuf;
use std::time::Duration;

pub const EXIT_USAGE: u8 = 1;
pub const EXIT_REFUSED: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

const EXIT_CODES: &str = "  0  done\n\
                          \x20 1  bad arguments or CSV file; nothing was sent\n\
                          \x20 2  the MDM refused the command; it changed nothing\n\
                          \x20 3  the MDM could not be reached or gave an answer scli does not \
                          understand\n";

/// Long enough for the MDM to contact every SDS of a large CSV batch before it answers.
pub const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ScliError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("cannot read {path}: {reason}; check the file given to --add_sds_from_csv")]
    ReadCsv {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}: {error}; nothing was sent")]
    Csv { path: PathBuf, error: CsvError },
    /// ScaleIO's wording, which admins' scripts grep for.
    #[error("MDM failed command.  Status: {0}")]
    Refused(String),
    #[error(
        "cannot reach the MDM at {addr}: {reason}; check --mdm_ip and --mdm_port, and that \
         the MDM is running"
    )]
    Unreachable {
        addr: String,
        reason: std::io::Error,
    },
    #[error(
        "the MDM at {0} did not answer within {secs} s; check that it is running, then query \
         whether the command was applied before repeating it",
        secs = TIMEOUT.as_secs()
    )]
    Timeout(String),
    #[error(
        "talking to the MDM at {addr} failed: {reason}; check that --mdm_ip and --mdm_port \
         name an MDM of this version"
    )]
    Transport { addr: String, reason: FrameError },
    #[error(
        "the MDM at {0} answered with something other than an admin reply; check that \
         --mdm_ip and --mdm_port name an MDM"
    )]
    NotAdmin(String),
}

impl ScliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ScliError::Args(_)
            | ScliError::Request(_)
            | ScliError::ReadCsv { .. }
            | ScliError::Csv { .. } => EXIT_USAGE,
            ScliError::Refused(_) => EXIT_REFUSED,
            ScliError::Unreachable { .. }
            | ScliError::Timeout(_)
            | ScliError::Transport { .. }
            | ScliError::NotAdmin(_) => EXIT_UNREACHABLE,
        }
    }
}

/// Runs one command line (without the program name); returns what to print.
pub async fn run(argv: &[String]) -> Result<String, ScliError> {
    let inv = match args::parse(argv)? {
        Command::Help(None) => return Ok(args::usage(EXIT_CODES)),
        Command::Help(Some(action)) => return Ok(args::usage_of(action, EXIT_CODES)),
        Command::Version => {
            return Ok(format!(
                "scli (Dreadnought) {}\n",
                env!("CARGO_PKG_VERSION")
            ))
        }
        Command::Run(inv) => inv,
    };
    match request::build(&inv)? {
        Job::Admin(req) => {
            let reply = call(&inv.mdm, &req).await?;
            Ok(if inv.json {
                render::json(&reply)
            } else {
                render::text(&req, &reply)
            })
        }
        Job::Csv(path) => {
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                Err(reason) => return Err(ScliError::ReadCsv { path, reason }),
            };
            let rows = match csv::parse(&text) {
                Ok(rows) => rows,
                Err(error) => return Err(ScliError::Csv { path, error }),
            };
            let batch: Vec<AddSds> = rows.iter().filter_map(|r| r.sds.clone()).collect();
            let req = AdminRequest::AddSdsBatch(batch);
            Ok(match call(&inv.mdm, &req).await? {
                AdminReply::CreatedMany(created) => render::csv_rows(&rows, &created),
                other => render::text(&req, &other),
            })
        }
    }
}

/// One round trip to the MDM.
async fn call(mdm: &str, req: &AdminRequest) -> Result<AdminReply, ScliError> {
    let msg = MdmRequest::Admin(req.clone());
    match mdm_client::ask(mdm, &msg, TIMEOUT).await {
        Ok(MdmReply::Admin(reply)) => Ok(reply),
        Ok(_) => Err(ScliError::NotAdmin(mdm.to_string())),
        Err(MdmCallError::Refused { message, .. }) => Err(ScliError::Refused(message)),
        Err(MdmCallError::Transport { source, .. }) => Err(match source {
            FrameError::Connect { addr, source } => ScliError::Unreachable {
                addr,
                reason: source,
            },
            FrameError::Timeout(addr) => ScliError::Timeout(addr),
            reason => ScliError::Transport {
                addr: mdm.to_string(),
                reason,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::api::{By, DeviceSpec, MdmResponse, SdsState};
    use crate::cluster::frame;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    /// An MDM that answers one request with `answer` and hands back what it was asked.
    async fn fake_mdm(answer: MdmResponse) -> (String, JoinHandle<MdmRequest>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let req: MdmRequest = frame::read(&mut s).await.unwrap().unwrap();
            frame::write(&mut s, &answer).await.unwrap();
            req
        });
        (addr, task)
    }

    /// An address where nothing listens.
    async fn nobody() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn sends_the_request_and_prints_the_answer() {
        let (mdm, asked) = fake_mdm(Ok(MdmReply::Admin(AdminReply::Volume {
            id: 0x7a5a_9f1e_0000_0000,
            name: "awsvol01".into(),
            size_bytes: 20 << 30,
        })))
        .await;
        let out = run(&argv(&format!(
            "--mdm_ip {mdm} --add_volume --protection_domain_name awspdomain01 \
             --storage_pool_name pool03 --size 20 --volume_name awsvol01"
        )))
        .await
        .unwrap();
        assert_eq!(
            out,
            "Successfully created volume awsvol01 of size 20.0 GB (20480 MB), thin provisioned. \
             Object ID 7a5a9f1e00000000\n"
        );
        assert_eq!(
            asked.await.unwrap(),
            MdmRequest::Admin(AdminRequest::AddVolume {
                pd: By::Name("awspdomain01".into()),
                pool: By::Name("pool03".into()),
                name: Some("awsvol01".into()),
                size_bytes: 20 << 30,
                thin: true,
            })
        );
    }

    #[tokio::test]
    async fn json_prints_the_info() {
        let sds = crate::cluster::api::SdsInfo {
            id: 1,
            name: "aws1sds".into(),
            ip: "10.0.0.11".into(),
            port: 7072,
            protection_domain_id: 2,
            protection_domain_name: "pd".into(),
            state: SdsState::Connected,
            devices: vec![],
        };
        let (mdm, _) = fake_mdm(Ok(MdmReply::Admin(AdminReply::AllSds(vec![sds.clone()])))).await;
        let out = run(&argv(&format!("--mdm_ip {mdm} --query_all_sds --json")))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["id"], "0000000000000001");
        assert_eq!(v[0]["name"], sds.name);
    }

    #[tokio::test]
    async fn refusals_read_as_scaleio_prints_them() {
        let (mdm, _) = fake_mdm(Err("Could not find the storage pool pool04".into())).await;
        let e = run(&argv(&format!(
            "--mdm_ip {mdm} --query_storage_pool --protection_domain_name pd --storage_pool_name pool04"
        )))
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "MDM failed command.  Status: Could not find the storage pool pool04"
        );
        assert_eq!(e.exit_code(), EXIT_REFUSED);
    }

    #[tokio::test]
    async fn an_absent_mdm_is_reported_with_what_to_check() {
        let mdm = nobody().await;
        let e = run(&argv(&format!("--mdm_ip {mdm} --query_cluster")))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot reach the MDM at {mdm}: ")),
            "{msg}"
        );
        assert!(msg.ends_with("check --mdm_ip and --mdm_port, and that the MDM is running"));
    }

    #[tokio::test]
    async fn a_non_admin_answer_is_not_taken_for_success() {
        let (mdm, _) = fake_mdm(Ok(MdmReply::Ok)).await;
        let e = run(&argv(&format!("--mdm_ip {mdm} --query_cluster")))
            .await
            .unwrap_err();
        assert!(matches!(e, ScliError::NotAdmin(_)));
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
    }

    #[tokio::test]
    async fn csv_goes_as_one_batch_and_prints_each_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.csv");
        std::fs::write(
            &path,
            "IP,Password,Operating System,Is MDM/TB,MDM NIC,Is SDS,is SDC,SDS Name,Domain,SDS Device List,SDS Pool List\n\
             10.0.0.11,pw,linux,Primary,eth0,Yes,No,aws1sds,awspdomain01,/dev/xvdf,pool03\n\
             10.0.0.12,pw,linux,,,No,Yes,,,,\n\
             10.0.0.13,pw,linux,,,Yes,No,aws3sds,awspdomain01,\"/dev/xvdf,/dev/xvdg\",pool03\n",
        )
        .unwrap();
        let (mdm, asked) = fake_mdm(Ok(MdmReply::Admin(AdminReply::CreatedMany(vec![
            (0xe1, "aws1sds".into()),
            (0xe3, "aws3sds".into()),
        ]))))
        .await;
        let out = run(&[
            "--mdm_ip".into(),
            mdm,
            "--add_sds_from_csv".into(),
            path.display().to_string(),
        ])
        .await
        .unwrap();
        assert_eq!(
            out,
            "Row 2: added SDS aws1sds (ID 00000000000000e1) with 1 device in pool03\n\
             Row 3: not an SDS, skipped\n\
             Row 4: added SDS aws3sds (ID 00000000000000e3) with 2 devices in pool03\n\
             Successfully added 2 SDS nodes from 3 rows.\n"
        );
        let MdmRequest::Admin(AdminRequest::AddSdsBatch(batch)) = asked.await.unwrap() else {
            panic!("not a batch");
        };
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].ip, "10.0.0.11");
        assert_eq!(
            batch[1].devices[1],
            DeviceSpec {
                path: "/dev/xvdg".into(),
                pool: "pool03".into(),
                name: None
            }
        );
    }

    #[tokio::test]
    async fn a_bad_csv_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.csv");
        std::fs::write(
            &path,
            "IP,Is SDS,Domain,SDS Device List,SDS Pool List\n\
             10.0.0.11,Yes,pd,/dev/a,p\n\
             10.0.0.12,Yes,pd,,p\n",
        )
        .unwrap();
        // Nothing listens there: an attempt to send would fail differently.
        let mdm = nobody().await;
        let line = format!("--mdm_ip {mdm} --add_sds_from_csv {}", path.display());
        let e = run(&argv(&line)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: line 3, column `SDS Device List` is empty; an SDS needs at least one device; \
                 nothing was sent",
                path.display()
            )
        );
        assert_eq!(e.exit_code(), EXIT_USAGE);
        let missing = dir.path().join("absent.csv");
        let e = run(&argv(&format!(
            "--mdm_ip {mdm} --add_sds_from_csv {}",
            missing.display()
        )))
        .await
        .unwrap_err();
        assert!(matches!(e, ScliError::ReadCsv { .. }));
        assert_eq!(e.exit_code(), EXIT_USAGE);
    }

    #[tokio::test]
    async fn usage_errors_help_and_version_need_no_mdm() {
        let e = run(&argv("--add_sds --add_volume")).await.unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        let e = run(&argv("--remove_volume")).await.unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert_eq!(
            e.to_string(),
            "--remove_volume needs --volume_name or --volume_id"
        );
        let help = run(&[]).await.unwrap();
        assert!(help.contains("  --query_all_sds [--json]\n"));
        assert!(help.ends_with(
            "Exit status:\n  0  done\n  1  bad arguments or CSV file; nothing was sent\n  \
             2  the MDM refused the command; it changed nothing\n  3  the MDM could not be \
             reached or gave an answer scli does not understand\n"
        ));
        let one = run(&argv("--map_volume_to_sdc --help")).await.unwrap();
        assert!(one.starts_with("Usage: scli [--mdm_ip IP[:PORT]] --map_volume_to_sdc "));
        let version = run(&argv("--version")).await.unwrap();
        assert_eq!(
            version,
            format!("scli (Dreadnought) {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}
