//! The parallelism limit: at most N steps run their op at once (`--max-parallelism`, by
//! default the number of cores), as BuildKit's ops acquire from one semaphore before they
//! execute. Waiting for inputs and looking up the cache take no slot; a step holds one only
//! while it runs, and never waits on another step while holding it, so the limit cannot
//! deadlock the graph.

use std::num::NonZeroUsize;
use std::sync::{Condvar, Mutex};

/// A counting semaphore of run slots.
pub(crate) struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// A slot held; given back when dropped.
pub(crate) struct Slot<'a>(&'a Slots);

impl Slots {
    pub(crate) fn new(n: NonZeroUsize) -> Slots {
        Slots { free: Mutex::new(n.get()), freed: Condvar::new() }
    }

    /// Waits for a free slot and takes it.
    pub(crate) fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// The default limit: the machine's cores.
pub fn default_parallelism() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}
