//! `cooperation-registry import FILE --server ADDR`: loads a dataset (proto3 JSON
//! of `cooperation.v1.Dataset`) into a running server through its public API.
//!
//! Records are created parties first, then partnership domains, agreements and
//! engagements. A reference to a record of the dataset that is not created yet
//! (a domain naming an agreement that names the domain) is left out of the
//! create and set by an Update once everything exists.

use std::collections::HashSet;
use std::path::PathBuf;

use clap::Args;
use tower::BoxError;

use prost_reflect::{DynamicMessage, ReflectMessage};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cli::client::{BearerToken, ClientArgs};
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

/// Parses a dataset file, naming the place of the first error.
pub fn parse_dataset(text: &str) -> Result<Dataset, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(Dataset::default().descriptor(), &mut deserializer)
        .map_err(|e| format!("not a cooperation.v1.Dataset in proto3 JSON: {e}"))?;
    deserializer.end().map_err(|e| format!("trailing data after the dataset: {e}"))?;
    message.transcode_to().map_err(|e| e.to_string())
}

/// How many records an import created, updated and skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub created: usize,
    pub skipped: usize,
    pub linked: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The dataset file: proto3 JSON of cooperation.v1.Dataset (see examples/).
    pub file: PathBuf,
    /// Leave records that exist already as they are, instead of stopping.
    #[arg(long)]
    pub skip_existing: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: &ImportArgs) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let dataset = parse_dataset(&text).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let (channel, token) = args.client.connect().await?;
    let report = import_with_token(channel, dataset, args.skip_existing, token).await?;
    println!(
        "imported {}: {} records created, {} skipped as existing, {} forward references set",
        args.file.display(),
        report.created,
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
    let interceptor = BearerToken::new(token)?;
    let mut names: HashSet<String> = HashSet::new();
    names.extend(dataset.parties.iter().map(|r| r.name.clone()));
    names.extend(dataset.partnership_domains.iter().map(|r| r.name.clone()));
    names.extend(dataset.agreements.iter().map(|r| r.name.clone()));
    names.extend(dataset.engagements.iter().map(|r| r.name.clone()));
    let mut importer = Importer {
        names,
        created: HashSet::new(),
        skipped: HashSet::new(),
        report: ImportReport::default(),
        skip_existing,
        batch_size: BATCH_SIZE,
    };

    let mut parties = PartyServiceClient::with_interceptor(channel.clone(), interceptor.clone());
    let mut domains = PartnershipDomainServiceClient::with_interceptor(channel.clone(), interceptor.clone());
    let mut agreements = AgreementServiceClient::with_interceptor(channel.clone(), interceptor.clone());
    let mut engagements = EngagementServiceClient::with_interceptor(channel, interceptor);
    let deferred_parties = importer.create_all(&mut parties, dataset.parties).await?;
    let deferred_domains = importer.create_all(&mut domains, dataset.partnership_domains).await?;
    let deferred_agreements = importer.create_all(&mut agreements, dataset.agreements).await?;
    let deferred_engagements = importer.create_all(&mut engagements, dataset.engagements).await?;
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
    skipped: HashSet<String>,
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
    /// Creates `records` in batches (BatchCreate), each record without the
    /// fields that name a dataset record neither created before nor in its
    /// batch: those are returned, to be set once everything exists.
    async fn create_all<R: Resource, C: Target<R>>(
        &mut self,
        client: &mut C,
        records: Vec<R>,
    ) -> Result<Vec<Deferred<R>>, String> {
        let mut deferred = Vec::new();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let batch: Vec<R> = records.by_ref().take(self.batch_size).collect();
            let in_batch: HashSet<&str> = batch.iter().map(|record| record.name()).collect();
            let mut items = Vec::with_capacity(batch.len());
            let mut batch_deferred = Vec::new();
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
                let first = match fields.is_empty() {
                    true => record.clone(),
                    false => {
                        let mut first = record.transcode_to_dynamic();
                        for field in &fields {
                            first.clear_field_by_name(field);
                        }
                        batch_deferred.push(Deferred { record: record.clone(), fields });
                        first.transcode_to().map_err(|e| e.to_string())?
                    }
                };
                items.push((id, first));
            }
            self.create_batch(client, items).await?;
            deferred.extend(batch_deferred.into_iter().filter(|d| !self.skipped.contains(d.record.name())));
            self.created.extend(batch.iter().map(|record| record.name().to_string()));
        }
        Ok(deferred)
    }

    /// Creates one batch; split in two when the store takes fewer records in
    /// one write, and one by one when some exist and `--skip-existing` allows it.
    fn create_batch<'a, R: Resource, C: Target<R>>(
        &'a mut self,
        client: &'a mut C,
        items: Vec<(String, R)>,
    ) -> crate::store::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let count = items.len();
            match client.create_batch(items.clone()).await {
                Ok(()) => {
                    self.report.created += count;
                    Ok(())
                }
                Err(status) if status.code() == Code::InvalidArgument && count > 1 && too_many(&status) => {
                    let mut first = items;
                    let second = first.split_off(count / 2);
                    self.create_batch(client, first).await?;
                    self.create_batch(client, second).await
                }
                Err(status) if status.code() == Code::AlreadyExists && self.skip_existing => {
                    for (id, record) in items {
                        let name = record.name().to_string();
                        match client.create(id, record).await {
                            Ok(()) => self.report.created += 1,
                            Err(status) if status.code() == Code::AlreadyExists => {
                                self.report.skipped += 1;
                                self.skipped.insert(name);
                            }
                            Err(status) => return Err(format!("creating {name}: {}", describe(&status))),
                        }
                    }
                    Ok(())
                }
                Err(status) if status.code() == Code::AlreadyExists => Err(format!(
                    "creating {}: {} (pass --skip-existing to leave existing records as they are)",
                    R::KIND.collection,
                    describe(&status)
                )),
                Err(status) => Err(format!("creating {}: {}", R::KIND.collection, describe(&status))),
            }
        })
    }

    async fn link_all<R: Resource, C: Target<R>>(
        &mut self,
        client: &mut C,
        deferred: Vec<Deferred<R>>,
    ) -> Result<(), String> {
        for Deferred { record, fields } in deferred {
            let name = record.name().to_string();
            if self.skipped.contains(&name) {
                continue;
            }
            client.update(record, fields).await.map_err(|status| format!("linking {name}: {}", describe(&status)))?;
            self.report.linked += 1;
        }
        Ok(())
    }
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

