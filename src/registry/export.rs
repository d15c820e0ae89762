//! Export: the live records of every kind, as one snapshot of the store shows
//! them, handed over in chunks as they are read, so an export of any size
//! holds one chunk at a time. Each kind is read as `query` reads it (its
//! filter checked as List checks it, an index used where the filter allows).

use std::time::Instant;

use super::filter::Filter;
use super::resource::Resource;
use super::{Registry, dates};
use crate::error::{Error, Result, Violations};
use crate::pb::cooperation::v1::{Agreement, Dataset, Engagement, PartnershipDomain, Party};
use crate::pb::google::r#type::Date;
use crate::store::Snapshot;

/// Most records in one chunk.
pub const CHUNK_RECORDS: usize = 1000;

/// A chunk is handed over once its records' encodings reach this many bytes:
/// well under the smallest response limit a server is given.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What an export reads: a filter for each kind (AIP-160, as that kind's
/// List takes it; empty for every live record of the kind).
#[derive(Clone, Debug, Default)]
pub struct ExportQuery {
    pub party_filter: String,
    pub partnership_domain_filter: String,
    pub agreement_filter: String,
    pub engagement_filter: String,
    /// When the caller stops waiting: the reading stops then.
    pub deadline: Option<Instant>,
}

/// An export ready to read: its filters checked, and the snapshot it reads,
/// held (with what the engine keeps for it) until the export is dropped.
pub struct Export {
    snapshot: Box<dyn Snapshot>,
    parties: Filter,
    partnership_domains: Filter,
    agreements: Filter,
    engagements: Filter,
    /// The day derived fields are shown as of: the day the export began.
    today: Date,
    deadline: Option<Instant>,
}

impl Export {
    /// The store revision it shows.
    pub fn revision(&self) -> u64 {
        self.snapshot.revision()
    }
}

/// The records gathered for the next chunk.
struct Chunk<'a> {
    dataset: Dataset,
    records: usize,
    bytes: usize,
    /// Chunks handed over so far.
    sent: usize,
    /// Takes a chunk; false once the reader has gone.
    send: &'a mut dyn FnMut(Dataset) -> bool,
}

impl Chunk<'_> {
    /// Adds a record of `bytes` bytes (already in `dataset`); hands the chunk
    /// over once it is full. False once the reader has gone.
    fn added(&mut self, bytes: usize) -> bool {
        self.records += 1;
        self.bytes += bytes;
        match self.records >= CHUNK_RECORDS || self.bytes >= CHUNK_BYTES {
            true => self.flush(),
            false => true,
        }
    }

    fn flush(&mut self) -> bool {
        self.records = 0;
        self.bytes = 0;
        self.sent += 1;
        (self.send)(std::mem::take(&mut self.dataset))
    }
}

impl Registry {
    /// Checks an export's filters (every bad one named at once, as
    /// `party_filter` and so on) and opens the snapshot it reads, once every
    /// write it shows is durable.
    pub async fn open_export(&self, query: &ExportQuery) -> Result<Export> {
        let mut violations = Violations::new();
        let mut compile = |text: &str, field: &str, descriptor: prost_reflect::MessageDescriptor| {
            Filter::compile(text, &descriptor).unwrap_or_else(|e| {
                violations.add(field, e.to_string());
                Filter::everything()
            })
        };
        let parties = compile(&query.party_filter, "party_filter", Party::KIND.descriptor());
        let partnership_domains = compile(
            &query.partnership_domain_filter,
            "partnership_domain_filter",
            PartnershipDomain::KIND.descriptor(),
        );
        let agreements = compile(&query.agreement_filter, "agreement_filter", Agreement::KIND.descriptor());
        let engagements = compile(&query.engagement_filter, "engagement_filter", Engagement::KIND.descriptor());
        violations.into_result()?;
        let snapshot = self.store.snapshot().await?;
        self.store.wait_durable(snapshot.revision()).await?;
        Ok(Export {
            snapshot,
            parties,
            partnership_domains,
            agreements,
            engagements,
            today: dates::today(),
            deadline: query.deadline,
        })
    }

