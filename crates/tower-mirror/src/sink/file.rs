//! The `file://` sink: a writer thread appending NDJSON records to a file, rotating it by
//! size or age, compressing and pruning the rotated ones.
//!
//! A thread, not a task: file writes block, and mirror-proxy's workers are single-threaded
//! event loops that must never wait on a disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Instant, SystemTime};

use super::{Record, Sink, format};
use crate::target::{RecordFile, Target};

/// Records written per batch at most, between flushes.
const BATCH: usize = 1024;

pub(super) struct FileSink {
    url: String,
    settings: RecordFile,
    queue: SyncSender<Record>,
}

impl FileSink {
    /// Opens (creating, appending to) the target's file and starts its writer. The error
    /// says what is wrong with the path.
    pub(super) fn open(target: &Target, capacity: usize) -> Result<Self, String> {
        let path = path_of(&target.url)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {} for writing: {e}", path.display()))?;
        let metadata = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (queue, records) = sync_channel(capacity.max(1));
        let writer = Writer {
            // Rotation renames the file: only a regular file can be rotated (not /dev/null).
            rotates: metadata.is_file(),
            written: metadata.len(),
            opened: Instant::now(),
            settings: target.record.clone(),
            dirty: false,
            path,
            file,
        };
        std::thread::Builder::new()
            .name("tower-mirror-record".to_owned())
            .spawn(move || writer.run(records))
            .map_err(|e| format!("cannot start the writer thread: {e}"))?;
        Ok(Self {
            url: target.url.clone(),
            settings: target.record.clone(),
            queue,
        })
    }
}

impl Sink for FileSink {
    fn record(&self, record: Record) -> Result<(), Record> {
        self.queue.try_send(record).map_err(|e| match e {
            TrySendError::Full(record) | TrySendError::Disconnected(record) => record,
        })
    }

    fn serves(&self, target: &Target) -> bool {
        target.url == self.url && target.record == self.settings
    }
}

/// `file:///absolute/path` → `/absolute/path`. A host part (`file://host/…`) or a relative
/// path is refused: a recording goes where the URL says, on this machine.
fn path_of(url: &str) -> Result<PathBuf, String> {
    let rest = &url["file://".len()..];
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(format!(
            "{url:?}: a recording URL is file:// and an absolute path (file:///var/lib/…)"
        ));
    }
    if path.ends_with('/') {
        return Err(format!("{url:?} names a directory, not a file"));
    }
    Ok(PathBuf::from(path))
}

struct Writer {
    path: PathBuf,
    file: File,
    settings: RecordFile,
    rotates: bool,
    /// Bytes in the current file.
    written: u64,
    opened: Instant,
    /// The last write failed, perhaps half-way through a line: the next starts on a new line
    /// (readers skip a line that is not JSON).
    dirty: bool,
}

impl Writer {
    fn run(mut self, records: Receiver<Record>) {
        let mut line = Vec::with_capacity(4096);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let first = match self.until_rotation() {
                None => records.recv().ok(),
                Some(wait) => match records.recv_timeout(wait) {
                    Ok(record) => Some(record),
                    Err(RecvTimeoutError::Timeout) => {
                        self.rotate_if_due();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            // Every sender gone: the sink was dropped (its target removed or the layer let go).
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < BATCH {
                match records.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
            self.rotate_if_due();
            line.clear();
            if self.dirty {
                line.push(b'\n');
            }
            for record in &batch {
                format::encode(
                    &mut line,
                    record,
                    self.settings.max_body_bytes,
                    self.settings.max_response_body_bytes,
                );
                line.push(b'\n');
            }
            let written = self.file.write_all(&line).is_ok();
            self.dirty = !written;
            if written {
                self.written += line.len() as u64;
            }
            for record in batch.drain(..) {
                record.settle.settle(written);
            }
        }
        let _ = self.file.sync_all();
    }

    /// How long until the file is due for rotation by age, if it rotates by age.
    fn until_rotation(&self) -> Option<std::time::Duration> {
        let age = self.settings.rotate_after.filter(|_| self.rotates)?;
        Some(age.saturating_sub(self.opened.elapsed()))
    }

    fn rotate_if_due(&mut self) {
        if !self.rotates {
            return;
        }
        let by_size = self
            .settings
            .rotate_bytes
            .is_some_and(|max| self.written >= max);
        let by_age = self
            .settings
            .rotate_after
            .is_some_and(|age| self.opened.elapsed() >= age);
        if (by_size || by_age) && self.written > 0 {
            self.rotate();
        } else if by_age {
            // Nothing written: keep the empty file, start its age again.
            self.opened = Instant::now();
        }
    }

    /// Moves the current file aside under a name with the time, starts a new one, and (in
    /// the background) compresses and prunes the rotated ones. On a failure the current
    /// file is kept and written on.
    fn rotate(&mut self) {
        let _ = self.file.sync_all();
        let rotated = rotated_name(&self.path, SystemTime::now());
        if std::fs::rename(&self.path, &rotated).is_err() {
            return;
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => self.file = file,
            // The old handle still writes to the rotated file; better than losing records.
            Err(_) => return,
        }
        self.written = 0;
        self.opened = Instant::now();
        self.dirty = false;
        if !self.settings.gzip && self.settings.keep_files.is_none() {
            return;
        }
        // Compressing a large file takes seconds: not on the writer's time.
        let (path, settings) = (self.path.clone(), self.settings.clone());
        let _ = std::thread::Builder::new()
            .name("tower-mirror-rotate".to_owned())
            .spawn(move || {
                if settings.gzip {
                    let _ = gzip(&rotated);
                }
                if let Some(keep) = settings.keep_files {
                    prune(&path, keep);
                }
            });
    }
}

/// `dir/traffic.ndjson` → `dir/traffic.20261130T010203.123456789Z.ndjson`: names that sort
/// in time order, next to the file.
fn rotated_name(path: &Path, time: SystemTime) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_nanos(time)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let (stem, extension) = split_name(path);
    let name = match extension {
        Some(extension) => format!("{stem}.{stamp}.{extension}"),
        None => format!("{stem}.{stamp}"),
    };
    path.with_file_name(name)
}

/// The file name's stem and extension (`traffic`, `ndjson`).
fn split_name(path: &Path) -> (String, Option<String>) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => {
            (stem.to_owned(), Some(extension.to_owned()))
        }
        _ => (name, None),
    }
}

