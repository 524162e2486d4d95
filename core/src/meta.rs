//! The metadata store: modules per tenant, functions, versions, aliases and API keys.
//!
//! [`MetaStore`] is the seam for backends; [`EmbeddedMetaStore`] is the default, a `redb`
//! database file in the data directory. Each mutation is one ACID transaction, so a crash or a
//! kill in the middle of a deploy leaves either the whole new version or none of it.

use crate::names::{AliasName, Digest, FunctionName, TenantId, VersionRef};
use crate::records::{FunctionRecord, KeyRecord, ModuleRecord, Quotas, VersionRecord, VersionSpec};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Failures of a metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// No function of that name is visible to the caller's tenant.
    #[error("function {0} not found")]
    FunctionNotFound(FunctionName),
    /// The function exists but has no such version.
    #[error("function {name} has no version {version}")]
    VersionNotFound { name: FunctionName, version: String },
    /// The tenant holds as much as its quota allows.
    #[error("the tenant's quota of {limit} {quota} is used up")]
    Quota { quota: &'static str, limit: u64 },
    /// The backend failed.
    #[error("metadata store error: {0}")]
    Storage(String),
}

fn storage<E: Into<redb::Error>>(e: E) -> MetaError {
    MetaError::Storage(e.into().to_string())
}

/// Everything Wafer knows about functions and keys. Mutations that touch a function take the
/// caller's tenant and fail with [`MetaError::FunctionNotFound`] when another tenant owns it,
/// so ownership is checked in the same transaction as the change.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Records that `tenant` uploaded a module; returns true when it is new for this tenant.
    /// A new one past the tenant's module quotas is [`MetaError::Quota`].
    async fn put_module(
        &self,
        tenant: &TenantId,
        rec: ModuleRecord,
        quotas: &Quotas,
    ) -> Result<bool, MetaError>;
    /// Every tenant's module records.
    async fn module_records(&self) -> Result<Vec<(TenantId, ModuleRecord)>, MetaError>;
    /// Forgets that `tenant` uploaded `digest`.
    async fn delete_module(&self, tenant: &TenantId, digest: &Digest) -> Result<(), MetaError>;
    /// The tenant's record of a module.
    async fn get_module(
        &self,
        tenant: &TenantId,
        digest: &Digest,
    ) -> Result<Option<ModuleRecord>, MetaError>;
    /// Creates the next version of a function (creating the function if needed) and moves
    /// `latest` to it, within the tenant's function and version quotas.
    async fn create_version(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        spec: VersionSpec,
        quotas: &Quotas,
    ) -> Result<VersionRecord, MetaError>;
    /// A function, whoever owns it (callers check the tenant).
    async fn get_function(&self, name: &FunctionName) -> Result<Option<FunctionRecord>, MetaError>;
    /// All functions of a tenant, by name.
    async fn list_functions(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>, MetaError>;
    /// All versions of a function, oldest first.
    async fn list_versions(&self, name: &FunctionName) -> Result<Vec<VersionRecord>, MetaError>;
    /// Resolves `name@ref` to the function and the version it denotes, in one read.
    async fn resolve(
        &self,
        name: &FunctionName,
        vref: &VersionRef,
    ) -> Result<Option<(FunctionRecord, VersionRecord)>, MetaError>;
    /// Points an alias at an existing version.
    async fn set_alias(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        alias: &AliasName,
        version: u32,
    ) -> Result<FunctionRecord, MetaError>;
    /// Deletes a function with all its versions and aliases.
    async fn delete_function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<(), MetaError>;
    /// Stores an API key under the hash of its secret.
    async fn put_key(&self, hash: &str, rec: KeyRecord) -> Result<(), MetaError>;
    /// Looks an API key up by the hash of its secret.
    async fn get_key(&self, hash: &str) -> Result<Option<KeyRecord>, MetaError>;
    /// Every module some version runs, with the tenant that owns the version's function.
    async fn module_uses(&self) -> Result<Vec<(TenantId, Digest)>, MetaError>;
    /// Every API key's record (never the secrets, which are not stored).
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, MetaError>;
    /// Deletes the key with public id `id`; false when there is none.
    async fn delete_key(&self, id: &str) -> Result<bool, MetaError>;
}

