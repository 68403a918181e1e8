import type { Http2Server, ServerHttp2Session } from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary, type DescMessage, type DescService, type MessageShape } from "@bufbuild/protobuf";

// grpc-js wants a ServiceDefinition; protobuf-es gives us a service descriptor. Build the first
// from the second so the generated schemas stay the only description of the wire format.
export function grpcServiceDefinition(service: DescService): grpc.ServiceDefinition {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: serializer(method.input) as (value: unknown) => Buffer,
      requestDeserialize: deserializer(method.input),
      responseSerialize: serializer(method.output) as (value: unknown) => Buffer,
      responseDeserialize: deserializer(method.output),
      originalName: method.name,
    };
  }
  return definition;
}

function serializer<D extends DescMessage>(schema: D): (value: MessageShape<D>) => Buffer {
  return (value) => {
    const bytes = toBinary(schema, value);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

function deserializer<D extends DescMessage>(schema: D): (bytes: Buffer) => MessageShape<D> {
  return (bytes) => fromBinary(schema, bytes);
}

export function grpcClientConstructor(service: DescService): grpc.ServiceClientConstructor {
  return grpc.makeGenericClientConstructor(grpcServiceDefinition(service), service.typeName);
}

/**
 * HTTP/2 flow-control window for stage-to-stage streams, each way. At the 64 KiB default a
 * hidden state larger than the window (a 256-token prefill chunk at hidden 512 is 512 KiB) waits
 * for WINDOW_UPDATEs that the receiving stage sends only between its own steps: measured
 * arriving 156 ms after it was sent, instead of 2.5 ms.
 */
export const STREAM_WINDOW_BYTES = 16 * 1024 * 1024;

// Hidden states can be large; the defaults (4 MiB receive) are too small for big micro-batches.
export const grpcChannelOptions: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": 1 << 30,
  "grpc.max_send_message_length": 1 << 30,
  // The receive window of the channel's HTTP/2 connection (see STREAM_WINDOW_BYTES).
  "grpc-node.flow_control_window": STREAM_WINDOW_BYTES,
  // A stage that restarts is back within seconds on the same address: try it again within 1 s,
  // not after grpc-js's default backoff (1 s growing to 120 s), while every stream and RPC on
  // the channel is refused.
  "grpc.initial_reconnect_backoff_ms": 200,
  "grpc.max_reconnect_backoff_ms": 1000,
};

/**
 * Gives every HTTP/2 session `server` accepts receive windows of STREAM_WINDOW_BYTES (per stream
 * and for the connection): grpc-js has an option for its clients' windows, none for its servers'.
 * Call after binding. Reaches into grpc-js's listening servers (a private field of the pinned
 * version); without them the defaults stay, which is slower, not wrong.
 */
export function widenServerReceiveWindows(server: grpc.Server): boolean {
  const listening = (server as unknown as { http2Servers?: Map<Http2Server, unknown> }).http2Servers;
  if (!(listening instanceof Map)) return false;
  for (const http2Server of listening.keys()) {
    http2Server.on("session", (session: ServerHttp2Session) => {
      session.settings({ initialWindowSize: STREAM_WINDOW_BYTES });
      session.setLocalWindowSize(STREAM_WINDOW_BYTES);
    });
  }
  return listening.size > 0;
}
