//! Bookkeeping of the host-visible shared memory region (shmid 1): which byte ranges hold a
//! mapped blob. Ranges are page aligned, inside the region and never overlap.
//!
//! The guest chooses the offset of each `RESOURCE_MAP_BLOB` (its own allocator manages the
//! PCI BAR window), so the main entry point is [`RegionAllocator::allocate_at`];
//! [`RegionAllocator::allocate`] (first fit) serves host-chosen placement.

use std::collections::BTreeMap;

/// Granularity of region ranges: the page size of the ports.
pub use super::ports::PAGE_SIZE;

/// Why a range could not be reserved or released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// Length zero.
    #[error("empty range")]
    Empty,
    /// Offset or length not a multiple of the page size.
    #[error("range {offset:#x}+{len:#x} is not aligned to {PAGE_SIZE:#x}")]
    Unaligned {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
    },
    /// The range does not fit in the region.
    #[error("range {offset:#x}+{len:#x} is outside the region of {size:#x} bytes")]
    OutOfBounds {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Region size.
        size: u64,
    },
    /// The range overlaps one already reserved.
    #[error("range {offset:#x}+{len:#x} overlaps {existing_offset:#x}+{existing_len:#x}")]
    Overlap {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Offset of the reserved range.
        existing_offset: u64,
        /// Length of the reserved range.
        existing_len: u64,
    },
    /// No free gap is large enough.
    #[error("no free range of {len:#x} bytes")]
    NoSpace {
        /// Requested length.
        len: u64,
    },
    /// Nothing is reserved at this offset.
    #[error("no range starts at {offset:#x}")]
    NotAllocated {
        /// Offset given.
        offset: u64,
    },
}

/// Reserved ranges of the host-visible region.
#[derive(Debug, Clone)]
pub struct RegionAllocator {
    size: u64,
    /// start -> length, non-overlapping.
    ranges: BTreeMap<u64, u64>,
}

impl RegionAllocator {
    /// An empty region of `size` bytes (rounded down to whole pages; 0 = no region).
    pub fn new(size: u64) -> Self {
        RegionAllocator {
            size: size & !(PAGE_SIZE - 1),
            ranges: BTreeMap::new(),
        }
    }

    /// Region size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes reserved.
    pub fn used(&self) -> u64 {
        self.ranges.values().sum()
    }

