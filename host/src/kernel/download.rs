//! kernel.org: resolve a version or prefix through releases.json, download the tarball and
//! verify it against the sha256 sums published beside it (see [`super::sums`]).
//!
//! `KTSTR_KERNEL_MIRROR` (a base URL) replaces both www.kernel.org and cdn.kernel.org, so
//! the same code runs against a local HTTP server in tests and behind a mirror in CI.
//!
//! Everything from the network is untrusted: bodies are size-capped, releases.json may list
//! at most [`MAX_RELEASES`] entries, and a version must match the release grammar
//! ([`is_release_version`]) before it names a file or a URL.

use super::source::{is_version_like, version_key, version_matches};
use super::sums;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const RELEASES: &str = "https://www.kernel.org/releases.json";
const CDN: &str = "https://cdn.kernel.org";
/// Largest releases.json read (kernel.org's is about 10 KiB).
pub const MAX_RELEASES_BYTES: u64 = 1 << 20;
/// Most entries releases.json may list (kernel.org lists about 15).
pub const MAX_RELEASES: usize = 1000;
/// Longest version string taken from the network or the command line.
pub const MAX_VERSION_LEN: usize = 32;
/// Longest `source` URL and `moniker` taken from releases.json.
const MAX_URL_LEN: usize = 512;
const MAX_MONIKER_LEN: usize = 64;
/// Largest tarball downloaded (6.12's .tar.xz is about 140 MiB).
pub const MAX_TARBALL_BYTES: u64 = 2 << 30;
/// Set to `1` to build a downloaded tarball for which the mirror publishes no sha256.
pub const ALLOW_UNVERIFIED_ENV: &str = "KTSTR_ALLOW_UNVERIFIED_DOWNLOAD";

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
    #[error(
        "{file}: sha256 {got} does not match {expected}, the sum {sums_url} publishes for it (downloaded from {url}); \
         the download was discarded; try again, or check the mirror"
    )]
    Mismatch { file: PathBuf, url: String, sums_url: String, expected: String, got: String },
    #[error(
        "no published sha256 for {file} ({detail}); a mirror must serve sha256sums.asc beside the tarballs, as \
         kernel.org does; to build it unverified anyway, set {ALLOW_UNVERIFIED_ENV}=1"
    )]
    NoSums { file: String, detail: String },
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

/// A release version as it may name a file: `MAJOR.MINOR[.PATCH]` or `MAJOR.MINOR-rcN`,
/// digits and dots, at most [`MAX_VERSION_LEN`] bytes.
pub fn is_release_version(v: &str) -> bool {
    v.len() <= MAX_VERSION_LEN && is_version_like(v) && v.split('-').next().is_some_and(|m| m.contains('.'))
}

/// Parses kernel.org's releases.json; the error names the entry and the field.
pub fn parse_releases(json: &[u8]) -> Result<Vec<Release>, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let list = v.get("releases").and_then(|r| r.as_array()).ok_or("no `releases` array")?;
    if list.len() > MAX_RELEASES {
        return Err(format!("`releases` has {} entries, more than {MAX_RELEASES}", list.len()));
    }
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let field = |name: &str| r.get(name).and_then(|m| m.as_str());
        let moniker = field("moniker").unwrap_or("");
        if moniker.len() > MAX_MONIKER_LEN {
            return Err(format!("releases[{i}].moniker is longer than {MAX_MONIKER_LEN} bytes"));
        }
        if moniker == "linux-next" {
            continue; // snapshots (`next-20250110`), not releases
        }
        let version = field("version").ok_or_else(|| format!("releases[{i}].version is missing or not a string"))?;
        if !is_release_version(version) {
            let shown: String = version.chars().take(MAX_VERSION_LEN + 8).collect();
            return Err(format!(
                "releases[{i}].version {shown:?} is not a release version (MAJOR.MINOR[.PATCH] or MAJOR.MINOR-rcN, \
                 at most {MAX_VERSION_LEN} bytes)"
            ));
        }
        let source = field("source").map(|s| check_source(s).map_err(|why| format!("releases[{i}].source {why}")));
        out.push(Release { version: version.into(), moniker: moniker.into(), source: source.transpose()? });
    }
    Ok(out)
}

