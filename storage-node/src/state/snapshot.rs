//! Snapshots as files, written from and loaded into sled a row at a time.
//!
//! A snapshot never exists as one in-memory copy of every row: building it
//! streams sled's row range into a file, sending it streams the file, and
//! installing it streams the file back into sled, reading
//! [`INSTALL_BATCH_ROWS`] rows at a time.
//!
//! File format, all integers big-endian:
//!
//! ```text
//! MAGIC (8 bytes)
//! u32 length, bincode (SnapshotMeta, digest: u64)
//! repeated: u32 key length, key bytes, u32 value length, value bytes
//! u32 END
//! ```
//!
//! Keys and values are the raw sled bytes of the row range, so neither
//! building nor installing re-encodes a row. The header decodes alone, which
//! keeps reading a snapshot's metadata cheap, and the end mark tells a
//! complete file from a cut-off one. A file without `MAGIC` is a snapshot
//! written before 0.10 (one bincode document); [`upgrade_legacy`] rewrites it.
//!
//! Files in the snapshot directory: `current.snapshot` (the one snapshot
//! kept), `building-*.tmp` (a build under way), `incoming-*.tmp` (a snapshot
//! being received from the leader). Temp files left by a crash are removed
//! at start-up.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::keys::RowSum;
use crate::codec::{decode_stored, encode};
use crate::command::{Row, RowKey};
use crate::types::SnapshotMeta;

/// First bytes of every snapshot file: the name, then the format version.
const MAGIC: &[u8; 8] = b"RSSNAP\x00\x01";
/// The name part of [`MAGIC`], the same in every version.
const MAGIC_NAME: &[u8; 7] = b"RSSNAP\x00";
/// Length value that ends the record list.
const END: u32 = u32::MAX;
/// Rows read from the file per call of `load` while installing.
pub const INSTALL_BATCH_ROWS: usize = 10_000;
/// Most bytes of a part reserved before they are read. A part is read as
/// long as the writer wrote it (one entry's change-feed row holds every
/// row the entry changed, and can pass a hundred MB); the buffer grows only
/// as its bytes arrive, so a corrupt length meets the file's end instead of
/// allocating gigabytes.
const PART_RESERVE_BYTES: usize = 1024 * 1024;
/// The file holding the current snapshot.
pub const CURRENT: &str = "current.snapshot";
/// Prefix of a file being received from the leader.
pub const INCOMING_PREFIX: &str = "incoming-";
/// Prefix of a file being built from the local state.
const BUILDING_PREFIX: &str = "building-";

/// A snapshot file, open at its start, as openraft hands it around.
#[derive(Debug)]
pub struct SnapshotFile {
    /// Where the file is; decides whether an install renames or copies it.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
}

impl SnapshotFile {
    /// Opens `path` at its start.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(SnapshotFile { path: path.to_owned(), file: File::open(path)? })
    }
}

/// Writes a snapshot: header first, then rows as they come.
pub struct SnapshotWriter {
    /// The temp file being written.
    path: PathBuf,
    /// Buffered writes into it.
    out: BufWriter<File>,
}

impl SnapshotWriter {
    /// Starts a new build file in `dir`.
    pub fn create(dir: &Path, meta: &SnapshotMeta, digest: u64) -> io::Result<Self> {
        let path = dir.join(format!("{BUILDING_PREFIX}{:016x}.tmp", rand::random::<u64>()));
        let mut out = BufWriter::new(File::create(&path)?);
        out.write_all(MAGIC)?;
        write_part(&mut out, &encode(&(meta, digest)))?;
        Ok(SnapshotWriter { path, out })
    }

    /// Appends one row's raw sled key and value.
    pub fn row(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        write_part(&mut self.out, key)?;
        write_part(&mut self.out, value)
    }

    /// Ends the file and syncs it; returns its path.
    pub fn finish(mut self) -> io::Result<PathBuf> {
        self.out.write_all(&END.to_be_bytes())?;
        let file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_data()?;
        Ok(self.path)
    }
}

/// The metadata and digest at the start of a snapshot file.
pub fn read_header(reader: &mut impl Read) -> io::Result<(SnapshotMeta, u64)> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    check_magic(&magic)?;
    let header = read_part(reader)?.ok_or_else(|| invalid("snapshot without a header"))?;
    decode_stored(&header)
}

