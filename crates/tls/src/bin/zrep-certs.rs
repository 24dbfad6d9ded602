//! `zrep-certs`: certificate helper for zrep.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use zrep_tls::{Fingerprint, example, load_certs};

/// Certificate helper for zrep (example set, inspection).
#[derive(Debug, Parser)]
#[command(name = "zrep-certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the EXAMPLE certificate set (CA, server `backup1`, peers `nas1`/`nas2`, and a
    /// `nas1` certificate from an unrelated CA). For tests and a quick start only: never use it
    /// in production. Existing files in DIR are replaced.
    Example {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
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
        Command::Example { out } => run_example(&out),
        Command::Inspect { file } => inspect(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zrep-certs: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_example(out: &Path) -> anyhow::Result<()> {
    example::write_example_set(out)
        .with_context(|| format!("writing the example set into {}", out.display()))?;
    println!(
        "wrote EXAMPLE certificates (not for production) into {}",
        out.display()
    );
    Ok(())
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