const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
const VERSIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("versions");
const MODULES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("modules");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

/// The embedded, durable metadata store: one `redb` file.
#[derive(Clone)]
pub struct EmbeddedMetaStore {
    db: Arc<Database>,
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialize")
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(b).map_err(|e| MetaError::Storage(format!("corrupt record: {e}")))
}

impl EmbeddedMetaStore {
    /// Opens or creates the database file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MetaError> {
        let db = Database::create(path.as_ref()).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(FUNCTIONS).map_err(storage)?;
        txn.open_table(VERSIONS).map_err(storage)?;
        txn.open_table(MODULES).map_err(storage)?;
        txn.open_table(KEYS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs a write transaction off the async runtime (commits fsync).
    async fn write<R, F>(&self, f: F) -> Result<R, MetaError>
    where
        R: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<R, MetaError> + Send + 'static,
    {
        crate::redb_write(&self.db, MetaError::Storage, f).await
    }

    fn read_function(
        txn: &redb::ReadTransaction,
        name: &str,
    ) -> Result<Option<FunctionRecord>, MetaError> {
        let t = txn.open_table(FUNCTIONS).map_err(storage)?;
        match t.get(name).map_err(storage)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }
}

/// Loads a function for a mutation by `tenant`; another tenant's function is "not found".
fn owned_function(
    t: &redb::Table<&str, &[u8]>,
    tenant: &TenantId,
    name: &FunctionName,
) -> Result<Option<FunctionRecord>, MetaError> {
    let Some(v) = t.get(name.as_str()).map_err(storage)? else {
        return Ok(None);
    };
    let f: FunctionRecord = decode(v.value())?;
    if &f.tenant != tenant {
        return Err(MetaError::FunctionNotFound(name.clone()));
    }
    Ok(Some(f))
}

#[async_trait::async_trait]
impl MetaStore for EmbeddedMetaStore {
    async fn put_module(
        &self,
        tenant: &TenantId,
        rec: ModuleRecord,
        quotas: &Quotas,
    ) -> Result<bool, MetaError> {
        let (tenant, quotas) = (tenant.clone(), *quotas);
        self.write(move |txn| {
            let mut t = txn.open_table(MODULES).map_err(storage)?;
            let key = (tenant.as_str(), rec.digest.as_str());
            if t.get(key).map_err(storage)?.is_some() {
                return Ok(false);
            }
            let (mut count, mut bytes) = (0u64, 0u64);
            for entry in t.range((tenant.as_str(), "")..).map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                if k.value().0 != tenant.as_str() {
                    break;
                }
                count += 1;
                bytes = bytes.saturating_add(decode::<ModuleRecord>(v.value())?.size);
            }
            if count >= quotas.modules {
                return Err(MetaError::Quota {
                    quota: "modules",
                    limit: quotas.modules,
                });
            }
            if bytes.saturating_add(rec.size) > quotas.module_bytes {
                return Err(MetaError::Quota {
                    quota: "bytes of modules",
                    limit: quotas.module_bytes,
                });
            }
            t.insert(key, encode(&rec).as_slice()).map_err(storage)?;
            Ok(true)
        })
        .await
    }

