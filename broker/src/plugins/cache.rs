//! Compiling components, with precompiled artifacts cached on disk so a restart (or a reload of
//! an unchanged file) does not run Cranelift again.
//!
//! The cache file is `<cache_dir>/<sha256>.cwasm`, where the hash covers the component bytes and
//! the engine's compatibility hash (wasmtime version + every engine setting that affects code),
//! so a different wasmtime or engine configuration never picks up a stale artifact. Files are
//! written to a temporary name and renamed, so a crash never leaves a truncated artifact.
//! Artifacts are native code loaded with `Component::deserialize`: they are written 0600 into a
//! 0700 directory, and one that another user owns or could have written (the file or its
//! directory group/world-writable) is not loaded — it is compiled again and replaced.

use std::hash::{Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from a precompiled artifact in the cache.
    Cache,
    /// Compiled now (and stored in the cache if it is writable).
    Compiled,
}

/// A compiled component and the SHA-256 of its source bytes.
pub struct Compiled {
    /// The component.
    pub component: Component,
    /// SHA-256 of the `.wasm` bytes.
    pub content_hash: [u8; 32],
    /// Cache hit or fresh compile.
    pub origin: Origin,
}

/// SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Feeds `std::hash::Hash` values into SHA-256 (for the engine's compatibility hash).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0 // unused: the digest is taken with `finalize`
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache file name for `bytes` on `engine`.
pub fn cache_key(engine: &Engine, content_hash: &[u8; 32]) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    hasher.write(b"lockbroker-plugin-cache-v1\0");
    hasher.write(content_hash);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{}.cwasm", hex(&hasher.0.finalize()))
}

/// Compiles `bytes`, going through the artifact cache in `cache_dir` when given.
pub fn compile(
    engine: &Engine,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> wasmtime::Result<Compiled> {
    let content_hash = content_hash(bytes);
    let Some(dir) = cache_dir else {
        return Ok(Compiled {
            component: Component::new(engine, bytes)?,
            content_hash,
            origin: Origin::Compiled,
        });
    };
    let file = dir.join(cache_key(engine, &content_hash));
    // Read into memory rather than `deserialize_file`: that one mmaps the file, and anything
    // truncating it in place later (an operator, a second broker) would crash us with SIGBUS.
    let trusted = match crate::private_files::untrusted(&file) {
        None => true,
        Some(why) if file.exists() => {
            tracing::warn!(
                file = %file.display(),
                "plugin cache: refusing to load an artifact others could have written: {why}"
            );
            false
        }
        Some(_) => false,
    };
    if let Some(artifact) = trusted.then(|| std::fs::read(&file).ok()).flatten() {
        // SAFETY: the file was written by `precompile_component` of an engine with the same
        // compatibility hash (it is part of the name), into the broker's own data dir; wasmtime
        // additionally checks the artifact header and refuses a mismatched one.
        match unsafe { Component::deserialize(engine, &artifact) } {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    content_hash,
                    origin: Origin::Cache,
                });
            }
            Err(e) => tracing::warn!(
                file = %file.display(),
                "plugin cache: discarding unusable artifact: {e:#}"
            ),
        }
    }
    let artifact = engine.precompile_component(bytes)?;
    if let Err(e) = store_atomically(dir, &file, &artifact) {
        tracing::warn!(dir = %dir.display(), "plugin cache: cannot store artifact: {e}");
    }
    // SAFETY: `artifact` was produced just now by `precompile_component` on this engine.
    let component = unsafe { Component::deserialize(engine, &artifact)? };
    Ok(Compiled {
        component,
        content_hash,
        origin: Origin::Compiled,
    })
}

fn store_atomically(dir: &Path, file: &Path, artifact: &[u8]) -> std::io::Result<()> {
    crate::private_files::ensure_private_dir(dir)?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = file.with_extension(format!("tmp{}-{seq}", std::process::id()));
    crate::private_files::write_private(&tmp, artifact)?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
