//! `PluginError`: why a plugin could not be loaded, reloaded or checked. Every variant that
//! concerns a file names the plugin and the file, so a refusal to start is self-explanatory.

use std::path::PathBuf;

/// A failure to load, reload or check a plugin. (Failures *during a call* are not errors of
/// this type: they deny the request, see `PluginHost::evaluate`.)
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A `[[plugin]]` table is invalid.
    #[error("plugin `{name}`: invalid settings: {reason}")]
    Settings {
        /// Plugin name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// The plugin configuration could not be parsed.
    #[error("plugin configuration: {0}")]
    Parse(String),

    /// The component file cannot be read.
    #[error("plugin `{name}` ({}): cannot read the file: {source}", path.display())]
    Read {
        /// Plugin name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The file is not a valid WebAssembly component (or failed to compile).
    #[error("plugin `{name}` ({}): not a valid WebAssembly component: {reason}", path.display())]
    Invalid {
        /// Plugin name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The compiler's message.
        reason: String,
    },

    /// The component was built against an incompatible version of the WIT package.
    #[error(
        "plugin `{name}` ({}): built against lockbroker:plugin@{found}, but this broker provides \
         lockbroker:plugin@{expected}; rebuild the plugin against the wit/ folder of this broker",
        path.display()
    )]
    VersionMismatch {
        /// Plugin name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The version the component imports/exports.
        found: String,
        /// The version this host implements.
        expected: String,
    },

    /// The component does not implement the world its `kind` names.
    #[error("plugin `{name}` ({}): configured as `{expected}`, but {detail}", path.display())]
    WrongWorld {
        /// Plugin name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The configured world.
        expected: &'static str,
        /// What the component is instead.
        detail: String,
    },

    /// The component needs imports the host does not provide, or instantiation failed.
    #[error("plugin `{name}` ({}): cannot be instantiated: {reason}", path.display())]
    Instantiate {
        /// Plugin name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The kind cannot be configured here: a `mirror` plugin is configured in the `[mirror]`
    /// section (it needs Redis connections and runs off the hot path), not as a `[[plugin]]`.
    #[error(
        "plugin `{name}`: a `{kind}` plugin is not a request policy; configure it in the \
         [mirror] section (path = ...), not as a [[plugin]]"
    )]
    Unsupported {
        /// Plugin name.
        name: String,
        /// The kind.
        kind: &'static str,
    },

    /// The wasmtime engine could not be created.
    #[error("plugin engine: {0}")]
    Engine(String),
}
