//! Who may speak for a worker: the [`Caller`] of a request (its token's
//! digest, set by the auth middleware) and [`WorkerOwners`], which token
//! registered each worker; the worker handlers check it first.

use std::collections::HashMap;
use std::sync::Mutex;

use dispatch_core::WorkerId;
use subtle::ConstantTimeEq;

use crate::api::ApiError;

/// Who made a request: set by `auth::require` on every request let through
/// with a token; absent on a server without tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The digest of its token: the identity, never shown.
    pub(crate) digest: [u8; 32],
    /// Whether the token has the admin scope.
    pub(crate) admin: bool,
}

/// Which token registered each live worker, keyed by worker id. Kept here,
/// not in the core: it is a matter of who may speak for a worker.
#[derive(Default)]
pub(crate) struct WorkerOwners {
    owners: Mutex<Owners>,
}

#[derive(Default)]
struct Owners {
    by_worker: HashMap<WorkerId, [u8; 32]>,
    /// Size at which entries of gone workers are next dropped.
    sweep_at: usize,
}

/// May the caller act for the worker? What each call allows an admin.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Poll, heartbeat, report: only the worker's own token.
    AsWorker,
    /// Remove the worker: its own token or an admin one.
    Remove,
}

impl WorkerOwners {
    /// Records that `caller` registered `worker`. Entries of workers gone
    /// since (`is_live` false) are dropped once they outnumber the live
    /// ones, so the map stays proportional to the live workers.
    pub(crate) fn record(
        &self,
        caller: Option<&Caller>,
        worker: WorkerId,
        is_live: impl Fn(WorkerId) -> bool,
    ) {
        let Some(caller) = caller else { return };
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.by_worker.insert(worker, caller.digest);
        if owners.by_worker.len() >= owners.sweep_at {
            owners.by_worker.retain(|w, _| is_live(*w));
            owners.sweep_at = (2 * owners.by_worker.len()).max(64);
        }
    }

    /// How many workers have a recorded owner.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.by_worker.len()
    }

    /// Records the owner of a worker restored from the store.
    pub(crate) fn restore(&self, worker: WorkerId, digest: [u8; 32]) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.by_worker.insert(worker, digest);
    }

    /// 403 when `worker` was registered with another token than the
    /// caller's (an admin token may remove any worker).
    pub(crate) fn check(
        &self,
        caller: Option<&Caller>,
        worker: WorkerId,
        act: Act,
    ) -> Result<(), ApiError> {
        let Some(caller) = caller else { return Ok(()) };
        if act == Act::Remove && caller.admin {
            return Ok(());
        }
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        match owners.by_worker.get(&worker) {
            Some(owner) if !bool::from(owner.ct_eq(&caller.digest)) => Err(ApiError::new(
                403,
                format!(
                    "worker {worker} was registered with another token: only that token may act for it"
                ),
            )),
            _ => Ok(()),
        }
    }
}
