//! `cooperation-registry import FILE --server ADDR`: loads a dataset (proto3 JSON
//! of `cooperation.v1.Dataset`) into a running server through its public API.
//!
//! Records are created parties first, then partnership domains, agreements and
//! engagements, in BatchCreate calls, two in flight. A reference to a record
//! of the dataset that is not created yet (a domain naming an agreement that
//! names the domain) is left out of the create and set by an Update once
//! everything exists. The file is read as a stream (`dataset_file`): once for
//! the records' names, then one list at a time while its batches are sent.
//!
//! A record that exists already is compared with the file's: the same but for
//! the fields the server sets (etag, times, derived status) counts as already
//! there, so an export of one registry (which holds the ISO 3166-1 states
//! every registry starts with) loads into another, and an import cut short
//! can be run again. One that differs stops the import, or is left as it is
//! with `--skip-existing`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use clap::Args;
use tower::BoxError;

use prost_reflect::{DynamicMessage, ReflectMessage};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cli::client::{BearerToken, ClientArgs};
use crate::cli::dataset_file;
use crate::error::Violations;
use crate::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use crate::pb::cooperation::v1::engagement_service_client::EngagementServiceClient;
use crate::pb::cooperation::v1::partnership_domain_service_client::PartnershipDomainServiceClient;
use crate::pb::cooperation::v1::party_service_client::PartyServiceClient;
use crate::pb::cooperation::v1::{self as v1, Dataset};
use crate::registry::Resource;
use crate::registry::validate;

/// Records an import sends in one BatchCreate: the most a batch takes.
const BATCH_SIZE: usize = crate::registry::MAX_BATCH;
/// Encoded bytes after which a batch is sent with fewer records: half the
/// request size a server takes by default (4 MiB), and an answer of about
/// that size fits what a client takes by default.
const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Parses a dataset file, naming the place of the first error.
pub fn parse_dataset(text: &str) -> Result<Dataset, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(Dataset::default().descriptor(), &mut deserializer)
        .map_err(|e| format!("not a cooperation.v1.Dataset in proto3 JSON: {e}"))?;
    deserializer.end().map_err(|e| format!("trailing data after the dataset: {e}"))?;
    message.transcode_to().map_err(|e| e.to_string())
}

/// How many records an import created, found already there, skipped and
/// updated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub created: usize,
    /// Records that existed as the file has them (output-only fields aside).
    pub unchanged: usize,
    /// Records that existed with other contents, left as they are
    /// (`--skip-existing`).
    pub skipped: usize,
    /// Records updated with the references that pointed forward.
    pub linked: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The dataset file: proto3 JSON of cooperation.v1.Dataset (see examples/).
    pub file: PathBuf,
    /// Leave records that exist with other contents as they are, instead of
    /// stopping (a record that exists as the file has it counts as already
    /// there, with or without this flag).
    #[arg(long)]
    pub skip_existing: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: &ImportArgs) -> Result<(), BoxError> {
    let (channel, token) = args.client.connect().await?;
    let report = import_file(channel, &args.file, args.skip_existing, token).await?;
    println!(
        "imported {}: {} records created, {} already there, {} skipped as existing with other contents, \
         {} forward references set",
        args.file.display(),
        report.created,
        report.unchanged,
        report.skipped,
        report.linked
    );
    Ok(())
}

/// Creates every record of `dataset` on the server behind `channel`.
pub async fn import(channel: Channel, dataset: Dataset, skip_existing: bool) -> Result<ImportReport, String> {
    import_with_token(channel, dataset, skip_existing, None).await
}

type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

/// `import` with a bearer token.
pub async fn import_with_token(
    channel: Channel,
    dataset: Dataset,
    skip_existing: bool,
    token: Option<String>,
) -> Result<ImportReport, String> {
    let mut names: HashSet<String> = HashSet::new();
    names.extend(dataset.parties.iter().map(|r| r.name.clone()));
    names.extend(dataset.partnership_domains.iter().map(|r| r.name.clone()));
    names.extend(dataset.agreements.iter().map(|r| r.name.clone()));
    names.extend(dataset.engagements.iter().map(|r| r.name.clone()));
    import_from(channel, names, Source::Held(dataset), skip_existing, token).await
}

/// Creates every record of the dataset file at `path`, read as it is sent.
pub async fn import_file(
    channel: Channel,
    path: &Path,
    skip_existing: bool,
    token: Option<String>,
) -> Result<ImportReport, String> {
    let file = path.to_owned();
    let names = tokio::task::spawn_blocking(move || dataset_file::record_names(&file))
        .await
        .map_err(|e| format!("reading {}: {e}", path.display()))??;
    import_from(channel, names, Source::File(path.to_owned()), skip_existing, token).await
}

