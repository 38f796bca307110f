//! `poolrelay dkim keygen`: writes a signing key and prints the DNS TXT record to publish.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::signing::keygen::{self, Algorithm};

pub fn keygen(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    out: Option<PathBuf>,
) -> ExitCode {
    match keygen::run(domain, selector, algorithm, out.as_deref()) {
        Ok((path, record)) => {
            eprintln!(
                "wrote private key to {} (mode 0600); publish this record, then add to the config:\n\
                 [[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nprivate_key = \"{}\"\n",
                path.display(),
                path.display()
            );
            println!("{record}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("poolrelay dkim keygen: {e}");
            ExitCode::FAILURE
        }
    }
}
