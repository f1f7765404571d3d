//! kernel.org: resolve a version or prefix through releases.json, download the tarball.
//!
//! `KTSTR_KERNEL_MIRROR` (a base URL) replaces both www.kernel.org and cdn.kernel.org, so
//! the same code runs against a local HTTP server in tests and behind a mirror in CI.

use super::source::{is_version_like, version_key, version_matches};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const RELEASES: &str = "https://www.kernel.org/releases.json";
const CDN: &str = "https://cdn.kernel.org";

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("`{0}` is not a kernel version: expected MAJOR.MINOR[.PATCH] or MAJOR.MINOR-rcN (e.g. 6.12 or 6.12.3)")]
    BadVersion(String),
    #[error("fetching {url}: {detail}")]
    Http { url: String, detail: String },
    #[error("{url}: unexpected response ({detail})")]
    BadBody { url: String, detail: String },
    #[error(
        "kernel {requested} is not a release listed at {url} (listed: {listed}); check the version, or build from --source/--tarball"
    )]
    NoSuchVersion { requested: String, url: String, listed: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn mirror() -> Option<String> {
    std::env::var("KTSTR_KERNEL_MIRROR").ok().filter(|s| !s.is_empty()).map(|s| s.trim_end_matches('/').to_string())
}

fn releases_url() -> String {
    mirror().map(|m| format!("{m}/releases.json")).unwrap_or_else(|| RELEASES.into())
}

/// Tarball URL of a stable release (`rc` releases come from git.kernel.org, not supported
/// offline; they resolve through releases.json's `source` field when listed).
pub fn tarball_url(version: &str) -> String {
    let major = version.split('.').next().unwrap_or("6");
    let base = mirror().unwrap_or_else(|| CDN.into());
    format!("{base}/pub/linux/kernel/v{major}.x/linux-{version}.tar.xz")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    pub moniker: String,
    pub source: Option<String>,
}

/// Parses kernel.org's releases.json.
pub fn parse_releases(json: &[u8]) -> Result<Vec<Release>, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let list = v.get("releases").and_then(|r| r.as_array()).ok_or("no `releases` array")?;
    Ok(list
        .iter()
        .filter_map(|r| {
            Some(Release {
                version: r.get("version")?.as_str()?.to_string(),
                moniker: r.get("moniker").and_then(|m| m.as_str()).unwrap_or("").to_string(),
                source: r.get("source").and_then(|s| s.as_str()).map(str::to_string),
            })
        })
        .collect())
}

/// Picks the release for `requested`: the newest listed release matching the prefix; a full
/// `X.Y.Z` that is not listed (older patch releases drop off the list) maps to its CDN URL.
pub fn pick(requested: &str, releases: &[Release], url: &str) -> Result<(String, String), DownloadError> {
    if !is_version_like(requested) {
        return Err(DownloadError::BadVersion(requested.into()));
    }
    let best = releases
        .iter()
        .filter(|r| r.moniker != "linux-next" && version_matches(requested, &r.version))
        .max_by_key(|r| version_key(&r.version));
    if let Some(r) = best {
        let src = r.source.clone().filter(|_| mirror().is_none()).unwrap_or_else(|| tarball_url(&r.version));
        return Ok((r.version.clone(), src));
    }
    let full = requested.split('.').count() == 3 && !requested.contains("-rc");
    if full && releases.iter().any(|r| series(&r.version) == series(requested)) {
        return Ok((requested.into(), tarball_url(requested)));
    }
    let listed = releases.iter().map(|r| r.version.as_str()).collect::<Vec<_>>().join(", ");
    Err(DownloadError::NoSuchVersion { requested: requested.into(), url: url.into(), listed })
}

fn series(v: &str) -> String {
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

fn get(url: &str) -> Result<ureq::http::Response<ureq::Body>, DownloadError> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_connect(Some(std::time::Duration::from_secs(10))).build().into();
    let resp = agent.get(url).call().map_err(|e| DownloadError::Http { url: url.into(), detail: e.to_string() })?;
    let html =
        resp.headers().get("content-type").and_then(|c| c.to_str().ok()).is_some_and(|c| c.starts_with("text/html"));
    if html {
        // Captive portals and error pages answer 200 with HTML.
        return Err(DownloadError::BadBody { url: url.into(), detail: "got an HTML page, not data".into() });
    }
    Ok(resp)
}

/// Resolves `requested` to (exact version, tarball URL).
pub fn resolve(requested: &str) -> Result<(String, String), DownloadError> {
    if !is_version_like(requested) {
        return Err(DownloadError::BadVersion(requested.into()));
    }
    let url = releases_url();
    let mut body = Vec::new();
    get(&url)?
        .into_body()
        .into_reader()
        .take(4 << 20)
        .read_to_end(&mut body)
        .map_err(|e| DownloadError::Http { url: url.clone(), detail: e.to_string() })?;
    let releases = parse_releases(&body).map_err(|detail| DownloadError::BadBody { url: url.clone(), detail })?;
    pick(requested, &releases, &url)
}

/// Downloads `url` to `dest` (temp file + rename; reused when already present).
pub fn fetch(url: &str, dest: &Path, mut progress: impl FnMut(u64)) -> Result<(), DownloadError> {
    if dest.is_file() {
        return Ok(());
    }
    let dir = dest.parent().expect("dest has a parent");
    let io_err = |source| DownloadError::Io { path: dir.into(), source };
    fs::create_dir_all(dir).map_err(io_err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
    let mut reader = get(url)?.into_body().into_with_config().limit(2 << 30).reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| DownloadError::Http { url: url.into(), detail: e.to_string() })?;
        if n == 0 {
            break;
        }
        tmp.write_all(&buf[..n]).map_err(io_err)?;
        total += n as u64;
        progress(total);
    }
    tmp.persist(dest).map_err(|e| DownloadError::Io { path: dest.into(), source: e.error })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &str, m: &str) -> Release {
        Release { version: v.into(), moniker: m.into(), source: None }
    }

    #[test]
    fn pick_newest_patch_of_a_series() {
        let list = [rel("6.13-rc2", "mainline"), rel("6.12.9", "stable"), rel("6.6.70", "longterm")];
        assert_eq!(pick("6.12", &list, "u").unwrap().0, "6.12.9");
        assert_eq!(pick("6.6", &list, "u").unwrap().0, "6.6.70");
        assert_eq!(pick("6.13-rc2", &list, "u").unwrap().0, "6.13-rc2");
        // An older patch release of a listed series is still downloadable by URL.
        let (v, url) = pick("6.12.3", &list, "u").unwrap();
        assert_eq!(v, "6.12.3");
        assert!(url.ends_with("/v6.x/linux-6.12.3.tar.xz"), "{url}");
        let e = pick("6.99", &list, "u").unwrap_err().to_string();
        assert!(e.contains("6.99") && e.contains("6.12.9"), "{e}");
        assert!(matches!(pick("six", &list, "u"), Err(DownloadError::BadVersion(_))));
    }

    #[test]
    fn parse_real_shape() {
        let json = br#"{"latest_stable":{"version":"6.12.9"},"releases":[
          {"iseol":false,"version":"6.12.9","moniker":"stable","source":"https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.9.tar.xz"},
          {"version":"next-20250110","moniker":"linux-next","source":null}]}"#;
        let r = parse_releases(json).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].source.as_deref(), Some("https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.9.tar.xz"));
        assert!(parse_releases(b"<html>").is_err());
    }
}