/// Reads a snapshot from its start: the header, then every row in batches
/// of at most [`INSTALL_BATCH_ROWS`], handed to `load`.
pub fn read_rows(
    file: &mut File,
    mut load: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> io::Result<()>,
) -> io::Result<(SnapshotMeta, u64)> {
    file.rewind()?;
    let mut reader = BufReader::new(file);
    let header = read_header(&mut reader)?;
    let mut batch = Vec::with_capacity(INSTALL_BATCH_ROWS);
    while let Some(key) = read_part(&mut reader)? {
        let value = read_part(&mut reader)?.ok_or_else(|| invalid("snapshot row without a value"))?;
        batch.push((key, value));
        if batch.len() == INSTALL_BATCH_ROWS {
            load(std::mem::take(&mut batch))?;
        }
    }
    load(batch)?;
    Ok(header)
}

/// Reads the snapshot in `file` through and checks that its rows sum to
/// the digest its header records; returns its metadata, with `file`
/// rewound. Fails with `InvalidData` if they do not, or as reading fails.
pub fn check_rows(file: &mut File) -> io::Result<SnapshotMeta> {
    let mut summed = RowSum::default();
    let (meta, digest) = read_rows(file, |rows| rows.iter().try_for_each(|(key, value)| summed.add(key, value)))?;
    file.rewind()?;
    check_digest(summed, digest)?;
    Ok(meta)
}

/// Fails (`InvalidData`) unless a snapshot's rows, `summed`, sum to the
/// `digest` its header records.
pub fn check_digest(summed: RowSum, digest: u64) -> io::Result<()> {
    let summed = summed.digest();
    if summed != digest {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the snapshot's rows sum to {summed:016x}, but it records the digest {digest:016x}"),
        ));
    }
    Ok(())
}

/// Makes `path` the current snapshot of `dir`, durably: renamed if it is
/// one of `dir`'s own temp files, copied from `file` otherwise (another
/// store's file must never be moved), left alone if it already is current.
pub fn make_current(dir: &Path, path: &Path, file: &mut File) -> io::Result<PathBuf> {
    let current = dir.join(CURRENT);
    if path == current {
        return Ok(current);
    }
    let own_temp =
        path.parent() == Some(dir) && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".tmp"));
    let source = if own_temp {
        path.to_owned()
    } else {
        let copy = dir.join(format!("{INCOMING_PREFIX}{:016x}.tmp", rand::random::<u64>()));
        file.rewind()?;
        let mut out = File::create(&copy)?;
        io::copy(file, &mut out)?;
        out.sync_data()?;
        copy
    };
    std::fs::rename(&source, &current)?;
    File::open(dir)?.sync_all()?;
    Ok(current)
}

