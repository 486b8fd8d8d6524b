//! spec §3.5: exact DSML replay memory, tool id -> sampled block, bounded LRU.

use std::sync::Arc;

use crate::render::Message;

/// Default `--tool-memory-max-ids`.
pub const TOOL_MEMORY_MAX_IDS: usize = 100_000;
/// Byte budget of the memory (ids + distinct blocks), 512 MiB.
pub const TOOL_MEMORY_MAX_BYTES: usize = 512 << 20;

/// Counters of one [`ToolMemory::apply`] call, for traces (`mem/canonical/missing_ids`; the server
/// counts `disk` loads itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ToolMemoryStats {
    /// Assistant messages rendered from remembered blocks.
    pub mem: usize,
    /// Assistant messages with calls that fell back to canonical rendering.
    pub canonical: usize,
    /// Call ids that were not in memory.
    pub missing_ids: usize,
}

/// Tool id -> exact sampled DSML block. Blocks are shared between the ids of one turn and
/// de-duplicated by content; least-recently-used ids go first when a bound is hit.
#[derive(Debug)]
pub struct ToolMemory {
    max_ids: usize,
    max_bytes: usize,
    _blocks: Vec<Arc<str>>,
}

impl ToolMemory {
    /// Empty memory with the given bounds (0 ids means remember nothing).
    pub fn new(max_ids: usize, max_bytes: usize) -> ToolMemory {
        unimplemented!()
    }

    /// Remembers `raw_dsml` for every id of one turn. An id already mapped to the same block is
    /// just refreshed; to a different block, replaced.
    pub fn remember(&mut self, ids: &[&str], raw_dsml: &str) {
        unimplemented!()
    }

    /// The block of `id`, refreshing its recency.
    pub fn get(&mut self, id: &str) -> Option<Arc<str>> {
        unimplemented!()
    }

    /// Whether `id` is remembered (no recency change).
    pub fn contains(&self, id: &str) -> bool {
        unimplemented!()
    }

    /// The block for a whole message: `Some` only if every id is known and all map to the same
    /// block (spec §3.5 step 2). Refreshes the ids found.
    pub fn resolve(&mut self, ids: &[&str]) -> Option<Arc<str>> {
        unimplemented!()
    }

    /// Fills `raw_dsml` of every assistant message that has calls and no block yet, where
    /// [`ToolMemory::resolve`] finds one; returns the counters.
    pub fn apply(&mut self, messages: &mut [Message]) -> ToolMemoryStats {
        unimplemented!()
    }

    /// Remembered ids.
    pub fn len(&self) -> usize {
        unimplemented!()
    }

    /// No ids remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accounted bytes (id bytes + each distinct block once).
    pub fn bytes(&self) -> usize {
        unimplemented!()
    }

    /// All `(id, block)` pairs, least recently used first (for the `.kv` tool map, spec §5.4).
    pub fn entries(&self) -> Vec<(String, Arc<str>)> {
        unimplemented!()
    }
}
