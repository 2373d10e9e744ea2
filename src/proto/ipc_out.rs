//! Arrow IPC streams out, with custom metadata on each record batch's message (arrow-rs's writers put custom
//! metadata on the schema and a file's footer only): a followed batch carries its cursor this way, for readers
//! that read message metadata (pyarrow's `read_next_batch_with_custom_metadata`).

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::error::ArrowError;
use arrow::ipc as fb;
use arrow::ipc::writer::{
    DictionaryTracker, EncodedData, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, write_message,
};

/// The end-of-stream marker: a continuation and a zero length.
pub const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// Writes one IPC stream's messages as bytes: the schema first, then batches (with their dictionaries).
pub struct StreamOut {
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    options: IpcWriteOptions,
    context: IpcWriteContext,
}

impl StreamOut {
    /// The writer, and the schema message that starts the stream.
    pub fn start(schema: &Schema) -> Result<(StreamOut, Vec<u8>), ArrowError> {
        let generator = IpcDataGenerator::default();
        let mut tracker = DictionaryTracker::new(false);
        let options = IpcWriteOptions::default();
        let encoded = generator.schema_to_bytes_with_dictionary_tracker(schema, &mut tracker, &options);
        let mut out = Vec::new();
        write_message(&mut out, encoded, &options)?;
        Ok((StreamOut { generator, tracker, options, context: IpcWriteContext::default() }, out))
    }

    /// A batch as Flight data: its dictionaries' messages, then its own, whose `app_metadata` is `app_metadata`.
    pub fn flight(
        &mut self,
        batch: &RecordBatch,
        app_metadata: bytes::Bytes,
    ) -> Result<Vec<arrow_flight::FlightData>, ArrowError> {
        let (dictionaries, message) =
            self.generator.encode(batch, &mut self.tracker, &self.options, &mut self.context)?;
        let mut out: Vec<arrow_flight::FlightData> = dictionaries.into_iter().map(Into::into).collect();
        let mut last: arrow_flight::FlightData = message.into();
        last.app_metadata = app_metadata;
        out.push(last);
        Ok(out)
    }

    /// A batch's messages, the batch's own carrying `metadata` as its custom metadata.
    pub fn batch(&mut self, batch: &RecordBatch, metadata: &[(&str, &str)]) -> Result<Vec<u8>, ArrowError> {
        let (dictionaries, message) =
            self.generator.encode(batch, &mut self.tracker, &self.options, &mut self.context)?;
        let mut out = Vec::new();
        for d in dictionaries {
            write_message(&mut out, d, &self.options)?;
        }
        let message = EncodedData {
            ipc_message: with_custom_metadata(&message.ipc_message, metadata)?,
            arrow_data: message.arrow_data,
        };
        write_message(&mut out, message, &self.options)?;
        Ok(out)
    }
}

/// A record batch message (flatbuffer) rebuilt with `metadata` as its custom metadata.
fn with_custom_metadata(message: &[u8], metadata: &[(&str, &str)]) -> Result<Vec<u8>, ArrowError> {
    let parsed = fb::root_as_message(message).map_err(|e| ArrowError::IpcError(format!("a batch message: {e}")))?;
    let batch = parsed
        .header_as_record_batch()
        .ok_or_else(|| ArrowError::IpcError("a batch message without a record batch".into()))?;
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let nodes: Vec<fb::FieldNode> = batch.nodes().map(|v| v.iter().copied().collect()).unwrap_or_default();
    let buffers: Vec<fb::Buffer> = batch.buffers().map(|v| v.iter().copied().collect()).unwrap_or_default();
    let variadic: Option<Vec<i64>> = batch.variadicBufferCounts().map(|v| v.iter().collect());
    let nodes = fbb.create_vector(&nodes);
    let buffers = fbb.create_vector(&buffers);
    let variadic = variadic.map(|v| fbb.create_vector(&v));
    let compression = batch.compression().map(|c| {
        fb::BodyCompression::create(&mut fbb, &fb::BodyCompressionArgs { codec: c.codec(), method: c.method() })
    });
    let header = fb::RecordBatch::create(
        &mut fbb,
        &fb::RecordBatchArgs {
            length: batch.length(),
            nodes: Some(nodes),
            buffers: Some(buffers),
            compression,
            variadicBufferCounts: variadic,
        },
    );
    let pairs: Vec<_> = metadata
        .iter()
        .map(|(k, v)| {
            let (key, value) = (fbb.create_string(k), fbb.create_string(v));
            fb::KeyValue::create(&mut fbb, &fb::KeyValueArgs { key: Some(key), value: Some(value) })
        })
        .collect();
    let custom = fbb.create_vector(&pairs);
    let rebuilt = fb::Message::create(
        &mut fbb,
        &fb::MessageArgs {
            version: parsed.version(),
            header_type: fb::MessageHeader::RecordBatch,
            header: Some(header.as_union_value()),
            bodyLength: parsed.bodyLength(),
            custom_metadata: Some(custom),
        },
    );
    fbb.finish(rebuilt, None);
    Ok(fbb.finished_data().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;
    use std::sync::Arc;

    #[test]
    fn batches_carry_their_metadata_and_read_back_whole() {
        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            ("name", Arc::new(StringArray::from(vec![Some("x"), None, Some("z")])) as _),
            ("kind", Arc::new(dict) as _),
        ])
        .unwrap();
        let (mut out, mut bytes) = StreamOut::start(&batch.schema()).unwrap();
        bytes.extend(out.batch(&batch, &[("arrowport_cursor", "3")]).unwrap());
        bytes.extend(out.batch(&batch.slice(1, 2), &[("arrowport_cursor", "5")]).unwrap());
        bytes.extend(END_OF_STREAM);
        let read: Vec<RecordBatch> =
            arrow::ipc::reader::StreamReader::try_new(&bytes[..], None).unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(read, vec![batch.clone(), batch.slice(1, 2)]);
        // The second batch's message (after the schema, a dictionary and the first batch) names its cursor.
        let mut at = 0;
        let mut cursors = Vec::new();
        while at + 8 <= bytes.len() {
            let len = i32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            let message = fb::root_as_message(&bytes[at + 8..at + 8 + len]).unwrap();
            if let Some(kv) = message.custom_metadata() {
                cursors.extend(kv.iter().map(|kv| (kv.key().unwrap().to_string(), kv.value().unwrap().to_string())));
            }
            at += 8 + len + message.bodyLength() as usize;
        }
        assert_eq!(cursors, [("arrowport_cursor".into(), "3".into()), ("arrowport_cursor".into(), "5".into())]);
    }
}
