//! kernel.org's published sha256 sums: every `pub/linux/kernel/vN.x/` directory has a
//! `sha256sums.asc` listing `<64 hex>  <file name>` for its files, as a PGP clearsigned text.
//!
//! Only the sums are read; the PGP signature is NOT verified (that would need kernel.org's
//! keys and a PGP implementation). The sums come over https from the same host as the
//! tarball, so they catch corrupt or truncated downloads and a mirror serving other bytes
//! than it lists, not a compromised server.

/// Largest `sha256sums.asc` read (kernel.org's v6.x one lists every release: about 1 MiB).
pub const MAX_BYTES: u64 = 16 << 20;
const NAME: &str = "sha256sums.asc";

/// The sums URL beside a tarball URL, and the tarball's file name.
pub fn location(tarball_url: &str) -> Option<(String, String)> {
    let (dir, file) = tarball_url.rsplit_once('/')?;
    let is_tarball = file.starts_with("linux-") && file.contains(".tar.") && !dir.is_empty();
    is_tarball.then(|| (format!("{dir}/{NAME}"), file.to_string()))
}

/// The signed text of a clearsigned message (dash-escaping undone), or all of `text`.
fn signed_part(text: &str) -> Vec<&str> {
    let mut lines = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
    if !text.contains("-----BEGIN PGP SIGNED MESSAGE-----") {
        return lines.collect();
    }
    // Armor headers (`Hash: SHA256`) end at the first empty line.
    lines.by_ref().skip_while(|l| !l.starts_with("-----BEGIN PGP SIGNED MESSAGE-----")).find(|l| l.is_empty());
    lines
        .take_while(|l| !l.starts_with("-----BEGIN PGP SIGNATURE-----"))
        .map(|l| l.strip_prefix("- ").unwrap_or(l))
        .collect()
}

/// The sha256 (lower-case hex) listed for `file`, if any. A line for `file` that is not a
/// sum, or two different sums for it, is an error naming the line.
pub fn find(body: &[u8], file: &str) -> Result<Option<String>, String> {
    let text = std::str::from_utf8(body).map_err(|_| format!("{NAME} is not text"))?;
    let mut found: Option<String> = None;
    for (n, line) in signed_part(text).into_iter().enumerate() {
        let Some((sum, name)) = line.split_once(char::is_whitespace) else { continue };
        let name = name.trim_start();
        if name.strip_prefix('*').unwrap_or(name) != file {
            continue;
        }
        let valid = sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(format!("signed line {} lists {file} with {sum:?}, not a sha256", n + 1));
        }
        let sum = sum.to_ascii_lowercase();
        if found.as_ref().is_some_and(|f| *f != sum) {
            return Err(format!("{NAME} lists two different sums for {file}"));
        }
        found = Some(sum);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "4e4e2f9a2cf4d5e2d24b0a57a3d1ab84b8d0b3ff0b2b8f5d4e7c0bdfae73a1c2";

    #[test]
    fn sums_are_read_from_the_clearsigned_text() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             {}  linux-6.12.8.tar.xz\n{A}  linux-6.12.9.tar.xz\n{}  patch-6.12.9.xz\n\
             -----BEGIN PGP SIGNATURE-----\n\n{}  linux-6.12.10.tar.xz\n-----END PGP SIGNATURE-----\n",
            "0".repeat(64),
            "1".repeat(64),
            "2".repeat(64),
        );
        assert_eq!(find(text.as_bytes(), "linux-6.12.9.tar.xz").unwrap().as_deref(), Some(A));
        assert_eq!(find(text.as_bytes(), "linux-6.12.8.tar.xz").unwrap(), Some("0".repeat(64)));
        // Lines in the signature block are not signed sums.
        assert_eq!(find(text.as_bytes(), "linux-6.12.10.tar.xz").unwrap(), None);
        assert_eq!(find(text.as_bytes(), "linux-6.12.tar.xz").unwrap(), None);
        // A plain sha256sum file (no PGP) works too; `*name` is sha256sum's binary mode.
        let plain = format!("{}  *linux-6.12.9.tar.xz\r\n", A.to_uppercase());
        assert_eq!(find(plain.as_bytes(), "linux-6.12.9.tar.xz").unwrap().as_deref(), Some(A));
    }

    #[test]
    fn bad_and_conflicting_lines_are_errors() {
        let e = find(b"xyz  linux-6.12.9.tar.xz\n", "linux-6.12.9.tar.xz").unwrap_err();
        assert!(e.contains("line 1") && e.contains("not a sha256"), "{e}");
        let two = format!("{A}  linux-6.12.9.tar.xz\n{}  linux-6.12.9.tar.xz\n", "f".repeat(64));
        assert!(find(two.as_bytes(), "linux-6.12.9.tar.xz").unwrap_err().contains("two different sums"));
        assert!(find(b"\xff\xfe", "x").unwrap_err().contains("not text"));
    }

    #[test]
    fn the_sums_file_is_beside_the_tarball() {
        let (url, file) = location("https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.9.tar.xz").unwrap();
        assert_eq!(url, "https://cdn.kernel.org/pub/linux/kernel/v6.x/sha256sums.asc");
        assert_eq!(file, "linux-6.12.9.tar.xz");
        assert!(location("https://example.org/pub/notes.txt").is_none());
    }
}
