//! The closure of an ELF's shared libraries, resolved the way glibc's ld.so would on this host.
//!
//! Search order for each DT_NEEDED name (LD_LIBRARY_PATH is deliberately ignored: the image must
//! not depend on the caller's environment):
//! 1. DT_RPATH of the needing object, then of the object that loaded it, up to the executable
//!    (only if the needing object has no DT_RUNPATH);
//! 2. DT_RUNPATH of the needing object;
//! 3. /etc/ld.so.cache;
//! 4. the default directories of x86_64 Debian ([`DEFAULT_LIB_DIRS`]).
//!
//! Names are resolved once, breadth first, and an object's DT_SONAME counts as resolved too,
//! as in ld.so (so libc's DT_NEEDED on ld-linux-x86-64.so.2 is the interpreter).

use super::ImageError;
use super::builder::read_err;
use super::ldcache;
use goblin::elf::Elf;
use goblin::elf::header::{self, EI_CLASS, ELFCLASS64, EM_X86_64};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

type Result<T> = std::result::Result<T, ImageError>;

/// Searched after RPATH, RUNPATH and the ld.so cache, in this order.
pub const DEFAULT_LIB_DIRS: [&str; 6] =
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];

/// The directories Debian's x86_64 ld.so searches by itself (`ld.so --help`). The guest has no
/// ld.so.cache, so a library found elsewhere through the host's cache or /lib64 gets a symlink
/// in [`GUEST_ALIAS_DIR`].
const GUEST_LDSO_DIRS: [&str; 4] = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"];
const GUEST_ALIAS_DIR: &str = "/lib/x86_64-linux-gnu";

const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// How a library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundVia {
    /// PT_INTERP of the binary.
    Interpreter,
    /// DT_NEEDED held a path (contains `/`).
    Path,
    /// An entry of the DT_RPATH of `owner` (unexpanded, e.g. `$ORIGIN/../lib`).
    Rpath {
        owner: PathBuf,
        entry: String,
    },
    /// An entry of the DT_RUNPATH of `owner`.
    Runpath {
        owner: PathBuf,
        entry: String,
    },
    LdSoCache,
    DefaultDir,
}

/// One object of the closure: goes into the guest at `path`, with contents of `real_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLib {
    /// The DT_NEEDED name, or the PT_INTERP path.
    pub name: String,
    /// The object whose DT_NEEDED (or PT_INTERP) asked for it first.
    pub needed_by: PathBuf,
    /// Where ld.so opens it (symlinks not followed).
    pub path: PathBuf,
    /// `path` with every symlink resolved: the regular file to copy.
    pub real_path: PathBuf,
    pub found_via: FoundVia,
}

/// The interpreter and all shared libraries `path` needs, transitively, in load order.
/// Empty for non-ELF files (scripts) and static binaries. Errors if `path` or a library is an
/// ELF for another architecture, or a library cannot be found.
pub fn elf_closure(path: &Path) -> Result<Vec<ResolvedLib>> {
    let cache = fs::read(LD_SO_CACHE).map(|b| ldcache::parse(&b)).unwrap_or_else(|err| {
        tracing::debug!("not using {LD_SO_CACHE}: {err}");
        HashMap::new()
    });
    Resolver { cache, default_dirs: DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect() }.closure(path)
}

/// Dynamic-linking facts of one ELF.
#[derive(Debug, Default)]
struct DynInfo {
    interp: Option<String>,
    soname: Option<String>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

/// An object in the closure, in load order.
struct Node {
    path: PathBuf,
    /// Expansion of $ORIGIN.
    origin: PathBuf,
    info: DynInfo,
    /// The node that first needed it (ld.so's `l_loader`).
    loader: Option<usize>,
}

struct Resolver {
    cache: HashMap<String, PathBuf>,
    default_dirs: Vec<PathBuf>,
}

/// Places looked at and candidates skipped, for the error when nothing fits.
#[derive(Default)]
struct Search {
    searched: Vec<PathBuf>,
    rejected: Vec<PathBuf>,
}

impl Resolver {
    fn closure(&self, root: &Path) -> Result<Vec<ResolvedLib>> {
        let Some(info) = inspect(root)? else {
            return Ok(Vec::new());
        };
        // ld.so takes the executable's $ORIGIN from /proc/self/exe, which is fully resolved.
        let real_root = fs::canonicalize(root).map_err(|e| read_err(root, e))?;
        let mut nodes = vec![Node { path: root.to_path_buf(), origin: parent(&real_root), info, loader: None }];
        let mut resolved = Vec::new();
        let mut seen = HashSet::new();
        if let Some(interp) = nodes[0].info.interp.clone() {
            let lib = interpreter(root, &interp)?;
            push_node(&mut nodes, &mut seen, &lib, 0)?;
            resolved.push(lib);
        }
        let mut i = 0;
        while i < nodes.len() {
            for name in nodes[i].info.needed.clone() {
                if seen.contains(&name) {
                    continue;
                }
                let lib = self.find(&nodes, i, &name)?;
                push_node(&mut nodes, &mut seen, &lib, i)?;
                resolved.push(lib);
            }
            i += 1;
        }
        Ok(resolved)
    }

