//! spec §3.5: exact DSML replay memory, tool id -> sampled block, bounded LRU.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::render::{Message, Role};

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
    /// id -> (block, recency tick).
    ids: HashMap<String, (Arc<str>, u64)>,
    /// recency tick -> id; the first entry is the least recently used.
    lru: BTreeMap<u64, String>,
    /// distinct block -> number of ids pointing at it.
    blocks: HashMap<Arc<str>, usize>,
    tick: u64,
    bytes: usize,
}

impl ToolMemory {
    /// Empty memory with the given bounds (0 ids means remember nothing).
    pub fn new(max_ids: usize, max_bytes: usize) -> ToolMemory {
        ToolMemory {
            max_ids,
            max_bytes,
            ids: HashMap::new(),
            lru: BTreeMap::new(),
            blocks: HashMap::new(),
            tick: 0,
            bytes: 0,
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn intern(&mut self, raw: &str) -> Arc<str> {
        if let Some((block, refs)) = self.blocks.get_key_value(raw) {
            let block = block.clone();
            let refs = *refs;
            self.blocks.insert(block.clone(), refs + 1);
            return block;
        }
        let block: Arc<str> = Arc::from(raw);
        self.bytes += block.len();
        self.blocks.insert(block.clone(), 1);
        block
    }

    fn release(&mut self, block: &Arc<str>) {
        if let Some(refs) = self.blocks.get_mut(block) {
            *refs -= 1;
            if *refs == 0 {
                self.blocks.remove(block);
                self.bytes -= block.len();
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some((block, tick)) = self.ids.remove(id) {
            self.lru.remove(&tick);
            self.bytes -= id.len();
            self.release(&block);
        }
    }

    /// Remembers `raw_dsml` for every id of one turn. An id already mapped to the same block is
    /// just refreshed; to a different block, replaced.
    pub fn remember(&mut self, ids: &[&str], raw_dsml: &str) {
        if self.max_ids == 0 {
            return;
        }
        for &id in ids {
            let same = self.ids.get(id).is_some_and(|(b, _)| &**b == raw_dsml);
            if same {
                self.touch(id);
                continue;
            }
            self.remove(id);
            let block = self.intern(raw_dsml);
            let tick = self.next_tick();
            self.ids.insert(id.to_owned(), (block, tick));
            self.lru.insert(tick, id.to_owned());
            self.bytes += id.len();
        }
        while self.ids.len() > self.max_ids || self.bytes > self.max_bytes {
            let Some(oldest) = self.lru.values().next().cloned() else {
                break;
            };
            self.remove(&oldest);
        }
    }

    fn touch(&mut self, id: &str) {
        let tick = self.next_tick();
        if let Some((_, t)) = self.ids.get_mut(id) {
            let old = std::mem::replace(t, tick);
            if let Some(name) = self.lru.remove(&old) {
                self.lru.insert(tick, name);
            }
        }
    }

    /// The block of `id`, refreshing its recency.
    pub fn get(&mut self, id: &str) -> Option<Arc<str>> {
        let block = self.ids.get(id)?.0.clone();
        self.touch(id);
        Some(block)
    }

    /// Whether `id` is remembered (no recency change).
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// The block for a whole message: `Some` only if every id is known and all map to the same
    /// block (spec §3.5 step 2). Refreshes the ids found.
    pub fn resolve(&mut self, ids: &[&str]) -> Option<Arc<str>> {
        let mut found: Option<Arc<str>> = None;
        let mut all_same = !ids.is_empty();
        for &id in ids {
            match self.get(id) {
                Some(b) => match &found {
                    Some(f) if !Arc::ptr_eq(f, &b) => all_same = false,
                    Some(_) => {}
                    None => found = Some(b),
                },
                None => all_same = false,
            }
        }
        found.filter(|_| all_same)
    }

    /// Fills `raw_dsml` of every assistant message that has calls and no block yet, where
    /// [`ToolMemory::resolve`] finds one; returns the counters.
    pub fn apply(&mut self, messages: &mut [Message]) -> ToolMemoryStats {
        let mut stats = ToolMemoryStats::default();
        for m in messages.iter_mut() {
            if m.role != Role::Assistant || m.tool_calls.is_empty() || m.raw_dsml.is_some() {
                continue;
            }
            let ids: Vec<&str> = m.tool_calls.iter().map(|c| c.id.as_str()).collect();
            stats.missing_ids += ids.iter().filter(|id| !self.contains(id)).count();
            match self.resolve(&ids) {
                Some(block) => {
                    m.raw_dsml = Some(block.to_string());
                    stats.mem += 1;
                }
                None => stats.canonical += 1,
            }
        }
        stats
    }

    /// Remembered ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No ids remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accounted bytes (id bytes + each distinct block once).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// All `(id, block)` pairs, least recently used first (for the `.kv` tool map, spec §5.4).
    pub fn entries(&self) -> Vec<(String, Arc<str>)> {
        self.lru
            .values()
            .filter_map(|id| self.ids.get(id).map(|(b, _)| (id.clone(), b.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::ToolCall;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "f".into(),
            arguments: "{}".into(),
        }
    }

    /// spec §8.2 #59 `tool_memory_max_ids_prunes_oldest`.
    #[test]
    fn max_ids_prunes_least_recently_used() {
        let mut m = ToolMemory::new(2, TOOL_MEMORY_MAX_BYTES);
        m.remember(&["a"], "A");
        m.remember(&["b"], "B");
        assert!(m.get("a").is_some()); // a is now newer than b
        m.remember(&["c"], "C");
        assert_eq!(m.len(), 2);
        assert!(m.contains("a") && m.contains("c") && !m.contains("b"));
        assert_eq!(m.bytes(), 4);
    }

    #[test]
    fn blocks_are_shared_and_byte_budget_holds() {
        let mut m = ToolMemory::new(100, 20);
        m.remember(&["id1", "id2"], "0123456789");
        assert_eq!(m.bytes(), 16); // one block + two ids
        assert!(Arc::ptr_eq(&m.get("id1").unwrap(), &m.get("id2").unwrap()));
        m.remember(&["id3"], "abcdefghij");
        assert!(m.bytes() <= 20);
        assert!(!m.contains("id1"), "oldest evicted first");
        // Replacing an id with a different block drops the old one.
        m.remember(&["id3"], "xyz");
        assert_eq!(m.get("id3").as_deref(), Some("xyz"));
    }

    #[test]
    fn resolve_needs_all_ids_on_one_block() {
        let mut m = ToolMemory::new(100, TOOL_MEMORY_MAX_BYTES);
        m.remember(&["a", "b"], "AB");
        m.remember(&["c"], "C");
        assert_eq!(m.resolve(&["a", "b"]).as_deref(), Some("AB"));
        assert!(m.resolve(&["a", "c"]).is_none());
        assert!(m.resolve(&["a", "zz"]).is_none());
        assert!(m.resolve(&[]).is_none());

        let mut msgs = vec![
            Message::new(Role::User, "x"),
            Message {
                tool_calls: vec![call("a"), call("b")],
                ..Message::new(Role::Assistant, "")
            },
            Message {
                tool_calls: vec![call("a"), call("q")],
                ..Message::new(Role::Assistant, "")
            },
        ];
        let stats = m.apply(&mut msgs);
        assert_eq!(
            stats,
            ToolMemoryStats {
                mem: 1,
                canonical: 1,
                missing_ids: 1
            }
        );
        assert_eq!(msgs[1].raw_dsml.as_deref(), Some("AB"));
        assert!(msgs[2].raw_dsml.is_none());
    }

    #[test]
    fn zero_ids_remembers_nothing() {
        let mut m = ToolMemory::new(0, TOOL_MEMORY_MAX_BYTES);
        m.remember(&["a"], "A");
        assert!(m.is_empty());
    }
}
