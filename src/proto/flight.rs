//! Arrow Flight over gRPC: a thin adapter from `FlightService` calls to the ingest core.
//!
//! `DoPut` reads the descriptor from the first message (PATH `[stream]`, or CMD holding the original service's
//! JSON `{"stream_name": "..."}`), hands the whole message stream, first message included (it carries the
//! schema), to arrow-flight's decoder, and the decoded schema and batches to `ingest::Core`. The single
//! `PutResult` is sent only after commit. `ListFlights`, `GetFlightInfo` and `GetSchema` describe the tables
//! streams land in. A CMD, ticket or action that is a Flight SQL message goes to `flightsql` instead (peeked
//! here, because arrow-flight's own Flight SQL dispatcher refuses the JSON CMD). Errors become gRPC statuses
//! through `proto::status`; nothing here touches DuckDB.

use std::pin::Pin;
use std::sync::Arc;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse,
    PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::access::Principal;
use crate::engine::core::Core;
use crate::engine::error::{Code, EngineError};
use crate::engine::follow::{After, FollowStream, Shape, Until};
use crate::engine::ingest::Request as IngestRequest;
use crate::engine::metrics::Protocol;
use crate::engine::policy::{Access, Policy};
use crate::engine::session::IDEMPOTENCY_KEY;
use crate::engine::session::Session;
use crate::proto::flightsql::{self, FlightSql};
use crate::proto::grpc_body::BodyEnd;
use crate::proto::ipc::{self, Decoding, SchemaLimits};
use crate::proto::{rest, status};

/// The Flight action that tells what became of a request, by its idempotency key.
pub const REQUEST_STATUS: &str = "request_status";
use std::sync::atomic::Ordering;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Flight service of one listener.
pub struct FlightAdapter<S: Session> {
    core: Arc<Core<S>>,
    policy: Arc<Policy>,
    sql: FlightSql<S>,
    /// The listener's message limit, which also bounds what a compressed message may claim decompressed.
    max_message_bytes: usize,
}

impl<S: Session> FlightAdapter<S> {
    pub fn new(core: Arc<Core<S>>, policy: Arc<Policy>, access: Access, max_message_bytes: usize) -> Self {
        let sql = FlightSql::new(Arc::clone(&core), Arc::clone(&policy), access);
        FlightAdapter { core, policy, sql, max_message_bytes }
    }
}

/// The Flight SQL command a descriptor carries, if any.
fn sql_command(descriptor: &FlightDescriptor) -> Option<arrow_flight::sql::Command> {
    match DescriptorType::try_from(descriptor.r#type) {
        Ok(DescriptorType::Cmd) => flightsql::command_of(&descriptor.cmd),
        _ => None,
    }
}

/// The principal the listener's gate put on a request. A request without one (which the gate never lets
/// through) is treated as nobody.
pub fn principal_of<T>(request: &Request<T>) -> Result<Principal, EngineError> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| EngineError::Internal("a request arrived without a principal".into()))
}

/// The bearer secret a Handshake with credentials proved, put there by the gate for `handshake` to return.
#[derive(Clone)]
pub struct ProvenBearer(pub String);

/// The stream a descriptor names.
pub fn stream_of(descriptor: &FlightDescriptor) -> Result<String, EngineError> {
    match DescriptorType::try_from(descriptor.r#type) {
        Ok(DescriptorType::Path) => match descriptor.path.as_slice() {
            [name] => Ok(name.clone()),
            [] => Err(EngineError::BadInput("the PATH descriptor is empty; send [stream_name]".into())),
            _ => Err(EngineError::BadInput(format!(
                "the PATH descriptor has {} elements; send exactly one, the stream name",
                descriptor.path.len()
            ))),
        },
        Ok(DescriptorType::Cmd) => {
            #[derive(serde::Deserialize)]
            struct Cmd {
                stream_name: String,
            }
            serde_json::from_slice::<Cmd>(&descriptor.cmd).map(|c| c.stream_name).map_err(|e| {
                EngineError::BadInput(format!("the CMD descriptor is not JSON {{\"stream_name\": \"...\"}}: {e}"))
            })
        }
        _ => Err(EngineError::BadInput(format!(
            "unknown descriptor type {}; use PATH [stream_name] or CMD {{\"stream_name\": \"...\"}}",
            descriptor.r#type
        ))),
    }
}

