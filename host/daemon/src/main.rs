//! The `evolve` binary: parses the command line and runs it (see [`evolve_daemon::cli`]).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = evolve_daemon::cli::Cli::parse();
    if !matches!(cli.command, evolve_daemon::cli::Command::Serve(_)) {
        // Commands other than serve log warnings only; serve configures logging from its config.
        let _ = evolve_daemon::cli::init_quiet_tracing();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(evolve_daemon::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
