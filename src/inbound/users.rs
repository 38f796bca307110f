//! The users file: `user:hash` lines; argon2id, bcrypt and sha512-crypt hashes.
//!
//! A hash costs ~100 ms, so verification runs on dedicated threads and a successful
//! (user, password) pair is remembered for a few minutes as an HMAC under a per-process key
//! (never the password itself).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

/// How long a successful verification is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_MAX: usize = 10_000;

/// Verified against for unknown users, so a wrong user name costs as much as a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$6zqZ8d9Q2w4m1tq3rj3n4B0mX6cQk0bXxOQ8f0s3y3E";

/// Why a password could not be hashed or the users file not loaded.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// (password-hash's error is no `std::error::Error` without its `std` feature: no source.)
    #[error("{0}")]
    Hash(argon2::password_hash::Error),
    #[error("{}: cannot read users file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `line`: 1-based; 0 when no line is at fault (the process could not set up checks).
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// An argon2id hash (PHC string) with a random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(UsersError::Hash)
}

pub struct Users {
    hashes: HashMap<String, String>,
    cache_key: hmac::Key,
    cache: Mutex<HashMap<String, (hmac::Tag, Instant)>>,
    checkers: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Hash checks run on one dedicated thread per core, not on the blocking pool: an argon2id
/// check holds ~19 MiB, and a flood of guesses from many addresses would run hundreds at once
/// there (and leave the memory in as many malloc arenas), and crowd out the spool's fsyncs.
fn start_checkers() -> std::io::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for i in 0..cores {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("password-check-{i}"))
            .spawn(move || {
                // Ends when the Users (the only sender) is dropped.
                while let Ok(job) = rx.lock().map_err(drop).and_then(|r| r.recv().map_err(drop)) {
                    job();
                }
            })?;
    }
    Ok(tx)
}

impl Users {
    /// Loads `user:hash` lines (blank lines and `#` comments ignored). Errors name file and line.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, message)| UsersError::Parse {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or((n + 1, "expected user:hash".to_string()))?;
            if user.is_empty() || user.contains(char::is_whitespace) {
                return Err((n + 1, "bad user name".into()));
            }
            scheme(hash).ok_or((
                n + 1,
                format!("user {user}: unknown hash (argon2id, bcrypt $2b$/$2y$, sha512-crypt $6$)"),
            ))?;
            if hashes.insert(user.to_string(), hash.to_string()).is_some() {
                return Err((n + 1, format!("user {user} listed twice")));
            }
        }
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let cache_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| (0, "no randomness for the AUTH cache key".to_string()))?;
        let checkers =
            start_checkers().map_err(|e| (0, format!("cannot start password checks: {e}")))?;
        Ok(Users {
            hashes,
            cache_key,
            cache: Mutex::new(HashMap::new()),
            checkers,
        })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
    }

    fn tag(&self, user: &str, password: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.cache_key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        ctx.sign()
    }

    /// Checks a password (on the blocking pool unless cached).
    pub async fn check(self: &Arc<Self>, user: &str, password: &str) -> bool {
        let tag = self.tag(user, password);
        if let Some((t, at)) = self.cache.lock().expect("cache lock").get(user)
            && at.elapsed() < CACHE_TTL
            && aws_lc_rs::constant_time::verify_slices_are_equal(t.as_ref(), tag.as_ref()).is_ok()
        {
            return true;
        }
        let this = self.clone();
        let (u, p) = (user.to_string(), password.to_string());
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(this.verify(&u, &p));
        });
        if self.checkers.send(job).is_err() {
            return false;
        }
        let ok = result.await.unwrap_or(false);
        if ok {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            }
            if cache.len() < CACHE_MAX {
                cache.insert(user.to_string(), (tag, Instant::now()));
            }
        }
        ok
    }

    /// Blocking verification against the stored hash.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.hashes.get(user) {
            Some(hash) => verify_hash(hash, password),
            None => {
                let _ = verify_hash(DUMMY_HASH, password);
                false
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Argon2,
    Bcrypt,
    Sha512Crypt,
}

fn scheme(hash: &str) -> Option<Scheme> {
    if hash.starts_with("$argon2") {
        argon2::PasswordHash::new(hash).ok()?;
        Some(Scheme::Argon2)
    } else if ["$2b$", "$2y$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        Some(Scheme::Bcrypt)
    } else if hash.starts_with("$6$") {
        Some(Scheme::Sha512Crypt)
    } else {
        None
    }
}

/// argon2's own verify allocates (and frees) its ~19 MiB of memory per check, and glibc
/// leaves much of that behind each time (measured: +350 MiB after 40 guesses). Each check
/// thread reuses one block buffer instead.
fn verify_argon2(hash: &str, password: &str) -> bool {
    thread_local! {
        static MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let Ok(h) = argon2::PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        argon2::Params::try_from(&h),
        argon2::Algorithm::try_from(h.algorithm),
    ) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    let hashed = MEMORY.with_borrow_mut(|memory| {
        memory.resize(blocks, argon2::Block::default());
        argon2::Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..])
            .is_ok()
    });
    hashed && aws_lc_rs::constant_time::verify_slices_are_equal(&out, expected.as_bytes()).is_ok()
}

fn verify_hash(hash: &str, password: &str) -> bool {
    match scheme(hash) {
        Some(Scheme::Argon2) => verify_argon2(hash, password),
        Some(Scheme::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
        Some(Scheme::Sha512Crypt) => sha_crypt::sha512_check(password, hash).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_schemes_verify() {
        let argon = hash_password("s3cret").unwrap();
        let bcrypt_h = bcrypt::hash("s3cret", 4).unwrap();
        let bcrypt_y = bcrypt_h.replacen("$2b$", "$2y$", 1);
        let params = sha_crypt::Sha512Params::new(5000).unwrap();
        let sha = sha_crypt::sha512_simple("s3cret", &params).unwrap();
        let text =
            format!("# comment\n\nalice:{argon}\nbob:{bcrypt_h}\ncarol:{bcrypt_y}\ndave:{sha}\n");
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 4);
        for u in ["alice", "bob", "carol", "dave"] {
            assert!(users.verify(u, "s3cret"), "{u}");
            assert!(!users.verify(u, "wrong"), "{u}");
        }
        assert!(!users.verify("nobody", "s3cret"));
        // Unknown users cost a real verification too.
        assert_eq!(scheme(DUMMY_HASH), Some(Scheme::Argon2));
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        assert_eq!(Users::parse("a:b\n").err().unwrap().0, 1);
        assert_eq!(Users::parse("\n\nnocolon\n").err().unwrap().0, 3);
        let h = hash_password("x").unwrap();
        assert_eq!(Users::parse(&format!("a:{h}\na:{h}\n")).err().unwrap().0, 2);
    }

    #[tokio::test]
    async fn cache_remembers_only_success() {
        let h = hash_password("pw").unwrap();
        let users = Arc::new(Users::parse(&format!("u:{h}\n")).unwrap());
        assert!(!users.check("u", "nope").await);
        assert!(users.cache.lock().unwrap().is_empty());
        assert!(users.check("u", "pw").await);
        assert!(users.check("u", "pw").await);
        assert!(!users.check("u", "pw2").await);
    }
}
