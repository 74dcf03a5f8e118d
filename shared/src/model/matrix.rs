//! The member × item interaction matrix in compressed sparse row form.

/// A sparse matrix in CSR form: row `r` holds columns `indices[indptr[r]..indptr[r+1]]` (sorted)
/// with `values` alongside.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseMatrix {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseMatrix {
    /// Builds the matrix from `(row, col, value)` triplets; duplicates are summed.
    pub fn from_triplets(rows: usize, cols: usize, mut triplets: Vec<(u32, u32, f32)>) -> Self {
        triplets.sort_unstable_by_key(|&(r, c, _)| (r, c));
        let mut indptr = vec![0usize; rows + 1];
        let mut indices = Vec::with_capacity(triplets.len());
        let mut values: Vec<f32> = Vec::with_capacity(triplets.len());
        let mut last: Option<(u32, u32)> = None;
        for (r, c, v) in triplets {
            assert!(
                (r as usize) < rows && (c as usize) < cols,
                "triplet out of shape"
            );
            if last == Some((r, c)) {
                *values.last_mut().expect("a previous value") += v;
                continue;
            }
            last = Some((r, c));
            indptr[r as usize + 1] += 1;
            indices.push(c);
            values.push(v);
        }
        for r in 0..rows {
            indptr[r + 1] += indptr[r];
        }
        SparseMatrix {
            rows,
            cols,
            indptr,
            indices,
            values,
        }
    }

    /// The binary matrix whose row `r` has a 1 at each column of `rows[r]`.
    pub fn binary(rows: &[&[u32]], cols: usize) -> Self {
        let triplets = rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| row.iter().map(move |&c| (r as u32, c, 1.0)))
            .collect();
        SparseMatrix::from_triplets(rows.len(), cols, triplets)
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Columns and values of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let range = self.indptr[r]..self.indptr[r + 1];
        (&self.indices[range.clone()], &self.values[range])
    }

    /// The transpose (CSC of this matrix as CSR), rows sorted.
    /// Non-zeros per column.
    pub fn column_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.cols];
        for &c in &self.indices {
            counts[c as usize] += 1;
        }
        counts
    }

    pub fn transpose(&self) -> SparseMatrix {
        let mut counts = vec![0usize; self.cols + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for c in 0..self.cols {
            counts[c + 1] += counts[c];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let mut indices = vec![0u32; self.nnz()];
        let mut values = vec![0f32; self.nnz()];
        for r in 0..self.rows {
            let (cols, vals) = self.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                let slot = next[c as usize];
                indices[slot] = r as u32;
                values[slot] = v;
                next[c as usize] += 1;
            }
        }
        SparseMatrix {
            rows: self.cols,
            cols: self.rows,
            indptr,
            indices,
            values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triplets_sum_duplicates_and_transpose_round_trips() {
        let m = SparseMatrix::from_triplets(
            3,
            4,
            vec![
                (2, 1, 1.0),
                (0, 3, 2.0),
                (0, 0, 1.0),
                (2, 1, 0.5),
                (1, 2, 4.0),
            ],
        );
        assert_eq!(m.indptr, vec![0, 2, 3, 4]);
        assert_eq!(m.row(0), (&[0u32, 3][..], &[1.0f32, 2.0][..]));
        assert_eq!(m.row(2), (&[1u32][..], &[1.5f32][..]));
        let t = m.transpose();
        assert_eq!((t.rows, t.cols), (4, 3));
        assert_eq!(t.row(1), (&[2u32][..], &[1.5f32][..]));
        assert_eq!(t.transpose(), m);
    }
}
