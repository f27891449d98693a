//! A persistent (copy-on-write) hash map: a hash array mapped trie keyed by path.
//!
//! Cloning a [`PMap`] is O(1) (it shares the trie); changing a clone copies only the trie
//! nodes on the way to the changed entry (at most 13 levels of at most 32 entries), and a
//! trie node that nobody else shares is changed in place. This is what lets the engine hand
//! readers a snapshot of the whole store at the cost of an `Arc` clone, while a writer (a
//! commit of 200 000 nodes, say) keeps changing its own copy.
//!
//! Keys are hashed with a per-map random key ([`RandomState`]), so a guest cannot choose
//! paths that collide; entries whose 64-bit hashes collide anyway share a bucket.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

const BITS: u32 = 5;
const MASK: u64 = (1 << BITS) - 1;

#[derive(Clone)]
enum Entry<V> {
    /// One key.
    One(u64, Arc<str>, V),
    /// Several keys with the same full hash.
    Many(u64, Vec<(Arc<str>, V)>),
    /// A deeper level.
    Node(Arc<Trie<V>>),
}

#[derive(Clone)]
struct Trie<V> {
    /// Bit `i` set: slot `i` is present, at index `popcount(bitmap & ((1 << i) - 1))`.
    bitmap: u32,
    entries: Vec<Entry<V>>,
}

impl<V> Trie<V> {
    fn empty() -> Self {
        Trie {
            bitmap: 0,
            entries: Vec::new(),
        }
    }
}

fn slot(hash: u64, shift: u32) -> (u32, u32) {
    let bit = ((hash >> shift) & MASK) as u32;
    (bit, 1u32 << bit)
}

fn index(bitmap: u32, bit: u32) -> usize {
    (bitmap & ((1u32 << bit) - 1)).count_ones() as usize
}

/// A persistent map from paths to `V` (see the module docs).
#[derive(Clone)]
pub struct PMap<V> {
    root: Arc<Trie<V>>,
    len: usize,
    hasher: RandomState,
}

impl<V: Clone> Default for PMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> std::fmt::Debug for PMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PMap").field("len", &self.len).finish()
    }
}

impl<V: Clone> PMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        PMap {
            root: Arc::new(Trie::empty()),
            len: 0,
            hasher: RandomState::new(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when both maps are the same version (one is an unchanged clone of the other).
    pub fn same_version(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.root, &other.root)
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        let hash = self.hash(key);
        let mut trie = &*self.root;
        let mut shift = 0;
        loop {
            let (bit, mask) = slot(hash, shift);
            if trie.bitmap & mask == 0 {
                return None;
            }
            match &trie.entries[index(trie.bitmap, bit)] {
                Entry::One(h, k, v) => return (*h == hash && &**k == key).then_some(v),
                Entry::Many(h, items) => {
                    if *h != hash {
                        return None;
                    }
                    return items.iter().find(|(k, _)| &**k == key).map(|(_, v)| v);
                }
                Entry::Node(next) => {
                    trie = next;
                    shift += BITS;
                }
            }
        }
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Mutable access to the value of `key` (copying the shared trie nodes on its way).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        if !self.contains_key(key) {
            return None;
        }
        let hash = self.hash(key);
        let mut trie = Arc::make_mut(&mut self.root);
        let mut shift = 0;
        loop {
            let (bit, _) = slot(hash, shift);
            let i = index(trie.bitmap, bit);
            match &mut trie.entries[i] {
                Entry::One(_, _, v) => return Some(v),
                Entry::Many(_, items) => {
                    return items.iter_mut().find(|(k, _)| &**k == key).map(|(_, v)| v)
                }
                Entry::Node(next) => {
                    trie = Arc::make_mut(next);
                    shift += BITS;
                }
            }
        }
    }

