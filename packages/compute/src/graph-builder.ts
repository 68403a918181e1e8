import { create, toBinary } from "@bufbuild/protobuf";
import {
  AttributeProto_AttributeType,
  AttributeProtoSchema,
  GraphProtoSchema,
  ModelProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  TensorProto_DataType,
  TensorProtoSchema,
  TensorShapeProto_DimensionSchema,
  TensorShapeProtoSchema,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type AttributeProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from "onnx-buf";

export type Dim = number | string;
export type ElemType = "float" | "int64";
export type AttrValue = number | number[] | string | { ints: number[] } | { float: number };

const ELEM_TYPES: Record<ElemType, TensorProto_DataType> = {
  float: TensorProto_DataType.FLOAT,
  int64: TensorProto_DataType.INT64,
};

/** onnxruntime's contrib operators (fused attention and norms) live in this domain. */
export const MS_DOMAIN = "com.microsoft";

// 23: the Attention operator (grouped-query heads, past K/V, additive mask).
const OPSET = 23;

// A small builder over onnx-buf's generated types: names are generated, weights become
// initializers so they live inside onnxruntime rather than being fed on every run.
export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private counter = 0;

  input(name: string, elemType: ElemType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  output(value: string, name: string, elemType: ElemType, dims: Dim[]): void {
    this.node("Identity", [value], {}, name);
    this.outputs.push(valueInfo(name, elemType, dims));
  }

  /**
   * A node's output made a graph output under its own name, without output's Identity: that is a
   * copy every run, fetched or not (2 MB for 16 rows of logits over a 32,000-word vocabulary).
   */
  nodeAsOutput(opType: string, inputs: string[], name: string, elemType: ElemType, dims: Dim[]): string {
    this.node(opType, inputs, {}, name);
    this.outputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  weight(name: string, data: Float32Array, dims: number[]): string {
    this.initializers.push(
      create(TensorProtoSchema, {
        name,
        dims: dims.map(BigInt),
        dataType: TensorProto_DataType.FLOAT,
        rawData: new Uint8Array(Float32Array.from(data).buffer),
      }),
    );
    return name;
  }

  scalar(value: number): string {
    return this.weight(this.fresh("const"), new Float32Array([value]), []);
  }

  ints(values: number[]): string {
    const name = this.fresh("ints");
    const data = new BigInt64Array(values.map(BigInt));
    this.initializers.push(
      create(TensorProtoSchema, {
        name,
        dims: [BigInt(values.length)],
        dataType: TensorProto_DataType.INT64,
        rawData: new Uint8Array(data.buffer),
      }),
    );
    return name;
  }

  node(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outputName?: string, domain = ""): string {
    const out = outputName ?? this.fresh(opType);
    this.nodes.push(
      create(NodeProtoSchema, {
        opType,
        domain,
        input: inputs,
        output: [out],
        name: this.fresh(`${opType}_node`),
        attribute: Object.entries(attrs).map(([name, value]) => attribute(name, value)),
      }),
    );
    return out;
  }

  // Ops with several outputs (Split).
  nodeMulti(opType: string, inputs: string[], outputCount: number, attrs: Record<string, AttrValue> = {}, domain = ""): string[] {
    const outs = Array.from({ length: outputCount }, () => this.fresh(opType));
    this.nodes.push(
      create(NodeProtoSchema, {
        opType,
        domain,
        input: inputs,
        output: outs,
        name: this.fresh(`${opType}_node`),
        attribute: Object.entries(attrs).map(([name, value]) => attribute(name, value)),
      }),
    );
    return outs;
  }

  toBytes(graphName: string): Uint8Array {
    const model = create(ModelProtoSchema, {
      irVersion: 8n,
      producerName: "strata",
      opsetImport: [
        create(OperatorSetIdProtoSchema, { domain: "", version: BigInt(OPSET) }),
        create(OperatorSetIdProtoSchema, { domain: MS_DOMAIN, version: 1n }),
      ],
      graph: create(GraphProtoSchema, {
        name: graphName,
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
      }),
    });
    return toBinary(ModelProtoSchema, model);
  }

  private fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }
}

function valueInfo(name: string, elemType: ElemType, dims: Dim[]): ValueInfoProto {
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, {
      value: {
        case: "tensorType",
        value: create(TypeProto_TensorSchema, {
          elemType: ELEM_TYPES[elemType],
          shape: create(TensorShapeProtoSchema, {
            dim: dims.map((d) =>
              create(TensorShapeProto_DimensionSchema, {
                value: typeof d === "number" ? { case: "dimValue", value: BigInt(d) } : { case: "dimParam", value: d },
              }),
            ),
          }),
        }),
      },
    }),
  });
}

function attribute(name: string, value: AttrValue): AttributeProto {
  if (typeof value === "number") {
    return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.INT, i: BigInt(value) });
  }
  if (typeof value === "string") {
    return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.STRING, s: new TextEncoder().encode(value) });
  }
  if (Array.isArray(value)) {
    return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.INTS, ints: value.map(BigInt) });
  }
  if ("ints" in value) {
    return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.INTS, ints: value.ints.map(BigInt) });
  }
  return create(AttributeProtoSchema, { name, type: AttributeProto_AttributeType.FLOAT, f: value.float });
}
