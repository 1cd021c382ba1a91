//! The durable store: what podagent has plugged into which pod, kept across restarts.
//!
//! podagent must not trust its memory after a restart or a crash: a blind re-ADD of every network
//! makes kactus tear down working interfaces, and forgetting an attachment leaks its IP. So every
//! attachment is written down *before* the CNI call that creates it (phase `Adding`) and before
//! the one that removes it (phase `Removing`), and the reconciler compares these records with what
//! is really in the pod's netns. The CNI result is kept too, because a later DEL needs it as
//! `prevResult`; it is stored raw, the `cni` module owns its meaning.
//!
//! Layout: one JSON file per pod, `<dir>/<pod uid>.json`, so that pods with the same name in two
//! namespaces never share state and one bad file never costs the others. The directory is 0700
//! and files 0600. A write goes to a fresh temp file in the same directory (created with
//! `O_EXCL|O_NOFOLLOW`), is fsynced, renamed over the old file and the directory fsynced, so a
//! crash leaves either the old or the new record, never a torn one. Leftover temp files from a
//! crash are deleted when the store is opened.
//!
//! A record file that cannot be used (garbage, truncated, empty, a symlink, written by a newer
//! podagent, or naming another pod) is moved aside to `<file>.bad-<unix seconds>`, never deleted,
//! so an operator can inspect it, and reported. Moving it aside rather than leaving it keeps the
//! next start from stumbling on it again and keeps a later write for the same pod from silently
//! destroying it. The pod then converges like an unrecorded one: links already present are
//! adopted, missing ones added.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};

use crate::annotation::{self, NetworkSelection};
use crate::networks::Definition;

pub(crate) mod load;
use load::{move_aside, read_record};

/// The record format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this build reads: 1 keyed attachments by network name.
const OLDEST_FORMAT_VERSION: u32 = 1;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Far above any real record (64 attachments with results); guards against reading a huge file.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
const MAX_UID_LEN: usize = 128;
const RECORD_SUFFIX: &str = ".json";
const TEMP_MARKER: &str = ".tmp-";
const BAD_MARKER: &str = ".bad-";

/// What podagent knows about one pod it has plugged networks into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// The pod's UID: the key, stable across namespaces and name reuse.
    pub uid: String,
    /// For display only.
    pub namespace: String,
    /// For display only.
    pub name: String,
    /// The sandbox the attachments live in; they die with it.
    pub sandbox_id: String,
    pub netns: PathBuf,
    /// Keyed by interface name (format 2; format 1 keyed them by network name).
    #[serde(default)]
    pub attachments: BTreeMap<String, Attachment>,
    /// npwg mode: the interfaces whose entries podagent's last successful `network-status`
    /// write showed. An entry on one of them is podagent's to remove once its attachment is
    /// gone, even when a crash came between the DEL and the status write; a record is kept
    /// while this lists anything, so that the write can still happen.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub status_interfaces: BTreeSet<String>,
}

/// One network plugged (or being plugged or unplugged) into a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The annotation entry the attachment was made from.
    pub selection: NetworkSelection,
    pub ifname: String,
    pub(crate) phase: Phase,
    /// The CNI result of the ADD, raw, when there is one (not for adopted attachments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<serde_json::Value>,
    /// The network object's config the ADD ran (`direct` mode), written before the ADD: every
    /// later DEL runs with it, whatever became of the object. `None`: the node's primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) definition: Option<Definition>,
    /// When the attachment entered its phase (absent in records of podagent 0.1.0 before
    /// `podagent status` showed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) since: Option<jiff::Timestamp>,
    /// npwg mode: the pod's default routes this attachment's `default-route` replaced, put
    /// back when it is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) replaced_routes: Vec<crate::netns::ReplacedRoute>,
}

/// Where an attachment is in its life; written before the CNI call that moves it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// ADD started; it may or may not have completed.
    Adding,
    /// ADD succeeded, or the interface was found present and adopted.
    Attached,
    /// DEL started; it may or may not have completed.
    Removing,
}

impl Phase {
    /// The phase as the metrics and `podagent status` show it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Adding => "adding",
            Phase::Attached => "attached",
            Phase::Removing => "removing",
        }
    }
}

