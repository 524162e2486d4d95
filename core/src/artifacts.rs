//! The artifact store: module bytes and compiled code, content-addressed.
//!
//! The embedded backend is a local directory opened with `cap-std`, so no key can name a file
//! outside it; writes go to a temporary file that is synced and then renamed into place, so a
//! crash never leaves a half-written artifact under its final name.

use crate::names::Digest;
use bytes::Bytes;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failures of an artifact store.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The backing storage failed.
    #[error("artifact store I/O error on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// A fingerprint used in a key was not plain hex.
    #[error("invalid engine fingerprint {0:?}")]
    Fingerprint(String),
}

/// The name of one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArtifactKey {
    /// The uploaded module bytes.
    Module(Digest),
    /// Code compiled from a module by an engine with the given fingerprint.
    Compiled { fingerprint: String, digest: Digest },
}

impl ArtifactKey {
    /// The key of code compiled from `digest` by the engine with `fingerprint` (hex).
    pub fn compiled(fingerprint: &str, digest: &Digest) -> Result<Self, ArtifactError> {
        if fingerprint.is_empty()
            || fingerprint.len() > 64
            || !fingerprint.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err(ArtifactError::Fingerprint(fingerprint.to_owned()));
        }
        Ok(ArtifactKey::Compiled {
            fingerprint: fingerprint.to_owned(),
            digest: digest.clone(),
        })
    }

    /// The relative path of the artifact; built only from validated parts.
    pub fn relative_path(&self) -> PathBuf {
        match self {
            ArtifactKey::Module(d) => PathBuf::from(format!("modules/{}.wasm", d.hex())),
            ArtifactKey::Compiled {
                fingerprint,
                digest,
            } => PathBuf::from(format!("compiled/{fingerprint}/{}.cwasm", digest.hex())),
        }
    }
}

/// Where modules and compiled code live. Implementations must make `put` atomic: readers see
/// either nothing or the whole artifact.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores an artifact atomically, replacing any previous one with the same key.
    async fn put(&self, key: &ArtifactKey, bytes: Bytes) -> Result<(), ArtifactError>;
    /// Reads an artifact, `None` when absent.
    async fn get(&self, key: &ArtifactKey) -> Result<Option<Bytes>, ArtifactError>;
    /// Whether an artifact exists.
    async fn exists(&self, key: &ArtifactKey) -> Result<bool, ArtifactError>;
    /// A local file holding the artifact, when the backend has one, so that compiled code can
    /// be memory-mapped instead of copied.
    fn local_path(&self, key: &ArtifactKey) -> Option<PathBuf>;
    /// Removes an artifact; removing one that is absent is not an error.
    async fn delete(&self, key: &ArtifactKey) -> Result<(), ArtifactError>;
    /// Every stored artifact with the Unix second it was last written, for garbage collection.
    async fn list(&self) -> Result<Vec<ArtifactEntry>, ArtifactError>;
}

/// One stored artifact, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactEntry {
    /// Its key.
    pub key: ArtifactKey,
    /// Unix seconds of its last write.
    pub modified: u64,
}

impl ArtifactKey {
    /// The key a relative path names, if it names one (the inverse of `relative_path`).
    pub fn from_relative_path(path: &Path) -> Option<Self> {
        let parts: Vec<&str> = path.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
        let digest = |file: &str, ext: &str| {
            file.strip_suffix(ext)
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
        };
        match parts.as_slice() {
            ["modules", file] => digest(file, ".wasm").map(ArtifactKey::Module),
            ["compiled", fp, file] => ArtifactKey::compiled(fp, &digest(file, ".cwasm")?).ok(),
            _ => None,
        }
    }
}

/// The embedded artifact store: a directory on local disk.
#[derive(Clone)]
pub struct FsArtifactStore {
    root: PathBuf,
    dir: Arc<Dir>,
}

impl FsArtifactStore {
    /// Opens (creating it if needed) the store rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> std::io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root)?;
        let dir = Dir::open_ambient_dir(&root, ambient_authority())?;
        for sub in ["modules", "compiled", "tmp"] {
            dir.create_dir_all(sub)?;
        }
        std::fs::File::open(&root)?.sync_all()?;
        // Left-overs of writes interrupted by a crash are never visible; clear them out.
        if let Ok(entries) = dir.read_dir("tmp") {
            for entry in entries.flatten() {
                let _ = dir.remove_file(Path::new("tmp").join(entry.file_name()));
            }
        }
        Ok(Self {
            root,
            dir: Arc::new(dir),
        })
    }

    fn write_atomic(root: &Path, dir: &Dir, rel: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !dir.exists(parent) {
            dir.create_dir_all(parent)?;
            // Make the new directory's entry durable too.
            let grandparent = parent.parent().unwrap_or(Path::new(""));
            std::fs::File::open(root.join(grandparent))?.sync_all()?;
        }
        let tmp = Path::new("tmp").join(format!("{:016x}.part", rand::random::<u64>()));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        let result = (|| {
            let mut file = dir.open_with(&tmp, &opts)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            dir.rename(&tmp, dir, rel)?;
            // Make the rename itself durable. `parent` is built only from validated parts.
            std::fs::File::open(root.join(parent))?.sync_all()
        })();
        if result.is_err() {
            let _ = dir.remove_file(&tmp);
        }
        result
    }
}

