//! `check_file`, behind `lockbroker plugin check FILE.wasm`: compile a component, report its WIT
//! version, world, imports and exports, and make one smoke call with a sample request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bindings::{WIT_PACKAGE, WIT_VERSION};
use super::engine::{TickerGuard, engine};
use super::error::PluginError;
use super::host::linker;
use super::plugin::LoadedPlugin;
use super::pool::block_on;
use super::request::{KeyDecision, LockMode, Operation, PolicyRequest, to_wit};
use super::settings::{PluginKind, PluginSettings};
use super::stats::Counters;
use super::world;

/// Time budget of the smoke call (generous: it is the instance's first call).
const SMOKE_BUDGET: Duration = Duration::from_millis(250);

/// What `check_file` found. `Display` prints it for the CLI.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The file checked.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// The world the component implements.
    pub kind: PluginKind,
    /// The `lockbroker:plugin` version it was built against.
    pub wit_version: String,
    /// Its imports.
    pub imports: Vec<String>,
    /// Its exports.
    pub exports: Vec<String>,
    /// Compile time.
    pub compile_time: Duration,
    /// The smoke call's request, described.
    pub smoke_request: String,
    /// The smoke call's result, described (`None` for kinds without a host yet).
    pub smoke_result: Option<String>,
    /// Duration of the smoke call (a cold call: includes parsing the plugin's settings).
    pub smoke_time: Duration,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: OK", self.path.display())?;
        writeln!(f, "  size:        {} bytes", self.size)?;
        writeln!(
            f,
            "  world:       {WIT_PACKAGE}/{}@{}",
            self.kind, self.wit_version
        )?;
        writeln!(f, "  host:        {WIT_PACKAGE}@{WIT_VERSION} (compatible)")?;
        writeln!(f, "  compiled in: {:?}", self.compile_time)?;
        writeln!(f, "  imports:     {}", self.imports.join(", "))?;
        writeln!(f, "  exports:     {}", self.exports.join(", "))?;
        match &self.smoke_result {
            Some(result) => {
                writeln!(f, "  smoke call:  {} -> {result}", self.smoke_request)?;
                write!(
                    f,
                    "  call time:   {:?} (first call, no settings)",
                    self.smoke_time
                )
            }
            None => write!(
                f,
                "  smoke call:  skipped (no host for the `{}` world yet)",
                self.kind
            ),
        }
    }
}

/// Loads `path`, validates its WIT version and world, instantiates it with empty settings and
/// makes one smoke call (`acquire` of `lockbroker/check` by principal `check`). Nothing is
/// cached. Errors name the file and the reason.
pub fn check_file(path: &Path) -> Result<CheckReport, PluginError> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".to_string());
    let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
        name: name.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    let engine = engine()?;
    let started = Instant::now();
    let component =
        wasmtime::component::Component::new(engine, &bytes).map_err(|e| PluginError::Invalid {
            name: name.clone(),
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        })?;
    let compile_time = started.elapsed();
    let shape = world::shape(engine, &component);
    let kind = shape.world.ok_or_else(|| PluginError::WrongWorld {
        name: name.clone(),
        path: path.to_path_buf(),
        expected: "key-policy, ttl-policy or mirror",
        detail: shape
            .world_mismatch(PluginKind::KeyPolicy)
            .unwrap_or_default(),
    })?;
    let wit_version = shape.versions.first().cloned().unwrap_or_default();
    let mut report = CheckReport {
        path: path.to_path_buf(),
        size: bytes.len() as u64,
        kind,
        wit_version,
        imports: shape.imports.clone(),
        exports: shape.exports.clone(),
        compile_time,
        smoke_request: "acquire exclusive `lockbroker/check` by `check`, ttl 0 (default)"
            .to_string(),
        smoke_result: None,
        smoke_time: Duration::ZERO,
    };
    if kind == PluginKind::Mirror {
        if let Some(found) = shape.incompatible_version() {
            return Err(PluginError::VersionMismatch {
                name,
                path: path.to_path_buf(),
                found: found.to_string(),
                expected: WIT_VERSION.to_string(),
            });
        }
        return Ok(report);
    }
    let mut settings = PluginSettings::new(name, path, kind);
    settings.time_budget = SMOKE_BUDGET;
    let _ticker = TickerGuard::acquire(engine)?;
    // The component was compiled above; `from_bytes` without a cache dir compiles again, which
    // is acceptable for a one-off check and keeps a single code path for the checks.
    let plugin = LoadedPlugin::from_bytes(
        engine,
        linker()?,
        Arc::new(settings.clone()),
        &bytes,
        None,
        Arc::new(Counters::default()),
    )?;
    let req = PolicyRequest {
        key: b"lockbroker/check",
        mode: LockMode::Exclusive,
        ttl: Duration::ZERO,
        principal: "check",
        op: Operation::Acquire,
    };
    let wit = to_wit(&req, req.key, 0);
    let started = Instant::now();
    let result = match kind {
        PluginKind::KeyPolicy => block_on(plugin.check(&wit)).map(|d| match d {
            KeyDecision::Allow => "allow".to_string(),
            KeyDecision::Rewrite(k) => format!("rewrite to `{}`", String::from_utf8_lossy(&k)),
            KeyDecision::Deny(r) => format!("deny: {r}"),
        }),
        _ => block_on(plugin.grant_ttl(&wit)).map(|r| match r {
            Ok(ms) => format!("ttl {ms} ms"),
            Err(e) => format!("error: {e}"),
        }),
    };
    report.smoke_time = started.elapsed();
    let result = result.map_err(|fault| PluginError::Instantiate {
        name: settings.name.clone(),
        path: path.to_path_buf(),
        reason: format!("the smoke call failed: {fault}"),
    })?;
    report.smoke_result = Some(result);
    Ok(report)
}
