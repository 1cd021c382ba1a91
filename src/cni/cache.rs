//! The private result cache: what each ADD used and returned, for the DEL after it.
//!
//! A DEL must hand the plugins the config, `CNI_ARGS`, capability args and (from 0.4.0 on) the
//! result that ADD used, even after an agent restart or a change of the node's CNI config.
//! libcni keeps these in `/var/lib/cni/results`, where a runtime's CNI GC may delete entries
//! it does not know, so podagent keeps its own under its state dir: one file per (network
//! name, sandbox id, interface name), written atomically (temp file, fsync, rename, fsync of
//! the directory) with mode 0600. Every file operation goes through a descriptor of the
//! directory with `O_NOFOLLOW`, so a symlink planted in the directory is never followed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::CniError;

const KIND: &str = "podagentCniCacheV1";
/// Cache files are a few KiB; anything far larger was not written by us.
const MAX_ENTRY: u64 = 4 << 20;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One cached ADD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    pub(crate) kind: String,
    pub(crate) network_name: String,
    pub(crate) container_id: String,
    pub(crate) if_name: String,
    /// The network config exactly as read (UTF-8 JSON, so it can be kept as text).
    pub(crate) config: String,
    pub(crate) cni_args: String,
    pub(crate) capability_args: Map<String, Value>,
    pub(crate) result: Value,
}

impl Entry {
    pub(crate) fn new(
        network_name: &str,
        container_id: &str,
        if_name: &str,
        config: &[u8],
        cni_args: &str,
        capability_args: &Map<String, Value>,
        result: Value,
    ) -> Entry {
        Entry {
            kind: KIND.to_owned(),
            network_name: network_name.to_owned(),
            container_id: container_id.to_owned(),
            if_name: if_name.to_owned(),
            config: String::from_utf8_lossy(config).into_owned(),
            cni_args: cni_args.to_owned(),
            capability_args: capability_args.clone(),
            result,
        }
    }
}

/// The cache directory. The names in it are validated upstream (network names by the config
/// parser, sandbox ids and interface names by `env`), so none contains a `/`.
#[derive(Debug, Clone)]
pub(crate) struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    pub(crate) fn new(dir: PathBuf) -> ResultCache {
        ResultCache { dir }
    }

    fn file_name(network: &str, sandbox_id: &str, ifname: &str) -> String {
        format!("{network}-{sandbox_id}-{ifname}.json")
    }

    /// Opens the directory itself without following a symlink in its last component;
    /// `create` makes it (mode 0700) when missing.
    fn open_dir(&self, create: bool) -> Result<Option<OwnedFd>, CniError> {
        if create {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|err| CniError::cache("create", &self.dir, err))?;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&self.dir, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) if !create => Ok(None),
            Err(errno) => Err(CniError::cache("open", &self.dir, errno.into())),
        }
    }

    /// Stores `entry`, replacing any previous one for the same key atomically.
    pub(crate) fn write(&self, entry: &Entry) -> Result<PathBuf, CniError> {
        let dir = self.open_dir(true)?.ok_or_else(|| {
            CniError::cache("open", &self.dir, std::io::ErrorKind::NotFound.into())
        })?;
        let name = Self::file_name(&entry.network_name, &entry.container_id, &entry.if_name);
        let path = self.dir.join(&name);
        let temp = format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let bytes = serde_json::to_vec(entry)
            .map_err(|err| CniError::cache("encode", &path, err.into()))?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&dir, temp.as_str(), flags, Mode::from_bits_truncate(0o600))
            .map_err(|errno| CniError::cache("create", &self.dir.join(&temp), errno.into()))?;
        let mut file = File::from(fd);
        let written = file.write_all(&bytes).and_then(|()| file.sync_all());
        drop(file);
        let renamed = written.and_then(|()| {
            renameat(&dir, temp.as_str(), &dir, name.as_str()).map_err(std::io::Error::from)
        });
        if let Err(err) = renamed {
            let _ = unlinkat(&dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(CniError::cache("write", &path, err));
        }
        nix::unistd::fsync(&dir)
            .map_err(|errno| CniError::cache("sync", &self.dir, errno.into()))?;
        Ok(path)
    }

    /// The entry for (`sandbox_id`, `ifname`), whatever network it was added with: the node's
    /// config may have been renamed since. Files are matched by name, then by content.
    pub(crate) fn find(
        &self,
        sandbox_id: &str,
        ifname: &str,
    ) -> Result<Option<(PathBuf, Entry)>, CniError> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(None);
        };
        let suffix = format!("-{sandbox_id}-{ifname}.json");
        let mut names = self.names(|name| name.ends_with(&suffix))?;
        names.sort();
        for name in names {
            let path = self.dir.join(&name);
            let Some(entry) = read_entry(&dir, &name, &path)? else {
                continue;
            };
            if entry.container_id == sandbox_id && entry.if_name == ifname {
                return Ok(Some((path, entry)));
            }
        }
        Ok(None)
    }

    /// Removes one entry; a missing one is not an error (DEL is idempotent).
    pub(crate) fn remove(&self, path: &Path) -> Result<(), CniError> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(());
        };
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(CniError::cache("remove", path, errno.into())),
        }
        nix::unistd::fsync(&dir).map_err(|errno| CniError::cache("sync", &self.dir, errno.into()))
    }

    /// Removes every entry of a sandbox; returns how many there were.
    pub(crate) fn forget_sandbox(&self, sandbox_id: &str) -> Result<usize, CniError> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(0);
        };
        let infix = format!("-{sandbox_id}-");
        let mut removed = 0;
        for name in self.names(|name| name.contains(&infix) && name.ends_with(".json"))? {
            let path = self.dir.join(&name);
            let ours =
                read_entry(&dir, &name, &path)?.is_some_and(|e| e.container_id == sandbox_id);
            if ours {
                self.remove(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn names(&self, wanted: impl Fn(&str) -> bool) -> Result<Vec<String>, CniError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|err| CniError::cache("list", &self.dir, err))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| CniError::cache("list", &self.dir, err))?;
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
                && wanted(name)
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
}

