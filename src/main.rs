use clap::{Parser, Subcommand};
use dreadnought::up;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Dreadnought: software-defined block storage with a native iSCSI target.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the volumes of a config file on one machine (first run, demo, tests).
    Up {
        /// Config file.
        #[arg(long, default_value = "conf/dreadnought.toml")]
        config: PathBuf,
        /// Portal to listen on (repeatable); overrides iscsi.listen.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Vec<SocketAddr>,
        /// Directory for volume files and the system id; overrides data_dir.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Up {
                config,
                listen,
                data_dir,
            } => up::run(&config, up::Overrides { listen, data_dir }).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