    /// Reads `export`: parties, partnership domains, agreements, then
    /// engagements, each in name order, handing `send` chunks of at most
    /// CHUNK_RECORDS records (fewer once they reach CHUNK_BYTES), at least
    /// one, until `send` says false (the reader has gone: the reading stops).
    /// Stops with DEADLINE_EXCEEDED once the export's deadline has passed, and
    /// with UNAVAILABLE once the server begins to shut down. Returns whether
    /// every chunk was taken.
    pub async fn run_export(&self, export: &Export, send: &mut dyn FnMut(Dataset) -> bool) -> Result<bool> {
        let mut chunk = Chunk { dataset: Dataset::default(), records: 0, bytes: 0, sent: 0, send };
        let complete = self.export_kind(export, &export.parties, &mut chunk, |d, r| d.parties.push(r)).await?
            && self
                .export_kind(export, &export.partnership_domains, &mut chunk, |d, r| d.partnership_domains.push(r))
                .await?
            && self.export_kind(export, &export.agreements, &mut chunk, |d, r| d.agreements.push(r)).await?
            && self.export_kind(export, &export.engagements, &mut chunk, |d, r| d.engagements.push(r)).await?;
        if !complete {
            return Ok(false);
        }
        // The last records, or an empty chunk: the reader learns the revision
        // from the first.
        if chunk.records > 0 || chunk.sent == 0 {
            return Ok(chunk.flush());
        }
        Ok(true)
    }

    /// The records of one kind that `filter` matches, into `chunk`.
    async fn export_kind<R: Resource>(
        &self,
        export: &Export,
        filter: &Filter,
        chunk: &mut Chunk<'_>,
        push: impl Fn(&mut Dataset, R),
    ) -> Result<bool> {
        let mut shutting_down = false;
        let complete = self
            .query_each::<R>(&*export.snapshot, filter, &export.today, export.deadline, |record| {
                if *self.shutdown.borrow() {
                    shutting_down = true;
                    return false;
                }
                let bytes = record.encoded_len();
                push(&mut chunk.dataset, record);
                chunk.added(bytes)
            })
            .await?;
        if shutting_down {
            return Err(Error::Unavailable {
                message: format!(
                    "the server is shutting down; export again (this export was at revision {})",
                    export.revision()
                ),
            });
        }
        Ok(complete)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::testing::{anonymous, india_japan};
    use crate::store::memory::MemoryStore;

    /// A registry on the memory engine with `count` agreements, `deleted` of
    /// them soft-deleted.
    async fn registry_with(count: usize, deleted: usize) -> Registry {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let items: Vec<(String, Agreement)> = (0..count)
            .map(|i| (format!("a{i:05}"), Agreement { title: format!("agreement {i}"), ..india_japan() }))
            .collect();
        for batch in items.chunks(crate::registry::MAX_BATCH) {
            registry.create_many(batch.to_vec(), &anonymous("BatchCreateAgreements")).await.unwrap();
        }
        for i in 0..deleted {
            let name = format!("agreements/a{i:05}");
            registry.delete::<Agreement>(&name, "", &anonymous("DeleteAgreement")).await.unwrap();
        }
        registry
    }

    /// Every chunk of an export, taken as they come.
    async fn chunks(registry: &Registry, query: &ExportQuery) -> (u64, Vec<Dataset>) {
        let export = registry.open_export(query).await.unwrap();
        let mut chunks = Vec::new();
        let complete = registry
            .run_export(&export, &mut |chunk| {
                chunks.push(chunk);
                true
            })
            .await
            .unwrap();
        assert!(complete);
        (export.revision(), chunks)
    }

    /// Live records only, in kind order then name order, in chunks of at most
    /// CHUNK_RECORDS; the parties (the seeded states) share a chunk with the
    /// agreements after them.
    #[tokio::test]
    async fn an_export_is_the_live_records_in_chunks_in_order() {
        let registry = registry_with(CHUNK_RECORDS + 10, 5).await;
        let (revision, chunks) = chunks(&registry, &ExportQuery::default()).await;
        assert_eq!(revision, registry.revision().await.unwrap());
        assert!(chunks.iter().all(|c| c.parties.len() + c.agreements.len() <= CHUNK_RECORDS));
        let parties: Vec<String> = chunks.iter().flat_map(|c| c.parties.iter().map(|p| p.name.clone())).collect();
        assert_eq!(parties.len(), 249, "the seeded states");
        let agreements: Vec<String> = chunks.iter().flat_map(|c| c.agreements.iter().map(|a| a.name.clone())).collect();
        let expected: Vec<String> = (5..CHUNK_RECORDS + 10).map(|i| format!("agreements/a{i:05}")).collect();
        assert_eq!(agreements, expected);
        let first_agreement = chunks.iter().position(|c| !c.agreements.is_empty()).unwrap();
        assert!(chunks[..first_agreement].iter().all(|c| c.agreements.is_empty()));
        assert!(chunks[first_agreement + 1..].iter().all(|c| c.parties.is_empty()), "parties come first");
    }

    /// A filter keeps what List keeps; a kind that nothing matches is
    /// empty, and an export of nothing is one empty chunk.
    #[tokio::test]
    async fn filters_select_and_an_empty_export_is_one_empty_chunk() {
        let registry = registry_with(3, 0).await;
        let query = ExportQuery {
            party_filter: r#"iso_alpha3 = "JPN""#.into(),
            agreement_filter: r#"title = "agreement 1""#.into(),
            ..Default::default()
        };
        let (_, found) = chunks(&registry, &query).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].parties.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["parties/jpn"]);
        assert_eq!(found[0].agreements.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["agreements/a00001"]);

