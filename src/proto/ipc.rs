//! Arrow IPC streams from bytes that arrive in pieces (an HTTP body), decoded as they come.
//!
//! A small framer cuts the byte stream into whole IPC messages first, checking each message's declared sizes
//! against the limit *before* anything is buffered for it, so a client cannot make us allocate what it only
//! claims to send. Whole messages become Flight messages and go through the same decoder as Flight `DoPut`
//! ([`flight_items`]), so both protocols decode alike. The output is the ingest core's [`Incoming`]: the schema
//! once, then batches. Nothing here knows HTTP or DuckDB.

use arrow::buffer::{Buffer, MutableBuffer};
use arrow_flight::FlightData;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};

use std::sync::Arc;

use crate::engine::budget::{Budget, Reservation};
use crate::engine::error::EngineError;
use crate::engine::ingest::Incoming;

const CONTINUATION: u32 = 0xFFFF_FFFF;

/// A message body's buffer is allocated for its whole declared size up to this much; past it, as the body arrives.
const EAGER_BODY: usize = 16 << 20;

/// What decoding a request's messages may use: the listener's message limit, and the host's memory budget the
/// request reserves each message from before it reads (and decompresses) it.
#[derive(Debug, Clone)]
pub struct Decoding {
    pub max_message: usize,
    pub budget: Arc<Budget>,
    pub reservation: Reservation,
    pub schema: SchemaLimits,
}

/// What a request's schema may hold (`max_columns`, `max_schema_bytes`): a schema is cheap to send and dear to
/// take in (DuckDB builds a column, a vector and a scan for each field), so it is bounded before it is decoded
/// and its fields are charged to the memory budget for the whole request.
#[derive(Debug, Clone, Copy)]
pub struct SchemaLimits {
    /// Fields, nested ones included.
    pub max_columns: usize,
    /// Bytes of the schema message's metadata.
    pub max_bytes: usize,
}

/// What each field of a request's schema is charged to the memory budget while the request lives: what taking a
/// wide schema in costs the host per field (measured: 100,000 fields grew the host by about 1.9 GB).
pub const BYTES_PER_FIELD: usize = 20 << 10;

impl SchemaLimits {
    pub fn of(policy: &crate::engine::policy::Policy) -> SchemaLimits {
        SchemaLimits { max_columns: policy.max_columns, max_bytes: policy.max_schema_bytes }
    }
}

impl Default for SchemaLimits {
    fn default() -> SchemaLimits {
        SchemaLimits {
            max_columns: crate::engine::policy::MAX_COLUMNS,
            max_bytes: crate::engine::policy::MAX_SCHEMA_BYTES,
        }
    }
}

impl Decoding {
    pub fn new(max_message: usize, budget: Arc<Budget>, reservation: Reservation) -> Decoding {
        Decoding { max_message, budget, reservation, schema: SchemaLimits::default() }
    }

    /// The same, with these schema limits.
    pub fn with_schema_limits(mut self, schema: SchemaLimits) -> Decoding {
        self.schema = schema;
        self
    }

    /// No memory budget: for decoding that holds nothing (tests, the in-process fuzzing).
    pub fn unbudgeted(max_message: usize) -> Decoding {
        Decoding::new(max_message, Arc::new(Budget::new(usize::MAX)), Reservation::default())
    }

    /// Reserves `bytes` for the request, before they are read or allocated.
    pub fn reserve(&self, bytes: usize) -> Result<(), EngineError> {
        self.reservation.reserve(&self.budget, bytes)
    }
}

/// Cuts a byte stream into whole IPC messages: each message's metadata, and its body in a buffer of its own.
///
/// The body is copied once, from the network's chunks straight into a 64-byte aligned buffer allocated for it
/// when its metadata has arrived (and its declared size has passed the limit), so the Arrow decoder uses it
/// where it is: it copies a whole body that does not start on 64 bytes.
#[derive(Debug)]
pub struct Framer {
    /// Bytes not yet framed: the start of a message's prefix and metadata.
    buf: BytesMut,
    /// A message whose metadata is complete and whose body is being filled.
    body: Option<Body>,
    max_message: usize,
    decoding: Decoding,
    ended: bool,
}

