//! Get, and reading a stored record without decoding it: its top-level
//! fields on the wire, whether it is deleted, what is derived from it.

use super::keys::record_key;
use super::resource::Resource;
use super::{EncodedRecord, Registry, as_of_day, decode, etag_of, presented, undecodable, wire};
use crate::error::{Error, Result, Violations};
use crate::pb::google::r#type::Date;

/// Calls `visit` with each top-level field of the encoded message `bytes`:
/// its number and its bytes on the wire (key included), in order, without
/// decoding the message; stops early when `visit` says false.
pub(super) fn for_each_top_level_field(
    bytes: &[u8],
    mut visit: impl FnMut(u32, &[u8]) -> bool,
) -> std::result::Result<(), wire::Malformed> {
    for field in wire::fields(bytes) {
        let field = field?;
        if !visit(field.number, field.raw) {
            break;
        }
    }
    Ok(())
}

/// One pass over a stored record's top level: whether it holds `delete_time`
/// (its field number), with the fields its derived ones are read from
/// (`Rules::DERIVED_FROM_FIELDS`) copied into `inputs`.
pub(super) fn read_top_level<R: Resource>(stored: &[u8], delete_time: u32, inputs: &mut Vec<u8>) -> Result<bool> {
    let mut deleted = false;
    inputs.clear();
    for_each_top_level_field(stored, |number, field| {
        deleted |= number == delete_time;
        if R::DERIVED_FROM_FIELDS.contains(&number) {
            inputs.extend_from_slice(field);
        }
        true
    })
    .map_err(|e| undecodable(R::KIND, &e))?;
    Ok(deleted)
}

/// Whether the encoded message `bytes` holds a field numbered `tag` at its top
/// level, read on the wire without decoding the message.
pub(super) fn has_field(bytes: &[u8], tag: u32) -> std::result::Result<bool, wire::Malformed> {
    let mut found = false;
    for_each_top_level_field(bytes, |number, _| {
        found = number == tag;
        !found
    })?;
    Ok(found)
}

impl Registry {
    /// The stored entry of `name`, its record still encoded.
    pub(super) async fn read_entry<R: Resource>(&self, name: &str) -> Result<crate::store::Entry> {
        self.store
            .get(&record_key(name))
            .await?
            .ok_or_else(|| Error::NotFound { resource_type: R::KIND.resource_type.into(), name: name.into() })
    }

    /// Checks `name` as a name of `R`, reporting it as `field`.
    pub(super) fn check_name<R: Resource>(name: &str, field: &str) -> Result<()> {
        R::KIND.parse_name(name).map(|_| ()).map_err(|e| Error::invalid(field, e))
    }

    pub async fn get<R: Resource>(&self, name: &str, as_of: Option<&Date>) -> Result<R> {
        let (entry, as_of) = self.read_for_get::<R>(name, as_of).await?;
        let mut record: R = decode(&entry.value)?;
        self.present(&mut record, entry.mod_revision, &as_of);
        Ok(record)
    }

    /// What [`Registry::get`] answers, as the encoded message: the stored
    /// bytes with the etag and the derived fields appended, so that serving a
    /// record does not decode and re-encode it.
    pub async fn get_encoded<R: Resource>(&self, name: &str, as_of: Option<&Date>) -> Result<EncodedRecord> {
        let as_of = Self::check_get::<R>(name, as_of)?;
        // What is appended is kept as a List page keeps it: no derivation
        // for a record read again at the same revision and day.
        let Some(entry) = self.store.get(&record_key(name)).await? else {
            return Err(Error::NotFound { resource_type: R::KIND.resource_type.into(), name: name.into() });
        };
        let shown = self.shown::<R>(name.as_bytes(), &entry.value, entry.mod_revision, &as_of)?;
        self.store.wait_durable(entry.mod_revision).await?;
        Ok(EncodedRecord { stored: entry.value, appended: shown.appended })
    }

    /// A Get's checks: the name, and the day to derive fields for.
    pub(super) fn check_get<R: Resource>(name: &str, as_of: Option<&Date>) -> Result<Date> {
        let mut violations = Violations::new();
        if let Err(e) = R::KIND.parse_name(name) {
            violations.add("name", e);
        }
        let as_of = as_of_day(as_of, &mut violations);
        violations.into_result()?;
        Ok(as_of)
    }

