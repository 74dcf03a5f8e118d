//! The scan on Intel AMX (Xeon since Sapphire Rapids): one `tdpbssd` multiplies sixteen members'
//! codes by eight items' codes, 64 dimensions deep — 8,192 products in one instruction, where a
//! `vpdpbusd` makes 32 — so a pass for a batch of members is bound by reading the codes and
//! writing the scores, no longer by the multiplies.
//!
//! The item codes' tiles are already in the layout the instruction takes as its second operand
//! (four codes of each of eight rows side by side, slice after slice), so eight items load
//! straight from them, 32 bytes a row; the members' codes are packed once per scan, a row each.
//! Both are signed (`tdpbssd`), so no offset is taken off. Each step scores two tiles (sixteen
//! items) for up to 32 members, and the scores leave as sixteen to a 512-bit register. Used where
//! the codes' width is a multiple of 64 (whole tile rows); a scan's odd last tile goes through
//! the VNNI kernel, which every AMX CPU has. The operating system must grant the process the
//! tile state before its first tile instruction (Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM)`):
//! [`usable`] asks once, and the scan falls back to VNNI where it is refused.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;

use super::{ItemCodes, MemberCodes, ScanBlock, SLICE, TILE};

/// Rows of a tile register: the members of one member tile.
const ROWS: usize = 16;

/// Members per group: two member tiles.
const GROUP: usize = 2 * ROWS;

/// Codes per tile row: the dimensions one multiply covers.
const DEPTH: usize = 64;

/// Scores per member of one step: two item tiles.
const STEP: usize = 2 * TILE;

/// The fewest members a scan scores with AMX; fewer go through VNNI, whose pass for one member
/// is already bound by memory.
pub(super) const MIN_MEMBERS: usize = 4;

/// Whether codes of `width` codes a row are scanned with AMX (whole tile rows).
pub(super) fn fits(width: usize) -> bool {
    width.is_multiple_of(DEPTH)
}

/// Whether this CPU has AMX-INT8 and AVX-512 and the operating system grants this process the
/// tile state (asked once; the answer is kept).
pub(super) fn usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is in every x86-64 CPU.
        let leaf = unsafe { __cpuid_count(7, 0) };
        let amx = leaf.edx >> 24 & 1 == 1 && leaf.edx >> 25 & 1 == 1;
        amx && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && request_tile_state()
    })
}

/// Asks Linux for the tile data state (XTILEDATA, state component 18) for this process.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this arch_prctl takes a state component number and touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads (palette 1): tiles 0 and 1 hold sixteen members'
/// codes (`DEPTH` bytes a row), 2 and 3 two item tiles (`DEPTH / 4` rows of eight items' four
/// codes), 4 to 7 the sums of member tile × item tile (sixteen rows of eight `i32`).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn new() -> TileConfig {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..2 {
            config.colsb[t] = DEPTH as u16;
            config.rows[t] = ROWS as u8;
        }
        for t in 2..4 {
            config.colsb[t] = (TILE * SLICE) as u16;
            config.rows[t] = (DEPTH / SLICE) as u8;
        }
        for t in 4..8 {
            config.colsb[t] = (TILE * 4) as u16;
            config.rows[t] = ROWS as u8;
        }
        config
    }
}

/// One step's sums: member `m`'s sixteen at `[m · STEP ..]`.
#[repr(C, align(64))]
struct Products([i32; GROUP * STEP]);

