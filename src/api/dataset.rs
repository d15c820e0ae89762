//! cooperation.v1.DatasetService: the live records at one revision, streamed
//! as a dataset.

use std::pin::Pin;

use tokio_stream::Stream;

use crate::pb::cooperation::v1::dataset_service_server::DatasetService;
use crate::pb::cooperation::v1::{ExportDatasetRequest, ExportDatasetResponse};
use crate::registry::ExportQuery;

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportDatasetResponse, tonic::Status>> + Send>>;

/// Chunks read ahead of the client: with the one the client's stream holds
/// and the one being gathered, an export holds at most a few chunks however
/// slowly its client reads.
const READ_AHEAD: usize = 1;

#[tonic::async_trait]
impl DatasetService for super::Api {
    type ExportDatasetStream = ExportStream;

    async fn export_dataset(
        &self,
        request: tonic::Request<ExportDatasetRequest>,
    ) -> Result<tonic::Response<ExportStream>, tonic::Status> {
        let deadline = crate::server::observe::Deadline::of(&request);
        let request = request.into_inner();
        let query = ExportQuery {
            party_filter: request.party_filter,
            partnership_domain_filter: request.partnership_domain_filter,
            agreement_filter: request.agreement_filter,
            engagement_filter: request.engagement_filter,
            deadline,
        };
        let export = self.registry.open_export(&query).await?;
        let slot = self.exports.clone().try_acquire_owned().map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "the server runs {} exports already, the most it runs at once (one per core); retry with backoff",
                self.slots
            ))
        })?;
        let revision = export.revision() as i64;
        // The reading runs on a thread of its own, as a backup does: it hands
        // each chunk over a channel that blocks it while the client is behind,
        // and ends once the client has gone (the channel closes).
        let (chunks, received) = std::sync::mpsc::sync_channel::<Result<ExportDatasetResponse, tonic::Status>>(0);
        let (sender, receiver) = tokio::sync::mpsc::channel(READ_AHEAD);
        let registry = self.registry.clone();
        // The engine may need the runtime for its reads (a networked one does).
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let read = runtime.block_on(registry.run_export(&export, &mut |dataset| {
                chunks.send(Ok(ExportDatasetResponse { dataset: Some(dataset), revision })).is_ok()
            }));
            if let Err(error) = read {
                let _ = chunks.send(Err(tonic::Status::from(error)));
            }
        });
        tokio::task::spawn_blocking(move || {
            for chunk in received {
                if sender.blocking_send(chunk).is_err() {
                    break; // the client left; the reading stops when its channel closes
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
