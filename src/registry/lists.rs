//! List: the page a query asks for, planned through the indexes, read in
//! name order (another order is `ordered`'s), and answered as records or as
//! the encoded response.

use std::sync::Arc;
use std::time::Instant;

use super::filter::Filter;
use super::keys::{RECORD_PREFIX, collection_key};
use super::order::{self, OrderBy};
use super::ordered::Ordered;
use super::resource::Resource;
use super::{
    DEFAULT_PAGE_SIZE, EncodedPage, EncodedRecord, ListQuery, MAX_PAGE_SIZE, Page, Registry, as_of_day, check_deadline,
    dates, decode, index, paging,
};
use crate::error::{Error, Result, Violations};
use crate::pb::google::r#type::Date;
use crate::store::{Entry, MAX_CHUNK, Snapshot, key_after};

/// A page's records as a List found them.
pub(super) enum Rows<R> {
    /// Decoded, each with its sort key.
    Records(Vec<(Vec<order::SortValue>, R)>),
    /// Still encoded (see `list_encoded`).
    Encoded(Vec<EncodedRecord>),
}

/// A page as a List found it, before it is answered.
pub(super) struct Found<R> {
    rows: Rows<R>,
    next_page_token: String,
    revision: u64,
}

/// How many records a scan visits between looks at the caller's deadline.
pub(super) const DEADLINE_CHECK_INTERVAL: u64 = 64;

/// Records a quick List page (`Registry::list_encoded_quick`) may read for
/// each one it holds (and one more, to know whether another page follows).
pub(super) const QUICK_PAGE_READS: usize = 2;

/// The largest quick page: a fraction of a millisecond of work on an async worker. A larger
/// one (up to MAX_PAGE_SIZE) would hold the worker, and every call waiting on
/// it, for milliseconds.
pub(super) const QUICK_PAGE_MAX: usize = 100;

/// A List without a limit on its reads that gave up anyway.
pub(super) fn gave_up() -> Error {
    Error::internal("a List that may read all it needs stopped short")
}

impl Registry {
    pub async fn list<R: Resource>(&self, query: &ListQuery) -> Result<Page<R>> {
        let found = self.list_items::<R>(query, false, None).await?.ok_or_else(gave_up)?;
        let items = match found.rows {
            Rows::Records(rows) => rows.into_iter().map(|(_, record)| record).collect(),
            // (Only a List asked for encoded records is answered that way.)
            Rows::Encoded(_) => return Err(Error::internal("a List of decoded records was answered encoded")),
        };
        Ok(Page { items, next_page_token: found.next_page_token, revision: found.revision })
    }

    /// What [`Registry::list`] answers, its records still encoded. A page in
    /// name order that the indexes answer exactly (or with no filter) is
    /// made of the stored bytes with the etag and derived fields appended,
    /// without decoding a record.
    pub async fn list_encoded<R: Resource>(&self, query: &ListQuery) -> Result<EncodedPage> {
        let found = self.list_items::<R>(query, true, None).await?.ok_or_else(gave_up)?;
        Ok(Self::encoded_page(found))
    }

    /// [`Registry::list_encoded`] when the page takes little work: a filter
    /// the indexes answer exactly (or none), in name order, a page of at most
    /// QUICK_PAGE_MAX records, found among at most twice as many records as
    /// it holds (more are read only where many are soft-deleted). `None`
    /// otherwise, having read at most that many: such a page is for the
    /// caller to run where long work is admitted.
    pub async fn list_encoded_quick<R: Resource>(&self, query: &ListQuery) -> Result<Option<EncodedPage>> {
        Ok(self.list_items::<R>(query, true, Some(QUICK_PAGE_READS)).await?.map(Self::encoded_page))
    }

    pub(super) fn encoded_page<R: Resource>(found: Found<R>) -> EncodedPage {
        let items = match found.rows {
            Rows::Encoded(records) => records,
            Rows::Records(rows) => rows
                .into_iter()
                .map(|(_, record)| EncodedRecord { stored: record.encode_to_vec().into(), appended: Arc::from([]) })
                .collect(),
        };
        Page { items, next_page_token: found.next_page_token, revision: found.revision }
    }