    /// A Get's checks and read: the stored entry once durable, and the day
    /// to derive fields for.
    pub(super) async fn read_for_get<R: Resource>(
        &self,
        name: &str,
        as_of: Option<&Date>,
    ) -> Result<(crate::store::Entry, Date)> {
        let as_of = Self::check_get::<R>(name, as_of)?;
        let Some(entry) = self.store.get(&record_key(name)).await? else {
            return Err(Error::NotFound { resource_type: R::KIND.resource_type.into(), name: name.into() });
        };
        self.store.wait_durable(entry.mod_revision).await?;
        Ok((entry, as_of))
    }

    /// What is shown of the record `name` beyond its stored bytes at
    /// `revision` as of `as_of` (its deletion, its derived fields and etag
    /// encoded), kept for the records read again and again.
    pub(super) fn shown<R: Resource>(
        &self,
        name: &[u8],
        stored: &[u8],
        revision: u64,
        as_of: &Date,
    ) -> Result<presented::Shown> {
        if let Some(shown) = self.presented.get(name, revision, as_of) {
            return Ok(shown);
        }
        let mut inputs = Vec::new();
        let deleted = read_top_level::<R>(stored, R::KIND.delete_time_field(), &mut inputs)?;
        let mut derived = Vec::new();
        Self::encode_derived::<R>(&inputs, revision, as_of, &mut derived)?;
        let shown = presented::Shown { deleted, appended: derived.into() };
        self.presented.keep(name, revision, as_of, shown.clone());
        Ok(shown)
    }

    /// Appends to `out` what [`Registry::present`] sets, encoded: the fields
    /// derived as of `as_of`, then the etag. Appended to the stored bytes, it
    /// gives the record as presented (a later occurrence of a field wins),
    /// without building a record (a List page does this for each of its).
    pub(super) fn encode_derived<R: Resource>(
        stored: &[u8],
        revision: u64,
        as_of: &Date,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        R::encode_derived(stored, as_of, out).map_err(|e| undecodable(R::KIND, &e))?;
        prost::encoding::string::encode(R::etag_field(), &etag_of(revision), out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use prost::Message;
    use prost_reflect::ReflectMessage;

    use super::*;

    #[test]
    fn has_field_finds_a_top_level_field_and_refuses_garbage() {
        use crate::pb::cooperation::v1::Agreement;
        let deleted = Agreement {
            title: "t".into(),
            delete_time: Some(Timestamp { seconds: 1, nanos: 0 }),
            ..Default::default()
        };
        let tag = deleted.descriptor().get_field_by_name("delete_time").unwrap().number();
        assert!(has_field(&deleted.encode_to_vec(), tag).unwrap());
        let live = Agreement { title: "t".into(), ..Default::default() };
        assert!(!has_field(&live.encode_to_vec(), tag).unwrap());
        assert!(has_field(&[0xff, 0xff, 0xff], tag).is_err(), "a damaged record is an error, not a live record");
    }

    /// Every wire type a record holds is walked field by field, the fields
    /// put back together are the record, and a record cut anywhere inside a
    /// field is refused, as prost refuses it.
    #[test]
    fn the_top_level_walk_splits_a_record_into_its_fields_and_refuses_a_cut_one() {
        use crate::pb::cooperation::v1::{Agreement, agreement};
        let record = Agreement {
            title: "Walked".into(),
            parties: vec!["parties/ind".into(), "parties/jpn".into()],
            status: agreement::Status::InForce as i32,
            signature_date: Some(Date { year: 2020, month: 9, day: 9 }),
            term: Some(agreement::Term { years: 10, ..Default::default() }),
            create_time: Some(Timestamp { seconds: 1_600_000_000, nanos: 5 }),
            ..Default::default()
        };
        let bytes = record.encode_to_vec();
        // Fixed-width fields too, which no record kind has yet.
        let mut with_fixed = bytes.clone();
        prost::encoding::double::encode(900, &1.5, &mut with_fixed);
        prost::encoding::fixed32::encode(901, &7, &mut with_fixed);
        let mut fields = Vec::new();
        let mut joined = Vec::new();
        for_each_top_level_field(&with_fixed, |number, field| {
            fields.push(number);
            joined.extend_from_slice(field);
            true
        })
        .unwrap();
        assert_eq!(joined, with_fixed);
        assert_eq!(fields.len(), 9, "{fields:?}");
        assert_eq!(&fields[7..], [900, 901]);
        for cut in 1..bytes.len() {
            let whole_fields = Agreement::decode(&bytes[..cut]).is_ok();
            let walked = for_each_top_level_field(&bytes[..cut], |_, _| true).is_ok();
            assert_eq!(walked, whole_fields, "cut at {cut}");
        }
    }
}
