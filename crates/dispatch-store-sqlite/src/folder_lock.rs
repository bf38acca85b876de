//! [`lock_folder`]: one server per data folder.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// Name of the lock file in the data folder.
pub const LOCK_FILE: &str = "lock";

/// The exclusive lock on a data folder, held until dropped (and by the
/// kernel until the process ends).
#[derive(Debug)]
pub struct FolderLock {
    _file: std::fs::File,
}

/// Why a data folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error(
        "the data folder {} is in use by another dispatch server (pid {pid}); stop it or choose another --data",
        dir.display()
    )]
    Locked {
        /// The data folder.
        dir: PathBuf,
        /// The holder's process id as it wrote it in the lock file, or
        /// "unknown".
        pid: String,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock the data folder {}: {source}", dir.display())]
    Io {
        /// The data folder.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Takes the exclusive lock on the data folder (creating the folder and its
/// [`LOCK_FILE`] when needed) and writes this process's id into the file.
/// The lock is an OS file lock (`flock` on Unix): the kernel drops it when
/// the process ends, however it ends, so a `kill -9` never blocks the next
/// start. Two servers on one folder would hand out the same tasks twice and
/// collide on inserts; the second one is refused here, before it opens the
/// store.
pub fn lock_folder(dir: &Path) -> Result<FolderLock, LockError> {
    let io = |source| LockError::Io {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = match text.trim() {
                "" => "unknown".to_owned(),
                p => p.to_owned(),
            };
            return Err(LockError::Locked {
                dir: dir.to_owned(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.flush())
        .map_err(io)?;
    Ok(FolderLock { _file: file })
}
