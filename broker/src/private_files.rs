//! Files only the broker may read or change: the data dir (0700), secret keys (0600, created
//! once with `create_private_once`: written beside, then linked into place), and the plugin
//! cache, whose artifacts are native code the broker loads — so an artifact is loaded
//! only if it and its directory belong to the broker's user and nobody else may write them.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Group or others may do anything (read, write, enter).
const OTHERS_ANY: u32 = 0o077;
/// Group or others may write.
const OTHERS_WRITE: u32 = 0o022;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (and parents) if missing and makes it 0700. A directory of another user is
/// refused; one of ours that others could read or enter is tightened (and `true` returned).
pub fn ensure_private_dir(dir: &Path) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this process (uid {})",
                dir.display(),
                meta.uid(),
                euid()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & OTHERS_ANY == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(true)
}

/// Writes `bytes` to `path` readable and writable by the owner only (0600), also when the file
/// existed with a wider mode.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Creates `path` holding `bytes`, owner-only (0600) and durable, unless it exists: the bytes
/// go to a temporary file beside it first, which is then hard-linked to `path` — so nobody
/// ever reads a partly written file, and of several processes creating `path` at once exactly
/// one wins. `Ok(true)`: created; `Ok(false)`: `path` existed (left as it was; read it).
pub fn create_private_once(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    // Unique among processes (pid) and among the threads of this one (counter).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let linked = write_private(&tmp, bytes).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Why `file` (in `dir`) must not be trusted as broker-written, if it must not.
pub fn untrusted(file: &Path) -> Option<String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    for p in [dir, file] {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return Some(format!("{}: {e}", p.display())),
        };
        if meta.uid() != euid() {
            return Some(format!(
                "{} belongs to uid {}, not to this process (uid {})",
                p.display(),
                meta.uid(),
                euid()
            ));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & OTHERS_WRITE != 0 {
            return Some(format!(
                "{} is writable by group or others (mode {mode:o})",
                p.display()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("lb-private-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn dirs_become_0700_and_secrets_0600() {
        let d = scratch("dir");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(ensure_private_dir(&d).expect("ours"));
        assert_eq!(mode(&d), 0o700);
        assert!(!ensure_private_dir(&d).expect("ours"));
        let key = d.join("key.pem");
        std::fs::write(&key, "old").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&key, b"new").expect("write");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read(&key).expect("read"), b"new");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_private_file_is_created_once_and_the_first_writer_wins() {
        let d = scratch("once");
        ensure_private_dir(&d).expect("mkdir");
        let f = d.join("cluster.key");
        assert!(create_private_once(&f, b"first").expect("create"));
        assert_eq!(mode(&f), 0o600);
        assert!(!create_private_once(&f, b"second").expect("exists"));
        assert_eq!(std::fs::read(&f).expect("read"), b"first");
        let left: Vec<_> = std::fs::read_dir(&d)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("cluster.key")],
            "no temp file left"
        );
        // Racing creators: exactly one wins, and every one reads the winner's bytes.
        let g = d.join("raced.key");
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let g = &g;
                    s.spawn(move || create_private_once(g, &[i; 32]).expect("create"))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().expect("thread")))
                .sum()
        });
        assert_eq!(winners, 1);
        assert_eq!(std::fs::read(&g).expect("read").len(), 32);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn writable_artifacts_or_dirs_are_untrusted() {
        let d = scratch("cache");
        ensure_private_dir(&d).expect("mkdir");
        let f = d.join("a.cwasm");
        write_private(&f, b"x").expect("write");
        assert_eq!(untrusted(&f), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(untrusted(&f).is_some_and(|m| m.contains("writable")));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(untrusted(&f).is_some_and(|m| m.contains("writable")));
        let _ = std::fs::remove_dir_all(&d);
    }
}