    /// Insert or replace; the previous value, if any.
    pub fn insert(&mut self, key: Arc<str>, value: V) -> Option<V> {
        let hash = self.hash(&key);
        let old = insert_in(Arc::make_mut(&mut self.root), hash, 0, key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Remove `key`; its value, if it was present.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        if !self.contains_key(key) {
            return None;
        }
        let hash = self.hash(key);
        let old = remove_in(Arc::make_mut(&mut self.root), hash, 0, key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Call `changed(key)` for every key present in only one of `self` and `other`, or in
    /// both with values that are not `same`. `other` must be a version of `self` (a clone,
    /// changed or not), whose unchanged parts it shares: those are skipped without a look, so
    /// the cost is in what differs, not in the size of the maps.
    pub fn diff(
        &self,
        other: &Self,
        same: impl Fn(&V, &V) -> bool,
        mut changed: impl FnMut(&Arc<str>),
    ) {
        diff_tries(&self.root, &other.root, &same, &mut changed);
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            stack: vec![self.root.entries.iter()],
            bucket: None,
        }
    }
}

fn insert_in<V: Clone>(
    trie: &mut Trie<V>,
    hash: u64,
    shift: u32,
    key: Arc<str>,
    value: V,
) -> Option<V> {
    let (bit, mask) = slot(hash, shift);
    let i = index(trie.bitmap, bit);
    if trie.bitmap & mask == 0 {
        trie.bitmap |= mask;
        trie.entries.insert(i, Entry::One(hash, key, value));
        return None;
    }
    match &mut trie.entries[i] {
        Entry::One(h, k, v) if *h == hash => {
            if *k == key {
                return Some(std::mem::replace(v, value));
            }
            let items = vec![(k.clone(), v.clone()), (key, value)];
            trie.entries[i] = Entry::Many(hash, items);
            None
        }
        Entry::Many(h, items) if *h == hash => {
            if let Some((_, v)) = items.iter_mut().find(|(k, _)| *k == key) {
                return Some(std::mem::replace(v, value));
            }
            items.push((key, value));
            None
        }
        Entry::Node(next) => insert_in(Arc::make_mut(next), hash, shift + BITS, key, value),
        // A different hash in this slot: push both one level down.
        _ => {
            let existing =
                std::mem::replace(&mut trie.entries[i], Entry::Node(Arc::new(Trie::empty())));
            let Entry::Node(next) = &mut trie.entries[i] else {
                unreachable!("just placed")
            };
            let next = Arc::make_mut(next);
            let existing_hash = match &existing {
                Entry::One(h, ..) | Entry::Many(h, _) => *h,
                Entry::Node(_) => unreachable!("handled above"),
            };
            let (ebit, emask) = slot(existing_hash, shift + BITS);
            next.bitmap |= emask;
            next.entries.insert(index(next.bitmap, ebit), existing);
            insert_in(next, hash, shift + BITS, key, value)
        }
    }
}

fn entries_of<'a, V>(e: &'a Entry<V>, out: &mut Vec<(&'a Arc<str>, &'a V)>) {
    match e {
        Entry::One(_, k, v) => out.push((k, v)),
        Entry::Many(_, items) => out.extend(items.iter().map(|(k, v)| (k, v))),
        Entry::Node(t) => {
            for e in &t.entries {
                entries_of(e, out);
            }
        }
    }
}

fn diff_tries<V: Clone>(
    a: &Arc<Trie<V>>,
    b: &Arc<Trie<V>>,
    same: &dyn Fn(&V, &V) -> bool,
    changed: &mut dyn FnMut(&Arc<str>),
) {
    if Arc::ptr_eq(a, b) {
        return;
    }
    for bit in 0..32u32 {
        let mask = 1u32 << bit;
        let ea = (a.bitmap & mask != 0).then(|| &a.entries[index(a.bitmap, bit)]);
        let eb = (b.bitmap & mask != 0).then(|| &b.entries[index(b.bitmap, bit)]);
        match (ea, eb) {
            (None, None) => {}
            (Some(Entry::Node(x)), Some(Entry::Node(y))) => diff_tries(x, y, same, changed),
            (x, y) => {
                // Leaves on one side at least: compare what both sides hold in this slot.
                let (mut xs, mut ys) = (Vec::new(), Vec::new());
                if let Some(e) = x {
                    entries_of(e, &mut xs);
                }
                if let Some(e) = y {
                    entries_of(e, &mut ys);
                }
                let xmap: std::collections::HashMap<&str, &V> =
                    xs.iter().map(|(k, v)| (&***k, *v)).collect();
                let ymap: std::collections::HashMap<&str, &V> =
                    ys.iter().map(|(k, v)| (&***k, *v)).collect();
                for (k, vx) in &xs {
                    match ymap.get(&***k) {
                        Some(vy) if same(vx, vy) => {}
                        _ => changed(k),
                    }
                }
                for (k, _) in &ys {
                    if !xmap.contains_key(&***k) {
                        changed(k);
                    }
                }
            }
        }
    }
}

fn remove_in<V: Clone>(trie: &mut Trie<V>, hash: u64, shift: u32, key: &str) -> Option<V> {
    let (bit, mask) = slot(hash, shift);
    if trie.bitmap & mask == 0 {
        return None;
    }
    let i = index(trie.bitmap, bit);
    let old = match &mut trie.entries[i] {
        Entry::One(h, k, _) => {
            if *h != hash || &**k != key {
                return None;
            }
            trie.bitmap &= !mask;
            match trie.entries.remove(i) {
                Entry::One(_, _, v) => return Some(v),
                _ => unreachable!("matched One"),
            }
        }
        Entry::Many(h, items) => {
            if *h != hash {
                return None;
            }
            let pos = items.iter().position(|(k, _)| &**k == key)?;
            let (_, v) = items.remove(pos);
            if items.len() == 1 {
                let (k, v1) = items.pop().expect("one left");
                trie.entries[i] = Entry::One(hash, k, v1);
            }
            return Some(v);
        }
        Entry::Node(next) => {
            let next = Arc::make_mut(next);
            let old = remove_in(next, hash, shift + BITS, key)?;
            // A level left with one key (not a deeper level) folds into its parent.
            if next.entries.len() == 1 && !matches!(next.entries[0], Entry::Node(_)) {
                let only = next.entries.pop().expect("one entry");
                trie.entries[i] = only;
            }
            old
        }
    };
    Some(old)
}

impl<'a, V: Clone> IntoIterator for &'a PMap<V> {
    type Item = (&'a Arc<str>, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

/// Iterator over a [`PMap`]'s entries.
pub struct Iter<'a, V> {
    stack: Vec<std::slice::Iter<'a, Entry<V>>>,
    bucket: Option<std::slice::Iter<'a, (Arc<str>, V)>>,
}

impl<V> std::fmt::Debug for Iter<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a Arc<str>, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = &mut self.bucket {
                if let Some((k, v)) = b.next() {
                    return Some((k, v));
                }
                self.bucket = None;
            }
            let top = self.stack.last_mut()?;
            match top.next() {
                None => {
                    self.stack.pop();
                }
                Some(Entry::One(_, k, v)) => return Some((k, v)),
                Some(Entry::Many(_, items)) => self.bucket = Some(items.iter()),
                Some(Entry::Node(next)) => self.stack.push(next.entries.iter()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn agrees_with_a_hash_map_and_old_versions_stay_unchanged() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut map: PMap<u64> = PMap::new();
        let mut model: HashMap<String, u64> = HashMap::new();
        let mut versions: Vec<(PMap<u64>, HashMap<String, u64>)> = Vec::new();
        for step in 0..60_000u64 {
            let key = format!("/k/{}", rng.next() % 5_000);
            match rng.next() % 4 {
                0 => assert_eq!(map.remove(&key), model.remove(&key), "remove {key}"),
                1 => {
                    if let Some(v) = map.get_mut(&key) {
                        *v += 1;
                    }
                    if let Some(v) = model.get_mut(&key) {
                        *v += 1;
                    }
                }
                _ => assert_eq!(
                    map.insert(Arc::from(key.as_str()), step),
                    model.insert(key.clone(), step),
                    "insert {key}"
                ),
            }
            assert_eq!(map.len(), model.len());
            if step % 7_919 == 0 {
                versions.push((map.clone(), model.clone()));
            }
        }
        let check = |m: &PMap<u64>, model: &HashMap<String, u64>| {
            let got: HashMap<String, u64> = m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            assert_eq!(&got, model);
            for (k, v) in model {
                assert_eq!(m.get(k), Some(v));
            }
            assert_eq!(m.get("/absent"), None);
        };
        check(&map, &model);
        for (m, model) in &versions {
            check(m, model);
        }
        for (k, _) in model.clone() {
            assert!(map.remove(&k).is_some());
        }
        assert!(map.is_empty());
        assert_eq!(map.iter().count(), 0);
    }

    #[test]
    fn colliding_hashes_share_a_bucket() {
        // Forced collisions: the same hash for several keys, through the internal functions.
        let mut root: Trie<u32> = Trie::empty();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            assert!(insert_in(&mut root, 42, 0, Arc::from(*k), i as u32).is_none());
        }
        assert!(insert_in(&mut root, 42 | (1 << 10), 0, Arc::from("d"), 9).is_none());
        assert_eq!(insert_in(&mut root, 42, 0, Arc::from("b"), 7), Some(1));
        assert_eq!(remove_in(&mut root, 42, 0, "a"), Some(0));
        assert_eq!(remove_in(&mut root, 42, 0, "a"), None);
        assert_eq!(remove_in(&mut root, 42, 0, "c"), Some(2));
        assert_eq!(remove_in(&mut root, 42, 0, "b"), Some(7));
        assert_eq!(remove_in(&mut root, 42 | (1 << 10), 0, "d"), Some(9));
        assert_eq!(root.entries.len(), 0);
    }

