//! The i8 codes the whole-catalog scan reads, and the scan itself.
//!
//! Item rows are quantised symmetrically to 8 bits with one scale per row (`y ≈ scale · q`), a
//! member's vector to 7 bits. The codes are laid out in tiles of [`TILE`] rows interleaved four
//! codes at a time — tile `t`, slice `d`, row `r` at `t·8·w + d·32 + r·4` — so that one 32-byte
//! load holds the same four dimensions of eight rows, one `vpmaddubsw` against the member's four
//! codes broadcast scores all eight, and a tile's eight scores come out in one register with no
//! horizontal sum. The kernel scores a few tiles for a few members per step (register blocking),
//! so each load of item codes serves several members of a batch. AMX where the CPU has it and a
//! batch has a few members (`codes/amx.rs`: the tiles are already the layout its multiply reads),
//! AVX-512 VNNI where the CPU has it, AVX2 where the build has it, portable integer code
//! otherwise, all equal to the last bit.
//! Allocates nothing per row.

use std::ops::Range;

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod amx;

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
    /// `Σ_j q[i][j]`, for the x86 kernels' member offset.
    sums: Vec<i32>,
}

impl ItemCodes {
    /// Codes for `rows` rows of `k` factors, every row zero until [`ItemCodes::fill`]ed.
    pub(super) fn zeroed(rows: usize, k: usize) -> ItemCodes {
        let width = k.next_multiple_of(SLICE);
        let padded = rows.next_multiple_of(TILE);
        ItemCodes {
            rows,
            width,
            tiles: vec![0i8; padded * width],
            scales: vec![0.0f32; padded],
            sums: vec![0i32; padded],
        }
    }

