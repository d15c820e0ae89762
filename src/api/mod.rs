//! The gRPC services: each checks its request, calls the generic registry and
//! maps errors. One file per service; the six standard methods are the same
//! shape for every resource, so `resource_service!` writes them once.

pub mod admin;
pub mod agreement;
pub mod change;
pub mod dataset;
pub mod encoded;
pub mod engagement;
pub mod partnership_domain;
pub mod party;
pub mod relationship;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message;

use crate::registry::{ANONYMOUS, Mutation, Registry, paging};

/// The state every service shares.
#[derive(Clone)]
pub struct Api {
    pub registry: Arc<Registry>,
    /// Scans running at once: one per core.
    scan_slots: Arc<tokio::sync::Semaphore>,
    /// How many slots there are.
    slots: usize,
    /// Scans waiting for a slot.
    scans_waiting: Arc<AtomicUsize>,
    /// Recent scans' running time in nanoseconds (a moving average), to judge
    /// how long a newcomer would wait.
    scan_nanos: Arc<AtomicU64>,
    limits: ScanLimits,
    /// Exports running at once: one per core (each holds a snapshot and a
    /// thread for as long as its client reads).
    exports: Arc<tokio::sync::Semaphore>,
}

/// The default `--max-scan-wait-ms`.
pub const DEFAULT_MAX_SCAN_WAIT: Duration = Duration::from_secs(1);

/// How many scans may wait for a slot, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct ScanLimits {
    /// Most scans waiting at once (`--max-queued-scans`).
    pub max_queued: usize,
    /// Longest a scan may expect to wait before it starts (`--max-scan-wait-ms`).
    pub max_wait: Duration,
}

impl ScanLimits {
    /// As many waiting as calls may be in flight, so that callers within
    /// `--max-concurrent-calls` are queued rather than refused while the wait
    /// stays under a second.
    pub fn for_calls(max_concurrent_calls: usize) -> ScanLimits {
        ScanLimits { max_queued: max_concurrent_calls, max_wait: DEFAULT_MAX_SCAN_WAIT }
    }
}

impl ScanLimits {
    /// Why a scan arriving behind `ahead` waiting ones is refused, if it is:
    /// too many waiting, or an expected wait (`per_slot_turn` for each scan
    /// ahead of it, when no slot is free) beyond `max_wait` or its deadline.
    fn refusal(
        &self,
        ahead: usize,
        all_busy: bool,
        per_slot_turn: Duration,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Option<String> {
        if ahead >= self.max_queued {
            return Some(format!("{} waiting, --max-queued-scans", self.max_queued));
        }
        if !all_busy {
            return None;
        }
        let wait = per_slot_turn.saturating_mul(ahead as u32 + 1);
        let limit = if wait > self.max_wait {
            format!("longer than {} ms, --max-scan-wait-ms", self.max_wait.as_millis())
        } else if deadline.is_some_and(|d| now + wait > d) {
            "past the call's deadline".to_string()
        } else {
            return None;
        };
        Some(format!("{ahead} waiting, about {} ms before this one could start: {limit}", wait.as_millis()))
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

impl Api {
    pub fn new(registry: Arc<Registry>, limits: ScanLimits) -> Api {
        Api {
            registry,
            scan_slots: Arc::new(tokio::sync::Semaphore::new(cores())),
            slots: cores(),
            scans_waiting: Default::default(),
            scan_nanos: Default::default(),
            limits,
            exports: Arc::new(tokio::sync::Semaphore::new(cores())),
        }
    }

    /// Folds one scan's running time into the moving average (weight 1/8).
    fn record_scan_time(&self, took: Duration) {
        let sample = took.as_nanos().min(u64::MAX as u128) as u64;
        let _ = self.scan_nanos.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            // From zero, not from the first sample: a cold first scan must not
            // turn away the callers that arrived with it.
            Some(old - old / 8 + sample / 8)
        });
    }

    /// Runs a scan-heavy read (List, GetRelationship) on the blocking pool, one
    /// per core at a time, so the async workers stay free to take (and shed)
    /// calls while it spends its CPU on thousands of records. It runs there
    /// under the runtime's handle, so the store's async reads (over a network,
    /// for a networked engine) are driven by the runtime as anywhere else. A scan waits for a slot unless `max_queued` already wait, or
    /// those ahead would keep it waiting longer than `max_wait` or past the
    /// caller's `deadline`: then it is refused at once with RESOURCE_EXHAUSTED,
    /// which keeps an admitted scan's latency bounded under overload.
    pub async fn scan<T, W>(&self, deadline: Option<Instant>, work: W) -> Result<T, tonic::Status>
    where
        W: std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let waiting = Waiting(&self.scans_waiting);
        let ahead = self.scans_waiting.fetch_add(1, Ordering::AcqRel);
        let recent = Duration::from_nanos(self.scan_nanos.load(Ordering::Relaxed));
        let all_busy = self.scan_slots.available_permits() == 0;
        if let Some(reason) = self.limits.refusal(ahead, all_busy, recent / self.slots as u32, deadline, Instant::now())
        {
            return Err(tonic::Status::resource_exhausted(format!(
                "the server is busy with list and relationship queries ({reason}); retry with backoff"
            )));
        }
        // The estimate can be wrong (scans vary): the wait itself is bounded too.
        let slot = match tokio::time::timeout(self.limits.max_wait, self.scan_slots.clone().acquire_owned()).await {
            Ok(slot) => slot.expect("the scan semaphore is never closed"),
            Err(_) => {
                return Err(tonic::Status::resource_exhausted(format!(
                    "the server is busy with list and relationship queries (waited {} ms for a turn, \
                     --max-scan-wait-ms); retry with backoff",
                    self.limits.max_wait.as_millis()
                )));
            }
        };
        drop(waiting);
        let _slot = slot;
        let runtime = tokio::runtime::Handle::current();
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || runtime.block_on(work)).await;
        self.record_scan_time(started.elapsed());
        match outcome {
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
        .get::<crate::server::auth::Caller>()
        .map(|c| c.identity.clone())
        .unwrap_or_else(|| ANONYMOUS.to_string())
}

/// The mutation context of a request: who calls, until when, and a
/// fingerprint of the whole request for request_id retries.
pub fn mutation<M: Message>(context: CallContext, method: &'static str, request: &M, request_id: &str) -> Mutation {
    // Only a request_id's entry keeps the fingerprint: without one, the request
    // is not encoded and hashed again for nothing.
    let fingerprint = match request_id.is_empty() {
        true => 0,
        false => paging::fingerprint(&[method.as_bytes(), &request.encode_to_vec()]),
    };
    Mutation {
        actor: context.caller,
        request_id: request_id.to_string(),
        method,
        fingerprint,
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
        CallContext { caller: caller(request), deadline: crate::server::observe::Deadline::of(request) }
    }
}

/// The `as_of` day of a Get or List request: agreements have one (their status
/// is derived as of a day); the other kinds keep the default, today.
pub trait AsOf {
    fn as_of(&self) -> Option<&crate::pb::google::r#type::Date> {
        None
    }
}

