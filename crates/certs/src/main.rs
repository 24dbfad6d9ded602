//! `zrep-certs`: certificate helper for zrep.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use zrep_tls::{Fingerprint, load_certs};

/// Certificate helper for zrep: inspection. (Certificates are made by `zrep-recv init`, `pair`
/// and `issue`; `scripts/gen-certs-example` makes the example set with them.)
#[derive(Debug, Parser)]
#[command(name = "zrep-certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print subject, issuer, validity and SHA-256 fingerprint of each certificate in a PEM file.
    Inspect {
        /// PEM file with one or more certificates.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { file } => inspect(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zrep-certs: {}", zrep_cli::one_line(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn inspect(file: &Path) -> anyhow::Result<()> {
    for (i, cert) in load_certs(file)?.iter().enumerate() {
        let (_, x509) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| anyhow::anyhow!("certificate #{i}: {e}"))?;
        if i > 0 {
            println!();
        }
        println!("subject:     {}", x509.subject());
        println!("issuer:      {}", x509.issuer());
        println!("not before:  {}", x509.validity().not_before);
        println!("not after:   {}", x509.validity().not_after);
        println!("CA:          {}", x509.is_ca());
        println!("sha256:      {}", Fingerprint::of_cert(cert));
    }
    Ok(())
}
