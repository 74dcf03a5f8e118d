//! `SimilarItems`: the items nearest an item in the served model.

use recsys_shared::ids::quote;
use recsys_shared::proto::v1::{SimilarItemsRequest, SimilarItemsResponse};
use tokio::time::Instant;

use super::request::{bounded, check_deadline, check_id, limits};
use super::{scored, RankError, Ranker};

impl Ranker {
    /// The items nearest `request.item_id`.
    pub(crate) async fn similar_items(
        &self,
        request: SimilarItemsRequest,
        deadline: Instant,
    ) -> Result<SimilarItemsResponse, RankError> {
        check_id("item_id", &request.item_id)?;
        let k = bounded("k", request.k, limits::DEFAULT_K, limits::MAX_K)?;
        let catalog = self.serving()?;
        let Some(index) = catalog.index_of(&request.item_id) else {
            return Err(RankError::NotFound {
                field: "item_id",
                problem: format!(
                    "{} is not in model {}",
                    quote(&request.item_id),
                    catalog.version
                ),
            });
        };
        check_deadline(deadline, "before scoring")?;
        let (items, from_index) = self.similar(&catalog, index, k, self.retrieval, |_| true);
        if from_index {
            self.ann
                .sample_similar_recall(catalog.clone(), index, k, &items);
        }
        Ok(SimilarItemsResponse {
            items: scored(&catalog, items),
            model_version: catalog.version.clone(),
        })
    }
}
