export * from "./gen/strata/v1/tensor_pb.ts";
export * from "./gen/strata/v1/worker_pb.ts";
export * from "./gen/strata/v1/events_pb.ts";
export { grpcServiceDefinition, grpcClientConstructor, grpcChannelOptions, STREAM_WINDOW_BYTES, widenServerReceiveWindows } from "./grpc.ts";
export { f32Tensor, readF32Tensor, TensorShapeError } from "./tensor.ts";
