//! Reader for glibc's /etc/ld.so.cache ("new" format, the only one glibc >= 2.32 writes).
//!
//! Layout (native endian; we only run on x86_64): a 48-byte header starting with
//! `glibc-ld.so.cache1.1`, `nlibs` at offset 20, then `nlibs` 24-byte entries
//! `{ flags: i32, key: u32, value: u32, osversion: u32, hwcap: u64 }`; key and value are offsets
//! of NUL-terminated strings, relative to that header.

use std::collections::HashMap;
use std::path::PathBuf;

const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 24;
/// FLAG_ELF_LIBC6 | FLAG_X8664_LIB64: x86_64 glibc libraries.
const FLAGS_X86_64_LIBC6: u32 = 0x0303;

/// Soname -> path, first entry wins (the cache lists preferred entries first). Entries for
/// glibc-hwcaps or legacy hwcap subdirectories are skipped: the guest CPU may lack those
/// features. A malformed cache yields fewer (or no) entries; it is only a search shortcut.
pub(super) fn parse(bytes: &[u8]) -> HashMap<String, PathBuf> {
    let mut map = HashMap::new();
    let Some(start) = bytes.windows(MAGIC.len()).position(|w| w == MAGIC) else {
        return map;
    };
    let data = &bytes[start..];
    let nlibs = read_u32(data, 20).unwrap_or(0) as usize;
    for i in 0..nlibs {
        let Some(entry) = data.get(HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN) else {
            break;
        };
        if let Some((key, value)) = parse_entry(data, entry) {
            map.entry(key).or_insert(value);
        }
    }
    map
}

fn parse_entry(data: &[u8], entry: &[u8]) -> Option<(String, PathBuf)> {
    let flags = read_u32(entry, 0)?;
    let hwcap = u64::from_le_bytes(entry.get(16..24)?.try_into().ok()?);
    if flags & 0xffff != FLAGS_X86_64_LIBC6 || hwcap != 0 {
        return None;
    }
    let key = c_str(data, read_u32(entry, 4)? as usize)?;
    let value = c_str(data, read_u32(entry, 8)? as usize)?;
    Some((key.to_string(), PathBuf::from(value)))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn c_str(data: &[u8], at: usize) -> Option<&str> {
    let tail = data.get(at..)?;
    let end = tail.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&tail[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache with the given (flags, hwcap, key, value) entries.
    fn cache(entries: &[(u32, u64, &str, &str)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let strings_at = HEADER_LEN + entries.len() * ENTRY_LEN;
        let mut out = MAGIC.to_vec();
        out.extend((entries.len() as u32).to_le_bytes());
        out.resize(HEADER_LEN, 0);
        for (flags, hwcap, key, value) in entries {
            let mut offset_of = |s: &str| {
                let at = strings_at + strings.len();
                strings.extend(s.as_bytes());
                strings.push(0);
                at as u32
            };
            let (k, v) = (offset_of(key), offset_of(value));
            out.extend(flags.to_le_bytes());
            out.extend(k.to_le_bytes());
            out.extend(v.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend(hwcap.to_le_bytes());
        }
        out.extend(strings);
        out
    }

    #[test]
    fn keeps_first_x86_64_baseline_entry_per_name() {
        let bytes = cache(&[
            (0x0303, 1 << 62, "libz.so.1", "/lib/glibc-hwcaps/x86-64-v3/libz.so.1"),
            (0x0303, 0, "libz.so.1", "/usr/local/lib/libz.so.1"),
            (0x0303, 0, "libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
            (0x0003, 0, "libold.so", "/lib32/libold.so"),
        ]);
        let map = parse(&bytes);
        assert_eq!(map.len(), 1);
        assert_eq!(map["libz.so.1"], PathBuf::from("/usr/local/lib/libz.so.1"));
    }

    #[test]
    fn garbage_and_truncation_yield_no_panic() {
        assert!(parse(b"not a cache").is_empty());
        let bytes = cache(&[(0x0303, 0, "liba.so", "/a/liba.so")]);
        for len in 0..bytes.len() {
            let _ = parse(&bytes[..len]);
        }
    }

    #[test]
    fn host_cache_knows_libc_if_present() {
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else {
            eprintln!("skipped: no /etc/ld.so.cache on this host");
            return;
        };
        let map = parse(&bytes);
        let libc = map.get("libc.so.6").expect("libc.so.6 in the host's ld.so.cache");
        assert!(libc.ends_with("libc.so.6") && libc.is_absolute(), "{libc:?}");
    }
}
