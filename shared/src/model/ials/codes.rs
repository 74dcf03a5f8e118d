//! The i8 codes the whole-catalog scan reads: item rows quantised symmetrically to 8 bits with
//! one scale per row (`y ≈ scale · q`), a member's vector to 7 bits, and the scan of a run of
//! rows against one member — AVX2 where the build has it, portable integer code otherwise, the
//! two equal to the last bit. Allocates nothing per row.

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

#[inline]
pub(super) fn dot_i8(a: &[i8], b: &[i16]) -> i32 {
    // i8 × i16 products summed in i32: LLVM turns this into vpmovsxbw + vpmaddwd on AVX2.
    let mut acc = [0i32; 16];
    let chunks = a.len() / 16;
    for c in 0..chunks {
        for l in 0..16 {
            acc[l] += a[c * 16 + l] as i32 * b[c * 16 + l] as i32;
        }
    }
    let mut sum: i32 = acc.iter().sum();
    for i in chunks * 16..a.len() {
        sum += a[i] as i32 * b[i] as i32;
    }
    sum
}

/// The widest vector the AVX2 scan takes (its per-query registers live on the stack); wider
/// ones take the portable path.
const MAX_SIMD_FACTORS: usize = 512;

/// The offset that makes a member's 7-bit codes (`-63..=63`) unsigned (`1..=127`), a power of
/// two: `MEMBER_OFFSET = 1 << MEMBER_SHIFT`.
const MEMBER_SHIFT: i32 = 6;
const MEMBER_OFFSET: i32 = 1 << MEMBER_SHIFT;

/// A member vector quantised for the scan: 7-bit codes (`m ≈ scale · code`), and the same codes
/// offset into `1..=127` for the unsigned operand of the AVX2 kernel.
pub(super) struct QueryCodes {
    pub(super) codes: Vec<i8>,
    offset: Vec<i8>,
    pub(super) scale: f32,
}

impl QueryCodes {
    pub(super) fn new(user: &[f32]) -> QueryCodes {
        let max = user.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let limit = (MEMBER_OFFSET - 1) as f32;
        let scale = if max == 0.0 || !max.is_finite() {
            0.0
        } else {
            max / limit
        };
        let codes: Vec<i8> = user
            .iter()
            .map(|x| {
                if scale == 0.0 {
                    0
                } else {
                    (x / scale).round().clamp(-limit, limit) as i8
                }
            })
            .collect();
        let offset = codes
            .iter()
            .map(|&c| (i32::from(c) + MEMBER_OFFSET) as i8)
            .collect();
        QueryCodes {
            codes,
            offset,
            scale,
        }
    }
}

/// Approximate scores of the rows `codes` (row-major, `k` per row, with their `scales` and
/// `code_sums`) for `query`, into `out`.
pub(super) fn scan_rows(
    codes: &[i8],
    k: usize,
    query: &QueryCodes,
    scales: &[f32],
    code_sums: &[i32],
    out: &mut [f32],
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if k.is_multiple_of(32) && k <= MAX_SIMD_FACTORS {
        // SAFETY: this build targets AVX2 (`target_feature = "avx2"` above), so every CPU it
        // runs on has it.
        unsafe {
            scan_i8_avx2(codes, k, query, scales, code_sums, out);
        }
        return;
    }
    let _ = code_sums;
    let user: Vec<i16> = query.codes.iter().map(|&q| i16::from(q)).collect();
    for ((row, scale), o) in codes.chunks_exact(k).zip(scales).zip(out.iter_mut()) {
        *o = dot_i8(row, &user) as f32 * (scale * query.scale);
    }
}

/// The quantised scan with AVX2 for `k` a multiple of 32. The member's codes are 7-bit and
/// offset by [`MEMBER_OFFSET`] into `1..=127`, so `vpmaddubsw` takes them as its unsigned operand
/// and the item row, straight from memory, as its signed one: per 32 bytes of a row one
/// `vpmaddubsw` (pairs of products, at most 2 × 127 × 127, no saturation) and one `vpmaddwd`
/// widening to i32. The offset's share, `MEMBER_OFFSET · Σ q`, is taken off with the row's
/// stored code sum. One pass over the i8 matrix, a quarter of the f32 matrix's bytes.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx2")]
fn scan_i8_avx2(
    matrix: &[i8],
    k: usize,
    query: &QueryCodes,
    scales: &[f32],
    code_sums: &[i32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(k.is_multiple_of(32) && k <= MAX_SIMD_FACTORS && query.offset.len() == k);
    let chunks = k / 32;
    let mut member = [_mm256_setzero_si256(); MAX_SIMD_FACTORS / 32];
    for (c, chunk) in query.offset.chunks_exact(32).enumerate() {
        member[c] = load32(chunk);
    }
    let member = &member[..chunks];
    let ones = _mm256_set1_epi16(1);
    let row_sum = |row: &[i8]| -> __m256i {
        let mut acc = _mm256_setzero_si256();
        for (chunk, &u) in row.chunks_exact(32).zip(member) {
            let x = load32(chunk);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), ones));
        }
        acc
    };
    // Eight rows at a time: their partial sums reduce together (`vphaddd`, one lane swap), and
    // the eight scores are corrected, scaled and stored with one instruction each.
    let scale8 = _mm256_set1_ps(query.scale);
    let mut rows = matrix.chunks_exact(8 * k);
    let mut outs = out.chunks_exact_mut(8);
    let mut scale_chunks = scales.chunks_exact(8);
    let mut sum_chunks = code_sums.chunks_exact(8);
    for (((block, o), sc), cs) in (&mut rows)
        .zip(&mut outs)
        .zip(&mut scale_chunks)
        .zip(&mut sum_chunks)
    {
        let a: [__m256i; 8] = std::array::from_fn(|r| row_sum(&block[r * k..(r + 1) * k]));
        let h0123 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
        let h4567 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
        let sums = _mm256_add_epi32(
            _mm256_permute2x128_si256(h0123, h4567, 0x20),
            _mm256_permute2x128_si256(h0123, h4567, 0x31),
        );
        assert!(sc.len() == 8 && o.len() == 8 && cs.len() == 8);
        // SAFETY: `sc`, `cs` and `o` hold eight 4-byte values each (asserted); loads and stores
        // are unaligned.
        unsafe {
            let offset = _mm256_slli_epi32::<MEMBER_SHIFT>(_mm256_loadu_si256(cs.as_ptr().cast()));
            let dots = _mm256_sub_epi32(sums, offset);
            let factors = _mm256_mul_ps(_mm256_loadu_ps(sc.as_ptr()), scale8);
            _mm256_storeu_ps(
                o.as_mut_ptr(),
                _mm256_mul_ps(_mm256_cvtepi32_ps(dots), factors),
            );
        }
    }
    for (((row, scale), code_sum), o) in rows
        .remainder()
        .chunks_exact(k)
        .zip(scale_chunks.remainder())
        .zip(sum_chunks.remainder())
        .zip(outs.into_remainder())
    {
        let acc = row_sum(row);
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256(acc, 1),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        let dot = _mm_cvtsi128_si32(s) - (code_sum << MEMBER_SHIFT);
        *o = dot as f32 * (scale * query.scale);
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx2")]
#[inline]
fn load32(bytes: &[i8]) -> std::arch::x86_64::__m256i {
    assert!(bytes.len() >= 32);
    // SAFETY: `bytes` holds at least 32 bytes (asserted); the load is unaligned.
    unsafe { std::arch::x86_64::_mm256_loadu_si256(bytes.as_ptr().cast()) }
}