#[derive(Debug)]
struct Body {
    header: Bytes,
    data: MutableBuffer,
    size: usize,
}

impl Body {
    fn complete(&self) -> bool {
        self.data.len() == self.size
    }
}

impl Framer {
    pub fn new(decoding: Decoding) -> Framer {
        Framer { buf: BytesMut::new(), body: None, max_message: decoding.max_message, decoding, ended: false }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        if self.ended && !bytes.is_empty() {
            return Err(EngineError::BadInput("invalid Arrow IPC stream: data after the end-of-stream marker".into()));
        }
        // What arrives is reserved as it arrives: a message's declared size is checked against the limit, but
        // only the bytes actually sent hold the memory budget, so a claim that is never sent holds nothing.
        self.decoding.reserve(bytes.len())?;
        let mut rest = bytes;
        if let Some(body) = self.body.as_mut() {
            let take = (body.size - body.data.len()).min(rest.len());
            body.data.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        self.buf.extend_from_slice(rest);
        Ok(())
    }

    /// The next whole message, if the bytes pushed so far hold one.
    pub fn next_message(&mut self) -> Result<Option<FlightData>, EngineError> {
        if self.body.is_some() {
            return Ok(self.finished());
        }
        if self.ended || self.buf.len() < 4 {
            return Ok(None);
        }
        let first = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let (prefix, len) = if first == CONTINUATION {
            if self.buf.len() < 8 {
                return Ok(None);
            }
            (8, u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize)
        } else {
            (4, first as usize)
        };
        if len == 0 {
            self.ended = true;
            self.buf.advance(prefix);
            if !self.buf.is_empty() {
                return Err(EngineError::BadInput(
                    "invalid Arrow IPC stream: data after the end-of-stream marker".into(),
                ));
            }
            return Ok(None);
        }
        if len > self.max_message {
            return Err(too_large(len, self.max_message));
        }
        if self.buf.len() < prefix + len {
            return Ok(None);
        }
        let message = arrow::ipc::root_as_message(&self.buf[prefix..prefix + len]).map_err(|e| {
            EngineError::BadInput(format!("invalid Arrow IPC data: the message header does not parse: {e}"))
        })?;
        let size = usize::try_from(message.bodyLength())
            .map_err(|_| EngineError::BadInput("invalid Arrow IPC data: negative body length".into()))?;
        if size > self.max_message.saturating_sub(len) {
            return Err(too_large(len.saturating_add(size), self.max_message));
        }
        let header = self.buf.split_to(prefix + len).freeze().slice(prefix..);
        // Room for what has arrived and a few more chunks; the rest grows as the body comes (a claim that is never
        // sent allocates nothing).
        let mut data = MutableBuffer::with_capacity(size.min(self.buf.len().max(EAGER_BODY)));
        let have = size.min(self.buf.len());
        data.extend_from_slice(&self.buf[..have]);
        self.buf.advance(have);
        self.body = Some(Body { header, data, size });
        Ok(self.finished())
    }

    /// The message whose body is being filled, once its body is complete.
    fn finished(&mut self) -> Option<FlightData> {
        let body = self.body.take_if(|b| b.complete())?;
        Some(flight_data(body.header, body.data))
    }

    /// Whether the input may end here: at a message boundary (with or without the end-of-stream marker).
    pub fn at_boundary(&self) -> bool {
        self.buf.is_empty() && self.body.is_none()
    }
}

/// A framed message as the Flight message carrying it.
fn flight_data(header: Bytes, body: MutableBuffer) -> FlightData {
    let body = Bytes::from_owner(Buffer::from(body));
    FlightData { flight_descriptor: None, data_header: header, app_metadata: Bytes::new(), data_body: body }
}

fn too_large(size: usize, max: usize) -> EngineError {
    EngineError::TooLarge(format!("an Arrow IPC message of {size} bytes is over the listener's limit of {max} bytes"))
}

/// How many bytes a message's buffers claim once decompressed: each compressed buffer (LZ4 or ZSTD) starts with
/// its uncompressed length, which the decoder allocates before it decompresses. 0 for a message without body
/// compression, and for what does not parse (the decoder reports that).
pub fn decompressed_claim(header: &[u8], body: &[u8]) -> u64 {
    let Ok(message) = arrow::ipc::root_as_message(header) else { return 0 };
    let batch = match message.header_type() {
        arrow::ipc::MessageHeader::RecordBatch => message.header_as_record_batch(),
        arrow::ipc::MessageHeader::DictionaryBatch => message.header_as_dictionary_batch().and_then(|d| d.data()),
        _ => None,
    };
    let Some(batch) = batch.filter(|b| b.compression().is_some()) else { return 0 };
    let mut total: u64 = 0;
    for buffer in batch.buffers().into_iter().flatten() {
        let (Ok(offset), Ok(length)) = (usize::try_from(buffer.offset()), usize::try_from(buffer.length())) else {
            continue;
        };
        if length < 8 {
            continue;
        }
        let Some(prefix) = offset.checked_add(8).and_then(|end| body.get(offset..end)) else { continue };
        let claimed = i64::from_le_bytes(prefix.try_into().unwrap_or([0; 8]));
        // -1: stored uncompressed, as the buffer's own length says; other negatives the decoder refuses.
        total = total.saturating_add(u64::try_from(claimed).unwrap_or(0));
    }
    total
}

/// Refuses a message whose buffers claim more decompressed bytes than the listener's message limit, and
/// reserves the claim from the memory budget, before the decoder allocates for it.
fn check_claim(message: &FlightData, decoding: &Decoding) -> Result<(), EngineError> {
    check_schema(&message.data_header, decoding)?;
    let max_message = decoding.max_message;
    let claim = decompressed_claim(&message.data_header, &message.data_body);
    if claim > max_message as u64 {
        return Err(EngineError::TooLarge(format!(
            "an Arrow IPC message claims {claim} bytes once decompressed, over the listener's limit of {max_message} bytes \
             (max_message_bytes)"
        )));
    }
    decoding.reserve(claim as usize)
}

/// Refuses a schema message over the listener's schema limits, before it is decoded, and charges an admitted
/// schema's fields to the memory budget for the rest of the request.
fn check_schema(header: &[u8], decoding: &Decoding) -> Result<(), EngineError> {
    let Ok(message) = arrow::ipc::root_as_message(header) else { return Ok(()) };
    let Some(schema) = message.header_as_schema() else { return Ok(()) };
    let limits = decoding.schema;
    if header.len() > limits.max_bytes {
        return Err(EngineError::TooLarge(format!(
            "the Arrow schema takes {} bytes, over the listener's limit of {} bytes (max_schema_bytes)",
            header.len(),
            limits.max_bytes
        )));
    }
    let fields = count_fields(schema.fields().into_iter().flatten(), limits.max_columns);
    if fields > limits.max_columns {
        return Err(EngineError::TooLarge(format!(
            "the Arrow schema has more than {} fields (nested fields count), over the listener's limit (max_columns)",
            limits.max_columns
        )));
    }
    decoding.reservation.pin(decoding.budget.charge(fields.saturating_mul(BYTES_PER_FIELD))?);
    Ok(())
}

/// Fields and their nested fields, counted up to just past `limit`. The flatbuffer verifier has bounded the
/// nesting depth (64) before this runs.
fn count_fields<'a>(fields: impl IntoIterator<Item = arrow::ipc::Field<'a>>, limit: usize) -> usize {
    fn walk<'a>(fields: impl IntoIterator<Item = arrow::ipc::Field<'a>>, limit: usize, n: &mut usize) {
        for field in fields {
            *n += 1;
            if *n > limit {
                return;
            }
            if let Some(children) = field.children() {
                walk(children, limit, n);
            }
        }
    }
    let mut n = 0;
    walk(fields, limit, &mut n);
    n
}

