//! The `evolve` binary: parses the command line and runs it (see [`evolve_host::cli`]).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = evolve_host::cli::Cli::parse();
    if !matches!(cli.command, evolve_host::cli::Command::Serve(_)) {
        // Commands other than serve log warnings only; serve configures logging from its config.
        let _ = evolve_host::cli::init_quiet_tracing();
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
    match runtime.block_on(evolve_host::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
