//! The background checkpointer.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its
//! threshold: that commit copies the WAL back into the database file and
//! syncs it, which stalls the writer (and every submission waiting on it)
//! for milliseconds. Instead the writer connection only checkpoints past a
//! large safety threshold ([`WRITER_CHECKPOINT_PAGES`]), and this thread,
//! on its own connection, runs a `PASSIVE` checkpoint every
//! [`CHECKPOINT_EVERY`]: it copies what the WAL holds while the writer goes
//! on appending, and never waits for a lock. The writer restarts the WAL
//! from its beginning once a checkpoint has copied all of it.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::BUSY_TIMEOUT;

/// How often the background checkpoint runs.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The WAL size, in pages, past which the writer checkpoints by itself:
/// only when the background checkpoints cannot keep up (64 MiB of 4 KiB
/// pages).
pub(crate) const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// The running checkpointer; dropping it stops the thread and waits for it.
pub(crate) struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`.
    ///
    /// The connection is opened here, not in the thread, and the thread
    /// closes it before [`Drop`] returns: SQLite's unix VFS can deadlock
    /// when one connection to a file opens while another to the same file
    /// closes, so the store never lets the two overlap.
    pub(crate) fn start(path: &Path) -> Result<Checkpointer, String> {
        let conn = open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("dispatch-checkpoint".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    if let Err(e) = checkpoint(&conn) {
                        tracing::debug!(error = %e, "background checkpoint failed; next one soon");
                    }
                }
                drop(conn);
            })
            .map_err(|e| format!("spawning its thread: {e}"))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// One `PASSIVE` checkpoint: copies as much of the WAL as no reader still
/// needs, without blocking anyone.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}