/// Decoded Flight messages (REST bodies are framed into the same messages) as the ingest core's items: the
/// schema, then batches. A compressed message that claims more than `max_message` bytes decompressed is refused
/// before it is decoded; decoder panics (arrow-ipc has some on malformed input) become bad input.
pub fn flight_items<S>(
    messages: S,
    decoding: Decoding,
) -> impl Stream<Item = Result<Incoming, EngineError>> + Send + Unpin
where
    S: Stream<Item = Result<FlightData, FlightError>> + Send + 'static,
{
    let checked = messages.map(move |m| {
        m.and_then(|m| check_claim(&m, &decoding).map(|()| m).map_err(|e| FlightError::ExternalError(Box::new(e))))
    });
    let decoded = crate::panic::contain_stream("decoding Arrow IPC", FlightDataDecoder::new(checked));
    Box::pin(decoded.filter_map(|item| async move {
        match item {
            Ok(Ok(decoded)) => match decoded.payload {
                DecodedPayload::None => None,
                DecodedPayload::Schema(s) => Some(Ok(Incoming::Schema(s))),
                DecodedPayload::RecordBatch(b) => Some(Ok(Incoming::Batch(b))),
            },
            Ok(Err(e)) => Some(Err(decode_error(e))),
            Err(panic) => Some(Err(EngineError::BadInput(format!("invalid Arrow IPC data: {}", panic.message)))),
        }
    }))
}

