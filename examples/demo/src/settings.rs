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

/// The secret used without `FORGE_JWT_SECRET`. It is in the public source, so anyone who can
/// reach the demo can sign a token for any user with it.
const DEV_SECRET: &str = "forge-demo-secret-not-for-production";

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
            jwt_secret: var("FORGE_JWT_SECRET").unwrap_or_else(|| DEV_SECRET.into()),
            export_chunk_delay: Duration::from_millis(number("DEMO_EXPORT_CHUNK_DELAY_MS", 150)?),
        })
    }

    /// Makes these the settings that jobs read (jobs are free functions, found by name).
    pub(crate) fn install(self) -> &'static Settings {
        SETTINGS.get_or_init(|| self)
    }

    /// True when the built-in secret would be reachable from other machines: `addr` is not a
    /// loopback address.
    pub(crate) fn exposes_dev_secret(&self, addr: std::net::IpAddr) -> bool {
        self.jwt_secret == DEV_SECRET && !addr.is_loopback()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_secret_is_exposed_only_off_loopback() {
        let mut s = Settings {
            host: "0.0.0.0".into(),
            port: 0,
            data_dir: PathBuf::new(),
            web_dir: PathBuf::new(),
            jwt_secret: DEV_SECRET.into(),
            export_chunk_delay: Duration::ZERO,
        };
        assert!(s.exposes_dev_secret("0.0.0.0".parse().unwrap()));
        assert!(s.exposes_dev_secret("192.168.1.5".parse().unwrap()));
        assert!(!s.exposes_dev_secret("127.0.0.1".parse().unwrap()));
        assert!(!s.exposes_dev_secret("::1".parse().unwrap()));
        s.jwt_secret = "a-secret-of-my-own-a-secret-of-my-own".into();
        assert!(!s.exposes_dev_secret("0.0.0.0".parse().unwrap()));
    }
}
