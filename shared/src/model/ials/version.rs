//! What an iALS version publishes besides what every version holds (catalog, popularity,
//! histories): its item factors and its members' factors, one Parquet table each.

use crate::artifact::{files, write_factors, FactorTable, StagedVersion};
use crate::Result;

use super::train::AlsModel;

/// Writes `model`'s factors into `staged`: row `i` of the item factors is `item_ids[i]`'s, row `u`
/// of the member factors `member_ids[u]`'s.
pub fn write_model(
    staged: &StagedVersion,
    model: AlsModel,
    item_ids: Vec<String>,
    member_ids: Vec<String>,
) -> Result<()> {
    let k = model.factors;
    for (name, column, ids, vectors) in [
        (files::ITEM_FACTORS, "item_id", item_ids, model.item_factors),
        (
            files::USER_FACTORS,
            "user_id",
            member_ids,
            model.user_factors,
        ),
    ] {
        let table = FactorTable {
            ids,
            vectors,
            factors: k,
        };
        write_factors(&staged.path(name), column, &table)?;
    }
    Ok(())
}
