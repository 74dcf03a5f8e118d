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
    applier_with(dir, root, version, recsys_shared::config::Config::default()).await
}

/// [`applier_for`] with negative feedback on: two impressions without a play hide an item.
pub async fn applier_with_feedback(
    dir: &std::path::Path,
    root: &std::path::Path,
    version: &str,
) -> crate::apply::Applier {
    let mut config = recsys_shared::config::Config::default();
    config.feedback.enabled = true;
    config.feedback.impressions_to_hide = 2;
    applier_with(dir, root, version, config).await
}

async fn applier_with(
    dir: &std::path::Path,
    root: &std::path::Path,
    version: &str,
    mut config: recsys_shared::config::Config,
) -> crate::apply::Applier {
    use recsys_shared::config::CacheBackend;
    use recsys_store::cache::FeatureReader;
    use recsys_store::features::FeatureStore;

    let model = crate::model::ModelHandle::new();
    model.set(
        crate::model::MemberModel::load(&recsys_shared::artifact::ModelRoot::new(root), version)
            .unwrap(),
    );
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
    .with_feedback(crate::feedback::FeedbackRules::from_config(&config))
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
