//! Temporary directories for tests, shared by the unit tests (`crate::util::test_dir`) and the
//! integration kit (`integration-tests/common/net.rs` includes this file): removed when the test
//! passes, kept and named when it fails. Uses nothing from the crate.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh, empty directory under the system temp dir, removed when the test passes and kept
/// (its path printed with the failure) when it fails.
///
/// The test's thread owns the directory: it is removed when that thread ends, after the test
/// function has returned and dropped its relays, sinks and servers (their processes are stopped
/// before their files go). A panic on the thread (a failed assertion, a relay that did not
/// start) keeps every directory the thread made; `POOLRELAY_KEEP_TEST_DIRS=1` keeps them all.
pub fn tempdir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "poolrelay-{name}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create tempdir");
    keep_on_panic();
    TEMP_DIRS.with(|t| t.dirs.borrow_mut().push(dir.clone()));
    dir
}

/// The directories `tempdir` made on this thread: removed when the thread ends unless it
/// panicked.
struct TempDirs {
    dirs: RefCell<Vec<PathBuf>>,
    keep: Cell<bool>,
    /// How many of `dirs` a panic message named already.
    printed: Cell<usize>,
}

thread_local! {
    static TEMP_DIRS: TempDirs = const {
        TempDirs {
            dirs: RefCell::new(Vec::new()),
            keep: Cell::new(false),
            printed: Cell::new(0),
        }
    };
}

impl Drop for TempDirs {
    fn drop(&mut self) {
        // libtest catches a test's panic before the thread ends: the hook noted it in `keep`.
        if self.keep.get() || std::thread::panicking() || keep_all() {
            return;
        }
        for dir in self.dirs.get_mut().drain(..) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn keep_all() -> bool {
    std::env::var_os("POOLRELAY_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Installs (once) a panic hook that, after the usual message, marks the panicking thread's
/// directories as kept and prints their paths (in the failed test's output).
fn keep_on_panic() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let _ = TEMP_DIRS.try_with(|t| {
                t.keep.set(true);
                if let Ok(dirs) = t.dirs.try_borrow() {
                    for dir in &dirs[t.printed.get()..] {
                        eprintln!("test dir kept: {}", dir.display());
                    }
                    t.printed.set(dirs.len());
                }
            });
        }));
    });
}