fn decode_error(e: FlightError) -> EngineError {
    match e {
        FlightError::ExternalError(inner) => match inner.downcast::<EngineError>() {
            Ok(ours) => *ours,
            Err(other) => EngineError::BadInput(format!("invalid Arrow IPC data: {other}")),
        },
        FlightError::Arrow(e) => EngineError::BadInput(format!("invalid Arrow IPC data: {e}")),
        other => EngineError::BadInput(format!("invalid Arrow IPC data: {other}")),
    }
}

/// Cuts a byte stream into Flight messages, with the framer's size checks; input errors pass through.
fn framed<S>(input: S, decoding: Decoding) -> impl Stream<Item = Result<FlightData, FlightError>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, EngineError>> + Send + Unpin + 'static,
{
    let ours = |e: EngineError| FlightError::ExternalError(Box::new(e));
    futures::stream::unfold(
        (input, Framer::new(decoding), false),
        move |(mut input, mut framer, mut done)| async move {
            loop {
                if done {
                    return None;
                }
                match framer.next_message() {
                    Err(e) => {
                        done = true;
                        return Some((Err(ours(e)), (input, framer, done)));
                    }
                    Ok(Some(message)) => return Some((Ok(message), (input, framer, done))),
                    Ok(None) => {}
                }
                match input.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(e) = framer.push(&chunk) {
                            done = true;
                            return Some((Err(ours(e)), (input, framer, done)));
                        }
                    }
                    Some(Err(e)) => {
                        done = true;
                        return Some((Err(ours(e)), (input, framer, done)));
                    }
                    None => {
                        done = true;
                        if !framer.at_boundary() {
                            let e = EngineError::BadInput(
                                "invalid Arrow IPC stream: the body ends in the middle of a message".into(),
                            );
                            return Some((Err(ours(e)), (input, framer, done)));
                        }
                    }
                }
            }
        },
    )
}

