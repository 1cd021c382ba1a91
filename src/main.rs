//! The `podagent` binary: parse the command line, load the configuration, start telemetry and
//! hand over to the library. Exit codes: 0 success, 1 failure, 64 bad command line or
//! configuration (`EX_USAGE`); `status` has its own (0 no drift, 1 drift, 2 cannot look).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use podagent::config::{Cli, Command, Config, EXIT_BAD_CONFIG};
use podagent::error_chain::render;
use podagent::{check, daemon, status, systemd, telemetry};

fn version() -> String {
    format!(
        "podagent {}\ncommit: {}\nbuilt: {}\nruntimes: containerd (CRI v1), crio (CRI v1), docker (Engine API)\n",
        env!("CARGO_PKG_VERSION"),
        env!("BUILD_GIT_COMMIT"),
        env!("BUILD_DATE"),
    )
}

fn run(config: Config) -> ExitCode {
    if let Err(e) = telemetry::init(&config.log_level, true) {
        eprintln!("podagent: {}", render(&e));
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %render(&e), "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config, Arc::new(systemd::SdNotify))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let rendered = render(&e);
            tracing::error!(error = %rendered, "podagent failed");
            eprintln!("podagent: {rendered}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; usage errors are EX_USAGE.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command() {
        Command::Version => {
            print!("{}", version());
            ExitCode::SUCCESS
        }
        Command::Check => check::run(&cli.flags),
        Command::Status(args) => status::run(&cli.flags, &args),
        Command::Run => match Config::load(&cli.flags) {
            Ok(config) => run(config),
            Err(e) => {
                eprintln!("podagent: {}", render(&e));
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
    }
}
