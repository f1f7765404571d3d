//! Kernel config fragments: parsing, the effective fragment of a flavour, and the check
//! that every requested option survived `make olddefconfig`.

use sha2::{Digest, Sha256};
use std::fmt;

/// The fragment every ktstr guest kernel is built with (repo root `ktstr.kconfig`).
pub const KTSTR_KCONFIG: &str = include_str!("../../../ktstr.kconfig");
/// Extra options for the outer kernel of the KVM-in-TCG test tier.
pub const KVM_HOST_KCONFIG: &str = include_str!("../../../images/kvm-host.kconfig");

/// One requested option: `CONFIG_X=value` or `# CONFIG_X is not set` (value `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLine {
    pub symbol: String,
    pub value: Option<String>,
}

impl fmt::Display for ConfigLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.symbol),
            None => write!(f, "# {} is not set", self.symbol),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}: cannot parse `{text}`: expected `CONFIG_X=value` or `# CONFIG_X is not set`")]
pub struct FragmentError {
    pub origin: String,
    pub line: usize,
    pub text: String,
}

/// A parsed fragment: the option lines in order, comments dropped (so editing a comment
/// does not change the cache key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub lines: Vec<ConfigLine>,
}

impl Fragment {
    /// Parses fragment text. Trailing `# why` comments after an option are allowed.
    pub fn parse(origin: &str, text: &str) -> Result<Self, FragmentError> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            let err = || FragmentError { origin: origin.into(), line: i + 1, text: t.into() };
            if let Some(rest) = t.strip_prefix("# CONFIG_") {
                let sym = rest.split_whitespace().next().ok_or_else(err)?;
                if !rest[sym.len()..].trim_start().starts_with("is not set") {
                    return Err(err());
                }
                lines.push(ConfigLine { symbol: format!("CONFIG_{sym}"), value: None });
            } else if t.is_empty() || t.starts_with('#') {
                continue;
            } else if t.starts_with("CONFIG_") {
                let (sym, rest) = t.split_once('=').ok_or_else(err)?;
                let value = strip_comment(rest);
                if value.is_empty() || !valid_symbol(sym) {
                    return Err(err());
                }
                lines.push(ConfigLine { symbol: sym.into(), value: Some(value.into()) });
            } else {
                return Err(err());
            }
        }
        Ok(Self { lines })
    }

    /// Later fragments override earlier ones, as kconfig itself does.
    pub fn merged(parts: &[&Fragment]) -> Fragment {
        let mut out: Vec<ConfigLine> = Vec::new();
        for line in parts.iter().flat_map(|f| &f.lines) {
            out.retain(|l| l.symbol != line.symbol);
            out.push(line.clone());
        }
        Fragment { lines: out }
    }

    /// Text in plain kconfig syntax, ready to append to a `.config`.
    pub fn to_config_text(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Options whose value in the final `.config` differs from the request.
    pub fn missing_in(&self, dot_config: &str) -> Vec<Mismatch> {
        let actual = parse_dot_config(dot_config);
        self.lines
            .iter()
            .filter_map(|want| {
                let got = actual.iter().find(|(s, _)| *s == want.symbol).map(|(_, v)| *v);
                let ok = match (&want.value, got) {
                    (Some(w), Some(g)) => w == g,
                    (Some(_), None) => false,
                    (None, got) => got.is_none() || got == Some("n"),
                };
                (!ok).then(|| Mismatch { wanted: want.clone(), got: got.map(str::to_owned) })
            })
            .collect()
    }
}

/// An option that did not survive olddefconfig (usually an unmet dependency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub wanted: ConfigLine,
    pub got: Option<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = self.got.as_deref().unwrap_or("unset");
        write!(f, "{} (got {got})", self.wanted)
    }
}

fn strip_comment(value: &str) -> &str {
    // Quoted string values may contain '#'; only strip outside quotes.
    let v = value.trim();
    if let Some(inner) = v.strip_prefix('"') {
        return match inner.find('"') {
            Some(end) => &v[..end + 2],
            None => v,
        };
    }
    v.split('#').next().unwrap_or("").trim()
}

