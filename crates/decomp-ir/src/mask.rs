//! Compact boolean masks over node outputs.

use serde::{Deserialize, Serialize};

use crate::graph::NodeId;

/// A fixed-length set of bits stored 64 to a word.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BitSet {
    len: usize,
    words: Vec<u64>,
}

impl BitSet {
    /// `len` bits, all clear.
    pub fn new(len: usize) -> Self {
        Self {
            len,
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// `len` bits, all set.
    pub fn full(len: usize) -> Self {
        let mut s = Self {
            len,
            words: vec![u64::MAX; len.div_ceil(64)],
        };
        s.clear_tail();
        s
    }

    fn clear_tail(&mut self) {
        if let Some(last) = self.words.last_mut() {
            let r = self.len % 64;
            if r != 0 {
                *last &= (1u64 << r) - 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether bit `i` is set; out-of-range bits read as clear.
    pub fn get(&self, i: usize) -> bool {
        i < self.len
            && self
                .words
                .get(i / 64)
                .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// Sets bit `i` to `v`. Panics when `i >= len` (a programming error, not user data).
    pub fn set(&mut self, i: usize, v: bool) {
        assert!(i < self.len, "bit {i} out of range {}", self.len);
        let (w, b) = (i / 64, i % 64);
        if v {
            self.words[w] |= 1 << b;
        } else {
            self.words[w] &= !(1 << b);
        }
    }

    pub(crate) fn for_each_word(&mut self, other: &BitSet, f: impl Fn(&mut u64, u64)) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            f(a, *b);
        }
    }

    /// Flips every bit (`!self`).
    pub fn complement(&self) -> BitSet {
        let mut c = Self {
            len: self.len,
            words: self.words.iter().map(|w| !w).collect(),
        };
        c.clear_tail();
        c
    }

    /// The raw words, 64 bits each, bit `i` in word `i / 64` at position `i % 64`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Keeps only bits set in both (`self &= other`); lengths must match.
    pub fn intersect_with(&mut self, other: &BitSet) {
        assert_eq!(self.len, other.len, "bitset lengths differ");
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    /// Whether every set bit of `self` is set in `other`.
    pub fn is_subset(&self, other: &BitSet) -> bool {
        self.len == other.len
            && self
                .words
                .iter()
                .zip(&other.words)
                .all(|(a, b)| a & !b == 0)
    }

    /// Iterates over the indices of set bits in increasing order.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// Checks the invariant decoding cannot enforce: the word count fits the length and the
    /// bits past the end are clear.
    pub fn check(&self) -> Result<(), String> {
        if self.words.len() != self.len.div_ceil(64) {
            return Err(format!(
                "bitset of {} bits needs {} words, found {}",
                self.len,
                self.len.div_ceil(64),
                self.words.len()
            ));
        }
        let mut c = self.clone();
        c.clear_tail();
        if c.words != self.words {
            return Err("bitset has bits set past its length".into());
        }
        Ok(())
    }
}

/// A mask over one node's output positions (`[c, h, w]` flattened row-major, or `[n]`):
/// set bits are positions forced to zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMask {
    pub node: NodeId,
    pub zeroed: BitSet,
}

/// How many images each position of some mask sites was active (`> 0`) on, over every image
/// counted so far: what concern and tangling identification reduce (counted by
/// `decomp_model::Executor::count`). The paper's rule keeps a
/// position active when any one image activates it ([`ActivityCounts::active`] with 0);
/// a larger fraction ignores rare activity (`DecompConfig::min_active_fraction`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityCounts {
    /// Images counted.
    pub images: usize,
    /// Per site, per channel-first position: images on which it was `> 0`.
    pub counts: Vec<Vec<u32>>,
}

impl ActivityCounts {
    /// No image counted yet, for sites of `sizes` positions each.
    pub fn new(sizes: impl IntoIterator<Item = usize>) -> Self {
        Self {
            images: 0,
            counts: sizes.into_iter().map(|n| vec![0; n]).collect(),
        }
    }

    /// Adds host values: per site, `[images * positions]` channel-first (as
    /// the executor captures them): the plain reference of the executors' counting.
    pub fn add_values(&mut self, values: &[Vec<f32>]) {
        let mut images = 0;
        for (v, n) in values.iter().zip(self.counts.iter_mut()) {
            let per = n.len().max(1);
            images = v.len() / per;
            for img in v.chunks_exact(per) {
                for (c, &x) in n.iter_mut().zip(img) {
                    *c += u32::from(x > 0.0);
                }
            }
        }
        self.images += images;
    }

    /// Per site, the positions active on more than `fraction` of the counted images
    /// (`0`: on at least one); nothing is active before an image is counted.
    pub fn active(&self, fraction: f32) -> Vec<BitSet> {
        let bar = f64::from(fraction.max(0.0)) * self.images as f64;
        self.counts
            .iter()
            .map(|c| {
                let mut set = BitSet::new(c.len());
                for (i, &n) in c.iter().enumerate() {
                    if f64::from(n) > bar {
                        set.set(i, true);
                    }
                }
                set
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::ActivityCounts;

    /// Active means `> 0` on more than the fraction of the counted images: with 0 on any
    /// one; a count exactly at the bar stays inactive; nothing is active before any image.
    #[test]
    fn active_positions_follow_the_fraction() {
        let mut c = ActivityCounts::new([4, 2]);
        assert!(c.active(0.0).iter().all(|s| s.count_ones() == 0));
        c.images = 10;
        c.counts = vec![vec![0, 1, 2, 3], vec![10, 0]];
        let ones = |q: f32| -> Vec<Vec<usize>> {
            c.active(q)
                .iter()
                .map(|s| (0..s.len()).filter(|&i| s.get(i)).collect())
                .collect()
        };
        assert_eq!(ones(0.0), vec![vec![1, 2, 3], vec![0]]);
        assert_eq!(ones(0.1), vec![vec![2, 3], vec![0]]);
        assert_eq!(ones(0.2), vec![vec![3], vec![0]]);
        assert_eq!(ones(0.99), vec![vec![], vec![0]]);
    }
}