    /// The reserved ranges as `(offset, len)`, by offset.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&o, &l)| (o, l))
    }

    fn check_shape(&self, offset: u64, len: u64) -> Result<(), RegionError> {
        if len == 0 {
            return Err(RegionError::Empty);
        }
        if !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::Unaligned { offset, len });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(RegionError::OutOfBounds {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Reserves exactly `offset..offset+len`.
    pub fn allocate_at(&mut self, offset: u64, len: u64) -> Result<(), RegionError> {
        self.check_shape(offset, len)?;
        let end = offset + len; // checked in check_shape
                                // The range starting at or before `offset`, and the first one after it, are the only
                                // candidates for overlap because ranges do not overlap each other.
        let before = self.ranges.range(..=offset).next_back();
        let after = self.ranges.range(offset..).next();
        for (&o, &l) in before.into_iter().chain(after) {
            if o < end && offset < o + l {
                return Err(RegionError::Overlap {
                    offset,
                    len,
                    existing_offset: o,
                    existing_len: l,
                });
            }
        }
        self.ranges.insert(offset, len);
        Ok(())
    }

    /// Reserves `len` bytes at the lowest free offset (first fit) and returns it.
    pub fn allocate(&mut self, len: u64) -> Result<u64, RegionError> {
        if len == 0 {
            return Err(RegionError::Empty);
        }
        if !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::Unaligned { offset: 0, len });
        }
        let mut cursor = 0u64;
        for (&o, &l) in &self.ranges {
            if o - cursor >= len {
                break;
            }
            cursor = o + l;
        }
        if self
            .size
            .checked_sub(cursor)
            .is_some_and(|free| free >= len)
        {
            self.ranges.insert(cursor, len);
            Ok(cursor)
        } else {
            Err(RegionError::NoSpace { len })
        }
    }

    /// Releases the range starting at `offset`; returns its length.
    pub fn free(&mut self, offset: u64) -> Result<u64, RegionError> {
        self.ranges
            .remove(&offset)
            .ok_or(RegionError::NotAllocated { offset })
    }

    /// Forgets every range (device reset: the frontend already unmapped everything).
    pub fn clear(&mut self) {
        self.ranges.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn allocate_at_checks_alignment_bounds_and_overlap() {
        let mut r = RegionAllocator::new(16 * P);
        assert_eq!(r.allocate_at(0, 0), Err(RegionError::Empty));
        assert!(matches!(
            r.allocate_at(1, P),
            Err(RegionError::Unaligned { .. })
        ));
        assert!(matches!(
            r.allocate_at(0, P + 1),
            Err(RegionError::Unaligned { .. })
        ));
        assert!(matches!(
            r.allocate_at(15 * P, 2 * P),
            Err(RegionError::OutOfBounds { .. })
        ));
        assert!(matches!(
            r.allocate_at(!(P - 1), P),
            Err(RegionError::OutOfBounds { .. })
        ));
        r.allocate_at(4 * P, 4 * P).unwrap();
        for (o, l) in [
            (4 * P, P),
            (7 * P, P),
            (3 * P, 2 * P),
            (0, 16 * P),
            (5 * P, P),
        ] {
            assert!(
                matches!(r.allocate_at(o, l), Err(RegionError::Overlap { .. })),
                "{o:#x}+{l:#x}"
            );
        }
        // Touching ranges are fine.
        r.allocate_at(3 * P, P).unwrap();
        r.allocate_at(8 * P, P).unwrap();
        r.allocate_at(15 * P, P).unwrap();
        assert_eq!(r.used(), 7 * P);
    }

    #[test]
    fn first_fit_fills_gaps_then_reports_full() {
        let mut r = RegionAllocator::new(8 * P);
        assert_eq!(r.allocate(2 * P), Ok(0));
        assert_eq!(r.allocate(2 * P), Ok(2 * P));
        assert_eq!(r.allocate(4 * P), Ok(4 * P));
        assert_eq!(r.allocate(P), Err(RegionError::NoSpace { len: P }));
        assert_eq!(r.free(2 * P), Ok(2 * P));
        assert_eq!(r.allocate(3 * P), Err(RegionError::NoSpace { len: 3 * P }));
        assert_eq!(r.allocate(P), Ok(2 * P));
        assert_eq!(r.allocate(P), Ok(3 * P));
        assert_eq!(
            r.free(5 * P),
            Err(RegionError::NotAllocated { offset: 5 * P })
        );
    }

    #[test]
    fn zero_sized_region_refuses_everything() {
        let mut r = RegionAllocator::new(0);
        assert!(r.allocate(P).is_err());
        assert!(r.allocate_at(0, P).is_err());
        let r = RegionAllocator::new(P + 5);
        assert_eq!(r.size(), P);
    }

    #[test]
    fn clear_forgets_ranges() {
        let mut r = RegionAllocator::new(4 * P);
        r.allocate_at(0, 4 * P).unwrap();
        r.clear();
        assert_eq!(r.used(), 0);
        r.allocate_at(0, 4 * P).unwrap();
    }

    /// xorshift64*: a tiny deterministic generator for the randomized model tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Property: against a page-bitmap model, every operation succeeds exactly when the
    /// model says it should, and the reserved set always equals the model.
    #[test]
    fn randomized_operations_agree_with_a_page_bitmap_model() {
        const PAGES: u64 = 64;
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut r = RegionAllocator::new(PAGES * P);
            let mut model = [false; PAGES as usize];
            let mut live: Vec<(u64, u64)> = Vec::new();
            for _ in 0..300 {
                match rng.below(4) {
                    0 | 1 => {
                        // allocate_at, sometimes unaligned or out of bounds
                        let mut offset = rng.below(PAGES + 4) * P;
                        let mut len = (rng.below(8) + 1) * P;
                        if rng.below(10) == 0 {
                            offset += rng.below(P - 1) + 1;
                        }
                        if rng.below(10) == 0 {
                            len += rng.below(P - 1) + 1;
                        }
                        let aligned = offset.is_multiple_of(P) && len.is_multiple_of(P);
                        let in_bounds = offset + len <= PAGES * P;
                        let free = aligned
                            && in_bounds
                            && (offset / P..(offset + len) / P).all(|p| !model[p as usize]);
                        let got = r.allocate_at(offset, len);
                        assert_eq!(got.is_ok(), free, "seed {seed}: at {offset:#x}+{len:#x}");
                        if free {
                            for p in offset / P..(offset + len) / P {
                                model[p as usize] = true;
                            }
                            live.push((offset, len));
                        }
                    }
                    2 => {
                        let len = (rng.below(6) + 1) * P;
                        let pages = len / P;
                        // Model first fit.
                        let expect = (0..=PAGES - pages)
                            .find(|&s| (s..s + pages).all(|p| !model[p as usize]));
                        let got = r.allocate(len);
                        assert_eq!(got.ok(), expect.map(|s| s * P), "seed {seed}: fit {len:#x}");
                        if let Some(s) = expect {
                            for p in s..s + pages {
                                model[p as usize] = true;
                            }
                            live.push((s * P, len));
                        }
                    }
                    _ => {
                        if live.is_empty() {
                            assert!(r.free(rng.below(PAGES) * P).is_err());
                            continue;
                        }
                        let i = rng.below(live.len() as u64) as usize;
                        let (o, l) = live.swap_remove(i);
                        assert_eq!(r.free(o), Ok(l));
                        assert!(r.free(o).is_err(), "double free must fail");
                        for p in o / P..(o + l) / P {
                            model[p as usize] = false;
                        }
                    }
                }
                // Invariants: sorted, non-overlapping, aligned, in bounds, equal to model.
                let mut covered = [false; PAGES as usize];
                let mut last_end = 0;
                for (o, l) in r.ranges() {
                    assert!(o >= last_end && o.is_multiple_of(P) && l.is_multiple_of(P) && l > 0);
                    assert!(o + l <= PAGES * P);
                    last_end = o + l;
                    for p in o / P..(o + l) / P {
                        covered[p as usize] = true;
                    }
                }
                assert_eq!(covered, model, "seed {seed}");
            }
        }
    }
}
