//! The key index: live entries in a slab, found by key through a `HashTable` of slab ids.
//!
//! Each key's bytes are stored once, in its entry; the hash table holds only a `u32` slab id and
//! hashes/compares through the slab. Sessions and deadline items refer to an entry by
//! (id, generation) instead of cloning the key. A freed slot is reused with a new generation,
//! so stale deadline items never match a later entry in the same slot.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::entry::Entry;

/// Slab index of a live entry.
pub(crate) type EntryId = u32;

#[derive(Debug, Default)]
pub(crate) struct Keys {
    index: HashTable<EntryId>,
    slots: Vec<Option<Entry>>,
    free: Vec<EntryId>,
    next_gen: u32,
    hasher: DefaultHashBuilder,
}

impl Keys {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The id of `key`'s entry, if the key is live.
    pub(crate) fn find(&self, key: &[u8]) -> Option<EntryId> {
        self.find_hashed(key).1
    }

    /// Like [`Keys::find`], also returning the key's hash for a following [`Keys::insert`].
    pub(crate) fn find_hashed(&self, key: &[u8]) -> (u64, Option<EntryId>) {
        let slots = &self.slots;
        let hash = self.hash(key);
        let id = self
            .index
            .find(hash, |&id| {
                slot(slots, id).is_some_and(|e| &e.key[..] == key)
            })
            .copied();
        (hash, id)
    }

    pub(crate) fn get(&self, id: EntryId) -> Option<&Entry> {
        slot(&self.slots, id)
    }

    pub(crate) fn get_mut(&mut self, id: EntryId) -> Option<&mut Entry> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// The entry in slot `id` if it is still generation `generation`.
    pub(crate) fn get_gen_mut(&mut self, id: EntryId, generation: u32) -> Option<&mut Entry> {
        self.get_mut(id).filter(|e| e.generation == generation)
    }

    /// Stores a new entry (its key must not be live, `hash` from [`Keys::find_hashed`]) and
    /// returns its id; sets the entry's `id`, `generation` and `hash`.
    pub(crate) fn insert(&mut self, hash: u64, mut entry: Entry) -> EntryId {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                EntryId::try_from(self.slots.len() - 1).unwrap_or(EntryId::MAX)
            }
        };
        entry.id = id;
        entry.generation = self.next_gen;
        entry.hash = hash;
        self.next_gen = self.next_gen.wrapping_add(1);
        if let Some(s) = self.slots.get_mut(id as usize) {
            *s = Some(entry);
        }
        let slots = &self.slots;
        self.index
            .insert_unique(hash, id, |&i| slot(slots, i).map_or(0, |e| e.hash));
        id
    }

    /// Frees `id`'s entry if it has become idle. Returns true if it was freed.
    pub(crate) fn free_if_idle(&mut self, id: EntryId) -> bool {
        let Some(s) = self.slots.get_mut(id as usize) else {
            return false;
        };
        let hash = match s {
            Some(e) if e.is_idle() => e.hash,
            _ => return false,
        };
        *s = None;
        if let Ok(o) = self.index.find_entry(hash, |&i| i == id) {
            o.remove();
        }
        self.free.push(id);
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().filter_map(Option::as_ref)
    }
}

fn slot(slots: &[Option<Entry>], id: EntryId) -> Option<&Entry> {
    slots.get(id as usize).and_then(Option::as_ref)
}
