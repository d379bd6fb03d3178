//! `scli`, the admin CLI: ScaleIO's command syntax, sent to the MDM as one
//! [`AdminRequest`], the answer printed the way ScaleIO prints it.
//!
//! Reading the command line ([`args`], [`request`]), the installer CSV ([`csv`]), the
//! initiator map ([`initiator_file`]) and printing answers ([`render`]) are pure; only
//! [`run`] reads files and talks to the MDM, so everything an admin can get wrong is
//! caught before anything is changed.
//!
//! Exit status: 0 done; 1 bad arguments, CSV or map file (nothing was changed); 2 the
//! MDM refused the command (it changed nothing); 3 the MDM could not be reached or gave
//! an answer scli does not understand (the command may or may not have been applied).

pub mod args;
pub mod csv;
pub mod render;
pub mod request;
pub mod value;

use crate::cluster::api::{AddSds, AdminReply, AdminRequest, By, MdmReply, MdmRequest};
use crate::cluster::frame::FrameError;
use crate::cluster::initiator_file::{self, MapFileError};
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
                          \x20 1  bad arguments, CSV or map file; nothing was changed\n\
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
    #[error("cannot read {path}: {reason}; check the file given to --apply_initiator_map")]
    ReadMap {
        path: PathBuf,
        reason: std::io::Error,
    },
    /// Editors and compilers print `FILE:LINE:`, so an admin's editor can jump there.
    #[error("{}:{}: {}", .path.display(), .error.line, .error.message)]
    MapFile { path: PathBuf, error: MapFileError },
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
    #[error(
        "the MDM at {addr} gave an unexpected answer to {asked}; check that --mdm_ip and \
         --mdm_port name an MDM of this version"
    )]
    UnexpectedReply { addr: String, asked: &'static str },
}

impl ScliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ScliError::Args(_)
            | ScliError::Request(_)
            | ScliError::ReadCsv { .. }
            | ScliError::Csv { .. }
            | ScliError::ReadMap { .. }
            | ScliError::MapFile { .. } => EXIT_USAGE,
            ScliError::Refused(_) => EXIT_REFUSED,
            ScliError::Unreachable { .. }
            | ScliError::Timeout(_)
            | ScliError::Transport { .. }
            | ScliError::NotAdmin(_)
            | ScliError::UnexpectedReply { .. } => EXIT_UNREACHABLE,
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
        Job::Admin(req) => ask_and_print(&inv, &req).await,
        Job::NeedsIqn(initiator) => {
            let iqn = iqn_of(&inv.mdm, initiator).await?;
            ask_and_print(&inv, &request::set_chap_for_iqn(&inv, &iqn)?).await
        }
        Job::Csv(path) => add_sds_from_csv(&inv.mdm, path).await,
        Job::InitiatorMap(path) => apply_initiator_map(&inv.mdm, path).await,
    }
}

async fn ask_and_print(inv: &args::Invocation, req: &AdminRequest) -> Result<String, ScliError> {
    let reply = call(&inv.mdm, req).await?;
    Ok(if inv.json {
        render::json(&reply)
    } else {
        render::text(req, &reply)
    })
}

/// The IQN the MDM holds for an initiator.
async fn iqn_of(mdm: &str, initiator: By) -> Result<String, ScliError> {
    match call(mdm, &AdminRequest::QueryScsiInitiator { initiator }).await? {
        AdminReply::ScsiInitiator(info) => Ok(info.iqn),
        _ => Err(ScliError::UnexpectedReply {
            addr: mdm.to_string(),
            asked: "--query_scsi_initiator",
        }),
    }
}

async fn add_sds_from_csv(mdm: &str, path: PathBuf) -> Result<String, ScliError> {
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
    Ok(match call(mdm, &req).await? {
        AdminReply::CreatedMany(created) => render::csv_rows(&rows, &created),
        other => render::text(&req, &other),
    })
}

