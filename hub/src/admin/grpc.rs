//! The admin API as gRPC (`vigo.admin.v1.HubAdmin`): take the caller the admission
//! table authenticated, run the operation, count the call. Every method has the same
//! shape, so a macro writes them.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use vigo_common::refusal::{Kind, Refusal};
use vigo_proto::admin::v1 as api;

use super::{AdminApi, Caller};
use crate::error::HubError;

pub struct AdminGrpc {
    pub api: Arc<AdminApi>,
}

impl AdminGrpc {
    /// Who is calling: the admission table (`crate::admission`) authenticated the call
    /// before its body was read and left the caller in the request.
    fn caller<T: prost::Message>(&self, request: &Request<T>) -> Result<Caller, HubError> {
        let mut caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| HubError::Internal("an admin call that was not admitted".into()))?;
        caller.deadline = request
            .extensions()
            .get::<vigo_common::net::Deadline>()
            .map(|d| d.0);
        Ok(caller.asking(request.get_ref()))
    }
}

impl AdminGrpc {
    /// An answer stamped with the log index this node has applied, so a hub that
    /// forwarded the call can wait to see its effect (read-your-writes).
    fn answer<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        response.metadata_mut().insert(
            crate::node::APPLIED_INDEX_HEADER,
            tonic::metadata::MetadataValue::from(self.api.node.applied_index()),
        );
        response
    }
}

/// Counts an admin call by route and outcome (`ok`, or the refusal kind's label), and
/// times it.
pub fn record(route: impl Into<metrics::SharedString>, outcome: Option<Kind>, started: Instant) {
    let route = route.into();
    let code = outcome.map_or("ok", Kind::label);
    metrics::counter!("vigo_hub_admin_requests_total", "route" => route.clone(), "code" => code)
        .increment(1);
    metrics::histogram!("vigo_hub_admin_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
}

macro_rules! rpcs {
    ($($rpc:ident($req:ident) -> $resp:ident = $op:ident;)*) => {
        /// Registers every route's call counter and latency histogram, so the families
        /// are scraped before the first call.
        pub fn register_routes() {
            $(
                let route = concat!("grpc:", stringify!($rpc));
                metrics::counter!("vigo_hub_admin_requests_total", "route" => route, "code" => "ok")
                    .increment(0);
                let _ = metrics::histogram!("vigo_hub_admin_request_seconds", "route" => route);
            )*
        }

        #[tonic::async_trait]
        impl api::hub_admin_server::HubAdmin for AdminGrpc {
            $(
                async fn $rpc(
                    &self,
                    request: Request<api::$req>,
                ) -> Result<Response<api::$resp>, Status> {
                    let started = Instant::now();
                    let result = match self.caller(&request) {
                        Ok(caller) => match self.api.check_fresh(&caller).await {
                            Ok(()) => self.api.$op(&caller, request.into_inner()).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    let outcome = result.as_ref().err().map(Refusal::kind);
                    record(concat!("grpc:", stringify!($rpc)), outcome, started);
                    result.map(|r| self.answer(r)).map_err(Status::from)
                }
            )*

            type WatchTaskStream = std::pin::Pin<Box<
                dyn tokio_stream::Stream<Item = Result<api::TaskInfo, Status>> + Send + 'static,
            >>;

            /// The one streaming call: admitted and counted as the others, at its start.
            async fn watch_task(
                &self,
                request: Request<api::TaskRef>,
            ) -> Result<Response<Self::WatchTaskStream>, Status> {
                use tokio_stream::StreamExt;
                let started = Instant::now();
                let result = match self.caller(&request) {
                    Ok(caller) => match self.api.check_fresh(&caller).await {
                        Ok(()) => self.api.watch_task(&caller, request.into_inner()).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                record("grpc:WatchTask", result.as_ref().err().map(Refusal::kind), started);
                let updates = result.map_err(Status::from)?;
                let stream: Self::WatchTaskStream = Box::pin(updates.map(Ok));
                Ok(Response::new(stream))
            }
        }
    };
}

rpcs! {
    status(StatusRequest) -> ClusterStatus = status;
    list_envoys(ListEnvoysRequest) -> EnvoyPage = list_envoys;
    show_envoy(EnvoyRef) -> EnvoyDetail = show_envoy;
    envoy_runs(EnvoyRunsRequest) -> EnvoyRunList = envoy_runs;
    trace_config(TraceConfigRequest) -> ConfigTrace = trace_config;
    compliance(ComplianceRequest) -> ComplianceReport = compliance;
    compliance_history(ComplianceHistoryRequest) -> ComplianceTimeline = compliance_history;
    trait_count(TraitCountRequest) -> TraitCountReport = trait_count;
    config_history(ConfigHistoryRequest) -> ConfigVersions = config_history;
    list_spokes(ListSpokesRequest) -> SpokeList = list_spokes;
    show_spoke(SpokeRef) -> SpokeDetail = show_spoke;
    members(MembersRequest) -> MemberList = list_members;
    list_revocations(ListRevocationsRequest) -> RevocationPage = list_revocations;
    revoke_envoy(RevokeEnvoyRequest) -> RevokeEnvoyResult = revoke_envoy;
    reassign_envoy(ReassignEnvoyRequest) -> MoveResult = reassign_envoy;
    push(PushRequest) -> PushResult = push;
    publish_config(PublishConfigRequest) -> ConfigVersionInfo = publish_config;
    rollback_config(RollbackConfigRequest) -> ConfigVersionInfo = rollback_config;
    add_spoke(AddSpokeRequest) -> SpokeInfo = add_spoke;
    drain_spoke(SpokeRef) -> MoveResult = drain_spoke;
    remove_spoke(SpokeRef) -> SpokeInfo = remove_spoke;
    set_overrides(SetOverridesRequest) -> OverrideList = set_overrides;
    create_token(CreateTokenRequest) -> CreatedToken = create_token;
    list_tokens(ListTokensRequest) -> TokenList = list_tokens;
    revoke_token(RevokeTokenRequest) -> TokenInfo = revoke_token;
    add_hub(AddHubRequest) -> MemberList = add_hub;
    remove_hub(RemoveHubRequest) -> MemberList = remove_hub;
    revoke_certificate(RevokeCertificateRequest) -> RevocationInfo = revoke_certificate;
    list_bundle_keys(ListBundleKeysRequest) -> BundleKeyList = list_bundle_keys;
    add_bundle_key(AddBundleKeyRequest) -> BundleKeyList = add_bundle_key;
    use_bundle_key(BundleKeyRef) -> BundleKeyList = use_bundle_key;
    retire_bundle_key(BundleKeyRef) -> BundleKeyList = retire_bundle_key;
    list_tasks(ListTasksRequest) -> TaskList = list_tasks;
    show_task(TaskRef) -> TaskInfo = show_task;
    task_results(TaskResultsRequest) -> TaskResultPage = task_results;
    run_task(RunTaskRequest) -> TaskInfo = run_task;
    cancel_task(TaskRef) -> TaskInfo = cancel_task;
}