/// What a failed message read means for the request.
fn transport_error(status: &Status) -> EngineError {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("message length too large") {
        return EngineError::TooLarge(format!(
            "a Flight message is over the listener's size limit: {}",
            status.message()
        ));
    }
    match status.code() {
        tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Unavailable => EngineError::Disconnected,
        _ => EngineError::BadInput(format!("the Flight stream failed: {}", status.message())),
    }
}

impl<S: Session> FlightAdapter<S> {
    async fn put(&self, request: Request<Streaming<FlightData>>) -> Result<PutResult, EngineError> {
        let result = self.put_inner(request).await;
        if let Err((e, false)) = &result {
            self.core.reject(Protocol::Flight, e);
        }
        result.map_err(|(e, _)| e)
    }

    /// The error says whether the request reached the core (which counted it) or not.
    async fn put_inner(&self, request: Request<Streaming<FlightData>>) -> Result<PutResult, (EngineError, bool)> {
        let early = |e: EngineError| (e, false);
        let principal = principal_of(&request).map_err(early)?;
        let key = match request.metadata().get(IDEMPOTENCY_KEY) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| early(EngineError::BadInput("the idempotency-key metadata is not ASCII".into())))?
                    .trim()
                    .to_string(),
            ),
        };
        let end = request.extensions().get::<BodyEnd>().cloned();
        // A body the budget refused says so; other transport errors are read from tonic's status.
        let failed = {
            let end = end.clone();
            move |status: &Status| {
                end.as_ref().and_then(BodyEnd::over_budget).unwrap_or_else(|| transport_error(status))
            }
        };
        let mut input = request.into_inner();
        let stall = self.policy.stall_timeout;
        let first = match tokio::time::timeout(stall, input.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Err(early(EngineError::BadInput("DoPut carried no messages".into()))),
            Ok(Err(status)) => return Err(early(failed(&status))),
            Err(_) => return Err(early(EngineError::Stalled(stall))),
        };
        let descriptor = first
            .flight_descriptor
            .clone()
            .ok_or_else(|| early(EngineError::BadInput("the first DoPut message has no flight descriptor".into())))?;
        let sql = sql_command(&descriptor);
        let stream = match &sql {
            Some(_) => String::new(),
            None => stream_of(&descriptor).map_err(early)?,
        };
        let mut ingest_request =
            IngestRequest::new(stream, Protocol::Flight, principal.clone(), Arc::clone(&self.policy));
        ingest_request.idempotency_key = key;
        let wire = Arc::clone(&ingest_request.wire_bytes);
        let decoding =
            Decoding::new(self.max_message_bytes, Arc::clone(self.core.budget()), ingest_request.reservation.clone())
                .with_schema_limits(SchemaLimits::of(&self.policy));
        let size = |m: &FlightData| m.data_header.len() + m.data_body.len() + m.app_metadata.len();
        // Each message counts on the wire, and is reserved from the memory budget as tonic hands it over (until
        // then its bytes were charged as they arrived, see `grpc_body`), until its batch is admitted.
        let (counter, reserving) = (Arc::clone(&wire), decoding.clone());
        let arrived = move |m: FlightData| -> Result<FlightData, EngineError> {
            counter.fetch_add(size(&m) as u64, Ordering::Relaxed);
            reserving.reserve(size(&m))?;
            Ok(m)
        };
        let first = arrived(first).map_err(early)?;
        // The end of tonic's stream is the end of the data only if the body ended (not on a cancelled call).
        let cancelled = futures::stream::once(async move {
            match end {
                Some(end) if !end.ended() => Some(Err(FlightError::ExternalError(Box::new(EngineError::Disconnected)))),
                _ => None,
            }
        })
        .filter_map(futures::future::ready);
        let messages = futures::stream::once(async move { Ok(first) })
            .chain(input.map(move |m| match m {
                Ok(m) => arrived(m).map_err(|e| FlightError::ExternalError(Box::new(e))),
                Err(status) => Err(FlightError::ExternalError(Box::new(failed(&status)))),
            }))
            .chain(cancelled);
        let items = ipc::flight_items(messages, decoding);
        if let Some(command) = sql {
            // Flight SQL: ingest reaches the core (which counts it); statements are not ingest requests.
            return self.sql.do_put(command, items, ingest_request).await.map_err(|e| (e, true));
        }
        let report = self.core.ingest(ingest_request, items).await.map_err(|e| (e, true))?;
        let app_metadata = serde_json::to_vec(&report).map_err(|e| (EngineError::Internal(e.to_string()), true))?;
        Ok(PutResult { app_metadata: app_metadata.into() })
    }

    /// The `request_status` action: `{"stream", "key"}` in, the request's status as JSON out (as
    /// `GET /streams/{stream}/requests/{key}` answers).
    async fn request_status(&self, principal: Principal, body: &[u8]) -> Result<Vec<u8>, EngineError> {
        #[derive(serde::Deserialize)]
        struct Ask {
            stream: String,
            key: String,
        }
        let ask: Ask = serde_json::from_slice(body).map_err(|e| {
            EngineError::BadInput(format!("the request_status body is not JSON {{\"stream\": ..., \"key\": ...}}: {e}"))
        })?;
        if !principal.may_use(&ask.stream) {
            return Err(EngineError::Denied(principal.denied(&ask.stream)));
        }
        let status = self.core.request_status(&ask.stream, &ask.key, self.policy.idempotency_window).await?;
        serde_json::to_vec(&rest::status_json(&ask.stream, &ask.key, status))
            .map_err(|e| EngineError::Internal(e.to_string()))
    }

    async fn info(&self, principal: Principal, descriptor: FlightDescriptor) -> Result<FlightInfo, EngineError> {
        let stream = stream_of(&descriptor)?;
        if !principal.may_use(&stream) {
            return Err(EngineError::Denied(principal.denied(&stream)));
        }
        // A followable stream's endpoint is its follow ticket (everything from the start, then live).
        let follow = self.core.mapping(&stream, true).is_ok_and(|m| m.follow);
        match self.core.describe(&stream).await? {
            Some(schema) => FlightInfo::new()
                .try_with_schema(&schema)
                .map(|i| {
                    let i = i.with_descriptor(descriptor).with_total_records(-1).with_total_bytes(-1);
                    if follow {
                        let ticket = serde_json::json!({"follow": stream, "after": "start"}).to_string();
                        i.with_endpoint(arrow_flight::FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                    } else {
                        i
                    }
                })
                .map_err(|e| EngineError::Internal(e.to_string())),
            None => Err(EngineError::NotFound(format!("stream {stream:?} has no table yet (main.{stream})"))),
        }
    }
}

