//! spec §3.4: tool call ids.

/// Which id family to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// `call_` + 32 lowercase hex (OpenAI chat and Responses).
    Call,
    /// `toolu_` + 32 lowercase hex (Anthropic).
    Anthropic,
}

fn random_hex(n_bytes: usize) -> String {
    let mut buf = [0u8; 16];
    let buf = &mut buf[..n_bytes];
    if getrandom::getrandom(buf).is_err() {
        fallback_random(buf);
    }
    let mut out = String::with_capacity(n_bytes * 2);
    for b in buf.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// spec §3.4 fallback when the OS source fails: time, pid and a counter mixed through SplitMix64.
/// Not unguessable, but unique within the process, which is what collisions need.
fn fallback_random(buf: &mut [u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut state =
        nanos ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    for chunk in buf.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// A fresh id from 16 bytes of OS randomness. `taken` is asked about each candidate (ids of the
/// same message, ids already in tool memory) and a new one is drawn while it answers true.
pub fn new_tool_call_id(kind: IdKind, taken: impl Fn(&str) -> bool) -> String {
    let prefix = match kind {
        IdKind::Call => "call_",
        IdKind::Anthropic => "toolu_",
    };
    loop {
        let id = format!("{prefix}{}", random_hex(16));
        if !taken(&id) {
            return id;
        }
    }
}

/// Responses function-call item id: `fc_` + 24 lowercase hex.
pub fn new_item_id() -> String {
    format!("fc_{}", random_hex(12))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_have_the_spec_shape_and_do_not_repeat() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let id = new_tool_call_id(IdKind::Call, |_| false);
            assert_eq!(id.len(), 5 + 32);
            assert!(id.starts_with("call_"));
            assert!(id[5..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(seen.insert(id));
        }
        let a = new_tool_call_id(IdKind::Anthropic, |_| false);
        assert!(a.starts_with("toolu_") && a.len() == 6 + 32);
        let f = new_item_id();
        assert!(f.starts_with("fc_") && f.len() == 3 + 24);
    }

    #[test]
    fn taken_ids_are_redrawn() {
        let first = std::cell::RefCell::new(None::<String>);
        let id = new_tool_call_id(IdKind::Call, |c| {
            let mut f = first.borrow_mut();
            if f.is_none() {
                *f = Some(c.to_owned());
                true
            } else {
                false
            }
        });
        assert_ne!(Some(id), first.into_inner());
    }

    #[test]
    fn fallback_differs_per_call() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        fallback_random(&mut a);
        fallback_random(&mut b);
        assert_ne!(a, b);
    }
}
