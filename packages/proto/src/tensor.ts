import { create } from "@bufbuild/protobuf";
import { DType, TensorSchema, type Tensor } from "./gen/strata/v1/tensor_pb.ts";

export function f32Tensor(values: Float32Array, shape: number[]): Tensor {
  return create(TensorSchema, {
    dtype: DType.F32,
    shape,
    data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength),
  });
}

export class TensorShapeError extends Error {
  override name = "TensorShapeError";
}

// Decoded `bytes` are views at arbitrary offsets: copy into an aligned buffer before viewing as f32.
export function readF32Tensor(tensor: Tensor | undefined, expectedShape: number[], what: string): Float32Array {
  if (!tensor) throw new TensorShapeError(`${what}: missing tensor, expected f32 [${expectedShape.join(", ")}]`);
  if (tensor.dtype !== DType.F32) {
    throw new TensorShapeError(`${what}: dtype ${DType[tensor.dtype] ?? tensor.dtype} is not supported, expected F32`);
  }
  const shapeMatches =
    tensor.shape.length === expectedShape.length && tensor.shape.every((d, i) => d === expectedShape[i]);
  if (!shapeMatches) {
    throw new TensorShapeError(`${what}: shape [${tensor.shape.join(", ")}] does not match expected [${expectedShape.join(", ")}]`);
  }
  const expectedBytes = expectedShape.reduce((a, b) => a * b, 1) * 4;
  if (tensor.data.byteLength !== expectedBytes) {
    throw new TensorShapeError(`${what}: ${tensor.data.byteLength} bytes for shape [${expectedShape.join(", ")}], expected ${expectedBytes}`);
  }
  const out = new Float32Array(expectedBytes / 4);
  new Uint8Array(out.buffer).set(tensor.data);
  return out;
}
