//! The app's settings, from the environment. Every one has a default that suits a laptop, so
//! `npm run dev` and `cargo run` need none; a deployment sets at least `FORGE_JWT_SECRET`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `HOST` (default `127.0.0.1`: only this machine can reach the dev server).
    pub host: String,
    /// `PORT` (default 8080; 0 picks a free port, printed at start).
    pub port: u16,
    /// `DATA_DIR`: where the private database cluster goes when no PostgreSQL server answers.
    pub data_dir: PathBuf,
    /// `WEB_DIR`: the built page (`npm run build`), served for every path the API does not take.
    pub web_dir: PathBuf,
    /// `FORGE_JWT_SECRET`: signs the session tokens. The default outlives restarts, so a page
    /// stays signed in across `npm run dev`'s rebuilds.
    pub jwt_secret: String,
}

/// The secret used without `FORGE_JWT_SECRET`. It is in the source, so anyone who can reach
/// the server could sign a token for any user with it: fine on loopback, not beyond.
const DEV_SECRET: &str = "{{name}}-dev-secret-not-for-production";

static SETTINGS: OnceLock<Settings> = OnceLock::new();

impl Settings {
    pub(crate) fn from_env() -> Result<Self, String> {
        // Defaults relative to this crate, not to the folder it is started from.
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let port = match var("PORT") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("PORT must be a port number, not `{v}`"))?,
            None => 8080,
        };
        Ok(Self {
            host: var("HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port,
            data_dir: var("DATA_DIR").map_or_else(|| manifest.join(".data"), PathBuf::from),
            web_dir: var("WEB_DIR").map_or_else(|| manifest.join("web/dist"), PathBuf::from),
            jwt_secret: var("FORGE_JWT_SECRET").unwrap_or_else(|| DEV_SECRET.into()),
        })
    }

    /// Makes these the settings functions read: they are free functions, found by name, so
    /// they cannot be handed the settings as arguments.
    pub(crate) fn install(self) -> &'static Settings {
        SETTINGS.get_or_init(|| self)
    }

    /// True when the built-in secret would be reachable from other machines.
    pub(crate) fn exposes_dev_secret(&self, addr: IpAddr) -> bool {
        self.jwt_secret == DEV_SECRET && !addr.is_loopback()
    }
}

/// The installed settings; `main` installs them before the server takes any call.
pub(crate) fn get() -> &'static Settings {
    SETTINGS
        .get()
        .expect("main installs the settings before serving")
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
        };
        assert!(s.exposes_dev_secret("0.0.0.0".parse().unwrap()));
        assert!(s.exposes_dev_secret("192.168.1.5".parse().unwrap()));
        assert!(!s.exposes_dev_secret("127.0.0.1".parse().unwrap()));
        assert!(!s.exposes_dev_secret("::1".parse().unwrap()));
        s.jwt_secret = "a-secret-of-my-own-a-secret-of-my-own".into();
        assert!(!s.exposes_dev_secret("0.0.0.0".parse().unwrap()));
    }
}
