//! Fixtures of the unit tests.

/// A published synthetic model of 10 items (`i0`…`i9`) at 4 factors in a temporary model root.
pub fn tiny_model() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let version = recsys_shared::artifact::synthetic::synthetic_model(dir.path(), 10, 3, 4, 7)
        .expect("a synthetic model");
    (dir, version)
}

/// An applier over an embedded store in `dir` (no cache, history cap 4) with `version` of the
/// model root `root` loaded.
pub async fn applier_for(
    dir: &std::path::Path,
    root: &std::path::Path,
    version: &str,
) -> crate::apply::Applier {
    use recsys_shared::config::{CacheBackend, Config};
    use recsys_store::cache::FeatureReader;
    use recsys_store::features::FeatureStore;

    let model = crate::model::ModelHandle::new();
    model.set(
        crate::model::FoldInModel::load(&recsys_shared::artifact::ModelRoot::new(root), version)
            .unwrap(),
    );
    let mut config = Config::default();
    config.store.embedded.path = dir.to_path_buf();
    config.cache.backend = CacheBackend::None;
    let kv = recsys_store::open(&config.store).await.unwrap();
    let store = FeatureStore::new(kv, 4);
    let reader = FeatureReader::from_config(store, &config.cache, &config.store);
    crate::apply::Applier::new(
        std::sync::Arc::new(reader),
        model,
        crate::event::EventRules::from_config(&config),
        4,
    )
}

/// A `play` event.
pub fn play(id: &str, user: &str, item: &str, ts: i64) -> crate::event::Event {
    crate::event::Event {
        event_id: id.into(),
        user_id: user.into(),
        item_id: item.into(),
        event_type: "play".into(),
        value: 0.0,
        ts,
        request_id: String::new(),
    }
}