    /// The page a List asks for, encoded if `encoded` and the page allows.
    /// With `quick_reads` (records it may read for each one the page holds),
    /// `None` when the page needs more work than a quick page (see
    /// [`Registry::list_encoded_quick`]).
    pub(super) async fn list_items<R: Resource>(
        &self,
        query: &ListQuery,
        encoded: bool,
        quick_reads: Option<usize>,
    ) -> Result<Option<Found<R>>> {
        let mut violations = Violations::new();
        if query.page_size < 0 {
            violations.add("page_size", format!("must not be negative (got {})", query.page_size));
        }
        let descriptor = R::default().descriptor();
        let filter = Filter::compile(&query.filter, &descriptor).unwrap_or_else(|e| {
            violations.add("filter", e.to_string());
            Filter::everything()
        });
        let order = OrderBy::parse(&query.order_by, &descriptor).unwrap_or_else(|e| {
            violations.add("order_by", e);
            OrderBy::default()
        });
        let as_of = as_of_day(query.as_of.as_ref(), &mut violations);
        violations.into_result()?;
        let size = match query.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let show_deleted: &[u8] = if query.show_deleted { b"deleted" } else { b"live" };
        let as_of_text = dates::display(&as_of);
        let fingerprint = paging::fingerprint(&[
            R::KIND.collection.as_bytes(),
            show_deleted,
            query.filter.as_bytes(),
            query.order_by.as_bytes(),
            as_of_text.as_bytes(),
        ]);
        let bad_token = || Error::invalid("page_token", "is not a page token this server issued");
        let cursor =
            match paging::decode(&query.page_token, fingerprint).map_err(|e| Error::invalid("page_token", e))? {
                Some(bytes) => Some(order::decode_cursor(&bytes, order.key_count()).ok_or_else(bad_token)?),
                None => None,
            };

        // Stored bytes as they are, in name order, and nothing to test but
        // deletion: the one kind of page whose work the page size bounds.
        let answers_exactly = index::answers_exactly(R::KIND, &filter);
        let as_stored = encoded && order.is_by_name() && (filter.matches_everything() || answers_exactly);
        if quick_reads.is_some() && (!as_stored || size > QUICK_PAGE_MAX) {
            return Ok(None);
        }
        // The page shows the store at one revision, which it answers with.
        let snapshot = self.store.snapshot().await?;
        let read_at = snapshot.revision();
        let candidates = match order.is_by_name() {
            true => index::candidates(&*snapshot, R::KIND, &filter, &as_of).await?,
            false => None,
        };
        // Each candidate: derive as of the day, then the deleted check, then the
        // filter (skipped, with its transcoding, when it matches everything).
        let visible = |record: &mut R, revision: u64| -> bool {
            self.present(record, revision, &as_of);
            query.show_deleted || record.delete_time().is_none()
        };
        let mut more = false;
        // A filter the index answers exactly needs no test (nor its transcoding).
        let test_filter = !(filter.matches_everything() || (candidates.is_some() && answers_exactly));
        let after = cursor.as_ref().map(|(_, name)| name.as_str());
        let most_reads = quick_reads.map(|per_record| per_record * (size + 1));
        let mut gave_up = false;
        let (rows, newest, last) = if as_stored && !test_filter {
            // Nothing to test but deletion: the stored bytes as they are,
            // each appended to the response with its derived fields.
            let mut items = Vec::new();
            let mut last = Vec::new();
            let mut reads = 0;
            let scope = Scope::page(&*snapshot, candidates.as_ref(), after, size);
            let newest = self
                .scan_stored::<R>(scope, query.deadline, |name, entry| {
                    reads += 1;
                    if most_reads.is_some_and(|most| reads > most) {
                        gave_up = true;
                        return Ok(false);
                    }
                    let shown = self.shown::<R>(name, &entry.value, entry.mod_revision, &as_of)?;
                    if query.show_deleted || !shown.deleted {
                        if items.len() == size {
                            more = true;
                            return Ok(false);
                        }
                        items.push(EncodedRecord { stored: entry.value, appended: shown.appended });
                        last.clear();
                        last.extend_from_slice(name);
                    }
                    Ok(true)
                })
                .await?;
            let last = match items.len() {
                0 => None,
                _ => Some((Vec::new(), String::from_utf8(last).map_err(Error::internal)?)),
            };
            (Rows::Encoded(items), newest, last)
        } else {
            let mut rows: Vec<(Vec<order::SortValue>, R)> = Vec::new();
            let newest = if order.is_by_name() {
                let scope = Scope::page(&*snapshot, candidates.as_ref(), after, size);
                self.scan::<R>(scope, query.deadline, |mut record, revision| {
                    if visible(&mut record, revision)
                        && (!test_filter || filter.matches(&record.transcode_to_dynamic()))
                    {
                        if rows.len() == size {
                            more = true;
                            return false;
                        }
                        rows.push((Vec::new(), record));
                    }
                    true
                })
                .await?
            } else {
                let (found, newest) = self
                    .ordered_rows::<R>(Ordered {
                        snapshot: &*snapshot,
                        filter: &filter,
                        as_of: &as_of,
                        order: &order,
                        cursor: cursor.as_ref(),
                        size,
                        deadline: query.deadline,
                        visible: &visible,
                    })
                    .await?;
                rows = found;
                more = rows.len() > size;
                rows.truncate(size);
                newest
            };
            let last = rows.last().map(|(values, record)| (values.clone(), record.name().to_string()));
            (Rows::Records(rows), newest, last)
        };
        if gave_up {
            return Ok(None);
        }
        self.store.wait_durable(newest.max(read_at)).await?;
        let next_page_token = match (more, last) {
            (true, Some((values, name))) => paging::encode(fingerprint, &order::encode_cursor(&values, &name)),
            _ => String::new(),
        };
        Ok(Some(Found { rows, next_page_token, revision: read_at }))
    }

