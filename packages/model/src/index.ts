// The public surface of @strata/model: model folders in, configs, stage weights, tokenizers and the
// reference forward pass out.
export { BUNDLED_HF_MODEL_DIR, BUNDLED_MODEL_DIR } from "./bundled.ts";
export { hfSpecialTokens, kvBytesPerToken, parseHfConfig, type ModelConfig } from "./config.ts";
export { bf16BitsToF32, f16BitsFromF32Bits, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type DType } from "./dtype.ts";
export { LayerRangeError, ModelFormatError } from "./errors.ts";
export { readHfConfig } from "./hf.ts";
export { argmax, referenceForward, referenceGenerateGreedy } from "./reference.ts";
export { openModel } from "./source.ts";
export { syntheticTokenizerJson, writeSyntheticModel, type SyntheticOptions, type SyntheticShape } from "./synthetic.ts";
export { loadTokenizer, type StreamDecoder, type Tokenizer } from "./tokenizer.ts";
export { layerTensorShape, toRotateHalfLayout, type LayerWeights, type LoadProgress, type LoadStageOptions, type ModelSource, type StageWeights } from "./weights.ts";
export { LORA_MODULES, loadLoraAdapter, mergeLora, writeSyntheticLora, type LoraAdapter, type LoraModule, type LoraPair } from "./lora.ts";
