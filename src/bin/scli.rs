//! `scli`: the Dreadnought admin CLI, in ScaleIO's syntax. The work is in
//! `dreadnought::scli`; this only wires it to the process.

use dreadnought::scli;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Lossy rather than a panic on a non-UTF-8 argument: the parser then names it.
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(scli::run(&argv)) {
        Ok(out) => {
            // A closed pipe (`scli ... | head`) is not worth a panic.
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
