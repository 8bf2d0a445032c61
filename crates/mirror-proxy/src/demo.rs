//! `mirror-proxy demo`.

use std::process::ExitCode;

use crate::config::DemoArgs;

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> ExitCode {
    ExitCode::SUCCESS
}
