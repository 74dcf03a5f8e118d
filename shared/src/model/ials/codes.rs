//! The i8 codes the whole-catalog scan reads, and the scan itself.
//!
//! Item rows are quantised symmetrically to 8 bits with one scale per row (`y ≈ scale · q`), a
//! member's vector to 7 bits. The codes are laid out in tiles of [`TILE`] rows interleaved four
//! codes at a time — tile `t`, slice `d`, row `r` at `t·8·w + d·32 + r·4` — so that one 32-byte
//! load holds the same four dimensions of eight rows, one `vpmaddubsw` against the member's four
//! codes broadcast scores all eight, and a tile's eight scores come out in one register with no
//! horizontal sum. The kernel scores a few tiles for a few members per step (register blocking),
//! so each load of item codes serves several members of a batch. AVX2 where the build has it,
//! portable integer code otherwise, the two equal to the last bit. Allocates nothing per row.

use std::ops::Range;

/// Rows per tile.
pub(super) const TILE: usize = 8;

/// Codes of one row per 32-bit lane.
const SLICE: usize = 4;

/// The offset that makes a member's 7-bit codes (`-63..=63`) unsigned (`1..=127`), a power of
/// two: `MEMBER_OFFSET = 1 << MEMBER_SHIFT`.
const MEMBER_SHIFT: i32 = 6;
const MEMBER_OFFSET: i32 = 1 << MEMBER_SHIFT;