/// Create and Update of one kind through its generated client.
#[tonic::async_trait]
trait Target<R>: Send {
    async fn create(&mut self, id: String, record: R) -> Result<(), Status>;
    /// Creates all of `items` (id, record) or none.
    async fn create_batch(&mut self, items: Vec<(String, R)>) -> Result<(), Status>;
    async fn update(&mut self, record: R, paths: Vec<String>) -> Result<(), Status>;
}

macro_rules! target {
    ($client:ident, $resource:ident, $create:ident, $batch:ident, $batch_req:ident, $create_req:ident { $field:ident, $id:ident }, $update:ident, $update_req:ident) => {
        #[tonic::async_trait]
        impl Target<v1::$resource> for $client<AuthChannel> {
            async fn create(&mut self, id: String, record: v1::$resource) -> Result<(), Status> {
                let request = v1::$create_req { $field: Some(record), $id: id, request_id: String::new() };
                self.$create(request).await.map(|_| ())
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
    create_party,
    batch_create_parties,
    BatchCreatePartiesRequest,
    CreatePartyRequest { party, party_id },
    update_party,
    UpdatePartyRequest
);
target!(
    PartnershipDomainServiceClient,
    PartnershipDomain,
    create_partnership_domain,
    batch_create_partnership_domains,
    BatchCreatePartnershipDomainsRequest,
    CreatePartnershipDomainRequest { partnership_domain, partnership_domain_id },
    update_partnership_domain,
    UpdatePartnershipDomainRequest
);
target!(
    AgreementServiceClient,
    Agreement,
    create_agreement,
    batch_create_agreements,
    BatchCreateAgreementsRequest,
    CreateAgreementRequest { agreement, agreement_id },
    update_agreement,
    UpdateAgreementRequest
);
target!(
    EngagementServiceClient,
    Engagement,
    create_engagement,
    batch_create_engagements,
    BatchCreateEngagementsRequest,
    CreateEngagementRequest { engagement, engagement_id },
    update_engagement,
    UpdateEngagementRequest
);