/// Where the records come from.
enum Source {
    Held(Dataset),
    File(PathBuf),
}

impl Source {
    /// The records of the list `field` (its proto name), taken from the
    /// dataset or read from the file as they are needed.
    fn records<R: Resource>(&mut self, field: &'static str, held: impl FnOnce(&mut Dataset) -> Vec<R>) -> Records<R> {
        match self {
            Source::Held(dataset) => Records::Held(held(dataset).into_iter()),
            Source::File(path) => Records::read(path, field),
        }
    }
}

/// Records of one kind, in the dataset's order.
enum Records<R> {
    Held(std::vec::IntoIter<R>),
    /// From a thread reading the file, a little ahead of the batches.
    Read(tokio::sync::mpsc::Receiver<Result<R, String>>),
}

impl<R: Resource> Records<R> {
    fn read(path: &Path, field: &'static str) -> Records<R> {
        let (sender, receiver) = tokio::sync::mpsc::channel(2 * BATCH_SIZE);
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut failed = None;
            let read = dataset_file::for_each_record(&path, field, &mut |record| match record.transcode_to::<R>() {
                Ok(record) => sender.blocking_send(Ok(record)).is_ok(),
                Err(e) => {
                    failed = Some(format!("{}: a record of {field}: {e}", path.display()));
                    false
                }
            });
            if let Some(error) = read.err().or(failed) {
                let _ = sender.blocking_send(Err(error));
            }
        });
        Records::Read(receiver)
    }

    async fn next(&mut self) -> Result<Option<R>, String> {
        match self {
            Records::Held(records) => Ok(records.next()),
            Records::Read(receiver) => receiver.recv().await.transpose(),
        }
    }
}

async fn import_from(
    channel: Channel,
    names: HashSet<String>,
    mut source: Source,
    skip_existing: bool,
    token: Option<String>,
) -> Result<ImportReport, String> {
    let interceptor = BearerToken::new(token)?;
    let mut importer = Importer {
        names,
        created: HashSet::new(),
        left: HashSet::new(),
        report: ImportReport::default(),
        skip_existing,
        batch_size: BATCH_SIZE,
    };

    let mut parties = PartyServiceClient::with_interceptor(channel.clone(), interceptor.clone());
    let mut domains = PartnershipDomainServiceClient::with_interceptor(channel.clone(), interceptor.clone());
    let mut agreements = AgreementServiceClient::with_interceptor(channel.clone(), interceptor.clone());
    let mut engagements = EngagementServiceClient::with_interceptor(channel, interceptor);
    let records = source.records("parties", |d| std::mem::take(&mut d.parties));
    let deferred_parties = importer.create_all(&parties, records).await?;
    let records = source.records("partnership_domains", |d| std::mem::take(&mut d.partnership_domains));
    let deferred_domains = importer.create_all(&domains, records).await?;
    let records = source.records("agreements", |d| std::mem::take(&mut d.agreements));
    let deferred_agreements = importer.create_all(&agreements, records).await?;
    let records = source.records("engagements", |d| std::mem::take(&mut d.engagements));
    let deferred_engagements = importer.create_all(&engagements, records).await?;
    importer.link_all(&mut parties, deferred_parties).await?;
    importer.link_all(&mut domains, deferred_domains).await?;
    importer.link_all(&mut agreements, deferred_agreements).await?;
    importer.link_all(&mut engagements, deferred_engagements).await?;
    Ok(importer.report)
}

struct Importer {
    /// Every record name in the dataset.
    names: HashSet<String>,
    created: HashSet<String>,
    /// Records that existed already, left as they are (the same as the
    /// file's, or skipped): their references are not set again.
    left: HashSet<String>,
    report: ImportReport,
    skip_existing: bool,
    /// Records sent in one BatchCreate.
    batch_size: usize,
}

/// Whether a refused batch holds more records than the store takes in one write.
fn too_many(status: &Status) -> bool {
    use tonic_types::StatusExt;
    status.get_error_details().bad_request().is_some_and(|bad| {
        bad.field_violations.iter().any(|v| v.field == "requests" && v.description.contains("send fewer requests"))
    })
}

/// A record created without some fields, and those fields.
struct Deferred<R> {
    record: R,
    fields: Vec<String>,
}

