//! Shared memory between backends and the worker.

/// Wakes the delivery worker. Must be safe to call at commit: an atomic
/// store and a SetLatch, nothing that can fail.
pub fn wake_worker() {}
