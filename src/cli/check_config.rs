//! `poolrelay check-config`: every check start makes (`config::Checked`), so check-config, start
//! and reload agree; prints each error with file, line and key.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Checked;

/// Every error printed and exit 2, or `FILE: ok`.
pub fn run(file: &Path) -> ExitCode {
    match Checked::load(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::from(2)
        }
    }
}