    /// Every record of `R` that `filter` matches as of `as_of`, live ones only,
    /// in name order, answered from an index when the filter allows; stops
    /// with DEADLINE_EXCEEDED once `deadline` has passed.
    pub async fn query<R: Resource>(&self, filter: &Filter, as_of: &Date, deadline: Option<Instant>) -> Result<Vec<R>> {
        let snapshot = self.store.snapshot().await?;
        let mut found = Vec::new();
        self.query_each::<R>(&*snapshot, filter, as_of, deadline, |record| {
            found.push(record);
            true
        })
        .await?;
        Ok(found)
    }

    /// [`Registry::query`] in `snapshot`, each record handed to `visit` as it
    /// is found, until `visit` says false: a query of any size in the memory
    /// of one record. Returns whether every match was visited.
    pub(super) async fn query_each<R: Resource>(
        &self,
        snapshot: &dyn Snapshot,
        filter: &Filter,
        as_of: &Date,
        deadline: Option<Instant>,
        mut visit: impl FnMut(R) -> bool,
    ) -> Result<bool> {
        let candidates = index::candidates(snapshot, R::KIND, filter, as_of).await?;
        // A filter the index answers exactly needs no test (nor its transcoding).
        let test_filter =
            !(filter.matches_everything() || (candidates.is_some() && index::answers_exactly(R::KIND, filter)));
        let mut complete = true;
        let scope = Scope::whole(snapshot, candidates.as_ref());
        self.scan::<R>(scope, deadline, |mut record, revision| {
            self.present(&mut record, revision, as_of);
            if record.delete_time().is_some() || (test_filter && !filter.matches(&record.transcode_to_dynamic())) {
                return true;
            }
            complete = visit(record);
            complete
        })
        .await?;
        Ok(complete)
    }