#[async_trait::async_trait]
impl ArtifactStore for FsArtifactStore {
    async fn put(&self, key: &ArtifactKey, bytes: Bytes) -> Result<(), ArtifactError> {
        let dir = self.dir.clone();
        let root = self.root.clone();
        let rel = key.relative_path();
        let res =
            tokio::task::spawn_blocking(move || Self::write_atomic(&root, &dir, &rel, &bytes))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        res.map_err(|source| ArtifactError::Io {
            key: key.relative_path().display().to_string(),
            source,
        })
    }

    async fn get(&self, key: &ArtifactKey) -> Result<Option<Bytes>, ArtifactError> {
        let dir = self.dir.clone();
        let rel = key.relative_path();
        let res = tokio::task::spawn_blocking(move || dir.read(&rel))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match res {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ArtifactError::Io {
                key: key.relative_path().display().to_string(),
                source,
            }),
        }
    }

    async fn exists(&self, key: &ArtifactKey) -> Result<bool, ArtifactError> {
        Ok(self.dir.exists(key.relative_path()))
    }

    fn local_path(&self, key: &ArtifactKey) -> Option<PathBuf> {
        Some(self.root.join(key.relative_path()))
    }

    async fn delete(&self, key: &ArtifactKey) -> Result<(), ArtifactError> {
        let dir = self.dir.clone();
        let rel = key.relative_path();
        let res = tokio::task::spawn_blocking(move || match dir.remove_file(&rel) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        res.map_err(|source| ArtifactError::Io {
            key: key.relative_path().display().to_string(),
            source,
        })
    }

    async fn list(&self) -> Result<Vec<ArtifactEntry>, ArtifactError> {
        let dir = self.dir.clone();
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<ArtifactEntry>> {
            let mut out = Vec::new();
            let mut visit = |rel: PathBuf, meta: cap_std::fs::Metadata| {
                if let Some(key) = ArtifactKey::from_relative_path(&rel) {
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    out.push(ArtifactEntry { key, modified });
                }
            };
            for e in dir.read_dir("modules")? {
                let e = e?;
                visit(Path::new("modules").join(e.file_name()), e.metadata()?);
            }
            for fp in dir.read_dir("compiled")? {
                let fp = fp?;
                let sub = Path::new("compiled").join(fp.file_name());
                if !fp.file_type()?.is_dir() {
                    continue;
                }
                for e in dir.read_dir(&sub)? {
                    let e = e?;
                    visit(sub.join(e.file_name()), e.metadata()?);
                }
            }
            Ok(out)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        res.map_err(|source| ArtifactError::Io {
            key: "(listing)".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn artifacts_are_listed_and_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsArtifactStore::open(tmp.path()).unwrap();
        let d = Digest::of(b"m");
        let module = ArtifactKey::Module(d.clone());
        let code = ArtifactKey::compiled("abc123", &d).unwrap();
        store.put(&module, Bytes::from_static(b"m")).await.unwrap();
        store.put(&code, Bytes::from_static(b"c")).await.unwrap();
        // Stray files are not artifacts.
        std::fs::write(tmp.path().join("modules/notes.txt"), b"x").unwrap();
        let mut keys: Vec<ArtifactKey> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        keys.sort_by_key(|k| k.relative_path());
        assert_eq!(keys, [code.clone(), module.clone()]);
        store.delete(&code).await.unwrap();
        store.delete(&code).await.unwrap();
        assert!(!store.exists(&code).await.unwrap());
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    #[test]
    fn keys_and_paths_round_trip() {
        let d = Digest::of(b"m");
        for key in [
            ArtifactKey::Module(d.clone()),
            ArtifactKey::compiled("00ff", &d).unwrap(),
        ] {
            assert_eq!(
                ArtifactKey::from_relative_path(&key.relative_path()),
                Some(key)
            );
        }
        for bad in ["modules/x.wasm", "compiled/zz/ab.cwasm", "tmp/a", "modules"] {
            assert_eq!(
                ArtifactKey::from_relative_path(Path::new(bad)),
                None,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn put_get_round_trip_and_missing_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsArtifactStore::open(tmp.path()).unwrap();
        let d = Digest::of(b"module");
        let key = ArtifactKey::Module(d.clone());
        assert!(store.get(&key).await.unwrap().is_none());
        store
            .put(&key, Bytes::from_static(b"module"))
            .await
            .unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap(), &b"module"[..]);
        assert!(store.exists(&key).await.unwrap());
        let ck = ArtifactKey::compiled("abc123", &d).unwrap();
        store.put(&ck, Bytes::from_static(b"code")).await.unwrap();
        assert!(store.local_path(&ck).unwrap().exists());
    }

    #[tokio::test]
    async fn interrupted_writes_are_cleared_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        FsArtifactStore::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("tmp/dead.part"), b"half").unwrap();
        FsArtifactStore::open(tmp.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn fingerprints_must_be_hex() {
        let d = Digest::of(b"x");
        assert!(ArtifactKey::compiled("../etc", &d).is_err());
        assert!(ArtifactKey::compiled("", &d).is_err());
    }
}