    fn find(&self, nodes: &[Node], needer: usize, name: &str) -> Result<ResolvedLib> {
        let mut search = Search::default();
        let found = if name.contains('/') {
            search.probe(Path::new(name))?.then(|| (PathBuf::from(name), FoundVia::Path))
        } else {
            self.search(nodes, needer, name, &mut search)?
        };
        let needed_by = nodes[needer].path.clone();
        let Some((path, found_via)) = found else {
            return Err(ImageError::MissingLibrary {
                library: name.to_string(),
                needed_by,
                searched: search.searched,
                rejected: search.rejected,
            });
        };
        let real_path = fs::canonicalize(&path).map_err(|e| read_err(&path, e))?;
        Ok(ResolvedLib { name: name.to_string(), needed_by, path, real_path, found_via })
    }

    fn search(
        &self,
        nodes: &[Node],
        needer: usize,
        name: &str,
        search: &mut Search,
    ) -> Result<Option<(PathBuf, FoundVia)>> {
        let node = &nodes[needer];
        if node.info.runpath.is_empty() {
            let mut cur = Some(needer);
            while let Some(k) = cur {
                let owner = &nodes[k];
                let via = |entry: &str| FoundVia::Rpath { owner: owner.path.clone(), entry: entry.into() };
                if let Some(hit) = search.in_entries(&owner.info.rpath, &owner.origin, name, via)? {
                    return Ok(Some(hit));
                }
                cur = owner.loader;
            }
        }
        let via = |entry: &str| FoundVia::Runpath { owner: node.path.clone(), entry: entry.into() };
        if let Some(hit) = search.in_entries(&node.info.runpath, &node.origin, name, via)? {
            return Ok(Some(hit));
        }
        if let Some(path) = self.cache.get(name)
            && search.probe(path)?
        {
            return Ok(Some((path.clone(), FoundVia::LdSoCache)));
        }
        for dir in &self.default_dirs {
            let path = dir.join(name);
            if search.probe(&path)? {
                return Ok(Some((path, FoundVia::DefaultDir)));
            }
        }
        Ok(None)
    }
}

impl Search {
    /// Tries `name` in each RPATH/RUNPATH entry (already split on `:`).
    fn in_entries(
        &mut self,
        entries: &[String],
        origin: &Path,
        name: &str,
        via: impl Fn(&str) -> FoundVia,
    ) -> Result<Option<(PathBuf, FoundVia)>> {
        for entry in entries {
            let Some(dir) = expand_origin(entry, origin) else {
                continue;
            };
            let path = dir.join(name);
            if self.probe(&path)? {
                return Ok(Some((path, via(entry))));
            }
        }
        Ok(None)
    }

