//! The demo's settings, from the environment (every one has a default, so none is needed).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `HOST` (default `127.0.0.1`).
    pub host: String,
    /// `PORT` (default 8080).
    pub port: u16,
    /// `DEMO_DATA_DIR`: the private database cluster (when one is needed) and exported files.
    pub data_dir: PathBuf,
    /// `DEMO_WEB_DIR`: the built page (`npm run build -w @forge/demo-web`).
    pub web_dir: PathBuf,
    /// `FORGE_JWT_SECRET`: signs the demo's tokens. The default is fine on a laptop, and it
    /// outlives restarts, so a signed-in page stays signed in across one.
    pub jwt_secret: String,
    /// `DEMO_EXPORT_CHUNK_DELAY_MS` (default 150): a pause after each exported chunk. Exporting
    /// 20,000 rows takes milliseconds; the pause paces it so that a person can watch the bar
    /// and press Cancel.
    pub export_chunk_delay: Duration,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

impl Settings {
    pub(crate) fn from_env() -> Result<Self, String> {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str, default: u64| -> Result<u64, String> {
            var(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| format!("{name} must be a whole number, not `{v}`"))
            })
        };
        Ok(Self {
            host: var("HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port: u16::try_from(number("PORT", 8080)?)
                .map_err(|_| "PORT must be at most 65535".to_string())?,
            data_dir: var("DEMO_DATA_DIR").map_or_else(|| manifest.join(".data"), PathBuf::from),
            web_dir: var("DEMO_WEB_DIR").map_or_else(|| manifest.join("web/dist"), PathBuf::from),
            jwt_secret: var("FORGE_JWT_SECRET")
                .unwrap_or_else(|| "forge-demo-secret-not-for-production".into()),
            export_chunk_delay: Duration::from_millis(number("DEMO_EXPORT_CHUNK_DELAY_MS", 150)?),
        })
    }

    /// Makes these the settings that jobs read (jobs are free functions, found by name).
    pub(crate) fn install(self) -> &'static Settings {
        SETTINGS.get_or_init(|| self)
    }

    pub(crate) fn exports_dir(&self) -> PathBuf {
        self.data_dir.join("exports")
    }
}

/// The installed settings. Jobs run only after `main` installed them.
pub(crate) fn get() -> &'static Settings {
    SETTINGS
        .get()
        .expect("main installs the settings before starting workers")
}
