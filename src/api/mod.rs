//! The gRPC services: each checks its request, calls the generic registry and
//! maps errors. One file per service; the six standard methods are the same
//! shape for every resource, so `resource_service!` writes them once.

pub mod admin;
pub mod agreement;
pub mod change;
pub mod engagement;
pub mod partnership_domain;
pub mod party;
pub mod relationship;

use std::sync::Arc;

use prost::Message;

use crate::registry::{ANONYMOUS, Mutation, Registry, paging};

/// The state every service shares.
#[derive(Clone)]
pub struct Api {
    pub registry: Arc<Registry>,
    /// Scans running at once: one per core.
    scan_slots: Arc<tokio::sync::Semaphore>,
    /// Scans waiting for a slot; beyond `scan_queue_limit` new ones are shed.
    scans_waiting: Arc<std::sync::atomic::AtomicUsize>,
    scan_queue_limit: usize,
}

/// Scans that may wait for a slot by default, per core: bounds an admitted
/// scan's wait to about this many scans' time.
pub const QUEUED_SCANS_PER_CORE: usize = 8;

/// The default `--max-queued-scans`.
pub fn default_max_queued_scans() -> usize {
    cores() * QUEUED_SCANS_PER_CORE
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

impl Api {
    /// `max_queued_scans`: how many scans may wait for a turn (see `scan`).
    pub fn new(registry: Arc<Registry>, max_queued_scans: usize) -> Api {
        Api {
            registry,
            scan_slots: Arc::new(tokio::sync::Semaphore::new(cores())),
            scans_waiting: Default::default(),
            scan_queue_limit: max_queued_scans,
        }
    }

    /// Runs a scan-heavy read (List, GetRelationship) on the blocking pool, one
    /// per core at a time, so the async workers stay free to take (and shed)
    /// calls. At most `max_queued_scans` wait for a slot; beyond that a scan is
    /// refused at once with RESOURCE_EXHAUSTED, which keeps an admitted scan's
    /// latency bounded under overload.
    pub async fn scan<T, W>(&self, work: W) -> Result<T, tonic::Status>
    where
        W: std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        use std::sync::atomic::Ordering;
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let waiting = Waiting(&self.scans_waiting);
        if self.scans_waiting.fetch_add(1, Ordering::AcqRel) >= self.scan_queue_limit {
            return Err(tonic::Status::resource_exhausted(format!(
                "the server is busy with list and relationship queries ({} waiting, --max-queued-scans); retry with backoff",
                self.scan_queue_limit
            )));
        }
        let slot = self.scan_slots.clone().acquire_owned().await.expect("the scan semaphore is never closed");
        drop(waiting);
        let _slot = slot;
        let runtime = tokio::runtime::Handle::current();
        match tokio::task::spawn_blocking(move || runtime.block_on(work)).await {
            Ok(result) => result.map_err(tonic::Status::from),
            Err(e) => Err(crate::error::Error::internal(format!("scan task failed: {e}")).into()),
        }
    }
}

/// Who makes a request: the identity the access layer admitted, or
/// `anonymous`.
pub fn caller<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<crate::auth::Caller>()
        .map(|c| c.identity.clone())
        .unwrap_or_else(|| ANONYMOUS.to_string())
}

/// The mutation context of a request: who calls, until when, and a
/// fingerprint of the whole request for request_id retries.
pub fn mutation<M: Message>(context: CallContext, method: &'static str, request: &M, request_id: &str) -> Mutation {
    Mutation {
        actor: context.caller,
        request_id: request_id.to_string(),
        method,
        fingerprint: paging::fingerprint(&[method.as_bytes(), &request.encode_to_vec()]),
        deadline: context.deadline,
    }
}

/// What the layers in front of a service learnt about its call.
pub struct CallContext {
    /// The identity the access layer admitted, or `anonymous`.
    pub caller: String,
    /// When the caller stops waiting, if it said.
    pub deadline: Option<std::time::Instant>,
}

impl CallContext {
    pub fn of<T>(request: &tonic::Request<T>) -> CallContext {
        CallContext { caller: caller(request), deadline: crate::observe::Deadline::of(request) }
    }
}