    #[test]
    fn diff_names_exactly_what_changed() {
        let mut rng = Rng(42);
        let mut a: PMap<Arc<u64>> = PMap::new();
        for i in 0..20_000u64 {
            a.insert(Arc::from(format!("/n{i}").as_str()), Arc::new(i));
        }
        for round in 0..20u64 {
            let mut b = a.clone();
            let mut want = std::collections::BTreeSet::new();
            for _ in 0..(round * 37) {
                let key = format!("/n{}", rng.next() % 25_000);
                match rng.next() % 3 {
                    0 => {
                        if b.remove(&key).is_some() {
                            want.insert(key);
                        }
                    }
                    _ => {
                        b.insert(Arc::from(key.as_str()), Arc::new(rng.next()));
                        want.insert(key);
                    }
                }
            }
            // A key changed and changed back to the same value is not a difference.
            let key = "/n7";
            let v = a.get(key).unwrap().clone();
            b.insert(Arc::from(key), Arc::new(0));
            b.insert(Arc::from(key), v);
            let mut got = std::collections::BTreeSet::new();
            a.diff(&b, Arc::ptr_eq, |k| {
                got.insert(k.to_string());
            });
            // What differs, judged entry by entry (`want` holds every key touched).
            let brute: std::collections::BTreeSet<String> = want
                .iter()
                .filter(|k| match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => !Arc::ptr_eq(x, y),
                    (None, None) => false,
                    _ => true,
                })
                .cloned()
                .collect();
            assert_eq!(got, brute, "round {round}");
            a = b;
        }
    }

    #[test]
    fn a_clone_is_a_snapshot() {
        let mut a: PMap<u32> = PMap::new();
        for i in 0..1000 {
            a.insert(Arc::from(format!("/n{i}").as_str()), i);
        }
        let snap = a.clone();
        assert!(snap.same_version(&a));
        *a.get_mut("/n5").unwrap() = 99;
        a.remove("/n6");
        a.insert(Arc::from("/new"), 1);
        assert!(!snap.same_version(&a));
        assert_eq!(snap.get("/n5"), Some(&5));
        assert_eq!(snap.get("/n6"), Some(&6));
        assert_eq!(snap.get("/new"), None);
        assert_eq!(snap.len(), 1000);
        assert_eq!(a.get("/n5"), Some(&99));
        assert_eq!(a.len(), 1000);
    }
}