/// A List request as the registry's query.
pub trait ListRequest: AsOf {
    fn into_query(self, deadline: Option<Instant>) -> crate::registry::ListQuery;
}

macro_rules! list_request {
    ($($request:ty),*) => {$(
        impl ListRequest for $request {
            fn into_query(self, deadline: Option<Instant>) -> crate::registry::ListQuery {
                crate::registry::ListQuery {
                    as_of: AsOf::as_of(&self).copied(),
                    page_size: self.page_size,
                    page_token: self.page_token,
                    show_deleted: self.show_deleted,
                    filter: self.filter,
                    order_by: self.order_by,
                    deadline,
                }
            }
        }
    )*};
}
list_request!(
    crate::pb::cooperation::v1::ListAgreementsRequest,
    crate::pb::cooperation::v1::ListPartiesRequest,
    crate::pb::cooperation::v1::ListPartnershipDomainsRequest,
    crate::pb::cooperation::v1::ListEngagementsRequest
);

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
        $batch_create:ident($batch_create_req:ty) -> $batch_create_resp:ident,
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
                let deadline = $crate::server::observe::Deadline::of(&request);
                let query = $crate::api::ListRequest::into_query(request.into_inner(), deadline);
                let registry = self.registry.clone();
                let page = self.scan(deadline, async move { registry.list::<$resource>(&query).await }).await?;
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

            async fn $batch_create(
                &self,
                request: tonic::Request<$batch_create_req>,
            ) -> Result<tonic::Response<$batch_create_resp>, tonic::Status> {
                let context = $crate::api::CallContext::of(&request);
                let request = request.into_inner();
                let mutation = $crate::api::mutation(context, stringify!($batch_create), &request, "");
                let mut violations = $crate::error::Violations::new();
                let mut items = Vec::with_capacity(request.requests.len());
                for (i, create) in request.requests.into_iter().enumerate() {
                    if !create.request_id.is_empty() {
                        violations.add(
                            format!("requests[{i}].request_id"),
                            "is not taken in a batch: a batch is all or none, so retry it whole",
                        );
                    }
                    match create.$field {
                        Some(resource) => items.push((create.$id_field, resource)),
                        None => violations.add(format!("requests[{i}].{}", stringify!($field)), "is required"),
                    }
                }
                violations.into_result()?;
                let created = self.registry.create_many(items, &mutation).await?;
                Ok(tonic::Response::new($batch_create_resp { $items: created }))
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ScanLimits = ScanLimits { max_queued: 10, max_wait: Duration::from_millis(300) };
    const TURN: Duration = Duration::from_millis(100);

    #[test]
    fn a_full_waiting_room_refuses_whatever_the_wait() {
        let refusal = LIMITS.refusal(10, false, Duration::ZERO, None, Instant::now());
        assert_eq!(refusal.as_deref(), Some("10 waiting, --max-queued-scans"));
    }

    #[test]
    fn a_free_slot_admits_at_once() {
        assert_eq!(LIMITS.refusal(5, false, Duration::from_secs(10), None, Instant::now()), None);
    }

    #[test]
    fn an_expected_wait_beyond_the_limit_refuses() {
        // Two ahead: this one starts after three turns, 300 ms: admitted.
        assert_eq!(LIMITS.refusal(2, true, TURN, None, Instant::now()), None);
        let refusal = LIMITS.refusal(3, true, TURN, None, Instant::now()).unwrap();
        assert_eq!(
            refusal,
            "3 waiting, about 400 ms before this one could start: longer than 300 ms, --max-scan-wait-ms"
        );
    }

    #[test]
    fn an_expected_wait_past_the_deadline_refuses() {
        let now = Instant::now();
        assert_eq!(LIMITS.refusal(1, true, TURN, Some(now + Duration::from_millis(250)), now), None);
        let refusal = LIMITS.refusal(1, true, TURN, Some(now + Duration::from_millis(150)), now).unwrap();
        assert!(refusal.ends_with("past the call's deadline"), "{refusal}");
    }
}