impl Attachment {
    /// An attachment for `selection` in `phase`, without a CNI result or a time.
    pub fn new(selection: NetworkSelection, phase: Phase) -> Self {
        Attachment {
            ifname: selection.ifname(),
            selection,
            phase,
            result: None,
            definition: None,
            since: None,
            replaced_routes: Vec::new(),
        }
    }

    /// The same, in its phase from now.
    pub(crate) fn starting_now(mut self) -> Self {
        self.since = Some(jiff::Timestamp::now());
        self
    }

    /// Moves on to `phase`, from now.
    pub(crate) fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.since = Some(jiff::Timestamp::now());
    }
}

impl PodRecord {
    /// The invariants every stored record keeps: a safe uid, attachments keyed by their own
    /// interface name, network names the annotation parsers accept, and interface names that
    /// follow the naming contract (the one asked for, else the network's derived one).
    fn check(&self) -> Result<(), String> {
        check_uid(&self.uid)?;
        for (key, attachment) in &self.attachments {
            let network = &attachment.selection.name;
            // A planted or damaged file must not bring a name the annotation parsers would
            // have refused (`;`, `=`, `/`, control characters) into CNI_ARGS or a log line.
            crate::names::check_subdomain(network)
                .map_err(|reason| format!("attachment {key:?}: network name {reason}"))?;
            if let Some(interface) = &attachment.selection.interface {
                annotation::npwg::check_ifname(interface)
                    .map_err(|reason| format!("attachment {key:?}: interface {reason}"))?;
            }
            let expected = attachment.selection.ifname();
            if attachment.ifname != expected {
                return Err(format!(
                    "attachment {key:?} of network {network:?} has interface {:?}, expected \
                     {expected:?}",
                    attachment.ifname
                ));
            }
            if *key != expected {
                return Err(format!(
                    "attachment {key:?} of network {network:?} is keyed by another name than \
                     its interface {expected:?}"
                ));
            }
        }
        for interface in &self.status_interfaces {
            annotation::npwg::check_ifname(interface)
                .map_err(|reason| format!("status interface {reason}"))?;
        }
        Ok(())
    }

    /// No attachment, and no `network-status` entry left to remove: nothing worth keeping.
    pub(crate) fn holds_nothing(&self) -> bool {
        self.attachments.is_empty() && self.status_interfaces.is_empty()
    }

    /// Format 1 keyed attachments by network name, which NPWG mode cannot (one network may
    /// be attached twice); its interfaces were all derived from the name, so re-keying them by
    /// interface is exact.
    pub(crate) fn rekey_by_interface(&mut self) {
        let attachments = std::mem::take(&mut self.attachments);
        self.attachments = attachments
            .into_values()
            .map(|a| (a.selection.ifname(), a))
            .collect();
    }
}

/// A failed store operation, naming the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {dir}: is a symlink; refusing to use it")]
    DirIsSymlink { dir: PathBuf },
    #[error("state dir {dir}: exists and is not a directory")]
    DirNotADirectory { dir: PathBuf },
    #[error("state dir {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("pod uid {uid:?} cannot name a state file: {reason}")]
    InvalidUid { uid: String, reason: String },
    #[error("record for pod {uid} is inconsistent: {reason}")]
    InvalidRecord { uid: String, reason: String },
    #[error("encoding record for pod {uid}: {source}")]
    Encode {
        uid: String,
        source: serde_json::Error,
    },
    #[error("reading state file {file}: {source}")]
    Read { file: PathBuf, source: io::Error },
    #[error("state file {file}: is a symlink; refusing to follow it")]
    Symlink { file: PathBuf },
    #[error("state file {file}: not a regular file")]
    NotAFile { file: PathBuf },
    #[error("state file {file}: {size} bytes, more than {max}")]
    TooLarge { file: PathBuf, size: u64, max: u64 },
    #[error("state file {file}: not a valid record: {reason}")]
    Corrupt { file: PathBuf, reason: String },
    #[error(
        "state file {file}: format version {version} is newer than this podagent reads ({supported})"
    )]
    FutureVersion {
        file: PathBuf,
        version: u32,
        supported: u32,
    },
    #[error("writing state file {file}: {source}")]
    Write { file: PathBuf, source: io::Error },
    #[error("removing state file {file}: {source}")]
    Remove { file: PathBuf, source: io::Error },
}

