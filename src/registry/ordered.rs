//! A List page in an order other than by name: walked along the ordered
//! index of its first key, a page's worth read; or, where few records can
//! match, all of them read and a page's worth kept; and refused where
//! neither bounds the work.

use std::time::Instant;

use super::filter::Filter;
use super::index::{self, Candidates};
use super::lists::Scope;
use super::order::{self, OrderBy, SortValue};
use super::resource::Resource;
use super::{Registry, check_deadline};
use crate::error::{Error, Result};
use crate::pb::google::r#type::Date;
use crate::store::Snapshot;

/// Most records a page in an order no index serves may be sorted from: a
/// filter that may match more, on a collection that holds more, is refused.
pub const MOST_SORTED: usize = 10_000;

/// Records that may match a filter, at most, for a page ordered along an
/// index to be sorted from them rather than walked: reading a few thousand
/// records costs less than walking an index past many that do not match.
const SORTED_RATHER_THAN_WALKED: usize = 2_000;

/// A page's rows: each record with its sort key.
pub(super) type Rows<R> = Vec<(Vec<SortValue>, R)>;

/// What a page in an order other than by name needs.
pub(super) struct Ordered<'a, V> {
    pub snapshot: &'a dyn Snapshot,
    pub filter: &'a Filter,
    /// The day derived fields are derived as of.
    pub as_of: &'a Date,
    pub order: &'a OrderBy,
    /// Where the last page ended: its last row's sort key and name.
    pub cursor: Option<&'a (Vec<SortValue>, String)>,
    pub size: usize,
    pub deadline: Option<Instant>,
    /// Derives a record's fields and says whether the page shows it.
    pub visible: &'a V,
}

impl Registry {
    /// Up to `size + 1` rows after the cursor, in order, and the highest
    /// revision read.
    pub(super) async fn ordered_rows<R: Resource>(
        &self,
        page: Ordered<'_, impl Fn(&mut R, u64) -> bool>,
    ) -> Result<(Rows<R>, u64)> {
        let kind = R::KIND;
        let walked = page.order.first_key().and_then(|(path, _)| index::ordered_index(kind, path));
        let candidates = match &walked {
            Some(walked) => walked.other_candidates(page.snapshot, kind, page.filter, page.as_of).await?,
            None => index::candidates(page.snapshot, kind, page.filter, page.as_of).await?,
        };
        let few = match &candidates {
            Some(candidates) => {
                let most = if walked.is_some() { SORTED_RATHER_THAN_WALKED } else { MOST_SORTED };
                candidates.count_within(page.snapshot, most).await?.is_some()
            }
            None => walked.is_none() && index::count_within(page.snapshot, kind, MOST_SORTED).await?.is_some(),
        };
        match walked {
            Some(walked) if !few => self.walk_rows(page, &walked, candidates.as_ref()).await,
            _ if few || candidates.is_none() && walked.is_some() => self.sorted_rows(page, candidates.as_ref()).await,
            _ => Err(Error::invalid(
                "order_by",
                format!(
                    "the first key has no index to order by, and the filter may match more than {MOST_SORTED} {}: \
                     order by one of {} first, or narrow the filter",
                    kind.collection,
                    kind.ordered.join(", ")
                ),
            )),
        }
    }

    /// Rows read along the ordered index of the first key, value by value,
    /// until a page and one more are found: within one value ids come in
    /// name order, which is the page's order when the first key is the only
    /// one; with more keys, each value's rows are sorted by the others.
    async fn walk_rows<R: Resource>(
        &self,
        page: Ordered<'_, impl Fn(&mut R, u64) -> bool>,
        walked: &index::OrderedIndex,
        candidates: Option<&Candidates>,
    ) -> Result<(Rows<R>, u64)> {
        let (_, descending) = page.order.first_key().expect("an order walked along an index has a first key");
        let by_first_alone = page.order.key_count() == 1;
        let from = page.cursor.map(|(values, _)| &values[0]);
        let cursor_set = from.and_then(|value| walked.set_of(value));
        let among = match candidates {
            Some(Candidates::Ids(ids)) => Some(ids),
            _ => None,
        };
        let mut walk = walked.walk(R::KIND, page.filter, descending, from);
        let mut rows: Rows<R> = Vec::new();
        let mut newest = 0;
        let mut values_walked = 0u64;
        while let Some(set) = walk.next_set(page.snapshot).await? {
            values_walked += 1;
            check_deadline(page.deadline, || {
                format!(
                    "the call's deadline passed after {values_walked} values of {} were walked; narrow the filter or allow more time",
                    R::KIND.collection
                )
            })?;
            // Within the cursor's own value, resume after its record.
            let after = match (page.cursor, by_first_alone) {
                (Some((_, name)), true) if cursor_set.as_ref() == Some(&set) => Some(name.as_str()),
                _ => None,
            };
            let ids = Candidates::set(set);
            let scope =
                Scope { snapshot: page.snapshot, candidates: Some(&ids), after, first_reads: page.size + 1, among };
            let mut found: Rows<R> = Vec::new();
            let wanted = page.size + 1 - rows.len();
            let read = self
                .scan::<R>(scope, page.deadline, |mut record, revision| {
                    if let Some(row) = page.row(&mut record, revision) {
                        found.push((row, record));
                    }
                    !(by_first_alone && found.len() >= wanted)
                })
                .await?;
            newest = newest.max(read);
            if !by_first_alone {
                found.sort_by(|a, b| page.order.compare((&a.0, a.1.name()), (&b.0, b.1.name())));
            }
            rows.extend(found);
            if rows.len() > page.size {
                break;
            }
        }
        Ok((rows, newest))
    }