/// Removes temp files a crash left in `dir`.
pub fn remove_temp_files(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if (name.starts_with(INCOMING_PREFIX) || name.starts_with(BUILDING_PREFIX)) && name.ends_with(".tmp") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A whole-file snapshot as written before 0.10.
#[derive(Deserialize)]
struct LegacySnapshot {
    /// Its metadata (0.10 reads the 0.9 layout).
    meta: SnapshotMeta,
    /// The digest of `rows`.
    digest: u64,
    /// Every row.
    rows: Vec<(RowKey, Row)>,
}

/// Rewrites `dir`'s current snapshot in this format if an older version
/// wrote it. Needs the old file's size in memory once.
pub fn upgrade_legacy(dir: &Path) -> io::Result<()> {
    let current = dir.join(CURRENT);
    let bytes = match std::fs::read(&current) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if bytes.starts_with(MAGIC_NAME) {
        return check_magic(&bytes[..MAGIC.len().min(bytes.len())])
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", current.display())));
    }
    let legacy: LegacySnapshot = decode_stored(&bytes)?;
    let mut writer = SnapshotWriter::create(dir, &legacy.meta, legacy.digest)?;
    for (key, row) in &legacy.rows {
        writer.row(&super::keys::row_key(key), &encode(row))?;
    }
    let path = writer.finish()?;
    std::fs::rename(&path, &current)?;
    File::open(dir)?.sync_all()?;
    tracing::info!(rows = legacy.rows.len(), "snapshot rewritten in the streamed format");
    Ok(())
}

/// Accepts the first bytes of a snapshot in this build's format; names the
/// version of one written in another.
fn check_magic(magic: &[u8]) -> io::Result<()> {
    if magic == MAGIC {
        return Ok(());
    }
    match magic.strip_prefix(MAGIC_NAME.as_slice()) {
        Some([version]) => Err(invalid(&format!(
            "snapshot format version {version}, but this build reads only version {}: it was written by another \
             release of raftshop; run that release",
            MAGIC[7]
        ))),
        _ => Err(invalid("not a raftshop snapshot (bad magic)")),
    }
}

fn write_part(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).ok().filter(|l| *l < END).ok_or_else(|| invalid("part too large"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

/// The next length-prefixed part, or `None` at the end mark.
fn read_part(reader: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len == END {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity((len as usize).min(PART_RESERVE_BYTES));
    reader.take(u64::from(len)).read_to_end(&mut bytes)?;
    if bytes.len() != len as usize {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the snapshot ends inside a part"));
    }
    Ok(Some(bytes))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[test]
    fn a_row_of_any_length_written_is_read_back_and_a_cut_one_refused() {
        // Longer than the 64 MiB the reader once took for "longer than any
        // row": one entry's change-feed row can be.
        let dir = tempfile::tempdir().expect("temp dir");
        let mut writer = SnapshotWriter::create(dir.path(), &SnapshotMeta::default(), 7).expect("create");
        let big = vec![5u8; 65 * 1024 * 1024];
        writer.row(b"big", &big).expect("row");
        let path = writer.finish().expect("finish");
        let mut read = Vec::new();
        read_rows(&mut File::open(&path).expect("open"), |batch| {
            read.extend(batch);
            Ok(())
        })
        .expect("read");
        assert!(read.len() == 1 && read[0].1 == big, "the big row came back");

        let cut = dir.path().join("cut");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        let error = read_rows(&mut File::open(&cut).expect("open"), |_| Ok(())).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }

    #[test]
    fn rows_written_are_read_back_in_batches() {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = SnapshotMeta::default();
        let mut writer = SnapshotWriter::create(dir.path(), &meta, 7).expect("create");
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            (0..INSTALL_BATCH_ROWS + 5).map(|i| (format!("r{i}").into_bytes(), vec![1, 2, 3])).collect();
        for (k, v) in &rows {
            writer.row(k, v).expect("row");
        }
        let path = writer.finish().expect("finish");
        let current = make_current(dir.path(), &path, &mut File::open(&path).expect("open")).expect("current");
        let mut read = Vec::new();
        let mut batches = 0;
        let (_, digest) = read_rows(&mut File::open(current).expect("open"), |batch| {
            batches += 1;
            read.extend(batch);
            Ok(())
        })
        .expect("read");
        assert_eq!((digest, batches), (7, 2));
        assert_eq!(read, rows);
    }

    #[test]
    fn a_snapshot_of_an_unknown_format_version_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = SnapshotWriter::create(dir.path(), &SnapshotMeta::default(), 0).expect("create");
        let path = writer.finish().expect("finish");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[7] = 9;
        std::fs::write(dir.path().join(CURRENT), &bytes).expect("write");

        let error = read_header(&mut bytes.as_slice()).unwrap_err().to_string();
        assert!(error.contains("format version 9") && error.contains("only version 1"), "{error}");
        let error = upgrade_legacy(dir.path()).unwrap_err().to_string();
        assert!(error.contains(CURRENT) && error.contains("format version 9"), "{error}");
        assert_eq!(std::fs::read(dir.path().join(CURRENT)).expect("read"), bytes, "left as it was");
    }

    #[test]
    fn a_cut_off_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut writer = SnapshotWriter::create(dir.path(), &SnapshotMeta::default(), 0).expect("create");
        writer.row(b"r1", b"v").expect("row");
        let path = writer.finish().expect("finish");
        let len = std::fs::metadata(&path).expect("metadata").len();
        std::fs::OpenOptions::new().write(true).open(&path).expect("open").set_len(len - 4).expect("cut");
        let result = read_rows(&mut File::open(&path).expect("open"), |_| Ok(()));
        assert!(result.is_err(), "a file without its end mark must not install");
    }

    #[test]
    fn a_snapshot_written_before_0_10_is_rewritten_in_this_format() {
        #[derive(Serialize)]
        struct Legacy<'a> {
            meta: &'a SnapshotMeta,
            digest: u64,
            rows: Vec<(RowKey, Row)>,
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = SnapshotMeta::default();
        let row = Row { version: 3, value: b"v".to_vec() };
        let legacy = Legacy { meta: &meta, digest: 9, rows: vec![(RowKey::Kv("k".into()), row.clone())] };
        std::fs::write(dir.path().join(CURRENT), encode(&legacy)).expect("write");
        upgrade_legacy(dir.path()).expect("upgrade");
        let mut read = Vec::new();
        let (read_meta, digest) = read_rows(&mut File::open(dir.path().join(CURRENT)).expect("open"), |batch| {
            read.extend(batch);
            Ok(())
        })
        .expect("read");
        assert_eq!((read_meta, digest), (meta, 9));
        assert_eq!(read, vec![(crate::state::keys::row_key(&RowKey::Kv("k".into())), encode(&row))]);
    }
}
