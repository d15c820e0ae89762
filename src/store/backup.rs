//! The backup file: a consistent copy of a store, independent of the engine.
//!
//! ```text
//! header   "cooperation-registry backup\n", u32 format (2), u64 revision, u64 first change
//! entries  1, u32 key length, key, u64 mod revision, u32 value length, value   (a key)
//!          2, u64 revision, u32 length, change bytes                           (a change)
//!          3, u32 set length, set, u32 member length, member, u64 revision    (a set member)
//! trailer  0, u64 entry count, u64 FNV-1a of every byte before the trailer
//! ```
//! Numbers are big-endian. The trailer lets a restore refuse a truncated or
//! damaged file instead of restoring part of it.

use std::io::Read;
use std::sync::mpsc::SyncSender;

use super::{StoreError, StoreResult};

const MAGIC: &[u8] = b"cooperation-registry backup\n";
/// 2 added set members; a format 1 backup (without them) still reads.
const FORMAT: u32 = 2;
const CHUNK: usize = 64 * 1024;

/// One thing a backup holds.
#[derive(Debug, PartialEq, Eq)]
pub enum BackupEntry {
    Key {
        key: Vec<u8>,
        mod_revision: u64,
        value: Vec<u8>,
    },
    Change {
        revision: u64,
        bytes: Vec<u8>,
    },
    /// A member of a set, and the revision that last wrote it.
    Member {
        set: Vec<u8>,
        member: Vec<u8>,
        revision: u64,
    },
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Writes the backup format in chunks to a channel (whose reader sends them on).
pub struct BackupWriter {
    out: SyncSender<Vec<u8>>,
    buffer: Vec<u8>,
    hash: u64,
    count: u64,
}

impl BackupWriter {
    pub fn new(out: SyncSender<Vec<u8>>, revision: u64, first_change: u64) -> BackupWriter {
        let mut writer = BackupWriter { out, buffer: Vec::with_capacity(CHUNK), hash: FNV_START, count: 0 };
        writer.put(MAGIC);
        writer.put(&FORMAT.to_be_bytes());
        writer.put(&revision.to_be_bytes());
        writer.put(&first_change.to_be_bytes());
        writer
    }

    fn put(&mut self, bytes: &[u8]) {
        self.hash = fnv(self.hash, bytes);
        self.buffer.extend_from_slice(bytes);
    }

    fn send_full(&mut self) -> StoreResult<()> {
        if self.buffer.len() >= CHUNK {
            let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
            self.out.send(chunk).map_err(|_| StoreError::Storage("the backup reader went away".into()))?;
        }
        Ok(())
    }

    pub fn key(&mut self, key: &[u8], mod_revision: u64, value: &[u8]) -> StoreResult<()> {
        self.put(&[1]);
        self.put(&(key.len() as u32).to_be_bytes());
        self.put(key);
        self.put(&mod_revision.to_be_bytes());
        self.put(&(value.len() as u32).to_be_bytes());
        self.put(value);
        self.count += 1;
        self.send_full()
    }

    pub fn change(&mut self, revision: u64, bytes: &[u8]) -> StoreResult<()> {
        self.put(&[2]);
        self.put(&revision.to_be_bytes());
        self.put(&(bytes.len() as u32).to_be_bytes());
        self.put(bytes);
        self.count += 1;
        self.send_full()
    }

    pub fn member(&mut self, set: &[u8], member: &[u8], revision: u64) -> StoreResult<()> {
        self.put(&[3]);
        self.put(&(set.len() as u32).to_be_bytes());
        self.put(set);
        self.put(&(member.len() as u32).to_be_bytes());
        self.put(member);
        self.put(&revision.to_be_bytes());
        self.count += 1;
        self.send_full()
    }

    pub fn finish(mut self) -> StoreResult<()> {
        let (count, hash) = (self.count, self.hash);
        self.buffer.push(0);
        self.buffer.extend_from_slice(&count.to_be_bytes());
        self.buffer.extend_from_slice(&hash.to_be_bytes());
        let chunk = std::mem::take(&mut self.buffer);
        self.out.send(chunk).map_err(|_| StoreError::Storage("the backup reader went away".into()))
    }
}

/// Reads and checks a whole backup: its revision, first change and entries.
pub fn read_backup(input: &mut dyn Read) -> StoreResult<(u64, u64, Vec<BackupEntry>)> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(|e| StoreError::Storage(format!("cannot read the backup: {e}")))?;
    let bad = |what: &str| StoreError::Incompatible(format!("not a complete cooperation-registry backup: {what}"));
    let at = std::cell::Cell::new(0usize);
    let take = |n: usize| -> StoreResult<&[u8]> {
        let slice = bytes.get(at.get()..at.get() + n).ok_or_else(|| bad("it ends too early"))?;
        at.set(at.get() + n);
        Ok(slice)
    };
    if take(MAGIC.len())? != MAGIC {
        return Err(bad("the header is missing"));
    }
    let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
    let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    let format = u32_of(take(4)?);
    if format != FORMAT && format != 1 {
        return Err(StoreError::Incompatible(format!(
            "backup format {format} is not one this build reads (1 to {FORMAT})"
        )));
    }
    let revision = u64_of(take(8)?);
    let first_change = u64_of(take(8)?);
    let mut entries = Vec::new();
    loop {
        let start = at.get();
        match take(1)?[0] {
            1 => {
                let len = u32_of(take(4)?) as usize;
                let key = take(len)?.to_vec();
                let mod_revision = u64_of(take(8)?);
                let len = u32_of(take(4)?) as usize;
                entries.push(BackupEntry::Key { key, mod_revision, value: take(len)?.to_vec() });
            }
            2 => {
                let revision = u64_of(take(8)?);
                let len = u32_of(take(4)?) as usize;
                entries.push(BackupEntry::Change { revision, bytes: take(len)?.to_vec() });
            }
            3 => {
                let len = u32_of(take(4)?) as usize;
                let set = take(len)?.to_vec();
                let len = u32_of(take(4)?) as usize;
                let member = take(len)?.to_vec();
                entries.push(BackupEntry::Member { set, member, revision: u64_of(take(8)?) });
            }
            0 => {
                let count = u64_of(take(8)?);
                let hash = u64_of(take(8)?);
                if count != entries.len() as u64 || hash != fnv(FNV_START, &bytes[..start]) {
                    return Err(bad("its checksum does not match"));
                }
                if at.get() != bytes.len() {
                    return Err(bad("there are bytes after its end"));
                }
                return Ok((revision, first_change, entries));
            }
            tag => return Err(bad(&format!("unknown entry tag {tag}"))),
        }
    }
}