/// A follow ticket's stream, start and end; `None` for a ticket that is not one (Flight SQL's are protobuf).
fn follow_ticket(ticket: &[u8]) -> Option<Result<(String, After, Until), EngineError>> {
    let value: serde_json::Value = serde_json::from_slice(ticket).ok()?;
    let stream = value.get("follow")?;
    Some((|| {
        let stream = stream
            .as_str()
            .ok_or_else(|| EngineError::BadInput("a follow ticket's \"follow\" must be a stream name".into()))?;
        // Numbers may come as JSON numbers or as text.
        let field = |name: &str| match value.get(name) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(other) => Some(other.to_string()),
        };
        let after = After::parse(field("after").as_deref().unwrap_or("start"))?;
        let until = Until::parse(field("wait").as_deref(), field("max_rows").as_deref())?;
        Ok((stream.to_string(), after, until))
    })())
}

/// A follower's Flight data: the schema, then each batch with the cursor of its last row as its `app_metadata`
/// (decimal text: pass it back as `after` to resume exactly after that row).
fn follow_data(schema: arrow::datatypes::SchemaRef, rows: FollowStream) -> BoxStream<FlightData> {
    let options = IpcWriteOptions::default();
    let first: FlightData = arrow_flight::SchemaAsIpc::new(&schema, &options).into();
    // One encoder for the call: each batch is encoded once, without the schema again.
    let mut encoder = match crate::proto::ipc_out::StreamOut::start(&schema) {
        Ok((encoder, _)) => encoder,
        Err(e) => {
            let e = EngineError::Internal(format!("encoding a followed stream: {e}"));
            return Box::pin(futures::stream::once(async move { Err(status::grpc_of(&e)) }));
        }
    };
    let batches = rows.map(move |item| {
        let (batch, cursor) = item?;
        let messages = encoder
            .flight(&batch, cursor.to_string().into_bytes().into())
            .map_err(|e| EngineError::Internal(format!("encoding a followed batch: {e}")))?;
        Ok::<_, EngineError>(futures::stream::iter(messages.into_iter().map(Ok::<_, EngineError>)))
    });
    let all = futures::stream::once(async move { Ok::<_, EngineError>(first) }).chain(batches.try_flatten());
    Box::pin(all.map_err(|e| status::grpc_of(&e)))
}