    /// Whether `path` is a loadable x86_64 ELF; like ld.so, skips files of another class or
    /// machine and keeps searching.
    fn probe(&mut self, path: &Path) -> Result<bool> {
        let place = path.parent().unwrap_or(path);
        if !self.searched.iter().any(|p| p == place) {
            self.searched.push(place.to_path_buf());
        }
        match is_x86_64_elf(path) {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.rejected.push(path.to_path_buf());
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(false),
            Err(e) => {
                tracing::debug!("skipping {}: {e}", path.display());
                self.rejected.push(path.to_path_buf());
                Ok(false)
            }
        }
    }
}

fn interpreter(root: &Path, interp: &str) -> Result<ResolvedLib> {
    let path = PathBuf::from(interp);
    let missing = || ImageError::MissingInterpreter { interp: interp.to_string(), binary: root.to_path_buf() };
    if !is_x86_64_elf(&path).unwrap_or(false) {
        return Err(missing());
    }
    let real_path = fs::canonicalize(&path).map_err(|_| missing())?;
    Ok(ResolvedLib {
        name: interp.to_string(),
        needed_by: root.to_path_buf(),
        path,
        real_path,
        found_via: FoundVia::Interpreter,
    })
}

/// Adds a resolved library to the load order; its name and SONAME now count as loaded.
fn push_node(nodes: &mut Vec<Node>, seen: &mut HashSet<String>, lib: &ResolvedLib, loader: usize) -> Result<()> {
    let info = inspect(&lib.path)?.unwrap_or_default();
    seen.insert(lib.name.clone());
    seen.extend(info.soname.clone());
    // ld.so derives a library's $ORIGIN from the path it opened, not the resolved one.
    let origin = parent(&lib.path);
    nodes.push(Node { path: lib.path.clone(), origin, info, loader: Some(loader) });
    Ok(())
}

/// `None` if `path` is not an ELF (e.g. a `#!` script). Errors for an ELF that is not
/// x86_64 or cannot be parsed.
fn inspect(path: &Path) -> Result<Option<DynInfo>> {
    let bytes = fs::read(path).map_err(|e| read_err(path, e))?;
    if !bytes.starts_with(&header::ELFMAG[..]) {
        return Ok(None);
    }
    let malformed =
        |e: goblin::error::Error| ImageError::MalformedElf { path: path.to_path_buf(), detail: e.to_string() };
    let hdr = Elf::parse_header(&bytes).map_err(malformed)?;
    check_arch(path, &hdr)?;
    // Permissive: only the dynamic section matters, not e.g. odd section headers.
    let elf = Elf::parse_with_opts(&bytes, &goblin::options::ParseOptions::permissive()).map_err(malformed)?;
    let split = |list: &[&str]| -> Vec<String> { list.iter().flat_map(|s| s.split(':')).map(str::to_string).collect() };
    Ok(Some(DynInfo {
        interp: elf.interpreter.map(str::to_string),
        soname: elf.soname.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: split(&elf.rpaths),
        runpath: split(&elf.runpaths),
    }))
}

fn check_arch(path: &Path, hdr: &header::Header) -> Result<()> {
    let is_64 = hdr.e_ident[EI_CLASS] == ELFCLASS64;
    if is_64 && hdr.e_machine == EM_X86_64 {
        return Ok(());
    }
    Err(ImageError::WrongArch {
        path: path.to_path_buf(),
        machine: header::machine_to_str(hdr.e_machine).to_string(),
        class: if is_64 { "64-bit" } else { "32-bit" },
    })
}

/// Reads only the ELF header: enough to skip incompatible candidates cheaply.
fn is_x86_64_elf(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(false);
    }
    let mut buf = [0u8; header::header64::SIZEOF_EHDR];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
    }
    let bytes = &buf[..len];
    Ok(bytes.starts_with(&header::ELFMAG[..])
        && Elf::parse_header(bytes).is_ok_and(|h| h.e_ident[EI_CLASS] == ELFCLASS64 && h.e_machine == EM_X86_64))
}

/// Expands `$ORIGIN`/`${ORIGIN}`. `None` for entries we cannot expand like ld.so would
/// (`$LIB`, `$PLATFORM`, or empty, which means the current directory).
fn expand_origin(entry: &str, origin: &Path) -> Option<PathBuf> {
    let origin = origin.to_str()?;
    let expanded = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin);
    if expanded.is_empty() || expanded.contains('$') {
        tracing::debug!("ignoring search path entry {entry:?}");
        return None;
    }
    Some(PathBuf::from(expanded))
}

