//! The admin bearer token: one line in a file readable by its owner only. `serve` creates it on
//! first start (32 random bytes from the OS RNG, base64url); the CLI reads the same file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore;

/// Why the token file cannot serve; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file is missing and `parent`, where it would be created, is no directory.
    #[error("admin token file {}: {} is not a directory", path.display(), parent.display())]
    NoDirectory { path: PathBuf, parent: PathBuf },
    #[error("admin token file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("admin token file {}: the token must be at least 16 characters", path.display())]
    TooShort { path: PathBuf },
    #[error("admin token file {}: cannot create: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The secret (compared in `guard`). `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    pub fn new(secret: &str) -> Token {
        Token(secret.to_string())
    }

    pub fn secret(&self) -> &str {
        &self.0
    }
}

/// Whether `serve` can use `path`, changing nothing: an existing file must be a readable
/// regular file holding a token (not a directory, not `/dev/null`); a missing one is created at
/// start, so its nearest existing parent must be a directory.
pub fn check(path: &Path) -> Result<(), TokenError> {
    if path.exists() {
        return read(path).map(|_| ());
    }
    let parent = path
        .ancestors()
        .skip(1)
        .find(|p| p.as_os_str().is_empty() || p.exists());
    match parent {
        Some(p) if !p.as_os_str().is_empty() && !p.is_dir() => Err(TokenError::NoDirectory {
            path: path.to_path_buf(),
            parent: p.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Reads the token from `path` (first line, trimmed); a regular file only.
pub fn read(path: &Path) -> Result<Token, TokenError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(TokenError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.len() < 16 {
        return Err(TokenError::TooShort {
            path: path.to_path_buf(),
        });
    }
    Ok(Token::new(secret))
}

/// Reads the token, or creates the file with a new random one (mode 0600, never replacing a
/// file that appeared meanwhile). Warns when an existing file is readable by others.
pub fn load_or_create(path: &Path) -> Result<Token, TokenError> {
    if path.exists() {
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(file = %path.display(), "admin token file is readable by group or others; chmod 600 it");
        }
        return read(path);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error(path))?;
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TokenError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io_error(path))?;
    tracing::info!(file = %path.display(), "admin token created");
    Ok(Token(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_reused() {
        let dir = crate::util::test_dir::tempdir("token");
        let path = dir.join("sub/admin.token");
        let a = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(a.secret().len(), 43);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.secret(), b.secret());
        assert!(!format!("{a:?}").contains(a.secret()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_refuses_what_serve_cannot_use_and_changes_nothing() {
        let dir = crate::util::test_dir::tempdir("tcheck");
        for bad in [dir.as_path(), Path::new("/dev/null")] {
            let e = check(bad).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let missing = dir.join("sub/admin.token");
        check(&missing).unwrap();
        assert!(!dir.join("sub").exists(), "check creates nothing");
        std::fs::write(dir.join("file"), "x").unwrap();
        assert!(check(&dir.join("file/admin.token")).is_err());
        std::fs::write(dir.join("ok"), "0123456789abcdef\n").unwrap();
        check(&dir.join("ok")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_token_file_refused() {
        let path = crate::util::test_dir::tempdir("short").join("token");
        std::fs::write(&path, "abc\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("at least 16"));
        std::fs::remove_file(&path).unwrap();
    }
}
