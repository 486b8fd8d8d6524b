//! Engine (model + backend), Session (one timeline), sampler, prefix reuse, session snapshots and the disk KV cache.