/// Checks the whole file, then that its volumes exist (a typo would otherwise reach
/// the MDM as a refusal without a line), then sends it. `dreadnought up` applies its
/// `conf/initiators.toml` through this too.
pub async fn apply_initiator_map(mdm: &str, path: PathBuf) -> Result<String, ScliError> {
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(reason) => return Err(ScliError::ReadMap { path, reason }),
    };
    let file = match initiator_file::parse(&text) {
        Ok(file) => file,
        Err(error) => return Err(ScliError::MapFile { path, error }),
    };
    let volumes: Vec<String> = match call(mdm, &AdminRequest::QueryAllVolumes).await? {
        AdminReply::AllVolumes(all) => all.into_iter().map(|v| v.name).collect(),
        _ => {
            return Err(ScliError::UnexpectedReply {
                addr: mdm.to_string(),
                asked: "--query_all_volumes",
            })
        }
    };
    if let Err(error) = file.check_volumes(&volumes) {
        return Err(ScliError::MapFile { path, error });
    }
    let req = AdminRequest::ApplyInitiatorMap(file.map);
    Ok(match call(mdm, &req).await? {
        AdminReply::MapApplied(changes) => {
            render::map_applied(&changes, &path.display().to_string())
        }
        other => render::text(&req, &other),
    })
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
        let (addr, task) = fake_mdm_answering(vec![answer]).await;
        (
            addr,
            tokio::spawn(async move { task.await.unwrap().remove(0) }),
        )
    }

    /// An MDM that answers one request per connection, with `answers` in order, and
    /// hands back what it was asked.
    async fn fake_mdm_answering(
        answers: Vec<MdmResponse>,
    ) -> (String, JoinHandle<Vec<MdmRequest>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut asked = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                asked.push(frame::read(&mut s).await.unwrap().unwrap());
                frame::write(&mut s, &answer).await.unwrap();
            }
            asked
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
            "Exit status:\n  0  done\n  1  bad arguments, CSV or map file; nothing was changed\n  \
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

    fn admin(reply: AdminReply) -> MdmResponse {
        Ok(MdmReply::Admin(reply))
    }

    fn volume_named(name: &str) -> crate::cluster::api::VolumeInfo {
        crate::cluster::api::VolumeInfo {
            id: 0x7a5a,
            name: name.into(),
            size_bytes: 1 << 30,
            thin: true,
            pool_id: 1,
            pool_name: "pool1".into(),
            protection_domain_name: "pd1".into(),
            chunks: 1024,
            epoch: 1,
            mapped_sdc: vec![],
        }
    }

    const MAP: &str = "[[initiator]]\n\
                       name = \"svrsan2011\"\n\
                       iqn = \"iqn.1998-01.com.vmware:svrsan2011-4f2a\"\n\
                       \n\
                       [[initiator.mapping]]\n\
                       volume = \"awsvol01\"\n\
                       lun = 0\n";

    fn write_map(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initiators.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[tokio::test]
    async fn add_scsi_initiator_sends_the_normalized_iqn() {
        let (mdm, asked) = fake_mdm(admin(AdminReply::Created {
            kind: "SCSI initiator".into(),
            id: 0xa1,
            name: "svrsan2011".into(),
        }))
        .await;
        let out = run(&argv(&format!(
            "--mdm_ip {mdm} --add_scsi_initiator --initiator_name svrsan2011 \
             --iqn IQN.1998-01.com.vmware:svrsan2011-4f2a"
        )))
        .await
        .unwrap();
        assert_eq!(
            out,
            "Successfully created SCSI initiator svrsan2011 (IQN \
             iqn.1998-01.com.vmware:svrsan2011-4f2a, CHAP: none). Object ID 00000000000000a1\n"
        );
        assert_eq!(
            asked.await.unwrap(),
            MdmRequest::Admin(AdminRequest::AddScsiInitiator {
                name: "svrsan2011".into(),
                iqn: "iqn.1998-01.com.vmware:svrsan2011-4f2a".into(),
                chap: None,
            })
        );
    }

    #[tokio::test]
    async fn set_chap_without_username_uses_the_iqn_the_mdm_holds() {
        let info = crate::cluster::api::InitiatorInfo {
            id: 0xa1,
            name: "svrsan2011".into(),
            iqn: "iqn.1998-01.com.vmware:svrsan2011-4f2a".into(),
            chap: crate::cluster::api::ChapMode::None,
            chap_username: None,
            luns: vec![],
        };
        let (mdm, asked) = fake_mdm_answering(vec![
            admin(AdminReply::ScsiInitiator(info.clone())),
            admin(AdminReply::Done("CHAP set for svrsan2011".into())),
        ])
        .await;
        let out = run(&argv(&format!(
            "--mdm_ip {mdm} --set_scsi_initiator_chap --initiator_name svrsan2011 \
             --chap_secret twelve-bytes"
        )))
        .await
        .unwrap();
        assert_eq!(out, "CHAP set for svrsan2011\n");
        let asked = asked.await.unwrap();
        assert_eq!(
            asked[0],
            MdmRequest::Admin(AdminRequest::QueryScsiInitiator {
                initiator: By::Name("svrsan2011".into())
            })
        );
        assert_eq!(
            asked[1],
            MdmRequest::Admin(AdminRequest::SetScsiInitiatorChap {
                initiator: By::Name("svrsan2011".into()),
                chap: Some(crate::cluster::api::Chap {
                    username: info.iqn,
                    secret: "twelve-bytes".into(),
                    mutual: None,
                }),
            })
        );
    }

    #[tokio::test]
    async fn apply_initiator_map_checks_volumes_then_sends_the_map() {
        let (_dir, path) = write_map(MAP);
        let (mdm, asked) = fake_mdm_answering(vec![
            admin(AdminReply::AllVolumes(vec![volume_named("awsvol01")])),
            admin(AdminReply::MapApplied(vec![
                "Added SCSI initiator svrsan2011".into(),
            ])),
        ])
        .await;
        let out = run(&argv(&format!(
            "--mdm_ip {mdm} --apply_initiator_map {path}"
        )))
        .await
        .unwrap();
        assert_eq!(
            out,
            format!("Added SCSI initiator svrsan2011\nApplied 1 change from {path}.\n")
        );
        let asked = asked.await.unwrap();
        assert_eq!(asked[0], MdmRequest::Admin(AdminRequest::QueryAllVolumes));
        let expected = initiator_file::parse(MAP).unwrap().map;
        assert_eq!(
            asked[1],
            MdmRequest::Admin(AdminRequest::ApplyInitiatorMap(expected))
        );

        let (mdm, _) = fake_mdm_answering(vec![
            admin(AdminReply::AllVolumes(vec![volume_named("awsvol01")])),
            admin(AdminReply::MapApplied(vec![])),
        ])
        .await;
        let out = run(&argv(&format!(
            "--mdm_ip {mdm} --apply_initiator_map {path}"
        )))
        .await
        .unwrap();
        assert_eq!(
            out,
            format!("No changes: the map in force already matches {path}\n")
        );
    }

    #[tokio::test]
    async fn a_bad_map_changes_nothing() {
        // A syntax error: nothing is sent (nothing listens, so a send would fail otherwise).
        let (_dir, path) = write_map("[[initiator]]\nname = \"svrsan2011\"\niqn = \"bogus\"\n");
        let e = run(&argv(&format!(
            "--mdm_ip {} --apply_initiator_map {path}",
            nobody().await
        )))
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(
            e.to_string().starts_with(&format!(
                "{path}:3: initiator svrsan2011: iSCSI name \"bogus\" must start with"
            )),
            "{e}"
        );

        // An unknown volume: only the volume query is sent.
        let (_dir, path) = write_map(MAP);
        let (mdm, asked) =
            fake_mdm_answering(vec![admin(AdminReply::AllVolumes(vec![volume_named(
                "other",
            )]))])
            .await;
        let e = run(&argv(&format!(
            "--mdm_ip {mdm} --apply_initiator_map {path}"
        )))
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert_eq!(
            e.to_string(),
            format!(
                "{path}:6: volume awsvol01 does not exist; create it (scli --add_volume) or \
                 correct the name in initiator svrsan2011's mapping"
            )
        );
        assert_eq!(asked.await.unwrap().len(), 1);

        // A refusal by the MDM.
        let (mdm, _) = fake_mdm_answering(vec![
            admin(AdminReply::AllVolumes(vec![volume_named("awsvol01")])),
            Err("volume awsvol01 is mapped to SDC gw1".into()),
        ])
        .await;
        let e = run(&argv(&format!(
            "--mdm_ip {mdm} --apply_initiator_map {path}"
        )))
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), EXIT_REFUSED);

        let e = run(&argv(&format!(
            "--mdm_ip {mdm} --apply_initiator_map {path}.absent"
        )))
        .await
        .unwrap_err();
        assert!(matches!(e, ScliError::ReadMap { .. }));
        assert_eq!(e.exit_code(), EXIT_USAGE);
    }

    #[tokio::test]
    async fn export_prints_a_map_file() {
        let map = initiator_file::parse(MAP).unwrap().map;
        let (mdm, asked) = fake_mdm(admin(AdminReply::InitiatorMap(map.clone()))).await;
        let out = run(&argv(&format!("--mdm_ip {mdm} --export_initiator_map")))
            .await
            .unwrap();
        assert_eq!(initiator_file::parse(&out).unwrap().map, map);
        assert_eq!(
            asked.await.unwrap(),
            MdmRequest::Admin(AdminRequest::ExportInitiatorMap)
        );
    }
}