/// A tarball URL from releases.json: https on kernel.org, short, no spaces or controls.
fn check_source(url: &str) -> Result<String, String> {
    let host = url.strip_prefix("https://").and_then(|rest| rest.split('/').next()).unwrap_or("");
    let on_kernel_org = host == "kernel.org" || host.ends_with(".kernel.org");
    if url.len() > MAX_URL_LEN || !on_kernel_org || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let shown: String = url.chars().take(80).collect();
        return Err(format!("{shown:?} is not an https URL on kernel.org of at most {MAX_URL_LEN} bytes"));
    }
    Ok(url.into())
}

/// Picks the release for `requested`: the newest listed release matching the prefix; a full
/// `X.Y.Z` that is not listed (older patch releases drop off the list) maps to its CDN URL.
pub fn pick(requested: &str, releases: &[Release], url: &str) -> Result<(String, String), DownloadError> {
    if !is_version_like(requested) || requested.len() > MAX_VERSION_LEN {
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

/// Reads at most `cap` bytes of a body; a longer one is an error, not silently cut.
pub fn read_capped(mut reader: impl Read, cap: u64, url: &str) -> Result<Vec<u8>, DownloadError> {
    let mut body = Vec::new();
    let http = |detail: String| DownloadError::Http { url: url.into(), detail };
    reader.by_ref().take(cap + 1).read_to_end(&mut body).map_err(|e| http(e.to_string()))?;
    if body.len() as u64 > cap {
        return Err(DownloadError::BadBody { url: url.into(), detail: format!("the body is larger than {cap} bytes") });
    }
    Ok(body)
}

fn get_capped(url: &str, cap: u64) -> Result<Vec<u8>, DownloadError> {
    let body = get(url)?.into_body().into_with_config().limit(cap + 1).reader();
    read_capped(body, cap, url)
}

/// Resolves `requested` to (exact version, tarball URL).
pub fn resolve(requested: &str) -> Result<(String, String), DownloadError> {
    if !is_version_like(requested) || requested.len() > MAX_VERSION_LEN {
        return Err(DownloadError::BadVersion(requested.into()));
    }
    let url = releases_url();
    let body = get_capped(&url, MAX_RELEASES_BYTES)?;
    let releases = parse_releases(&body).map_err(|detail| DownloadError::BadBody { url: url.clone(), detail })?;
    pick(requested, &releases, &url)
}

/// A tarball's published sha256 and where it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub sha256: String,
    pub sums_url: String,
}

/// The sha256 published for the tarball at `url` (in `sha256sums.asc` beside it). `None`
/// only when there is none and [`ALLOW_UNVERIFIED_ENV`] allows building it unverified.
pub fn published_sha256(url: &str) -> Result<Option<Published>, DownloadError> {
    let Some((sums_url, file)) = sums::location(url) else {
        return unverified(url, "not a tarball URL".into());
    };
    let found = match get_capped(&sums_url, sums::MAX_BYTES) {
        Ok(body) => {
            sums::find(&body, &file).map_err(|detail| DownloadError::BadBody { url: sums_url.clone(), detail })?
        }
        Err(e) => return unverified(&file, e.to_string()),
    };
    match found {
        Some(sha256) => Ok(Some(Published { sha256, sums_url })),
        None => unverified(&file, format!("{sums_url} does not list it")),
    }
}

fn unverified(file: &str, detail: String) -> Result<Option<Published>, DownloadError> {
    if std::env::var(ALLOW_UNVERIFIED_ENV).is_ok_and(|v| v == "1") {
        eprintln!("warning: {file} is not verified ({detail}); building it because {ALLOW_UNVERIFIED_ENV}=1");
        return Ok(None);
    }
    Err(DownloadError::NoSums { file: file.into(), detail })
}

/// Downloads `url` to `dest` and returns its sha256. The bytes go to a temp file next to
/// `dest`, hashed on the way, and are renamed into place only when they match `expected`
/// (when given); otherwise nothing is left behind. A `dest` already present is reused
/// when it matches, and downloaded again when it does not.
pub fn fetch(
    url: &str,
    dest: &Path,
    expected: Option<&Published>,
    progress: impl FnMut(u64),
) -> Result<String, DownloadError> {
    let matches = |sum: &str| expected.is_none_or(|e| e.sha256 == sum);
    if dest.is_file() {
        let have = super::source::sha256_file(dest)
            .map_err(|e| DownloadError::Io { path: dest.into(), source: io::Error::other(e.to_string()) })?;
        if matches(&have) {
            return Ok(have);
        }
        eprintln!("{} does not match its published sha256; downloading it again", dest.display());
        fs::remove_file(dest).map_err(|source| DownloadError::Io { path: dest.into(), source })?;
    }
    let dir = dest.parent().expect("dest has a parent");
    fs::create_dir_all(dir).map_err(|source| DownloadError::Io { path: dir.into(), source })?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(dir)
        .map_err(|source| DownloadError::Io { path: dir.into(), source })?;
    let reader = get(url)?.into_body().into_with_config().limit(MAX_TARBALL_BYTES).reader();
    let tmp_path = tmp.path().to_owned();
    let got = copy_hashed(reader, tmp.as_file_mut(), url, &tmp_path, progress)?;
    if let Some(e) = expected.filter(|_| !matches(&got)) {
        // `tmp` is removed when dropped: a mismatch leaves nothing behind.
        return Err(DownloadError::Mismatch {
            file: dest.into(),
            url: url.into(),
            sums_url: e.sums_url.clone(),
            expected: e.sha256.clone(),
            got,
        });
    }
    tmp.persist(dest).map_err(|e| DownloadError::Io { path: dest.into(), source: e.error })?;
    Ok(got)
}

/// Copies `reader` into `out` (the file at `path`), returning the hex sha256 of the bytes.
fn copy_hashed(
    mut reader: impl Read,
    out: &mut fs::File,
    url: &str,
    path: &Path,
    mut progress: impl FnMut(u64),
) -> Result<String, DownloadError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let write_err = |source| DownloadError::Io { path: path.into(), source };
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| DownloadError::Http { url: url.into(), detail: format!("{e} (after {total} bytes)") })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(write_err)?;
        total += n as u64;
        progress(total);
    }
    out.flush().map_err(write_err)?;
    Ok(hex::encode(h.finalize()))
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
        assert_eq!(r.len(), 1, "linux-next is not a release");
        assert_eq!(r[0].source.as_deref(), Some("https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.9.tar.xz"));
        assert!(parse_releases(b"<html>").is_err());
    }

    /// Every version from the network is checked before it names a file or a URL; the error
    /// names the entry and the field.
    #[test]
    fn hostile_releases_json_is_refused_naming_the_field() {
        let bad = |version: &str| {
            let json = serde_json::json!({"releases": [
                {"version": "6.12.9", "moniker": "stable"},
                {"version": version, "moniker": "stable"},
            ]});
            parse_releases(json.to_string().as_bytes()).unwrap_err()
        };
        for v in ["../../../../tmp/evil", "6.12.9/../../x", "6.12.9\n", "6..12", &format!("6.12.{}", "9".repeat(40))] {
            let e = bad(v);
            assert!(e.contains("releases[1].version"), "{v:?}: {e}");
        }
        let many: Vec<_> = (0..MAX_RELEASES + 1).map(|i| serde_json::json!({"version": format!("6.{i}.1")})).collect();
        let e = parse_releases(serde_json::json!({ "releases": many }).to_string().as_bytes()).unwrap_err();
        assert!(e.contains("entries"), "{e}");
        // linux-next snapshots are not releases: left out, not an error.
        let next = br#"{"releases":[{"version":"next-20250110","moniker":"linux-next"}]}"#;
        assert!(parse_releases(next).unwrap().is_empty());
    }
}