/// Quantises `row` into `out` (`-127..=127`); returns the scale (0 for a zero or non-finite row).
pub(super) fn quantize(row: &[f32], out: &mut [i8]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.iter_mut().for_each(|q| *q = 0);
        return 0.0;
    }
    let scale = max / 127.0;
    for (q, x) in out.iter_mut().zip(row) {
        *q = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Every item's codes, tiled, with the per-row scale and code sum the scan needs. Rows past the
/// catalog's end that fill its last tile are zero with scale 0.
#[derive(Debug, Clone)]
pub(super) struct ItemCodes {
    rows: usize,
    /// Codes per row: the factor count rounded up to a whole slice (the padding codes are 0).
    width: usize,
    tiles: Vec<i8>,
    scales: Vec<f32>,
    /// `Σ_j q[i][j]`, for the AVX2 kernel's member offset.
    sums: Vec<i32>,
}

impl ItemCodes {
    /// Quantises row-major `rows × k` factors.
    pub(super) fn new(factors: &[f32], k: usize) -> ItemCodes {
        let rows = factors.len() / k;
        let width = k.next_multiple_of(SLICE);
        let padded = rows.next_multiple_of(TILE);
        let mut tiles = vec![0i8; padded * width];
        let mut scales = vec![0.0f32; padded];
        let mut sums = vec![0i32; padded];
        let mut q = vec![0i8; width];
        for (i, row) in factors.chunks_exact(k).enumerate() {
            scales[i] = quantize(row, &mut q[..k]);
            sums[i] = q.iter().map(|&c| i32::from(c)).sum();
            let (t, r) = (i / TILE, i % TILE);
            for (d, slice) in q.chunks_exact(SLICE).enumerate() {
                let at = t * TILE * width + d * TILE * SLICE + r * SLICE;
                tiles[at..at + SLICE].copy_from_slice(slice);
            }
        }
        ItemCodes {
            rows,
            width,
            tiles,
            scales,
            sums,
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.tiles.len() + self.scales.len() * 8
    }

    /// Codes per row: the factor count rounded up to a whole slice.
    pub(super) fn width(&self) -> usize {
        self.width
    }

    /// The codes of row `i` (`width` of them).
    #[cfg(test)]
    pub(super) fn row(&self, i: usize) -> Vec<i8> {
        let (t, r) = (i / TILE, i % TILE);
        (0..self.width)
            .map(|j| {
                self.tiles
                    [t * TILE * self.width + (j / SLICE) * TILE * SLICE + r * SLICE + j % SLICE]
            })
            .collect()
    }

    #[cfg(test)]
    pub(super) fn scale(&self, i: usize) -> f32 {
        self.scales[i]
    }

    /// Approximate scores of the rows in `rows` (its start a multiple of [`TILE`]) for every
    /// member, into `block` (see [`ScanBlock`]).
    pub(super) fn scan(
        &self,
        rows: Range<usize>,
        members: &[&MemberCodes],
        block: &mut ScanBlock<'_>,
    ) {
        let tiles = self.tile_range(rows);
        let ScanBlock {
            scores,
            stride,
            thresholds,
            flags,
            words,
        } = block;
        assert!(tiles.len() * TILE <= *stride && members.len() * *stride <= scores.len());
        assert!(thresholds.len() >= members.len() && flags.len() >= members.len() * *words);
        assert!(tiles.len() <= *words * 64);
        for m in members {
            assert_eq!(
                m.words.len() * SLICE,
                self.width,
                "a member of the wrong width"
            );
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        {
            // SAFETY: this build targets AVX2 (`target_feature = "avx2"` above), so every CPU it
            // runs on has it; the bounds the kernel relies on are asserted above.
            unsafe { avx2::scan(self, tiles, members, block) };
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
        self.scan_portable(tiles, members, block);
    }

    fn tile_range(&self, rows: Range<usize>) -> Range<usize> {
        assert!(
            rows.start.is_multiple_of(TILE) && rows.end <= self.rows,
            "a scan starts on a tile"
        );
        rows.start / TILE..rows.end.div_ceil(TILE)
    }

    /// The scan in portable integer code: what the AVX2 kernel must equal bit for bit.
    #[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
    pub(super) fn scan_portable(
        &self,
        tiles: Range<usize>,
        members: &[&MemberCodes],
        block: &mut ScanBlock<'_>,
    ) {
        let w = self.width;
        let (stride, words) = (block.stride, block.words);
        for (m, member) in members.iter().enumerate() {
            for (g, t) in tiles.clone().enumerate() {
                let tile = &self.tiles[t * TILE * w..(t + 1) * TILE * w];
                let mut above = false;
                for r in 0..TILE {
                    let mut dot = 0i32;
                    for (d, slice) in member.codes.chunks_exact(SLICE).enumerate() {
                        let at = d * TILE * SLICE + r * SLICE;
                        for (&c, &q) in slice.iter().zip(&tile[at..at + SLICE]) {
                            dot += i32::from(c) * i32::from(q);
                        }
                    }
                    let row = t * TILE + r;
                    let score = dot as f32 * (self.scales[row] * member.scale);
                    block.scores[m * stride + g * TILE + r] = score;
                    above |= score > block.thresholds[m];
                }
                block.flags[m * words + g / 64] |= u64::from(above) << (g % 64);
            }
        }
    }
}

/// Where a scan writes, per member `m`: the score of the block's row `j` at
/// `scores[m · stride + j]` (whole tiles are scored, so `stride` holds the block's rows rounded up
/// to a tile; scores past the block's end are the next rows', or zero past the catalog, for the
/// caller to ignore), and bit `g` of its `words` flag words from `flags[m · words]` set when a
/// score of the block's `g`-th tile is above `thresholds[m]` (flags are only ever set).
pub(super) struct ScanBlock<'a> {
    pub(super) scores: &'a mut [f32],
    pub(super) stride: usize,
    pub(super) thresholds: &'a [f32],
    pub(super) flags: &'a mut [u64],
    pub(super) words: usize,
}

/// A member vector quantised for the scan: 7-bit codes (`m ≈ scale · code`), padded to the item
/// codes' width with zeros, and the same codes offset into `1..=127` and packed four to a word
/// for the AVX2 kernel's broadcasts.
pub(super) struct MemberCodes {
    #[cfg_attr(
        all(target_arch = "x86_64", target_feature = "avx2", not(test)),
        allow(dead_code)
    )]
    pub(super) codes: Vec<i8>,
    words: Vec<u32>,
    pub(super) scale: f32,
}

impl MemberCodes {
    pub(super) fn new(user: &[f32], width: usize) -> MemberCodes {
        let max = user.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let limit = (MEMBER_OFFSET - 1) as f32;
        let scale = if max == 0.0 || !max.is_finite() {
            0.0
        } else {
            max / limit
        };
        let mut codes: Vec<i8> = user
            .iter()
            .map(|x| {
                if scale == 0.0 {
                    0
                } else {
                    (x / scale).round().clamp(-limit, limit) as i8
                }
            })
            .collect();
        codes.resize(width.max(codes.len()), 0);
        let words = codes
            .chunks(SLICE)
            .map(|slice| {
                let mut word = [MEMBER_OFFSET as u8; SLICE];
                for (b, &c) in word.iter_mut().zip(slice) {
                    *b = (i32::from(c) + MEMBER_OFFSET) as u8;
                }
                u32::from_le_bytes(word)
            })
            .collect();
        MemberCodes {
            codes,
            words,
            scale,
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod avx2 {
    //! The AVX2 scan. The member's codes are 7-bit and offset by [`MEMBER_OFFSET`] into
    //! `1..=127`, so `vpmaddubsw` takes four of them broadcast as its unsigned operand and a slice
    //! of eight rows as its signed one (pairs of products, at most 2 × 127 × 127: no saturation),
    //! and `vpmaddwd` widens to one i32 per row. The offset's share, `MEMBER_OFFSET · Σ q`, is
    //! taken off with the row's stored code sum.

    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{ItemCodes, MemberCodes, ScanBlock, MEMBER_SHIFT, SLICE, TILE};

    /// Members per step of the kernel, and tiles per step: 4 × 2 accumulators, each slice of a
    /// tile loaded once for four members.
    const MEMBERS: usize = 4;
    const TILES: usize = 2;

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scan(
        codes: &ItemCodes,
        tiles: Range<usize>,
        members: &[&MemberCodes],
        block: &mut ScanBlock<'_>,
    ) {
        let mut first = 0;
        while first < members.len() {
            let group = &members[first..(first + MEMBERS).min(members.len())];
            let tiles = tiles.clone();
            // SAFETY (for each call): the caller's asserts bound every index the kernel forms.
            unsafe {
                match group.len() {
                    1 => run::<1>(codes, tiles, group, first, block),
                    2 => run::<2>(codes, tiles, group, first, block),
                    3 => run::<3>(codes, tiles, group, first, block),
                    _ => run::<MEMBERS>(codes, tiles, group, first, block),
                }
            }
            first += group.len();
        }
    }

    /// The members `first..first + M` of the scan.
    #[target_feature(enable = "avx2")]
    unsafe fn run<const M: usize>(
        codes: &ItemCodes,
        tiles: Range<usize>,
        members: &[&MemberCodes],
        first: usize,
        block: &mut ScanBlock<'_>,
    ) {
        let mut t = tiles.start;
        unsafe {
            while t + TILES <= tiles.end {
                step::<M, TILES>(codes, t, tiles.start, members, first, block);
                t += TILES;
            }
            if t < tiles.end {
                step::<M, 1>(codes, t, tiles.start, members, first, block);
            }
        }
    }

    /// `R` tiles from tile `t` for `M` members. (The loops index the accumulator grid and the
    /// loaded slices by the same constants, unrolled; iterators would hide that.)
    #[target_feature(enable = "avx2")]
    #[inline]
    #[allow(clippy::needless_range_loop)]
    unsafe fn step<const M: usize, const R: usize>(
        codes: &ItemCodes,
        t: usize,
        first_tile: usize,
        members: &[&MemberCodes],
        first: usize,
        block: &mut ScanBlock<'_>,
    ) {
        let w = codes.width;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); R]; M];
        // SAFETY: tiles `t..t + R` lie in `codes.tiles` (the caller's tile range is within the
        // padded rows); each member has `w / SLICE` words (asserted by the caller).
        unsafe {
            let tile = codes.tiles.as_ptr().add(t * TILE * w);
            let words: [*const u32; M] = std::array::from_fn(|m| members[m].words.as_ptr());
            for d in 0..w / SLICE {
                let x: [__m256i; R] = std::array::from_fn(|r| {
                    _mm256_loadu_si256(tile.add(r * TILE * w + d * TILE * SLICE).cast())
                });
                for m in 0..M {
                    let u = _mm256_set1_epi32(*words[m].add(d) as i32);
                    for r in 0..R {
                        let pairs = _mm256_maddubs_epi16(u, x[r]);
                        acc[m][r] = _mm256_add_epi32(acc[m][r], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for r in 0..R {
                let row = (t + r) * TILE;
                let g = t + r - first_tile;
                let sums = _mm256_loadu_si256(codes.sums.as_ptr().add(row).cast());
                let offset = _mm256_slli_epi32::<MEMBER_SHIFT>(sums);
                let scales = _mm256_loadu_ps(codes.scales.as_ptr().add(row));
                for m in 0..M {
                    let member = first + m;
                    let dots = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[m][r], offset));
                    let factor = _mm256_mul_ps(scales, _mm256_set1_ps(members[m].scale));
                    let scores = _mm256_mul_ps(dots, factor);
                    let at = block
                        .scores
                        .as_mut_ptr()
                        .add(member * block.stride + g * TILE);
                    _mm256_storeu_ps(at, scores);
                    let threshold = _mm256_set1_ps(*block.thresholds.get_unchecked(member));
                    let above = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(scores, threshold));
                    *block.flags.get_unchecked_mut(member * block.words + g / 64) |=
                        u64::from(above != 0) << (g % 64);
                }
            }
        }
    }
}
