//! `poolrelay doctor`: one round of checks, printed as a table or JSON.
//! Exit 0 when nothing fails, 1 on a failure, 2 on a usage error (bad config or argument).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::doctor::{Doctor, Options};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Config file (TOML): pool IPs, HELO names, DKIM keys, pool rules, DNSBLs, resolver.
    #[arg(long, short, default_value = "config/poolrelay.toml")]
    pub config: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also check this sending domain (repeatable).
    #[arg(long = "domain", value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// Skip the RCPT probes of postmaster@ and abuse@.
    #[arg(long)]
    pub no_probe: bool,
}

pub fn run(args: DoctorArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("poolrelay doctor: {msg}");
        ExitCode::from(2)
    };
    let config = match crate::config::Config::load(&args.config) {
        Ok(c) => Arc::new(c),
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::doctor::targets::domains(&config.doctor_inputs(), &args.domains) {
        return usage(format!("--domain / [doctor] domains: {e}"));
    }
    crate::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay doctor: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = Options {
        domains: args.domains,
        probe: config.doctor.probe && !args.no_probe,
    };
    let report = runtime.block_on(async {
        let doctor = Arc::new(Doctor::new(
            config.doctor_inputs(),
            crate::server::doctor_tools(&config)?,
        ));
        doctor.run(&opts).await
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => return usage(e.to_string()),
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{}", crate::text::json(&s)),
            Err(e) => {
                eprintln!("poolrelay doctor: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
