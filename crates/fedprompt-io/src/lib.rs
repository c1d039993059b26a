//! What every fedprompt crate shares for files and errors.
//!
//! - [`write_atomic`]: the one way fedprompt writes a state or result file. A reader (or a
//!   resumed run after a kill or a power cut) sees the old file or the new one, never a torn
//!   one: the bytes go to a temporary file in the same folder, which is fsynced, renamed over
//!   the target, and the folder fsynced so the rename itself is durable. The temporary file is
//!   removed when the write fails (the `tempfile` crate's `persist`).
//! - [`error_chain`]: an error with all its sources on one line, for messages to users.
//! - [`tls_failure`]: which TLS failures are permanent (wrong CA, plain HTTP, refused
//!   certificate...), for clients that must not retry them.
//! - [`signals::StopSignals`] (feature `signals`): Ctrl-C and SIGTERM, handled alike by every
//!   long-running command.

#![warn(missing_docs)]

#[cfg(feature = "signals")]
pub mod signals;
pub mod tls_failure;

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably (see the crate docs); creates the parent
/// folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let prefix = format!(".{}.", name.as_deref().unwrap_or("fedprompt"));
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TMP_SUFFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // On failure the temporary file is dropped, which deletes it.
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)?;
    remove_orphans(dir, &prefix);
    Ok(())
}

const TMP_SUFFIX: &str = ".tmp";

/// A temporary file older than this is an orphan of a killed writer, not a write in progress.
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the temporaries that killed writers of the same target left behind (a process
/// killed between creating and renaming its temporary file cannot remove it). Best effort: a
/// file that cannot be removed stays.
fn remove_orphans(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let n = file_name.to_string_lossy();
        if !(n.starts_with(prefix) && n.ends_with(TMP_SUFFIX)) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ORPHAN_AGE);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// An error and its sources, `outer: inner: innermost` (transport errors hide the useful part,
/// such as "Connection refused", several sources down). A source whose text the outer message
/// already contains is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        write_atomic(&p, b"first version, longer").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn orphans_of_killed_writers_are_removed_and_fresh_temporaries_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("global.safetensors");
        let orphan = dir.path().join(".global.safetensors.AbC123.tmp");
        let in_progress = dir.path().join(".global.safetensors.XyZ789.tmp");
        let other = dir.path().join(".other.json.Old000.tmp");
        for f in [&orphan, &in_progress, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - ORPHAN_AGE * 2;
        for f in [&orphan, &other] {
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        write_atomic(&p, b"new").unwrap();
        assert!(
            !orphan.exists(),
            "an old temporary of this target is removed"
        );
        assert!(
            in_progress.exists(),
            "a fresh one may be another write in progress"
        );
        assert!(
            other.exists(),
            "temporaries of other files are not ours to remove"
        );
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be: the rename fails, nothing is lost.
        let p = dir.path().join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"kept").unwrap();
        assert!(write_atomic(&p, b"new").is_err());
        assert_eq!(std::fs::read(p.join("inside")).unwrap(), b"kept");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn chains_sources_once() {
        let e = E(
            "connect: Connection refused",
            Some(Box::new(E(
                "transport error",
                Some(Box::new(E("Connection refused", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "connect: Connection refused: transport error"
        );
    }
}
