//! Reading certificates and keys from PEM files, and writing them safely.
//!
//! Key files are created with mode 0600 from the start (never chmod-ed after the fact), and an
//! existing key file is only replaced when the caller says so: losing a CA key by a mistyped
//! command would orphan every certificate it issued.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

use crate::error::TlsError;

/// What to do when a key file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overwrite {
    /// Fail with [`TlsError::KeyFileExists`]: the safe default.
    Refuse,
    /// Atomically replace the existing file (write a 0600 sibling, then rename over it).
    Replace,
}

/// Mode of private key files.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate files (public data).
pub const CERT_FILE_MODE: u32 = 0o644;

/// Reads every `CERTIFICATE` block of a PEM file, in order (leaf first for a chain).
///
/// Fails with [`TlsError::NoCertificate`] when there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1)
/// or `RSA PRIVATE KEY` (PKCS#1).
///
/// Logs a warning (but still loads) when the file is readable by group or others.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    warn_if_exposed(path);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

/// Writes a private key file with mode 0600.
///
/// With [`Overwrite::Refuse`] an existing file is left alone and
/// [`TlsError::KeyFileExists`] returned; with [`Overwrite::Replace`] it is replaced atomically.
pub fn write_key_file(path: &Path, pem: &str, overwrite: Overwrite) -> Result<(), TlsError> {
    match overwrite {
        Overwrite::Refuse => {
            // create_new makes the existence check and the creation one atomic step.
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(KEY_FILE_MODE)
                .open(path);
            let mut file = match file {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(TlsError::KeyFileExists {
                        path: path.to_owned(),
                    });
                }
                Err(source) => return Err(write_error(path, source)),
            };
            let written = file
                .write_all(pem.as_bytes())
                .and_then(|()| file.sync_all());
            if let Err(source) = written {
                // Do not leave a truncated key behind that would block the next attempt.
                let _ = fs::remove_file(path);
                return Err(write_error(path, source));
            }
            Ok(())
        }
        Overwrite::Replace => write_atomic(path, pem.as_bytes(), KEY_FILE_MODE),
    }
}

/// Writes a certificate file (mode 0644), atomically replacing any existing one.
pub fn write_cert_file(path: &Path, pem: &str) -> Result<(), TlsError> {
    write_atomic(path, pem.as_bytes(), CERT_FILE_MODE)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_error(path: &Path, source: io::Error) -> TlsError {
    TlsError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to a new sibling file created with `mode`, syncs it and renames it over
/// `path`, so readers see the old or the new content, never a mix.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = temp_sibling(path)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_error(path, source));
    }
    Ok(())
}

fn temp_sibling(path: &Path) -> Result<PathBuf, TlsError> {
    let Some(name) = path.file_name() else {
        return Err(write_error(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
        ));
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

/// Warns once per file and mode for the life of the process: a daemon re-reads its key on
/// every connection, and one line says it all.
fn warn_if_exposed(path: &Path) {
    static WARNED: std::sync::Mutex<Vec<(PathBuf, u32)>> = std::sync::Mutex::new(Vec::new());
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
            let seen = (path.to_owned(), mode);
            if warned.contains(&seen) {
                return;
            }
            warned.push(seen);
            warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "private key file is readable by group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_file_is_0600_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");

        write_key_file(&path, "first", Overwrite::Refuse).unwrap();
        assert_eq!(mode_of(&path), 0o600);

        let err = write_key_file(&path, "second", Overwrite::Refuse).unwrap_err();
        assert!(matches!(&err, TlsError::KeyFileExists { path: p } if *p == path));
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");

        // Replace keeps 0600 even when the old file had looser permissions.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_key_file(&path, "second", Overwrite::Replace).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
        assert_eq!(mode_of(&path), 0o600);

        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn cert_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.pem");
        write_cert_file(&path, "a").unwrap();
        write_cert_file(&path, "b").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "b");
        assert_eq!(mode_of(&path), 0o644 & !current_umask());
    }

    fn current_umask() -> u32 {
        // Probe: a fresh 0777 file shows which bits the umask removes.
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o777)
            .open(&probe)
            .unwrap();
        !mode_of(&probe) & 0o777
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_certs(&missing).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }));
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "no pem here\n").unwrap();
        assert!(matches!(
            load_certs(&empty),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_private_key(&empty),
            Err(TlsError::NoPrivateKey { .. })
        ));

        let broken = dir.path().join("broken.pem");
        fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let err = load_certs(&broken).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        assert!(err.to_string().contains("broken.pem"), "{err}");
    }
}
