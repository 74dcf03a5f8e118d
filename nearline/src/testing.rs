//! Fixtures of the unit tests.

/// A published synthetic model of 10 items (`i0`…`i9`) at 4 factors in a temporary model root.
pub fn tiny_model() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let version = recsys_shared::artifact::synthetic::synthetic_model(dir.path(), 10, 3, 4, 7)
        .expect("a synthetic model");
    (dir, version)
}
