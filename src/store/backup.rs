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

/// Reads a backup an entry at a time, in bounded memory; the trailer's
/// count and checksum are checked when it is reached, so what was read is
/// known to be the whole backup, undamaged, only once `next_entry` has
/// answered `None`.
pub struct BackupReader<'a> {
    input: std::io::BufReader<&'a mut dyn Read>,
    hash: u64,
    count: u64,
    pub revision: u64,
    pub first_change: u64,
}

fn incomplete(what: &str) -> StoreError {
    StoreError::Incompatible(format!("not a complete cooperation-registry backup: {what}"))
}

impl<'a> BackupReader<'a> {
    /// Reads the header.
    pub fn new(input: &'a mut dyn Read) -> StoreResult<BackupReader<'a>> {
        let mut reader = BackupReader {
            input: std::io::BufReader::with_capacity(CHUNK, input),
            hash: FNV_START,
            count: 0,
            revision: 0,
            first_change: 0,
        };
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(incomplete("the header is missing"));
        }
        let format = reader.u32()?;
        if format != FORMAT && format != 1 {
            return Err(StoreError::Incompatible(format!(
                "backup format {format} is not one this build reads (1 to {FORMAT})"
            )));
        }
        reader.revision = reader.u64()?;
        reader.first_change = reader.u64()?;
        Ok(reader)
    }

    /// Fills `bytes` from the input, counted in the checksum.
    fn fill(&mut self, bytes: &mut [u8]) -> StoreResult<()> {
        self.input.read_exact(bytes).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => incomplete("it ends too early"),
            _ => StoreError::Storage(format!("cannot read the backup: {e}")),
        })?;
        self.hash = fnv(self.hash, bytes);
        Ok(())
    }

    /// `n` bytes, read in steps so that a damaged length fails at the end of
    /// the input rather than asking for memory it does not have.
    fn take(&mut self, n: usize) -> StoreResult<Vec<u8>> {
        let mut bytes = Vec::with_capacity(n.min(CHUNK));
        while bytes.len() < n {
            let start = bytes.len();
            bytes.resize(n.min(start + CHUNK), 0);
            self.fill(&mut bytes[start..])?;
        }
        Ok(bytes)
    }

    fn u32(&mut self) -> StoreResult<u32> {
        let mut bytes = [0; 4];
        self.fill(&mut bytes)?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn u64(&mut self) -> StoreResult<u64> {
        let mut bytes = [0; 8];
        self.fill(&mut bytes)?;
        Ok(u64::from_be_bytes(bytes))
    }

    fn sized(&mut self) -> StoreResult<Vec<u8>> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// The next entry; `None` once the trailer was read and matched.
    pub fn next_entry(&mut self) -> StoreResult<Option<BackupEntry>> {
        let before = self.hash;
        let mut tag = [0u8; 1];
        self.fill(&mut tag)?;
        let entry = match tag[0] {
            1 => {
                let key = self.sized()?;
                let mod_revision = self.u64()?;
                BackupEntry::Key { key, mod_revision, value: self.sized()? }
            }
            2 => {
                let revision = self.u64()?;
                BackupEntry::Change { revision, bytes: self.sized()? }
            }
            3 => {
                let set = self.sized()?;
                let member = self.sized()?;
                BackupEntry::Member { set, member, revision: self.u64()? }
            }
            0 => {
                // The trailer's tag is not part of what it sums.
                let (count, hash) = (self.u64()?, self.u64()?);
                if count != self.count || hash != before {
                    return Err(incomplete("its checksum does not match"));
                }
                let mut rest = [0u8; 1];
                let after = self.input.read(&mut rest).map_err(|e| StoreError::Storage(e.to_string()))?;
                if after != 0 {
                    return Err(incomplete("there are bytes after its end"));
                }
                return Ok(None);
            }
            tag => return Err(incomplete(&format!("unknown entry tag {tag}"))),
        };
        self.count += 1;
        Ok(Some(entry))
    }
}