/// The scan of `tiles` for every member into `block`, as [`super::ItemCodes::scan`] describes.
///
/// # Safety
/// The CPU has AMX-INT8 and AVX-512 VNNI and the process holds the tile state ([`usable`]);
/// `codes.width` [`fits`]; the block's bounds hold for `tiles` and `members` (the caller's
/// asserts).
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn scan(
    codes: &ItemCodes,
    tiles: Range<usize>,
    members: &[&MemberCodes],
    block: &mut ScanBlock<'_>,
) {
    let w = codes.width;
    let pairs_end = tiles.start + tiles.len() / 2 * 2;
    let config = TileConfig::new();
    let mut packed = vec![0i8; GROUP * w];
    let mut products = Products([0; GROUP * STEP]);
    for (index, group) in members.chunks(GROUP).enumerate() {
        let first = index * GROUP;
        packed.fill(0);
        for (row, member) in packed.chunks_exact_mut(w).zip(group) {
            row.copy_from_slice(&member.codes);
        }
        let member_scales: Vec<f32> = group.iter().map(|m| m.scale).collect();
        let both = group.len() > ROWS;
        // Codes one tile row wide: the members' tiles stay loaded for the whole scan.
        let resident = w == DEPTH;
        // SAFETY: the tile state is granted (the caller's); the configuration is a valid palette
        // 1 configuration, aligned; every tile load and store below stays within `packed`,
        // `codes.tiles` (pairs of tiles within the scan's range) and `products`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
            if resident {
                load_members(&packed, w, 0, both);
            }
            let mut t = tiles.start;
            while t < pairs_end {
                multiply(codes, t, &packed, both, resident, &mut products);
                write_scores(
                    codes,
                    t,
                    tiles.start,
                    &member_scales,
                    first,
                    &products,
                    block,
                );
                t += 2;
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
    if pairs_end < tiles.end {
        // SAFETY: the CPU has VNNI (the caller's); the same bounds.
        unsafe { super::vnni::scan_from(codes, pairs_end..tiles.end, tiles.start, members, block) }
    }
}

/// Loads the members' codes `c · DEPTH..` into tiles 0 (members 0 to 15) and, with `both`, 1.
///
/// # Safety
/// Tiles configured by [`TileConfig`]; `packed` holds `GROUP · w` codes, `(c + 1) · DEPTH ≤ w`.
#[inline]
unsafe fn load_members(packed: &[i8], w: usize, c: usize, both: bool) {
    // SAFETY: each load reads `ROWS` rows of `DEPTH` bytes at stride `w` within `packed`.
    unsafe {
        asm!(
            "tileloadd tmm0, [{a} + {aw}*1]",
            a = in(reg) packed.as_ptr().add(c * DEPTH),
            aw = in(reg) w,
            options(nostack, readonly)
        );
        if both {
            asm!(
                "tileloadd tmm1, [{a} + {aw}*1]",
                a = in(reg) packed.as_ptr().add(ROWS * w + c * DEPTH),
                aw = in(reg) w,
                options(nostack, readonly)
            );
        }
    }
}

/// Tiles of codes fetched ahead of the pair being multiplied: far enough that they arrive from
/// memory in time.
const PREFETCH_TILES: usize = 16;

/// The sums of the (up to 32) members in `packed` against tiles `t` and `t + 1`, into `products`;
/// with `resident`, the members' tiles are loaded already (codes one tile row wide).
///
/// # Safety
/// Tiles configured by [`TileConfig`]; tiles `t` and `t + 1` exist; `packed` holds
/// `GROUP · width` codes.
#[inline]
unsafe fn multiply(
    codes: &ItemCodes,
    t: usize,
    packed: &[i8],
    both: bool,
    resident: bool,
    products: &mut Products,
) {
    let w = codes.width;
    let slice_row = TILE * SLICE;
    // SAFETY: see the function's contract: each load reads `ROWS` rows of `DEPTH` bytes at
    // stride `w` from `packed`, or `DEPTH / SLICE` rows of 32 bytes at stride 32 from a tile of
    // codes; the stores write 16 rows of 32 bytes at stride 64 into `products`.
    unsafe {
        let items = codes.tiles.as_ptr().add(t * TILE * w);
        let next = items.add(TILE * w);
        // Prefetches never fault, so a line past the codes' end is harmless.
        let ahead = items.wrapping_add(PREFETCH_TILES * TILE * w);
        for line in (0..2 * TILE * w).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
        }
        asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nostack, nomem)
        );
        for c in 0..w / DEPTH {
            if !resident {
                load_members(packed, w, c, both);
            }
            let depth = c * DEPTH / SLICE * slice_row;
            asm!(
                "tileloadd tmm2, [{x} + {xw}*1]",
                "tileloadd tmm3, [{y} + {xw}*1]",
                "tdpbssd tmm4, tmm0, tmm2",
                "tdpbssd tmm5, tmm0, tmm3",
                x = in(reg) items.add(depth),
                y = in(reg) next.add(depth),
                xw = in(reg) slice_row,
                options(nostack, readonly)
            );
            if both {
                asm!(
                    "tdpbssd tmm6, tmm1, tmm2",
                    "tdpbssd tmm7, tmm1, tmm3",
                    options(nostack, nomem)
                );
            }
        }
        let out = products.0.as_mut_ptr();
        asm!(
            "tilestored [{p} + {s}*1], tmm4",
            "tilestored [{q} + {s}*1], tmm5",
            p = in(reg) out,
            q = in(reg) out.add(TILE),
            s = in(reg) STEP * 4,
            options(nostack)
        );
        if both {
            asm!(
                "tilestored [{p} + {s}*1], tmm6",
                "tilestored [{q} + {s}*1], tmm7",
                p = in(reg) out.add(ROWS * STEP),
                q = in(reg) out.add(ROWS * STEP + TILE),
                s = in(reg) STEP * 4,
                options(nostack)
            );
        }
    }
}

/// Scales `products` into the group's scores of tiles `t` and `t + 1` (the group's members have
/// the scales `member_scales`) and flags the tiles holding a score above each member's threshold.
///
/// # Safety
/// AVX-512F; tiles `t` and `t + 1` lie within the scan (which began at `first_tile`) and the
/// block's bounds hold for members `first..first + member_scales.len()`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn write_scores(
    codes: &ItemCodes,
    t: usize,
    first_tile: usize,
    member_scales: &[f32],
    first: usize,
    products: &Products,
    block: &mut ScanBlock<'_>,
) {
    let g = t - first_tile;
    // SAFETY: see the function's contract; `g` is even (pairs from the scan's first tile), so
    // both of its flag bits lie in one word.
    unsafe {
        let scales = _mm512_loadu_ps(codes.scales.as_ptr().add(t * TILE));
        let thresholds = block.thresholds.as_ptr().add(first);
        let scores_at = block
            .scores
            .as_mut_ptr()
            .add(first * block.stride + g * TILE);
        let flags_at = block.flags.as_mut_ptr().add(first * block.words + g / 64);
        for (m, &scale) in member_scales.iter().enumerate() {
            let dots =
                _mm512_cvtepi32_ps(_mm512_load_si512(products.0.as_ptr().add(m * STEP).cast()));
            let factor = _mm512_mul_ps(scales, _mm512_set1_ps(scale));
            let scores = _mm512_mul_ps(dots, factor);
            _mm512_storeu_ps(scores_at.add(m * block.stride), scores);
            let threshold = _mm512_set1_ps(*thresholds.add(m));
            let above = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(scores, threshold);
            let bits = u64::from(above & 0xff != 0) | u64::from(above >> 8 != 0) << 1;
            *flags_at.add(m * block.words) |= bits << (g % 64);
        }
    }
}
