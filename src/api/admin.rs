//! cooperation.v1.AdminService: operations on the registry as a whole.

use std::pin::Pin;

use tokio_stream::Stream;

use crate::error::Error;
use crate::pb::cooperation::v1::admin_service_server::AdminService;
use crate::pb::cooperation::v1::{BackupRequest, BackupResponse};

type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for super::Api {
    type BackupStream = BackupStream;

    async fn backup(
        &self,
        _request: tonic::Request<BackupRequest>,
    ) -> Result<tonic::Response<BackupStream>, tonic::Status> {
        let (chunks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let registry = self.registry.clone();
        // The engine may need the runtime for its reads (a networked one does).
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let producer = std::thread::spawn(move || {
                let _in_runtime = runtime.enter();
                registry.backup(chunks)
            });
            for data in received {
                if sender.blocking_send(Ok(BackupResponse { data, revision: 0 })).is_err() {
                    break; // the client left; the producer stops when its channel closes
                }
            }
            let last = match producer.join() {
                Ok(Ok(revision)) => Ok(BackupResponse { data: Vec::new(), revision: revision as i64 }),
                Ok(Err(error)) => Err(tonic::Status::from(error)),
                Err(_) => Err(tonic::Status::from(Error::internal("the backup thread panicked"))),
            };
            let _ = sender.blocking_send(last);
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