/// Decodes an Arrow IPC stream from byte chunks (an HTTP body). Input errors pass through as they are.
pub fn ipc_stream<S>(input: S, decoding: Decoding) -> impl Stream<Item = Result<Incoming, EngineError>> + Send + Unpin
where
    S: Stream<Item = Result<Bytes, EngineError>> + Send + Unpin + 'static,
{
    let mut saw_schema = false;
    let mut ended = false;
    let items = flight_items(framed(input, decoding.clone()), decoding).map(Some);
    Box::pin(items.chain(futures::stream::once(async { None })).filter_map(move |item| {
        let out = match item {
            _ if ended => None,
            Some(Ok(Incoming::Schema(s))) => {
                saw_schema = true;
                Some(Ok(Incoming::Schema(s)))
            }
            Some(other) => Some(other),
            None if !saw_schema => {
                Some(Err(EngineError::BadInput("the body holds no Arrow IPC stream (no schema message)".into())))
            }
            None => None,
        };
        if matches!(out, Some(Err(_))) {
            ended = true;
        }
        futures::future::ready(out)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::StreamWriter;
    use std::sync::Arc;

    fn ipc(rows: i64, batches: usize) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &schema).unwrap();
        for _ in 0..batches {
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values(0..rows)),
                    Arc::new(StringArray::from_iter_values((0..rows).map(|i| i.to_string()))),
                ],
            )
            .unwrap();
            w.write(&b).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        out
    }

    async fn collect(chunks: Vec<Vec<u8>>, max: usize) -> Vec<Result<Incoming, EngineError>> {
        let input = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))));
        ipc_stream(input, Decoding::unbudgeted(max)).collect().await
    }

    fn rows(items: &[Result<Incoming, EngineError>]) -> (usize, usize) {
        let mut schemas = 0;
        let mut rows = 0;
        for i in items {
            match i {
                Ok(Incoming::Schema(_)) => schemas += 1,
                Ok(Incoming::Batch(b)) => rows += b.num_rows(),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        (schemas, rows)
    }

    #[tokio::test]
    async fn decodes_across_any_chunking() {
        let bytes = ipc(100, 3);
        for size in [1, 7, 64, 1000, bytes.len()] {
            let chunks = bytes.chunks(size).map(|c| c.to_vec()).collect();
            assert_eq!(rows(&collect(chunks, 1 << 20).await), (1, 300), "chunk size {size}");
        }
    }

    #[tokio::test]
    async fn a_body_lands_aligned_and_the_decoder_uses_it_in_place() {
        let bytes = ipc(200_000, 1);
        let mut framer = Framer::new(Decoding::unbudgeted(64 << 20));
        let mut messages = Vec::new();
        for chunk in bytes.chunks(65_536) {
            framer.push(chunk).unwrap();
            while let Some(m) = framer.next_message().unwrap() {
                messages.push(m);
            }
        }
        assert!(framer.at_boundary());
        let [_, batch] = &messages[..] else { panic!("{} messages", messages.len()) };
        let body = batch.data_body.clone();
        assert!(body.len() > 1 << 20 && (body.as_ptr() as usize).is_multiple_of(64));
        let decoded: Vec<_> =
            flight_items(futures::stream::iter(messages.into_iter().map(Ok)), Decoding::unbudgeted(64 << 20))
                .collect()
                .await;
        let [Ok(Incoming::Schema(_)), Ok(Incoming::Batch(decoded))] = &decoded[..] else { panic!("{decoded:?}") };
        let ids = decoded.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let at = ids.values().as_ptr() as usize;
        assert!((body.as_ptr() as usize..body.as_ptr() as usize + body.len()).contains(&at), "the ids were copied");
        assert_eq!(ids.value(199_999), 199_999);
    }

    #[tokio::test]
    async fn a_batch_with_an_empty_body_is_not_lost() {
        // Only NULL-typed columns: the batch message has no body bytes at all.
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Null, true)]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(arrow::array::NullArray::new(3))]).unwrap();
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        assert_eq!(rows(&collect(vec![out], 1 << 20).await), (1, 3));
    }

    #[tokio::test]
    async fn a_cut_body_is_an_error_not_a_short_stream() {
        let bytes = ipc(100, 3);
        let cut = bytes[..bytes.len() - 40].to_vec();
        let items = collect(vec![cut], 1 << 20).await;
        let err = items.into_iter().find_map(|i| i.err()).expect("an error");
        assert!(err.to_string().contains("ends in the middle of a message"), "{err}");
    }

    #[tokio::test]
    async fn declared_sizes_over_the_limit_are_refused_before_buffering() {
        let bytes = ipc(10_000, 1);
        let items = collect(vec![bytes], 4096).await;
        let err = items.into_iter().find_map(|i| i.err()).expect("an error");
        assert!(matches!(err, EngineError::TooLarge(_)), "{err:?}");
        // A header that claims 2 GiB is refused from its first 8 bytes.
        let mut framer = Framer::new(Decoding::unbudgeted(1 << 20));
        framer.push(&[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x80]).unwrap();
        assert!(matches!(framer.next_message(), Err(EngineError::TooLarge(_))));
    }

    #[tokio::test]
    async fn compressed_buffers_claiming_too_much_are_refused_before_decoding() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from_iter_values(0..1237))]).unwrap();
        let options = arrow::ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))
            .unwrap();
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new_with_options(&mut out, &schema, options).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        // The data buffer's prefix says 1237 * 8 bytes; say 2^40 instead.
        let honest = (1237i64 * 8).to_le_bytes();
        let at = out.windows(8).position(|w| w == honest).expect("the uncompressed length prefix");
        let items = collect(vec![out.clone()], 1 << 20).await;
        assert_eq!(rows(&items), (1, 1237));
        out[at..at + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
        let items = collect(vec![out], 1 << 20).await;
        let err = items.into_iter().find_map(|i| i.err()).expect("an error");
        assert!(
            matches!(&err, EngineError::TooLarge(m) if m.contains("claims 1099511627776 bytes once decompressed")),
            "{err:?}"
        );
    }

    /// In-process fuzzing of the decoders: mutated IPC streams (bit flips, overwritten 4- and 8-byte words,
    /// truncations, splices) through the framer and the Arrow decoder. Every input must end in batches or an
    /// error: no panic escapes, no allocation sized by a claim aborts the process, nothing hangs.
    #[tokio::test]
    async fn mutated_streams_end_in_batches_or_errors() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("l", DataType::List(Arc::new(Field::new("item", DataType::Int32, true))), true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc")])),
                Arc::new(arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Int32Type, _, _>(vec![
                    Some(vec![Some(1), None]),
                    None,
                    Some(vec![]),
                ])),
            ],
        )
        .unwrap();
        let mut seeds = Vec::new();
        for codec in [None, Some(arrow::ipc::CompressionType::LZ4_FRAME), Some(arrow::ipc::CompressionType::ZSTD)] {
            let options = arrow::ipc::writer::IpcWriteOptions::default().try_with_compression(codec).unwrap();
            let mut out = Vec::new();
            let mut w = StreamWriter::try_new_with_options(&mut out, &schema, options).unwrap();
            w.write(&batch).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
            drop(w);
            seeds.push(out);
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..200_000 {
            let mut b = seeds[(next() % 3) as usize].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % b.len().max(1);
                match next() % 5 {
                    0 => b[at] ^= 1 << (next() % 8),
                    1 if at + 4 <= b.len() => b[at..at + 4].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0x7F]),
                    2 if at + 8 <= b.len() => b[at..at + 8].copy_from_slice(&(1i64 << (next() % 63)).to_le_bytes()),
                    3 => b.truncate(at),
                    _ => {
                        let from = (next() as usize) % b.len().max(1);
                        let piece: Vec<u8> = b[from..(from + 16).min(b.len())].to_vec();
                        b.splice(at..at, piece);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            let items = collect(vec![b], 1 << 20).await;
            if items.iter().any(|i| i.is_err()) { refused += 1 } else { ok += 1 }
        }
        assert!(ok > 0 && refused > 0, "{ok} decoded, {refused} refused");
    }

    #[tokio::test]
    async fn garbage_and_empty_bodies_are_bad_input() {
        let items = collect(vec![b"definitely not arrow, but long enough".to_vec()], 1 << 20).await;
        assert!(items.iter().any(|i| matches!(i, Err(EngineError::BadInput(_)) | Err(EngineError::TooLarge(_)))));
        let items = collect(vec![], 1 << 20).await;
        assert!(matches!(&items[..], [Err(EngineError::BadInput(m))] if m.contains("no schema")));
    }
}
