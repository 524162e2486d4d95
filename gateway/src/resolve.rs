//! A cache in front of the metadata store for the invoke path: `name@ref` → the function and
//! the version to run. Every change to a function through this gateway invalidates its
//! entries at once; a short time-to-live bounds staleness for changes made elsewhere.

use std::sync::Arc;
use std::time::Duration;
use wafer_core::{FunctionName, FunctionRecord, MetaError, MetaStore, VersionRecord, VersionRef};

/// A resolved target: the function, the version, and the digest of the version's spec (for
/// the response cache's keys, computed once per resolution instead of once per call).
pub type Resolved = Arc<(FunctionRecord, VersionRecord, crate::cache::Key)>;

/// The resolution cache.
pub struct Resolver {
    cache: moka::sync::Cache<(FunctionName, String), Resolved>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .support_invalidation_closures()
                .build(),
        }
    }
}

impl Resolver {
    /// Resolves `name@vref`, from the cache when possible.
    pub async fn resolve(
        &self,
        meta: &dyn MetaStore,
        name: &FunctionName,
        vref: &VersionRef,
    ) -> Result<Option<Resolved>, MetaError> {
        let key = (name.clone(), vref.to_string());
        if let Some(hit) = self.cache.get(&key) {
            return Ok(Some(hit));
        }
        let Some(found) = meta.resolve(name, vref).await? else {
            return Ok(None);
        };
        let spec = crate::cache::spec_digest(&found.1);
        let found = Arc::new((found.0, found.1, spec));
        self.cache.insert(key, found.clone());
        Ok(Some(found))
    }

    /// Forgets everything cached about a function (after any change to it).
    pub fn invalidate(&self, name: &FunctionName) {
        let name = name.clone();
        // Only fails when closures are not enabled, which the builder above does.
        let _ = self.cache.invalidate_entries_if(move |k, _| k.0 == name);
    }
}
