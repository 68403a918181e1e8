import { scenarioByName } from "../scenarios.ts";
import { iteration, optionsFor } from "./common.ts";

const scenario = scenarioByName("ramp")!;

export const options = optionsFor(scenario);

export default function (): void {
  iteration(scenario);
}
