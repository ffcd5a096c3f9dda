//! The key index: live entries in a slab, found by key through a `HashTable` of slab ids.
//!
//! Each key's bytes are stored once, in its entry; the hash table holds only a `u32` slab id and
//! hashes/compares through the slab. Lookups by key return the entry itself, so a key that is
//! found is always live (no second, fallible lookup by id). Sessions and deadline items refer to an entry by
//! (id, generation) instead of cloning the key. A freed slot is reused with a new generation,
//! so stale deadline items never match a later entry in the same slot.
//!
//! Optionally (`TableConfig::ordered_keys`) a B-tree keeps the live keys in order too, for
//! operators' listings in O(log n + page).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::ops::Bound;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::deadlines::GENERATION_MASK;
use super::entry::Entry;
use super::stored_key::StoredKey;
use super::types::PrincipalId;

/// Slab index of a live entry.
pub type EntryId = u32;

#[derive(Debug, Default)]
pub struct Keys {
    index: HashTable<EntryId>,
    slots: Vec<Option<Entry>>,
    free: Vec<EntryId>,
    next_gen: u32,
    hasher: DefaultHashBuilder,
    /// Live keys in key order (only when asked for).
    ordered: Option<BTreeMap<StoredKey, EntryId>>,
    /// By slot: the principal whose request created the entry (4 bytes a slot beside the
    /// slab, not in the 96-byte entry), charged until the key goes idle.
    charged: Vec<PrincipalId>,
    /// By principal id: live keys charged to it.
    charged_keys: Vec<usize>,
}

impl Keys {
    /// An empty index; `ordered`: keep the keys in order too.
    pub fn new(ordered: bool) -> Keys {
        Keys {
            ordered: ordered.then(BTreeMap::new),
            ..Keys::default()
        }
    }

    /// Live entries in key order from `from` on (`None`: the index keeps no order).
    pub fn ordered_from<'a>(
        &'a self,
        from: Bound<&[u8]>,
    ) -> Option<impl Iterator<Item = &'a Entry> + 'a> {
        let ordered = self.ordered.as_ref()?;
        let slots = &self.slots;
        Some(
            ordered
                .range::<[u8], _>((from, Bound::Unbounded))
                .filter_map(move |(_, &id)| slot(slots, id)),
        )
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The id of `key`'s entry (hash `hash`), if the key is live.
    #[inline]
    fn find_id(&self, hash: u64, key: &[u8]) -> Option<EntryId> {
        let slots = &self.slots;
        self.index
            .find(hash, |&id| {
                slot(slots, id).is_some_and(|e| e.key.as_bytes() == key)
            })
            .copied()
    }

    /// `key`'s entry, if the key is live.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<&Entry> {
        slot(&self.slots, self.find_id(self.hash(key), key)?)
    }

    #[inline]
    pub fn find_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        self.lookup(key).ok()
    }

    /// `key`'s live entry, or else the key's hash for a following [`Keys::insert`].
    #[inline]
    pub fn lookup(&mut self, key: &[u8]) -> Result<&mut Entry, u64> {
        let hash = self.hash(key);
        match self.find_id(hash, key) {
            Some(id) => self.get_mut(id).ok_or(hash),
            None => Err(hash),
        }
    }

    pub fn get(&self, id: EntryId) -> Option<&Entry> {
        slot(&self.slots, id)
    }

    #[inline]
    pub fn get_mut(&mut self, id: EntryId) -> Option<&mut Entry> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// The entry in slot `id` if it is still generation `generation`.
    #[inline]
    pub fn get_gen_mut(&mut self, id: EntryId, generation: u32) -> Option<&mut Entry> {
        self.get_mut(id).filter(|e| e.generation == generation)
    }

    /// Stores a new entry for a key that is not live (`hash` from [`Keys::lookup`]), sets the
    /// entry's `id` and `generation`, and returns it. `None` only when the slab has no
    /// id left (2^32 live keys).
    pub fn insert(
        &mut self,
        hash: u64,
        mut entry: Entry,
        principal: PrincipalId,
    ) -> Option<&mut Entry> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = EntryId::try_from(self.slots.len()).ok()?;
                self.slots.push(None);
                self.charged.push(principal);
                id
            }
        };
        if let Some(c) = self.charged.get_mut(id as usize) {
            *c = principal;
        }
        let p = principal as usize;
        if p >= self.charged_keys.len() {
            self.charged_keys.resize(p + 1, 0);
        }
        self.charged_keys[p] += 1;
        entry.id = id;
        entry.generation = self.next_gen;
        if let Some(ordered) = &mut self.ordered {
            ordered.insert(entry.key.clone(), id);
        }
        // 31 bits: deadline items keep their kind in the 32nd (`deadlines.rs`).
        self.next_gen = self.next_gen.wrapping_add(1) & GENERATION_MASK;
        *self.slots.get_mut(id as usize)? = Some(entry);
        let (slots, hasher) = (&self.slots, &self.hasher);
        // Entries do not keep their hash (8 bytes a key): a resize hashes the keys again.
        self.index.insert_unique(hash, id, |&i| {
            slot(slots, i).map_or(0, |e| hasher.hash_one(e.key.as_bytes()))
        });
        self.get_mut(id)
    }

    /// Frees `id`'s entry if it has become idle (its rare part with it: a key whose queue
    /// drained keeps that box while it is held, so a hand-off does not allocate it again).
    /// Returns true if it was freed. Called whenever an operation on the key ends.
    #[inline]
    pub fn free_if_idle(&mut self, id: EntryId) -> bool {
        let Some(s) = self.slots.get_mut(id as usize) else {
            return false;
        };
        let hash = match s {
            Some(e) if e.is_idle() => {
                if let Some(ordered) = &mut self.ordered {
                    ordered.remove(e.key.as_bytes());
                }
                self.hasher.hash_one(e.key.as_bytes())
            }
            _ => return false,
        };
        *s = None;
        if let Some(&p) = self.charged.get(id as usize)
            && let Some(n) = self.charged_keys.get_mut(p as usize)
        {
            *n = n.saturating_sub(1);
        }
        if let Ok(o) = self.index.find_entry(hash, |&i| i == id) {
            o.remove();
        }
        self.free.push(id);
        true
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Live keys charged to `principal` (created by its requests).
    #[inline]
    pub fn charged_to(&self, principal: PrincipalId) -> usize {
        self.charged_keys
            .get(principal as usize)
            .copied()
            .unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().filter_map(Option::as_ref)
    }

    /// Live entries in slab slots `[from, from + n)`, and the slot after them (`None`: the
    /// slab ends there) — for scans done a slice at a time, the lock released in between.
    pub fn slice(&self, from: usize, n: usize) -> (impl Iterator<Item = &Entry>, Option<usize>) {
        let end = from.saturating_add(n).min(self.slots.len());
        let from = from.min(end);
        let next = (end < self.slots.len()).then_some(end);
        (
            self.slots[from..end].iter().filter_map(Option::as_ref),
            next,
        )
    }
}

fn slot(slots: &[Option<Entry>], id: EntryId) -> Option<&Entry> {
    slots.get(id as usize).and_then(Option::as_ref)
}