    /// Visits the records of `scope` in name order. Stops when `visit` says
    /// false, and with DEADLINE_EXCEEDED once `deadline` has passed (the
    /// caller has stopped waiting: the rest of the scan would be wasted).
    /// Returns the highest revision visited.
    pub(super) async fn scan<R: Resource>(
        &self,
        scope: Scope<'_>,
        deadline: Option<Instant>,
        mut visit: impl FnMut(R, u64) -> bool,
    ) -> Result<u64> {
        self.scan_stored::<R>(scope, deadline, |_, entry| Ok(visit(decode(&entry.value)?, entry.mod_revision))).await
    }

    /// [`Registry::scan`] with each record's name (its bytes, as the keys hold
    /// them: checking the UTF-8 of each cost a page about as much as reading
    /// its records from the read cache) and stored entry, undecoded.
    pub(super) async fn scan_stored<R: Resource>(
        &self,
        scope: Scope<'_>,
        deadline: Option<Instant>,
        mut visit: impl FnMut(&[u8], Entry) -> Result<bool>,
    ) -> Result<u64> {
        let mut newest = 0;
        let mut visited = 0u64;
        let mut visit = |name: &[u8], entry: Entry| -> Result<bool> {
            visited += 1;
            if visited % DEADLINE_CHECK_INTERVAL == 0 {
                check_deadline(deadline, || {
                    format!(
                        "the call's deadline passed after {visited} records were examined; narrow the filter or allow more time"
                    )
                })?;
            }
            newest = newest.max(entry.mod_revision);
            visit(name, entry)
        };
        let after_id = match scope.after {
            Some(name) => Some(
                R::KIND
                    .parse_name(name)
                    .map_err(|_| Error::invalid("page_token", "is not a page token this server issued"))?,
            ),
            None => None,
        };
        let prefix = collection_key(R::KIND);
        let Some(candidates) = scope.candidates else {
            let start = match after_id {
                Some(id) => key_after(&[prefix.as_slice(), id.as_bytes()].concat()),
                None => Vec::new(),
            };
            crate::store::for_each_entry(scope.snapshot, &prefix, &start, |key, entry| {
                visit(&key[RECORD_PREFIX.len()..], entry)
            })
            .await?;
            return Ok(newest);
        };
        // The candidates' records, a run of ids read in one call, each run
        // twice the last.
        let mut after = after_id.map(|id| id.as_bytes().to_vec());
        let mut run = scope.first_reads.clamp(1, MAX_CHUNK);
        loop {
            let ids = candidates.next_ids(scope.snapshot, after.as_deref(), run).await?;
            // The run's keys end to end in one buffer.
            let mut joined = Vec::with_capacity(ids.len() * (prefix.len() + 24));
            let mut ends = Vec::with_capacity(ids.len());
            for id in ids.iter() {
                if let Some(among) = scope.among
                    && !std::str::from_utf8(id).is_ok_and(|id| among.contains(id))
                {
                    continue;
                }
                joined.extend_from_slice(&prefix);
                joined.extend_from_slice(id);
                ends.push(joined.len());
            }
            let keys: Vec<&[u8]> =
                ends.iter().scan(0, |start, &end| Some(&joined[std::mem::replace(start, end)..end])).collect();
            let entries = scope.snapshot.get_many(&keys).await?;
            for (key, entry) in keys.iter().zip(entries) {
                // (An index entry names a record of the same revision.)
                let Some(entry) = entry else { continue };
                if !visit(&key[RECORD_PREFIX.len()..], entry)? {
                    return Ok(newest);
                }
            }
            match ids.last() {
                Some(last) if ids.len() == run => after = Some(last.to_vec()),
                _ => return Ok(newest),
            }
            run = (run * 2).min(MAX_CHUNK);
        }
    }
}

/// The records a scan visits: those of `candidates` (all of the kind
/// without), after the name `after`, as `snapshot` shows them; it reads
/// `first_reads` of them at first (a page and one more, say).
pub(super) struct Scope<'a> {
    pub snapshot: &'a dyn Snapshot,
    pub candidates: Option<&'a index::Candidates>,
    pub after: Option<&'a str>,
    pub first_reads: usize,
    /// Only the candidates among these ids (tested before the record is read).
    pub among: Option<&'a std::collections::BTreeSet<String>>,
}

