//! Helpers of the `plugins_*` tests (and of `support::mirror`): building the real plugins once,
//! paths to them, settings and requests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use lockbroker::plugins::{LockMode, Operation, PluginKind, PluginSettings, PolicyRequest};

/// `plugins/` at the repository root.
pub fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins")
}

/// Builds the plugins with `plugins/build.sh` once per test process (under a file lock, so
/// parallel test processes don't race), then returns `plugins/dist`. The build is incremental,
/// so this is quick when nothing changed. Set `LOCKBROKER_PLUGINS_PREBUILT=1` to skip it and use
/// whatever is in `plugins/dist`.
pub fn dist() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build() -> Result<PathBuf, String> {
    let dir = plugins_dir();
    let dist = dir.join("dist");
    let required = [
        "key_prefix_acl.wasm",
        "ttl_clamp.wasm",
        "template_key_policy.wasm",
        "fault_key.wasm",
        "fault_ttl.wasm",
        "version_mismatch.wasm",
    ];
    let all_present = required.iter().all(|f| dist.join(f).is_file());
    if all_present && std::env::var_os("LOCKBROKER_PLUGINS_PREBUILT").is_some() {
        return Ok(dist);
    }
    std::fs::create_dir_all(dir.join("target")).map_err(|e| e.to_string())?;
    let lock = std::fs::File::create(dir.join("target/.tests-build.lock"))
        .map_err(|e| format!("cannot create the plugin build lock: {e}"))?;
    lock.lock()
        .map_err(|e| format!("cannot take the plugin build lock: {e}"))?;
    let out = std::process::Command::new("bash")
        .arg(dir.join("build.sh"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|e| format!("cannot run plugins/build.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "plugins/build.sh failed (run it by hand to see why):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for f in required {
        if !dist.join(f).is_file() {
            return Err(format!("plugins/build.sh did not produce dist/{f}"));
        }
    }
    Ok(dist)
}

/// Path of a built plugin, e.g. `plugin("key_prefix_acl")`.
pub fn plugin(stem: &str) -> PathBuf {
    dist().join(format!("{stem}.wasm"))
}

/// Settings for a built plugin.
pub fn settings(name: &str, stem: &str, kind: PluginKind) -> PluginSettings {
    PluginSettings::new(name, plugin(stem), kind)
}

/// An acquire request.
pub fn acquire<'a>(
    principal: &'a str,
    key: &'a [u8],
    mode: LockMode,
    ttl_ms: u64,
) -> PolicyRequest<'a> {
    PolicyRequest {
        key,
        mode,
        ttl: Duration::from_millis(ttl_ms),
        principal,
        op: Operation::Acquire,
    }
}

/// An exclusive acquire request with the default TTL.
pub fn excl<'a>(principal: &'a str, key: &'a [u8]) -> PolicyRequest<'a> {
    acquire(principal, key, LockMode::Exclusive, 0)
}

/// A fresh temporary directory (for the artifact cache and copied plugin files).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}