/// A record file that could not be loaded.
#[derive(Debug)]
pub struct BadFile {
    pub error: StoreError,
    /// Where the file was moved; `None` if moving it failed too (it is then left in place).
    pub moved_to: Option<PathBuf>,
}

/// Everything `load_all` found: the usable records and the files it had to set aside.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<PodRecord>,
    pub bad_files: Vec<BadFile>,
}

/// The state directory. Synchronous: async callers run it on a blocking thread.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    record: &'a PodRecord,
}

impl Store {
    /// Opens (creating with mode 0700 if needed) the state directory and deletes temp files left
    /// by a crash mid-write. Refuses a symlinked directory: the state dir is root's alone.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let dir = dir.into();
        let io_err = |source| StoreError::Dir {
            dir: dir.clone(),
            source,
        };
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(StoreError::DirIsSymlink { dir });
            }
            Ok(meta) if !meta.is_dir() => return Err(StoreError::DirNotADirectory { dir }),
            Ok(meta) => {
                if meta.permissions().mode() & 0o7777 != DIR_MODE {
                    fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE))
                        .map_err(io_err)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(&dir)
                    .map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
        let store = Store { dir };
        store.remove_temp_files()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads every record. A bad file is moved aside and reported, never fatal; only an
    /// unreadable directory fails the whole load. Files that are not `<uid>.json` are not
    /// podagent's records and are ignored.
    pub fn load_all(&self) -> Result<Loaded, StoreError> {
        scan(&self.dir, true)
    }

    /// Every record in `dir`, for a reader beside the running agent (`podagent status`):
    /// nothing is created, cleaned or set aside, and an absent directory holds nothing.
    pub(crate) fn read_only(dir: &Path) -> Result<Loaded, StoreError> {
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Loaded::default()),
            Ok(meta) if meta.file_type().is_symlink() => Err(StoreError::DirIsSymlink {
                dir: dir.to_path_buf(),
            }),
            _ => scan(dir, false),
        }
    }

    /// Writes a record atomically, replacing any previous one for the same pod.
    pub fn put(&self, record: &PodRecord) -> Result<(), StoreError> {
        record.check().map_err(|reason| StoreError::InvalidRecord {
            uid: record.uid.clone(),
            reason,
        })?;
        let bytes = serde_json::to_vec_pretty(&FileOut {
            version: FORMAT_VERSION,
            record,
        })
        .map_err(|source| StoreError::Encode {
            uid: record.uid.clone(),
            source,
        })?;
        let target = self.record_path(&record.uid)?;
        let temp = self.dir.join(temp_name(&record.uid));
        if let Err(source) = write_new_file(&temp, &bytes).and_then(|()| fs::rename(&temp, &target))
        {
            // Best effort: a temp file left behind is also removed by the next open().
            let _ = fs::remove_file(&temp);
            return Err(StoreError::Write {
                file: target,
                source,
            });
        }
        self.sync_dir().map_err(|source| StoreError::Write {
            file: target,
            source,
        })
    }

    /// Deletes a pod's record; a record that does not exist is already removed.
    pub fn remove(&self, uid: &str) -> Result<(), StoreError> {
        let file = self.record_path(uid)?;
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::Remove { file, source }),
        }
        self.sync_dir()
            .map_err(|source| StoreError::Remove { file, source })
    }

    fn record_path(&self, uid: &str) -> Result<PathBuf, StoreError> {
        check_uid(uid).map_err(|reason| StoreError::InvalidUid {
            uid: uid.to_owned(),
            reason,
        })?;
        Ok(self.dir.join(format!("{uid}{RECORD_SUFFIX}")))
    }

    fn remove_temp_files(&self) -> Result<(), StoreError> {
        let mut removed = false;
        for entry in fs::read_dir(&self.dir).map_err(|source| self.dir_error(source))? {
            let entry = entry.map_err(|source| self.dir_error(source))?;
            let is_temp = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with('.') && name.contains(TEMP_MARKER));
            if is_temp {
                let file = entry.path();
                fs::remove_file(&file).map_err(|source| StoreError::Remove { file, source })?;
                removed = true;
            }
        }
        if removed {
            self.sync_dir().map_err(|source| self.dir_error(source))?;
        }
        Ok(())
    }

    /// Makes a rename or unlink in the directory durable.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn dir_error(&self, source: io::Error) -> StoreError {
        StoreError::Dir {
            dir: self.dir.clone(),
            source,
        }
    }
}

