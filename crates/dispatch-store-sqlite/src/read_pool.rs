//! [`ReadPool`]: at most a few read connections, opened on demand.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use dispatch_store::StoreError;
use rusqlite::Connection;

/// Read connections to one database file. A caller borrows one for the
/// length of a closure; when all `max` are lent out, it waits for one.
pub(crate) struct ReadPool {
    path: PathBuf,
    max: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Connection>,
    /// Connections in existence: idle, lent out, or being opened.
    open: usize,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, max: usize) -> Self {
        ReadPool {
            path,
            max: max.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::with_capacity(max),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    /// Runs `f` with a read connection.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lease = self.take()?;
        match &lease.conn {
            Some(conn) => f(conn),
            // A lease holds its connection until it is dropped.
            None => Err(StoreError::new(
                dispatch_store::ErrorKind::Unavailable,
                "a read connection was lent out empty",
            )),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state is two plain fields, consistent after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Result<Lease<'_>, StoreError> {
        let mut state = self.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                // Opened outside the lock: it touches the file system.
                return match crate::open_reader(&self.path) {
                    Ok(conn) => Ok(Lease {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A borrowed connection, given back on drop (also when the borrower
/// panics).
struct Lease<'p> {
    pool: &'p ReadPool,
    /// `Some` until drop moves it back into the pool.
    conn: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.lock().idle.push(conn);
            self.pool.returned.notify_one();
        }
    }
}