/// Reads one entry; `None` when it vanished meanwhile.
fn read_entry(dir: &OwnedFd, name: &str, path: &Path) -> Result<Option<Entry>, CniError> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err(CniError::CacheCorrupt {
                path: path.to_owned(),
                reason: "it is a symlink".to_owned(),
            });
        }
        Err(errno) => return Err(CniError::cache("open", path, errno.into())),
    };
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|err| CniError::cache("stat", path, err))?;
    if !meta.is_file() {
        return Err(CniError::CacheCorrupt {
            path: path.to_owned(),
            reason: "not a regular file".to_owned(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY)
        .read_to_end(&mut bytes)
        .map_err(|err| CniError::cache("read", path, err))?;
    let entry: Entry = serde_json::from_slice(&bytes).map_err(|err| CniError::CacheCorrupt {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    if entry.kind != KIND {
        return Err(CniError::CacheCorrupt {
            path: path.to_owned(),
            reason: format!("unknown kind {:?}", entry.kind),
        });
    }
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(network: &str, sandbox: &str, ifname: &str) -> Entry {
        Entry::new(
            network,
            sandbox,
            ifname,
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
            "IgnoreUnknown=1",
            &Map::new(),
            serde_json::json!({"cniVersion": "1.0.0"}),
        )
    }

    #[test]
    fn written_entry_is_found_private_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path().join("cni"));
        let written = entry("net-a", "abc", "net1");
        let path = cache.write(&written).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("cni"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let (found_path, found) = cache.find("abc", "net1").unwrap().expect("cached");
        assert_eq!((found_path.as_path(), &found), (path.as_path(), &written));
        cache.remove(&path).unwrap();
        assert_eq!(cache.find("abc", "net1").unwrap(), None);
        cache.remove(&path).unwrap();
    }

    #[test]
    fn find_checks_content_not_just_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path().to_owned());
        // "a-b" + "c" and "a" + "b-c" share a file name suffix.
        cache.write(&entry("a", "b-c", "net1")).unwrap();
        assert_eq!(cache.find("c", "net1").unwrap(), None);
        assert!(cache.find("b-c", "net1").unwrap().is_some());
        assert_eq!(cache.find("b-c", "net2").unwrap(), None);
    }

    #[test]
    fn missing_directory_means_nothing_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path().join("absent"));
        assert_eq!(cache.find("abc", "net1").unwrap(), None);
        assert_eq!(cache.forget_sandbox("abc").unwrap(), 0);
    }

    #[test]
    fn symlinked_entry_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere.json");
        std::fs::write(
            &target,
            serde_json::to_vec(&entry("n", "abc", "net1")).unwrap(),
        )
        .unwrap();
        let cache_dir = dir.path().join("cache");
        std::fs::create_dir(&cache_dir).unwrap();
        std::os::unix::fs::symlink(&target, cache_dir.join("n-abc-net1.json")).unwrap();
        let cache = ResultCache::new(cache_dir);
        let err = cache.find("abc", "net1").unwrap_err();
        assert!(matches!(err, CniError::CacheCorrupt { .. }), "{err}");
    }

    #[test]
    fn forget_sandbox_removes_only_that_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path().to_owned());
        cache.write(&entry("n", "s1", "net1")).unwrap();
        cache.write(&entry("n", "s1", "net2")).unwrap();
        cache.write(&entry("n", "s2", "net1")).unwrap();
        assert_eq!(cache.forget_sandbox("s1").unwrap(), 2);
        assert!(cache.find("s2", "net1").unwrap().is_some());
        assert!(cache.find("s1", "net2").unwrap().is_none());
    }
}