    /// Quantises the row-major rows `factors` (of `k` factors each, as the codes were made
    /// for) into rows `first..`.
    pub(super) fn fill(&mut self, first: usize, factors: &[f32], k: usize) {
        let width = self.width;
        assert_eq!(k.next_multiple_of(SLICE), width, "rows of another width");
        let mut q = vec![0i8; width];
        for (j, row) in factors.chunks_exact(k).enumerate() {
            let i = first + j;
            self.scales[i] = quantize(row, &mut q[..k]);
            self.sums[i] = q.iter().map(|&c| i32::from(c)).sum();
            let (t, r) = (i / TILE, i % TILE);
            for (d, slice) in q.chunks_exact(SLICE).enumerate() {
                let at = t * TILE * width + d * TILE * SLICE + r * SLICE;
                self.tiles[at..at + SLICE].copy_from_slice(slice);
            }
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
        let kernel = match Kernel::best() {
            // One member's pass is bound by memory, whichever kernel multiplies.
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            Kernel::Amx if members.len() < amx::MIN_MEMBERS => Kernel::Vnni,
            kernel => kernel,
        };
        self.scan_with(kernel, rows, members, block);
    }

    /// [`ItemCodes::scan`] with the given kernel (one [`Kernel::available`] on this CPU).
    pub(super) fn scan_with(
        &self,
        kernel: Kernel,
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
        match kernel {
            Kernel::Portable => self.scan_portable(tiles, members, block),
            // SAFETY: this build targets AVX2 (the variant exists only then), so every CPU it
            // runs on has it; the bounds the kernel relies on are asserted above.
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            Kernel::Avx2 => unsafe { avx2::scan(self, tiles, members, block) },
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            Kernel::Vnni => {
                assert!(
                    matches!(Kernel::fastest(), Kernel::Vnni | Kernel::Amx),
                    "the VNNI kernel on a CPU without AVX-512 VNNI"
                );
                // SAFETY: the CPU has AVX-512 VNNI and VL (checked just above: `fastest` asks
                // the CPU, cached; AMX is chosen only with them); bounds as above.
                unsafe { vnni::scan(self, tiles, members, block) }
            }
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            Kernel::Amx => {
                assert!(
                    Kernel::fastest() == Kernel::Amx,
                    "the AMX kernel on a CPU without AMX"
                );
                if amx::fits(self.width) {
                    // SAFETY: the CPU has AMX-INT8, AVX-512 VNNI and the tile state (checked
                    // just above: `fastest` asks, cached); the width fits; bounds as above.
                    unsafe { amx::scan(self, tiles, members, block) }
                } else {
                    // SAFETY: every AMX CPU this kernel is chosen on has VNNI (`amx::usable`).
                    unsafe { vnni::scan(self, tiles, members, block) }
                }
            }
        }
    }

    fn tile_range(&self, rows: Range<usize>) -> Range<usize> {
        assert!(
            rows.start.is_multiple_of(TILE) && rows.end <= self.rows,
            "a scan starts on a tile"
        );
        rows.start / TILE..rows.end.div_ceil(TILE)
    }

    /// The scan in portable integer code: what the x86 kernels must equal bit for bit.
    fn scan_portable(
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
/// for the x86 kernels' broadcasts.
pub(super) struct MemberCodes {
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

/// The scan's implementations. [`Kernel::best`] is the one this CPU runs; the others stay
/// callable so that tests hold each to the portable one, bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// Integer code the compiler may vectorise: any CPU (on an AVX2 build, when asked for).
    Portable,
    /// `vpmaddubsw` + `vpmaddwd`: every x86-64-v3 CPU (this build's baseline).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    Avx2,
    /// `vpdpbusd` (AVX-512 VNNI on 256-bit registers): one instruction per four codes of eight
    /// rows where AVX2 needs three, and 32 registers, so eight members share each load. Chosen
    /// at run time (Intel since Ice Lake, AMD since Zen 4).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    Vnni,
    /// `tdpbssd` (AMX-INT8): sixteen members by eight items, 64 dimensions, in one instruction
    /// (`codes/amx.rs`). Chosen at run time (Intel Xeon since Sapphire Rapids) for scans of a
    /// few members or more whose width is a multiple of 64; VNNI otherwise.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    Amx,
}

impl Kernel {
    /// The kernel scans run with: the fastest this CPU runs, unless `RECSYS_SCAN_KERNEL` names
    /// a slower one (`vnni`, `avx2`, `portable`) — for comparing kernels on one machine.
    pub(super) fn best() -> Kernel {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let fastest = Kernel::fastest();
            match std::env::var("RECSYS_SCAN_KERNEL").as_deref() {
                Ok("portable") => Kernel::Portable,
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
                Ok("avx2") => Kernel::Avx2,
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
                Ok("vnni") if fastest == Kernel::Amx => Kernel::Vnni,
                _ => fastest,
            }
        })
    }

    fn fastest() -> Kernel {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        {
            // `is_x86_feature_detected!` caches what it reads.
            if amx::usable() {
                Kernel::Amx
            } else if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                Kernel::Vnni
            } else {
                Kernel::Avx2
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
        Kernel::Portable
    }

    /// Every kernel this CPU runs, best last.
    #[cfg(test)]
    pub(super) fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        {
            all.push(Kernel::Avx2);
            if matches!(Kernel::fastest(), Kernel::Vnni | Kernel::Amx) {
                all.push(Kernel::Vnni);
            }
            if Kernel::fastest() == Kernel::Amx {
                all.push(Kernel::Amx);
            }
        }
        all
    }
}

/// One x86 kernel: `step` scores `R` tiles for `M` members, `MEMBERS` members per group, the
/// products of four codes of eight rows accumulated into a lane per row by `$mac`. The member's
/// codes are 7-bit and offset by [`MEMBER_OFFSET`] into `1..=127`, so the unsigned operand takes
/// four of them broadcast and the signed one a slice of eight rows (with `vpmaddubsw`, pairs of
/// products are at most 2 × 127 × 127: no saturation, so both kernels give the same integers);
/// the offset's share, `MEMBER_OFFSET · Σ q`, is taken off with the row's stored code sum.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
macro_rules! x86_kernel {
    ($name:ident, $features:literal, $members:literal, |$acc:ident, $u:ident, $x:ident| $mac:expr) => {
        mod $name {
            use std::arch::x86_64::*;
            use std::ops::Range;

            use super::{ItemCodes, MemberCodes, ScanBlock, MEMBER_SHIFT, SLICE, TILE};

            /// Members per step of the kernel, and tiles per step: each slice of a tile is
            /// loaded once for every member of the step.
            const MEMBERS: usize = $members;
            const TILES: usize = 2;

            #[target_feature(enable = $features)]
            pub(in super::super) unsafe fn scan(
                codes: &ItemCodes,
                tiles: Range<usize>,
                members: &[&MemberCodes],
                block: &mut ScanBlock<'_>,
            ) {
                // SAFETY: the caller's.
                unsafe { scan_from(codes, tiles.clone(), tiles.start, members, block) }
            }

            /// [`scan`] of the tiles `tiles`, written to the block as the tiles of a scan that
            /// began at tile `first_tile` (at most `tiles.start`).
            #[target_feature(enable = $features)]
            pub(in super::super) unsafe fn scan_from(
                codes: &ItemCodes,
                tiles: Range<usize>,
                first_tile: usize,
                members: &[&MemberCodes],
                block: &mut ScanBlock<'_>,
            ) {
                let mut first = 0;
                while first < members.len() {
                    let group = &members[first..(first + MEMBERS).min(members.len())];
                    let (t, f) = (tiles.clone(), first_tile);
                    // SAFETY (for each call): the caller's asserts bound every index the
                    // kernel forms.
                    unsafe {
                        match group.len() {
                            1 => run::<1>(codes, t, f, group, first, block),
                            2 => run::<2>(codes, t, f, group, first, block),
                            3 => run::<3>(codes, t, f, group, first, block),
                            4 if MEMBERS > 4 => run::<4>(codes, t, f, group, first, block),
                            5 if MEMBERS > 5 => run::<5>(codes, t, f, group, first, block),
                            6 if MEMBERS > 6 => run::<6>(codes, t, f, group, first, block),
                            7 if MEMBERS > 7 => run::<7>(codes, t, f, group, first, block),
                            _ => run::<MEMBERS>(codes, t, f, group, first, block),
                        }
                    }
                    first += group.len();
                }
            }

            /// The members `first..first + M` of the scan.
            #[target_feature(enable = $features)]
            unsafe fn run<const M: usize>(
                codes: &ItemCodes,
                tiles: Range<usize>,
                first_tile: usize,
                members: &[&MemberCodes],
                first: usize,
                block: &mut ScanBlock<'_>,
            ) {
                let mut t = tiles.start;
                unsafe {
                    while t + TILES <= tiles.end {
                        step::<M, TILES>(codes, t, first_tile, members, first, block);
                        t += TILES;
                    }
                    if t < tiles.end {
                        step::<M, 1>(codes, t, first_tile, members, first, block);
                    }
                }
            }

            /// `R` tiles from tile `t` for `M` members. (The loops index the accumulator grid
            /// and the loaded slices by the same constants, unrolled; iterators would hide
            /// that.)
            #[target_feature(enable = $features)]
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
                let mut acc = [[_mm256_setzero_si256(); R]; M];
                // SAFETY: tiles `t..t + R` lie in `codes.tiles` (the caller's tile range is
                // within the padded rows); each member has `w / SLICE` words (asserted by the
                // caller).
                unsafe {
                    let tile = codes.tiles.as_ptr().add(t * TILE * w);
                    let words: [*const u32; M] = std::array::from_fn(|m| members[m].words.as_ptr());
                    for d in 0..w / SLICE {
                        let x: [__m256i; R] = std::array::from_fn(|r| {
                            _mm256_loadu_si256(tile.add(r * TILE * w + d * TILE * SLICE).cast())
                        });
                        for m in 0..M {
                            let $u = _mm256_set1_epi32(*words[m].add(d) as i32);
                            for r in 0..R {
                                let $acc = acc[m][r];
                                let $x = x[r];
                                acc[m][r] = $mac;
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
                            let above =
                                _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(scores, threshold));
                            *block.flags.get_unchecked_mut(member * block.words + g / 64) |=
                                u64::from(above != 0) << (g % 64);
                        }
                    }
                }
            }
        }
    };
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
x86_kernel!(avx2, "avx2", 4, |acc, u, x| _mm256_add_epi32(
    acc,
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
));

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
x86_kernel!(
    vnni,
    "avx2,avx512f,avx512bw,avx512vl,avx512vnni",
    8,
    |acc, u, x| _mm256_dpbusd_epi32(acc, u, x)
);