/// The `as_of` day of a Get or List request: agreements have one (their status
/// is derived as of a day); the other kinds keep the default, today.
pub trait AsOf {
    fn as_of(&self) -> Option<&crate::pb::google::r#type::Date> {
        None
    }
}

/// The resource a Create or Update request must carry.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T, tonic::Status> {
    value.ok_or_else(|| crate::error::Error::invalid(field, "is required").into())
}

/// Implements a resource's service: Get, List, Create, Update, Delete, Undelete.
macro_rules! resource_service {
    (
        $service:path, $resource:ty, $field:ident, $id_field:ident, $items:ident,
        $get:ident($get_req:ty),
        $list:ident($list_req:ty) -> $list_resp:ident,
        $create:ident($create_req:ty),
        $update:ident($update_req:ty),
        $delete:ident($delete_req:ty),
        $undelete:ident($undelete_req:ty) $(,)?
    ) => {
        #[tonic::async_trait]
        impl $service for $crate::api::Api {
            async fn $get(
                &self,
                request: tonic::Request<$get_req>,
            ) -> Result<tonic::Response<$resource>, tonic::Status> {
                let request = request.into_inner();
                let as_of = $crate::api::AsOf::as_of(&request);
                Ok(tonic::Response::new(self.registry.get::<$resource>(&request.name, as_of).await?))
            }

            async fn $list(
                &self,
                request: tonic::Request<$list_req>,
            ) -> Result<tonic::Response<$list_resp>, tonic::Status> {
                let deadline = $crate::observe::Deadline::of(&request);
                let request = request.into_inner();
                let query = $crate::registry::ListQuery {
                    as_of: $crate::api::AsOf::as_of(&request).copied(),
                    page_size: request.page_size,
                    page_token: request.page_token,
                    show_deleted: request.show_deleted,
                    filter: request.filter,
                    order_by: request.order_by,
                    deadline,
                };
                let registry = self.registry.clone();
                let page = self.scan(async move { registry.list::<$resource>(&query).await }).await?;
                Ok(tonic::Response::new($list_resp {
                    $items: page.items,
                    next_page_token: page.next_page_token,
                    revision: page.revision as i64,
                }))
            }

            async fn $create(
                &self,
                request: tonic::Request<$create_req>,
            ) -> Result<tonic::Response<$resource>, tonic::Status> {
                let context = $crate::api::CallContext::of(&request);
                let request = request.into_inner();
                let mutation = $crate::api::mutation(context, stringify!($create), &request, &request.request_id);
                let resource = $crate::api::required(request.$field, stringify!($field))?;
                let created = self.registry.create(&request.$id_field, resource, &mutation).await?;
                Ok(tonic::Response::new(created))
            }

            async fn $update(
                &self,
                request: tonic::Request<$update_req>,
            ) -> Result<tonic::Response<$resource>, tonic::Status> {
                let context = $crate::api::CallContext::of(&request);
                let request = request.into_inner();
                let mutation = $crate::api::mutation(context, stringify!($update), &request, &request.request_id);
                let resource = $crate::api::required(request.$field, stringify!($field))?;
                let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
                let etag = resource.etag.clone();
                let updated = self.registry.update(resource, &paths, &etag, &mutation).await?;
                Ok(tonic::Response::new(updated))
            }

            async fn $delete(
                &self,
                request: tonic::Request<$delete_req>,
            ) -> Result<tonic::Response<$resource>, tonic::Status> {
                let context = $crate::api::CallContext::of(&request);
                let request = request.into_inner();
                let mutation = $crate::api::mutation(context, stringify!($delete), &request, &request.request_id);
                let deleted = self.registry.delete::<$resource>(&request.name, &request.etag, &mutation).await?;
                Ok(tonic::Response::new(deleted))
            }

            async fn $undelete(
                &self,
                request: tonic::Request<$undelete_req>,
            ) -> Result<tonic::Response<$resource>, tonic::Status> {
                let context = $crate::api::CallContext::of(&request);
                let request = request.into_inner();
                let mutation = $crate::api::mutation(context, stringify!($undelete), &request, &request.request_id);
                let restored = self.registry.undelete::<$resource>(&request.name, &request.etag, &mutation).await?;
                Ok(tonic::Response::new(restored))
            }
        }
    };
}
pub(crate) use resource_service;