    async fn module_records(&self) -> Result<Vec<(TenantId, ModuleRecord)>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(MODULES).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let tenant =
                TenantId::new(k.value().0).map_err(|e| MetaError::Storage(e.to_string()))?;
            out.push((tenant, decode(v.value())?));
        }
        Ok(out)
    }

    async fn delete_module(&self, tenant: &TenantId, digest: &Digest) -> Result<(), MetaError> {
        let (tenant, digest) = (tenant.clone(), digest.clone());
        self.write(move |txn| {
            let mut t = txn.open_table(MODULES).map_err(storage)?;
            t.remove((tenant.as_str(), digest.as_str()))
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn get_module(
        &self,
        tenant: &TenantId,
        digest: &Digest,
    ) -> Result<Option<ModuleRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(MODULES).map_err(storage)?;
        match t.get((tenant.as_str(), digest.as_str())).map_err(storage)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    async fn create_version(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        spec: VersionSpec,
        quotas: &Quotas,
    ) -> Result<VersionRecord, MetaError> {
        let (tenant, name, quotas) = (tenant.clone(), name.clone(), *quotas);
        self.write(move |txn| {
            let mut ft = txn.open_table(FUNCTIONS).map_err(storage)?;
            let now = crate::now_unix();
            let mut f = match owned_function(&ft, &tenant, &name)? {
                Some(f) => f,
                None => {
                    let mut owned = 0u64;
                    for entry in ft.iter().map_err(storage)? {
                        let (_, v) = entry.map_err(storage)?;
                        owned += u64::from(decode::<FunctionRecord>(v.value())?.tenant == tenant);
                    }
                    if owned >= quotas.functions {
                        return Err(MetaError::Quota {
                            quota: "functions",
                            limit: quotas.functions,
                        });
                    }
                    FunctionRecord {
                        name: name.clone(),
                        tenant: tenant.clone(),
                        latest_version: 0,
                        aliases: BTreeMap::new(),
                        created: now,
                        incarnation: rand::random(),
                    }
                }
            };
            if u64::from(f.latest_version) >= quotas.versions_per_function {
                return Err(MetaError::Quota {
                    quota: "versions of this function",
                    limit: quotas.versions_per_function,
                });
            }
            f.latest_version += 1;
            let rec = VersionRecord {
                function: name.clone(),
                version: f.latest_version,
                spec,
                created: now,
            };
            f.aliases
                .insert(AliasName::new("latest").expect("valid"), rec.version);
            let mut vt = txn.open_table(VERSIONS).map_err(storage)?;
            vt.insert((name.as_str(), rec.version), encode(&rec).as_slice())
                .map_err(storage)?;
            ft.insert(name.as_str(), encode(&f).as_slice())
                .map_err(storage)?;
            crate::crash_point("version-written");
            Ok(rec)
        })
        .await
    }

    async fn get_function(&self, name: &FunctionName) -> Result<Option<FunctionRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        Self::read_function(&txn, name.as_str())
    }

    async fn list_functions(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(FUNCTIONS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            let f: FunctionRecord = decode(v.value())?;
            if &f.tenant == tenant {
                out.push(f);
            }
        }
        Ok(out)
    }

    async fn list_versions(&self, name: &FunctionName) -> Result<Vec<VersionRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(VERSIONS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t
            .range((name.as_str(), 0)..=(name.as_str(), u32::MAX))
            .map_err(storage)?
        {
            let (_, v) = entry.map_err(storage)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    async fn resolve(
        &self,
        name: &FunctionName,
        vref: &VersionRef,
    ) -> Result<Option<(FunctionRecord, VersionRecord)>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let Some(f) = Self::read_function(&txn, name.as_str())? else {
            return Ok(None);
        };
        let number = match vref {
            VersionRef::Number(n) => *n,
            VersionRef::Alias(a) => match f.aliases.get(a) {
                Some(n) => *n,
                None => return Ok(None),
            },
        };
        let t = txn.open_table(VERSIONS).map_err(storage)?;
        let Some(v) = t.get((name.as_str(), number)).map_err(storage)? else {
            return Ok(None);
        };
        let rec = decode(v.value())?;
        Ok(Some((f, rec)))
    }

    async fn set_alias(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        alias: &AliasName,
        version: u32,
    ) -> Result<FunctionRecord, MetaError> {
        let (tenant, name, alias) = (tenant.clone(), name.clone(), alias.clone());
        self.write(move |txn| {
            let mut ft = txn.open_table(FUNCTIONS).map_err(storage)?;
            let mut f = owned_function(&ft, &tenant, &name)?
                .ok_or_else(|| MetaError::FunctionNotFound(name.clone()))?;
            let vt = txn.open_table(VERSIONS).map_err(storage)?;
            if vt.get((name.as_str(), version)).map_err(storage)?.is_none() {
                return Err(MetaError::VersionNotFound {
                    name: name.clone(),
                    version: version.to_string(),
                });
            }
            f.aliases.insert(alias, version);
            ft.insert(name.as_str(), encode(&f).as_slice())
                .map_err(storage)?;
            Ok(f)
        })
        .await
    }

    async fn delete_function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<(), MetaError> {
        let (tenant, name) = (tenant.clone(), name.clone());
        self.write(move |txn| {
            let mut ft = txn.open_table(FUNCTIONS).map_err(storage)?;
            owned_function(&ft, &tenant, &name)?
                .ok_or_else(|| MetaError::FunctionNotFound(name.clone()))?;
            ft.remove(name.as_str()).map_err(storage)?;
            let mut vt = txn.open_table(VERSIONS).map_err(storage)?;
            vt.retain_in((name.as_str(), 0)..=(name.as_str(), u32::MAX), |_, _| false)
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn put_key(&self, hash: &str, rec: KeyRecord) -> Result<(), MetaError> {
        let hash = hash.to_owned();
        self.write(move |txn| {
            let mut t = txn.open_table(KEYS).map_err(storage)?;
            t.insert(hash.as_str(), encode(&rec).as_slice())
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn get_key(&self, hash: &str) -> Result<Option<KeyRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(KEYS).map_err(storage)?;
        match t.get(hash).map_err(storage)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    async fn module_uses(&self) -> Result<Vec<(TenantId, Digest)>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let ft = txn.open_table(FUNCTIONS).map_err(storage)?;
        let mut owners = std::collections::HashMap::new();
        for entry in ft.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            let f: FunctionRecord = decode(v.value())?;
            owners.insert(f.name, f.tenant);
        }
        let vt = txn.open_table(VERSIONS).map_err(storage)?;
        let mut out = std::collections::BTreeSet::new();
        for entry in vt.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            let rec: VersionRecord = decode(v.value())?;
            if let Some(tenant) = owners.get(&rec.function) {
                out.insert((tenant.clone(), rec.spec.module));
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(KEYS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            out.push(decode::<KeyRecord>(v.value())?);
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    async fn delete_key(&self, id: &str) -> Result<bool, MetaError> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut t = txn.open_table(KEYS).map_err(storage)?;
            let mut found = None;
            for entry in t.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                if decode::<KeyRecord>(v.value())?.id == id {
                    found = Some(k.value().to_owned());
                    break;
                }
            }
            match found {
                Some(hash) => {
                    t.remove(hash.as_str()).map_err(storage)?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Abi;

    fn spec(d: &Digest) -> VersionSpec {
        VersionSpec {
            module: d.clone(),
            abi: Abi::Command,
            timeout_ms: 1000,
            memory_mb: 64,
            fuel: 1_000_000,
            env: BTreeMap::new(),
            public: false,
            request_env: false,
            class: None,
            cache: None,
        }
    }

    fn t(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn n(s: &str) -> FunctionName {
        FunctionName::new(s).unwrap()
    }

    #[tokio::test]
    async fn versions_count_up_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let d = Digest::of(b"m");
        {
            let store = EmbeddedMetaStore::open(&path).unwrap();
            assert_eq!(
                store
                    .create_version(&t("a"), &n("f"), spec(&d), &Quotas::default())
                    .await
                    .unwrap()
                    .version,
                1
            );
            assert_eq!(
                store
                    .create_version(&t("a"), &n("f"), spec(&d), &Quotas::default())
                    .await
                    .unwrap()
                    .version,
                2
            );
            let prod = AliasName::new("prod").unwrap();
            store.set_alias(&t("a"), &n("f"), &prod, 1).await.unwrap();
        }
        let store = EmbeddedMetaStore::open(&path).unwrap();
        let (f, v) = store
            .resolve(&n("f"), &VersionRef::latest())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((f.latest_version, v.version), (2, 2));
        let prod = VersionRef::parse("prod").unwrap();
        assert_eq!(
            store
                .resolve(&n("f"), &prod)
                .await
                .unwrap()
                .unwrap()
                .1
                .version,
            1
        );
        assert_eq!(store.list_versions(&n("f")).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn other_tenants_cannot_touch_a_function() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMetaStore::open(dir.path().join("m.redb")).unwrap();
        let d = Digest::of(b"m");
        store
            .create_version(&t("a"), &n("f"), spec(&d), &Quotas::default())
            .await
            .unwrap();
        let latest = AliasName::new("latest").unwrap();
        assert!(matches!(
            store
                .create_version(&t("b"), &n("f"), spec(&d), &Quotas::default())
                .await,
            Err(MetaError::FunctionNotFound(_))
        ));
        assert!(matches!(
            store.set_alias(&t("b"), &n("f"), &latest, 1).await,
            Err(MetaError::FunctionNotFound(_))
        ));
        assert!(matches!(
            store.delete_function(&t("b"), &n("f")).await,
            Err(MetaError::FunctionNotFound(_))
        ));
        assert!(store.list_functions(&t("b")).await.unwrap().is_empty());
        assert_eq!(store.list_functions(&t("a")).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn delete_removes_versions_and_alias_to_missing_version_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMetaStore::open(dir.path().join("m.redb")).unwrap();
        let d = Digest::of(b"m");
        store
            .create_version(&t("a"), &n("f"), spec(&d), &Quotas::default())
            .await
            .unwrap();
        let prod = AliasName::new("prod").unwrap();
        assert!(matches!(
            store.set_alias(&t("a"), &n("f"), &prod, 9).await,
            Err(MetaError::VersionNotFound { .. })
        ));
        store.delete_function(&t("a"), &n("f")).await.unwrap();
        assert!(store.get_function(&n("f")).await.unwrap().is_none());
        assert!(store.list_versions(&n("f")).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn modules_are_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMetaStore::open(dir.path().join("m.redb")).unwrap();
        let d = Digest::of(b"m");
        let rec = ModuleRecord {
            digest: d.clone(),
            size: 1,
            abi: Abi::Command,
            created: 0,
            min_memory_bytes: 0,
        };
        assert!(
            store
                .put_module(&t("a"), rec.clone(), &Quotas::default())
                .await
                .unwrap()
        );
        assert!(
            !store
                .put_module(&t("a"), rec.clone(), &Quotas::default())
                .await
                .unwrap()
        );
        assert!(store.get_module(&t("b"), &d).await.unwrap().is_none());
        assert!(
            store
                .put_module(&t("b"), rec, &Quotas::default())
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn module_uses_are_what_versions_run_by_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMetaStore::open(dir.path().join("m.redb")).unwrap();
        let (d1, d2) = (Digest::of(b"one"), Digest::of(b"two"));
        store
            .create_version(&t("a"), &n("f"), spec(&d1), &Quotas::default())
            .await
            .unwrap();
        store
            .create_version(&t("a"), &n("f"), spec(&d2), &Quotas::default())
            .await
            .unwrap();
        store
            .create_version(&t("b"), &n("g"), spec(&d1), &Quotas::default())
            .await
            .unwrap();
        let mut want = vec![(t("a"), d1.clone()), (t("a"), d2), (t("b"), d1)];
        want.sort();
        assert_eq!(store.module_uses().await.unwrap(), want);
    }

    #[tokio::test]
    async fn keys_are_listed_and_revoked_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMetaStore::open(dir.path().join("m.redb")).unwrap();
        let rec = |id: &str| KeyRecord {
            id: id.into(),
            tenant: t("a"),
            scopes: vec![crate::Scope::Read],
            created: 1,
        };
        store.put_key("h1", rec("key_1")).await.unwrap();
        store.put_key("h2", rec("key_2")).await.unwrap();
        let ids: Vec<String> = store
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(ids, ["key_1", "key_2"]);
        assert!(store.delete_key("key_1").await.unwrap());
        assert!(!store.delete_key("key_1").await.unwrap());
        assert!(store.get_key("h1").await.unwrap().is_none());
        assert!(store.get_key("h2").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_name_created_again_is_a_new_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMetaStore::open(dir.path().join("m.redb")).unwrap();
        let d = Digest::of(b"m");
        store
            .create_version(&t("a"), &n("f"), spec(&d), &Quotas::default())
            .await
            .unwrap();
        let first = store.get_function(&n("f")).await.unwrap().unwrap();
        store
            .create_version(&t("a"), &n("f"), spec(&d), &Quotas::default())
            .await
            .unwrap();
        let same = store.get_function(&n("f")).await.unwrap().unwrap();
        assert_eq!(first.incarnation, same.incarnation);
        store.delete_function(&t("a"), &n("f")).await.unwrap();
        store
            .create_version(&t("a"), &n("f"), spec(&d), &Quotas::default())
            .await
            .unwrap();
        let again = store.get_function(&n("f")).await.unwrap().unwrap();
        assert_ne!(first.incarnation, again.incarnation);
    }

    #[tokio::test]
    async fn quotas_bound_modules_bytes_functions_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMetaStore::open(dir.path().join("m.redb")).unwrap();
        let q = Quotas {
            modules: 2,
            module_bytes: 100,
            functions: 1,
            versions_per_function: 2,
        };
        let rec = |b: &[u8], size| ModuleRecord {
            digest: Digest::of(b),
            size,
            abi: Abi::Command,
            created: 0,
            min_memory_bytes: 0,
        };
        assert!(store.put_module(&t("a"), rec(b"1", 60), &q).await.unwrap());
        // Known modules are not counted again.
        assert!(!store.put_module(&t("a"), rec(b"1", 60), &q).await.unwrap());
        assert!(matches!(
            store.put_module(&t("a"), rec(b"2", 41), &q).await,
            Err(MetaError::Quota {
                quota: "bytes of modules",
                limit: 100
            })
        ));
        assert!(store.put_module(&t("a"), rec(b"2", 40), &q).await.unwrap());
        assert!(matches!(
            store.put_module(&t("a"), rec(b"3", 0), &q).await,
            Err(MetaError::Quota {
                quota: "modules",
                ..
            })
        ));
        // Another tenant has its own quota.
        assert!(store.put_module(&t("b"), rec(b"3", 0), &q).await.unwrap());
        store
            .delete_module(&t("a"), &Digest::of(b"2"))
            .await
            .unwrap();
        assert!(store.put_module(&t("a"), rec(b"3", 0), &q).await.unwrap());
        assert_eq!(store.module_records().await.unwrap().len(), 3);

        let d = Digest::of(b"1");
        store
            .create_version(&t("a"), &n("f"), spec(&d), &q)
            .await
            .unwrap();
        store
            .create_version(&t("a"), &n("f"), spec(&d), &q)
            .await
            .unwrap();
        assert!(matches!(
            store.create_version(&t("a"), &n("f"), spec(&d), &q).await,
            Err(MetaError::Quota {
                quota: "versions of this function",
                ..
            })
        ));
        assert!(matches!(
            store.create_version(&t("a"), &n("g"), spec(&d), &q).await,
            Err(MetaError::Quota {
                quota: "functions",
                ..
            })
        ));
        store
            .create_version(&t("b"), &n("g"), spec(&d), &q)
            .await
            .unwrap();
    }
}