fn has_origin(entry: &str) -> bool {
    entry.contains("$ORIGIN") || entry.contains("${ORIGIN}")
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

/// A guest path where ld.so in the guest would look for `lib` but the closure did not put it:
/// - found through the binary's own `$ORIGIN` while the binary sits elsewhere in the guest;
/// - found through the host's ld.so.cache or /lib64 in a directory the guest ld.so (which has no
///   cache) does not search.
pub(super) fn guest_alias(lib: &ResolvedLib, root: &Path, root_guest_dir: &str) -> Option<String> {
    let alias = match &lib.found_via {
        FoundVia::Rpath { owner, entry } | FoundVia::Runpath { owner, entry } if owner == root && has_origin(entry) => {
            let dir = expand_origin(entry, Path::new(root_guest_dir))?;
            lexical_normalize(&dir.join(&lib.name))
        }
        FoundVia::LdSoCache | FoundVia::DefaultDir => {
            let dir = lib.path.parent()?.to_str()?;
            if GUEST_LDSO_DIRS.contains(&dir) {
                return None;
            }
            PathBuf::from(GUEST_ALIAS_DIR).join(&lib.name)
        }
        _ => return None,
    };
    let alias = alias.to_str()?.to_string();
    (Path::new(&alias) != lib.path).then_some(alias)
}

/// Removes `.` and resolves `..` without touching the filesystem (the guest's, here).
fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::InitramfsBuilder;
    use crate::image::testutil::{aarch64_elf, compile_fixture, parse_archives, resolve_in_archive};

    fn ls() -> PathBuf {
        ["/bin/ls", "/usr/bin/ls"].iter().map(PathBuf::from).find(|p| p.exists()).unwrap()
    }

    #[test]
    fn closure_of_ls_has_libc_and_the_interpreter() {
        let libs = elf_closure(&ls()).unwrap();
        let interp = libs.iter().find(|l| l.found_via == FoundVia::Interpreter).unwrap();
        assert!(interp.name.ends_with("/ld-linux-x86-64.so.2"), "{interp:?}");
        let libc = libs.iter().find(|l| l.name == "libc.so.6").expect("libc.so.6 in closure");
        assert!(libc.real_path.is_file());
        assert!(libc.path.ends_with("libc.so.6"));
        // libc's own DT_NEEDED on ld-linux is the interpreter, not a second copy.
        assert_eq!(libs.iter().filter(|l| l.name.contains("ld-linux")).count(), 1, "{libs:#?}");
    }

    #[test]
    fn add_binary_places_libs_at_host_paths_and_follows_symlinks() {
        let ls = ls();
        let mut b = InitramfsBuilder::new();
        let libs = b.add_binary(&ls, "/bin/ls").unwrap();
        let entries = &parse_archives(&b.to_bytes().unwrap())[0];
        let bin = resolve_in_archive(entries, "bin/ls").unwrap();
        assert_eq!(bin.mode, 0o100_755);
        assert_eq!(bin.data, fs::read(&ls).unwrap());
        for lib in &libs {
            let name = lib.path.to_str().unwrap().trim_start_matches('/');
            let found = resolve_in_archive(entries, name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(found.data, fs::read(&lib.real_path).unwrap(), "{name}");
            assert_eq!(found.mode, 0o100_755, "{name}");
        }
        let interp = &libs[0];
        assert_eq!(interp.found_via, FoundVia::Interpreter);
        if interp.path != interp.real_path {
            let name = interp.path.to_str().unwrap().trim_start_matches('/');
            let link = entries.iter().find(|e| e.name == name).unwrap();
            assert_eq!(link.mode, 0o120_777, "the requested name stays a symlink");
            assert_eq!(link.data, interp.real_path.to_str().unwrap().as_bytes());
        }
    }

    #[test]
    fn runpath_origin_is_followed_and_aliased_in_the_guest() {
        let Some(fx) = compile_fixture(&["-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/lib"]) else {
            return;
        };
        let libs = elf_closure(&fx.prog).unwrap();
        let lib = libs.iter().find(|l| l.name == "libktstrfix.so").unwrap();
        assert_eq!(lib.found_via, FoundVia::Runpath { owner: fx.prog.clone(), entry: "$ORIGIN/lib".into() });
        assert_eq!(lib.path, fx.lib_dir.join("libktstrfix.so"));

        // In the guest the binary is /sbin/prog, so its $ORIGIN/lib is /sbin/lib.
        let mut b = InitramfsBuilder::new();
        b.add_binary(&fx.prog, "/sbin/prog").unwrap();
        let entries = &parse_archives(&b.to_bytes().unwrap())[0];
        let via_origin = resolve_in_archive(entries, "sbin/lib/libktstrfix.so").unwrap();
        assert_eq!(via_origin.data, fs::read(&lib.real_path).unwrap());
    }

    #[test]
    fn rpath_is_searched_when_there_is_no_runpath() {
        let Some(fx) = compile_fixture(&["-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/lib"]) else {
            return;
        };
        let libs = elf_closure(&fx.prog).unwrap();
        let lib = libs.iter().find(|l| l.name == "libktstrfix.so").unwrap();
        assert!(matches!(&lib.found_via, FoundVia::Rpath { owner, .. } if *owner == fx.prog));
    }

    #[test]
    fn missing_needed_library_names_library_and_binary() {
        let Some(fx) = compile_fixture(&["-Wl,-rpath,$ORIGIN/lib"]) else {
            return;
        };
        fs::remove_file(fx.lib_dir.join("libktstrfix.so")).unwrap();
        let err = elf_closure(&fx.prog).unwrap_err();
        match &err {
            ImageError::MissingLibrary { library, needed_by, searched, .. } => {
                assert_eq!(library, "libktstrfix.so");
                assert_eq!(needed_by, &fx.prog);
                assert!(searched.contains(&fx.lib_dir), "{searched:?}");
            }
            other => panic!("expected MissingLibrary, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("libktstrfix.so") && msg.contains(fx.prog.to_str().unwrap()), "{msg}");
        assert!(msg.contains("install"), "says what to do: {msg}");

        let mut b = InitramfsBuilder::new();
        assert!(b.add_binary(&fx.prog, "/prog").is_err());
        assert!(b.is_empty(), "a failed add_binary leaves the builder unchanged");
    }

    #[test]
    fn wrong_arch_library_is_skipped_and_reported() {
        let Some(fx) = compile_fixture(&["-Wl,-rpath,$ORIGIN/lib"]) else {
            return;
        };
        let so = fx.lib_dir.join("libktstrfix.so");
        fs::write(&so, aarch64_elf()).unwrap();
        match elf_closure(&fx.prog).unwrap_err() {
            ImageError::MissingLibrary { rejected, .. } => assert_eq!(rejected, [so]),
            other => panic!("expected MissingLibrary, got {other:?}"),
        }
    }

    #[test]
    fn script_is_added_as_is_with_no_closure() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run.sh");
        fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        assert!(elf_closure(&script).unwrap().is_empty());
        let mut b = InitramfsBuilder::new();
        assert!(b.add_binary(&script, "/bin/run.sh").unwrap().is_empty());
        let entries = &parse_archives(&b.to_bytes().unwrap())[0];
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/run.sh"]);
        assert_eq!(entries[1].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[1].mode, 0o100_755);
    }

    #[test]
    fn non_x86_64_elf_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let arm = dir.path().join("arm-binary");
        fs::write(&arm, aarch64_elf()).unwrap();
        let err = elf_closure(&arm).unwrap_err();
        assert!(matches!(&err, ImageError::WrongArch { path, .. } if *path == arm), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(arm.to_str().unwrap()) && msg.contains("AARCH64"), "{msg}");
        let mut b = InitramfsBuilder::new();
        assert!(matches!(b.add_binary(&arm, "/x"), Err(ImageError::WrongArch { .. })));
        assert!(b.is_empty());
    }

    #[test]
    fn truncated_elf_is_malformed_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad");
        fs::write(&bad, &header::ELFMAG[..]).unwrap();
        let err = elf_closure(&bad).unwrap_err();
        assert!(matches!(err, ImageError::MalformedElf { .. }), "{err:?}");
    }

    #[test]
    fn guest_aliases() {
        let lib = |path: &str, via| ResolvedLib {
            name: "libx.so.1".into(),
            needed_by: "/b".into(),
            path: path.into(),
            real_path: path.into(),
            found_via: via,
        };
        let root = Path::new("/opt/app/bin/app");
        let origin = FoundVia::Runpath { owner: root.into(), entry: "$ORIGIN/../lib".into() };
        let alias = guest_alias(&lib("/opt/app/lib/libx.so.1", origin), root, "/bin");
        assert_eq!(alias.as_deref(), Some("/lib/libx.so.1"));
        let l = lib("/usr/local/lib/libx.so.1", FoundVia::LdSoCache);
        assert_eq!(guest_alias(&l, root, "/").as_deref(), Some("/lib/x86_64-linux-gnu/libx.so.1"));
        let l = lib("/usr/lib/x86_64-linux-gnu/libx.so.1", FoundVia::DefaultDir);
        assert_eq!(guest_alias(&l, root, "/"), None);
        let l = lib("/opt/app/lib/libx.so.1", FoundVia::Runpath { owner: root.into(), entry: "/opt/app/lib".into() });
        assert_eq!(guest_alias(&l, root, "/"), None, "absolute RUNPATH: same path in the guest");
    }
}
