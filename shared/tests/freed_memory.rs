//! Memory freed in small pieces goes back to the system (its own test binary: the process's
//! resident size is the measure, so no other test may run beside it).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn memory_freed_in_pieces_leaves_the_process() {
    fn anonymous_kib() -> i64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    // A loader thread (its own arena) allocates 256 MiB in 256-byte pieces and keeps one piece in
    // a hundred: the freed runs between them are whole pages, but not at the arena's top, so
    // freeing alone returns nothing.
    let kept = std::thread::spawn(|| {
        let pieces: Vec<Box<[u8; 256]>> =
            (0..1_000_000).map(|i| Box::new([i as u8; 256])).collect();
        pieces
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 100 == 0)
            .map(|(_, piece)| piece)
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let freed = anonymous_kib();
    recsys_shared::memory::return_freed_memory();
    let returned = anonymous_kib();
    assert!(
        freed - returned > 100 * 1024,
        "resident anonymous memory {freed} KiB after freeing, {returned} KiB after returning it"
    );
    assert_eq!(kept.len(), 10_000);
    assert!(kept
        .iter()
        .enumerate()
        .all(|(i, p)| p[0] == (i * 100) as u8));
}
