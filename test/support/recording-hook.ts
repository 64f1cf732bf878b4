import type { CallReservation, OpenAICallHook, SettledCall, UpstreamCall } from '../../lib/index.js';

/** A call hook that records what the service reserved, settled and released, for "was it accounted" assertions. */
export class RecordingHook implements OpenAICallHook {
  readonly reserved: UpstreamCall[] = [];
  readonly settled: SettledCall[] = [];
  released = 0;

  reserve(call: UpstreamCall): CallReservation {
    this.reserved.push(call);
    return {
      settle: (result) => {
        this.settled.push(result);
      },
      release: () => {
        this.released++;
      },
    };
  }

  clear(): void {
    this.reserved.length = 0;
    this.settled.length = 0;
    this.released = 0;
  }
}