fn valid_symbol(sym: &str) -> bool {
    sym.len() > "CONFIG_".len() && sym.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_dot_config(text: &str) -> Vec<(&str, &str)> {
    text.lines().filter(|l| l.starts_with("CONFIG_")).filter_map(|l| l.split_once('=')).collect()
}

/// Kernel flavours: the base config a fragment is applied on top of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavour {
    /// tinyconfig + ktstr.kconfig: small, fast to build (the default; rebuilt at every bisect step)
    Minimal,
    /// defconfig + kvm_guest.config + ktstr.kconfig: a general-purpose kernel
    Defconfig,
    /// minimal + KVM (Intel and AMD): the outer kernel of the KVM-in-QEMU test tier
    KvmHost,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Minimal => "minimal",
            Flavour::Defconfig => "defconfig",
            Flavour::KvmHost => "kvm-host",
        }
    }

    /// `make` targets that produce the base `.config` before the fragment is applied.
    pub fn base_targets(self) -> &'static [&'static str] {
        match self {
            Flavour::Minimal | Flavour::KvmHost => &["tinyconfig"],
            Flavour::Defconfig => &["defconfig", "kvm_guest.config"],
        }
    }

    /// The effective fragment of this flavour.
    pub fn fragment(self) -> Fragment {
        let base = Fragment::parse("ktstr.kconfig", KTSTR_KCONFIG).expect("ktstr.kconfig parses (unit-tested)");
        match self {
            Flavour::KvmHost => {
                let kvm = Fragment::parse("images/kvm-host.kconfig", KVM_HOST_KCONFIG)
                    .expect("kvm-host.kconfig parses (unit-tested)");
                Fragment::merged(&[&base, &kvm])
            }
            _ => base,
        }
    }

    /// Hash of everything that decides the config besides the source: flavour + fragment.
    pub fn config_hash(self) -> String {
        let mut h = Sha256::new();
        h.update(self.name().as_bytes());
        for t in self.base_targets() {
            h.update(b"\0");
            h.update(t.as_bytes());
        }
        h.update(b"\0");
        h.update(self.fragment().to_config_text().as_bytes());
        hex::encode(&h.finalize()[..6])
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_fragments_parse_and_hold_the_essentials() {
        let f = Flavour::Minimal.fragment();
        for sym in ["CONFIG_SCHED_CLASS_EXT", "CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_JIT", "CONFIG_CPUSETS"] {
            assert!(f.lines.iter().any(|l| l.symbol == sym && l.value.as_deref() == Some("y")), "{sym}");
        }
        let kvm = Flavour::KvmHost.fragment();
        assert!(kvm.lines.iter().any(|l| l.symbol == "CONFIG_KVM_AMD"));
        assert!(kvm.lines.len() > f.lines.len());
    }

    #[test]
    fn parse_handles_comments_and_not_set() {
        let f = Fragment::parse("t", "# c\nCONFIG_A=y  # why\n# CONFIG_B is not set # why\nCONFIG_S=\"a#b\" # x\n")
            .unwrap();
        let text = f.to_config_text();
        assert_eq!(text, "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"a#b\"\n");
    }

    #[test]
    fn parse_rejects_garbage_with_location() {
        let e = Fragment::parse("frag", "CONFIG_A=y\nFOO=bar\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("frag:2"));
        assert!(Fragment::parse("f", "CONFIG_A=\n").is_err());
        assert!(Fragment::parse("f", "# CONFIG_A maybe\n").is_err());
    }

    #[test]
    fn missing_in_reports_each_mismatch() {
        let f = Fragment::parse("t", "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=4\n").unwrap();
        let cfg = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_N=8\n";
        let m: Vec<String> = f.missing_in(cfg).iter().map(|m| m.to_string()).collect();
        assert_eq!(m, ["CONFIG_B=y (got unset)", "# CONFIG_C is not set (got y)", "CONFIG_N=4 (got 8)"]);
        assert!(f.missing_in("CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=4\n").is_empty());
    }

    #[test]
    fn merged_later_wins() {
        let a = Fragment::parse("a", "CONFIG_A=y\nCONFIG_B=y\n").unwrap();
        let b = Fragment::parse("b", "# CONFIG_A is not set\n").unwrap();
        assert_eq!(Fragment::merged(&[&a, &b]).to_config_text(), "CONFIG_B=y\n# CONFIG_A is not set\n");
    }

    #[test]
    fn config_hash_depends_on_flavour_and_ignores_comments() {
        assert_ne!(Flavour::Minimal.config_hash(), Flavour::Defconfig.config_hash());
        assert_ne!(Flavour::Minimal.config_hash(), Flavour::KvmHost.config_hash());
        assert_eq!(Flavour::Minimal.config_hash(), Flavour::Minimal.config_hash());
        let a = Fragment::parse("a", "CONFIG_A=y # one\n").unwrap();
        let b = Fragment::parse("b", "# header\nCONFIG_A=y # two\n").unwrap();
        assert_eq!(a.to_config_text(), b.to_config_text());
    }
}
