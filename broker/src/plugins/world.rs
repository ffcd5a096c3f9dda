//! Inspecting a compiled component before instantiating it: which version of the
//! `lockbroker:plugin` package it was built against (refused when incompatible) and which world
//! it implements (refused when it is not the configured kind).

use wasmtime::Engine;
use wasmtime::component::Component;

use super::bindings::{WIT_PACKAGE, WIT_VERSION};
use super::settings::PluginKind;

/// What a component declares about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Versions of `lockbroker:plugin` named by its imports/exports (usually exactly one).
    pub versions: Vec<String>,
    /// The world it implements, judged by its exports.
    pub world: Option<PluginKind>,
    /// Import names (for the check report).
    pub imports: Vec<String>,
    /// Export names (for the check report).
    pub exports: Vec<String>,
}

/// Reads the shape of `component`.
pub fn shape(engine: &Engine, component: &Component) -> Shape {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let prefix = format!("{WIT_PACKAGE}/");
    let mut versions: Vec<String> = imports
        .iter()
        .chain(&exports)
        .filter_map(|name| name.strip_prefix(&prefix))
        .map(|rest| match rest.split_once('@') {
            Some((_, version)) => version.to_string(),
            None => "(unversioned)".to_string(),
        })
        .collect();
    versions.sort();
    versions.dedup();
    let has = |name: &str| exports.iter().any(|e| e == name);
    let world = if has("check") {
        Some(PluginKind::KeyPolicy)
    } else if has("grant-ttl") {
        Some(PluginKind::TtlPolicy)
    } else if has("on-events") && has("restore") {
        Some(PluginKind::Mirror)
    } else {
        None
    };
    Shape {
        versions,
        world,
        imports,
        exports,
    }
}

/// Whether a component built against `version` can run on this host: same major version, and
/// for `0.x` the same minor version too (semver's rule for pre-1.0 packages).
pub fn compatible(version: &str) -> bool {
    fn major_minor(v: &str) -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    }
    match (major_minor(version), major_minor(WIT_VERSION)) {
        (Some((0, minor)), Some((0, ours))) => minor == ours,
        (Some((major, _)), Some((ours, _))) => major == ours,
        _ => false,
    }
}

impl Shape {
    /// The first incompatible version named by the component, if any.
    pub fn incompatible_version(&self) -> Option<&str> {
        self.versions
            .iter()
            .map(String::as_str)
            .find(|v| !compatible(v))
    }

    /// Why the component does not implement `kind`, if it does not.
    pub fn world_mismatch(&self, kind: PluginKind) -> Option<String> {
        match self.world {
            Some(world) if world == kind => None,
            Some(world) => Some(format!(
                "the component implements the `{world}` world (exports: {})",
                self.exports.join(", ")
            )),
            None => Some(format!(
                "the component implements no lockbroker world (exports: {})",
                if self.exports.is_empty() {
                    "none".to_string()
                } else {
                    self.exports.join(", ")
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_rules() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("1.0.0"));
        assert!(!compatible("(unversioned)"));
    }
}