        let nothing = ExportQuery {
            party_filter: r#"display_name = "none""#.into(),
            agreement_filter: r#"title = "none""#.into(),
            ..Default::default()
        };
        let (_, found) = chunks(&registry, &nothing).await;
        assert_eq!(found, [Dataset::default()]);
    }

    /// Every bad filter is named at once; nothing is read.
    #[tokio::test]
    async fn bad_filters_are_named_together() {
        let registry = registry_with(0, 0).await;
        let query = ExportQuery {
            party_filter: "no_such_field = 1".into(),
            engagement_filter: "title =".into(),
            ..Default::default()
        };
        let Err(Error::InvalidArgument { violations }) = registry.open_export(&query).await else { panic!() };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["party_filter", "engagement_filter"]);
    }

    /// A reader that goes away stops the reading: no chunk is offered after
    /// the one refused.
    #[tokio::test]
    async fn a_reader_that_leaves_stops_the_export() {
        let registry = registry_with(CHUNK_RECORDS, 0).await;
        let export = registry.open_export(&ExportQuery::default()).await.unwrap();
        let mut offered = 0;
        let complete = registry
            .run_export(&export, &mut |_| {
                offered += 1;
                false
            })
            .await
            .unwrap();
        assert!(!complete);
        assert_eq!(offered, 1);
    }

    /// Writes after the export's snapshot do not show in it, however late
    /// it is read.
    #[tokio::test]
    async fn an_export_shows_its_revision_only() {
        let registry = registry_with(3, 0).await;
        let export = registry.open_export(&ExportQuery::default()).await.unwrap();
        let at = export.revision();
        registry.create("later", india_japan(), &anonymous("CreateAgreement")).await.unwrap();
        let changed = Agreement { name: "agreements/a00000".into(), title: "changed".into(), ..Default::default() };
        registry.update(changed, &["title".to_string()], "", &anonymous("UpdateAgreement")).await.unwrap();
        let mut agreements = Vec::new();
        registry
            .run_export(&export, &mut |chunk| {
                agreements.extend(chunk.agreements);
                true
            })
            .await
            .unwrap();
        let shown: Vec<(&str, &str)> = agreements.iter().map(|a| (a.name.as_str(), a.title.as_str())).collect();
        assert_eq!(
            shown,
            [
                ("agreements/a00000", "agreement 0"),
                ("agreements/a00001", "agreement 1"),
                ("agreements/a00002", "agreement 2")
            ]
        );
        assert!(agreements.iter().all(|a| a.etag.parse::<u64>().unwrap() <= at));
    }
}
