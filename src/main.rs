//! The `podagent` binary: a thin shell over the library.

fn main() -> std::process::ExitCode {
    eprintln!("podagent: the agent is not implemented yet");
    std::process::ExitCode::FAILURE
}