/// Kubernetes UIDs are UUIDs; accepting only `[A-Za-z0-9_-]` keeps a uid from naming a path
/// outside the directory, a hidden file, or one of the store's own temp and quarantine names.
/// Reads every `<uid>.json` record in `dir`; a bad file is reported, and moved aside when
/// `set_aside`.
fn scan(dir: &Path, set_aside: bool) -> Result<Loaded, StoreError> {
    let dir_error = |source| StoreError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut loaded = Loaded::default();
    for entry in fs::read_dir(dir).map_err(dir_error)? {
        let entry = entry.map_err(dir_error)?;
        let file_name = entry.file_name();
        let Some(uid) = file_name
            .to_str()
            .and_then(|name| name.strip_suffix(RECORD_SUFFIX))
            .filter(|uid| check_uid(uid).is_ok())
        else {
            continue;
        };
        let path = entry.path();
        match read_record(&path, uid) {
            Ok(record) => loaded.records.push(record),
            Err(error) => loaded.bad_files.push(BadFile {
                moved_to: set_aside.then(|| move_aside(&path)).flatten(),
                error,
            }),
        }
    }
    loaded.records.sort_by(|a, b| a.uid.cmp(&b.uid));
    Ok(loaded)
}

fn check_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() || uid.len() > MAX_UID_LEN {
        return Err(format!("must be 1 to {MAX_UID_LEN} characters"));
    }
    if !uid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("only letters, digits, '-' and '_' are allowed".to_owned());
    }
    Ok(())
}

fn temp_name(uid: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        ".{uid}{RECORD_SUFFIX}{TEMP_MARKER}{}-{n}",
        std::process::id()
    )
}

fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    const UID: &str = "6f1c2a0e-3b7d-4c1e-9a55-0d9e8f7a6b5c";

    fn selection(name: &str) -> NetworkSelection {
        NetworkSelection::named(name)
    }

    fn record(uid: &str) -> PodRecord {
        let mut green = Attachment::new(
            NetworkSelection {
                if_mac: Some("00:11:22:33:44:55".parse().unwrap()),
                ..selection("green")
            },
            Phase::Attached,
        );
        green.result = Some(serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "net9f27410725ab", "mac": "00:11:22:33:44:55"}],
            "ips": [{"address": "198.18.0.5/24"}]
        }));
        PodRecord {
            status_interfaces: Default::default(),
            uid: uid.into(),
            namespace: "default".into(),
            name: "web".into(),
            sandbox_id: "0123abcd".into(),
            netns: "/var/run/netns/cni-1234".into(),
            attachments: [
                (annotation::ifname("green"), green),
                (
                    annotation::ifname("blue"),
                    Attachment::new(selection("blue"), Phase::Adding),
                ),
            ]
            .into(),
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn records_round_trip_through_the_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("state")).unwrap();
        let other = record("a1b2");
        store.put(&record(UID)).unwrap();
        store.put(&other).unwrap();

        let loaded = Store::open(tmp.path().join("state"))
            .unwrap()
            .load_all()
            .unwrap();
        assert!(loaded.bad_files.is_empty(), "{:?}", loaded.bad_files);
        // Sorted by uid.
        assert_eq!(loaded.records, vec![record(UID), other]);
    }

    #[test]
    fn file_carries_the_format_version_and_camel_case_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store.put(&record(UID)).unwrap();
        let text = fs::read_to_string(tmp.path().join(format!("{UID}.json"))).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], FORMAT_VERSION);
        assert_eq!(json["record"]["sandboxId"], "0123abcd");
        let attachments = &json["record"]["attachments"];
        assert_eq!(attachments[annotation::ifname("blue")]["phase"], "Adding");
        assert_eq!(
            attachments[annotation::ifname("green")]["selection"]["ifMac"],
            "00:11:22:33:44:55"
        );
    }

    #[test]
    fn put_replaces_the_file_by_rename_not_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut rec = record(UID);
        store.put(&rec).unwrap();
        let path = tmp.path().join(format!("{UID}.json"));
        // A reader holding the old file keeps seeing the whole old record.
        let mut old_reader = File::open(&path).unwrap();

        rec.attachments.remove(&annotation::ifname("blue"));
        store.put(&rec).unwrap();

        let mut old_text = String::new();
        old_reader.read_to_string(&mut old_text).unwrap();
        assert!(old_text.contains("\"blue\""));
        assert_eq!(store.load_all().unwrap().records, vec![rec]);
        assert_eq!(names_in(tmp.path()), vec![format!("{UID}.json")]);
    }

    #[test]
    fn directory_is_0700_and_files_are_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let store = Store::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        store.put(&record(UID)).unwrap();
        assert_eq!(mode(&dir.join(format!("{UID}.json"))), 0o600);
    }

    #[test]
    fn an_existing_directory_with_loose_permissions_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(tmp.path()).unwrap();
        assert_eq!(mode(tmp.path()), 0o700);
    }

    #[test]
    fn a_symlinked_state_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("real")).unwrap();
        symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        assert!(matches!(
            Store::open(tmp.path().join("link")),
            Err(StoreError::DirIsSymlink { .. })
        ));
        fs::write(tmp.path().join("file"), b"x").unwrap();
        assert!(matches!(
            Store::open(tmp.path().join("file")),
            Err(StoreError::DirNotADirectory { .. })
        ));
    }

    #[test]
    fn leftover_temp_files_from_a_crash_are_ignored_and_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store.put(&record(UID)).unwrap();
        // What a crash between create and rename leaves: a partial temp file.
        let leftover = tmp.path().join(format!(".{UID}.json.tmp-4242-0"));
        fs::write(&leftover, br#"{"version":1,"rec"#).unwrap();
        assert_eq!(store.load_all().unwrap().records, vec![record(UID)]);
        assert!(store.load_all().unwrap().bad_files.is_empty());

        let reopened = Store::open(tmp.path()).unwrap();
        assert!(!leftover.exists());
        assert_eq!(reopened.load_all().unwrap().records, vec![record(UID)]);
    }

    #[test]
    fn unusable_files_are_moved_aside_and_reported_without_losing_good_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store.put(&record(UID)).unwrap();
        let good = fs::read_to_string(tmp.path().join(format!("{UID}.json"))).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
            ("garbage", b"\x00\xffnot json".to_vec()),
            (
                "future",
                good.replacen("\"version\": 2", "\"version\": 3", 1)
                    .into_bytes(),
            ),
            ("other-uid", good.clone().into_bytes()),
        ];
        for (uid, bytes) in &cases {
            fs::write(tmp.path().join(format!("{uid}.json")), bytes).unwrap();
        }

        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.records, vec![record(UID)]);
        let kind = |uid: &str| {
            let bad = loaded
                .bad_files
                .iter()
                .find(|b| b.error.to_string().contains(&format!("/{uid}.json")))
                .unwrap_or_else(|| panic!("{uid} not reported: {:?}", loaded.bad_files));
            let moved = bad.moved_to.as_ref().expect("moved aside");
            assert!(
                moved
                    .to_string_lossy()
                    .contains(&format!("{uid}.json.bad-"))
            );
            assert!(moved.exists());
            &bad.error
        };
        assert!(matches!(kind("empty"), StoreError::Corrupt { .. }));
        assert!(matches!(kind("truncated"), StoreError::Corrupt { .. }));
        assert!(matches!(kind("garbage"), StoreError::Corrupt { .. }));
        assert!(matches!(
            kind("future"),
            StoreError::FutureVersion {
                version: 3,
                supported: FORMAT_VERSION,
                ..
            }
        ));
        assert!(matches!(kind("other-uid"), StoreError::Corrupt { .. }));
        assert_eq!(loaded.bad_files.len(), cases.len());

        // Set aside once: the next load is clean.
        let again = store.load_all().unwrap();
        assert!(again.bad_files.is_empty());
        assert_eq!(again.records, vec![record(UID)]);
    }

    #[test]
    fn a_symlinked_record_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store.put(&record(UID)).unwrap();
        let real = outside.path().join("x.json");
        fs::rename(tmp.path().join(format!("{UID}.json")), &real).unwrap();
        symlink(&real, tmp.path().join(format!("{UID}.json"))).unwrap();

        let loaded = store.load_all().unwrap();
        assert!(loaded.records.is_empty());
        assert!(matches!(
            loaded.bad_files[0].error,
            StoreError::Symlink { .. }
        ));
        assert!(real.exists(), "the link's target is left alone");
    }

    #[test]
    fn files_that_are_not_records_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        fs::create_dir(tmp.path().join("cache")).unwrap();
        fs::write(tmp.path().join("README"), b"x").unwrap();
        fs::write(tmp.path().join("a b.json"), b"x").unwrap();
        fs::write(tmp.path().join("u1.json.bad-1"), b"x").unwrap();
        let loaded = store.load_all().unwrap();
        assert!(loaded.records.is_empty() && loaded.bad_files.is_empty());
    }

    #[test]
    fn remove_deletes_the_record_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store.put(&record(UID)).unwrap();
        store.remove(UID).unwrap();
        store.remove(UID).unwrap();
        assert!(store.load_all().unwrap().records.is_empty());
        assert!(names_in(tmp.path()).is_empty());
    }

    #[test]
    fn unsafe_uids_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for uid in ["", "../x", "a/b", ".hidden", "a.b", &"u".repeat(129)] {
            assert!(
                matches!(store.remove(uid), Err(StoreError::InvalidUid { .. })),
                "{uid:?}"
            );
            assert!(
                matches!(
                    store.put(&record(uid)),
                    Err(StoreError::InvalidRecord { .. })
                ),
                "{uid:?}"
            );
        }
        assert!(names_in(tmp.path()).is_empty());
    }

    #[test]
    fn inconsistent_records_are_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut wrong_key = record(UID);
        let blue = wrong_key
            .attachments
            .remove(&annotation::ifname("blue"))
            .unwrap();
        wrong_key
            .attachments
            .insert(annotation::ifname("red"), blue);
        let mut wrong_ifname = record(UID);
        let green = wrong_ifname
            .attachments
            .get_mut(&annotation::ifname("green"))
            .unwrap();
        green.ifname = "eth1".into();
        let mut unsafe_name = record(UID);
        let forged = Attachment::new(selection("a;IP=198.18.0.9"), Phase::Attached);
        unsafe_name
            .attachments
            .insert(forged.ifname.clone(), forged);
        let mut unsafe_interface = record(UID);
        let mut named = selection("red");
        named.interface = Some("../eth9".into());
        let forged = Attachment::new(named, Phase::Attached);
        unsafe_interface
            .attachments
            .insert(forged.ifname.clone(), forged);
        for bad in [wrong_key, wrong_ifname, unsafe_name, unsafe_interface] {
            assert!(matches!(
                store.put(&bad),
                Err(StoreError::InvalidRecord { .. })
            ));
        }
        assert!(names_in(tmp.path()).is_empty());
    }

    #[test]
    fn format_1_records_are_read_keyed_by_interface() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let by_name: BTreeMap<String, Attachment> = record(UID)
            .attachments
            .into_values()
            .map(|a| (a.selection.name.clone(), a))
            .collect();
        let mut old = record(UID);
        old.attachments = by_name;
        let text = serde_json::json!({"version": 1, "record": old}).to_string();
        fs::write(tmp.path().join(format!("{UID}.json")), text).unwrap();
        let loaded = store.load_all().unwrap();
        assert!(loaded.bad_files.is_empty(), "{:?}", loaded.bad_files);
        assert_eq!(loaded.records, vec![record(UID)]);
    }

    #[test]
    fn one_network_on_two_named_interfaces_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut rec = record(UID);
        rec.attachments.clear();
        for interface in ["eth9", "eth10"] {
            let mut named = selection("green");
            named.interface = Some(interface.into());
            rec.attachments
                .insert(interface.into(), Attachment::new(named, Phase::Attached));
        }
        store.put(&rec).unwrap();
        assert_eq!(store.load_all().unwrap().records, vec![rec]);
    }
}
