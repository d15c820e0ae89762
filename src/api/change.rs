//! cooperation.v1.ChangeService: the change feed and record history.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};

use crate::error::Error;
use crate::pb::cooperation::v1::change_service_server::ChangeService;
use crate::pb::cooperation::v1::{
    Change, GetRevisionRequest, ListRevisionsRequest, ListRevisionsResponse, WatchChangesRequest, WatchChangesResponse,
};
use crate::registry::changes::WatchQuery;

type ChangeStream = Pin<Box<dyn Stream<Item = Result<WatchChangesResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ChangeService for super::Api {
    type WatchChangesStream = ChangeStream;

    async fn watch_changes(
        &self,
        request: tonic::Request<WatchChangesRequest>,
    ) -> Result<tonic::Response<Self::WatchChangesStream>, tonic::Status> {
        let request = request.into_inner();
        let progress_interval = match request.progress_interval {
            None => None,
            Some(d) => Some(
                std::time::Duration::try_from(d)
                    .map_err(|_| Error::invalid("progress_interval", "must not be negative"))?,
            ),
        };
        let query = WatchQuery {
            start_revision: request.start_revision,
            resource_types: request.resource_types,
            names: request.names,
            progress_interval,
        };
        let receiver = self.registry.watch(query).await?;
        let stream =
            tokio_stream::wrappers::ReceiverStream::new(receiver).map(|item| item.map_err(tonic::Status::from));
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn list_revisions(
        &self,
        request: tonic::Request<ListRevisionsRequest>,
    ) -> Result<tonic::Response<ListRevisionsResponse>, tonic::Status> {
        let request = request.into_inner();
        let (revisions, next_page_token, history_truncated) =
            self.registry.list_revisions(&request.name, request.page_size, &request.page_token).await?;
        Ok(tonic::Response::new(ListRevisionsResponse { revisions, next_page_token, history_truncated }))
    }

    async fn get_revision(
        &self,
        request: tonic::Request<GetRevisionRequest>,
    ) -> Result<tonic::Response<Change>, tonic::Status> {
        let request = request.into_inner();
        Ok(tonic::Response::new(self.registry.get_revision(&request.name, request.revision).await?))
    }
}