fn unimplemented(method: &str) -> Status {
    status::grpc(Code::Unimplemented, format!("arrowport does not implement Flight {method}; use DoPut to send data"))
}

/// Runs a handler behind the panic boundary, so a panic cannot take the listener down.
async fn guarded<T>(f: impl Future<Output = Result<T, EngineError>>) -> Result<T, Status> {
    match crate::panic::contain_future("serving a Flight call", f).await {
        Ok(r) => r.map_err(|e| status::grpc_of(&e)),
        Err(p) => Err(status::grpc_of(&p.into())),
    }
}

#[tonic::async_trait]
impl<S: Session> FlightService for FlightAdapter<S> {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    /// Basic authentication (`authenticate_basic_token` in pyarrow): the gate checked `name:secret`; the
    /// answer carries `authorization: Bearer <secret>` for the client's later calls.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let bearer = request.extensions().get::<ProvenBearer>().cloned();
        let mut response: Response<Self::HandshakeStream> =
            Response::new(Box::pin(futures::stream::once(async { Ok(HandshakeResponse::default()) })));
        if let Some(ProvenBearer(secret)) = bearer {
            let value = format!("Bearer {secret}")
                .parse()
                .map_err(|_| status::grpc(Code::InvalidInput, "the token cannot be sent back"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let principal = principal_of(&request).map_err(|e| status::grpc_of(&e))?;
        let mut streams = guarded(self.core.streams()).await?;
        streams.retain(|s| principal.may_use(&s.mapping.stream));
        let mut infos = Vec::with_capacity(streams.len());
        // Streams whose table exists yet: only those have a schema to show.
        for (name, schema) in streams.into_iter().filter_map(|s| s.schema.map(|schema| (s.mapping.stream, schema))) {
            let info = FlightInfo::new()
                .try_with_schema(&schema)
                .map_err(|e| status::grpc_of(&EngineError::Internal(e.to_string())))?
                .with_descriptor(FlightDescriptor::new_path(vec![name]))
                .with_total_records(-1)
                .with_total_bytes(-1);
            infos.push(Ok(info));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let principal = principal_of(&request).map_err(|e| status::grpc_of(&e))?;
        let descriptor = request.into_inner();
        if let Some(command) = sql_command(&descriptor) {
            return guarded(self.sql.flight_info(principal, command, descriptor)).await.map(Response::new);
        }
        guarded(self.info(principal, descriptor)).await.map(Response::new)
    }

    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(unimplemented("PollFlightInfo"))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let principal = principal_of(&request).map_err(|e| status::grpc_of(&e))?;
        let descriptor = request.into_inner();
        let schema = match sql_command(&descriptor) {
            Some(command) => guarded(self.sql.schema(principal, command)).await?,
            None => {
                let info = guarded(self.info(principal, descriptor)).await?;
                info.try_decode_schema().map_err(|e| status::grpc_of(&EngineError::Internal(e.to_string())))?
            }
        };
        let result: SchemaResult = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| status::grpc_of(&EngineError::Internal(e.to_string())))?;
        Ok(Response::new(result))
    }

    /// A follow ticket (`{"follow": stream, "after": cursor}`), or a Flight SQL one (statement results and
    /// catalog listings).
    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let principal = principal_of(&request).map_err(|e| status::grpc_of(&e))?;
        if let Some(follow) = follow_ticket(&request.get_ref().ticket) {
            let (stream, after, until) = follow.map_err(|e| status::grpc_of(&e))?;
            let (schema, rows) =
                guarded(self.core.follow(&principal, &stream, after, Shape::Rows, until, "flight")).await?;
            return Ok(Response::new(follow_data(schema, rows)));
        }
        let Some(command) = flightsql::command_of(&request.get_ref().ticket) else {
            return Err(unimplemented("DoGet on a ticket that is not a Flight SQL one"));
        };
        let stream = guarded(self.sql.do_get(principal, command)).await?;
        Ok(Response::new(Box::pin(stream.map_err(|e| status::grpc_of(&e)))))
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        let result = guarded(self.put(request)).await?;
        Ok(Response::new(Box::pin(futures::stream::once(async move { Ok(result) }))))
    }

    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(unimplemented("DoExchange"))
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let principal = principal_of(&request).map_err(|e| status::grpc_of(&e))?;
        let action = request.into_inner();
        if action.r#type == REQUEST_STATUS {
            let body = guarded(self.request_status(principal, &action.body)).await?;
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(arrow_flight::Result {
                body: body.into(),
            })]))));
        }
        if action.r#type != flightsql::CREATE_PREPARED_STATEMENT && action.r#type != flightsql::CLOSE_PREPARED_STATEMENT
        {
            return Err(unimplemented(&format!("DoAction {:?}", action.r#type)));
        }
        let bodies = guarded(self.sql.action(principal, &action.r#type, &action.body)).await?;
        let results: Vec<Result<arrow_flight::Result, Status>> =
            bodies.into_iter().map(|body| Ok(arrow_flight::Result { body })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(results))))
    }

    async fn list_actions(&self, _: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let status = ActionType {
            r#type: REQUEST_STATUS.to_string(),
            description: "what became of a request: body {\"stream\": ..., \"key\": <its idempotency key>}".to_string(),
        };
        let actions = [flightsql::CREATE_PREPARED_STATEMENT, flightsql::CLOSE_PREPARED_STATEMENT]
            .map(|t| Ok(ActionType { r#type: t.to_string(), description: format!("Flight SQL {t}") }))
            .into_iter()
            .chain([Ok(status)]);
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_name_their_stream() {
        assert_eq!(stream_of(&FlightDescriptor::new_path(vec!["events".into()])).unwrap(), "events");
        assert_eq!(stream_of(&FlightDescriptor::new_cmd(r#"{"stream_name": "clicks"}"#)).unwrap(), "clicks");
        let e = stream_of(&FlightDescriptor::new_cmd("SELECT 1")).unwrap_err();
        assert!(e.to_string().starts_with("the CMD descriptor is not JSON"), "{e}");
        let e = stream_of(&FlightDescriptor::new_path(vec!["a".into(), "b".into()])).unwrap_err();
        assert!(e.to_string().contains("has 2 elements"), "{e}");
        let mut unknown = FlightDescriptor::new_path(vec!["x".into()]);
        unknown.r#type = 0;
        assert!(stream_of(&unknown).unwrap_err().to_string().starts_with("unknown descriptor type 0"));
    }

    #[test]
    fn oversized_messages_are_resource_exhausted() {
        let s =
            Status::out_of_range("Error, decoded message length too large: found 300 bytes, the limit is: 100 bytes");
        let e = transport_error(&s);
        assert_eq!(status::grpc_of(&e).code(), tonic::Code::ResourceExhausted);
    }
}