    /// Rows of every candidate (every record without), a page's worth (and
    /// one to tell whether there are more) after the cursor kept.
    async fn sorted_rows<R: Resource>(
        &self,
        page: Ordered<'_, impl Fn(&mut R, u64) -> bool>,
        candidates: Option<&Candidates>,
    ) -> Result<(Rows<R>, u64)> {
        let order = page.order;
        let mut best = order::Best::new(page.size + 1, |a: &(Vec<SortValue>, R), b: &(_, R)| {
            order.compare((&a.0, a.1.name()), (&b.0, b.1.name()))
        });
        let scope = Scope::whole(page.snapshot, candidates);
        let newest = self
            .scan::<R>(scope, page.deadline, |mut record, revision| {
                if let Some(row) = page.row(&mut record, revision) {
                    best.offer((row, record));
                }
                true
            })
            .await?;
        Ok((best.into_sorted(), newest))
    }
}

impl<V> Ordered<'_, V> {
    /// A record's sort key, if the page shows it after the cursor.
    fn row<R: Resource>(&self, record: &mut R, revision: u64) -> Option<Vec<SortValue>>
    where
        V: Fn(&mut R, u64) -> bool,
    {
        if !(self.visible)(record, revision) {
            return None;
        }
        let dynamic = record.transcode_to_dynamic();
        if !self.filter.matches(&dynamic) {
            return None;
        }
        let values = self.order.sort_key(&dynamic);
        let after_cursor = self.cursor.is_none_or(|(at_values, at_name)| {
            self.order.compare((&values, record.name()), (at_values, at_name)).is_gt()
        });
        after_cursor.then_some(values)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testing::{anonymous, india_japan};
    use super::*;
    use crate::pb::cooperation::v1::{Agreement, agreement};
    use crate::registry::ListQuery;
    use crate::store::memory::MemoryStore;

    /// Beyond MOST_SORTED records, an order whose first key has no index is
    /// refused, naming the keys that have one, unless the filter's indexed
    /// conditions leave no more than that to sort; an order along an index
    /// is served at any size.
    #[tokio::test]
    async fn an_order_no_index_serves_is_refused_beyond_the_records_it_may_sort() {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let create = anonymous("CreateAgreement");
        let list = |filter: &str, order_by: &str| ListQuery {
            filter: filter.into(),
            order_by: order_by.into(),
            page_size: 3,
            ..Default::default()
        };
        for i in 0..MOST_SORTED {
            let record = Agreement {
                title: format!("Agreement {i:05}"),
                term: Some(agreement::Term { years: (i % 50) as i32 + 1, ..Default::default() }),
                labels: [("batch".to_string(), (i % 1000).to_string())].into(),
                ..india_japan()
            };
            registry.create(&format!("a{i:05}"), record, &create).await.unwrap();
        }
        // At the limit, sorted.
        let page = registry.list::<Agreement>(&list("", "term.years desc")).await.unwrap();
        let names: Vec<&str> = page.items.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["agreements/a00049", "agreements/a00099", "agreements/a00149"]);

        registry.create("over", india_japan(), &create).await.unwrap();
        let err = registry.list::<Agreement>(&list("", "term.years desc")).await.unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        for named in ["order_by", "10000", "title, signature_date, entry_into_force_date, end.date"] {
            assert!(status.message().contains(named), "{named}: {}", status.message());
        }
        // A filter no index answers leaves every record to sort: refused too.
        assert!(registry.list::<Agreement>(&list("term.years > 40", "term.years")).await.is_err());
        // Indexed conditions that leave few records: sorted.
        let page = registry.list::<Agreement>(&list(r#"labels.batch = "7""#, "term.years desc, title")).await.unwrap();
        let names: Vec<&str> = page.items.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["agreements/a00007", "agreements/a01007", "agreements/a02007"]);
        // Along an index: any size.
        let page = registry.list::<Agreement>(&list("term.years > 40", "title desc")).await.unwrap();
        let names: Vec<&str> = page.items.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["agreements/a09999", "agreements/a09998", "agreements/a09997"]);
    }
}
