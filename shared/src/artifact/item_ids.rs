//! A version's per-item strings as the serving tiers hold them: every string's bytes in one
//! buffer and where each ends ([`Texts`]: 4 bytes per item besides the text), and for the ids an
//! open-addressing table from id to row ([`ItemIds`]: about 5 more) — where a `String` per item
//! and a `HashMap<String, u32>` hold two heap copies and about 80 bytes. At ten million items that
//! is the difference between a catalog that fits beside its factor codes and one that does not.

use std::hash::Hasher;

/// Row `i`'s text is `texts.get(i)`.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    bytes: Vec<u8>,
    /// Where text `i` ends in `bytes` (it starts where text `i − 1` ends).
    ends: Vec<u32>,
}

impl Texts {
    /// The texts of rows `0..`, in order.
    pub fn new<S: AsRef<str>>(texts: impl IntoIterator<Item = S>) -> Result<Texts, ItemIdsError> {
        let mut out = Texts::default();
        for text in texts {
            out.push(text.as_ref())?;
        }
        out.shrink_to_fit();
        Ok(out)
    }

    /// Gives back the room [`Texts::push`] grew ahead of need.
    pub fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Appends the next row's text.
    pub fn push(&mut self, text: &str) -> Result<(), ItemIdsError> {
        if self.ends.len() >= u32::MAX as usize - 1 {
            return Err(ItemIdsError::TooLarge);
        }
        self.bytes.extend_from_slice(text.as_bytes());
        let end = u32::try_from(self.bytes.len()).map_err(|_| ItemIdsError::TooLarge)?;
        self.ends.push(end);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The text of row `row`. Panics past the end, like indexing.
    pub fn get(&self, row: u32) -> &str {
        let row = row as usize;
        let start = if row == 0 {
            0
        } else {
            self.ends[row - 1] as usize
        };
        let bytes = &self.bytes[start..self.ends[row] as usize];
        // SAFETY: `bytes` holds whole `&str`s appended in `new`, and `start..end` is one of them.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// Every text, row 0 first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len() as u32).map(|row| self.get(row))
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + 4 * self.ends.capacity()
    }
}

/// Row `i`'s id is `ids.get(i)`; `ids.row(id)` is `Some(i)`.
#[derive(Debug, Clone, Default)]
pub struct ItemIds {
    texts: Texts,
    /// Linear probing; a slot holds row + 1, 0 when empty. A power of two, under 80 % full.
    slots: Vec<u32>,
}

/// Why a list of ids cannot be a catalog's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ItemIdsError {
    #[error("item {0} appears twice")]
    Duplicate(String),
    #[error("the items' strings take more than 4 GiB")]
    TooLarge,
}

impl ItemIds {
    /// The ids of rows `0..`, in order; each must be unique.
    pub fn new<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> Result<ItemIds, ItemIdsError> {
        ItemIds::from_texts(Texts::new(ids)?)
    }

    /// The ids of rows `0..`, already gathered; each must be unique.
    pub fn from_texts(texts: Texts) -> Result<ItemIds, ItemIdsError> {
        let mut out = ItemIds {
            texts,
            slots: Vec::new(),
        };
        let capacity = (out.len() * 5 / 4 + 1).next_power_of_two();
        out.slots = vec![0; capacity];
        for row in 0..out.len() as u32 {
            let id = out.get(row);
            let mut slot = out.home(id);
            loop {
                match out.slots[slot] {
                    0 => {
                        out.slots[slot] = row + 1;
                        break;
                    }
                    taken if out.get(taken - 1) == id => {
                        return Err(ItemIdsError::Duplicate(id.to_string()));
                    }
                    _ => slot = (slot + 1) & (capacity - 1),
                }
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The id of row `row`. Panics past the end, like indexing.
    pub fn get(&self, row: u32) -> &str {
        self.texts.get(row)
    }

    /// The row of `id`, if the catalog has it.
    pub fn row(&self, id: &str) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut slot = self.home(id);
        loop {
            match self.slots[slot] {
                0 => return None,
                taken if self.get(taken - 1) == id => return Some(taken - 1),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.row(id).is_some()
    }

    /// Every id, row 0 first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.texts.iter()
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.texts.heap_bytes() + 4 * self.slots.capacity()
    }

    fn home(&self, id: &str) -> usize {
        // FNV-1a with a final mix: ids are the version's own (trusted), a lookup only probes.
        let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
        hash.write(id.as_bytes());
        (mix(hash.finish()) as usize) & (self.slots.len() - 1)
    }
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// MurmurHash3's finaliser: spreads FNV's low-bit patterns over the whole word.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_finds_its_row_and_nothing_else_is_found() {
        let ids: Vec<String> = (0..50_000).map(|i| format!("item-{i}")).collect();
        let table = ItemIds::new(&ids).unwrap();
        assert_eq!(table.len(), 50_000);
        for (row, id) in ids.iter().enumerate() {
            assert_eq!(table.get(row as u32), id);
            assert_eq!(table.row(id), Some(row as u32), "{id}");
        }
        for missing in ["", "item-", "item-50000", "item-1 ", "ITEM-1"] {
            assert_eq!(table.row(missing), None, "{missing:?}");
        }
        assert!(table.iter().eq(ids.iter().map(String::as_str)));
        // Far smaller than a String per id and a HashMap<String, u32>.
        assert!(table.heap_bytes() < 50_000 * 30, "{}", table.heap_bytes());
    }

    #[test]
    fn empty_ids_non_ascii_ids_and_duplicates() {
        let table = ItemIds::new(["", "é", "日本", "a"]).unwrap();
        assert_eq!(table.row(""), Some(0));
        assert_eq!(table.row("日本"), Some(2));
        assert_eq!(table.get(1), "é");
        assert_eq!(
            ItemIds::new(["a", "b", "a"]).unwrap_err(),
            ItemIdsError::Duplicate("a".into())
        );
        let titles = Texts::new(["a title", "", "a title"]).unwrap();
        assert_eq!(
            (titles.get(0), titles.get(1), titles.get(2)),
            ("a title", "", "a title")
        );
        let none = ItemIds::new(Vec::<String>::new()).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.row("a"), None);
    }
}