/// Compresses `rotated` to `rotated.gz` and removes it.
fn gzip(rotated: &Path) -> std::io::Result<()> {
    let mut gz_name = rotated.as_os_str().to_owned();
    gz_name.push(".gz");
    let partial = PathBuf::from(format!("{}.partial", Path::new(&gz_name).display()));
    {
        let mut input = File::open(rotated)?;
        let output = File::create(&partial)?;
        let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
        std::io::copy(&mut input, &mut encoder)?;
        encoder.finish()?.sync_all()?;
    }
    std::fs::rename(&partial, &gz_name)?;
    std::fs::remove_file(rotated)
}

/// Deletes the oldest rotated files of `path` beyond the newest `keep`.
fn prune(path: &Path, keep: usize) {
    let Some(dir) = path.parent() else { return };
    let (stem, extension) = split_name(path);
    let prefix = format!("{stem}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut rotated: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != path)
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = name.strip_suffix(".gz").unwrap_or(&name);
            name.starts_with(&prefix)
                && !name.ends_with(".partial")
                && extension
                    .as_ref()
                    .is_none_or(|ext| name.ends_with(&format!(".{ext}")))
                && is_stamp(&name[prefix.len()..])
        })
        .collect();
    rotated.sort();
    let excess = rotated.len().saturating_sub(keep);
    for old in &rotated[..excess] {
        let _ = std::fs::remove_file(old);
    }
}

/// Whether `rest` starts with a rotation stamp (`20261130T010203.123456789Z`), so that only
/// files this sink rotated are ever deleted.
fn is_stamp(rest: &str) -> bool {
    let bytes = rest.as_bytes();
    bytes.len() >= 16 && bytes[..8].iter().all(u8::is_ascii_digit) && bytes[8] == b'T'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_in_time_order_next_to_the_file() {
        let path = Path::new("/var/lib/m/traffic.ndjson");
        let early = rotated_name(path, SystemTime::UNIX_EPOCH);
        let late = rotated_name(
            path,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * 365),
        );
        assert_eq!(
            early,
            Path::new("/var/lib/m/traffic.19700101T000000.000000000Z.ndjson")
        );
        assert!(early < late);
        let stem = early.file_name().unwrap().to_str().unwrap();
        assert!(is_stamp(&stem["traffic.".len()..]));
    }

    #[test]
    fn only_absolute_local_paths_are_recording_urls() {
        assert_eq!(
            path_of("file:///tmp/t.ndjson"),
            Ok(PathBuf::from("/tmp/t.ndjson"))
        );
        assert_eq!(
            path_of("file://localhost/tmp/t.ndjson"),
            Ok(PathBuf::from("/tmp/t.ndjson"))
        );
        assert!(path_of("file://host/tmp/t").is_err());
        assert!(path_of("file://relative.ndjson").is_err());
        assert!(path_of("file:///tmp/").is_err());
    }
}