impl Importer {
    /// Creates `records` in batches (BatchCreate), two in flight, each record
    /// without the fields that name a dataset record not created before its
    /// batch was sent (nor in it): those are returned, to be set once
    /// everything exists.
    async fn create_all<R: Resource, C: Target<R>>(
        &mut self,
        client: &C,
        mut records: Records<R>,
    ) -> Result<Vec<Deferred<R>>, String> {
        let mut deferred = Vec::new();
        let mut in_flight: Option<Sent<R>> = None;
        loop {
            let mut batch = Vec::with_capacity(self.batch_size);
            let mut bytes = 0;
            while batch.len() < self.batch_size && bytes < BATCH_BYTES {
                match records.next().await? {
                    Some(record) => {
                        let record = without_output_only(record)?;
                        bytes += record.encoded_len();
                        batch.push(record);
                    }
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let in_batch: HashSet<&str> = batch.iter().map(|record| record.name()).collect();
            let mut items = Vec::with_capacity(batch.len());
            let mut later = Vec::new();
            for record in &batch {
                let name = record.name().to_string();
                let id = R::KIND.parse_name(&name).map_err(|e| format!("record name: {e}"))?.to_string();
                // Top-level fields that name a dataset record created later.
                let references =
                    validate::check_encoded(&record.encode_to_vec(), &record.descriptor(), "", &mut Violations::new())
                        .map_err(|e| format!("{name}: {e}"))?;
                let mut fields: Vec<String> = references
                    .iter()
                    .filter(|r| {
                        self.names.contains(&r.name)
                            && !self.created.contains(&r.name)
                            && !in_batch.contains(r.name.as_str())
                    })
                    .map(|r| r.field.split(['.', '[']).next().unwrap_or_default().to_string())
                    .collect();
                fields.sort();
                fields.dedup();
                let item = match fields.is_empty() {
                    true => Item { id, sent: record.clone(), whole: None },
                    false => {
                        let mut first = record.transcode_to_dynamic();
                        for field in &fields {
                            first.clear_field_by_name(field);
                        }
                        later.push(Deferred { record: record.clone(), fields });
                        let sent = first.transcode_to().map_err(|e| e.to_string())?;
                        Item { id, sent, whole: Some(record.clone()) }
                    }
                };
                items.push(item);
            }
            let names = batch.iter().map(|record| record.name().to_string()).collect();
            let sending = tokio::spawn(send_batch(client.clone(), items, self.skip_existing));
            if let Some(sent) = in_flight.replace(Sent { sending, names, later }) {
                self.finish(sent, &mut deferred).await?;
            }
        }
        if let Some(sent) = in_flight.take() {
            self.finish(sent, &mut deferred).await?;
        }
        Ok(deferred)
    }

    /// Waits for a batch sent, and counts it.
    async fn finish<R: Resource>(&mut self, sent: Sent<R>, deferred: &mut Vec<Deferred<R>>) -> Result<(), String> {
        let outcome = sent.sending.await.map_err(|e| format!("sending a batch: {e}"))??;
        self.report.created += outcome.created;
        if let Some(fitted) = outcome.fitted {
            self.batch_size = self.batch_size.min(fitted.max(1));
        }
        self.report.skipped += outcome.skipped.len();
        self.report.unchanged += outcome.unchanged.len() + outcome.unlinked.len();
        self.left.extend(outcome.skipped);
        self.left.extend(outcome.unchanged);
        deferred.extend(sent.later.into_iter().filter(|d| !self.left.contains(d.record.name())));
        self.created.extend(sent.names);
        Ok(())
    }

    async fn link_all<R: Resource, C: Target<R>>(
        &mut self,
        client: &mut C,
        deferred: Vec<Deferred<R>>,
    ) -> Result<(), String> {
        for Deferred { record, fields } in deferred {
            let name = record.name().to_string();
            if self.left.contains(&name) {
                continue;
            }
            client.update(record, fields).await.map_err(|status| format!("linking {name}: {}", describe(&status)))?;
            self.report.linked += 1;
        }
        Ok(())
    }
}

/// A batch on its way, with what to do once it is in.
struct Sent<R> {
    sending: tokio::task::JoinHandle<Result<BatchOutcome, String>>,
    names: Vec<String>,
    /// Its records' fields left for later.
    later: Vec<Deferred<R>>,
}

/// A record to create: as it is sent, and as the file has it when the
/// references created later are left out of what is sent.
#[derive(Clone)]
struct Item<R> {
    id: String,
    sent: R,
    whole: Option<R>,
}

impl<R> Item<R> {
    /// The record as the file has it.
    fn whole(&self) -> &R {
        self.whole.as_ref().unwrap_or(&self.sent)
    }
}

/// What became of a batch's records.
#[derive(Default)]
struct BatchOutcome {
    created: usize,
    /// The most records one write took, when the store refused the batch
    /// whole: the size to send from then on.
    fitted: Option<usize>,
    /// Names that existed already with other contents (`--skip-existing`).
    skipped: Vec<String>,
    /// Names that existed already as the file has them.
    unchanged: Vec<String>,
    /// Names that existed already as this import creates them, without the
    /// references it sets once everything exists: left by an earlier run cut
    /// short before it set them. Those are still set.
    unlinked: Vec<String>,
}

impl BatchOutcome {
    fn add(&mut self, other: BatchOutcome) {
        self.created += other.created;
        self.skipped.extend(other.skipped);
        self.unchanged.extend(other.unchanged);
        self.unlinked.extend(other.unlinked);
    }
}

/// Creates one batch; split in two when the store takes fewer records in one
/// write. When some of its records exist, each is compared with the file's
/// (see `settle`) and the others are sent again.
fn send_batch<R: Resource, C: Target<R>>(
    mut client: C,
    items: Vec<Item<R>>,
    skip_existing: bool,
) -> crate::store::BoxFuture<'static, Result<BatchOutcome, String>> {
    Box::pin(async move {
        let count = items.len();
        let sent = items.iter().map(|item| (item.id.clone(), item.sent.clone())).collect();
        match client.create_batch(sent).await {
            Ok(()) => Ok(BatchOutcome { created: count, ..Default::default() }),
            Err(status) if status.code() == Code::InvalidArgument && count > 1 && too_many(&status) => {
                let mut first = items;
                let second = first.split_off(count / 2);
                let first_size = first.len();
                let mut outcome = send_batch(client.clone(), first, skip_existing).await?;
                let b = send_batch(client, second, skip_existing).await?;
                outcome.fitted =
                    [outcome.fitted.unwrap_or(first_size), b.fitted.unwrap_or(first_size)].into_iter().min();
                outcome.add(b);
                Ok(outcome)
            }
            Err(status) if status.code() == Code::AlreadyExists => settle(client, items, skip_existing, status).await,
            Err(status) => Err(format!("creating {}: {}", R::KIND.collection, describe(&status))),
        }
    })
}

/// A batch some of whose records exist (`refused` said so): each that exists
/// is left as it is if it is the same as the file's (output-only fields
/// aside), or as this import creates it (its forward references are then
/// set as usual), or with `skip_existing`, and stops the import otherwise;
/// the rest are sent again.
async fn settle<R: Resource, C: Target<R>>(
    mut client: C,
    items: Vec<Item<R>>,
    skip_existing: bool,
    refused: Status,
) -> Result<BatchOutcome, String> {
    let mut outcome = BatchOutcome::default();
    let mut missing = Vec::new();
    let count = items.len();
    for item in items {
        let name = item.whole().name().to_string();
        let existing =
            client.get(name.clone()).await.map_err(|status| format!("reading {name}: {}", describe(&status)))?;
        let Some(existing) = existing else {
            missing.push(item);
            continue;
        };
        match difference(&existing, item.whole())? {
            None => outcome.unchanged.push(name),
            Some(_) if item.whole.is_some() && difference(&existing, &item.sent)?.is_none() => {
                outcome.unlinked.push(name)
            }
            Some(_) if skip_existing => outcome.skipped.push(name),
            Some(difference) => {
                return Err(format!(
                    "creating {name}: it already exists, {difference} (pass --skip-existing to leave existing \
                     records as they are)"
                ));
            }
        }
    }
    if missing.len() == count {
        // None exists now: what was refused is not for this step to settle.
        return Err(format!("creating {}: {}", R::KIND.collection, describe(&refused)));
    }
    if !missing.is_empty() {
        let rest = send_batch(client, missing, skip_existing).await?;
        outcome.fitted = rest.fitted;
        outcome.add(rest);
    }
    Ok(outcome)
}

/// `record` without the fields the server sets (etag, times, an agreement's
/// status), which a file may hold (an export's do) and an import ignores: an
/// etag of the registry the file came from would fail the Update that sets
/// a reference that pointed forward.
fn without_output_only<R: Resource>(record: R) -> Result<R, String> {
    let encoded = record.encode_to_vec();
    let stripped =
        validate::strip_output_only(&encoded, &record.descriptor()).map_err(|e| format!("{}: {e}", record.name()))?;
    match stripped.len() == encoded.len() {
        true => Ok(record),
        false => R::decode(stripped.as_slice()).map_err(|e| format!("{}: {e}", record.name())),
    }
}

/// How the stored `existing` differs from `wanted` as a create would store
/// it (defaults filled in), output-only fields aside; `None` when it does not.
fn difference<R: Resource>(existing: &R, wanted: &R) -> Result<Option<String>, String> {
    if existing.delete_time().is_some() {
        return Ok(Some("soft-deleted".to_string()));
    }
    let mut wanted = wanted.clone();
    wanted.normalize();
    let comparable = |record: &R| -> Result<DynamicMessage, String> {
        let descriptor = record.descriptor();
        let stripped = validate::strip_output_only(&record.encode_to_vec(), &descriptor)
            .map_err(|e| format!("{}: {e}", record.name()))?;
        DynamicMessage::decode(descriptor, stripped.as_slice()).map_err(|e| format!("{}: {e}", record.name()))
    };
    let (existing, wanted) = (comparable(existing)?, comparable(&wanted)?);
    let fields: Vec<String> = existing
        .descriptor()
        .fields()
        .filter(|field| existing.get_field(field) != wanted.get_field(field))
        .map(|field| field.name().to_string())
        .collect();
    Ok(match fields.is_empty() {
        true => None,
        false => Some(format!("with other values of {}", fields.join(", "))),
    })
}

/// A status with its field violations, for the person running the import.
fn describe(status: &Status) -> String {
    use tonic_types::StatusExt;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_error_details().bad_request() {
        for v in &bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    text
}

/// Get, Create and Update of one kind through its generated client.
#[tonic::async_trait]
trait Target<R>: Clone + Send + 'static {
    /// The record named `name`, soft-deleted or not; `None` if there is none.
    async fn get(&mut self, name: String) -> Result<Option<R>, Status>;
    /// Creates all of `items` (id, record) or none.
    async fn create_batch(&mut self, items: Vec<(String, R)>) -> Result<(), Status>;
    async fn update(&mut self, record: R, paths: Vec<String>) -> Result<(), Status>;
}

macro_rules! target {
    ($client:ident, $resource:ident, $get:ident, $get_req:ident, $batch:ident, $batch_req:ident, $create_req:ident { $field:ident, $id:ident }, $update:ident, $update_req:ident) => {
        #[tonic::async_trait]
        impl Target<v1::$resource> for $client<AuthChannel> {
            async fn get(&mut self, name: String) -> Result<Option<v1::$resource>, Status> {
                // (GetAgreement takes an as_of too: the default, today.)
                let mut request = v1::$get_req::default();
                request.name = name;
                match self.$get(request).await {
                    Ok(response) => Ok(Some(response.into_inner())),
                    Err(status) if status.code() == Code::NotFound => Ok(None),
                    Err(status) => Err(status),
                }
            }
            async fn create_batch(&mut self, items: Vec<(String, v1::$resource)>) -> Result<(), Status> {
                let requests = items
                    .into_iter()
                    .map(|(id, record)| v1::$create_req { $field: Some(record), $id: id, request_id: String::new() })
                    .collect();
                self.$batch(v1::$batch_req { requests }).await.map(|_| ())
            }
            async fn update(&mut self, record: v1::$resource, paths: Vec<String>) -> Result<(), Status> {
                let request = v1::$update_req {
                    $field: Some(record),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    request_id: String::new(),
                };
                self.$update(request).await.map(|_| ())
            }
        }
    };
}

target!(
    PartyServiceClient,
    Party,
    get_party,
    GetPartyRequest,
    batch_create_parties,
    BatchCreatePartiesRequest,
    CreatePartyRequest { party, party_id },
    update_party,
    UpdatePartyRequest
);
target!(
    PartnershipDomainServiceClient,
    PartnershipDomain,
    get_partnership_domain,
    GetPartnershipDomainRequest,
    batch_create_partnership_domains,
    BatchCreatePartnershipDomainsRequest,
    CreatePartnershipDomainRequest { partnership_domain, partnership_domain_id },
    update_partnership_domain,
    UpdatePartnershipDomainRequest
);
target!(
    AgreementServiceClient,
    Agreement,
    get_agreement,
    GetAgreementRequest,
    batch_create_agreements,
    BatchCreateAgreementsRequest,
    CreateAgreementRequest { agreement, agreement_id },
    update_agreement,
    UpdateAgreementRequest
);
target!(
    EngagementServiceClient,
    Engagement,
    get_engagement,
    GetEngagementRequest,
    batch_create_engagements,
    BatchCreateEngagementsRequest,
    CreateEngagementRequest { engagement, engagement_id },
    update_engagement,
    UpdateEngagementRequest
);