impl<'a> Scope<'a> {
    /// A page's records after `after`: read `size` and one more at first.
    pub fn page(
        snapshot: &'a dyn Snapshot,
        candidates: Option<&'a index::Candidates>,
        after: Option<&'a str>,
        size: usize,
    ) -> Scope<'a> {
        Scope { snapshot, candidates, after, first_reads: size + 1, among: None }
    }

    /// Every record of `candidates` (all of the kind without), read in
    /// chunks as large as the store reads at once: a scan that reads all.
    pub fn whole(snapshot: &'a dyn Snapshot, candidates: Option<&'a index::Candidates>) -> Scope<'a> {
        Scope { snapshot, candidates, after: None, first_reads: MAX_CHUNK, among: None }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use prost_reflect::ReflectMessage;

    use super::super::resource;
    use super::super::testing::{anonymous, india_japan};
    use super::*;
    use crate::pb::cooperation::v1::Agreement;
    use crate::registry::changes::WatchQuery;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

    /// Several indexed conditions find only what every one of them finds:
    /// India and Japan are the agreements both parties' sets hold, not all
    /// of India's; two bounds on one date are one range, not everything after
    /// the one and everything before the other.
    #[tokio::test]
    async fn indexed_conditions_together_find_only_the_ids_each_finds() {
        let store = Arc::new(MemoryStore::new());
        let registry = Registry::open(store.clone()).await.unwrap();
        let mut ids = Vec::new();
        for (parties, year) in [("aus", 2019), ("aus", 2020), ("aus", 2021), ("jpn", 2020), ("jpn", 2022)] {
            let agreement = Agreement {
                parties: vec!["parties/ind".into(), format!("parties/{parties}")],
                signature_date: Some(dates::date(year, 6, 1)),
                ..india_japan()
            };
            let created = registry.create("", agreement, &anonymous("CreateAgreement")).await.unwrap();
            ids.push(created.name.trim_start_matches("agreements/").to_string());
        }
        let descriptor = Agreement::default().descriptor();
        for (filter, expected) in [
            (r#"parties:"parties/ind" AND parties:"parties/jpn""#, [3, 4].as_slice()),
            ("signature_date >= 2020-01-01 AND signature_date < 2021-01-01", &[1, 3]),
            (r#"parties:"parties/jpn" AND signature_date > 2020 AND parties:"parties/ind""#, &[4]),
            (r#"parties:"parties/jpn" AND signature_date <= 2019"#, &[]),
        ] {
            let expected: BTreeSet<String> = expected.iter().map(|&i| ids[i].clone()).collect();
            let compiled = Filter::compile(filter, &descriptor).unwrap();
            let snapshot = store.snapshot().await.unwrap();
            match index::candidates(&*snapshot, &resource::AGREEMENT, &compiled, &dates::date(2025, 1, 1))
                .await
                .unwrap()
            {
                Some(index::Candidates::Ids(found)) => assert_eq!(found, expected, "{filter}"),
                other => panic!("{filter}: {other:?}"),
            }
            let query = ListQuery { filter: filter.into(), ..Default::default() };
            let listed = registry.list::<Agreement>(&query).await.unwrap().items;
            let listed: BTreeSet<String> =
                listed.iter().map(|a| a.name.trim_start_matches("agreements/").to_string()).collect();
            assert_eq!(listed, expected, "{filter}: the page");
        }
    }

    /// A List page shows exactly the store at the revision it answers with,
    /// while another registry on the same store writes: each record as its
    /// history has it at that revision, none created after it; and the
    /// changes a watch brings from the next revision on turn the first page
    /// into the last.
    async fn pages_agree_with_their_revision(store: Arc<dyn Store>) {
        let reader = Arc::new(Registry::open(store.clone()).await.unwrap());
        let writer = Arc::new(Registry::open(store.clone()).await.unwrap());
        let mutation = anonymous("CreateAgreement");
        let titled = |title: String| Agreement { title, ..india_japan() };
        for i in 0..20 {
            writer.create(&format!("a{i:02}"), titled(format!("a{i:02}, first")), &mutation).await.unwrap();
        }
        let writing = {
            let writer = writer.clone();
            tokio::spawn(async move {
                let update = anonymous("UpdateAgreement");
                for round in 0..8 {
                    for i in 0..20 {
                        let changed = Agreement {
                            name: format!("agreements/a{i:02}"),
                            title: format!("a{i:02}, round {round}"),
                            ..Default::default()
                        };
                        writer.update(changed, &["title".to_string()], "", &update).await.unwrap();
                    }
                    let created = titled(format!("b{round}"));
                    writer.create(&format!("b{round}"), created, &anonymous("CreateAgreement")).await.unwrap();
                }
            })
        };
        let everything = ListQuery { page_size: 1000, ..Default::default() };
        let first = reader.list::<Agreement>(&everything).await.unwrap();
        let watch = WatchQuery {
            start_revision: first.revision as i64 + 1,
            resource_types: vec!["agreements".into()],
            names: Vec::new(),
            progress_interval: Some(std::time::Duration::from_secs(3600)),
        };
        let mut changes = reader.watch(watch).await.unwrap();
        let mut pages = vec![first.clone()];
        while !writing.is_finished() {
            pages.push(reader.list::<Agreement>(&everything).await.unwrap());
            tokio::task::yield_now().await;
        }
        writing.await.unwrap();
        let last = reader.list::<Agreement>(&everything).await.unwrap();
        pages.push(last.clone());
        assert!(pages.len() > 2, "pages were read while the writes went on");

        // Each name's revisions, oldest first.
        let mut history: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for record in &last.items {
            let (revisions, _, _) = reader.list_revisions(&record.name, 1000, "").await.unwrap();
            history.insert(record.name.clone(), revisions.iter().rev().map(|c| c.revision as u64).collect());
        }
        for page in &pages {
            let shown: BTreeMap<&str, u64> =
                page.items.iter().map(|r| (r.name.as_str(), r.etag.parse().unwrap())).collect();
            let expected: BTreeMap<&str, u64> = history
                .iter()
                .filter_map(|(name, revisions)| {
                    revisions.iter().rev().find(|r| **r <= page.revision).map(|r| (name.as_str(), *r))
                })
                .collect();
            assert_eq!(shown, expected, "the page at revision {}", page.revision);
        }

        // The first page and the changes after it make the last page.
        let mut state: BTreeMap<String, (u64, String)> =
            first.items.iter().map(|r| (r.name.clone(), (r.etag.parse().unwrap(), r.title.clone()))).collect();
        let mut at = first.revision;
        while at < last.revision {
            let response = tokio::time::timeout(std::time::Duration::from_secs(5), changes.recv());
            let response = response.await.unwrap().unwrap().unwrap();
            for change in response.changes {
                let Some(crate::pb::cooperation::v1::change::Record::Agreement(record)) = change.record else {
                    panic!("{change:?}")
                };
                state.insert(change.name, (change.revision as u64, record.title));
            }
            at = response.revision as u64;
        }
        let expected: BTreeMap<String, (u64, String)> =
            last.items.iter().map(|r| (r.name.clone(), (r.etag.parse().unwrap(), r.title.clone()))).collect();
        assert_eq!(state, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_agree_with_their_revision_on_the_memory_engine() {
        pages_agree_with_their_revision(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_agree_with_their_revision_on_the_sled_engine() {
        use crate::store::sled::{Durability, SledOptions, SledStore};
        let dir = tempfile::tempdir().unwrap();
        let options = SledOptions { durability: Durability::None, ..SledOptions::default() };
        pages_agree_with_their_revision(Arc::new(SledStore::open(dir.path(), options).unwrap())).await;
    }
}
