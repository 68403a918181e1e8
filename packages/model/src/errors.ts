/** A model folder or file that cannot be read as a supported checkpoint. */
export class ModelFormatError extends Error {
  override name = "ModelFormatError";
}

/** A requested layer range that the model does not have. */
export class LayerRangeError extends Error {
  override name = "LayerRangeError";
}
