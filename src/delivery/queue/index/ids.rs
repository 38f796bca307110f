//! Packed queue ids and interned names: what lets the index keep a few dozen bytes per message.

use std::collections::HashMap;

/// A queue id, packed: a canonical id (18 upper-case hex digits, `Spool::new_id`) is its value;
/// any other is an index into `Ids::odd` with the top bit set.
pub(crate) type Qid = u128;

pub(super) const ODD: u128 = 1 << 127;

#[derive(Default)]
pub(crate) struct Ids {
    odd: HashMap<String, Qid>,
    odd_names: Vec<String>,
}

/// The packed form of a canonical id, if it is one.
pub(crate) fn canonical(id: &str) -> Option<Qid> {
    crate::spool::pack_id(id)
}

impl Ids {
    pub(crate) fn pack(&mut self, id: &str) -> Qid {
        if let Some(q) = canonical(id) {
            return q;
        }
        if let Some(&q) = self.odd.get(id) {
            return q;
        }
        let q = ODD | self.odd_names.len() as u128;
        self.odd_names.push(id.to_string());
        self.odd.insert(id.to_string(), q);
        q
    }

    /// The packed id if known (never adds one).
    pub(crate) fn find(&self, id: &str) -> Option<Qid> {
        canonical(id).or_else(|| self.odd.get(id).copied())
    }

    pub(crate) fn name(&self, q: Qid) -> String {
        if q & ODD == 0 {
            format!("{q:018X}")
        } else {
            self.odd_names[(q & !ODD) as usize].clone()
        }
    }
}

/// Domain and provider names, each stored once.
#[derive(Default)]
pub(crate) struct Names {
    ids: HashMap<Box<str>, u32>,
    pub(crate) list: Vec<Box<str>>,
}

impl Names {
    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        if let Some(&n) = self.ids.get(name) {
            return n;
        }
        let n = self.list.len() as u32;
        self.list.push(name.into());
        self.ids.insert(name.into(), n);
        n
    }

    pub(crate) fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
}
